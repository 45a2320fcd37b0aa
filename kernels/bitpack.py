"""Triton kernels: quantize+pack and unpack+dequantize at per-group widths (bit-planar layout).

The torch twin and the layout are in ``ecc_kv.bitpack`` / ``ecc_kv.uniform_quant``; these
kernels reproduce them bit for bit. Group ``m`` (``G`` values) owns ``bits[m]`` planes of
``PB = ceil(G / 8)`` bytes at byte offset ``PB * sum_{i<m} bits[i]``.

One launch per call. A program handles ``BLOCK_M`` consecutive groups (a *tile*) and works on
plane *units* of ``UNIT`` bytes (4 when ``PB % 4 == 0``, else 2 or 1): a unit of plane ``p``
holds bit ``p`` of ``8 * UNIT`` codes, so the 8 units of planes 0..7 are an 8x8 bit matrix per
byte lane, transposed with 3 swap stages of word ops (no per-bit work). Units are loaded and
stored whole (32-bit words when ``UNIT = 4``, a group's planes are contiguous), only for the
planes a group has.

Offsets without a host round trip: a tile's byte offset is the sum of the widths of all tiles
before it, found by *decoupled look-back* (Merrill and Garland, 2016): each program takes a
ticket (an atomic counter, so tiles start in order and the look-back cannot deadlock),
publishes its tile's width sum, then sums its predecessors' published values (32 per step)
back to the nearest one that already holds its inclusive prefix, and publishes its own
inclusive prefix. The workspace ``ws`` (int64, zeroed per call) holds ``[ticket, bad-width
count, status of tile 0, ...]``; the last status is the total, so the host learns the packed
size only when it asks (``packed_size``), one read that also reports invalid widths (their
planes are clamped to 1..8 in the kernel, so nothing is written out of bounds).

Bit-exactness: the same fp32 operations as the twin (correctly rounded division, ``floor(v +
0.5)``, scales rounded up to fp16, first-index argmax/argmin for outliers). Codes are
``floor(clip(t))`` moved into an integer by adding 1.5 * 2^23 (exact for |t| < 2^22);
dequantization ors the code into the bits of 2^23 (no int-to-float conversion);
``(code - c0) * scale + zero`` has an exact product, so a fused multiply-add rounds the same
as the twin's separate multiply and add. Pack tiles are ``[BLOCK_M, PU2, 8]`` per byte lane of
a unit, so a thread holds whole units (no shuffles) and row values stay in the tile's layout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_FP16_MAX = tl.constexpr(65504.0)
_MAGIC = tl.constexpr(8388608.0)  # 2^23: x + 2^23 has x's integer part in its low mantissa bits
_MAGIC_BITS = tl.constexpr(0x4B000000)  # bits of 2^23 as fp32
_RMAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: t + _RMAGIC rounds t to an integer for |t| < 2^22
_FLAG_INC = tl.constexpr(2 << 32)  # status word (flag << 32 | sum): 1 tile sum published, 2 inclusive prefix
_LOOKBACK = tl.constexpr(32)  # predecessors read per look-back step (one warp's worth: no block-wide reductions)

# Launch shape (H100 sweep, 16M and 256M values: 4096 values a program best at 16M, 8192 at 256M; 4 warps).
TUNING: dict[str, int] = {"values_per_program": 4096, "big_values": 1 << 26, "num_warps": 4}


@triton.jit
def _round_up_fp16(s32):
    s32 = tl.minimum(s32, _FP16_MAX)
    s16 = s32.to(tl.float16)
    down = s16.to(tl.float32) < s32
    bumped = (s16.to(tl.int16, bitcast=True) + 1).to(tl.float16, bitcast=True)
    return tl.where(down, bumped, s16)


@triton.jit
def _lookback(ws_ptr, tile, agg):
    """Sum of the widths of all tiles before ``tile`` (decoupled look-back; see the module docstring).

    The tile's own sum ``agg`` was published by ``_tile_setup``; this publishes its inclusive prefix.
    """
    st_ptr = ws_ptr + 2
    d = tl.arange(0, _LOOKBACK)
    acc = agg.to(tl.int64) * 0
    base = tile - 1
    go = tile > 0
    while go:
        idx = base - d
        st = tl.load(st_ptr + idx, mask=idx >= 0, other=_FLAG_INC, volatile=True)  # [W] int64
        flag = st >> 32
        first_inc = tl.min(tl.where(flag == 2, d, _LOOKBACK))
        first_zero = tl.min(tl.where(flag == 0, d, _LOOKBACK))
        ready = first_zero >= first_inc  # everything up to the nearest inclusive entry is published
        part = tl.sum(tl.where(d <= first_inc, st & 0xFFFFFFFF, 0))
        acc += tl.where(ready, part, 0)
        base -= tl.where(ready, _LOOKBACK, 0)
        go = (~ready) | (first_inc == _LOOKBACK)
    tl.atomic_xchg(st_ptr + tile, (acc + agg.to(tl.int64)) | _FLAG_INC, sem="relaxed")
    return acc


@triton.jit
def _tile_setup(bits_ptr, ws_ptr, M, NPR, FIXED: tl.constexpr, LO: tl.constexpr, BLOCK_M: tl.constexpr):
    """Tile index, rows and widths (``b`` clamped to LO..8 for memory safety, ``braw`` as given).

    With per-row widths this takes a ticket (the tile index) and publishes the tile's width sum.
    """
    if FIXED > 0:
        tile = tl.program_id(0)
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
        b = tl.full((BLOCK_M,), FIXED, tl.int32)
        braw = b
    else:
        tile = tl.atomic_add(ws_ptr, 1, sem="relaxed").to(tl.int32)  # ticket: tiles start in order, no deadlock
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        braw = tl.load(bits_ptr + rows // NPR, mask=rows < M, other=LO).to(tl.int32)
        bad = tl.sum(((braw < LO) | (braw > 8)).to(tl.int32))
        tl.atomic_add(ws_ptr + 1, bad.to(tl.int64), mask=bad > 0, sem="relaxed")
        b = tl.minimum(tl.maximum(braw, LO), 8)
        b = tl.where(rows < M, b, 0)
        agg = tl.sum(b).to(tl.int64)
        tl.atomic_xchg(ws_ptr + 2 + tile, (((tile == 0).to(tl.int64) + 1) << 32) | agg, sem="relaxed")  # 0: inclusive
    return tile, rows, b, braw


@triton.jit
def _tile_first(ws_ptr, tile, rows, b, FIXED: tl.constexpr):
    """Plane index [BM] (int64) of each row's first plane: fixed stride, or the look-back prefix plus the tile's own."""
    if FIXED > 0:  # one return: the compiler would still build the look-back after an early one
        first = rows.to(tl.int64) * FIXED
    else:
        first = _lookback(ws_ptr, tile, tl.sum(b)) + (tl.cumsum(b, 0) - b).to(tl.int64)
    return first


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
def _store_plane(data_ptr, first, b, rows, q, P, val, M, PU: tl.constexpr, PU2: tl.constexpr):
    msk = ((rows < M) & (P < b))[:, None] & (q < PU)[None, :]
    tl.store(data_ptr + (first * PU + P * PU)[:, None] + q[None, :], val.to(data_ptr.dtype.element_ty), mask=msk)


@triton.jit
def _load_plane(data_ptr, first, b, rows, q, P, M, UNIT: tl.constexpr, PU: tl.constexpr):
    msk = ((rows < M) & (P < b))[:, None] & (q < PU)[None, :]
    w = tl.load(data_ptr + (first * PU + P * PU)[:, None] + q[None, :], mask=msk, other=0).to(tl.int32)
    if UNIT == 2:
        w = w & 0xFFFF  # int16 units sign-extend
    return w


@triton.jit
def _lane(x_ptr, rows64, rmask, q, k, J: tl.constexpr, G: tl.constexpr, UNIT: tl.constexpr):
    """Byte lane J of every plane unit: values 8 * (UNIT * q + J) + k, as [BM, PU2, 8] (8 contiguous per thread)."""
    col = q[None, :, None] * (8 * UNIT) + 8 * J + k[None, None, :]  # [1, PU2, 8]
    msk = rmask[:, None, None] & (col < G) & (J < UNIT)
    return tl.load(x_ptr + rows64[:, None, None] * G + col, mask=msk, other=0), msk, col


@triton.jit
def _quant(x, zero, inv, lo, hi, c0, CLAMP_LO: tl.constexpr, SYMMETRIC: tl.constexpr):
    """Codes (int32) of [BM, PU2, 8] values: floor(clip((x - zero) * inv + 0.5, -c0, L-1-c0)) + c0, as the twin.

    Row parameters are [BM, 1, 1]. Without outliers a min-max grid never needs the lower clip (x >= zero).
    """
    t = (x - zero) * inv + 0.5
    t = tl.minimum(t, hi)
    if CLAMP_LO:
        t = tl.maximum(t, lo)
    r = tl.floor(t) + _RMAGIC  # exact: an integer below 2^22 in the low mantissa bits of 1.5 * 2^23
    if SYMMETRIC:
        r = r + c0
    return r.to(tl.int32, bitcast=True) - 0x4B400000


@triton.jit
def _max_min(x, msk, CHECK: tl.constexpr):
    """Row max and min [BM, 1, 1] of [BM, PU2, 8] values (only where ``msk`` when CHECK)."""
    if CHECK:
        return tl.max(tl.max(tl.where(msk, x, float("-inf")), axis=2, keep_dims=True), axis=1, keep_dims=True), \
            tl.min(tl.min(tl.where(msk, x, float("inf")), axis=2, keep_dims=True), axis=1, keep_dims=True)
    return tl.max(tl.max(x, axis=2, keep_dims=True), axis=1, keep_dims=True), \
        tl.min(tl.min(x, axis=2, keep_dims=True), axis=1, keep_dims=True)


@triton.jit
def _pack_kernel(
    x_ptr, bits_ptr, ws_ptr, data_ptr, wout_ptr, scale_ptr, zero_ptr, oval_ptr, opos_ptr,
    M, NPR,
    G: tl.constexpr, UNIT: tl.constexpr, FIXED: tl.constexpr, LO: tl.constexpr, FROM_X: tl.constexpr,
    SYMMETRIC: tl.constexpr, K_TAIL: tl.constexpr, WRITE_W: tl.constexpr, BLOCK_M: tl.constexpr,
):
    PU: tl.constexpr = (G + 8 * UNIT - 1) // (8 * UNIT)  # units per plane
    PU2: tl.constexpr = triton.next_power_of_2(PU)
    tile, rows, b, braw = _tile_setup(bits_ptr, ws_ptr, M, NPR, FIXED, LO, BLOCK_M)
    first = _tile_first(ws_ptr, tile, rows, b, FIXED)  # resolved first (the order measured best on the H100)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    if WRITE_W:
        tl.store(wout_ptr + rows // NPR, braw.to(tl.uint8), mask=rmask & (rows % NPR == 0))
    q = tl.arange(0, PU2)
    k = tl.arange(0, 8)
    r3 = rows[:, None, None]  # per-row values stay [BM, 1, 1] in the tile's layout
    rm3 = r3 < M
    b3 = b[:, None, None]
    # four byte lanes (only UNIT of them real): every thread holds whole plane units, no shuffles
    x0, m0, col0 = _lane(x_ptr, rows64, rmask, q, k, 0, G, UNIT)
    x1, m1, col1 = _lane(x_ptr, rows64, rmask, q, k, 1, G, UNIT)
    x2, m2, col2 = _lane(x_ptr, rows64, rmask, q, k, 2, G, UNIT)
    x3, m3, col3 = _lane(x_ptr, rows64, rmask, q, k, 3, G, UNIT)
    if FROM_X:
        x0, x1, x2, x3 = x0.to(tl.float32), x1.to(tl.float32), x2.to(tl.float32), x3.to(tl.float32)
        PAD: tl.constexpr = (G % (32 * UNIT) != 0) or (UNIT < 4)  # some lanes hold padding
        CHECK: tl.constexpr = PAD or (K_TAIL > 0)
        if K_TAIL == 1:  # one per tail in closed form: the max (first index), then the min of the rest
            a0, i0 = _max_min(x0, m0, PAD)
            a1, i1 = _max_min(x1, m1, PAD)
            a2, i2 = _max_min(x2, m2, PAD)
            a3, i3_ = _max_min(x3, m3, PAD)
            top = tl.maximum(tl.maximum(a0, a1), tl.maximum(a2, a3))  # [BM, 1, 1]
            bot = tl.minimum(tl.minimum(i0, i1), tl.minimum(i2, i3_))
            j_top = tl.minimum(tl.minimum(_first(x0, top, m0, col0, PAD), _first(x1, top, m1, col1, PAD)),
                               tl.minimum(_first(x2, top, m2, col2, PAD), _first(x3, top, m3, col3, PAD)))
            j_bot = tl.minimum(tl.minimum(_first(x0, bot, m0, col0, PAD), _first(x1, bot, m1, col1, PAD)),
                               tl.minimum(_first(x2, bot, m2, col2, PAD), _first(x3, bot, m3, col3, PAD)))
            j_bot = tl.where(top == bot, 1, j_bot)  # all equal: the max took column 0, the min is column 1
            tl.store(opos_ptr + r3 * 2, j_top.to(opos_ptr.dtype.element_ty), mask=rm3)
            tl.store(oval_ptr + r3 * 2, top.to(tl.float16), mask=rm3)
            tl.store(opos_ptr + r3 * 2 + 1, j_bot.to(opos_ptr.dtype.element_ty), mask=rm3)
            tl.store(oval_ptr + r3 * 2 + 1, bot.to(tl.float16), mask=rm3)
            m0 = m0 & (col0 != j_top) & (col0 != j_bot)
            m1 = m1 & (col1 != j_top) & (col1 != j_bot)
            m2 = m2 & (col2 != j_top) & (col2 != j_bot)
            m3 = m3 & (col3 != j_top) & (col3 != j_bot)
        elif K_TAIL > 0:  # K_TAIL largest, then K_TAIL smallest; first index on ties; taken = not an inlier
            t0, t1, t2, t3 = ~m0, ~m1, ~m2, ~m3
            for t in tl.static_range(2 * K_TAIL):
                if t < K_TAIL:
                    ext = tl.maximum(tl.maximum(_max_min(x0, ~t0, True)[0], _max_min(x1, ~t1, True)[0]),
                                     tl.maximum(_max_min(x2, ~t2, True)[0], _max_min(x3, ~t3, True)[0]))
                else:
                    ext = tl.minimum(tl.minimum(_max_min(x0, ~t0, True)[1], _max_min(x1, ~t1, True)[1]),
                                     tl.minimum(_max_min(x2, ~t2, True)[1], _max_min(x3, ~t3, True)[1]))
                e3 = ext
                idx = tl.minimum(
                    tl.minimum(_first(x0, e3, ~t0, col0, True), _first(x1, e3, ~t1, col1, True)),
                    tl.minimum(_first(x2, e3, ~t2, col2, True), _first(x3, e3, ~t3, col3, True)))  # [BM, 1, 1]
                t0, t1, t2, t3 = t0 | (col0 == idx), t1 | (col1 == idx), t2 | (col2 == idx), t3 | (col3 == idx)
                tl.store(opos_ptr + r3 * (2 * K_TAIL) + t, idx.to(opos_ptr.dtype.element_ty), mask=rm3)
                tl.store(oval_ptr + r3 * (2 * K_TAIL) + t, ext.to(tl.float16), mask=rm3)
            m0, m1, m2, m3 = ~t0, ~t1, ~t2, ~t3
        a0, i0 = _max_min(x0, m0, CHECK)
        a1, i1 = _max_min(x1, m1, CHECK)
        a2, i2 = _max_min(x2, m2, CHECK)
        a3, i3_ = _max_min(x3, m3, CHECK)
        mx = tl.maximum(tl.maximum(a0, a1), tl.maximum(a2, a3))  # [BM, 1, 1]
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
        inv = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), tl.where(s > 0, s, 1.0))  # [BM]
        # codes = clip(floor(t), -c0, L-1-c0) + c0 = floor(clip(t, -c0, L-1-c0)) + c0; a zero scale gives c0
        lo = tl.where(s > 0, -c0, 0.0)
        hi = tl.where(s > 0, levels - 1.0 - c0, 0.0)
        z = zero.to(tl.float32)
        CL: tl.constexpr = SYMMETRIC or (K_TAIL > 0)
        w = _quant(x0, z, inv, lo, hi, c0, CL, SYMMETRIC) | (_quant(x1, z, inv, lo, hi, c0, CL, SYMMETRIC) << 8) | \
            (_quant(x2, z, inv, lo, hi, c0, CL, SYMMETRIC) << 16) | (_quant(x3, z, inv, lo, hi, c0, CL, SYMMETRIC) << 24)
    else:
        w = x0.to(tl.int32) | (x1.to(tl.int32) << 8) | (x2.to(tl.int32) << 16) | (x3.to(tl.int32) << 24)
    # w [BM, PU2, 8]: element k is word k (code (q, j, k) in byte j); transposed, word p holds plane p
    w = tl.reshape(w, (BLOCK_M, PU2, 2, 2, 2))
    e, o = tl.split(w)  # k = 4a + 2b + c: the last axis is c
    e0, e1 = tl.split(e)
    o0, o1 = tl.split(o)
    c0_, c4_ = tl.split(e0)
    c2_, c6_ = tl.split(e1)
    c1_, c5_ = tl.split(o0)
    c3_, c7_ = tl.split(o1)
    p0, p1, p2, p3, p4, p5, p6, p7 = _transpose8(c0_, c1_, c2_, c3_, c4_, c5_, c6_, c7_)
    if G % (8 * UNIT) != 0:  # values past G in the last unit are padding: code 0, as in the twin
        n_valid = tl.minimum(tl.maximum(G - 8 * UNIT * q, 0), 8 * UNIT)  # bit 8j+k of a unit is its value 8j+k
        keep = tl.where(n_valid >= 32, -1, (1 << tl.minimum(n_valid, 31)) - 1)[None, :]  # [1, PU2]
        p0, p1, p2, p3 = p0 & keep, p1 & keep, p2 & keep, p3 & keep
        p4, p5, p6, p7 = p4 & keep, p5 & keep, p6 & keep, p7 & keep
    _store_plane(data_ptr, first, b, rows, q, 0, p0, M, PU, PU2)
    _store_plane(data_ptr, first, b, rows, q, 1, p1, M, PU, PU2)
    _store_plane(data_ptr, first, b, rows, q, 2, p2, M, PU, PU2)
    _store_plane(data_ptr, first, b, rows, q, 3, p3, M, PU, PU2)
    _store_plane(data_ptr, first, b, rows, q, 4, p4, M, PU, PU2)
    _store_plane(data_ptr, first, b, rows, q, 5, p5, M, PU, PU2)
    _store_plane(data_ptr, first, b, rows, q, 6, p6, M, PU, PU2)
    _store_plane(data_ptr, first, b, rows, q, 7, p7, M, PU, PU2)


@triton.jit
def _first(x, e3, msk, col, CHECK: tl.constexpr):
    """Lowest column [BM, 1, 1] of a value equal to the row's extreme e3 [BM, 1, 1] (among ``msk`` when CHECK)."""
    hit = (x == e3) & msk if CHECK else x == e3
    return tl.min(tl.min(tl.where(hit, col, 1 << 30), axis=2, keep_dims=True), axis=1, keep_dims=True)


@triton.jit
def _unpack_kernel(
    data_ptr, bits_ptr, ws_ptr, scale_ptr, zero_ptr, oval_ptr, opos_ptr, out_ptr,
    M, NPR,
    G: tl.constexpr, UNIT: tl.constexpr, FIXED: tl.constexpr, TO_X: tl.constexpr, CENTERED: tl.constexpr,
    HAS_ZERO: tl.constexpr, N_OUT: tl.constexpr, BLOCK_M: tl.constexpr,
):
    PU: tl.constexpr = (G + 8 * UNIT - 1) // (8 * UNIT)
    PU2: tl.constexpr = triton.next_power_of_2(PU)
    G2: tl.constexpr = PU2 * 8 * UNIT
    tile, rows, b, braw = _tile_setup(bits_ptr, ws_ptr, M, NPR, FIXED, 1, BLOCK_M)
    rmask = rows < M
    rows64 = rows.to(tl.int64)
    if TO_X:  # issued before the look-back
        s = tl.load(scale_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        if HAS_ZERO:
            z = tl.load(zero_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        else:
            z = tl.zeros_like(s)
    first = _tile_first(ws_ptr, tile, rows, b, FIXED)
    q = tl.arange(0, PU2)
    w0 = _load_plane(data_ptr, first, b, rows, q, 0, M, UNIT, PU)  # [BM, PU2]
    w1 = _load_plane(data_ptr, first, b, rows, q, 1, M, UNIT, PU)
    w2 = _load_plane(data_ptr, first, b, rows, q, 2, M, UNIT, PU)
    w3 = _load_plane(data_ptr, first, b, rows, q, 3, M, UNIT, PU)
    w4 = _load_plane(data_ptr, first, b, rows, q, 4, M, UNIT, PU)
    w5 = _load_plane(data_ptr, first, b, rows, q, 5, M, UNIT, PU)
    w6 = _load_plane(data_ptr, first, b, rows, q, 6, M, UNIT, PU)
    w7 = _load_plane(data_ptr, first, b, rows, q, 7, M, UNIT, PU)
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


def _unit(g: int) -> int:
    pb = (g + 7) // 8
    return 4 if pb % 4 == 0 else 2 if pb % 2 == 0 else 1


def _block_m(g: int, m: int = 0) -> int:
    """Groups per program: ~``values_per_program`` values, twice that for big tensors (fewer look-back steps)."""
    g2 = triton.next_power_of_2(max(g, 8 * _unit(g)))
    vpp = TUNING["values_per_program"] * (2 if m * g >= TUNING["big_values"] else 1)
    return max(1, triton.next_power_of_2(vpp) // g2)


def _units(buf: torch.Tensor, g: int) -> torch.Tensor:
    u = _unit(g)
    return buf.view(torch.int32) if u == 4 else buf.view(torch.int16) if u == 2 else buf


def _bits_args(bits: torch.Tensor | int) -> tuple[torch.Tensor | None, int]:
    if isinstance(bits, int):
        return None, bits
    return bits.contiguous(), 0


def workspace_bytes(m: int, g: int) -> int:
    """Bytes of the look-back workspace of a call on ``m`` groups of ``g`` values (0 past the fixed-width path)."""
    return 8 * (triton.cdiv(m, _block_m(g, m)) + 2)


def packed_size(ws: torch.Tensor, g: int, lo: int) -> int:
    """Bytes written by a pack whose widths were summed on the device (one device-to-host read).

    Raises ValueError when the kernel saw widths outside ``lo..8`` (their planes were clamped).
    """
    n_bad, total = torch.stack([ws[1], ws[-1] & 0xFFFFFFFF]).tolist()
    if n_bad:
        raise ValueError(f"bits must lie in {lo}..8{' (symmetric needs >= 2)' if lo == 2 else ''}: "
                         f"{n_bad} groups outside")
    return total * ((g + 7) // 8)


def quantize_pack_triton(
    xg: torch.Tensor, bits: torch.Tensor | int, symmetric: bool, k_tail: int, n_per_row: int = 1,
    total_bytes: int | None = None, pos_dtype: torch.dtype = torch.int16, write_widths: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Fused quantize+pack of groups xg [M, G] at widths ``bits`` (int, or a tensor [M / n_per_row] of any int dtype).

    One launch, no host sync. ``total_bytes`` (sum of widths * PB, when the caller knows it)
    sizes ``data`` exactly; otherwise ``data`` is a worst-case buffer (8 planes per group) and
    ``ws`` holds the device-side total (``packed_size``). Returns a dict: data, ws (or None),
    scale, zero, out_val, out_pos, widths (uint8 per token when ``write_widths``).
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
    data = torch.empty(total_bytes if total_bytes is not None else m * 8 * pb, dtype=torch.uint8, device=dev)
    bm = _block_m(g, m)
    n_tiles = triton.cdiv(m, bm)
    ws = None if fixed else torch.zeros(n_tiles + 2, dtype=torch.int64, device=dev)
    out = {
        "data": data, "ws": ws,
        "scale": torch.empty(m, dtype=torch.float16, device=dev),
        "zero": torch.empty(m, dtype=torch.float16, device=dev),
        "out_val": torch.empty(m, 2 * k_tail, dtype=torch.float16, device=dev),
        "out_pos": torch.empty(m, 2 * k_tail, dtype=pos_dtype, device=dev),
        "widths": torch.empty(m // n_per_row if write_widths else 0, dtype=torch.uint8, device=dev),
    }
    if m:
        _pack_kernel[(n_tiles,)](
            xg, bt if bt is not None else data, ws if ws is not None else data, _units(data, g), out["widths"],
            out["scale"], out["zero"], out["out_val"], out["out_pos"], m, n_per_row,
            G=g, UNIT=_unit(g), FIXED=fixed, LO=lo, FROM_X=True, SYMMETRIC=symmetric, K_TAIL=k_tail,
            WRITE_W=write_widths, BLOCK_M=bm, num_warps=TUNING["num_warps"],
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
    m, g = codes.shape
    bm = _block_m(g, m)
    n_tiles = triton.cdiv(m, bm)
    data = torch.empty(m * 8 * ((g + 7) // 8), dtype=torch.uint8, device=codes.device)
    ws = torch.zeros(n_tiles + 2, dtype=torch.int64, device=codes.device)
    if m:
        _pack_kernel[(n_tiles,)](
            codes, bits.contiguous(), ws, _units(data, g), data, data, data, data, data, m, 1,
            G=g, UNIT=_unit(g), FIXED=0, LO=1, FROM_X=False, SYMMETRIC=False, K_TAIL=0, WRITE_W=False,
            BLOCK_M=bm, num_warps=TUNING["num_warps"],
        )
        return data[: packed_size(ws, g, 1)]
    return data[:0]


def _unpack(data: torch.Tensor, bits: torch.Tensor | int, m: int, g: int, n_per_row: int, out: torch.Tensor,
            scale: torch.Tensor | None, zero: torch.Tensor | None, out_val: torch.Tensor | None,
            out_pos: torch.Tensor | None, centered: bool) -> torch.Tensor:
    if m:
        bm = _block_m(g, m)
        n_tiles = triton.cdiv(m, bm)
        bt, fixed = _bits_args(bits)
        ws = None if fixed else torch.zeros(n_tiles + 2, dtype=torch.int64, device=data.device)
        to_x = scale is not None
        n_out = out_val.shape[1] if to_x and out_val is not None else 0
        dummy = out
        _unpack_kernel[(n_tiles,)](
            _units(data, g), bt if bt is not None else dummy, ws if ws is not None else dummy,
            scale if to_x else dummy, zero if to_x and zero is not None else dummy,
            out_val.contiguous() if n_out else dummy, out_pos.contiguous() if n_out else dummy, out,
            m, n_per_row, G=g, UNIT=_unit(g), FIXED=fixed, TO_X=to_x, CENTERED=centered, HAS_ZERO=zero is not None,
            N_OUT=n_out,
            BLOCK_M=bm, num_warps=TUNING["num_warps"],
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
    """Fused unpack+dequantize (+ outliers written back): x_hat [M, G] in ``dtype``, one launch.

    ``bits``: one int, or widths per token [M / n_per_row] (any int dtype); ``zero`` None: 0. bf16 is written as
    fp32 and cast by torch (the Triton interpreter does not round to bf16 the way the GPU and
    torch do); fp16 and fp32 are stored directly.
    """
    m = scale.shape[0]
    kdt = dtype if dtype in (torch.float16, torch.float32) else torch.float32
    out = torch.empty(m, g, dtype=kdt, device=data.device)
    out = _unpack(data, bits, m, g, n_per_row, out, scale, zero, out_val, out_pos, centered)
    return out if kdt == dtype else out.to(dtype)
