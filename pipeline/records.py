"""The run record on disk: one object builds every path, every write is atomic.

    results/<experiment>/<run_id>/
      config.json   resolved parameters, task, spec path + hash   (written at submit/start)
      env.json      host, Slurm ids, GPU, versions, git, argv, start/end
      raw.json      the task's raw measurements
      summary.json  the task's summary; written last: its presence means "done"
      error.json    traceback and reason, only when the run failed
      log.txt       the run's own log (appended across attempts)
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DONE, FAILED, PENDING, MISSING, CORRUPT = "done", "failed", "pending", "missing", "corrupt"
VERSION_PACKAGES = ("torch", "triton", "transformers", "numpy", "pandas", "submitit")


@dataclass(frozen=True)
class RunPaths:
    """Every path of one run record (the only place that spells file names)."""

    folder: Path

    @classmethod
    def of(cls, results_dir: str | Path, experiment: str, run_id: str) -> RunPaths:
        root = Path(results_dir).resolve()
        folder = (root / experiment / run_id).resolve()
        if root not in folder.parents:  # names are checked at spec load; this is the last line of defence
            raise ValueError(f"run folder {folder} escapes the results directory {root}")
        return cls(folder)

    config = property(lambda self: self.folder / "config.json")
    env = property(lambda self: self.folder / "env.json")
    raw = property(lambda self: self.folder / "raw.json")
    summary = property(lambda self: self.folder / "summary.json")
    error = property(lambda self: self.folder / "error.json")
    log = property(lambda self: self.folder / "log.txt")
    scratch = property(lambda self: self.folder / "scratch")

    def is_done(self) -> bool:
        """Done = a readable summary.json (atomic writes make a partial one impossible)."""
        return self.state() == DONE

    def state(self) -> str:
        """``done``, ``failed``, ``pending`` (started or queued, not finished: also a killed run),
        ``corrupt`` (an unreadable summary) or ``missing`` (no folder)."""
        if self.summary.exists():
            return DONE if read_json(self.summary) is not None else CORRUPT
        if self.error.exists():
            return FAILED
        if self.folder.exists():
            return PENDING
        return MISSING

    def clear_outcome(self) -> None:
        """Forget a previous outcome (``--force``, failed retry): summary, error and raw go."""
        for p in (self.summary, self.error, self.raw):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- JSON I/O


def jsonable(obj: Any, where: str = "") -> Any:
    """A JSON-safe copy: numpy scalars/arrays become Python values, NaN/inf become None.

    Tensors are refused (tasks must return plain numbers), naming the key that holds one.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Path):
        return str(obj)
    kind = type(obj).__module__.split(".")[0]
    if kind == "torch":
        raise TypeError(f"value at '{where or '<root>'}' is a torch {type(obj).__name__}; "
                        "return plain numbers or lists (tensor.tolist() / .item())")
    if kind == "numpy":
        return jsonable(obj.tolist() if hasattr(obj, "tolist") else obj.item(), where)
    raise TypeError(f"value at '{where or '<root>'}' has type {type(obj).__name__}, which JSON cannot hold")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then ``os.replace`` onto ``path``."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    """Parsed JSON, or None when the file is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- environment


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _cmd(args: list[str], cwd: Path | None = None, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@lru_cache(maxsize=8)
def git_info(where: str) -> dict[str, Any]:
    """Commit and dirty flag (tracked files only) of the repository holding ``where``."""
    commit = _cmd(["git", "rev-parse", "HEAD"], cwd=Path(where))
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _cmd(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(where))
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


@lru_cache(maxsize=1)
def _static_env() -> dict[str, Any]:
    """What does not change between the runs of one process (computed once)."""
    versions: dict[str, str | None] = {}
    for pkg in VERSION_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    gpu: dict[str, Any] = {"count": 0, "models": [], "driver": None, "cuda": None}
    smi = _cmd(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]) \
        if shutil.which("nvidia-smi") else None
    if smi:
        rows = [r.split(", ") for r in smi.splitlines() if r.strip()]
        gpu["models"] = [r[0] for r in rows]
        gpu["driver"] = rows[0][1] if rows and len(rows[0]) > 1 else None
        gpu["count"] = len(rows)
    return {"host": socket.gethostname(), "python": sys.version.split()[0], "python_executable": sys.executable,
            "platform": sys.platform, "versions": versions, "gpu": gpu}


def _nvidia_present() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


def torch_info() -> dict[str, Any]:
    """CUDA build and visible GPUs as torch sees them; only when torch is (or must be) imported.

    On a machine without an NVIDIA driver torch is not imported just for this (it costs
    seconds per worker); the end-of-run capture fills it in when the task imported torch.
    """
    if "torch" not in sys.modules and not _nvidia_present():
        return {}
    if importlib.util.find_spec("torch") is None:
        return {}
    import torch

    info: dict[str, Any] = {"cuda": torch.version.cuda, "visible": 0}
    if torch.cuda.is_available():  # what this process sees (CUDA_VISIBLE_DEVICES applies)
        info["visible"] = torch.cuda.device_count()
        info["models_visible"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def capture_env(repo_hint: Path | None = None) -> dict[str, Any]:
    """The environment of this run: host, Slurm ids, GPU, CUDA, versions, git, argv, start time."""
    env = dict(_static_env())
    env["gpu"] = {**env["gpu"], **torch_info()}
    env["slurm"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("SLURM_") and (
        k.endswith(("_ID", "_COUNT", "_NAME", "_NODELIST", "_PARTITION", "_MIN", "_MAX")) or k == "SLURM_CLUSTER_NAME")}
    env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    env["git"] = git_info(str((repo_hint or Path.cwd()).resolve()))
    env["argv"] = list(sys.argv)
    env["cwd"] = os.getcwd()
    env["pid"] = os.getpid()
    env["start"] = now_iso()
    env["end"] = None
    return env


def detect_device() -> str:
    """``"cuda"`` when torch sees a GPU in this process, else ``"cpu"`` (no driver or no torch: cpu)."""
    if not _nvidia_present() or importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
