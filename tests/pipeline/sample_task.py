"""A small real task for the pipeline tests: Monte-Carlo estimates of pi and of a Gaussian's moments.

It does real numpy work (seeded, so results are reproducible and checkable against
math.pi), uses ``ctx.shared`` the way model-loading tasks do (an expensive setup
cached per element), and has knobs the tests need: ``fail`` raises (``fail_if_missing`` until a file exists), ``wait_file``
blocks until a file exists (so a test can SIGKILL a run mid-flight), and
``block_first_attempt`` sleeps on the first Slurm attempt only (requeue tests).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.context import RunContext

KNOWN = {"n", "seed", "repeats", "dist", "fail", "wait_file", "sleep_s", "block_first_attempt", "label", "extra", "fail_if_missing"}
DISTS = ("uniform", "normal")


def validate(params: dict[str, Any]) -> None:
    """Reject bad parameters before submission, naming the key."""
    unknown = set(params) - KNOWN
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(KNOWN)}")
    n = params.get("n", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if params.get("dist", "uniform") not in DISTS:
        raise ValueError(f"dist must be one of {DISTS}, got {params.get('dist')!r}")


def _table(ctx: RunContext, seed: int) -> np.ndarray:
    """The 'expensive setup': a table of random offsets, built once per element and seed."""
    key = ("offsets", seed)
    if key not in ctx.shared:
        ctx.shared[key] = np.random.default_rng(seed).random(4096)
        ctx.shared["builds"] = ctx.shared.get("builds", 0) + 1
    return ctx.shared[key]


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    validate(params)
    if params.get("block_first_attempt") and int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0:
        ctx.log.info("first attempt: sleeping until preempted")
        time.sleep(float(params["block_first_attempt"]))
    if params.get("wait_file"):
        ctx.log.info("waiting for %s", params["wait_file"])
        while not Path(params["wait_file"]).exists():
            time.sleep(0.05)
    time.sleep(float(params.get("sleep_s", 0)))
    if params.get("fail_if_missing") and not Path(params["fail_if_missing"]).exists():
        raise FileNotFoundError(f"fail_if_missing: {params['fail_if_missing']} does not exist yet")
    if params.get("fail"):
        raise RuntimeError(f"requested failure for n={params.get('n')}")
    n, seed, repeats = int(params.get("n", 1000)), int(params.get("seed", 0)), int(params.get("repeats", 3))
    offsets = _table(ctx, seed)
    rng = np.random.default_rng(seed)
    estimates, means, variances = [], [], []
    for r in range(repeats):
        pts = (rng.random((n, 2)) + offsets[r % len(offsets)]) % 1.0  # [n, 2] uniform in the unit square
        estimates.append(float(4.0 * np.mean(np.sum(pts * pts, axis=1) <= 1.0)))
        x = rng.standard_normal(n) if params.get("dist", "uniform") == "normal" else rng.random(n)
        means.append(float(x.mean()))
        variances.append(float(x.var(ddof=1)) if n > 1 else 0.0)
        ctx.progress(r + 1, repeats, "repeat")
    ctx.log.info("pi estimates %s", estimates)
    return {"pi_estimates": estimates, "means": means, "variances": variances, "n": n,
            "setup_builds": ctx.shared.get("builds", 0), "pid": os.getpid(),
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    est = np.asarray(raw["pi_estimates"])
    return {"pi_mean": float(est.mean()), "pi_abs_err": float(abs(est.mean() - math.pi)),
            "pi_std": float(est.std()), "mean_of_means": float(np.mean(raw["means"])),
            "mean_variance": float(np.mean(raw["variances"])), "setup_builds": int(raw["setup_builds"]),
            "pid": int(raw["pid"]), "restart_count": int(raw["restart_count"])}


def plots(df: Any, outdir: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.scatter(df["n"], df["pi_abs_err"])
    ax.set_xscale("log")
    ax.set_xlabel("n")
    ax.set_ylabel("|pi estimate - pi|")
    fig.savefig(Path(outdir) / "pi_error.png")
    plt.close(fig)
