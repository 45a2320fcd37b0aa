"""Triton INT4 quantize / dequantize, bit-for-bit twin of ``ecc_kv.quant`` (torch).

The ``@triton.jit`` device functions (``int4_scale``, ``int4_quantize``, ``int4_dequantize``) are
shared with the fused KV round trip (``kernels.kv_roundtrip``) so the arithmetic is defined once.
Every step is exactly rounded (``div_rn``, round-half-to-even built from ``floor``), which is what
makes the Triton codes and scales equal the torch ones bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FP16_MAX = 65504.0


@triton.jit
def int4_scale(amax):
    """fp16 scale from the fp32 group max |x|: amax / 7 rounded to nearest, bumped up one fp16 step if it went down."""
    s32 = tl.minimum(tl.math.div_rn(amax, 7.0), 65504.0)
    s16 = s32.to(tl.float16)
    down = s16.to(tl.float32) < s32
    bumped = (s16.to(tl.int16, bitcast=True) + 1).to(tl.float16, bitcast=True)
    return tl.where(down, bumped, s16)


@triton.jit
def int4_quantize(x, s):
    """INT4 code (int32 in 0..15) of fp32 ``x`` with fp32 scale ``s`` (code 8 where s == 0)."""
    safe = tl.where(s > 0, s, 1.0)
    y = tl.math.div_rn(x, safe)
    f = tl.floor(y)
    d = y - f  # exact for |y| < 2^23
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    r = f + tl.where((d > 0.5) | ((d == 0.5) & odd), 1.0, 0.0)  # round half to even
    r = tl.minimum(tl.maximum(r, -8.0), 7.0)
    r = tl.where(s > 0, r, 0.0)
    return r.to(tl.int32) + 8


@triton.jit
def int4_dequantize(code, s):
    """fp32 value of INT4 ``code`` (low nibble used) with fp32 scale ``s``."""
    return ((code & 15) - 8).to(tl.float32) * s


@triton.jit
def store_value(ptr, offs, x, mask):
    """Store fp32 ``x`` into ``ptr``'s dtype; bf16 rounded to nearest even by hand (same result interpreted or compiled)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(ptr + offs, rounded.to(tl.int16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _group_tile(R, D, G, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
    """This program's scale group ``g`` and its tile of BLOCK_R rows: (g, rows, row mask, mask, offsets in [R, D])."""
    g = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_G)
    rmask = rows < R
    mask = rmask[:, None] & (cols < G)[None, :]
    return g, rows, rmask, mask, rows.to(tl.int64)[:, None] * D + g * G + cols[None, :]


@triton.jit
def _quant_kernel(x_ptr, codes_ptr, scales_ptr, R, D, G, NG, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
    # x: [R, D] -> codes [R, D] uint8, scales [R, NG] fp16; one program = BLOCK_R rows x one group
    g, rows, rmask, mask, offs = _group_tile(R, D, G, BLOCK_R, BLOCK_G)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s16 = int4_scale(tl.max(tl.abs(x), axis=1))  # [BLOCK_R]
    code = int4_quantize(x, s16.to(tl.float32)[:, None])
    tl.store(codes_ptr + offs, code.to(tl.uint8), mask=mask)
    tl.store(scales_ptr + rows.to(tl.int64) * NG + g, s16, mask=rmask)


@triton.jit
def _dequant_kernel(codes_ptr, scales_ptr, out_ptr, R, D, G, NG, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
    g, rows, rmask, mask, offs = _group_tile(R, D, G, BLOCK_R, BLOCK_G)
    code = tl.load(codes_ptr + offs, mask=mask, other=8).to(tl.int32)
    s = tl.load(scales_ptr + rows.to(tl.int64) * NG + g, mask=rmask, other=0.0).to(tl.float32)
    x = int4_dequantize(code, s[:, None])
    store_value(out_ptr, offs, x, mask)


def _blocks(g: int) -> tuple[int, int]:
    block_g = triton.next_power_of_2(g)
    return max(1, min(64, 4096 // block_g)), block_g


def quantize_int4_triton(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: ``x [..., D]`` -> (codes uint8 ``[..., D]``, scales fp16 ``[..., D // group_size]``)."""
    d = x.shape[-1]
    ng = d // group_size
    x2 = x.reshape(-1, d).contiguous()  # [R, D]
    r = x2.shape[0]
    codes = torch.empty(x2.shape, dtype=torch.uint8, device=x.device)
    scales = torch.empty((r, ng), dtype=torch.float16, device=x.device)
    if r > 0:
        block_r, block_g = _blocks(group_size)
        _quant_kernel[(triton.cdiv(r, block_r), ng)](x2, codes, scales, r, d, group_size, ng, block_r, block_g)
    return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], ng)


def dequantize_int4_triton(
    codes: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """Launcher: codes ``[..., D]`` + fp16 scales ``[..., D // group_size]`` -> values ``[..., D]`` in ``dtype``."""
    d = codes.shape[-1]
    ng = d // group_size
    c2 = codes.reshape(-1, d).contiguous()  # [R, D]
    s2 = scales.reshape(-1, ng).to(torch.float16).contiguous()  # [R, NG]
    r = c2.shape[0]
    out = torch.empty(c2.shape, dtype=dtype, device=codes.device)
    if r > 0:
        block_r, block_g = _blocks(group_size)
        _dequant_kernel[(triton.cdiv(r, block_r), ng)](c2, s2, out, r, d, group_size, ng, block_r, block_g)
    return out.reshape(codes.shape)
