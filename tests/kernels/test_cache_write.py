"""kernels.cache_write vs its torch twin (ecc_kv.cache.cache_write_torch): bit for bit."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.cache import ECCCacheConfig, PagedECCCache, cache_write_torch
from kernels.cache_write import cache_write


def _pair(mode: str, device: str, **kw) -> tuple[PagedECCCache, PagedECCCache]:
    cfg = ECCCacheConfig(
        num_layers=1, num_kv_heads=3, head_dim=kw.pop("head_dim", 40), num_blocks=10, block_size=4, mode=mode,
        sink_blocks=1 if mode == "adaptive" else 0, **kw,
    )  # fmt: skip
    return PagedECCCache(cfg, 2, device, block_order_seed=7), PagedECCCache(cfg, 2, device, block_order_seed=7)


def _assert_same(a: PagedECCCache, b: PagedECCCache) -> None:
    for name in ("k_data", "k_scale", "k_sink_data", "k_sink_scale"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            continue
        bad = (x.view(torch.uint8) != y.view(torch.uint8)).nonzero()
        assert bad.numel() == 0, f"{name}: {bad.shape[0]} bytes differ, first at {bad[:5].tolist()}"


@pytest.mark.parametrize(
    "mode, head_dim, group_size",
    [
        ("int4", 40, None),
        ("int4", 64, 16),
        ("int4-hamming84", 40, None),
        ("int4-hamming84", 48, 8),
        ("int4-hamming", 40, None),
        ("int12-golay", 40, None),  # 40 = 13 codewords + 1 padded value
        ("int12-golay", 48, 16),
        ("adaptive", 40, None),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_cache_write_matches_twin(mode: str, head_dim: int, group_size: int | None, dtype: torch.dtype, device: str) -> None:
    if mode == "int4-hamming" and head_dim % 8:
        pytest.skip("hamming74 needs head_dim % 8 == 0")
    ref, tri = _pair(mode, device, head_dim=head_dim, group_size=group_size)
    slots = ref.allocate([7, 10])  # odd lengths, shuffled blocks
    tri.allocate([7, 10])
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(len(slots), 3, head_dim, generator=gen) * 3).to(dtype).to(device)
    x[0, 0] = 0  # an all-zero row: scale 0, codes 8
    c = ref.config
    cache_write_torch(x, slots, ref.k_data[0], ref.k_scale[0], ref.k_sink_data[0] if ref.k_sink_data is not None else None,
                      ref.k_sink_scale[0] if ref.k_sink_scale is not None else None, c)  # fmt: skip
    cache_write(
        x, slots, tri.k_data[0], tri.k_scale[0],
        tri.k_sink_data[0] if tri.k_sink_data is not None else None,
        tri.k_sink_scale[0] if tri.k_sink_scale is not None else None,
        codec=c.codec, sink_codec=c.sink_codec, group_size=head_dim // c.num_groups,
    )  # fmt: skip
    _assert_same(ref, tri)


def test_cache_write_skips_negative_slots_and_takes_strided_input(device: str) -> None:
    ref, tri = _pair("int4-hamming84", device)
    slots = ref.allocate([5, 0])
    tri.allocate([5, 0])
    slots[2] = -1  # padding token: not written
    big = torch.randn(5, 6, 40, device=device)
    x = big[:, ::2]  # [5, 3, 40], non-contiguous heads
    ref.write(0, x, x, slots, backend="torch")
    tri.write(0, x, x, slots, backend="triton")
    _assert_same(ref, tri)
    blk, off = int(ref.block_tables[0, 0]), 2
    assert int(tri.k_data[0, blk, :, off].sum()) == 0


def test_cache_write_rejects_bad_arguments(device: str) -> None:
    ref, _ = _pair("int4", device)
    slots = ref.allocate([2, 0])
    x = torch.randn(2, 3, 40, device=device)
    with pytest.raises(ValueError, match="codec"):
        cache_write(x, slots, ref.k_data[0], ref.k_scale[0], codec="bch", group_size=40)
    with pytest.raises(ValueError, match="must be"):
        ref.write(0, x[:, :2], x[:, :2], slots)
