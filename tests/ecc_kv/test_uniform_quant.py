"""ecc_kv.uniform_quant: any-width grids, error bounds, outliers kept exactly, bad input."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.uniform_quant import dequantize, fake_quantize, outliers_per_tail, quantize


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("group_size", [None, 8])
def test_minmax_error_within_half_step(bits: int, group_size: int | None, device: str) -> None:
    torch.manual_seed(bits)
    x = (torch.randn(2, 3, 7, 24, device=device) * 3).to(torch.float16)
    q = quantize(x, bits, group_size=group_size)
    xh = dequantize(q, torch.float32)
    g = group_size or 24
    step = q.scale.float().reshape(2, 3, 7, 24 // g, 1)
    err = (xh - x.float()).abs().reshape(2, 3, 7, 24 // g, g)
    # half a step plus the fp16 rounding of the zero point
    assert bool((err <= step / 2 + 1e-3 * x.float().abs().amax()).all())
    assert int(q.codes.max()) <= 2**bits - 1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_symmetric_grid_matches_int4_contract(bits: int, device: str) -> None:
    x = torch.randn(5, 32, device=device, dtype=torch.float16)
    q = quantize(x, bits, scheme="symmetric")
    c0 = 2 ** (bits - 1)
    amax = x.float().abs().amax(-1)
    assert torch.allclose(q.scale.float(), amax / (c0 - 1), rtol=1e-3)
    assert bool(((q.codes.int() - c0).abs() <= c0 - 1).all())
    assert float((dequantize(q, torch.float32) - x.float()).abs().max()) <= float(q.scale.float().max()) / 2 + 1e-3


def test_outliers_restored_exactly_and_excluded_from_stats(device: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 64, device=device, dtype=torch.float16)
    x[:, 5] = 100.0
    x[:, 9] = -80.0
    q = quantize(x, 3, outliers=0.01)
    assert q.k_tail == 1 and q.outlier_fraction == pytest.approx(2 / 64)
    xh = dequantize(q, torch.float16)
    assert torch.equal(xh[:, 5], x[:, 5]) and torch.equal(xh[:, 9], x[:, 9])
    assert bool((q.out_pos[:, 0] == 5).all()) and bool((q.out_pos[:, 1] == 9).all())
    # the scale comes from the inliers only: far below what the outliers would force
    assert float(q.scale.float().max()) < 180.0 / 7 / 4
    no_out = quantize(x, 3)
    assert (xh.float() - x.float()).pow(2).mean() < (dequantize(no_out, torch.float32) - x.float()).pow(2).mean()


def test_per_token_widths_tensor(device: str) -> None:
    x = torch.randn(2, 2, 5, 16, device=device)
    bits = torch.tensor([1, 2, 4, 8, 3], device=device).expand(2, 2, 5)
    q = quantize(x, bits, group_size=8)
    assert q.bits.shape == (2 * 2 * 5 * 2,)
    assert q.bits.reshape(2, 2, 5, 2)[0, 0, :, 1].tolist() == [1, 2, 4, 8, 3]
    err8 = (fake_quantize(x, 8) - x).abs().max()
    err1 = (fake_quantize(x, 1) - x).abs().max()
    assert err8 < err1


def test_constant_and_zero_groups_exact(device: str) -> None:
    x = torch.zeros(3, 16, device=device, dtype=torch.float16)
    x[1] = 2.5
    for scheme in ("minmax", "symmetric", "mean"):
        assert torch.equal(dequantize(quantize(x, 4, scheme=scheme), torch.float16)[0], x[0])
    assert torch.equal(dequantize(quantize(x, 2), torch.float16), x)


def test_mean_scheme_centres_on_mean(device: str) -> None:
    x = torch.randn(6, 32, device=device)
    q = quantize(x, 4, scheme="mean")
    assert torch.allclose(q.zero.float(), x.mean(-1), atol=2e-3)


def test_bad_input_raises() -> None:
    x = torch.randn(2, 16)
    with pytest.raises(ValueError, match="bits"):
        quantize(x, 9)
    with pytest.raises(ValueError, match="bits"):
        quantize(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="scheme"):
        quantize(x, 4, scheme="log")
    with pytest.raises(ValueError, match="symmetric"):
        quantize(x, 1, scheme="symmetric")
    with pytest.raises(ValueError, match="group_size"):
        quantize(x, 4, group_size=5)
    with pytest.raises(ValueError, match="outliers"):
        outliers_per_tail(0.6, 16)
    with pytest.raises(TypeError, match="dtype"):
        quantize(x.to(torch.int32), 4)
