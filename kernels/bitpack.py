"""Triton kernels: quantize+pack and unpack+dequantize at per-group widths (bit-planar layout).

The torch twin and the layout are in ``ecc_kv.bitpack`` / ``ecc_kv.uniform_quant``; these
kernels reproduce them bit for bit. Group ``m`` (``G`` values) owns ``bits[m]`` planes of
``PB = ceil(G / 8)`` bytes at byte offset ``PB * sum_{i<m} bits[i]``.

One fused launch per call (after a width-sum launch when widths vary). A program handles
``BLOCK_M`` consecutive groups (a *tile*) and works on plane *units* of ``UNIT`` bytes (4 when
``PB % 4 == 0``, else 2 or 1): a unit of plane ``p`` holds bit ``p`` of ``8 * UNIT`` codes, so
the 8 units of planes 0..7 are an 8x8 bit matrix per byte lane, transposed with 3 swap stages
of word ops (no per-bit work). Units are loaded and stored whole (32-bit words when ``UNIT = 4``, a group's planes are contiguous), only for the
planes a group has.

Offsets (the prefix sum of the widths) are found on the device without a host round trip, a
serial chain or a zeroed workspace: a small width-sum launch first, see ``kernels.bitpack_offsets``.

Bit-exactness: the same fp32 operations as the twin (correctly rounded division, ``floor(v +
0.5)``, scales rounded up to fp16, first-index argmax/argmin for outliers, outlier values read
back from x as the twin gathers them). Codes are ``floor(clip(t))`` moved into an integer by
adding 1.5 * 2^23 (exact for |t| < 2^22);
dequantization ors the code into the bits of 2^23 (no int-to-float conversion);
``(code - c0) * scale + zero`` has an exact product, so a fused multiply-add rounds the same
as the twin's separate multiply and add. Pack tiles are ``[PU2, BLOCK_M, 8]`` per byte lane of
a unit (units on the first axis): the 8 values of a lane are one 16-byte load per thread, and
Triton puts a row's units in one warp, so row reductions are warp shuffles (no shared memory,
no barriers) and a thread holds whole units for the transpose. One outlier per tail (1% at
G = 128) takes one pass: the two largest and two smallest values of each row (multiset
reductions), then the first column of the largest and of the smallest.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.bitpack_offsets import (
    TUNING,
    block_m,
    launch_width_sums,
    new_workspace,
    packed_size,
    tile_first,
    tile_rows,
    unit,
    workspace_bytes,
)
from kernels.tiles import split8

__all__ = ["TUNING", "packed_size", "workspace_bytes", "quantize_pack_triton", "quantize_groups_triton",
           "pack_codes_triton", "unpack_codes_triton", "unpack_dequantize_triton"]

_FP16_MAX = tl.constexpr(65504.0)
_MAGIC = tl.constexpr(8388608.0)  # 2^23: x + 2^23 has x's integer part in its low mantissa bits
_MAGIC_BITS = tl.constexpr(0x4B000000)  # bits of 2^23 as fp32
_RMAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: t + _RMAGIC rounds t to an integer for |t| < 2^22

@triton.jit
def _round_up_fp16(s32):
    s32 = tl.minimum(s32, _FP16_MAX)
    s16 = s32.to(tl.float16)
    down = s16.to(tl.float32) < s32
    bumped = (s16.to(tl.int16, bitcast=True) + 1).to(tl.float16, bitcast=True)
    return tl.where(down, bumped, s16)


@triton.jit
def _swap(a, b, D: tl.constexpr, MASK: tl.constexpr):
    """One stage of the 8x8 transpose: a's bits k (k & D) <-> b's bits k - D, in every byte lane."""
    t = ((a >> D) ^ b) & MASK
    return a ^ (t << D), b ^ t


@triton.jit
def _transpose8(w0, w1, w2, w3, w4, w5, w6, w7):
    """8 words, bit k of byte j of word p -> bit p of byte j of word k (every byte lane at once)."""
    w0, w4 = _swap(w0, w4, 4, 0x0F0F0F0F)
    w1, w5 = _swap(w1, w5, 4, 0x0F0F0F0F)
    w2, w6 = _swap(w2, w6, 4, 0x0F0F0F0F)
    w3, w7 = _swap(w3, w7, 4, 0x0F0F0F0F)
    w0, w2 = _swap(w0, w2, 2, 0x33333333)
    w1, w3 = _swap(w1, w3, 2, 0x33333333)
    w4, w6 = _swap(w4, w6, 2, 0x33333333)
    w5, w7 = _swap(w5, w7, 2, 0x33333333)
    w0, w1 = _swap(w0, w1, 1, 0x55555555)
    w2, w3 = _swap(w2, w3, 1, 0x55555555)
    w4, w5 = _swap(w4, w5, 1, 0x55555555)
    w6, w7 = _swap(w6, w7, 1, 0x55555555)
    return w0, w1, w2, w3, w4, w5, w6, w7


@triton.jit
def _join8(v0, v1, v2, v3, v4, v5, v6, v7, BLOCK_M: tl.constexpr, G2: tl.constexpr):
    """Inverse of ``_split8``: 8 tensors [BM, PU2, UNIT] -> [BM, G2]."""
    a = tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))
    return tl.reshape(a, (BLOCK_M, G2))


@triton.jit
def _unit_to_bytes(w, UNIT: tl.constexpr):
    """[BM, PU2] int32 -> [BM, PU2, UNIT]: byte j, or'ed into the bits of 2^23 (fp32 2^23 + byte)."""
    j = tl.arange(0, UNIT)
    return ((w[:, :, None] >> (8 * j)[None, None, :]) & 255) | _MAGIC_BITS


@triton.jit
def _store_plane(data_ptr, off, msk, b2, P: tl.constexpr, val, PU: tl.constexpr):
    """Plane P's units [PU2, BM] of every row that has it (``off``/``msk``: plane 0's unit offsets and mask)."""
    tl.store(data_ptr + off + P * PU, val.to(data_ptr.dtype.element_ty), mask=msk & (P < b2))


@triton.jit
def _load_plane(data_ptr, off, msk, b2, P: tl.constexpr, UNIT: tl.constexpr, PU: tl.constexpr):
    """Plane P's units [BM, PU2] (0 where a row has no plane P); ``off``/``msk``: plane 0's unit offsets and mask."""
    w = tl.load(data_ptr + off + P * PU, mask=msk & (P < b2), other=0).to(tl.int32)
    if UNIT == 2:
        w = w & 0xFFFF  # int16 units sign-extend
    return w


@triton.jit
def _lane(x_ptr, rows64, rmask, q, k, J: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr):
    """Byte lane J of every plane unit: values 8 * (UNIT * q + J) + k, as [PU2, BM, 8] (8 contiguous per thread)."""
    col = q[:, None, None] * (8 * UNIT) + 8 * J + k[None, None, :]  # [PU2, 1, 8]
    msk = rmask[None, :, None] & (col < G) & (J < UNIT)
    return tl.load(x_ptr + rows64[None, :, None] * G + col, mask=msk, other=0), msk, col


@triton.jit
def _quant(x, zero, inv, lo, hi, c0, SYMMETRIC: tl.constexpr):
    """Codes of [PU2, BM, 8] values, floor(clip((x - zero) * inv + 0.5, -c0, L-1-c0)) + c0 as the twin, in the low
    byte of the int32 returned (the bits of 1.5 * 2^23 + code: the byte is the code's, higher bits are not).

    Row parameters are [1, BM, 1]. The lower clip acts even without outliers: the fp16 zero point can lie
    above the group's min when the spread is far below the values' fp16 spacing.
    """
    t = (x - zero) * inv + 0.5
    t = tl.maximum(tl.minimum(t, hi), lo)
    r = tl.floor(t) + _RMAGIC  # exact: an integer below 2^22 in the low mantissa bits of 1.5 * 2^23
    if SYMMETRIC:
        r = r + c0
    return r.to(tl.int32, bitcast=True)


@triton.jit
def _row_max(v):
    """[PU2, BM, 8] -> [1, BM, 1]: in-thread over the 8 values, then over the row's units (warp shuffles)."""
    return tl.max(tl.max(v, axis=2, keep_dims=True), axis=0, keep_dims=True)


@triton.jit
def _row_min(v):
    return tl.min(tl.min(v, axis=2, keep_dims=True), axis=0, keep_dims=True)


@triton.jit
def _max_min(x, msk, CHECK: tl.constexpr):
    """Row max and min [1, BM, 1] of [PU2, BM, 8] values (only where ``msk`` when CHECK)."""
    if CHECK:
        return _row_max(tl.where(msk, x, float("-inf"))), _row_min(tl.where(msk, x, float("inf")))
    return _row_max(x), _row_min(x)


@triton.jit
def _top2(a1, a2, b1, b2):
    """Largest and second largest of the multiset union of (a1 >= a2) and (b1 >= b2)."""
    return tl.maximum(a1, b1), tl.maximum(tl.minimum(a1, b1), tl.maximum(a2, b2))


@triton.jit
def _bot2(a1, a2, b1, b2):
    """Smallest and second smallest of the multiset union of (a1 <= a2) and (b1 <= b2)."""
    return tl.minimum(a1, b1), tl.minimum(tl.maximum(a1, b1), tl.minimum(a2, b2))


@triton.jit
def _lane_top2_bot2(x, msk, PAD: tl.constexpr):
    """Per row [1, BM, 1]: the two largest and the two smallest values of a lane (multisets)."""
    xa = tl.where(msk, x, float("-inf")) if PAD else x
    xb = tl.where(msk, x, float("inf")) if PAD else x
    a1, a2 = tl.reduce((xa, tl.full(xa.shape, float("-inf"), tl.float32)), 2, _top2, keep_dims=True)
    a1, a2 = tl.reduce((a1, a2), 0, _top2, keep_dims=True)
    b1, b2 = tl.reduce((xb, tl.full(xb.shape, float("inf"), tl.float32)), 2, _bot2, keep_dims=True)
    b1, b2 = tl.reduce((b1, b2), 0, _bot2, keep_dims=True)
    return a1, a2, b1, b2


@triton.jit
def _first(x, e3, msk, col, CHECK: tl.constexpr):
    """Lowest column [1, BM, 1] of a value equal to the row's extreme e3 [1, BM, 1] (among ``msk`` when CHECK)."""
    hit = (x == e3) & msk if CHECK else x == e3
    return _row_min(tl.where(hit, col, 1 << 30))


@triton.jit
def _pack_kernel(
    x_ptr, bits_ptr, ws_ptr, data_ptr, scale_ptr, zero_ptr, oval_ptr, opos_ptr, M, NPR, NB,
    G: tl.constexpr, UNIT: tl.constexpr, FIXED: tl.constexpr, LO: tl.constexpr, FROM_X: tl.constexpr,
    SYMMETRIC: tl.constexpr, K_TAIL: tl.constexpr, BLOCK_M: tl.constexpr, TPB: tl.constexpr, SUMS: tl.constexpr,
):
    PU: tl.constexpr = (G + 8 * UNIT - 1) // (8 * UNIT)  # units per plane
    PU2: tl.constexpr = triton.next_power_of_2(PU)
    tile = tl.program_id(0)
    rows, b = tile_rows(bits_ptr, tile, M, NPR, FIXED, LO, BLOCK_M)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    q = tl.arange(0, PU2)
    k = tl.arange(0, 8)
    r3 = rows[None, :, None]  # per-row values stay [1, BM, 1] in the tile's layout
    rm3 = r3 < M
    b3 = b[None, :, None]
    # four byte lanes (only UNIT of them real): every thread holds whole plane units; loads before the offsets
    x0, m0, col0 = _lane(x_ptr, rows64, rmask, q, k, 0, G, UNIT)
    x1, m1, col1 = _lane(x_ptr, rows64, rmask, q, k, 1, G, UNIT)
    x2, m2, col2 = _lane(x_ptr, rows64, rmask, q, k, 2, G, UNIT)
    x3, m3, col3 = _lane(x_ptr, rows64, rmask, q, k, 3, G, UNIT)
    first = tile_first(ws_ptr, tile, rows, b, NB, FIXED, TPB, SUMS)  # its loads overlap the data loads
    if FROM_X:
        x0, x1, x2, x3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        PAD: tl.constexpr = (G % (32 * UNIT) != 0) or (UNIT < 4)  # some lanes hold padding
        CHECK: tl.constexpr = PAD or (K_TAIL > 1)
        if K_TAIL == 1:  # one per tail in one pass: the two largest and two smallest values of each row
            a1, a2, b1, b2 = _lane_top2_bot2(x0, m0, PAD)
            c1, c2, d1, d2 = _lane_top2_bot2(x1, m1, PAD)
            a1, a2 = _top2(a1, a2, c1, c2)
            b1, b2 = _bot2(b1, b2, d1, d2)
            c1, c2, d1, d2 = _lane_top2_bot2(x2, m2, PAD)
            a1, a2 = _top2(a1, a2, c1, c2)
            b1, b2 = _bot2(b1, b2, d1, d2)
            c1, c2, d1, d2 = _lane_top2_bot2(x3, m3, PAD)
            top, mx = _top2(a1, a2, c1, c2)  # [1, BM, 1]
            bot, mn = _bot2(b1, b2, d1, d2)
            # the max (first index) and the min of the rest are the outliers; without them (G >= 3) the
            # inliers' max is the second largest and their min the second smallest (see docs/qaq.md)
            j_top = tl.minimum(tl.minimum(_first(x0, top, m0, col0, PAD), _first(x1, top, m1, col1, PAD)),
                               tl.minimum(_first(x2, top, m2, col2, PAD), _first(x3, top, m3, col3, PAD)))
            j_bot = tl.minimum(tl.minimum(_first(x0, bot, m0, col0, PAD), _first(x1, bot, m1, col1, PAD)),
                               tl.minimum(_first(x2, bot, m2, col2, PAD), _first(x3, bot, m3, col3, PAD)))
            j_bot = tl.where(top == bot, 1, j_bot)  # all equal: the max took column 0, the min is column 1
            tl.store(opos_ptr + r3 * 2, j_top.to(opos_ptr.dtype.element_ty), mask=rm3)
            tl.store(opos_ptr + r3 * 2 + 1, j_bot.to(opos_ptr.dtype.element_ty), mask=rm3)
            # the stored values are read back from x (the twin gathers them: a -0.0 stays -0.0)
            v_top = tl.load(x_ptr + r3.to(tl.int64) * G + j_top, mask=rm3, other=0.0)
            v_bot = tl.load(x_ptr + r3.to(tl.int64) * G + j_bot, mask=rm3, other=0.0)
            tl.store(oval_ptr + r3 * 2, v_top.to(tl.float16), mask=rm3)
            tl.store(oval_ptr + r3 * 2 + 1, v_bot.to(tl.float16), mask=rm3)
        else:
            if K_TAIL > 1:  # K_TAIL largest, then K_TAIL smallest; first index on ties; taken = not an inlier
                t0, t1, t2, t3 = ~m0, ~m1, ~m2, ~m3
                for t in tl.static_range(2 * K_TAIL):
                    if t < K_TAIL:
                        ext = tl.maximum(tl.maximum(_max_min(x0, ~t0, True)[0], _max_min(x1, ~t1, True)[0]),
                                         tl.maximum(_max_min(x2, ~t2, True)[0], _max_min(x3, ~t3, True)[0]))
                    else:
                        ext = tl.minimum(tl.minimum(_max_min(x0, ~t0, True)[1], _max_min(x1, ~t1, True)[1]),
                                         tl.minimum(_max_min(x2, ~t2, True)[1], _max_min(x3, ~t3, True)[1]))
                    idx = tl.minimum(
                        tl.minimum(_first(x0, ext, ~t0, col0, True), _first(x1, ext, ~t1, col1, True)),
                        tl.minimum(_first(x2, ext, ~t2, col2, True), _first(x3, ext, ~t3, col3, True)))  # [1, BM, 1]
                    t0, t1, t2, t3 = t0 | (col0 == idx), t1 | (col1 == idx), t2 | (col2 == idx), t3 | (col3 == idx)
                    tl.store(opos_ptr + r3 * (2 * K_TAIL) + t, idx.to(opos_ptr.dtype.element_ty), mask=rm3)
                    v = tl.load(x_ptr + r3.to(tl.int64) * G + idx, mask=rm3, other=0.0)
                    tl.store(oval_ptr + r3 * (2 * K_TAIL) + t, v.to(tl.float16), mask=rm3)
                m0, m1, m2, m3 = ~t0, ~t1, ~t2, ~t3
            a0, i0 = _max_min(x0, m0, CHECK)
            a1, i1 = _max_min(x1, m1, CHECK)
            a2, i2 = _max_min(x2, m2, CHECK)
            a3, i3_ = _max_min(x3, m3, CHECK)
            mx = tl.maximum(tl.maximum(a0, a1), tl.maximum(a2, a3))  # [1, BM, 1]
            mn = tl.minimum(tl.minimum(i0, i1), tl.minimum(i2, i3_))
        levels = (1 << b3).to(tl.float32)
        if SYMMETRIC:
            amax = tl.maximum(tl.abs(mx), tl.abs(mn))
            scale = _round_up_fp16(tl.math.div_rn(amax, levels * 0.5 - 1.0))
            zero = tl.zeros_like(scale)
            c0 = levels * 0.5
        else:
            scale = _round_up_fp16(tl.math.div_rn(mx - mn, levels - 1.0))
            zero = mn.to(tl.float16)
            c0 = tl.zeros_like(levels)
        tl.store(scale_ptr + r3, scale, mask=rm3)
        tl.store(zero_ptr + r3, zero, mask=rm3)
        s = scale.to(tl.float32)
        inv = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), tl.where(s > 0, s, 1.0))  # [1, BM, 1]
        # codes = clip(floor(t), -c0, L-1-c0) + c0 = floor(clip(t, -c0, L-1-c0)) + c0; a zero scale gives c0
        lo = tl.where(s > 0, -c0, 0.0)
        hi = tl.where(s > 0, levels - 1.0 - c0, 0.0)
        z = zero.to(tl.float32)
        q0 = _quant(x0, z, inv, lo, hi, c0, SYMMETRIC) & 255
        q1 = _quant(x1, z, inv, lo, hi, c0, SYMMETRIC) & 255
        q2 = _quant(x2, z, inv, lo, hi, c0, SYMMETRIC) & 255
        w = q0 | (q1 << 8) | (q2 << 16) | (_quant(x3, z, inv, lo, hi, c0, SYMMETRIC) << 24)
    else:
        w = x0.to(tl.int32) | (x1.to(tl.int32) << 8) | (x2.to(tl.int32) << 16) | (x3.to(tl.int32) << 24)
    # w [PU2, BM, 8]: element k is word k (code (q, j, k) in byte j); transposed, word p holds plane p
    w0, w1, w2, w3, w4, w5, w6, w7 = split8(w)
    p0, p1, p2, p3, p4, p5, p6, p7 = _transpose8(w0, w1, w2, w3, w4, w5, w6, w7)  # [PU2, BM]
    if G % (8 * UNIT) != 0:  # values past G in the last unit are padding: code 0, as in the twin
        n_valid = tl.minimum(tl.maximum(G - 8 * UNIT * q, 0), 8 * UNIT)  # bit 8j+k of a unit is its value 8j+k
        keep = tl.where(n_valid >= 32, -1, (1 << tl.minimum(n_valid, 31)) - 1)[:, None]  # [PU2, 1]
        p0, p1, p2, p3 = p0 & keep, p1 & keep, p2 & keep, p3 & keep
        p4, p5, p6, p7 = p4 & keep, p5 & keep, p6 & keep, p7 & keep
    off = (first * PU)[None, :] + q[:, None]  # [PU2, BM] int64, built once in the store layout
    smsk = rmask[None, :] & (q < PU)[:, None]
    b2 = b[None, :]
    _store_plane(data_ptr, off, smsk, b2, 0, p0, PU)
    _store_plane(data_ptr, off, smsk, b2, 1, p1, PU)
    _store_plane(data_ptr, off, smsk, b2, 2, p2, PU)
    _store_plane(data_ptr, off, smsk, b2, 3, p3, PU)
    _store_plane(data_ptr, off, smsk, b2, 4, p4, PU)
    _store_plane(data_ptr, off, smsk, b2, 5, p5, PU)
    _store_plane(data_ptr, off, smsk, b2, 6, p6, PU)
    _store_plane(data_ptr, off, smsk, b2, 7, p7, PU)


@triton.jit
def _unpack_kernel(
    data_ptr, bits_ptr, ws_ptr, scale_ptr, zero_ptr, oval_ptr, opos_ptr, out_ptr, M, NPR, NB,
    G: tl.constexpr, UNIT: tl.constexpr, FIXED: tl.constexpr, TO_X: tl.constexpr, CENTERED: tl.constexpr,
    HAS_ZERO: tl.constexpr, N_OUT: tl.constexpr, BLOCK_M: tl.constexpr, TPB: tl.constexpr, SUMS: tl.constexpr,
):
    PU: tl.constexpr = (G + 8 * UNIT - 1) // (8 * UNIT)
    PU2: tl.constexpr = triton.next_power_of_2(PU)
    G2: tl.constexpr = PU2 * 8 * UNIT
    tile = tl.program_id(0)
    rows, b = tile_rows(bits_ptr, tile, M, NPR, FIXED, 1, BLOCK_M)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    if TO_X:  # issued before the offsets
        s = tl.load(scale_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        if HAS_ZERO:
            z = tl.load(zero_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        else:
            z = tl.zeros_like(s)
    first = tile_first(ws_ptr, tile, rows, b, NB, FIXED, TPB, SUMS)
    q = tl.arange(0, PU2)
    off = (first * PU)[:, None] + q[None, :]  # [BM, PU2] int64, built once in the load layout
    lmsk = rmask[:, None] & (q < PU)[None, :]
    b2 = b[:, None]
    w0 = _load_plane(data_ptr, off, lmsk, b2, 0, UNIT, PU)  # [BM, PU2]
    w1 = _load_plane(data_ptr, off, lmsk, b2, 1, UNIT, PU)
    w2 = _load_plane(data_ptr, off, lmsk, b2, 2, UNIT, PU)
    w3 = _load_plane(data_ptr, off, lmsk, b2, 3, UNIT, PU)
    w4 = _load_plane(data_ptr, off, lmsk, b2, 4, UNIT, PU)
    w5 = _load_plane(data_ptr, off, lmsk, b2, 5, UNIT, PU)
    w6 = _load_plane(data_ptr, off, lmsk, b2, 6, UNIT, PU)
    w7 = _load_plane(data_ptr, off, lmsk, b2, 7, UNIT, PU)
    w0, w1, w2, w3, w4, w5, w6, w7 = _transpose8(w0, w1, w2, w3, w4, w5, w6, w7)  # word k: code (q, j, k) in byte j
    mag = _join8(_unit_to_bytes(w0, UNIT), _unit_to_bytes(w1, UNIT), _unit_to_bytes(w2, UNIT),
                 _unit_to_bytes(w3, UNIT), _unit_to_bytes(w4, UNIT), _unit_to_bytes(w5, UNIT),
                 _unit_to_bytes(w6, UNIT), _unit_to_bytes(w7, UNIT), BLOCK_M, G2)  # [BM, G2] bits of 2^23 + code
    col = tl.arange(0, G2)
    valid = rmask[:, None] & (col < G)[None, :]
    ptr = rows64[:, None] * G + col[None, :]
    if TO_X:
        if CENTERED:
            base = ((1 << b) // 2).to(tl.float32) + _MAGIC
        else:
            base = tl.full((BLOCK_M,), _MAGIC, tl.float32)
        x = (mag.to(tl.float32, bitcast=True) - base[:, None]) * s[:, None] + z[:, None]  # (code - c0) exact
        tl.store(out_ptr + ptr, x.to(out_ptr.dtype.element_ty), mask=valid)
        if N_OUT > 0:
            tl.debug_barrier()  # the tile's stores above come first; outliers overwrite them
            for i in tl.static_range(N_OUT):
                pos = tl.load(opos_ptr + rows64 * N_OUT + i, mask=rmask, other=0).to(tl.int64)
                val = tl.load(oval_ptr + rows64 * N_OUT + i, mask=rmask, other=0.0)
                tl.store(out_ptr + rows64 * G + pos, val.to(out_ptr.dtype.element_ty), mask=rmask)
    else:
        tl.store(out_ptr + ptr, (mag & 255).to(tl.uint8), mask=valid)


# ----------------------------------------------------------------------------- launchers

def _units(buf: torch.Tensor, g: int) -> torch.Tensor:
    u = unit(g)
    return buf.view(torch.int32) if u == 4 else buf.view(torch.int16) if u == 2 else buf


def _bits_args(bits: torch.Tensor | int) -> tuple[torch.Tensor | None, int]:
    if isinstance(bits, int):
        return None, bits
    return bits.contiguous(), 0


def quantize_pack_triton(
    xg: torch.Tensor, bits: torch.Tensor | int, symmetric: bool, k_tail: int, n_per_row: int = 1,
    total_bytes: int | None = None, pos_dtype: torch.dtype = torch.int16, write_widths: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Fused quantize+pack of groups xg [M, G] at widths ``bits`` (int, or a tensor [M / n_per_row] of any int dtype).

    No host sync: with per-token widths two launches (width sums, then the fused kernel), with an
    int one. ``total_bytes`` (sum of widths * PB, when the caller knows it) sizes ``data``
    exactly; otherwise ``data`` is a worst-case buffer (8 planes per group) and ``ws`` holds the
    device-side total (``packed_size``). Returns a dict: data, ws (or None), scale, zero,
    out_val, out_pos, widths (uint8 per token when ``write_widths``).
    """
    xg = xg.contiguous()
    m, g = xg.shape
    pb = (g + 7) // 8
    lo = 2 if symmetric else 1
    dev = xg.device
    bt, fixed = _bits_args(bits)
    if fixed and not lo <= fixed <= 8:
        raise ValueError(f"bits={fixed} must lie in {lo}..8")
    if fixed:
        total_bytes = m * fixed * pb
    # every allocation first: the two launches then leave the host back to back
    data = torch.empty(total_bytes if total_bytes is not None else m * 8 * pb, dtype=torch.uint8, device=dev)
    ws, tpb, nb = (None, 1, 0) if fixed else new_workspace(dev, m, g)
    out = {
        "data": data, "ws": ws,
        "scale": torch.empty(m, dtype=torch.float16, device=dev),
        "zero": torch.empty(m, dtype=torch.float16, device=dev),
        "out_val": torch.empty(m, 2 * k_tail, dtype=torch.float16, device=dev),
        "out_pos": torch.empty(m, 2 * k_tail, dtype=pos_dtype, device=dev),
        "widths": torch.empty(m // n_per_row if write_widths else 0, dtype=torch.uint8, device=dev),
    }
    units = _units(data, g)
    if m:
        src = bt
        if not fixed:
            launch_width_sums(bt, ws, m, g, n_per_row, lo, out["widths"] if write_widths else None)
            src = out["widths"] if write_widths else bt  # the uint8 copy the first launch wrote (read from L2)
        _pack_kernel[(triton.cdiv(m, block_m(g, m)),)](
            xg, src if src is not None else data, ws if ws is not None else data, units,
            out["scale"], out["zero"], out["out_val"], out["out_pos"], m, n_per_row, nb,
            G=g, UNIT=unit(g), FIXED=fixed, LO=lo, FROM_X=True, SYMMETRIC=symmetric, K_TAIL=k_tail,
            BLOCK_M=block_m(g, m), TPB=tpb, SUMS=TUNING["sums_step"], num_warps=TUNING["num_warps"],
            enable_fp_fusion=False,  # (x - zero) * inv + 0.5 rounded step by step, as in the torch twin
        )
    return out


def _exact(res: dict[str, torch.Tensor | None], g: int, lo: int) -> torch.Tensor:
    data = res["data"]
    return data if res["ws"] is None else data[: packed_size(res["ws"], g, lo)]


def quantize_groups_triton(
    xg: torch.Tensor, bits: torch.Tensor, symmetric: bool, k_tail: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize groups (codes unpacked): fused quantize+pack, then unpack of the codes."""
    res = quantize_pack_triton(xg, bits, symmetric, k_tail)
    data = _exact(res, xg.shape[1], 2 if symmetric else 1)
    codes = unpack_codes_triton(data, bits, xg.shape[1])
    return codes, res["scale"], res["zero"], res["out_val"], res["out_pos"]


def pack_codes_triton(codes: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Pack codes uint8 [M, G] at widths [M] into the planar byte stream (exact size: one host read)."""
    codes = codes.contiguous()
    bits = bits.contiguous()
    m, g = codes.shape
    data = torch.empty(m * 8 * ((g + 7) // 8), dtype=torch.uint8, device=codes.device)
    if not m:
        return data[:0]
    ws, tpb, nb = new_workspace(codes.device, m, g)
    launch_width_sums(bits, ws, m, g, 1, 1, None)
    _pack_kernel[(triton.cdiv(m, block_m(g, m)),)](
        codes, bits, ws, _units(data, g), data, data, data, data, m, 1, nb,
        G=g, UNIT=unit(g), FIXED=0, LO=1, FROM_X=False, SYMMETRIC=False, K_TAIL=0,
        BLOCK_M=block_m(g, m), TPB=tpb, SUMS=TUNING["sums_step"], num_warps=TUNING["num_warps"],
    )
    return data[: packed_size(ws, g, 1)]


def _unpack(data: torch.Tensor, bits: torch.Tensor | int, m: int, g: int, n_per_row: int, out: torch.Tensor,
            scale: torch.Tensor | None, zero: torch.Tensor | None, out_val: torch.Tensor | None,
            out_pos: torch.Tensor | None, centered: bool) -> torch.Tensor:
    if m:
        bt, fixed = _bits_args(bits)
        ws, tpb, nb = (None, 1, 0) if fixed else new_workspace(data.device, m, g)
        to_x = scale is not None
        n_out = out_val.shape[1] if to_x and out_val is not None else 0
        dummy = out
        args = (_units(data, g), bt if bt is not None else dummy, ws if ws is not None else dummy,
                scale if to_x else dummy, zero if to_x and zero is not None else dummy,
                out_val.contiguous() if n_out else dummy, out_pos.contiguous() if n_out else dummy, out,
                m, n_per_row, nb)
        if not fixed:
            launch_width_sums(bt, ws, m, g, n_per_row, 1, None)
        _unpack_kernel[(triton.cdiv(m, block_m(g, m)),)](
            *args, G=g, UNIT=unit(g), FIXED=fixed, TO_X=to_x, CENTERED=centered, HAS_ZERO=zero is not None,
            N_OUT=n_out, BLOCK_M=block_m(g, m), TPB=tpb, SUMS=TUNING["sums_step"], num_warps=TUNING["num_warps"],
        )
    return out


def unpack_codes_triton(data: torch.Tensor, bits: torch.Tensor, g: int) -> torch.Tensor:
    """Inverse of ``pack_codes_triton``: codes uint8 [M, G] from per-group widths [M]."""
    m = bits.shape[0]
    out = torch.empty(m, g, dtype=torch.uint8, device=data.device)
    return _unpack(data, bits, m, g, 1, out, None, None, None, None, False)


def unpack_dequantize_triton(
    data: torch.Tensor, bits: torch.Tensor | int, scale: torch.Tensor, zero: torch.Tensor | None, out_val: torch.Tensor,
    out_pos: torch.Tensor, g: int, centered: bool, dtype: torch.dtype, n_per_row: int = 1,
) -> torch.Tensor:
    """Fused unpack+dequantize (+ outliers written back): x_hat [M, G] in ``dtype``.

    One launch, two with per-token widths (width sums first), no host sync. ``bits``: one int, or widths per token [M / n_per_row] (any int dtype); ``zero`` None: 0. bf16 is written as
    fp32 and cast by torch (the Triton interpreter does not round to bf16 the way the GPU and
    torch do); fp16 and fp32 are stored directly.
    """
    m = scale.shape[0]
    kdt = dtype if dtype in (torch.float16, torch.float32) else torch.float32
    out = torch.empty(m, g, dtype=kdt, device=data.device)
    out = _unpack(data, bits, m, g, n_per_row, out, scale, zero, out_val, out_pos, centered)
    return out if kdt == dtype else out.to(dtype)
