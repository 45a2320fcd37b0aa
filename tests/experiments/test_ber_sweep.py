"""Contract test of the ber_sweep task kind on a tiny random Llama, on CPU, plus its plots."""

from __future__ import annotations

import json
import math
import statistics

import pandas as pd
import pytest
import torch

from ecc_kv.experiments import ber_sweep
from pipeline.context import RunContext

TINY = {"model": "tiny-llama", "text": "pydoc", "n_samples": 3, "seq_len": 48, "warmup": 0, "threads": 1}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    old = torch.get_num_threads()
    yield RunContext.for_tests(tmp_path_factory.mktemp("ber_sweep"))
    torch.set_num_threads(old)


def _run(ctx, **kw):
    params = {**TINY, **kw}
    raw = ber_sweep.run(params, ctx)
    json.dumps(raw, allow_nan=True)  # plain Python values only
    summary = ber_sweep.summarize(raw)
    json.dumps(summary, allow_nan=True)
    return params, raw, summary


def test_run_contract(ctx):
    _, raw, s = _run(ctx, cache_mode="int4-hamming84", ber=1e-2, seed=3)
    assert set(raw["samples"]) == {"nll", "ppl", "kl", "top5", "clean_ppl", "catastrophic"}
    assert all(len(v) == 3 for v in raw["samples"].values())
    assert raw["tokens"] == 3 * 48 and len(raw["forward_ms"]) == 3 and len(raw["clean_forward_ms"]) == 3
    assert sorted(raw["ecc"]["per_layer"]) == ["0", "1"]
    assert raw["bits_per_value"] == 8.0 and raw["device"] == "cpu"
    for key in ("ppl", "ppl_lo", "ppl_hi", "kl_mean", "top5_mean", "clean_ppl", "tokens_per_s", "clean_tokens_per_s"):
        assert math.isfinite(s[key]) and s[key] >= 0, key
    assert s["ppl_lo"] <= s["ppl"] <= s["ppl_hi"] and s["kl_lo"] <= s["kl_mean"] <= s["kl_hi"]
    assert s["samples_scored"] == 3 and 0.0 <= s["catastrophic_rate"] <= 1.0
    n_values = 2 * 2 * 3 * 48 * 2 * 16  # layers x K/V x tokens x kv heads x head_dim
    assert s["values"] == n_values and s["corrected"] > 0 and s["bits_flipped"] > s["corrected"]
    assert 0.05 < s["flips_per_value"] < 0.11  # 8 stored bits per value at BER 1e-2
    # no summary key shadows a parameter (the aggregator would have to rename it)
    assert not set(s) & set(ber_sweep.DEFAULTS)


def test_paired_speed_timing(ctx):
    """speed_repeats > 0: plain and mode forwards timed interleaved in the run; the ratio comes from them."""
    _, raw, s = _run(ctx, cache_mode="int4-hamming84", ber=1e-3, speed_repeats=2)
    assert len(raw["speed_plain_ms"]) == 2 and len(raw["speed_mode_ms"]) == 2
    assert raw["speed_tokens"] == 48 and all(t > 0 for t in raw["speed_plain_ms"] + raw["speed_mode_ms"])
    ratio = statistics.median(raw["speed_mode_ms"]) / statistics.median(raw["speed_plain_ms"])
    assert s["time_ratio_vs_clean"] == pytest.approx(ratio)
    assert s["tokens_per_s"] == pytest.approx(48 / statistics.median(raw["speed_mode_ms"]) * 1e3)
    # the timing forwards draw no faults into the counted run: the counters cover the scored samples only
    assert s["values"] == 2 * 2 * 3 * 48 * 2 * 16


def test_shared_setup_reused_and_ber0_equals_int4(ctx):
    _, raw_a, a = _run(ctx, cache_mode="int4", ber=0.0)
    keys = [k for k in ctx.shared if k[0] == "ber_sweep.model"]
    model = ctx.shared[keys[0]][0]
    _, raw_b, b = _run(ctx, cache_mode="int12-golay", ber=0.0, seed=9)
    assert [k for k in ctx.shared if k[0] == "ber_sweep.model"] == keys and ctx.shared[keys[0]][0] is model
    assert raw_a["samples"]["nll"] == raw_b["samples"]["nll"] and raw_a["samples"]["kl"] == raw_b["samples"]["kl"]
    assert a["ppl"] == b["ppl"] and b["corrected"] == 0 and b["bits_flipped"] == 0
    assert model.config._attn_implementation == "sdpa"  # every run unpatches the shared model


def test_fp16_close_to_clean_and_int4_worse(ctx):
    _, _, fp16 = _run(ctx, cache_mode="fp16", ber=0.0)
    _, _, int4 = _run(ctx, cache_mode="int4", ber=0.0)
    assert fp16["kl_mean"] < 1e-4 and abs(fp16["ppl"] / fp16["clean_ppl"] - 1) < 1e-3
    assert int4["kl_mean"] > fp16["kl_mean"]


def test_burst_and_determinism(ctx):
    _, raw1, s1 = _run(ctx, cache_mode="int4-hamming", ber=1e-2, error_model="burst", burst_len=3, seed=1)
    _, raw2, _ = _run(ctx, cache_mode="int4-hamming", ber=1e-2, error_model="burst", burst_len=3, seed=1)
    assert raw1["samples"] == raw2["samples"] and s1["bits_flipped"] > 0


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"cache_mode": "int3"}, "cache_mode='int3'; choose one of: fp16"),
        ({"ber": 2.0}, "ber=2.0"),
        ({"error_model": "gauss"}, "error_model='gauss'"),
        ({"n_samples": 0}, "n_samples=0"),
        ({"seq_len": 1}, "seq_len=1"),
        ({"bogus": 1}, "unknown parameter"),
        ({"cache_mode": "adaptive", "sink_blocks": 0}, "sink_blocks >= 1"),
        ({"catastrophic_multiple": 1}, "catastrophic_multiple"),
    ],
)
def test_validate_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ber_sweep.validate({**TINY, **bad})


def test_plots_and_tables(tmp_path):
    rows = []
    for em in ("bsc", "burst"):
        for mode, base in (("fp16", 20.0), ("int4", 21.0), ("int4-hamming84", 21.0), ("int12-golay", 21.0)):
            for ber in (0.0, 1e-3, 1e-2):
                if mode == "fp16" and (ber > 0 or em == "burst"):
                    continue
                for seed in (1, 2):
                    nll = math.log(base * (1 + 50 * ber * (mode == "int4")))
                    rows.append({
                        "model": "tiny-llama", "cache_mode": mode, "ber": ber, "error_model": em, "seed": seed,
                        "nll_mean": nll + 0.01 * seed, "nll_sd": 0.1, "kl_mean": ber, "kl_sd": 0.01,
                        "top5_mean": 0.6, "top5_sd": 0.05, "samples_scored": 4, "catastrophic_count": int(ber > 0),
                        "clean_ppl": 20.0, "bits_per_value": 8.0, "corrected_per_value": ber, "detected_per_value": 0.0,
                        "flips_per_value": 8 * ber, "tokens_per_s": 100.0, "clean_tokens_per_s": 120.0,
                        "time_ratio_vs_clean": 1.2,
                    })  # fmt: skip
    ber_sweep.plots(pd.DataFrame(rows), tmp_path)
    for em in ("bsc", "burst"):
        for stem in ("ppl", "kl", "top5", "catastrophic"):
            assert (tmp_path / f"{stem}_vs_ber_{em}.png").stat().st_size > 5000
    table = (tmp_path / "ppl_at_ber_table.md").read_text()
    assert "BER 0.01" in table and "| fp16 (BER 0) |" in table and "| int12-golay |" in table
    csv = pd.read_csv(tmp_path / "ppl_at_ber_table.csv")
    int4 = csv[(csv.cache_mode == "int4") & (csv.error_model == "bsc")].iloc[0]
    assert int4["ppl"] == pytest.approx(21.0 * 1.5 * math.exp(0.015), rel=1e-6) and int4["runs"] == 2
    assert "| int4 | 100 | 120 | 1.2 |" in (tmp_path / "speed_table.md").read_text()
