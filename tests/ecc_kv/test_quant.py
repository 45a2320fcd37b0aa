"""INT4 quantization (torch reference): half-step error bound, edge rows, shapes, errors."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.quant import dequantize_int4, fp16_scale_from_amax, quantize_int4


def _check_half_step(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, g: int) -> None:
    """|x - q * s| <= s / 2 in fp32 (the bound before the cast to the output dtype)."""
    xhat = dequantize_int4(codes, scales, g, dtype=torch.float32)
    s = scales.float().repeat_interleave(g, dim=-1)  # [..., D]
    err = (x.float() - xhat).abs()
    # fp32 rounding of x / s may add one ulp of the quotient: allow a relative 1e-6 slack
    bad = err > s / 2 * (1 + 1e-6)
    assert not bad.any(), f"first violation at {bad.nonzero()[0].tolist()}: err={err[bad][0]}, s={s[bad][0]}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape,g", [((2, 3, 17, 64), None), ((5, 100), 20), ((1, 1, 1, 7), None), ((3, 128), 32)])
def test_round_trip_within_half_step(dtype: torch.dtype, shape: tuple[int, ...], g: int | None, device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * torch.logspace(-3, 2, shape[-1])).to(dtype).to(device)
    codes, scales = quantize_int4(x, g)
    gs = g or shape[-1]
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert scales.dtype == torch.float16 and scales.shape == (*shape[:-1], shape[-1] // gs)
    assert int(codes.max()) <= 15 and int(codes.min()) >= 1  # quantize never emits q = -8
    _check_half_step(x, codes, scales, gs)
    assert dequantize_int4(codes, scales, g, dtype=dtype).dtype == dtype


def test_scale_rounded_up_never_below_amax_over_7() -> None:
    # every fp32 amax in a dense sweep, including values where fp16 rounding goes down
    amax = torch.cat([torch.linspace(0, 70000, 200001), torch.logspace(-9, 5, 20001)]).float()
    s = fp16_scale_from_amax(amax)
    ok = s.float() >= (amax / 7.0).clamp(max=65504.0)
    assert ok.all()
    # and it is the smallest fp16 with that property (never rounded up by more than one step)
    prev = (s.view(torch.int16) - 1).view(torch.float16).float()
    assert ((prev < amax / 7.0) | (s == 0)).all()


def test_fp16_rounding_down_case_still_within_half_step() -> None:
    # amax / 7 rounds down to nearest fp16 here: without the bump, |x|/s > 7 would clamp and break the bound
    amax = torch.linspace(1.0, 2.0, 100001).float()
    down = (amax / 7.0).to(torch.float16).float() < amax / 7.0
    x = amax[down][:1000].reshape(-1, 1) * torch.tensor([1.0, -1.0, 0.5, 0.93])  # [N, 4] |x| max = amax
    codes, scales = quantize_int4(x)
    _check_half_step(x, codes, scales, 4)
    assert (codes[:, 0] == 15).all() and (codes[:, 1] == 1).all()


def test_zero_and_constant_rows(device: str) -> None:
    x = torch.zeros(4, 8, device=device)
    x[1] = 3.25
    x[2] = -0.001
    x[3, 5] = 1e-7  # fp16 subnormal range scale
    codes, scales = quantize_int4(x.half())
    assert (codes[0] == 8).all() and scales[0] == 0
    assert (dequantize_int4(codes, scales)[0] == 0).all()
    assert (codes[1] == 15).all() and (codes[2] == 1).all()
    _check_half_step(x.half(), codes, scales, 8)
    x32 = x.clone()
    x32[3, 5] = 1e-7
    c32, s32 = quantize_int4(x32)
    assert s32[3] > 0
    _check_half_step(x32, c32, s32, 8)


def test_dequantize_code_zero_is_minus_eight_steps() -> None:
    codes = torch.tensor([[0, 8, 15]], dtype=torch.uint8)
    scales = torch.tensor([[0.5]], dtype=torch.float16)
    assert dequantize_int4(codes, scales, dtype=torch.float32).tolist() == [[-4.0, 0.0, 3.5]]


def test_bad_inputs_raise() -> None:
    x = torch.randn(2, 10)
    with pytest.raises(ValueError, match="group_size=3"):
        quantize_int4(x, group_size=3)
    with pytest.raises(ValueError, match="backend='cuda'"):
        quantize_int4(x, backend="cuda")
    with pytest.raises(TypeError, match="int64"):
        quantize_int4(torch.ones(2, 4, dtype=torch.int64))
    codes, scales = quantize_int4(x, group_size=5)
    with pytest.raises(ValueError, match="scales.shape"):
        dequantize_int4(codes, scales)
    with pytest.raises(TypeError, match="codes.dtype"):
        dequantize_int4(codes.int(), scales, group_size=5)
