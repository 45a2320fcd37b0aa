"""Paged ECC cache: config validation, byte accounting, block tables, layouts, faults that persist, scrub."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.cache import ECCCacheConfig, PagedECCCache
from ecc_kv.cache_layout import get_layout
from ecc_kv.quant import dequantize_int4, quantize_int4

MODES = ["int4", "int4-hamming", "int4-hamming84", "int12-golay", "adaptive"]
CODECS = [None, "hamming74", "hamming84", "golay2412"]


def _cfg(mode: str = "int4-hamming84", **kw) -> ECCCacheConfig:
    base = dict(num_layers=2, num_kv_heads=2, head_dim=32, num_blocks=12, block_size=4, mode=mode)
    base["sink_blocks"] = 1 if mode == "adaptive" else 0
    base.update(kw)
    return ECCCacheConfig(**base)


def _filled(mode: str, lens: list[int], device: str, seed: int = 0, **kw) -> tuple[PagedECCCache, torch.Tensor, torch.Tensor]:
    cfg = _cfg(mode, **kw)
    cache = PagedECCCache(cfg, max_seqs=len(lens), device=device, block_order_seed=seed)
    slots = cache.allocate(lens)
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(len(slots), cfg.num_kv_heads, cfg.head_dim, generator=gen).to(device)
    v = torch.randn(len(slots), cfg.num_kv_heads, cfg.head_dim, generator=gen).to(device)
    for layer in range(cfg.num_layers):
        cache.write(layer, k, v, slots, backend="torch")
    return cache, k, v


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"mode": "fp16"}, "not stored by the paged cache"),
        ({"mode": "int4-msb-secded"}, "not stored by the paged cache"),
        ({"mode": "nope"}, "unknown cache mode"),
        ({"mode": "adaptive", "sink_blocks": 0}, "sink_blocks >= 1"),
        ({"mode": "int4", "sink_blocks": 2}, "needs mode='adaptive'"),
        ({"head_dim": 31}, "must be even"),
        ({"mode": "int4-hamming", "head_dim": 36}, "multiple of 8"),
        ({"num_blocks": 0}, "num_blocks"),
        ({"group_size": 5}, "group_size"),
        ({"scale_dtype": torch.bfloat16}, "scale_dtype"),
    ],
)
def test_config_rejects_bad_values(kw: dict, match: str) -> None:
    base = dict(num_layers=1, num_kv_heads=2, head_dim=32, num_blocks=4, mode="int4")
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        ECCCacheConfig(**base)


def test_bytes_per_token_and_overhead_llama_shape() -> None:
    # Llama-3.1-8B: 32 layers, 8 KV heads, head_dim 128; per token-head row: codewords + one fp16 scale
    rows = {"int4": 64, "int4-hamming": 112, "int4-hamming84": 128, "int12-golay": 129}
    for mode, row in rows.items():
        cfg = ECCCacheConfig(num_layers=32, num_kv_heads=8, head_dim=128, num_blocks=1, mode=mode)
        assert cfg.layout.row_bytes == row
        assert cfg.bytes_per_token() == 2 * 32 * 8 * (row + 2)
        ov = cfg.overhead()
        assert ov["vs_fp16"] == pytest.approx((row + 2) / 256)
        assert ov["vs_int4"] == pytest.approx((row + 2) / 66)
    ad = ECCCacheConfig(32, 8, 128, num_blocks=1, block_size=16, mode="adaptive", sink_blocks=2)
    # 32 sink tokens at Golay's 131 bytes, the rest at Hamming(8,4)'s 130
    assert ad.bytes_per_token(64) == pytest.approx(2 * 32 * 8 * (32 * 131 + 32 * 130) / 64)
    assert ad.bytes_per_token() == 2 * 32 * 8 * 130
    grouped = ECCCacheConfig(1, 1, 128, num_blocks=1, mode="int4", group_size=32)
    assert grouped.bytes_per_token() == 2 * (64 + 4 * 2)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("d", [8, 40, 64, 128])
def test_layout_roundtrip_and_nominal_rate(codec: str | None, d: int) -> None:
    if codec == "hamming74" and d % 8:
        pytest.skip("hamming74 rows hold groups of 8")
    lay = get_layout(codec, d)
    codes = torch.randint(0, 16, (3, 5, d), dtype=torch.uint8)
    data = lay.pack(codes)
    assert data.dtype == torch.uint8 and data.shape == (3, 5, lay.row_bytes)
    bits = {None: 4, "hamming74": 7, "hamming84": 8, "golay2412": 8}[codec]
    assert lay.row_bytes * 8 == bits * (lay.padded_values if codec == "golay2412" else d)
    back, status = lay.unpack(data)
    assert torch.equal(back, codes) and int(status.sum()) == 0
    assert torch.equal(lay.words_to_bytes(lay.bytes_to_words(data)), data)


def test_get_layout_rejects_unknown_codec() -> None:
    with pytest.raises(ValueError, match="has no cache layout"):
        get_layout("reed-solomon", 64)


def test_allocate_block_tables_and_free() -> None:
    cfg = _cfg("int4", num_blocks=6, block_size=4)
    cache = PagedECCCache(cfg, max_seqs=2, block_order_seed=3)
    slots = cache.allocate([5, 3])  # seq 0: 2 blocks, seq 1: 1 block
    assert slots.shape == (8,) and len(set(slots.tolist())) == 8
    assert cache.host_lengths == [5, 3] and cache.lengths.tolist() == [5, 3]
    bt = cache.block_tables
    expect0 = [int(bt[0, t // 4]) * 4 + t % 4 for t in range(5)]
    expect1 = [int(bt[1, t // 4]) * 4 + t % 4 for t in range(3)]
    assert slots.tolist() == expect0 + expect1
    more = cache.allocate([0, 2])  # seq 1 crosses into a second block
    assert more.tolist() == [int(cache.block_tables[1, 0]) * 4 + 3, int(cache.block_tables[1, 1]) * 4]
    with pytest.raises(RuntimeError, match="out of cache blocks"):
        cache.allocate([15, 0])
    assert cache.host_lengths == [5, 5]  # a failed allocation changes nothing
    with pytest.raises(ValueError, match="table capacity"):
        cache.allocate([30, 0])
    cache.free(0)
    assert cache.host_lengths[0] == 0
    cache.allocate([8, 0])  # the freed blocks are reusable
    with pytest.raises(ValueError, match="n_new"):
        cache.allocate([1])


def test_adaptive_sink_slots_address_the_sink_pool() -> None:
    cfg = _cfg("adaptive", block_size=4, num_blocks=8, sink_blocks=1)
    cache = PagedECCCache(cfg, max_seqs=2)
    slots = cache.allocate([6, 2]).tolist()
    main = cfg.num_blocks * cfg.block_size
    assert slots[:4] == [main + t for t in range(4)]  # seq 0 sink block = sink-pool block 0
    assert all(s < main for s in slots[4:6])
    assert slots[6:] == [main + 4, main + 5]  # seq 1 sink block = sink-pool block 1


@pytest.mark.parametrize("mode", MODES)
def test_read_returns_dequantized_values(mode: str, device: str) -> None:
    lens = [3, 9]
    cache, k, v = _filled(mode, lens, device)
    kk, vv, status = cache.read(1, dtype=torch.float32)
    assert int(status.sum()) == 0
    start = 0
    for b, n in enumerate(lens):
        for x, got in ((k, kk), (v, vv)):
            codes, scales = quantize_int4(x[start : start + n])
            want = dequantize_int4(codes, scales, dtype=torch.float32).transpose(0, 1)  # [H, n, D]
            torch.testing.assert_close(got[b, :, :n], want, rtol=0, atol=0)
            assert float(got[b, :, n:].abs().sum()) == 0.0
        start += n


def test_update_allocates_once_per_step(device: str) -> None:
    cfg = _cfg("int4-hamming84")
    cache = PagedECCCache(cfg, max_seqs=2, device=device)
    k = torch.randn(2, cfg.num_kv_heads, 3, cfg.head_dim, device=device)
    s0 = cache.update(0, k, k, backend="torch")
    s1 = cache.update(1, k, k, backend="torch")
    assert torch.equal(s0, s1) and cache.host_lengths == [3, 3]
    cache.update(0, k[:, :, :1], k[:, :, :1], backend="torch")
    assert cache.host_lengths == [4, 4]
    with pytest.raises(ValueError, match="must be"):
        cache.update(0, k[:1], k[:1])


@pytest.mark.parametrize("mode", ["int4-hamming84", "int12-golay", "int4-hamming", "adaptive"])
def test_faults_persist_until_scrub(mode: str, device: str) -> None:
    cache, _, _ = _filled(mode, [7, 13], device, seed=1)
    kk0, vv0, _ = cache.read(0)
    n = cache.inject_faults(0.01, seed=5)
    assert n > 0 and cache.stats["injected_flips"] == n
    kk1, _, st1 = cache.read(0)
    _, _, st1_again = cache.read(0)
    assert torch.equal(st1, st1_again)  # errors stay in storage: reads see the same faults
    assert int((st1 > 0).sum()) > 0
    out = cache.scrub()
    assert out["corrected"] > 0 and out["rewritten"] > 0
    kk2, vv2, st2 = cache.read(0)
    assert int((st2 == 1).sum()) == 0  # nothing left to correct
    # scrub stores what the decoder returned: decoded values do not change, only the statuses
    keep = st1[0] != 2
    torch.testing.assert_close(kk2[keep], kk1[keep], rtol=0, atol=0)
    # and where no error hit, the original values are there
    clean = (st1[0] == 0) & (kk1 == kk0)
    torch.testing.assert_close(kk2[clean], kk0[clean], rtol=0, atol=0)
    assert cache.scrub()["corrected"] == 0


def test_faults_only_touch_allocated_blocks(device: str) -> None:
    cache, _, _ = _filled("int4-hamming84", [5], device)
    used = set(cache._host_tables[0])
    before = cache.k_data.clone()
    cache.inject_faults(0.2, seed=1)
    changed = {int(b) for b in (cache.k_data != before).flatten(2).any(-1).nonzero()[:, 1]}
    assert changed and changed <= used


def test_reference_attention_matches_sdpa_on_read(device: str) -> None:
    cache, _, _ = _filled("int4-hamming84", [4, 11], device)
    cache.inject_faults(0.02, seed=2)
    q = torch.randn(2, 4, 32, dtype=torch.float16, device=device)
    counters = torch.zeros(2, dtype=torch.int64, device=device)
    out = cache.attend(0, q, backend="torch", counters=counters)
    kk, vv, st = cache.read(0, dtype=torch.float16)
    for b, n in enumerate(cache.host_lengths):
        k = kk[b, :, :n].repeat_interleave(2, 0).float()
        v = vv[b, :, :n].repeat_interleave(2, 0).float()
        att = torch.softmax(q[b, :, None].float() @ k.transpose(1, 2) / 32**0.5, -1) @ v
        torch.testing.assert_close(out[b].float(), att[:, 0], rtol=1e-2, atol=2e-3)
    assert int(counters[0]) == int((st == 1).sum()) and int(counters[1]) == int((st == 2).sum())
    with pytest.raises(ValueError, match="q.shape"):
        cache.attend(0, q[:, :3], backend="torch")


def test_lazy_correction_follows_the_stored_fault_rate(device: str) -> None:
    """attend's default: lazy Hamming(8,4) correction on a clean or lightly faulted cache, eager once
    faults at or above LAZY_MAX_BER were injected; both give the same output and counts."""
    from ecc_kv.cache import LAZY_MAX_BER

    cache, _, _ = _filled("int4-hamming84", [9, 30], device, seed=3)
    assert cache.fault_rate == 0.0 and cache.lazy_correction()
    cache.inject_faults(LAZY_MAX_BER / 2, seed=1)
    assert cache.lazy_correction()
    cache.inject_faults(0.01, seed=2)
    assert cache.fault_rate == 0.01 and not cache.lazy_correction()
    q = torch.randn(2, 4, 32, dtype=torch.float16, device=device)
    outs, counts = [], []
    for lazy in (True, False, None):
        c = torch.zeros(2, dtype=torch.int64, device=device)
        outs.append(cache.attend(0, q, counters=c, lazy=lazy))
        counts.append(c.tolist())
    assert counts[0] == counts[1] == counts[2] and counts[0][0] > 0
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-3)
    assert torch.equal(outs[1], outs[2])
