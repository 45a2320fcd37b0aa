"""Contract tests for the ``gemm_shapes`` task kind on tiny shapes (CPU here, CUDA when present)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ecc_kv.experiments import gemm_shapes
from pipeline.context import RunContext
from tests.experiments._shape_helpers import TINY_TIMING, assert_flat_summary, assert_json_clean


def _params(device: str, **kw: object) -> dict[str, object]:
    return {"m": 32, "hidden": 48, "dim": 13, "vary": "n", "dtype": "fp32", "align": 8, "align_coarse": 64,
            "device": device, **TINY_TIMING, **kw}


def test_run_summarize_contract(tmp_path: Path, device: str) -> None:
    raw = gemm_shapes.run(_params(device), RunContext.for_tests(tmp_path, device=device))
    assert_json_clean(raw)
    roles = {p["role"]: p for p in raw["points"]}
    assert set(roles) == {"target", "aligned", "coarse"}
    assert [roles[r]["dim"] for r in ("target", "aligned", "coarse")] == [13, 16, 64]
    for p in roles.values():
        assert len(p["times_ms"]) == TINY_TIMING["repeats"] and all(t > 0 for t in p["times_ms"])
    assert (roles["target"]["m"], roles["target"]["k"], roles["target"]["n"]) == (32, 48, 13)

    s = gemm_shapes.summarize(raw)
    assert_flat_summary(s)
    for key in ("median_ms", "iqr_ms", "tflops", "slowdown_vs_aligned", "slowdown_vs_coarse", "aligned_median_ms"):
        assert s[key] is not None, key
    assert s["shape"] == "32x48x13" and s["aligned"] == 0 and s["device_used"] == device
    assert s["aligned_dim"] == 16 and s["coarse_dim"] == 64
    assert s["slowdown_vs_aligned"] == pytest.approx(s["median_ms"] / s["aligned_median_ms"])
    assert s["tflops"] == pytest.approx(2 * 32 * 48 * 13 / (s["median_ms"] * 1e-3) / 1e12)


def test_vary_k_and_aligned_dim_is_its_own_reference(tmp_path: Path, device: str) -> None:
    raw = gemm_shapes.run(_params(device, vary="k", dim=16, dtype="bf16", align_coarse=0),
                          RunContext.for_tests(tmp_path, device=device))
    assert [p["role"] for p in raw["points"]] == ["target", "aligned"]  # align_coarse=0: no coarse reference
    assert raw["points"][1].get("reused") is True  # 16 is aligned: timed once, not twice
    s = gemm_shapes.summarize(raw)
    assert s["shape"] == "32x16x48" and s["aligned"] == 1
    assert s["slowdown_vs_aligned"] == 1.0
    assert "coarse_dim" not in s


@pytest.mark.parametrize(
    ("bad", "key", "hint"),
    [
        ({"dtype": "fp8"}, "dtype", "fp16"),
        ({"vary": "m"}, "vary", "'n'"),
        ({"dim": 0}, "dim", ">= 1"),
        ({"dim": 1.5}, "dim", "integer"),
        ({"m": True}, "m", "integer"),
        ({"repeats": 0}, "repeats", ">= 1"),
        ({"device": "tpu"}, "device", "cuda"),
        ({"head_dim": 128}, "head_dim", "possible parameters"),
    ],
)
def test_validate_names_key_and_choices(bad: dict[str, object], key: str, hint: str) -> None:
    with pytest.raises(ValueError, match=key) as info:
        gemm_shapes.validate({**_params("cpu"), **bad})
    assert hint in str(info.value)


def test_validate_accepts_defaults_and_spec_style_values() -> None:
    gemm_shapes.validate({})
    gemm_shapes.validate({"dim": 107.0, "vary": "k", "dtype": "bf16", "inner": 0, "warmup": 0})


def test_plots_write_pngs(tmp_path: Path, device: str) -> None:
    rows = []
    for vary in ("n", "k"):
        for dim in (12, 16):
            params = _params(device, vary=vary, dim=dim)
            s = gemm_shapes.summarize(gemm_shapes.run(params, RunContext.for_tests(tmp_path, device=device)))
            rows.append({**params, **s})
    df = pd.DataFrame(rows)
    paths = gemm_shapes.plots(df, tmp_path / "report")
    assert {p.name for p in paths} == {"gemm_time_tflops_vs_dim.png", "gemm_slowdown_vs_dim.png",
                                       "gemm_highlight.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no 107 in this sweep: the highlight falls back to its irregular dim (12 -> 16 and 64)
    table = gemm_shapes.highlight(df)
    assert list(table["dim"]) == [12, 12] and list(table["vary"]) == ["k", "n"]
    assert list(table["aligned_dim"]) == [16, 16] and list(table["coarse_dim"]) == [64, 64]
    md = (tmp_path / "report" / "gemm_highlight.md").read_text()
    assert md.startswith("| vary | dtype | dim | median_ms |") and md.count("\n") == 4
    assert gemm_shapes.plots(pd.DataFrame(), tmp_path / "empty") == []
