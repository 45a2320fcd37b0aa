"""The plain-sbatch path: golden ``--emit-sbatch`` output and ``run_task --index`` element mapping."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import launch, run_task
from pipeline.records import read_json
from tests.pipeline.conftest import TASK

GOLDEN = Path(__file__).parent / "golden" / "emit_sbatch.txt"

SPEC = f"""
task: {TASK}
defaults: {{repeats: 2}}
experiments:
  - name: a100_sweep
    resources: {{gpus: 1, cpus: 8, mem_gb: 64, time_min: 120, constraint: a100, partition: gpu,
                account: proj, qos: high, extra: {{exclusive: null, mail-type: END}}}}
    array: {{parallelism: 3, runs_per_task: 2, group_by: [seed]}}
    grid:
      n: [10, 20, 30]
      seed: [1, 2, 3]
  - name: cpu_small
    resources: {{cpus: 2, time_min: 10}}
    grid: {{n: [10]}}
"""


def test_emit_sbatch_golden(write_spec, capsys) -> None:
    spec = write_spec(SPEC)
    # 9 runs in groups of one seed, 2 per element -> 6 elements; MaxArraySize 4 splits them into 4 + 2
    rc = launch.main([str(spec), "--emit-sbatch", "--max-array-size", "4", "--set", "repeats=3",
                      "--results", "out/results"])
    assert rc == 0
    text = capsys.readouterr().out.replace(str(spec), "SPEC")
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_emit_sbatch_writes_nothing(write_spec, tmp_path: Path, capsys) -> None:
    spec = write_spec(SPEC)
    assert launch.main([str(spec), "--emit-sbatch", "--results", str(tmp_path / "r")]) == 0
    assert not (tmp_path / "r").exists()


def test_run_task_covers_every_run_once(write_spec, tmp_path: Path, capsys) -> None:
    spec = write_spec(SPEC)
    results = tmp_path / "results"
    common = ["--results", str(results), "--set", "repeats=1"]
    assert run_task.main([str(spec), "--count", *common]) == 0
    count = int(capsys.readouterr().out.strip())
    assert count == 6 + 1  # a100_sweep's 6 elements, then cpu_small's 1 (file order)
    for index in range(count):
        assert run_task.main([str(spec), "--index", str(index), *common]) == 0
    done = sorted((p.parent.parent.name, read_json(p.parent / "config.json")["params"]["n"],
                   read_json(p.parent / "config.json")["params"].get("seed"))
                  for p in results.glob("*/*/summary.json"))
    assert done == sorted([("a100_sweep", n, s) for n in (10, 20, 30) for s in (1, 2, 3)] + [("cpu_small", 10, None)])
    # a repeated index skips its done runs; an index past the end is bad input
    capsys.readouterr()
    assert run_task.main([str(spec), "--index", "0", *common]) == 0
    assert capsys.readouterr().out.count(": skipped") == 2
    assert run_task.main([str(spec), "--index", str(count), *common]) == 2
    assert "out of range" in capsys.readouterr().err
