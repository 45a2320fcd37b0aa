"""ecc_kv.qaq: attention recomputation, the paper's and the code's bounds, decoding cache."""

from __future__ import annotations

import math

import pytest
import torch

from ecc_kv.bitpack import byte_report, unpack_dequantize
from ecc_kv.qaq import QAQConfig, QAQLayer, allocate_bits, last_query_attention, qaq_pack


def _qkv(device: str, t: int = 40, hq: int = 4, hkv: int = 2, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, hq, t, d, generator=g).to(device)
    k = torch.randn(1, hkv, t, d, generator=g).to(device)
    v = torch.randn(1, hkv, t, d, generator=g).to(device)
    return q, k, v


def test_last_query_attention_matches_eager_softmax(device: str) -> None:
    q, k, _ = _qkv(device)
    s = last_query_attention(q, k, 0.25, window=3)
    kk = k.repeat_interleave(2, dim=1)
    att = torch.softmax((q @ kk.transpose(-1, -2) * 0.25).masked_fill(torch.ones(40, 40, device=device).triu(1).bool(), -math.inf), -1)
    ref = att[:, :, -3:, :].amax(2).reshape(1, 2, 2, 40).amax(2)  # max over window rows, then GQA heads
    assert torch.allclose(s, ref, atol=1e-6)


def test_paper_value_bits_follow_attention_and_formula(device: str) -> None:
    q, k, v = _qkv(device)
    cfg = QAQConfig(error_k=0.05, error_v=0.05, window=3, bits_min=1, bits_max=8)
    bk, bv = allocate_bits(q, k, v, 0.25, cfg)
    s = last_query_attention(q, k, 0.25, 3)
    rng = v.amax(-1) - v.amin(-1)
    sigma = 0.05 / (math.sqrt(40) * s)
    want = torch.ceil(torch.log2(rng / (2 * math.sqrt(3) * sigma))).clamp(1, 8).long()
    want[..., -2:] = 8  # the two newest tokens have no full window of 3
    assert torch.equal(bv, want)
    # the paper's key bound: one sigma for the layer
    q2 = float(torch.quantile(((q * 0.25) ** 2).sum(-1).reshape(-1), 0.9))
    sig_k = math.sqrt(math.log(40**3 / 39 * 0.05**2 + 1) / q2)
    want_k = torch.ceil(torch.log2((k.amax(-1) - k.amin(-1)) / (2 * math.sqrt(3) * sig_k))).clamp(1, 8).long()
    assert torch.equal(bk, want_k)


def test_tighter_target_means_more_bits_and_less_error(device: str) -> None:
    q, k, v = _qkv(device, seed=3)
    loose, tight = QAQConfig(error_k=0.2, error_v=0.2), QAQConfig(error_k=0.002, error_v=0.002)
    bl, bt = allocate_bits(q, k, v, 0.25, loose), allocate_bits(q, k, v, 0.25, tight)
    assert bt[0].float().mean() > bl[0].float().mean() and bt[1].float().mean() > bl[1].float().mean()
    pl, pt = qaq_pack(q, k, v, 0.25, loose), qaq_pack(q, k, v, 0.25, tight)
    assert (unpack_dequantize(pt[1], torch.float32) - v).pow(2).mean() < (unpack_dequantize(pl[1], torch.float32) - v).pow(2).mean()
    assert byte_report(pl[0])["ratio_real"] > byte_report(pt[0])["ratio_real"]


def test_code_variant_uses_plus_one_and_mean_grid(device: str) -> None:
    q, k, v = _qkv(device, seed=4)
    cfg = QAQConfig(error_k=0.05, error_v=0.05, window=1, variant="code")
    _, bv = allocate_bits(q, k, v, 0.25, cfg)
    s = last_query_attention(q, k, 0.25, 1)
    e = 0.05 / 40 / s
    want = torch.ceil(torch.log2((v.amax(-1) - v.amin(-1)) / (2 * e) + 1)).clamp(1, 8).long()
    assert torch.equal(bv, want)
    pk, _ = qaq_pack(q, k, v, 0.25, cfg)
    assert pk.scheme == "mean"


def test_decoding_cache_and_requant(device: str) -> None:
    q, k, v = _qkv(device, t=30, seed=5)
    cfg = QAQConfig(error_k=0.05, error_v=0.05, window=2)
    layer = QAQLayer(cfg, 0.25, requant_every=5)
    layer.append(q[..., :20, :], k[..., :20, :], v[..., :20, :])
    for t in range(20, 30):
        layer.append(q[..., t:t + 1, :], k[..., t:t + 1, :], v[..., t:t + 1, :])
        ks, vs = layer.keys_values(torch.float32)
        assert ks.shape[-2] == t + 1
    assert len(layer.chunks) == 1  # re-packed at step 10 from the exact copy
    assert layer.exact_k.device.type == "cpu"
    plain = QAQLayer(cfg, 0.25)
    plain.append(q[..., :20, :], k[..., :20, :], v[..., :20, :])
    plain.append(q[..., 20:21, :], k[..., 20:21, :], v[..., 20:21, :])
    assert int(plain.chunks[-1][1].widths.min()) == 8  # a new value waits at bits_max


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="variant"):
        QAQConfig(variant="blog")
    with pytest.raises(ValueError, match="error_k"):
        QAQConfig(error_k=0)
    with pytest.raises(ValueError, match="bits_min"):
        QAQConfig(bits_min=5, bits_max=4)
