"""Expansion: grid x zip - exclude, --set/--only, stable run ids, packing, array splitting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.expand import (
    apply_overrides,
    config_hash,
    expand,
    make_run_id,
    pack,
    parse_assignments,
    split_arrays,
)
from pipeline.spec import SpecError, load_spec
from tests.pipeline.conftest import TASK

SPEC = f"""
name: sweep
task: {TASK}
defaults: {{repeats: 2, dist: uniform}}
grid:
  n: [10, 100, 1000]
  seed: [1, 2]
zip:
  - {{dist: [uniform, normal], label: [u, g]}}
exclude:
  - {{n: 10, dist: normal}}
  - {{n: [100, 1000], seed: 2, label: g}}
"""


@pytest.fixture
def exp(write_spec):
    return load_spec(write_spec(SPEC)).experiments[0]


def test_grid_zip_exclude(exp) -> None:
    runs = expand(exp, TASK)
    combos = [(r.params["n"], r.params["seed"], r.params["dist"], r.params["label"]) for r in runs]
    # 3 n x 2 seeds x 2 zip rows = 12, minus 2 (n=10 normal) minus 2 (n>=100, seed 2, g) = 8
    assert len(combos) == 8
    assert (10, 1, "normal", "g") not in combos and (100, 2, "normal", "g") not in combos
    assert (1000, 1, "normal", "g") in combos and (10, 2, "uniform", "u") in combos
    # zip keys vary together, never crossed
    assert all((d, lab) in {("uniform", "u"), ("normal", "g")} for _, _, d, lab in combos)
    # first grid axis varies slowest
    assert [c[0] for c in combos] == sorted(c[0] for c in combos)
    assert all(r.params["repeats"] == 2 for r in runs)


def test_only_and_set(exp) -> None:
    only = parse_assignments(["n=100", "n=1000", "label=g"], "--only")
    runs = expand(exp, TASK, only)
    assert {(r.params["n"], r.params["seed"]) for r in runs} == {(100, 1), (1000, 1)}
    pinned = apply_overrides(exp, parse_assignments(["seed=2", "repeats=5"], "--set"))
    runs = expand(pinned, TASK)
    assert {r.params["seed"] for r in runs} == {2} and {r.params["repeats"] for r in runs} == {5}
    assert exp.defaults["repeats"] == 2, "--set must not modify the loaded spec"
    with pytest.raises(SpecError, match="zip group"):
        apply_overrides(exp, parse_assignments(["dist=normal"], "--set"))


def test_yaml_values_in_assignments() -> None:
    parsed = parse_assignments(["a=1e-3", "b=[1, 2]", "c=true", "d=hello", "e=", "f=3"], "--set")
    assert parsed == {"a": [1e-3], "b": [[1, 2]], "c": [True], "d": ["hello"], "e": [""], "f": [3]}


def test_run_ids_are_stable_readable_and_safe(exp) -> None:
    runs = expand(exp, TASK)
    again = expand(exp, TASK)
    assert [r.run_id for r in runs] == [r.run_id for r in again]
    assert len({r.run_id for r in runs}) == len(runs)
    first = runs[0]
    assert first.run_id.startswith("n-10_seed-1_dist-uniform_label-u__")
    # a fixed config hashes to the same value on every machine and Python version (golden)
    assert config_hash("m.x:run", {"b": 1, "a": [1.5, "x"]}) == config_hash("m.x:run", {"a": [1.5, "x"], "b": 1})
    assert config_hash("m.x:run", {"b": 1, "a": [1.5, "x"]}) == "ea0b0f9111"  # sha256 of {"params":{"a":[1.5,"x"],"b":1},"task":"m.x:run"}
    assert config_hash("m.x:run", {"b": 1}) != config_hash("m.y:run", {"b": 1})
    weird = make_run_id({"path": "../../etc/passwd", "x": {"k": [1, 2]}}, ["path", "x"], "0123456789")
    assert "/" not in weird and ".." not in weird and weird.endswith("__0123456789")


def test_defaults_change_changes_hash_not_order(exp) -> None:
    runs = expand(exp, TASK)
    changed = expand(apply_overrides(exp, {"repeats": [3]}), TASK)
    assert [r.params["n"] for r in runs] == [r.params["n"] for r in changed]
    assert all(a.config_hash != b.config_hash for a, b in zip(runs, changed, strict=True))


def test_pack_respects_group_by_and_size(exp) -> None:
    runs = expand(exp, TASK)
    elements = pack(runs, runs_per_task=3, group_by=["seed"])
    assert [e.index for e in elements] == list(range(len(elements)))
    assert sorted(r.run_id for e in elements for r in e.runs) == sorted(r.run_id for r in runs)
    for e in elements:
        assert 1 <= len(e.runs) <= 3
        assert len({r.params["seed"] for r in e.runs}) == 1, "an element must not mix group_by values"
    assert pack(runs, 3, ["seed"]) == elements, "packing is deterministic"
    assert len(pack(runs, 100)) == 1 and len(pack(runs, 1)) == len(runs)
    with pytest.raises(ValueError, match="runs_per_task"):
        pack(runs, 0)


@pytest.mark.parametrize("n,limit,sizes", [(10, 1001, [10]), (10, 4, [4, 4, 2]), (8, 4, [4, 4]), (0, 5, []),
                                           (1, 1, [1])])
def test_split_arrays(n: int, limit: int, sizes: list[int]) -> None:
    chunks = split_arrays(n, limit)
    assert [len(c) for c in chunks] == sizes
    assert [i for c in chunks for i in c] == list(range(n))


@settings(max_examples=60, deadline=None)
@given(axes=st.dictionaries(st.sampled_from(["a", "b", "c"]), st.lists(st.integers(-3, 3), min_size=1, max_size=4,
                                                                        unique=True), min_size=1),
       zipped=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["x", "y"])), min_size=1, max_size=3,
                       unique=True),
       drop=st.integers(-3, 3))
def test_expansion_counts_property(axes: dict[str, list[int]], zipped: list[tuple[int, str]], drop: int) -> None:
    """#runs = product of axis lengths x zip rows - excluded; ids unique; every kept run matches no rule."""
    from pathlib import Path

    from pipeline.spec import ArraySettings, ExperimentSpec, Resources

    exp = ExperimentSpec(name="p", task=TASK, resources=Resources(), array=ArraySettings(), defaults={"d": 1},
                         grid=axes, zip=[{"z1": [z[0] for z in zipped], "z2": [z[1] for z in zipped]}],
                         exclude=[{"a": [drop]}] if "a" in axes else [], spec_path=Path("p.yaml"))
    total = len(zipped)
    for vals in axes.values():
        total *= len(vals)
    expected = total - (total // len(axes["a"]) if "a" in axes and drop in axes["a"] else 0)
    if expected == 0:
        with pytest.raises(SpecError, match="drop every run"):
            expand(exp, TASK)
        return
    runs = expand(exp, TASK)
    assert len(runs) == expected
    assert len({r.run_id for r in runs}) == len(runs) == len({r.config_hash for r in runs})
    assert all(r.params.get("a") != drop for r in runs if "a" in axes)
    assert all(r.params["d"] == 1 for r in runs)
