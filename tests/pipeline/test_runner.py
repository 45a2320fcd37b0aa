"""Resume, --force, failed retry, shared setup, SIGKILL: through the real inline and local executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import launch
from pipeline.records import RunPaths, read_json
from tests.pipeline.conftest import REPO, TASK, cli_env, run_cli


def _runs(results: Path, exp: str) -> dict[str, Path]:
    return {p.name: p for p in (results / exp).iterdir() if p.is_dir() and not p.name.startswith(".")}


def _by_param(results: Path, exp: str, key: str) -> dict[object, Path]:
    return {read_json(p / "config.json")["params"][key]: p for p in _runs(results, exp).values()}


def test_inline_failures_resume_retry_force(write_spec, tmp_path: Path, capsys) -> None:
    flag = tmp_path / "flag"
    spec = write_spec(f"""
        name: retry
        task: {TASK}
        array: {{runs_per_task: 3}}
        defaults: {{repeats: 2}}
        zip:
          - n: [10, 20, 30]
            fail_if_missing: [null, null, {flag}]
    """)
    results = tmp_path / "results"
    args = [str(spec), "--results", str(results), "--executor", "inline"]
    assert launch.main(args) == 1
    runs = _by_param(results, "retry", "n")
    assert (runs[10] / "summary.json").exists() and (runs[20] / "summary.json").exists()
    failed = runs[30]
    assert not (failed / "summary.json").exists()
    err = read_json(failed / "error.json")
    assert err["type"] == "FileNotFoundError" and "Traceback" in err["traceback"] and err["reason"] == "exception"
    assert "run failed" in (failed / "log.txt").read_text()
    # the run after a failure in the same element still ran; all three shared one process
    assert len({read_json(p / "summary.json")["pid"] for p in (runs[10], runs[20])}) == 1
    for p in (runs[10], runs[20]):
        rec = {f.name for f in p.iterdir()}
        assert rec == {"config.json", "env.json", "raw.json", "summary.json", "log.txt"}, rec
        env = read_json(p / "env.json")
        assert env["start"] and env["end"] and env["duration_s"] >= 0
    done_mtime = (runs[10] / "summary.json").stat().st_mtime_ns
    capsys.readouterr()

    # relaunch: the done runs are skipped, the failed run is retried (and now succeeds)
    flag.touch()
    assert launch.main(args) == 0
    assert "to run 1" in capsys.readouterr().out
    assert (failed / "summary.json").exists() and not (failed / "error.json").exists()
    assert (runs[10] / "summary.json").stat().st_mtime_ns == done_mtime
    assert (failed / "log.txt").read_text().count("start run") == 2  # the log keeps both attempts

    # nothing left: exit 0 without running anything; --force reruns all
    assert launch.main(args) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert launch.main([*args, "--force", "--only", "n=10"]) == 0
    assert (runs[10] / "summary.json").stat().st_mtime_ns != done_mtime
    assert (runs[20] / "log.txt").read_text().count("start run") == 1


def test_shared_dict_lives_for_one_element(write_spec, tmp_path: Path) -> None:
    spec = write_spec(f"""
        task: {TASK}
        array: {{runs_per_task: 3}}
        grid:
          n: [10, 20, 30]
          seed: [1, 2]
        experiments:
          - name: mixed
          - name: grouped
            array: {{group_by: [seed]}}
    """)
    results = tmp_path / "results"
    assert launch.main([str(spec), "--results", str(results), "--executor", "inline"]) == 0

    def rows(exp: str) -> list[tuple[int, int, int]]:
        out = []
        for p in _runs(results, exp).values():
            row = read_json(p / "summary.json") | read_json(p / "config.json")["params"]
            out.append((row["n"], row["seed"], row["setup_builds"]))
        return sorted(out)

    # elements (n10 s1, n10 s2, n20 s1) and (n20 s2, n30 s1, n30 s2): the per-seed setup is built once
    # per element and reused by later runs of the same element, never carried into the next element
    assert rows("mixed") == [(10, 1, 1), (10, 2, 2), (20, 1, 2), (20, 2, 1), (30, 1, 2), (30, 2, 2)]
    # group_by keeps one seed per element: one build each
    assert rows("grouped") == [(n, s, 1) for n in (10, 20, 30) for s in (1, 2)]


def test_local_executor_parallel_gpu_assignment(write_spec, tmp_path: Path) -> None:
    spec = write_spec(f"""
        name: gpus
        task: {TASK}
        resources: {{gpus: 1}}
        grid:
          n: [10, 20, 30, 40]
        defaults: {{sleep_s: 0.5}}
    """)
    results = tmp_path / "results"
    env = cli_env() | {"CUDA_VISIBLE_DEVICES": "0,1"}
    proc = subprocess.run([sys.executable, "-m", "pipeline.launch", str(spec), "--results", str(results),
                           "--executor", "local"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "up to 2 at once, GPUs: 0,1" in proc.stdout
    envs = [read_json(p / "env.json") for p in _runs(results, "gpus").values()]
    assert sorted(e["cuda_visible_devices"] for e in envs) == ["0", "0", "1", "1"]
    assert len({e["pid"] for e in envs}) == 4  # one worker process per element
    spans = sorted((e["start"], e["end"], e["cuda_visible_devices"]) for e in envs)
    for a in spans:  # two runs overlapping in time never share a GPU
        for b in spans:
            if a is not b and a[0] < b[1] and b[0] < a[1]:
                assert a[2] != b[2]


def test_sigkill_mid_run_is_redone(write_spec, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    spec = write_spec(f"""
        name: kill
        task: {TASK}
        zip:
          - n: [10, 20]
            wait_file: [null, {gate}]
    """)
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "pipeline.launch", str(spec), "--results", str(results), "--executor", "local"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        env_file = None
        while time.monotonic() < deadline:
            waiting = [p for p in (results / "kill").glob("n-20*") if (p / "env.json").exists()]
            if waiting and "waiting for" in (waiting[0] / "log.txt").read_text():
                env_file = waiting[0] / "env.json"
                break
            time.sleep(0.1)
        assert env_file is not None, "the blocking run never started"
        worker = read_json(env_file)["pid"]
        assert worker != proc.pid
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "worker exit -9" in out
    killed = env_file.parent
    assert not (killed / "summary.json").exists() and not (killed / "error.json").exists()
    assert RunPaths(killed).state() == "pending"
    st = run_cli("pipeline.status", results / "kill")
    assert st.returncode == 0 and "pending" in st.stdout
    assert " 1 " in st.stdout.splitlines()[1]

    gate.touch()
    again = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "to run 1" in again.stdout
    assert (killed / "summary.json").exists()
    assert (killed / "log.txt").read_text().count("start run") == 2
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["pid"] != worker


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_same_results_from_every_executor(write_spec, tmp_path: Path, executor: str) -> None:
    spec = write_spec(f"name: same\ntask: {TASK}\ngrid: {{n: [500], seed: [7]}}\n")
    results = tmp_path / executor
    proc = run_cli("pipeline.launch", spec, "--results", results, "--executor", executor)
    assert proc.returncode == 0, proc.stderr
    (run,) = _runs(results, "same").values()
    summary = read_json(run / "summary.json")
    assert abs(summary["pi_mean"] - 3.1416) < 0.3
    assert run.name.startswith("n-500_seed-7__")


def test_moving_a_default_into_the_grid_keeps_done_runs(write_spec, tmp_path: Path, capsys) -> None:
    results = tmp_path / "results"
    before = write_spec(f"name: grow\ntask: {TASK}\ndefaults: {{seed: 1}}\ngrid: {{n: [10, 20]}}\n", "a.yaml")
    assert launch.main([str(before), "--results", str(results), "--executor", "inline"]) == 0
    old = set(_runs(results, "grow"))
    # the same configs now sit on a grid axis (their slug would gain "seed-1"): found by hash, not redone
    after = write_spec(f"name: grow\ntask: {TASK}\ngrid: {{n: [10, 20], seed: [1, 2]}}\n", "b.yaml")
    capsys.readouterr()
    assert launch.main([str(after), "--results", str(results), "--executor", "inline"]) == 0
    assert "runs 4: done 2" in capsys.readouterr().out
    new = set(_runs(results, "grow")) - old
    assert len(new) == 2 and all("seed-2" in name for name in new)


def test_local_path_needs_no_submitit(write_spec, tmp_path: Path) -> None:
    """GPU boxes without submitit/tqdm must still launch locally and emit sbatch commands."""
    spec = write_spec(f"name: nosub\ntask: {TASK}\ngrid: {{n: [10]}}\n")
    code = ("import sys; sys.modules['submitit'] = None; sys.modules['tqdm'] = None\n"
            "from pipeline.launch import main\n"
            f"rc = main([{str(spec)!r}, '--executor', 'local', '--results', {str(tmp_path / 'r')!r}])\n"
            f"rc2 = main([{str(spec)!r}, '--emit-sbatch'])\n"
            "sys.exit(rc or rc2)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "slurm/run_spec.sbatch" in proc.stdout
    assert list((tmp_path / "r" / "nosub").glob("*/summary.json"))
