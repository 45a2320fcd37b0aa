"""Read-only questions to a Slurm cluster (no submitit needed): MaxArraySize, are jobs alive."""

from __future__ import annotations

import re
import subprocess

from pipeline.records import _cmd

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize


def cluster_max_array_size() -> int:
    """The cluster's MaxArraySize (``scontrol show config``), or Slurm's default 1001."""
    out = _cmd(["scontrol", "show", "config"])
    if out:
        m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
        if m:
            return int(m.group(1))
    return DEFAULT_MAX_ARRAY_SIZE


def jobs_alive(job_ids: list[str]) -> bool:
    """True while any of the jobs is pending or running (squeue; sacct needs accounting)."""
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return True
    if out.returncode != 0:
        return "Invalid job id" not in out.stderr
    return bool(out.stdout.strip())


def cluster_partitions() -> list[str] | None:
    """Partition names ``sinfo`` reports (default marked '*' stripped), or None when unknown."""
    out = _cmd(["sinfo", "-h", "-o", "%R"])
    if out is None:
        return None
    return sorted({line.strip().rstrip("*") for line in out.splitlines() if line.strip()})
