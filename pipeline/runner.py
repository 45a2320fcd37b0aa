"""Run a packed array element: its runs one after another, each leaving a run record.

Every executor ends here (inline in-process, local worker processes, Slurm array
elements, the plain-sbatch ``run_task``). A run whose ``summary.json`` exists is
skipped, so a requeued or relaunched element only does what is left; a run that
raises gets ``error.json`` and the element goes on with the next run.

``python -m pipeline.runner`` reads an element (JSON, see ``ElementJob.to_dict``) on
stdin and runs it: that is the local executor's worker process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.context import RunContext
from pipeline.expand import Run
from pipeline.records import (
    DONE,
    RunPaths,
    capture_env,
    detect_device,
    now_iso,
    remove_tree,
    torch_info,
    write_json_atomic,
)
from pipeline.tasks import Task, load_task

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"  # log.txt belongs to one run: no logger name
PROGRESS_EVERY_S = 5.0


@dataclass
class ElementJob:
    """What an executor hands a worker: the runs of one element and where records go."""

    results_dir: str
    runs: list[Run]
    spec_path: str = ""
    spec_hash: str = ""
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"results_dir": self.results_dir, "runs": [r.to_dict() for r in self.runs],
                "spec_path": self.spec_path, "spec_hash": self.spec_hash, "label": self.label}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ElementJob:
        return cls(results_dir=d["results_dir"], runs=[Run.from_dict(r) for r in d["runs"]],
                   spec_path=d.get("spec_path", ""), spec_hash=d.get("spec_hash", ""), label=d.get("label", ""))


@dataclass
class RunOutcome:
    """How one run of an element ended: ``done``, ``failed`` or ``skipped`` (already done)."""

    run_id: str
    state: str
    seconds: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _check_summary(summary: Any) -> dict[str, Any]:
    if not isinstance(summary, dict):
        raise TypeError(f"summarize() must return a dict, got {type(summary).__name__}")
    for key, value in summary.items():
        if not isinstance(key, str):
            raise TypeError(f"summary keys must be strings, got {key!r}")
        if value is not None and not isinstance(value, (bool, int, float, str)) and \
                type(value).__module__.split(".")[0] != "numpy":
            raise TypeError(f"summary must be flat (numbers/strings): key '{key}' holds a {type(value).__name__}; "
                            "put nested data in raw")
    return summary


def _progress_fn(log: logging.Logger) -> Any:
    last = [0.0]

    def progress(done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or done >= total:
            last[0] = now
            log.info("progress %d/%d %s", done, total, message)

    return progress


def run_one(run: Run, job: ElementJob, task: Task, shared: dict[str, Any], device: str) -> RunOutcome:
    """Execute one run and write its record; exceptions become ``error.json``."""
    paths = RunPaths.of(job.results_dir, run.experiment, run.run_id)
    if paths.is_done():
        return RunOutcome(run.run_id, "skipped")
    paths.folder.mkdir(parents=True, exist_ok=True)
    paths.clear_outcome()
    write_json_atomic(paths.config, run.config(job.spec_path, job.spec_hash))
    log = logging.getLogger(f"pipeline.run.{run.run_id}")
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(paths.log, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_LOG_FORMAT))
    log.addHandler(handler)
    module_file = getattr(task.module, "__file__", None)  # git info of the code that runs
    env = capture_env(Path(module_file).resolve().parent if module_file else None)
    write_json_atomic(paths.env, env)
    t0 = time.perf_counter()
    paths.scratch.mkdir(exist_ok=True)
    try:
        log.info("start run %s (%s) attempt at %s", run.run_id, run.task, env["start"])
        log.info("params %s", json.dumps(run.params, sort_keys=True, default=str))
        ctx = RunContext(run_id=run.run_id, scratch_dir=paths.scratch, log=log, shared=shared,
                         progress=_progress_fn(log), device=device)
        raw = task.run(dict(run.params), ctx)
        if not isinstance(raw, dict):
            raise TypeError(f"{run.task} returned {type(raw).__name__}; run() must return a dict of raw results")
        write_json_atomic(paths.raw, raw)
        summary = _check_summary(task.summarize(raw))
        seconds = time.perf_counter() - t0
        env["end"], env["duration_s"] = now_iso(), round(seconds, 3)
        env["gpu"].update(torch_info())
        write_json_atomic(paths.env, env)
        write_json_atomic(paths.summary, summary)  # last: from now on the run is done
        log.info("done in %.2f s", seconds)
        remove_tree(paths.scratch)
        return RunOutcome(run.run_id, DONE, seconds)
    except (Exception, KeyboardInterrupt) as exc:
        seconds = time.perf_counter() - t0
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "exception"
        message = f"{type(exc).__name__}: {exc}".strip()
        tb = traceback.format_exc()
        log.error("run failed after %.2f s: %s\n%s", seconds, message, tb)
        env["end"], env["duration_s"] = now_iso(), round(seconds, 3)
        write_json_atomic(paths.env, env)
        write_json_atomic(paths.error, {"reason": reason, "type": type(exc).__name__, "message": message,
                                        "traceback": tb, "time": now_iso(), "seconds": round(seconds, 3)})
        if isinstance(exc, KeyboardInterrupt):
            raise
        return RunOutcome(run.run_id, "failed", seconds, error=message.splitlines()[0] if message else "")
    finally:
        log.removeHandler(handler)
        handler.close()


def run_element(job: ElementJob) -> list[RunOutcome]:
    """Run every run of the element in order; one ``ctx.shared`` dict for all of them."""
    shared: dict[str, Any] = {}
    tasks: dict[str, Task] = {}
    device = detect_device()
    outcomes: list[RunOutcome] = []
    for run in job.runs:
        if run.task not in tasks:
            try:
                tasks[run.task] = load_task(run.task)
            except Exception as exc:  # record the import failure on the run, then go on
                paths = RunPaths.of(job.results_dir, run.experiment, run.run_id)
                paths.folder.mkdir(parents=True, exist_ok=True)
                write_json_atomic(paths.error, {"reason": "task import failed", "type": type(exc).__name__,
                                                "message": str(exc).splitlines()[0], "traceback":
                                                traceback.format_exc(), "time": now_iso()})
                outcomes.append(RunOutcome(run.run_id, "failed", error=str(exc).splitlines()[0]))
                continue
        outcomes.append(run_one(run, job, tasks[run.task], shared, device))
    return outcomes


def setup_logging(level: int = logging.INFO) -> None:
    """Console logging for the CLIs and worker processes (run logs also go to log.txt)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.runner",
                                     description="Run one packed element read as JSON from stdin (local worker).")
    parser.parse_args(argv)
    setup_logging()
    job = ElementJob.from_dict(json.loads(sys.stdin.read()))
    outcomes = run_element(job)  # the launcher reads outcomes back from the run records
    return 1 if any(o.state == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
