"""Contract test of the codec_bench task kind on tiny CPU configs (torch chain, and Triton interpreted)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ecc_kv.experiments import codec_bench as bench
from pipeline.context import RunContext


def _flat_ok(s: dict) -> None:
    json.dumps(s)
    assert all(isinstance(v, (int, float, str)) for v in s.values())


@pytest.mark.parametrize("codec", ["hamming74", "hamming84", "golay", "int4"])
def test_run_and_summarize_torch(codec: str, tmp_path: Path) -> None:
    params = {"codec": codec, "n_values": 3 * 1024, "warmup": 0, "repeats": 2, "ber": 0.01, "backend": "torch"}
    raw = bench.run(params, RunContext.for_tests(tmp_path))
    json.dumps(raw)
    assert raw["roundtrip_ok"] is True
    s = bench.summarize(raw)
    _flat_ok(s)
    assert s["copy_gbps"] > 0 and s["roundtrip_ok"] == 1
    want = {"int4": 4.0, "hamming74": 7.0, "hamming84": 8.0, "golay": 8.0}[codec]
    assert s["bits_per_value"] == want
    ops = ["quantize_encode", "decode_dequantize"] if codec == "int4" else ["encode", "decode", "inject_decode"]
    for op in ops:
        assert s[f"{op}_median_ms"] > 0 and s[f"{op}_gbps"] > 0 and s[f"{op}_ratio_to_copy"] > 0
    if codec == "golay":
        assert raw["head_dim"] == 96 and raw["n_values"] == 3072


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton on CPU tensors needs the interpreter, which is off on a GPU machine")
def test_run_triton_interpreted(tmp_path: Path) -> None:
    params = {"codec": "hamming84", "n_values": 1024, "warmup": 0, "repeats": 1, "backend": "triton",
              "ops": ["encode", "decode", "quantize_encode", "decode_dequantize"]}
    raw = bench.run(params, RunContext.for_tests(tmp_path))
    assert raw["roundtrip_ok"] is True and set(raw["ops"]) == set(params["ops"])
    s = bench.summarize(raw)
    _flat_ok(s)
    assert s["encode_gbps"] > 0


def test_plots(tmp_path: Path) -> None:
    rows = []
    for codec in ("hamming84", "golay2412"):
        for n in (2**20, 2**22):
            rows.append({"codec": codec, "n_values": n, "copy_gbps": 3000.0, "encode_gbps": 2500.0 + n / 2**20,
                         "decode_gbps": 2600.0})
    made = bench.plots(pd.DataFrame(rows), tmp_path / "plots")
    assert len(made) == 2 and all(p.stat().st_size > 0 for p in made)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"codec": "bch"}, "codec"),
        ({"ops": ["encode", "teleport"]}, "ops"),
        ({"n_values": 0}, "n_values"),
        ({"ber": 0.7}, "ber"),
        ({"model": "gauss"}, "model"),
        ({"head_dim": 100, "codec": "hamming74"}, "head_dim=100"),
        ({"head_dim": 128, "codec": "golay"}, "head_dim=128"),
        ({"colour": 1}, "unknown parameter"),
        ({"backend": "cuda"}, "backend"),
        ({"host_lead_ms": -0.5}, "host_lead_ms"),
    ],
)
def test_validate_names_the_key(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bench.validate(bad)
