"""Contract test of the kv_pack_bench task kind on a tiny tensor (Triton interpreter on CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecc_kv.experiments import kv_pack_bench
from pipeline.context import RunContext


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton on CPU tensors needs the interpreter, which is off on a GPU machine")
def test_run_and_summarize(tmp_path: Path) -> None:
    ctx = RunContext.for_tests(tmp_path)
    params = {"values": 8192, "heads": 2, "head_dim": 64, "warmup": 0, "repeats": 2, "flush_l2": False, "outliers": 0.02}
    kv_pack_bench.validate(params)
    raw = kv_pack_bench.run(params, ctx)
    s = kv_pack_bench.summarize(raw)
    assert s["bit_exact_vs_torch"] is True
    assert 2 <= s["avg_bits"] <= 8 and s["ratio_real"] > 1
    st = raw["storage"]
    n = raw["values"]
    # bytes touched: fp16 in/out, int64 widths in, every stored byte, the width-sum workspace twice
    assert raw["bytes_quant_pack"] > 2 * n + st["bytes_real"] + 8 * 128
    assert raw["bytes_unpack_dequant"] > 2 * n + st["bytes_real"]
    for op in ("quant_pack", "unpack_dequant"):
        assert s[f"{op}_gbps"] > 0 and s[f"{op}_frac_copy"] > 0 and len(raw[f"times_{op}_ms"]) == 2


def test_validate_names_the_key() -> None:
    with pytest.raises(ValueError, match="bits_lo"):
        kv_pack_bench.validate({"bits_lo": 0})
    with pytest.raises(ValueError, match="values"):
        kv_pack_bench.validate({"values": 1000})
    with pytest.raises(ValueError, match="unknown"):
        kv_pack_bench.validate({"nope": 1})
    with pytest.raises(ValueError, match="host_lead_ms"):
        kv_pack_bench.validate({"host_lead_ms": "long"})
