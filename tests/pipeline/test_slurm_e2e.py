"""End to end on a real Slurm cluster (.ci/start_slurm.sh): submitit arrays, resume, requeue, plain sbatch.

Skipped when ``sbatch`` is not on PATH, except under CI=true, where a missing or dead
Slurm fails loudly (the CI must exercise the real thing).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.records import read_json
from tests.pipeline.conftest import REPO, TASK, cli_env, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]
RECORD = {"config.json", "env.json", "raw.json", "summary.json", "log.txt"}


def _require_slurm() -> None:
    ci = os.environ.get("CI", "").lower() == "true"
    if shutil.which("sbatch") is None:
        if ci:
            pytest.fail("CI=true but sbatch is not on PATH: Slurm must be installed and started (.ci/start_slurm.sh)")
        pytest.skip("sbatch not on PATH (run .ci/start_slurm.sh as root to get a one-node cluster)")
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not re.search(r"idle|mixed|alloc", out.stdout):
        msg = f"Slurm does not answer or has no usable node: {out.stdout.strip()} {out.stderr.strip()}"
        if ci:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(autouse=True)
def slurm_jobs():
    """Cancel (by id) any job a failing test leaves behind."""
    _require_slurm()
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def _job_ids(text: str) -> list[str]:
    return re.findall(r"submitted \S+: (?:array )?job (\d+)", text)


def _wait_gone(job_ids: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], capture_output=True, text=True)
        if out.returncode == 0 and not out.stdout.strip() or "Invalid job id" in out.stderr:
            return
        time.sleep(1)
    raise AssertionError(f"jobs {job_ids} still queued after {timeout} s")


def test_submitit_arrays_resume_status_aggregate(write_spec, tmp_path: Path, slurm_jobs: list[str]) -> None:
    spec = write_spec(f"""
        name: e2e
        task: {TASK}
        resources: {{cpus: 1, mem_gb: 0.5, time_min: 5}}
        array: {{parallelism: 2, runs_per_task: 2, group_by: [seed]}}
        defaults: {{repeats: 4}}
        grid:
          seed: [1, 2, 3]
          n: [200, 20000]
    """)
    results = tmp_path / "results"
    launch = ["pipeline.launch", spec, "--executor", "slurm", "--results", results, "--wait", "--max-array-size", "2"]
    first = run_cli(*launch, timeout=300)
    ids = _job_ids(first.stdout)
    slurm_jobs.extend(ids)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(ids) == 2, first.stdout  # 3 elements, MaxArraySize 2 -> two arrays
    assert "squeue -j" in first.stdout and "pipeline.status" in first.stdout
    runs = sorted(p for p in (results / "e2e").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 6
    by_job: dict[str, list[dict]] = {}
    for run in runs:
        assert {f.name for f in run.iterdir()} == RECORD, run
        config, env, summary = (read_json(run / f) for f in ("config.json", "env.json", "summary.json"))
        raw = read_json(run / "raw.json")
        assert config["task"] == TASK and config["run_id"] == run.name and config["spec_path"] == str(spec)
        assert config["params"]["repeats"] == 4 and len(raw["pi_estimates"]) == 4
        assert abs(summary["pi_mean"] - 3.14159) < (0.5 if config["params"]["n"] == 200 else 0.05)
        assert summary["setup_builds"] == 1  # grouped by seed: one setup per element
        slurm = env["slurm"]  # a lone element is submitted as a plain job, not an array
        assert slurm.get("SLURM_ARRAY_JOB_ID", slurm["SLURM_JOB_ID"]) in ids
        assert env["host"] and env["start"] <= env["end"] and env["python_executable"] == sys.executable
        assert "done in" in (run / "log.txt").read_text()
        by_job.setdefault(env["slurm"]["SLURM_JOB_ID"], []).append(config["params"] | {"pid": summary["pid"]})
    assert sorted(len(v) for v in by_job.values()) == [2, 2, 2]
    for members in by_job.values():  # one element = one process = one seed
        assert len({m["seed"] for m in members}) == 1 and len({m["pid"] for m in members}) == 1

    # resume: delete one summary, relaunch, only that run is redone
    victim = runs[3]
    (victim / "summary.json").unlink()
    kept = {r: (r / "summary.json").stat().st_mtime_ns for r in runs if r != victim}
    old_job = read_json(victim / "env.json")["slurm"]["SLURM_JOB_ID"]
    second = run_cli(*launch, timeout=300)
    slurm_jobs.extend(_job_ids(second.stdout))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "to run 1" in second.stdout and len(_job_ids(second.stdout)) == 1
    assert (victim / "summary.json").exists()
    assert read_json(victim / "env.json")["slurm"]["SLURM_JOB_ID"] != old_job
    assert {r: (r / "summary.json").stat().st_mtime_ns for r in kept} == kept

    st = run_cli("pipeline.status", results)
    assert st.returncode == 0 and re.search(r"e2e\s+6\s+0\s+0\s+0\s+0\s+6", st.stdout), st.stdout
    agg = run_cli("pipeline.aggregate", results)
    assert agg.returncode == 0, agg.stderr
    csv = (results / "e2e" / "report" / "summary.csv").read_text().splitlines()
    assert len(csv) == 1 + 6 and "pi_mean" in csv[0]
    assert (results / "e2e" / "report" / "pi_error.png").exists()


def test_preempted_element_is_requeued_and_resumes(write_spec, tmp_path: Path, slurm_jobs: list[str]) -> None:
    # one element, two runs: the first finishes, the second blocks until Slurm signals the job
    spec = write_spec(f"""
        name: requeue
        task: {TASK}
        resources: {{cpus: 1, mem_gb: 0.5, time_min: 10}}
        array: {{runs_per_task: 2}}
        defaults: {{n: 500}}
        zip:
          - {{seed: [1, 2], block_first_attempt: [0, 300]}}
    """)
    results = tmp_path / "results"
    sub = run_cli("pipeline.launch", spec, "--executor", "slurm", "--results", results)
    ids = _job_ids(sub.stdout)
    slurm_jobs.extend(ids)
    assert sub.returncode == 0 and len(ids) == 1, sub.stdout + sub.stderr
    exp = results / "requeue"
    first, second = sorted(p for p in exp.iterdir() if p.name.startswith("seed-"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (first / "summary.json").exists() and "sleeping until preempted" in _read(second / "log.txt"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the blocking run never started")
    # what Slurm sends before preemption or the time limit: submitit checkpoints and requeues
    subprocess.run(["scancel", "--signal=USR2", ids[0]], check=True, timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-o", "%T %r", "-j", ids[0]], capture_output=True, text=True).stdout
        if "PENDING" in state:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"job {ids[0]} was not requeued")
    # Slurm holds a requeued job for ~2 minutes (BeginTime); release it now
    subprocess.run(["scontrol", "update", f"JobId={ids[0]}", "StartTime=now"], check=True, timeout=30)
    _wait_gone(ids, timeout=180)
    done_first = read_json(first / "summary.json")
    done_second = read_json(second / "summary.json")
    assert done_second is not None, _read(second / "log.txt")
    assert done_first["restart_count"] == 0 and done_second["restart_count"] == 1
    assert _read(first / "log.txt").count("start run") == 1  # skipped after the requeue
    assert _read(second / "log.txt").count("start run") == 2
    assert read_json(second / "env.json")["slurm"]["SLURM_RESTART_COUNT"] == "1"


def test_plain_sbatch_path(write_spec, tmp_path: Path, slurm_jobs: list[str]) -> None:
    spec = write_spec(f"""
        name: plain
        task: {TASK}
        resources: {{cpus: 1, mem_gb: 0.5, time_min: 5}}
        array: {{runs_per_task: 1}}
        grid: {{n: [100, 200, 300]}}
    """)
    results = tmp_path / "results"
    # 3 elements, MaxArraySize 2: two commands, the second with INDEX_OFFSET=2
    emitted = run_cli("pipeline.launch", spec, "--emit-sbatch", "--results", results, "--max-array-size", "2")
    assert emitted.returncode == 0, emitted.stderr
    cmds = emitted.stdout.strip().splitlines()
    assert len(cmds) == 2 and "--array=0-1%16" in cmds[0] and "--array=0-0%16" in cmds[1]
    assert "INDEX_OFFSET=2" in cmds[1] and "--gpus-per-node=0" in cmds[0]
    env = cli_env() | {"PYTHON": sys.executable}
    jobs = []
    for cmd in cmds:
        out = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        jobs.append(re.search(r"Submitted batch job (\d+)", out.stdout).group(1))
    slurm_jobs.extend(jobs)
    _wait_gone(jobs)
    runs = [p for p in (results / "plain").iterdir() if p.name.startswith("n-")]
    assert len(runs) == 3 and all((r / "summary.json").exists() for r in runs), \
        [_read(p) for p in (results / "plain" / ".slurm").glob("*.out")]
    logs = sorted((results / "plain" / ".slurm").glob("*.out"))
    assert len(logs) == 3 and all("run_spec.sbatch: host" in p.read_text() for p in logs)
    assert sorted(read_json(r / "env.json")["slurm"]["SLURM_ARRAY_JOB_ID"] for r in runs) == sorted(
        [jobs[0], jobs[0], jobs[1]])
    print(shlex.join(["ran", *cmds]))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_unknown_partition_is_bad_input(write_spec, tmp_path: Path) -> None:
    spec = write_spec(f"name: badp\ntask: {TASK}\nresources: {{partition: no_such_partition}}\ngrid: {{n: [10]}}\n")
    results = tmp_path / "results"
    out = run_cli("pipeline.launch", spec, "--executor", "slurm", "--results", results)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "key 'resources.partition'" in out.stderr and "no_such_partition" in out.stderr
    assert f"{spec}:3:" in out.stderr
    assert not results.exists()


def test_real_task_kind_through_slurm(write_spec, tmp_path: Path, slurm_jobs: list[str]) -> None:
    """A shipped task kind (gemm_shapes, by its short name) runs as a Slurm array and aggregates with its own plots."""
    spec = write_spec("""
        name: gemm_e2e
        task: gemm_shapes
        resources: {cpus: 1, mem_gb: 1, time_min: 5}
        array: {parallelism: 2, runs_per_task: 2}
        defaults: {device: cpu, m: 16, hidden: 64, dtype: fp32, warmup: 1, repeats: 3, inner: 1, threads: 1}
        grid:
          dim: [107, 112, 128]
    """)
    results = tmp_path / "results"
    out = run_cli("pipeline.launch", spec, "--executor", "slurm", "--results", results, "--wait", timeout=300)
    slurm_jobs.extend(_job_ids(out.stdout))
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted(p for p in (results / "gemm_e2e").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 3
    for run in runs:
        assert {f.name for f in run.iterdir()} == RECORD, run
        summary = read_json(run / "summary.json")
        assert summary["median_ms"] > 0 and summary["tflops"] > 0
        assert "SLURM_JOB_ID" in read_json(run / "env.json")["slurm"]
    agg = run_cli("pipeline.aggregate", results)
    assert agg.returncode == 0, agg.stderr
    report = results / "gemm_e2e" / "report"
    assert (report / "summary.csv").exists() and list(report.glob("*.png"))
