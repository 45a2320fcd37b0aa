"""The object a task receives: everything it may touch besides its parameters.

Tasks never write files themselves (see docs/design.md). The run wrapper builds a
``RunContext`` per run; ``shared`` lives for the whole packed array element, so runs
grouped together (``array.group_by``) reuse an expensive setup such as a loaded model
or clean reference logits instead of rebuilding it per run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ProgressFn = Callable[[int, int, str], None]


def _no_progress(done: int, total: int, message: str = "") -> None:
    return None


@dataclass
class RunContext:
    """Per-run services handed to ``task.run(params, ctx)``.

    Attributes
    ----------
    run_id: the run's folder name (slug + config hash).
    scratch_dir: a private folder the task may fill with temporary files; it is
        not part of the run record and may be deleted after the run.
    log: a logger whose records go to the run's ``log.txt`` (and the console).
    shared: a dict shared by every run of the same packed array element (same
        process); use it to cache models, tokenised text, reference outputs.
    progress: ``progress(done, total, message)`` reports progress of long work.
    device: ``"cuda"`` when a GPU is visible to this process, else ``"cpu"``.
    """

    run_id: str
    scratch_dir: Path
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ecc_kv_bench.task"))
    shared: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFn = _no_progress
    device: str = "cpu"

    @classmethod
    def for_tests(cls, tmp_path: Path, device: str = "cpu") -> RunContext:
        """A context for unit tests and notebooks: scratch under ``tmp_path``."""
        scratch = Path(tmp_path) / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        return cls(run_id="test", scratch_dir=scratch, device=device)
