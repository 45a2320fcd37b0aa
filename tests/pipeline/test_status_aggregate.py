"""status exit codes and aggregate on a results folder mixing done, failed, half-written and corrupt runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline import aggregate, launch, status
from pipeline.records import read_json
from tests.pipeline.conftest import TASK


@pytest.fixture
def mixed_results(write_spec, tmp_path: Path) -> tuple[Path, Path]:
    """6 runs: 3 done, 1 failed, 1 half-written (killed: config only), 1 with a corrupt summary."""
    spec = write_spec(f"""
        name: mixed
        task: {TASK}
        defaults: {{repeats: 2}}
        grid:
          n: [100, 1000, 10000]
          dist: [uniform, normal]
        exclude:
          - {{n: 10000, dist: normal}}
        zip: []
    """)
    results = tmp_path / "results"
    assert launch.main([str(spec), "--results", str(results), "--executor", "inline",
                        "--only", "dist=uniform"]) == 0
    fail = write_spec(f"name: mixed\ntask: {TASK}\ndefaults: {{repeats: 2, fail: true}}\ngrid: {{n: [5]}}\n",
                      "fail.yaml")
    assert launch.main([str(fail), "--results", str(results), "--executor", "inline"]) == 1
    # a run killed before it finished: config.json and env.json, nothing else
    half = results / "mixed" / "n-100_dist-normal__0000000000"
    half.mkdir()
    (half / "config.json").write_text(json.dumps({"params": {"n": 100, "dist": "normal"}, "task": TASK}))
    # a summary.json someone truncated by hand
    bad = results / "mixed" / "n-1000_dist-normal__1111111111"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"params": {"n": 1000, "dist": "normal"}, "task": TASK}))
    (bad / "summary.json").write_text('{"pi_mean": 3.1')
    return spec, results


def test_status_counts_and_exit_codes(mixed_results, capsys) -> None:
    spec, results = mixed_results
    assert status.main([str(results)]) == 1
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    counts = dict(zip(header.split()[1:], row.split()[1:], strict=True))
    assert counts == {"done": "3", "failed": "1", "pending": "1", "missing": "0", "corrupt": "1", "total": "6"}
    assert "FAILED mixed/n-5__" in out and "RuntimeError: requested failure for n=5" in out
    assert status.main([str(results / "mixed")]) == 1  # an experiment folder works too
    capsys.readouterr()
    # from the spec: runs never launched are "missing"
    assert status.main([str(spec), "--results", str(results)]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    counts = dict(zip(header.split()[1:], row.split()[1:], strict=True))
    assert counts["done"] == "3" and counts["missing"] == "2" and counts["total"] == "5"
    assert status.main([str(results / "nope")]) == 2


def test_status_all_done_exits_0(write_spec, tmp_path: Path, capsys) -> None:
    spec = write_spec(f"name: ok\ntask: {TASK}\ngrid: {{n: [10, 20]}}\n")
    results = tmp_path / "results"
    assert launch.main([str(spec), "--results", str(results), "--executor", "inline"]) == 0
    assert status.main([str(results)]) == 0
    assert status.main([str(spec), "--results", str(results)]) == 0


def test_aggregate_mixed(mixed_results, capsys) -> None:
    _, results = mixed_results
    assert aggregate.main([str(results)]) == 0
    report = results / "mixed" / "report"
    out = capsys.readouterr().out
    assert "3 finished runs, 3 skipped" in out
    with open(report / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    assert {"run_id", "repeats", "n", "dist", "pi_mean", "pi_abs_err", "setup_builds"} <= set(rows[0])
    assert sorted(int(r["n"]) for r in rows) == [100, 1000, 10000]
    for r in rows:  # the table holds what the runs wrote, not a recomputation
        summary = read_json(results / "mixed" / r["run_id"] / "summary.json")
        assert float(r["pi_mean"]) == pytest.approx(summary["pi_mean"])
    md = (report / "report.md").read_text()
    assert "| n | pi_mean | pi_abs_err |" in md and "| 100 | 3.14 |" in md  # varying config, then summary
    assert "| repeats | dist |" in md  # fixed parameters listed once
    assert "3 finished, 3 skipped" in md and "corrupt 1" in md and "failed 1" in md and "pending 1" in md
    assert "requested failure" in md and "summary.json is not valid JSON" in md
    pngs = {p.name for p in report.glob("*.png")}
    assert "pi_error.png" in pngs, "the task's own plots(df, outdir) must run"
    assert "generic_pi_mean.png" in pngs
    assert all((report / p).stat().st_size > 1000 for p in pngs)


def test_aggregate_bad_inputs(tmp_path: Path, capsys) -> None:
    assert aggregate.main([str(tmp_path)]) == 2
    assert "no run records" in capsys.readouterr().err


def test_aggregate_experiment_filter_and_broken_task_plots(write_spec, tmp_path: Path, capsys) -> None:
    spec = write_spec(f"name: one\ntask: {TASK}\ngrid: {{n: [10, 20]}}\n")
    results = tmp_path / "results"
    assert launch.main([str(spec), "--results", str(results), "--executor", "inline"]) == 0
    assert aggregate.main([str(results), "--experiment", "two"]) == 2
    # the task module vanished since the runs (renamed, uninstalled): tables still come out
    for cfg in (results / "one").glob("*/config.json"):
        cfg.write_text(cfg.read_text().replace("tests.pipeline.sample_task", "gone.module"))
    assert aggregate.main([str(results), "--experiment", "one"]) == 0
    md = (results / "one" / "report" / "report.md").read_text()
    assert "task plots (gone.module:run) failed" in md
    assert (results / "one" / "report" / "summary.csv").exists()
