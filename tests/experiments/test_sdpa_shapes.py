"""Contract tests for the ``sdpa_shapes`` task kind on tiny shapes (CPU here, CUDA when present)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from ecc_kv.experiments import sdpa_shapes
from pipeline.context import RunContext
from tests.experiments._shape_helpers import TINY_TIMING, assert_flat_summary, assert_json_clean

KNOWN = {"flash", "efficient", "math", "cudnn", "overrideable"}


def _params(device: str, **kw: object) -> dict[str, object]:
    return {"batch": 1, "heads": 2, "seq_len": 24, "head_dim": 13, "dtype": "fp32", "backend": "default",
            "causal": False, "align": 8, "align_coarse": 32, "device": device, **TINY_TIMING, **kw}


@pytest.mark.parametrize("causal", [False, True])
def test_default_backend_contract(tmp_path: Path, device: str, causal: bool) -> None:
    raw = sdpa_shapes.run(_params(device, causal=causal), RunContext.for_tests(tmp_path, device=device))
    assert_json_clean(raw)
    assert [p["head_dim"] for p in raw["points"]] == [13, 16, 32]
    s = sdpa_shapes.summarize(raw)
    assert_flat_summary(s)
    assert s["status"] == "ok" and s["accepted"] == 1 and s["refusal_reason"] == ""
    assert s["default_backend"] in KNOWN and s["picked_backend"] == s["default_backend"]
    assert s["aligned"] == 0 and s["aligned_dim"] == 16 and s["coarse_dim"] == 32
    assert s["median_ms"] > 0 and s["tflops"] > 0 and s["slowdown_vs_aligned"] > 0
    assert s["max_abs_err"] < 1e-4  # checked against a plain fp32 softmax(QK^T)V oracle
    pairs = 24 * 25 // 2 if causal else 24 * 24
    assert s["gflop"] == pytest.approx(4 * 1 * 2 * 13 * pairs / 1e9)


def test_forced_math_backend_is_the_one_that_runs(tmp_path: Path, device: str) -> None:
    s = sdpa_shapes.summarize(sdpa_shapes.run(_params(device, backend="math", q_len=3),
                                              RunContext.for_tests(tmp_path, device=device)))
    assert s["status"] == "ok" and s["picked_backend"] == "math" and s["max_abs_err"] < 1e-4
    # the profiler agrees: forcing math dispatches the math op
    q = torch.randn(1, 1, 4, 8, device=device)
    with sdpa_shapes.backend_context("math"):
        assert sdpa_shapes.picked_backend(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)) == "math"


def test_refusal_is_recorded_not_raised(tmp_path: Path, device: str) -> None:
    # CPU has no memory-efficient kernel; CUDA flash attention takes only fp16/bf16
    backend = "efficient" if device == "cpu" else "flash"
    raw = sdpa_shapes.run(_params(device, backend=backend), RunContext.for_tests(tmp_path, device=device))
    assert_json_clean(raw)
    assert all(p["status"] == "refused" and p["reason"] for p in raw["points"])
    s = sdpa_shapes.summarize(raw)
    assert_flat_summary(s)
    assert s["status"] == "refused" and s["accepted"] == 0 and "RuntimeError" in s["refusal_reason"]
    assert s["median_ms"] is None and s["tflops"] is None and s["slowdown_vs_aligned"] is None
    assert s["default_backend"] in KNOWN  # PyTorch's own pick is still recorded


@pytest.mark.parametrize(
    ("bad", "key", "hint"),
    [
        ({"backend": "xformers"}, "backend", "cudnn"),
        ({"dtype": "float16"}, "dtype", "bf16"),
        ({"head_dim": -1}, "head_dim", ">= 1"),
        ({"causal": "yes"}, "causal", "true or false"),
        ({"causal": True, "q_len": 1}, "q_len", "seq_len"),
        ({"q_len": 0}, "q_len", ">= 1"),
        ({"dim": 107}, "dim", "possible parameters"),
    ],
)
def test_validate_names_key_and_choices(bad: dict[str, object], key: str, hint: str) -> None:
    with pytest.raises(ValueError, match=key) as info:
        sdpa_shapes.validate({**_params("cpu"), **bad})
    assert hint in str(info.value)


def test_attention_flops_counts_unmasked_pairs() -> None:
    assert sdpa_shapes.attention_flops(2, 3, 4, 4, 8, causal=False) == 4 * 2 * 3 * 8 * 16
    assert sdpa_shapes.attention_flops(2, 3, 4, 4, 8, causal=True) == 4 * 2 * 3 * 8 * (1 + 2 + 3 + 4)


def test_plots_write_pngs(tmp_path: Path, device: str) -> None:
    rows = []
    for backend in ("default", "math", "efficient" if device == "cpu" else "flash"):
        for head_dim in (12, 16):
            params = _params(device, backend=backend, head_dim=head_dim)
            s = sdpa_shapes.summarize(sdpa_shapes.run(params, RunContext.for_tests(tmp_path, device=device)))
            rows.append({**params, **s})
    df = pd.DataFrame(rows)
    assert (df["accepted"] == 0).any()  # a refused backend is in the frame and must not break the plots
    paths = sdpa_shapes.plots(df, tmp_path / "report")
    assert {p.name for p in paths} == {
        "sdpa_time_tflops_vs_head_dim.png", "sdpa_slowdown_vs_head_dim.png", "sdpa_backend_acceptance.png",
        "sdpa_highlight.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = sdpa_shapes.highlight(df)  # one row per backend at the irregular head dim 12
    assert sorted(table["backend"]) == sorted(df["backend"].unique()) and set(table["head_dim"]) == {12}
    assert set(table["status"]) == {"ok", "refused"}
    assert (tmp_path / "report" / "sdpa_highlight.md").read_text().count("refused") == 1
