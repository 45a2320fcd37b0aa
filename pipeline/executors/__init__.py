"""Executors: where packed elements run. ``inline`` (this process), ``local`` (worker
processes on this machine), ``slurm`` (submitit job arrays). ``auto`` picks Slurm when
``sbatch`` is on PATH, local processes otherwise.
"""

from __future__ import annotations

import shutil

EXECUTORS = ("auto", "slurm", "local", "inline")


def resolve_executor(name: str) -> str:
    """``auto`` -> ``slurm`` or ``local``; other names are checked against ``EXECUTORS``."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if name == "slurm" and not shutil.which("sbatch"):
        raise ValueError("--executor slurm: 'sbatch' is not on PATH; use --executor local (or auto) on this machine")
    return name
