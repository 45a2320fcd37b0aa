"""Interpolation of values lost to detected-uncorrectable codewords, along the token axis.

Rule (applied in the dequantized domain, per channel): a bad value at token t is replaced by

- the mean of the nearest good value before it and the nearest good value after it, each searched
  within ``window`` tokens (t - 1 .. t - window and t + 1 .. t + window, nearest first);
- the one found value when only one side has a good value (sequence edges, or a bad neighbour);
- 0 when neither side has a good value within the window (0 is the centre of the symmetric INT4
  grid: the least-informed guess, and never an outlier the attention softmax could amplify).

With the default ``window=1`` this is the textbook rule: mean of the previous and next token, one
neighbour at the edges. Neighbours are always original good values (interpolated values never feed
other interpolations), which is what makes the result order-independent and the Triton twin
(``kernels.interp``) exact: the mean is computed in fp32 and rounded once to ``x.dtype``.
"""

from __future__ import annotations

import torch

from ecc_kv.quant import check_backend

MAX_WINDOW = 8


def _check(x: torch.Tensor, bad: torch.Tensor, window: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x must be a float16/bfloat16/float32 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 2:
        raise ValueError(f"x must be [..., T, D], got shape {tuple(x.shape)}")
    if not isinstance(bad, torch.Tensor) or bad.shape != x.shape:
        raise ValueError(f"bad must be a tensor of x's shape {tuple(x.shape)}, got {getattr(bad, 'shape', bad)}")
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window={window!r} must be an int in 1..{MAX_WINDOW}")


def _interp_torch(x: torch.Tensor, bad: torch.Tensor, window: int) -> torch.Tensor:
    xf = x.to(torch.float32)  # [..., T, D]
    good = ~bad
    t = x.shape[-2]
    left = torch.zeros_like(xf)
    right = torch.zeros_like(xf)
    has_l = torch.zeros_like(good)
    has_r = torch.zeros_like(good)
    for k in range(1, min(window, t - 1) + 1):
        # candidate at distance k: taken only where no nearer good value was found
        gl = torch.zeros_like(good)
        gl[..., k:, :] = good[..., :-k, :]
        vl = torch.zeros_like(xf)
        vl[..., k:, :] = xf[..., :-k, :]
        take = gl & ~has_l
        left = torch.where(take, vl, left)
        has_l |= gl
        gr = torch.zeros_like(good)
        gr[..., :-k, :] = good[..., k:, :]
        vr = torch.zeros_like(xf)
        vr[..., :-k, :] = xf[..., k:, :]
        take = gr & ~has_r
        right = torch.where(take, vr, right)
        has_r |= gr
    both = (left + right) * 0.5
    fill = torch.where(has_l & has_r, both, torch.where(has_l, left, torch.where(has_r, right, torch.zeros_like(xf))))
    return torch.where(bad, fill, xf).to(x.dtype)


def interpolate_detected(
    x: torch.Tensor, bad: torch.Tensor, window: int = 1, backend: str = "torch"
) -> torch.Tensor:
    """``x [..., T, D]`` with the values flagged in ``bad [..., T, D]`` (bool) interpolated along T (new tensor)."""
    check_backend(backend)
    _check(x, bad, window)
    bad = bad.to(torch.bool)
    if backend == "triton":
        from kernels.interp import interpolate_triton

        return interpolate_triton(x, bad, window)
    return _interp_torch(x, bad, window)
