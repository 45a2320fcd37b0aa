"""Slurm executor: one submitit job array per experiment (split at the cluster's MaxArraySize).

Every ``#SBATCH`` line comes from submitit's own parameters; this module never builds
sbatch text. An element is an ``ElementCall`` (a submitit ``Checkpointable``): on
preemption or timeout submitit calls ``checkpoint()``, which resubmits the same
element, and the requeued element skips the runs already done.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from pipeline.executors.slurm_info import cluster_max_array_size, jobs_alive
from pipeline.expand import split_arrays
from pipeline.plan import ExperimentPlan
from pipeline.records import RunPaths
from pipeline.runner import ElementJob, run_element, setup_logging

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ElementCall(Checkpointable):
    """The pickled callable of one array element; resubmits itself when preempted or timed out."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job

    def __call__(self) -> list[dict[str, Any]]:
        setup_logging()
        return [o.__dict__ for o in run_element(ElementJob.from_dict(self.job))]

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        # Nothing to save: run records on disk are the state; done runs are skipped on resume.
        return DelayedSubmission(ElementCall(self.job))


def slurm_parameters(plan: ExperimentPlan) -> dict[str, Any]:
    """submitit ``SlurmExecutor.update_parameters`` arguments from the spec's ``resources``."""
    r, arr = plan.spec.resources, plan.spec.array
    params: dict[str, Any] = {
        "job_name": plan.spec.name, "time": r.time_min, "cpus_per_task": r.cpus, "ntasks_per_node": 1,
        "array_parallelism": arr.parallelism, "stderr_to_stdout": True,
        # SIGUSR2 this long before the time limit lets submitit requeue the element in time
        "signal_delay_s": max(10, min(90, r.time_min * 60 // 4)),
        # jobs must import this project even when it is not pip-installed
        "setup": [f"export PYTHONPATH={shlex.quote(str(PROJECT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }
    if r.gpus:
        params["gpus_per_node"] = r.gpus
    if r.mem_gb:
        params["mem"] = f"{int(r.mem_gb * 1024)}M"
    for key in ("constraint", "partition", "account", "qos", "gres"):
        if getattr(r, key):
            params[key] = getattr(r, key)
    if r.extra:
        params["additional_parameters"] = dict(r.extra)
    return params


@dataclass
class SubmittedArray:
    experiment: str
    job_id: str
    elements: int
    runs: list[tuple[str, str]]  # (experiment, run_id)


def submit(plans: list[ExperimentPlan], max_size: int | None = None) -> list[SubmittedArray]:
    """Submit one array per experiment (several when it exceeds MaxArraySize)."""
    limit = max_size or cluster_max_array_size()
    arrays: list[SubmittedArray] = []
    for plan in plans:
        elements = plan.elements()
        if not elements:
            continue
        folder = plan.exp_dir / ".submitit"
        executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=3, python=sys.executable)
        executor.update_parameters(**slurm_parameters(plan))
        for chunk in split_arrays(len(elements), limit):
            with executor.batch():
                jobs = [executor.submit(ElementCall(plan.job(elements[i]).to_dict())) for i in chunk]
            job_id = jobs[0].job_id.split("_")[0]
            runs = [(r.experiment, r.run_id) for i in chunk for r in elements[i].runs]
            arrays.append(SubmittedArray(plan.spec.name, job_id, len(chunk), runs))
            kind = "array job" if len(chunk) > 1 else "job"  # submitit submits a lone element as a plain job
            print(f"submitted {plan.spec.name}: {kind} {job_id} "
                  f"(elements {chunk.start}-{chunk.stop - 1}, {len(runs)} runs, %{plan.spec.array.parallelism})",
                  flush=True)
    return arrays


def print_hints(arrays: list[SubmittedArray], plans: list[ExperimentPlan]) -> None:
    if not arrays:
        return
    ids = ",".join(a.job_id for a in arrays)
    print(f"watch:  squeue -j {ids}")
    for plan in plans:
        print(f"status: python -m pipeline.status {plan.exp_dir}")
        print(f"logs:   {plan.exp_dir / '.submitit'}/<array_job_id>_<element>/")
    print(f"cancel: scancel {ids.replace(',', ' ')}")


def wait(arrays: list[SubmittedArray], results_dir: Path, poll_s: float = 3.0) -> Counter[str]:
    """Live progress bar of runs done/failed until every array has left the queue."""
    from tqdm import tqdm

    runs = [r for a in arrays for r in a.runs]
    ids = [a.job_id for a in arrays]

    def states() -> Counter[str]:
        return Counter(RunPaths.of(results_dir, e, rid).state() for e, rid in runs)

    with tqdm(total=len(runs), unit="run", desc="runs", file=sys.stderr, dynamic_ncols=True) as bar:
        while True:
            alive = jobs_alive(ids)
            counts = states()
            finished = counts.get("done", 0) + counts.get("failed", 0)
            bar.n = finished
            bar.set_postfix(done=counts.get("done", 0), failed=counts.get("failed", 0), refresh=False)
            bar.refresh()
            if not alive:
                return counts
            time.sleep(poll_s)
