"""Triton INT4 quantize/dequantize against the torch twin: bit-for-bit codes, scales and values."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.quant import dequantize_int4, quantize_int4


def _assert_equal(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.dtype.is_floating_point:
        a, b = a.view(torch.int16) if a.element_size() == 2 else a.view(torch.int32), (
            b.view(torch.int16) if b.element_size() == 2 else b.view(torch.int32)
        )
    diff = a != b
    assert not diff.any(), f"{what}: first mismatch at {diff.nonzero()[0].tolist()}: {a[diff][0]} vs {b[diff][0]}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,g", [((2, 3, 9, 41), None), ((7, 100), 20), ((1, 1, 1, 1), None), ((3, 2, 5, 128), 32)])
def test_triton_matches_torch(dtype: torch.dtype, shape: tuple[int, ...], g: int | None, device: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen) * torch.logspace(-4, 3, shape[-1])
    x[..., 0, :] = 0.0 if len(shape) > 2 else x[..., 0, :]  # a zero row
    x = x.to(dtype).to(device)
    c_ref, s_ref = quantize_int4(x, g)
    c_tri, s_tri = quantize_int4(x, g, backend="triton")
    _assert_equal(c_ref, c_tri, "codes")
    _assert_equal(s_ref, s_tri, "scales")
    for out in (torch.float16, torch.bfloat16, torch.float32):
        _assert_equal(dequantize_int4(c_ref, s_ref, g, out), dequantize_int4(c_ref, s_ref, g, out, backend="triton"), str(out))


def test_triton_ties_and_fp16_bump(device: str) -> None:
    # exact .5 quotients (round half to even) and amax values whose fp16 scale must be bumped up
    amax = torch.linspace(1.0, 2.0, 4001).float()
    down = (amax / 7.0).to(torch.float16).float() < amax / 7.0
    rows = amax[down][:64]
    ties = torch.tensor([[7.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]])  # amax 7: scale 1, quotients k + 0.5
    x = torch.cat([rows[:, None] * torch.linspace(-1, 1, 8)[None, :], ties]).to(device)
    c_ref, s_ref = quantize_int4(x)
    c_tri, s_tri = quantize_int4(x, backend="triton")
    _assert_equal(c_ref, c_tri, "codes")
    _assert_equal(s_ref, s_tri, "scales")
    assert (c_ref[-1].int() - 8).tolist() == [7, 0, 2, 2, 0, -2, -2, 4]


def test_triton_random_codes_dequantize(device: str) -> None:
    gen = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (5, 3, 33), generator=gen, dtype=torch.uint8).to(device)
    scales = (torch.rand(5, 3, 3, generator=gen) * 10).half().to(device)
    _assert_equal(dequantize_int4(codes, scales, 11), dequantize_int4(codes, scales, 11, backend="triton"), "deq")
