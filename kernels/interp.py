"""Triton twin of ``ecc_kv.interp``: bad values replaced from the nearest good tokens of the same channel.

``interp_fill`` is the shared rule (nearest good left/right within the window, mean of both in fp32,
one side alone, else 0); the fused KV round trip (``kernels.kv_roundtrip``) calls it with neighbour
values it recomputes itself, so both paths round identically.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.quant import store_value


@triton.jit
def interp_fill(left, has_l, right, has_r):
    """fp32 replacement value from the nearest good neighbours (flags: int1 tiles)."""
    both = (left + right) * 0.5
    return tl.where(has_l & has_r, both, tl.where(has_l, left, tl.where(has_r, right, 0.0)))


@triton.jit
def _interp_kernel(
    x_ptr, bad_ptr, out_ptr, T, D, WINDOW: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
):
    # x, bad, out: [R, T, D]; program = (r, token block, channel block)
    r = tl.program_id(0).to(tl.int64)
    ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    ds = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = (ds < D)[None, :]
    mask = (ts < T)[:, None] & dmask
    base = r * T * D
    offs = base + ts[:, None].to(tl.int64) * D + ds[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    bad = tl.load(bad_ptr + offs, mask=mask, other=0) != 0
    left = tl.zeros_like(x)
    right = tl.zeros_like(x)
    has_l = tl.zeros(x.shape, tl.int1)
    has_r = tl.zeros(x.shape, tl.int1)
    for k in tl.static_range(1, WINDOW + 1):
        tp = ts - k
        ml = (tp >= 0)[:, None] & mask
        ol = base + tp[:, None].to(tl.int64) * D + ds[None, :]
        gl = ml & (tl.load(bad_ptr + ol, mask=ml, other=1) == 0)
        vl = tl.load(x_ptr + ol, mask=gl, other=0.0).to(tl.float32)
        left = tl.where(gl & ~has_l, vl, left)
        has_l = has_l | gl
        tr = ts + k
        mr = (tr < T)[:, None] & mask
        orr = base + tr[:, None].to(tl.int64) * D + ds[None, :]
        gr = mr & (tl.load(bad_ptr + orr, mask=mr, other=1) == 0)
        vr = tl.load(x_ptr + orr, mask=gr, other=0.0).to(tl.float32)
        right = tl.where(gr & ~has_r, vr, right)
        has_r = has_r | gr
    y = tl.where(bad, interp_fill(left, has_l, right, has_r), x)
    store_value(out_ptr, offs, y, mask)


def interpolate_triton(x: torch.Tensor, bad: torch.Tensor, window: int) -> torch.Tensor:
    """Launcher: ``x [..., T, D]``, ``bad [..., T, D]`` bool -> interpolated copy of ``x``."""
    t, d = x.shape[-2], x.shape[-1]
    x3 = x.reshape(-1, t, d).contiguous()  # [R, T, D]
    b3 = bad.reshape(-1, t, d).contiguous().view(torch.uint8)
    out = torch.empty_like(x3)
    if x3.numel():
        block_d = min(128, triton.next_power_of_2(d))
        block_t = max(1, 2048 // block_d)
        grid = (x3.shape[0], triton.cdiv(t, block_t), triton.cdiv(d, block_d))
        _interp_kernel[grid](x3, b3, out, t, d, window, block_t, block_d)
    return out.reshape(x.shape)
