"""Contract test of the kv_quant task kind (and kv_pack_bench) on a tiny model, CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from ecc_kv.experiments import kv_pack_bench, kv_quant
from pipeline.context import RunContext

TINY = {"model": "tiny-llama", "threads": 1, "n_samples": 2, "seq_len": 24, "batch_size": 2, "kivi_group": 4, "kivi_residual": 8}


def _mc_file(tmp_path: Path) -> str:
    items = [
        {"context": "one two three", "choices": [" four", " x"], "label": 0},
        {"context": "a b c", "choices": [" d", " zz", " q"], "label": 2},
        {"context": "hello", "choices": [" world", " there"], "label": 1},
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    return str(path)


def test_run_and_summarize_every_family(tmp_path: Path) -> None:
    ctx = RunContext.for_tests(tmp_path)
    rows = []
    for extra in (
        {"mode": "fp16"},
        {"mode": "int4"},
        {"mode": "int2", "outliers": 0.1, "group_size": 8},
        {"mode": "kivi2"},
        {"mode": "qaq", "qaq_window": 1, "mc": _mc_file(tmp_path)},
        {"mode": "qaq", "ber": 1e-2, "codec": "hamming84"},
    ):
        params = {**TINY, **extra}
        kv_quant.validate(params)
        raw = kv_quant.run(params, ctx)
        json.dumps(raw)  # JSON-serialisable
        s = kv_quant.summarize(raw)
        json.dumps(s)
        assert all(isinstance(v, (int, float, str)) for v in s.values())
        rows.append({**params, **s})
    fp16, int4, int2, kivi, qaq, faulty = rows
    assert fp16["kl"] == pytest.approx(0.0, abs=1e-6) and fp16["ratio_real"] == pytest.approx(1.0)
    assert fp16["ppl"] == pytest.approx(fp16["ppl_clean"], rel=1e-5)
    assert int4["avg_bits_k"] == 4.0 and int4["ratio_ideal"] == pytest.approx(4.0)
    assert 1.0 < int4["ratio_real"] < 4.0  # metadata counted
    assert int2["mse_k"] > int4["mse_k"] > 0 and int2["kl"] > 0
    assert kivi["avg_bits_v"] > kivi["avg_bits_k"]  # the value residual window is larger at T=24
    assert 1 <= qaq["avg_bits_k"] <= 8 and qaq["mc_n"] == 3 and 0 <= qaq["mc_acc"] <= 1
    assert faulty["flips"] > 0 and faulty["corrected"] > 0
    assert faulty["ratio_real"] < faulty["ratio_ideal"]  # ECC bytes counted in the real size
    assert math.isfinite(faulty["bytes_per_token_real"])
    df = pd.DataFrame(rows)
    outs = kv_quant.plots(df, tmp_path)
    assert {p.name for p in outs} >= {"kv_quant_ppl_vs_ratio.png", "kv_quant_kl_vs_ratio.png"}
    ber = pd.DataFrame([{**rows[4], "ber": 0.0, "codec": "none"}, {**rows[5], "ber": 1e-2}])
    assert [p.name for p in kv_quant.plots(ber, tmp_path / ".")][-1] == "kv_quant_ppl_vs_ber.png"


def test_pareto_mask() -> None:
    assert kv_quant.pareto_mask([1, 2, 3, 2], [1.0, 2.0, 3.0, 5.0]) == [True, True, True, False]


def test_validate_rejects_bad_params() -> None:
    with pytest.raises(ValueError, match="mode"):
        kv_quant.validate({**TINY, "mode": "int9"})
    with pytest.raises(ValueError, match="unknown parameter"):
        kv_quant.validate({**TINY, "bitz": 3})
    with pytest.raises(ValueError, match="codec"):
        kv_quant.validate({**TINY, "codec": "reed-solomon"})
    with pytest.raises(ValueError, match="qaq_variant|variant"):
        kv_quant.validate({**TINY, "qaq_variant": "blog"})
    with pytest.raises(ValueError, match="n_samples"):
        kv_quant.validate({**TINY, "n_samples": 0})


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton on CPU tensors needs the interpreter, which is off on a GPU machine")
def test_pack_bench_on_cpu(tmp_path: Path) -> None:
    ctx = RunContext.for_tests(tmp_path)
    params = {"values": 4096, "heads": 2, "head_dim": 64, "warmup": 0, "repeats": 1, "flush_l2": False, "outliers": 0.02}
    kv_pack_bench.validate(params)
    s = kv_pack_bench.summarize(kv_pack_bench.run(params, ctx))
    assert s["bit_exact_vs_torch"] and s["quant_pack_gbps"] > 0 and 2 <= s["avg_bits"] <= 8
