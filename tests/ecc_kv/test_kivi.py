"""ecc_kv.kivi: per-channel keys, per-token values, fp16 residual, streaming equals prefill."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.kivi import KiviLayer, kivi_roundtrip
from ecc_kv.uniform_quant import fake_quantize


def test_prefill_split_and_storage(device: str) -> None:
    torch.manual_seed(0)
    k = torch.randn(1, 2, 45, 16, device=device, dtype=torch.float16)
    v = torch.randn(1, 2, 45, 16, device=device, dtype=torch.float16)
    k_hat, v_hat, st = kivi_roundtrip(k, v, bits=2, group_size=8, residual=16)
    # keys: 45 mod 16 = 13 newest in fp16; values: the last 16
    assert torch.equal(k_hat[..., 32:, :], k[..., 32:, :]) and not torch.equal(k_hat[..., :32, :], k[..., :32, :])
    assert torch.equal(v_hat[..., 29:, :], v[..., 29:, :]) and not torch.equal(v_hat[..., :29, :], v[..., :29, :])
    n = k.numel()
    assert st["k_avg_bits"] == pytest.approx((2 * 32 + 16 * 13) / 45)
    # keys: 32 tokens x 16 channels x 2 heads at 2 bits, one scale+zero per channel per 8 tokens
    assert st["k_bytes_real"] == 2 * 16 * 32 * 2 / 8 + 2 * 16 * 4 * 4 + 2 * n * 13 / 45


def test_keys_are_quantized_per_channel(device: str) -> None:
    # a channel with a huge offset ruins per-token grids but not per-channel ones
    torch.manual_seed(1)
    k = torch.randn(1, 1, 32, 16, device=device)
    k[..., 3] += 50.0
    k_hat, _, _ = kivi_roundtrip(k, k, bits=2, group_size=32, residual=0)
    per_token = fake_quantize(k, 2)
    assert (k_hat - k).pow(2).mean() < 0.2 * (per_token - k).pow(2).mean()


def test_streaming_matches_prefill(device: str) -> None:
    torch.manual_seed(2)
    k = torch.randn(2, 2, 40, 8, device=device)
    v = torch.randn(2, 2, 40, 8, device=device)
    layer = KiviLayer(4, group_size=4, residual=8)
    layer.append(k[..., :16, :], v[..., :16, :])
    for t in range(16, 40):
        layer.append(k[..., t:t + 1, :], v[..., t:t + 1, :])
    ks, vs = layer.keys_values(torch.float32)
    kp, vp, _ = kivi_roundtrip(k, v, 4, 4, 8)
    assert torch.equal(ks, kp)  # 40 = 5 full residual blocks either way
    assert ks.shape == k.shape and vs.shape == v.shape
    assert torch.equal(vs[..., 32:, :], v[..., 32:, :])
    assert float((vs - vp).abs().max()) < 0.5


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="kivi_residual"):
        KiviLayer(2, group_size=32, residual=48)
    with pytest.raises(ValueError, match="bits"):
        KiviLayer(9)
