"""Helpers for the pipeline tests: write specs, call the CLIs in-process or as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TASK = "tests.pipeline.sample_task:run"


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[str, str], Path]:
    """``write_spec(yaml_text, name="spec.yaml")`` -> path of the dedented spec under tmp_path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    return write


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_cli(module: str, *args: str | Path, timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m <module> args...`` as a real process from the repo root."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)
