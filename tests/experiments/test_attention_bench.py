"""Contract test of the attention_bench task kind on a tiny config (CPU: Triton interpreter)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ecc_kv.experiments import attention_bench as ab
from pipeline.context import RunContext

TINY = {"shape": "tiny", "batch": 2, "context": 21, "block_size": 8, "block_n": 16, "warmup": 0, "repeats": 1,
        "flush_l2": False}  # fmt: skip


@pytest.mark.parametrize("mode", ["fp16", "int12-golay"])
def test_run_and_summarize(mode: str, tmp_path: Path, device: str) -> None:
    ctx = RunContext.for_tests(tmp_path, device=device)
    raw = ab.run({**TINY, "mode": mode, "ber": 0.0 if mode == "fp16" else 0.01}, ctx)
    json.dumps(raw)  # JSON-serialisable
    summary = ab.summarize(raw)
    for key in ("median_ms", "fp16_median_ms", "ratio_to_fp16", "bytes_read", "gbps", "ratio_to_copy"):
        assert isinstance(summary[key], (int, float)) and not math.isnan(summary[key]), key
    assert summary["median_ms"] > 0 and summary["bytes_read"] > 0
    if mode == "fp16":
        assert summary["ratio_to_fp16"] == 1.0 and summary["bytes_read"] == 2 * 2 * 2 * 21 * 32 * 2
    else:
        # golay rows: 3 * ceil(32 / 3) = 33 bytes + one fp16 scale, K and V, 2 heads, 2 x 21 tokens
        assert summary["bytes_read"] == 2 * 2 * 2 * 21 * (33 + 2)
        assert summary["injected_flips"] > 0 and summary["corrected"] > 0
        assert summary["max_abs_err_vs_fp32"] < 0.5  # INT4 quantization error, not garbage
    assert summary["cuda_graph"] == int(device == "cuda")
    assert ctx.shared, "the fp16 baseline is shared with the next run of the same point"


def test_validate_rejects_bad_params() -> None:
    with pytest.raises(ValueError, match="shape"):
        ab.validate({"shape": "gpt5"})
    with pytest.raises(ValueError, match="mode"):
        ab.validate({"mode": "int3"})
    with pytest.raises(ValueError, match="context"):
        ab.validate({"context": 0})
    with pytest.raises(ValueError, match="block_n"):
        ab.validate({"block_n": 24})
    with pytest.raises(ValueError, match="cuda_graph"):
        ab.validate({"cuda_graph": "yes"})
    ab.validate({**TINY, "mode": "adaptive"})


def test_plots_write_png(tmp_path: Path) -> None:
    df = pd.DataFrame(
        [{"shape": "tiny", "batch": 1, "context": c, "mode": m, "median_ms": 0.1 * c / 1024} for c in (1024, 4096) for m in ("fp16", "int4")]
    )
    ab.plots(df, tmp_path)
    assert list(tmp_path.glob("attention_bench_tiny_b1.png"))
