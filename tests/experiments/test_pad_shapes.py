"""Contract tests for the ``pad_shapes`` task kind on tiny shapes (CPU here, CUDA when present)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ecc_kv.experiments import pad_shapes
from pipeline.context import RunContext
from tests.experiments._shape_helpers import TINY_TIMING, assert_flat_summary, assert_json_clean


def _params(device: str, **kw: object) -> dict[str, object]:
    return {"op": "gemm", "dim": 13, "align": 8, "dtype": "fp32", "m": 32, "hidden": 48, "vary": "n",
            "batch": 1, "heads": 2, "seq_len": 24, "backend": "default", "causal": False, "device": device,
            **TINY_TIMING, **kw}


@pytest.mark.parametrize(
    ("extra", "per_call_pad"),
    [({"op": "gemm", "vary": "n"}, False), ({"op": "gemm", "vary": "k"}, True),
     ({"op": "sdpa"}, True), ({"op": "sdpa", "causal": True, "backend": "math"}, True)],
)
def test_run_summarize_contract(tmp_path: Path, device: str, extra: dict[str, object], per_call_pad: bool) -> None:
    raw = pad_shapes.run(_params(device, **extra), RunContext.for_tests(tmp_path, device=device))
    assert_json_clean(raw)
    names = [p["variant"] for p in raw["points"]]
    assert names == (["irregular", "padded", "padded_kernel"] if per_call_pad else ["irregular", "padded"])
    s = pad_shapes.summarize(raw)
    assert_flat_summary(s)
    assert s["padded_dim"] == 16 and s["aligned"] == 0
    assert s["wasted_flops_frac"] == pytest.approx(3 / 16)
    for v in ("irregular", "padded", "padded_kernel"):
        assert s[f"{v}_status"] == "ok" and s[f"{v}_ms"] > 0
        assert s[f"{v}_max_abs_err"] < 1e-4  # zero padding leaves the kept outputs unchanged
    assert s["speedup_padded"] == pytest.approx(s["irregular_ms"] / s["padded_ms"])
    if not per_call_pad:
        assert s["pad_overhead_ms"] == 0.0
    if extra["op"] == "sdpa":
        assert s["offline_pad_ms"] == 0.0 and s["irregular_picked_backend"]
    else:
        assert s["offline_pad_ms"] > 0


def test_refused_backend_is_recorded(tmp_path: Path, device: str) -> None:
    backend = "efficient" if device == "cpu" else "flash"  # CPU: no efficient kernel; CUDA flash: no fp32
    raw = pad_shapes.run(_params(device, op="sdpa", backend=backend), RunContext.for_tests(tmp_path, device=device))
    s = pad_shapes.summarize(raw)
    assert_flat_summary(s)
    assert s["irregular_status"] == "refused" and "RuntimeError" in s["irregular_reason"]
    assert s["speedup_padded"] is None and s["irregular_ms"] is None


@pytest.mark.parametrize(
    ("bad", "key", "hint"),
    [({"op": "conv"}, "op", "sdpa"), ({"align": 0}, "align", ">= 1"), ({"backend": "fast"}, "backend", "flash"),
     ({"vary": "x"}, "vary", "'k'"), ({"head_dim": 107}, "head_dim", "possible parameters")],
)
def test_validate_names_key_and_choices(bad: dict[str, object], key: str, hint: str) -> None:
    with pytest.raises(ValueError, match=key) as info:
        pad_shapes.validate({**_params("cpu"), **bad})
    assert hint in str(info.value)


def test_plots_write_pngs(tmp_path: Path, device: str) -> None:
    rows = []
    for op in ("gemm", "sdpa"):
        for dim in (13, 16):
            params = _params(device, op=op, dim=dim)
            s = pad_shapes.summarize(pad_shapes.run(params, RunContext.for_tests(tmp_path, device=device)))
            rows.append({**params, **s})
    paths = pad_shapes.plots(pd.DataFrame(rows), tmp_path / "report")
    assert {p.name for p in paths} == {"pad_time_vs_dim.png", "pad_speedup_vs_dim.png"}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_fill_keys_the_spec_never_set(tmp_path: Path, device: str) -> None:
    # the aggregator's frame only has the spec's keys: an SDPA pad spec has no `vary`, `m`, `hidden`
    params = {k: v for k, v in _params(device, op="sdpa").items() if k not in ("vary", "m", "hidden")}
    s = pad_shapes.summarize(pad_shapes.run(params, RunContext.for_tests(tmp_path, device=device)))
    paths = pad_shapes.plots(pd.DataFrame([{**params, **s}]), tmp_path / "report")
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)
