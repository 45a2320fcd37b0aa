"""Spec loading and validation: every bad input names file, key and problem, exits 2, writes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline import launch
from pipeline.spec import SpecError, load_spec
from tests.pipeline.conftest import TASK

GOOD = f"""
name: pi
task: {TASK}
defaults: {{repeats: 2}}
grid:
  n: [10, 20]
"""

# (spec text, substrings the message must contain, line it must point at or None)
BAD_SPECS = {
    "yaml_syntax": ("name: pi\ngrid: [1, 2\n", ["YAML syntax error"], 3),
    "unknown_key": (GOOD + "grdi: {n: [1]}\n", ["key 'grdi'", "unknown key", "valid keys"], 6),
    "duplicate_yaml_key": (GOOD + "name: again\n", ["duplicate key 'name'"], 6),
    "wrong_type_resources": (GOOD + "resources: {gpus: two}\n", ["key 'resources.gpus'", "integer"], 6),
    "unknown_resource": (GOOD + "resources: {gpu: 1}\n", ["key 'resources.gpu'", "unknown resource"], 6),
    "empty_grid_list": (f"name: pi\ntask: {TASK}\ngrid:\n  n: []\n", ["key 'grid.n'", "empty list"], 4),
    "grid_scalar": (f"name: pi\ntask: {TASK}\ngrid:\n  n: 5\n", ["key 'grid.n'", "must be a list"], 4),
    "missing_task": ("name: pi\ngrid: {n: [1]}\n", ["key 'task'", "missing"], None),
    "unimportable_task": (GOOD.replace(TASK, "no_such_pkg.mod:run"), ["key 'task'", "cannot import"], 2),
    "task_without_function": (GOOD.replace(TASK, "tests.pipeline.sample_task:nothere"),
                              ["key 'task'", "no function 'nothere'"], 2),
    "task_malformed": (GOOD.replace(TASK, "a b:c"), ["key 'task'", "malformed"], 2),
    "task_rejects_value": (GOOD.replace("[10, 20]", "[10, -1]"), ["key 'grid.n'", "n must be a positive integer",
                                                                   "experiment 'pi'"], 5),
    "task_rejects_default": (GOOD.replace("repeats: 2", "repeats: 2, dist: cauchy"),
                             ["key 'defaults.dist'", "dist must be one of"], 3),
    "name_escapes": (GOOD.replace("name: pi", "name: ../evil"), ["key 'name'", "inside the results"], 1),
    "name_absolute": (GOOD.replace("name: pi", "name: /tmp/evil"), ["key 'name'"], 1),
    "zip_unequal": (GOOD + "zip:\n  - {seed: [1, 2], dist: [uniform]}\n", ["key 'zip.0'", "equal lengths"], 7),
    "zip_overlaps_grid": (GOOD + "zip:\n  - {n: [1, 2]}\n", ["key 'zip.0.n'", "already varies"], 7),
    "exclude_unknown_key": (GOOD + "exclude: [{m: 10}]\n", ["key 'exclude.0.m'", "unknown parameter"], 6),
    "exclude_drops_all": (GOOD + "exclude: [{n: [10, 20]}]\n", ["key 'exclude'", "drop every run"], 6),
    "group_by_unknown": (GOOD + "array: {group_by: [model]}\n", ["key 'array.group_by'", "unknown parameter 'model'"], 6),
    "array_bad_int": (GOOD + "array: {runs_per_task: 0}\n", ["key 'array.runs_per_task'", ">= 1"], 6),
    "top_not_mapping": ("- a\n- b\n", ["top level must be a mapping"], 1),
    "duplicate_experiments": (f"task: {TASK}\nexperiments:\n  - {{name: a, grid: {{n: [1]}}}}\n"
                              "  - {name: a, grid: {n: [2]}}\n", ["duplicate experiment name 'a'"], 4),
    "empty_experiments": (f"task: {TASK}\nexperiments: []\n", ["key 'experiments'", "non-empty list"], 2),
    "name_with_experiments": (f"name: x\ntask: {TASK}\nexperiments:\n  - {{name: a, grid: {{n: [1]}}}}\n",
                              ["key 'name'", "shared keys"], 1),
    "unknown_short_task": (GOOD.replace(TASK, "no_such_task_kind"), ["key 'task'", "unknown task"], 2),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_rejected_with_location(case: str, write_spec, tmp_path: Path, capsys) -> None:
    text, needles, line = BAD_SPECS[case]
    spec = write_spec(text)
    results = tmp_path / "results"
    rc = launch.main([str(spec), "--results", str(results), "--executor", "inline"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(spec) in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    if line is not None:
        assert f"{spec}:{line}:" in err, err
    assert not results.exists(), "a rejected spec must write nothing"


@pytest.mark.parametrize("argv,needle", [
    (["--name", "nope"], "no experiment named 'nope'"),
    (["--only", "m=3"], "key '--only m'"),
    (["--only", "n=999"], "--only matches no run"),
    (["--set", "novalue"], "expected key=value"),
    (["--set", "n=10", "--set", "n=20"], "--set takes one value"),
    (["--set", "n=-5"], "n must be a positive integer"),
    (["--executor", "inline", "--set", "dist=cauchy"], "dist must be one of"),
    (["--executor", "local", "--jobs", "0"], "--jobs must be >= 1"),
    (["--emit-sbatch", "--max-array-size", "-3"], "--max-array-size must be >= 1"),
])
def test_bad_cli_options_exit_2(argv: list[str], needle: str, write_spec, tmp_path: Path, capsys) -> None:
    spec = write_spec(GOOD)
    results = tmp_path / "results"
    rc = launch.main([str(spec), "--results", str(results), "--executor", "inline", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert not results.exists()


def test_missing_file(tmp_path: Path, capsys) -> None:
    assert launch.main([str(tmp_path / "nope.yaml"), "--dry-run"]) == 2
    assert "cannot read spec" in capsys.readouterr().err


def test_multi_experiment_shared_keys_are_merged(write_spec) -> None:
    spec = write_spec(f"""
        task: {TASK}
        resources: {{cpus: 2, time_min: 30}}
        defaults: {{repeats: 2, dist: uniform}}
        grid: {{seed: [1, 2]}}
        experiments:
          - name: small
            grid: {{n: [10]}}
          - name: big
            resources: {{time_min: 90}}
            defaults: {{dist: normal}}
            grid: {{n: [1.0e4, 2e4]}}
    """)
    small, big = load_spec(spec).experiments
    assert (small.resources.cpus, small.resources.time_min) == (2, 30)
    assert (big.resources.cpus, big.resources.time_min) == (2, 90)
    assert small.defaults == {"repeats": 2, "dist": "uniform"}
    assert big.defaults == {"repeats": 2, "dist": "normal"}
    assert big.grid["n"] == [1e4, 2e4] and all(isinstance(v, float) for v in big.grid["n"])  # YAML 1.2 floats
    assert small.grid == {"seed": [1, 2], "n": [10]} and big.grid["seed"] == [1, 2]
    assert small.spec_hash != big.spec_hash
    with pytest.raises(SpecError, match="no experiment named 'x'.*small, big"):
        load_spec(spec).select("x")


def test_dry_run_prints_plan_and_writes_nothing(write_spec, tmp_path: Path, capsys) -> None:
    spec = write_spec(GOOD + "array: {parallelism: 3, runs_per_task: 2}\n")
    results = tmp_path / "results"
    assert launch.main([str(spec), "--results", str(results), "--dry-run", "--executor", "local"]) == 0
    out = capsys.readouterr().out
    assert "runs 2: done 0" in out and "to run 2" in out and "[0-0%3]" in out and "dry run" in out
    assert not results.exists()


def test_slurm_executor_without_sbatch(write_spec, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(GOOD)
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no sbatch on it
    assert launch.main([str(spec), "--executor", "slurm", "--results", str(tmp_path / "r")]) == 2
    assert "'sbatch' is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_short_task_names_and_missing_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.tasks import TaskError, registry, resolve_task_path

    known = registry()
    for short, path in known.items():
        assert resolve_task_path(short) == path
    assert resolve_task_path(TASK) == TASK
    monkeypatch.setitem(sys.modules, "ecc_kv.experiments", None)  # the registry package is not importable
    assert registry() == {}
    with pytest.raises(TaskError, match="no short names are available"):
        resolve_task_path("gemm_shapes")
    assert resolve_task_path(TASK) == TASK  # dotted paths need no registry
