"""kernels.bitpack against its torch twin (ecc_kv.bitpack / ecc_kv.uniform_quant), bit for bit."""

from __future__ import annotations

import pytest
import torch

import kernels.bitpack as kb
from ecc_kv.bitpack import pack, quantize_pack, unpack, unpack_dequantize
from ecc_kv.uniform_quant import quantize
from kernels.bitpack import packed_size, quantize_pack_triton


def _assert_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if not torch.equal(a, b):
        bad = (a != b).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {int((a != b).sum())} mismatches, first at {bad}")


@pytest.mark.parametrize("shape,group", [((1, 2, 5, 24), None), ((2, 1, 9, 41), None), ((1, 3, 4, 64), 16), ((1, 2, 7, 136), None)])
@pytest.mark.parametrize("scheme,outliers", [("minmax", 0.0), ("minmax", 0.05), ("symmetric", 0.05)])
def test_quantize_pack_matches_torch(shape: tuple, group: int | None, scheme: str, outliers: float, device: str) -> None:
    torch.manual_seed(sum(shape))
    x = (torch.randn(*shape, device=device) * 2).to(torch.float16)
    bits = torch.randint(2, 9, shape[:-1], device=device)
    ref = quantize(x, bits, group, scheme, outliers, backend="torch")
    p_ref = pack(ref, backend="torch")
    p_tri = quantize_pack(x, bits, group, scheme, outliers, backend="triton")
    for name in ("data", "scale", "out_val", "out_pos"):
        _assert_equal(getattr(p_tri, name), getattr(p_ref, name), name)
    if scheme == "minmax":
        _assert_equal(p_tri.zero, p_ref.zero, "zero")
    q_tri = quantize(x, bits, group, scheme, outliers, backend="triton")
    _assert_equal(q_tri.codes, ref.codes, "codes")
    _assert_equal(unpack_dequantize(p_ref, backend="triton"), unpack_dequantize(p_ref, backend="torch"), "dequant")


@pytest.mark.parametrize("g", [3, 8, 33])
def test_pack_unpack_codes_match_torch(g: int, device: str) -> None:
    torch.manual_seed(g)
    x = torch.randn(1, 2, 11, g, device=device)
    bits = torch.randint(1, 9, (1, 2, 11), device=device)
    q = quantize(x, bits, backend="torch")
    p_t, p_k = pack(q, backend="torch"), pack(q, backend="triton")
    _assert_equal(p_k.data, p_t.data, "packed bytes")
    _assert_equal(unpack(p_t, backend="triton").codes, q.codes, "unpacked codes")


def test_fp32_input_and_bf16_output(device: str) -> None:
    x = torch.randn(3, 2, 7, 32, device=device)
    p_ref = quantize_pack(x, 3, backend="torch")
    p_tri = quantize_pack(x, 3, backend="triton")
    _assert_equal(p_tri.data, p_ref.data, "data")
    for dt in (torch.float32, torch.bfloat16):
        _assert_equal(unpack_dequantize(p_ref, dt, "triton"), unpack_dequantize(p_ref, dt, "torch"), str(dt))


def test_triton_rejects_bad_widths(device: str) -> None:
    x = torch.randn(2, 3, 16, device=device)
    with pytest.raises(ValueError, match="1..8"):
        _ = quantize_pack(x, torch.full((2, 3), 9, device=device), backend="triton").data  # GPU widths: on read
    with pytest.raises(ValueError, match="2..8"):
        _ = quantize_pack(x, torch.ones(2, 3, dtype=torch.long, device=device), scheme="symmetric", backend="triton").data
    with pytest.raises(TypeError, match="integer"):
        quantize_pack(x, torch.full((2, 3), 4.0, device=device), backend="triton")


def test_device_sized_pack_reports_bad_widths_on_read(device: str) -> None:
    """The no-sync path sums and checks the widths in the kernel (the launcher's own path, any device)."""
    x = torch.randn(70, 16, device=device)
    bits = torch.randint(1, 9, (70,), device=device)
    bits[37] = 0
    res = quantize_pack_triton(x, bits, False, 0)
    assert res["ws"] is not None and res["data"].numel() == 70 * 8 * 2  # worst case until asked
    with pytest.raises(ValueError, match="1 groups outside"):
        packed_size(res["ws"], 16, 1)
    bits[37] = 3
    res = quantize_pack_triton(x, bits, False, 0)
    assert packed_size(res["ws"], 16, 1) == int(bits.sum()) * 2


@pytest.mark.parametrize("g,n_tok,vpp,block_rows",
                         [(128, 67, 256, 8), (64, 41, 64, 2048), (40, 45, 64, 4), (8, 50, 8, 1)])
def test_offsets_over_many_tiles_and_blocks(g: int, n_tok: int, vpp: int, block_rows: int, device: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Small tiles and blocks: offsets from tile sums and block sums, read a few block sums per step."""
    monkeypatch.setitem(kb.TUNING, "values_per_program", vpp)
    monkeypatch.setitem(kb.TUNING, "block_rows", block_rows)
    monkeypatch.setitem(kb.TUNING, "sums_step", 4)
    torch.manual_seed(g + n_tok)
    x = torch.randn(1, 1, n_tok, g, device=device, dtype=torch.float16)
    bits = torch.randint(1, 9, (1, 1, n_tok), device=device, dtype=torch.uint8)
    p_ref = quantize_pack(x, bits, adaptive=True, backend="torch")
    p_tri = quantize_pack(x, bits, adaptive=True, backend="triton")
    _assert_equal(p_tri.data, p_ref.data, "data")
    _assert_equal(p_tri.widths, p_ref.widths, "widths")
    _assert_equal(unpack_dequantize(p_ref, backend="triton"), unpack_dequantize(p_ref, backend="torch"), "dequant")


@pytest.mark.parametrize("bits", [1, 5, 8])
def test_fixed_width_groups(bits: int, device: str) -> None:
    """An int width takes the fixed-offset path (no workspace); several groups per token (group_size)."""
    x = torch.randn(2, 3, 9, 96, device=device)
    p_ref = quantize_pack(x, bits, group_size=32, outliers=0.05, backend="torch")
    p_tri = quantize_pack(x, bits, group_size=32, outliers=0.05, backend="triton")
    assert p_tri.widths is None and p_tri.fixed_bits == bits
    for name in ("data", "scale", "zero", "out_val", "out_pos"):
        _assert_equal(getattr(p_tri, name), getattr(p_ref, name), name)
    _assert_equal(unpack_dequantize(p_tri, backend="triton"), unpack_dequantize(p_ref, backend="torch"), "dequant")


@pytest.mark.parametrize("g,scheme", [(128, "minmax"), (64, "symmetric"), (24, "minmax")])
def test_outliers_with_ties_and_constant_rows(g: int, scheme: str, device: str) -> None:
    """One outlier per tail (the closed-form path): repeated extremes and all-equal rows pick the twin's columns."""
    torch.manual_seed(g)
    x = torch.randint(-3, 4, (1, 2, 6, g), device=device).to(torch.float16)
    x[0, 0, 1] = 2.0  # constant row: max at column 0, min at column 1
    x[0, 1, 2, ::5] = 7.0  # the max repeated: first index wins
    x[0, 1, 3] = -torch.randint(1, 4, (g,), device=device).to(torch.float16)
    x[0, 1, 3, 2], x[0, 1, 3, 5] = -0.0, 0.0  # the max is zero, first as -0.0: stored as -0.0, as the twin gathers it
    bits = torch.randint(2, 9, (1, 2, 6), device=device)
    p_ref = quantize_pack(x, bits, scheme=scheme, outliers=0.01, backend="torch")
    p_tri = quantize_pack(x, bits, scheme=scheme, outliers=0.01, backend="triton")
    assert p_ref.out_val.shape[1] == 2
    for name in ("data", "scale", "out_val", "out_pos"):
        _assert_equal(getattr(p_tri, name), getattr(p_ref, name), name)
    _assert_equal(p_tri.out_val.view(torch.int16), p_ref.out_val.view(torch.int16), "out_val bits")
    _assert_equal(unpack_dequantize(p_tri, backend="triton"), unpack_dequantize(p_ref, backend="torch"), "dequant")


def test_zero_point_above_the_min_clips_low(device: str) -> None:
    """Spread far below the values' fp16 spacing: the fp16 zero point lies above the min, so codes clip at 0."""
    torch.manual_seed(3)
    x = 1000.3 + 0.01 * torch.rand(2, 3, 5, 32, device=device)  # fp32; fp16(1000.3) = 1000.5
    bits = torch.randint(2, 9, (2, 3, 5), device=device)
    p_ref = quantize_pack(x, bits, backend="torch")
    p_tri = quantize_pack(x, bits, backend="triton")
    assert bool((p_ref.zero.float() > x.reshape(-1, 32).amin(1)).all())
    for name in ("data", "scale", "zero"):
        _assert_equal(getattr(p_tri, name), getattr(p_ref, name), name)
