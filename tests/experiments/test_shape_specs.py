"""The shape-benchmark specs: every run they expand to passes its task's ``validate``, and the
sweeps contain the head dims the study is about (107 next to 112 and 128).

Expansion here is a plain cartesian product of ``grid`` times the ``zip`` groups (``exclude``
only removes runs, so checking the superset is enough); the pipeline's own loader is tested
in tests/pipeline.
"""

from __future__ import annotations

import importlib
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

SPECS = Path(__file__).resolve().parents[2] / "specs"


def _experiments(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    if "experiments" not in data:
        return [data]
    shared = {k: v for k, v in data.items() if k != "experiments"}
    out = []
    for exp in data["experiments"]:
        merged = {**shared, **exp, "defaults": {**shared.get("defaults", {}), **exp.get("defaults", {})}}
        out.append(merged)
    return out


def _points(exp: dict[str, Any]) -> list[dict[str, Any]]:
    grid = exp.get("grid", {})
    groups = exp.get("zip", [])
    for g in groups:
        assert len({len(v) for v in g.values()}) == 1, f"zip group {g} has lists of different lengths"
    zipped = [[dict(zip(g, vals, strict=True)) for vals in zip(*g.values(), strict=True)] for g in groups]
    points = []
    for combo in itertools.product(*grid.values()):
        for zs in itertools.product(*zipped):
            p = {**exp.get("defaults", {}), **dict(zip(grid, combo, strict=True))}
            for z in zs:
                p.update(z)
            points.append(p)
    return points


@pytest.mark.parametrize("name", ["gemm_projection.yaml", "sdpa_backend.yaml", "night_sweep.yaml"])
def test_every_run_validates(name: str) -> None:
    exps = _experiments(SPECS / name)
    assert len(exps) >= (3 if name == "night_sweep.yaml" else 1)
    for exp in exps:
        module, _, func = exp["task"].partition(":")
        task = importlib.import_module(module)
        assert callable(getattr(task, func))
        points = _points(exp)
        assert points, exp["name"]
        for params in points:
            task.validate(params)


@pytest.mark.parametrize(("name", "key"), [("gemm_projection.yaml", "dim"), ("sdpa_backend.yaml", "head_dim")])
def test_gpu_specs_put_107_next_to_112_and_128(name: str, key: str) -> None:
    (exp,) = _experiments(SPECS / name)
    assert {107, 112, 128} <= set(exp["grid"][key])
    if key == "head_dim":
        assert set(exp["grid"]["backend"]) == {"default", "flash", "efficient", "cudnn", "math"}
