"""Local executor: packed elements as worker processes on this machine, a bounded number at once.

Parallelism defaults to the number of visible GPUs (each worker gets its own
``CUDA_VISIBLE_DEVICES``, ``resources.gpus`` devices per element), or 1 without GPUs,
since benchmark timings on shared CPU cores are meaningless. ``--jobs N`` overrides it.
Outcomes are read back from the run records on disk, so a worker killed with SIGKILL
simply leaves its unfinished runs pending for the next launch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from pipeline.plan import ExperimentPlan
from pipeline.records import RunPaths, _cmd
from pipeline.runner import ElementJob

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def visible_gpus() -> list[str]:
    """GPU ids this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi"):
        out = _cmd(["nvidia-smi", "-L"])
        if out:
            return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
    return []


def worker_env(gpus: list[str] | None) -> dict[str, str]:
    """Environment of a worker: the project importable, and its own GPUs when it asked for some."""
    env = dict(os.environ)
    paths = [os.getcwd(), str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


@dataclass
class _Slot:
    proc: subprocess.Popen[bytes]
    job: ElementJob
    gpus: list[str]


def run_local(plans: list[ExperimentPlan], jobs: int | None = None) -> Counter[str]:
    """Run every element of every plan; returns run states read back from disk."""
    gpus_free = visible_gpus()
    n_gpus = len(gpus_free)
    limit = jobs or max(1, n_gpus)
    queue: deque[tuple[ExperimentPlan, ElementJob]] = deque(
        (plan, plan.job(el)) for plan in plans for el in plan.elements())
    total = len(queue)
    running: list[_Slot] = []
    finished = 0
    print(f"local executor: {total} element(s), up to {limit} at once, GPUs: {','.join(gpus_free) or 'none'}",
          flush=True)
    try:
        while queue or running:
            while queue and len(running) < limit:
                plan, job = queue[0]
                want = min(plan.spec.resources.gpus, n_gpus)
                if want and len(gpus_free) < want:
                    break  # wait for a worker to hand its GPUs back
                queue.popleft()
                mine = [gpus_free.pop(0) for _ in range(want)]
                proc = subprocess.Popen([sys.executable, "-m", "pipeline.runner"], stdin=subprocess.PIPE,
                                        stdout=sys.stderr.fileno(), env=worker_env(mine if want else None))
                if proc.stdin is not None:
                    proc.stdin.write(json.dumps(job.to_dict()).encode())
                    proc.stdin.close()
                running.append(_Slot(proc, job, mine))
            time.sleep(0.1)
            for slot in [s for s in running if s.proc.poll() is not None]:
                running.remove(slot)
                gpus_free.extend(slot.gpus)
                finished += 1
                states = Counter(RunPaths.of(slot.job.results_dir, r.experiment, r.run_id).state()
                                 for r in slot.job.runs)
                how = "" if slot.proc.returncode in (0, 1) else f" (worker exit {slot.proc.returncode})"
                print(f"[{finished}/{total}] {slot.job.label}: " +
                      ", ".join(f"{k} {v}" for k, v in sorted(states.items())) + how, flush=True)
    except KeyboardInterrupt:
        for slot in running:
            if slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGINT)
        for slot in running:
            try:
                slot.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                slot.proc.kill()
        raise
    return Counter(RunPaths.of(p.results_dir, r.experiment, r.run_id).state() for p in plans for r in p.to_run)
