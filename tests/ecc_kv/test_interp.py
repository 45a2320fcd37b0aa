"""Interpolation of detected-uncorrectable values: constructed cases for every branch of the rule."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.interp import interpolate_detected

BACKENDS = ["torch", "triton"]


def _seq(values: list[float], device: str) -> torch.Tensor:
    """A [1, T, 2] tensor: channel 0 holds ``values``, channel 1 is 100 + t (never bad)."""
    t = len(values)
    x = torch.stack([torch.tensor(values), 100.0 + torch.arange(t)], dim=-1)
    return x[None].to(device)


def _bad(flags: list[int], device: str) -> torch.Tensor:
    b = torch.zeros(1, len(flags), 2, dtype=torch.bool)
    b[0, :, 0] = torch.tensor(flags, dtype=torch.bool)
    return b.to(device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_middle_edges_and_fallbacks(backend: str, device: str) -> None:
    x = _seq([1.0, 50.0, 3.0, 4.0, 60.0, 70.0, 8.0, 9.0, 90.0], device)
    bad = _bad([0, 1, 0, 0, 1, 1, 0, 0, 1], device)
    y = interpolate_detected(x, bad, backend=backend)
    # t1: mean of 1 and 3; t4: left 4, right bad -> 4; t5: left bad, right 8 -> 8; t8: last -> 9
    assert y[0, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 4.0, 8.0, 8.0, 9.0, 9.0]
    assert torch.equal(y[0, :, 1], x[0, :, 1])  # other channel untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_good_neighbour_gives_zero_and_window_extends(backend: str, device: str) -> None:
    x = _seq([5.0, 77.0, 77.0, 77.0, 9.0, 11.0], device)
    bad = _bad([0, 1, 1, 1, 0, 0], device)
    y1 = interpolate_detected(x, bad, window=1, backend=backend)
    assert y1[0, :, 0].tolist() == [5.0, 5.0, 0.0, 9.0, 9.0, 11.0]
    y2 = interpolate_detected(x, bad, window=2, backend=backend)
    # t1: left 5 (d=1), right 9 (d=3) out of window 2 -> 5; t2: left 5 (d=2), right 9 (d=2) -> 7
    assert y2[0, :, 0].tolist() == [5.0, 5.0, 7.0, 9.0, 9.0, 11.0]
    y3 = interpolate_detected(x, bad, window=3, backend=backend)
    assert y3[0, :, 0].tolist() == [5.0, 7.0, 7.0, 7.0, 9.0, 11.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_token_and_all_bad(backend: str, device: str) -> None:
    x = torch.full((2, 1, 3), 4.0, device=device)
    y = interpolate_detected(x, torch.ones_like(x, dtype=torch.bool), backend=backend)
    assert (y == 0).all()
    x = torch.randn(3, 5, 4, device=device)
    assert torch.equal(interpolate_detected(x, torch.zeros_like(x, dtype=torch.bool), backend=backend), x)


def test_mean_rounded_once_in_fp32(device: str) -> None:
    # fp16 neighbours whose exact mean is not representable: result = fp16(fp32 mean)
    a, b = 1.0009765625, 1.001953125  # consecutive fp16 values
    x = torch.tensor([[[a], [0.0], [b]]], dtype=torch.float16, device=device)
    bad = torch.tensor([[[False], [True], [False]]], device=device)
    y = interpolate_detected(x, bad)
    assert y[0, 1, 0].item() == torch.tensor((a + b) / 2, dtype=torch.float32).half().item()


def test_bad_arguments_raise() -> None:
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="bad must be"):
        interpolate_detected(x, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="window=0"):
        interpolate_detected(x, torch.zeros_like(x, dtype=torch.bool), window=0)
    with pytest.raises(TypeError, match="int32"):
        interpolate_detected(x.int(), torch.zeros_like(x, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend='numpy'"):
        interpolate_detected(x, torch.zeros_like(x, dtype=torch.bool), backend="numpy")
