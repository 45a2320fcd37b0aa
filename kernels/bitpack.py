"""Triton kernels: quantize+pack and unpack+dequantize at per-group widths (bit-planar layout).

The torch twin and the layout are in ``ecc_kv.bitpack`` / ``ecc_kv.uniform_quant``; these
kernels reproduce them bit for bit. One program handles ``BLOCK_M`` groups of ``G`` values;
group ``m`` writes ``bits[m]`` planes of ``PB = ceil(G / 8)`` bytes at ``off[m]`` (a prefix
sum of the widths computed before the launch).

Bit-exactness: the same fp32 operations as the twin (correctly rounded division,
``floor(v + 0.5)``, scales rounded up to fp16, first-index argmax/argmin for outliers);
dequantization ``(code - c0) * scale + zero`` has an exact product, so a fused multiply-add
rounds the same as the twin's separate multiply and add.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FP16_MAX = tl.constexpr(65504.0)


@triton.jit
def _round_up_fp16(s32):
    s32 = tl.minimum(s32, _FP16_MAX)
    s16 = s32.to(tl.float16)
    down = s16.to(tl.float32) < s32
    bumped = (s16.to(tl.int16, bitcast=True) + 1).to(tl.float16, bitcast=True)
    return tl.where(down, bumped, s16)


@triton.jit
def _tile(rows, M, G, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """A group tile as [BM, BG/8, 8]: value 8j+k of each row, so packing reduces an in-thread axis."""
    j = tl.arange(0, BLOCK_G // 8)
    k = tl.arange(0, 8)
    col3 = j[None, :, None] * 8 + k[None, None, :]  # [1, BG8, 8]
    valid3 = (rows < M)[:, None, None] & (col3 < G)  # [BM, BG8, 8]
    ptr3 = rows.to(tl.int64)[:, None, None] * G + col3
    return j, k, col3, valid3, ptr3


@triton.jit
def _transpose8(x):
    """8x8 bit transpose of int64 words (see ``ecc_kv.bitpack.transpose8``)."""
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AA
    x = x ^ t ^ (t << 7)
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCC
    x = x ^ t ^ (t << 14)
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0
    return x ^ t ^ (t << 28)


@triton.jit
def _max2(x):
    return tl.max(tl.max(x, axis=2), axis=1)


@triton.jit
def _min2(x):
    return tl.min(tl.min(x, axis=2), axis=1)


@triton.jit
def _pack_kernel(
    x_ptr, codes_ptr, bits_ptr, off_ptr, data_ptr, scale_ptr, zero_ptr, oval_ptr, opos_ptr,
    M, G, PB,
    FROM_X: tl.constexpr, SYMMETRIC: tl.constexpr, K_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    j, k, col3, valid3, ptr3 = _tile(rows, M, G, BLOCK_M, BLOCK_G)
    b = tl.load(bits_ptr + rows, mask=rmask, other=0).to(tl.int32)  # [BM]
    if FROM_X:
        x = tl.load(x_ptr + ptr3, mask=valid3, other=0.0).to(tl.float32)  # [BM, BG8, 8]
        taken = ~valid3
        for t in tl.static_range(2 * K_TAIL):  # K_TAIL largest, then K_TAIL smallest; first index on ties
            if t < K_TAIL:
                xm = tl.where(taken, float("-inf"), x)
                ext = _max2(xm)  # [BM]
            else:
                xm = tl.where(taken, float("inf"), x)
                ext = _min2(xm)
            cand = (xm == ext[:, None, None]) & (~taken)
            idx = _min2(tl.where(cand, col3, 1 << 30))  # [BM]
            taken = taken | (col3 == idx[:, None, None])
            tl.store(opos_ptr + rows64 * (2 * K_TAIL) + t, idx.to(tl.int16), mask=rmask)
            tl.store(oval_ptr + rows64 * (2 * K_TAIL) + t, ext.to(tl.float16), mask=rmask)
        mx = _max2(tl.where(taken, float("-inf"), x))  # [BM]
        mn = _min2(tl.where(taken, float("inf"), x))
        levels = (1 << b).to(tl.float32)
        if SYMMETRIC:
            amax = tl.maximum(tl.abs(mx), tl.abs(mn))
            scale = _round_up_fp16(tl.math.div_rn(amax, levels * 0.5 - 1.0))
            zero = tl.zeros_like(scale)
            c0 = levels * 0.5
        else:
            scale = _round_up_fp16(tl.math.div_rn(mx - mn, levels - 1.0))
            zero = mn.to(tl.float16)
            c0 = tl.zeros_like(levels)
        tl.store(scale_ptr + rows, scale, mask=rmask)
        tl.store(zero_ptr + rows, zero, mask=rmask)
        s = scale.to(tl.float32)
        inv = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), tl.where(s > 0, s, 1.0))  # [BM]
        v = tl.floor((x - zero.to(tl.float32)[:, None, None]) * inv[:, None, None] + 0.5)
        v = v + c0[:, None, None]
        v = tl.minimum(tl.maximum(v, 0.0), (levels - 1.0)[:, None, None])
        v = tl.where(s[:, None, None] > 0, v, c0[:, None, None])
        codes = tl.where(valid3, v.to(tl.int32), 0)
    else:
        codes = tl.load(codes_ptr + ptr3, mask=valid3, other=0).to(tl.int32)
    # pack: plane p, byte j, bit k = bit p of code 8j+k: one 8x8 bit transpose per 8 codes
    w = _transpose8(tl.sum(codes.to(tl.int64) << (8 * k)[None, None, :], axis=2))  # [BM, BG8]: byte p = plane p
    off = tl.load(off_ptr + rows, mask=rmask, other=0)  # [BM] int64
    for p in tl.static_range(8):
        smask = rmask[:, None] & (p < b)[:, None] & (j[None, :] < PB)
        tl.store(data_ptr + off[:, None] + p * PB + j[None, :], ((w >> (8 * p)) & 255).to(tl.uint8), mask=smask)


@triton.jit
def _unpack_kernel(
    data_ptr, bits_ptr, off_ptr, scale_ptr, zero_ptr, oval_ptr, opos_ptr, out_ptr,
    M, G, PB,
    TO_X: tl.constexpr, CENTERED: tl.constexpr, N_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    j, k, col3, valid3, ptr3 = _tile(rows, M, G, BLOCK_M, BLOCK_G)
    b = tl.load(bits_ptr + rows, mask=rmask, other=0).to(tl.int32)
    off = tl.load(off_ptr + rows, mask=rmask, other=0)
    w = tl.zeros((BLOCK_M, BLOCK_G // 8), dtype=tl.int64)
    for p in tl.static_range(8):
        lmask = rmask[:, None] & (p < b)[:, None] & (j[None, :] < PB)
        byte = tl.load(data_ptr + off[:, None] + p * PB + j[None, :], mask=lmask, other=0).to(tl.int64)  # [BM, BG8]
        w = w | (byte << (8 * p))
    w = _transpose8(w)  # byte k = code 8j+k
    codes = ((w[:, :, None] >> (8 * k)[None, None, :]) & 255).to(tl.int32)  # [BM, BG8, 8]
    if TO_X:
        s = tl.load(scale_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        z = tl.load(zero_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        if CENTERED:
            c0 = (1 << b) // 2
        else:
            c0 = b * 0
        x = (codes - c0[:, None, None]).to(tl.float32) * s[:, None, None] + z[:, None, None]
        for i in tl.static_range(N_OUT):
            pos = tl.load(opos_ptr + rows64 * N_OUT + i, mask=rmask, other=-1).to(tl.int32)
            val = tl.load(oval_ptr + rows64 * N_OUT + i, mask=rmask, other=0.0).to(tl.float32)
            x = tl.where(col3 == pos[:, None, None], val[:, None, None], x)
        tl.store(out_ptr + ptr3, x.to(out_ptr.dtype.element_ty), mask=valid3)
    else:
        tl.store(out_ptr + ptr3, codes.to(tl.uint8), mask=valid3)


def _blocks(g: int) -> tuple[int, int]:
    bg = max(8, triton.next_power_of_2(g))
    bm = max(1, min(64, 4096 // bg))
    return bm, bg


def _offsets(bits: torch.Tensor, pb: int, need_total: bool = True) -> tuple[torch.Tensor, int]:
    """Byte offset of every group (exclusive prefix sum) and, if asked, the total (one host sync)."""
    b = bits.to(torch.int64)
    cs = torch.cumsum(b, 0)
    total = int(cs[-1]) * pb if need_total and b.numel() else 0
    return (cs - b) * pb, total


def quantize_pack_triton(
    xg: torch.Tensor, bits: torch.Tensor, symmetric: bool, k_tail: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused quantize+pack of groups xg [M, G] at widths uint8 [M]: (data, scale, zero, out_val, out_pos).

    The widths are validated (1..8, >= 2 when symmetric) in the same device-to-host read that
    sizes the output: one sync per call.
    """
    xg = xg.contiguous()
    m, g = xg.shape
    pb = (g + 7) // 8
    b = bits.to(torch.int64)
    cs = torch.cumsum(b, 0)
    off = (cs - b) * pb
    total, n_bad = torch.stack([cs[-1], ((b < (2 if symmetric else 1)) | (b > 8)).sum()]).tolist() if m else (0, 0)
    if n_bad:
        raise ValueError(f"bits must lie in {2 if symmetric else 1}..8 (symmetric needs >= 2): {n_bad} groups outside")
    total *= pb
    dev = xg.device
    data = torch.empty(total, dtype=torch.uint8, device=dev)
    scale = torch.empty(m, dtype=torch.float16, device=dev)
    zero = torch.empty(m, dtype=torch.float16, device=dev)
    out_val = torch.empty(m, 2 * k_tail, dtype=torch.float16, device=dev)
    out_pos = torch.empty(m, 2 * k_tail, dtype=torch.int16, device=dev)
    if m:
        bm, bg = _blocks(g)
        _pack_kernel[(triton.cdiv(m, bm),)](
            xg, xg, bits.contiguous(), off, data, scale, zero, out_val, out_pos, m, g, pb,
            FROM_X=True, SYMMETRIC=symmetric, K_TAIL=k_tail, BLOCK_M=bm, BLOCK_G=bg, num_warps=4,
            enable_fp_fusion=False,  # (x - zero) * inv + 0.5 rounded step by step, as in the torch twin
        )
    return data, scale, zero, out_val, out_pos


def quantize_groups_triton(
    xg: torch.Tensor, bits: torch.Tensor, symmetric: bool, k_tail: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize groups (codes unpacked): fused quantize+pack, then unpack of the codes."""
    data, scale, zero, out_val, out_pos = quantize_pack_triton(xg, bits, symmetric, k_tail)
    codes = unpack_codes_triton(data, bits, xg.shape[1])
    return codes, scale, zero, out_val, out_pos


def pack_codes_triton(codes: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Pack codes uint8 [M, G] at widths uint8 [M] into the planar byte stream."""
    codes = codes.contiguous()
    m, g = codes.shape
    pb = (g + 7) // 8
    off, total = _offsets(bits, pb)
    data = torch.empty(total, dtype=torch.uint8, device=codes.device)
    if m:
        bm, bg = _blocks(g)
        dummy = torch.empty(1, dtype=torch.float16, device=codes.device)
        _pack_kernel[(triton.cdiv(m, bm),)](
            dummy, codes, bits.contiguous(), off, data, dummy, dummy, dummy, dummy, m, g, pb,
            FROM_X=False, SYMMETRIC=False, K_TAIL=0, BLOCK_M=bm, BLOCK_G=bg, num_warps=4,
        )
    return data


def _unpack(data: torch.Tensor, bits: torch.Tensor, g: int, out: torch.Tensor, scale: torch.Tensor | None,
            zero: torch.Tensor | None, out_val: torch.Tensor | None, out_pos: torch.Tensor | None,
            centered: bool) -> torch.Tensor:
    m = bits.shape[0]
    pb = (g + 7) // 8
    off, _ = _offsets(bits, pb, need_total=False)
    if m:
        bm, bg = _blocks(g)
        to_x = scale is not None
        dummy = torch.empty(1, dtype=torch.float16, device=data.device)
        n_out = out_val.shape[1] if to_x and out_val is not None else 0
        _unpack_kernel[(triton.cdiv(m, bm),)](
            data, bits.contiguous(), off,
            scale if to_x else dummy, zero if to_x else dummy,
            out_val.contiguous() if n_out else dummy, out_pos.contiguous() if n_out else dummy, out,
            m, g, pb, TO_X=to_x, CENTERED=centered, N_OUT=n_out, BLOCK_M=bm, BLOCK_G=bg, num_warps=4,
        )
    return out


def unpack_codes_triton(data: torch.Tensor, bits: torch.Tensor, g: int) -> torch.Tensor:
    """Inverse of ``pack_codes_triton``: codes uint8 [M, G]."""
    out = torch.empty(bits.shape[0], g, dtype=torch.uint8, device=data.device)
    return _unpack(data, bits, g, out, None, None, None, None, False)


def unpack_dequantize_triton(
    data: torch.Tensor, bits: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, out_val: torch.Tensor,
    out_pos: torch.Tensor, g: int, centered: bool, dtype: torch.dtype,
) -> torch.Tensor:
    """Fused unpack+dequantize (+ outliers written back): x_hat [M, G] in ``dtype``.

    bf16 is written as fp32 and cast by torch (the Triton interpreter does not round to bf16
    the way the GPU and torch do); fp16 and fp32 are stored directly.
    """
    kdt = dtype if dtype in (torch.float16, torch.float32) else torch.float32
    out = torch.empty(bits.shape[0], g, dtype=kdt, device=data.device)
    out = _unpack(data, bits, g, out, scale, zero, out_val, out_pos, centered)
    return out if kdt == dtype else out.to(dtype)
