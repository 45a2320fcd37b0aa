"""Fused Triton KV round trip against the torch composition: bit for bit at ber=0 and for explicit faults.

Interpreted on CPU, so shapes are small but awkward (D not a multiple of 2 or 3, T not a multiple of
the token tile, a sink boundary inside a tile).
"""

from __future__ import annotations

import math

import pytest
import torch

from ecc_kv.kv_protect import roundtrip, stored_bits_per_value
from ecc_kv.modes import MODES
from kernels.kv_roundtrip import roundtrip_triton


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int16)


def _assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    diff = _bits(a) != _bits(b)
    assert not diff.any(), f"first mismatch at {diff.nonzero()[0].tolist()}: {a[diff][0]} vs {b[diff][0]}"


def _x(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * 3).to(dtype).to(device)


@pytest.mark.parametrize("mode", list(MODES))
def test_ber_zero_and_explicit_faults_match_torch(mode: str, device: str) -> None:
    x = _x((1, 2, 11, 13), torch.float16, device)
    a, sa = roundtrip(x, mode, sink_tokens=5)
    b, sb = roundtrip(x, mode, sink_tokens=5, backend="triton")
    _assert_same(a, b)
    assert sa == sb
    gen = torch.Generator().manual_seed(1)
    masks = torch.randint(0, 2**31 - 1, x.shape, generator=gen, dtype=torch.int32)
    sparse = masks & ((1 << torch.randint(0, 4, x.shape, generator=gen, dtype=torch.int32)) - 1)  # few bits each
    sparse = (sparse * (torch.rand(x.shape, generator=gen) < 0.3)).to(torch.int32).to(device)
    a, sa = roundtrip(x, mode, sink_tokens=5, flip_masks=sparse)
    b, sb = roundtrip(x, mode, sink_tokens=5, flip_masks=sparse, backend="triton")
    _assert_same(a, b)
    assert sa == sb and sa["bits_flipped"] > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode,g", [("int4-hamming84-interp", 4), ("adaptive", None), ("int4-msb-secded", 6)])
def test_dtypes_and_groups_match_torch(mode: str, g: int | None, dtype: torch.dtype, device: str) -> None:
    x = _x((2, 1, 9, 12), dtype, device, seed=2)
    gen = torch.Generator().manual_seed(3)
    masks = ((torch.rand(x.shape, generator=gen) < 0.2) * 0b1001).to(torch.int32).to(device)
    for fm in (None, masks):
        a, sa = roundtrip(x, mode, sink_tokens=4, group_size=g, flip_masks=fm, window=2)
        b, sb = roundtrip(x, mode, sink_tokens=4, group_size=g, flip_masks=fm, window=2, backend="triton")
        _assert_same(a, b)
        assert sa == sb


def test_sampled_faults_deterministic_and_grid_independent(device: str) -> None:
    x = _x((1, 1, 12, 8), torch.float16, device, seed=4)
    args = ("hamming84", None, 0.05, 7, "bsc", 2, 0, 8, True, True, 1, None)
    a, sa = roundtrip_triton(x, *args, block_t=4)
    b, sb = roundtrip_triton(x, *args, block_t=16)
    _assert_same(a, b)
    assert torch.equal(sa, sb) and int(sa[0]) > 0
    c, sc = roundtrip(x, "int4-hamming84-interp", ber=0.02, seed=8, backend="triton")
    assert not torch.equal(sa, torch.tensor(list(sc.values()), dtype=torch.int64, device=device)) or not torch.equal(a, c)


@pytest.mark.parametrize("mode,model", [("int12-golay", "bsc"), ("int4", "burst"), ("fp16", "bsc")])
def test_sampled_flip_count_within_bound(mode: str, model: str, device: str) -> None:
    x = _x((1, 4, 16, 15), torch.float16, device, seed=5)
    _, st = roundtrip(x, mode, ber=0.01, seed=3, error_model=model, burst_len=2, backend="triton")
    total = x.numel() * stored_bits_per_value(mode, 15)
    mean = 0.01 * total * (1 - 1 / (2 * 8) if model == "burst" else 1)
    assert abs(st["bits_flipped"] - mean) <= 5 * math.sqrt(2 * 0.01 * total) + 1


@pytest.mark.gpu
@pytest.mark.parametrize("mode", list(MODES))
def test_large_tensor_on_gpu(mode: str) -> None:
    x = _x((1, 8, 1000, 128), torch.float16, "cuda")
    a, sa = roundtrip(x, mode, sink_tokens=4)
    b, sb = roundtrip(x, mode, sink_tokens=4, backend="triton")
    _assert_same(a, b)
    masks = ((torch.rand(x.shape, device="cuda") < 0.01) * 0b11).to(torch.int32)
    a, sa = roundtrip(x, mode, sink_tokens=4, flip_masks=masks)
    b, sb = roundtrip(x, mode, sink_tokens=4, flip_masks=masks, backend="triton")
    _assert_same(a, b)
    assert sa == sb


def test_scale_faults_and_stats_out(device: str) -> None:
    x = _x((1, 2, 30, 8), torch.float16, device, seed=6)
    a, sa = roundtrip(x, "int4-hamming84", ber=0.05, seed=2, scale_faults=True, backend="triton")
    b, sb = roundtrip(x, "int4-hamming84", ber=0.05, seed=2, scale_faults=True, backend="triton")
    _, plain = roundtrip(x, "int4-hamming84", ber=0.05, seed=2, backend="triton")
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()) and sa == sb
    assert sa["bits_flipped"] > plain["bits_flipped"]
    acc = torch.zeros(4, dtype=torch.int64, device=device)
    for backend in ("torch", "triton"):
        _, empty = roundtrip(x, "int4-hamming84", ber=0.05, seed=2, backend=backend, stats_out=acc)
        assert empty == {}
    _, torch_stats = roundtrip(x, "int4-hamming84", ber=0.05, seed=2)
    assert int(acc[0]) == plain["bits_flipped"] + torch_stats["bits_flipped"]
