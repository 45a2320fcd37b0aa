"""Run records: one object builds paths, writes are atomic, JSON is sanitised, env is captured."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.records import RunPaths, capture_env, jsonable, read_json, write_json_atomic


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "a" / "summary.json"
    write_json_atomic(path, {"x": 1})
    write_json_atomic(path, {"x": 2})
    assert read_json(path) == {"x": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "raw.json"
    write_json_atomic(path, {"ok": True})
    before = os.stat(path).st_ino
    with pytest.raises(TypeError, match="'bad'.*torch Tensor"):
        write_json_atomic(path, {"bad": torch.zeros(2)})
    assert read_json(path) == {"ok": True} and os.stat(path).st_ino == before
    assert [p.name for p in tmp_path.iterdir()] == ["raw.json"], "temp file must be cleaned up"


def test_jsonable_converts_numpy_and_non_finite() -> None:
    out = jsonable({"a": np.float32(1.5), "b": np.arange(3), "c": [math.nan, math.inf, 2.0], "d": np.bool_(True),
                    "e": (1, 2), "f": Path("/x")})
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": [None, None, 2.0], "d": True, "e": [1, 2], "f": "/x"}
    json.dumps(out, allow_nan=False)
    with pytest.raises(TypeError, match="'k.z'.*set"):
        jsonable({"k": {"z": {1, 2}}})


def test_run_paths_and_states(tmp_path: Path) -> None:
    paths = RunPaths.of(tmp_path, "exp", "run-1__abc")
    assert paths.folder == (tmp_path / "exp" / "run-1__abc").resolve()
    assert {p.name for p in (paths.config, paths.env, paths.raw, paths.summary, paths.error, paths.log)} == {
        "config.json", "env.json", "raw.json", "summary.json", "error.json", "log.txt"}
    assert paths.state() == "missing"
    write_json_atomic(paths.config, {})
    assert paths.state() == "pending"
    write_json_atomic(paths.error, {"message": "boom"})
    assert paths.state() == "failed"
    paths.summary.write_text('{"half": ')  # what a non-atomic writer could leave behind
    assert paths.state() == "corrupt" and not paths.is_done()
    write_json_atomic(paths.summary, {"x": 1})
    assert paths.state() == "done" and paths.is_done()
    paths.clear_outcome()
    assert paths.state() == "pending"


@pytest.mark.parametrize("exp,run", [("..", "x"), ("exp", "../../x"), ("/abs", "x"), ("exp", "/etc")])
def test_run_paths_refuse_to_escape(tmp_path: Path, exp: str, run: str) -> None:
    with pytest.raises(ValueError, match="escapes the results directory"):
        RunPaths.of(tmp_path / "results", exp, run)


def test_capture_env_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    env = capture_env(Path(__file__).parent)
    for key in ("host", "python", "versions", "gpu", "slurm", "git", "argv", "start", "end", "pid"):
        assert key in env
    assert env["slurm"]["SLURM_JOB_ID"] == "123" and env["slurm"]["SLURM_ARRAY_TASK_ID"] == "4"
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or env["versions"]["torch"] == torch.__version__
    assert env["git"]["commit"] is None or len(env["git"]["commit"]) == 40
    assert env["gpu"]["count"] >= 0
