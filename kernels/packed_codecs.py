"""Packed (physical) encode / decode: plain packed INT4 <-> the stored layouts at the nominal code rate.

The layouts (documented in ``ecc_kv/layouts.py``, whose torch functions are the oracle) per row of
``n`` INT4 values:

- hamming84: one byte per value (the codeword), ``n`` bytes.
- hamming74: per row ``[data n/2 bytes | Q0 n/8 | Q1 n/8 | Q2 n/8]``; the data plane is the plain
  packed INT4 row, Q_b word j holds the parity triples of codes 32j+8b..32j+8b+7 (nibble i, bits 0-2)
  and bit b of the parity triple of code 32j+24+i (nibble i, bit 3). 7 bits per value.
- golay2412: per row ``[data n/2 bytes | parity n/2 bytes]``; codeword c's 12 data bits are bits
  12c..12c+11 of the data plane (the plain packed INT4 row), its 12 parity bits the same bits of the
  parity plane. 24 bits per 3 values.

One program handles BLOCK aligned groups (8, 32 or 24 values) with 128-bit loads where the group is
a power of two, SWAR arithmetic on uint32 words, and int32 indexing. Decoders add their corrected /
detected counts to ``counts[0:2]`` with one atomic per program, and optionally write the status
byte of every codeword.

Two decoders: the group decoder (``_decode_packed_kernel``: one codec group per lane, Golay and
Hamming(7,4) faults drawn per run of words, ``run_masks``) and the aligned-unit decoder
(``_decode_units_kernel``): each lane owns whole aligned groups of four stored words from its 128-bit
loads through the fault draws (one per aligned group, the fault law's own unit) and the decode to its
128-bit stores, so nothing crosses lanes. A Hamming(7,4) or Golay lane holds a quad of four codec
groups, whose data and parity words are exactly 7 or 6 aligned groups when rows hold whole quads
(n a multiple of 128 / 96). Both give the same bits; which one runs by default is measured
(``UNITS_FOR_*``, docs/codecs.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.codecs import (
    CODEC_IDS,
    GROUP_VALUES,
    _count_swar,
    _i32,
    _spread16,
    _u32,
    add_counts,
    golay_decode_group,
    golay_encode_group,
    golay_tables,
    hamming74_decode_group,
    hamming74_encode_group,
    hamming84_decode_word,
    hamming84_encode_word,
    status_counts,
)
from kernels.faults import (
    event_probability,
    event_thresholds,
    flip_mask,
    group_bursts,
    group_draw,
    group_fix,
    group_key_row,
    group_masks,
    run_masks,
    select4,
)
from kernels.tiles import join4, split4

# launch configs per codec id: (groups per program, warps), from a sweep on an H100 at 64M values
# (docs/codecs.md): encoders with strided parity stores like small programs, decoders large ones.
TUNING_ENCODE: dict[int, tuple[int, int]] = {0: (128, 4), 1: (1024, 4), 2: (128, 4)}
TUNING_DECODE: dict[int, tuple[int, int]] = {0: (512, 4), 1: (2048, 4), 2: (512, 4)}
# with fused fault injection, small programs win for the layouts whose words are drawn per run (their
# tile-level fault tests stall fewer warps); best of a (block, warps) sweep at 64M values, BER 1e-3,
# H100 (docs/codecs.md)
TUNING_INJECT_DECODE: dict[int, tuple[int, int]] = {0: (64, 1), 1: (512, 4), 2: (64, 1)}
# the aligned-unit decoder (``_decode_units_kernel``): (units per program, warps); units are aligned groups of
# four stored words (Hamming(8,4)) or quads of four codec groups (Hamming(7,4), Golay). One quad per lane (two
# per lane ran slower); programs of at least 64 units: every program adds its counts with two atomics on one
# address, and small programs made those the limit (H100, 64M values, docs/codecs.md)
TUNING_UNITS: dict[int, tuple[int, int]] = {0: (64, 2), 1: (256, 4), 2: (64, 2)}
TUNING_UNITS_INJECT: dict[int, tuple[int, int]] = {0: (64, 2), 1: (256, 4), 2: (64, 2)}
# which paths take the aligned-unit decoder by default (where the row allows it: whole quads per row), from the
# same H100 runs: inject+decode of Hamming(7,4) 0.39 -> 0.71-0.76 of copy and Golay 0.33 -> 0.48-0.49; Hamming(8,4)
# inject+decode and every plain decode measured equal or slower than the group decoder, so they keep it
UNITS_FOR_DECODE: dict[int, bool] = {0: False, 1: False, 2: False}
UNITS_FOR_INJECT: dict[int, bool] = {0: True, 1: False, 2: True}


@triton.jit
def _load_words(ptr, idx, valid, seed, stream, thr_ptr, INJECT: tl.constexpr, BURST_LEN: tl.constexpr):
    """Stored int32 words at ``idx`` as uint32, with the fault channel applied when INJECT (global word index = idx)."""
    x = tl.load(ptr + idx, mask=valid, other=0)
    if INJECT:
        # callers pass 1-D index tiles when INJECT, the shape ``inject_triton`` draws on (a 2-D tile gave
        # different masks on the H100 in our first run; reshaping around flip_mask made it 4x slower)
        m = flip_mask(seed, idx.to(tl.int64), stream, thr_ptr, 32, BURST_LEN)
        x = x ^ tl.where(valid, m, 0)
    return _u32(x)


@triton.jit
def _xor_faults(x, valid, m):
    """Loaded int32 words ``x`` XORed with fault masks ``m`` (only where valid), as uint32."""
    return _u32(x ^ tl.where(valid, m, 0))


@triton.jit
def read_h74_group(src, g, GPR, mask, seed, stream, thr_ptr, INJECT: tl.constexpr, BURST_LEN: tl.constexpr):
    """Load and correct Hamming(7,4) groups ``g`` of the stored layout (rows of ``GPR`` groups).

    A row holds its 4 GPR data words, then three parity planes of GPR words each.
    Returns the 4 corrected data words and 4 words of per-codeword correction flags.
    """
    row = g // GPR
    j = g - row * GPR
    base = row * (7 * GPR)
    d0 = base + 4 * j
    if INJECT:  # four 1-D loads (issued before the masks); the run of four data words costs one or two draws
        x0 = tl.load(src + d0, mask=mask, other=0)
        x1 = tl.load(src + d0 + 1, mask=mask, other=0)
        x2 = tl.load(src + d0 + 2, mask=mask, other=0)
        x3 = tl.load(src + d0 + 3, mask=mask, other=0)
        m0, m1, m2, m3 = run_masks(seed, d0, stream, thr_ptr, BURST_LEN)
        x = join4(_xor_faults(x0, mask, m0), _xor_faults(x1, mask, m1), _xor_faults(x2, mask, m2),
                   _xor_faults(x3, mask, m3))
    else:
        x = _load_words(src, d0[:, None] + tl.arange(0, 4)[None, :], mask[:, None], seed, stream, thr_ptr, INJECT, BURST_LEN)
    q0 = _load_words(src, base + 4 * GPR + j, mask, seed, stream, thr_ptr, INJECT, BURST_LEN)
    q1 = _load_words(src, base + 5 * GPR + j, mask, seed, stream, thr_ptr, INJECT, BURST_LEN)
    q2 = _load_words(src, base + 6 * GPR + j, mask, seed, stream, thr_ptr, INJECT, BURST_LEN)
    w0, w1, w2, w3 = split4(x)
    return hamming74_decode_group(w0, w1, w2, w3, q0, q1, q2)


@triton.jit
def read_golay_group(src, g, GPR, mask, seed, stream, thr_ptr, table_ptr,
                     ALGEBRAIC: tl.constexpr, INJECT: tl.constexpr, BURST_LEN: tl.constexpr):
    """Load and correct Golay groups ``g`` (8 codewords each) of the stored layout (rows of ``GPR`` groups).

    A row holds its 3 GPR data words, then 3 GPR parity words. Returns the 3 corrected data words
    and the two status words (``golay_decode_group``).
    """
    row = g // GPR
    j = g - row * GPR
    d = row * (6 * GPR) + 3 * j
    p = d + 3 * GPR
    w0 = tl.load(src + d, mask=mask, other=0)
    w1 = tl.load(src + d + 1, mask=mask, other=0)
    w2 = tl.load(src + d + 2, mask=mask, other=0)
    p0 = tl.load(src + p, mask=mask, other=0)
    p1 = tl.load(src + p + 1, mask=mask, other=0)
    p2 = tl.load(src + p + 2, mask=mask, other=0)
    if INJECT:  # two runs of three words: at most four group draws for six words
        md0, md1, md2, _ = run_masks(seed, d, stream, thr_ptr, BURST_LEN)
        mp0, mp1, mp2, _ = run_masks(seed, p, stream, thr_ptr, BURST_LEN)
        w0, w1, w2 = _xor_faults(w0, mask, md0), _xor_faults(w1, mask, md1), _xor_faults(w2, mask, md2)
        p0, p1, p2 = _xor_faults(p0, mask, mp0), _xor_faults(p1, mask, mp1), _xor_faults(p2, mask, mp2)
    else:
        w0, w1, w2, p0, p1, p2 = _u32(w0), _u32(w1), _u32(w2), _u32(p0), _u32(p1), _u32(p2)
    return golay_decode_group(w0, w1, w2, p0, p1, p2, table_ptr, ALGEBRAIC)


@triton.jit
def _encode_packed_kernel(src, dst, NG, GPR, CODEC: tl.constexpr, BLOCK: tl.constexpr):
    # src: packed INT4 words, group g at words [W*g, W*g+W) (W = 4 / 1 / 3); dst: stored words
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = g < NG
    if CODEC == 1:
        w = _u32(tl.load(src + g, mask=mask, other=0))
        lo, hi = hamming84_encode_word(w)
        o = g[:, None] * 2 + tl.arange(0, 2)[None, :]
        tl.store(dst + o, _i32(tl.join(lo, hi)), mask=o < 2 * NG)
    elif CODEC == 0:
        row = g // GPR
        j = g - row * GPR
        i4 = g[:, None] * 4 + tl.arange(0, 4)[None, :]
        m4 = i4 < 4 * NG
        x = _u32(tl.load(src + i4, mask=m4, other=0))  # [B, 4]
        w0, w1, w2, w3 = split4(x)
        q0, q1, q2 = hamming74_encode_group(w0, w1, w2, w3)
        base = row * (7 * GPR)
        tl.store(dst + (base + 4 * j)[:, None] + tl.arange(0, 4)[None, :], _i32(x), mask=m4)
        tl.store(dst + base + 4 * GPR + j, _i32(q0), mask=mask)
        tl.store(dst + base + 5 * GPR + j, _i32(q1), mask=mask)
        tl.store(dst + base + 6 * GPR + j, _i32(q2), mask=mask)
    else:
        row = g // GPR
        j = g - row * GPR
        w0 = _u32(tl.load(src + 3 * g, mask=mask, other=0))
        w1 = _u32(tl.load(src + 3 * g + 1, mask=mask, other=0))
        w2 = _u32(tl.load(src + 3 * g + 2, mask=mask, other=0))
        p0, p1, p2 = golay_encode_group(w0, w1, w2)
        d = row * (6 * GPR) + 3 * j
        p = d + 3 * GPR
        tl.store(dst + d, _i32(w0), mask=mask)
        tl.store(dst + d + 1, _i32(w1), mask=mask)
        tl.store(dst + d + 2, _i32(w2), mask=mask)
        tl.store(dst + p, _i32(p0), mask=mask)
        tl.store(dst + p + 1, _i32(p1), mask=mask)
        tl.store(dst + p + 2, _i32(p2), mask=mask)


@triton.jit(do_not_specialize=["seed", "stream"])
def _decode_packed_kernel(
    src, dst, st_ptr, cnt_ptr, table_ptr, thr_ptr, NG, GPR, seed, stream,
    CODEC: tl.constexpr, BLOCK: tl.constexpr, WRITE_STATUS: tl.constexpr, ALGEBRAIC: tl.constexpr,
    INJECT: tl.constexpr, BURST_LEN: tl.constexpr,
):
    # src: stored words; dst: packed INT4 words; st_ptr: status bytes as words; cnt_ptr: int32[2]
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = g < NG
    if CODEC == 1 and INJECT:
        # whole aligned groups of four stored words (two output words) per row: one fault draw per group
        grp = tl.program_id(0) * (BLOCK // 2) + tl.arange(0, BLOCK // 2)
        col = tl.arange(0, 4)[None, :]
        o4 = grp[:, None] * 4 + col  # [B/2, 4] stored word index
        v4 = o4 < 2 * NG
        x = tl.load(src + o4, mask=v4, other=0)
        m0, m1, m2, m3 = group_masks(seed, grp, stream, thr_ptr, BURST_LEN)
        x = _u32(x ^ tl.where(v4, select4(m0[:, None], m1[:, None], m2[:, None], m3[:, None], col), 0))
        lo, hi = tl.split(tl.reshape(x, [BLOCK // 2, 2, 2]))  # [B/2, 2]: output words 2 grp + (0, 1)
        w, corr, det = hamming84_decode_word(lo, hi, WRITE_STATUS)
        o2 = grp[:, None] * 2 + tl.arange(0, 2)[None, :]
        tl.store(dst + o2, _i32(w), mask=o2 < NG)
        if WRITE_STATUS:
            st = corr | (det << 1)
            st4 = tl.reshape(tl.join(_spread16(st), _spread16(st >> 16)), [BLOCK // 2, 4])
            tl.store(st_ptr + o4, _i32(st4), mask=v4)
        n_corr = tl.sum(tl.sum(_count_swar(corr).to(tl.int32), axis=1), axis=0)
        n_det = tl.sum(tl.sum(_count_swar(det).to(tl.int32), axis=1), axis=0)
    elif CODEC == 1:
        o = tl.program_id(0) * (2 * BLOCK) + tl.arange(0, 2 * BLOCK)  # 1-D: 128-bit loads
        x = _load_words(src, o, o < 2 * NG, seed, stream, thr_ptr, INJECT, BURST_LEN)
        lo, hi = tl.split(tl.reshape(x, [BLOCK, 2]))
        w, corr, det = hamming84_decode_word(lo, hi, WRITE_STATUS)
        tl.store(dst + g, _i32(w), mask=mask)
        if WRITE_STATUS:
            st = corr | (det << 1)
            st2 = tl.reshape(tl.join(_spread16(st), _spread16(st >> 16)), [2 * BLOCK])
            tl.store(st_ptr + o, _i32(st2), mask=o < 2 * NG)
        n_corr = tl.sum(_count_swar(corr).to(tl.int32), axis=0)
        n_det = tl.sum(_count_swar(det).to(tl.int32), axis=0)
    elif CODEC == 0:
        m4 = (g < NG)[:, None] & (tl.arange(0, 4) < 4)[None, :]
        w0, w1, w2, w3, f0, f1, f2, f3 = read_h74_group(src, g, GPR, mask, seed, stream, thr_ptr, INJECT, BURST_LEN)
        tl.store(dst + g[:, None] * 4 + tl.arange(0, 4)[None, :], _i32(join4(w0, w1, w2, w3)), mask=m4)
        if WRITE_STATUS:
            s8 = g * 8
            tl.store(st_ptr + s8, _i32(_spread16(f0)), mask=mask)
            tl.store(st_ptr + s8 + 1, _i32(_spread16(f0 >> 16)), mask=mask)
            tl.store(st_ptr + s8 + 2, _i32(_spread16(f1)), mask=mask)
            tl.store(st_ptr + s8 + 3, _i32(_spread16(f1 >> 16)), mask=mask)
            tl.store(st_ptr + s8 + 4, _i32(_spread16(f2)), mask=mask)
            tl.store(st_ptr + s8 + 5, _i32(_spread16(f2 >> 16)), mask=mask)
            tl.store(st_ptr + s8 + 6, _i32(_spread16(f3)), mask=mask)
            tl.store(st_ptr + s8 + 7, _i32(_spread16(f3 >> 16)), mask=mask)
        n_corr = tl.sum((_count_swar(f0) + _count_swar(f1) + _count_swar(f2) + _count_swar(f3)).to(tl.int32), axis=0)
        n_det = n_corr * 0
    else:
        o0, o1, o2, sa, sb = read_golay_group(src, g, GPR, mask, seed, stream, thr_ptr, table_ptr, ALGEBRAIC, INJECT,
                                              BURST_LEN)
        tl.store(dst + 3 * g, _i32(o0), mask=mask)
        tl.store(dst + 3 * g + 1, _i32(o1), mask=mask)
        tl.store(dst + 3 * g + 2, _i32(o2), mask=mask)
        if WRITE_STATUS:
            tl.store(st_ptr + 2 * g, _i32(sa), mask=mask)
            tl.store(st_ptr + 2 * g + 1, _i32(sb), mask=mask)
        n_corr, n_det = status_counts(sa, sb)
    add_counts(cnt_ptr, n_corr, n_det)


# ----------------------------------------------------------------------------------------------
# Aligned-unit decoder: every lane owns whole aligned groups of four stored words, from its 128-bit
# loads through the fault draws and the decode to its 128-bit stores, so nothing crosses lanes.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_group(ptr, gi, valid):
    """Aligned groups ``gi`` ([B]) of four int32 words (words 4 gi .. 4 gi + 3), one 128-bit load each."""
    return split4(tl.load(ptr + gi[:, None] * 4 + tl.arange(0, 4)[None, :], mask=valid[:, None], other=0))


@triton.jit
def _store_group(ptr, gi, valid, w0, w1, w2, w3):
    tl.store(ptr + gi[:, None] * 4 + tl.arange(0, 4)[None, :], _i32(join4(w0, w1, w2, w3)), mask=valid[:, None])


@triton.jit
def _faulty_group(src, gi, valid, key, row, INJECT: tl.constexpr):
    """Words of groups ``gi`` and, with INJECT, their fast-path event sets and first draws (``group_draw``);
    without, empty event sets (``_apply`` then XORs nothing and the compiler drops it)."""
    x0, x1, x2, x3 = _load_group(src, gi, valid)
    if INJECT:
        u, s0, s1, s2, s3, bad = group_draw(key, gi, row)
    else:
        z = tl.zeros(gi.shape, tl.uint32)
        u, s0, s1, s2, s3, bad = z, z, z, z, z, valid & False
    return x0, x1, x2, x3, u, s0, s1, s2, s3, bad


@triton.jit
def _apply(x0, x1, x2, x3, s0, s1, s2, s3, BURST_LEN: tl.constexpr):
    m0, m1, m2, m3 = group_bursts(s0, s1, s2, s3, BURST_LEN)
    return _u32(x0 ^ m0), _u32(x1 ^ m1), _u32(x2 ^ m2), _u32(x3 ^ m3)


@triton.jit
def _h84_unit(src, dst, st_ptr, u, valid, NG, key, row, WRITE_STATUS: tl.constexpr, INJECT: tl.constexpr,
              BURST_LEN: tl.constexpr, TAIL: tl.constexpr):
    # aligned group u: stored words 4u .. 4u+3 -> output words 2u, 2u+1; TAIL: the last group holds one output
    # word (NG odd), so loads and stores are masked per word there (not vectorized; one lane of one program)
    c4 = tl.arange(0, 4)[None, :]
    if TAIL:
        m4 = u[:, None] * 4 + c4 < 2 * NG
    else:
        m4 = valid[:, None]  # a row mask: keeps the 128-bit load
    x0, x1, x2, x3 = split4(tl.load(src + u[:, None] * 4 + c4, mask=m4, other=0))
    if INJECT:
        uu, s0, s1, s2, s3, bad = group_draw(key, u, row)
        s0, s1, s2, s3 = group_fix(uu, key, u, row, s0, s1, s2, s3, bad)
        x0, x1, x2, x3 = _apply(x0, x1, x2, x3, s0, s1, s2, s3, BURST_LEN)
    else:
        x0, x1, x2, x3 = _u32(x0), _u32(x1), _u32(x2), _u32(x3)
    wa, ca, da = hamming84_decode_word(x0, x1, WRITE_STATUS)
    wb, cb, db = hamming84_decode_word(x2, x3, WRITE_STATUS)
    o = u[:, None] * 2 + tl.arange(0, 2)[None, :]
    if TAIL:
        m2 = o < NG
        vb = 2 * u + 1 < NG
    else:
        m2 = valid[:, None]
        vb = valid
    tl.store(dst + o, _i32(tl.join(wa, wb)), mask=m2)
    if WRITE_STATUS:
        sa = ca | (da << 1)
        sb = cb | (db << 1)
        st = join4(_spread16(sa), _spread16(sa >> 16), _spread16(sb), _spread16(sb >> 16))
        tl.store(st_ptr + u[:, None] * 4 + c4, _i32(st), mask=m4)
    n_corr = _count_swar(ca) + tl.where(vb, _count_swar(cb), 0)
    return n_corr, _count_swar(da) + tl.where(vb, _count_swar(db), 0)


@triton.jit
def _h74_out(dst, st_ptr, g, valid, d0, d1, d2, d3, q0, q1, q2, WRITE_STATUS: tl.constexpr):
    # Hamming(7,4) group g: decode, 4 output words (one 128-bit store), 8 status words; corrected codewords
    w0, w1, w2, w3, f0, f1, f2, f3 = hamming74_decode_group(d0, d1, d2, d3, q0, q1, q2)
    _store_group(dst, g, valid, w0, w1, w2, w3)
    if WRITE_STATUS:
        _store_group(st_ptr, 2 * g, valid, _spread16(f0), _spread16(f0 >> 16), _spread16(f1), _spread16(f1 >> 16))
        _store_group(st_ptr, 2 * g + 1, valid, _spread16(f2), _spread16(f2 >> 16), _spread16(f3), _spread16(f3 >> 16))
    return _count_swar(f0) + _count_swar(f1) + _count_swar(f2) + _count_swar(f3)


@triton.jit
def _h74_unit(src, dst, st_ptr, u, valid, GQ, key, row, WRITE_STATUS: tl.constexpr, INJECT: tl.constexpr,
              BURST_LEN: tl.constexpr):
    # quad u: Hamming(7,4) groups 4u .. 4u+3 of a row of 4 GQ groups (28 GQ words = 7 GQ aligned groups):
    # their 16 data words are the aligned groups 7 GQ r + 4 qi + i, parity plane b's words the group
    # 7 GQ r + (4 + b) GQ + qi
    r = u // GQ
    qi = u - r * GQ
    dg = r * (7 * GQ) + 4 * qi
    pg = r * (7 * GQ) + 4 * GQ + qi
    a0, a1, a2, a3, ua, as0, as1, as2, as3, abad = _faulty_group(src, dg, valid, key, row, INJECT)
    b0, b1, b2, b3, ub, bs0, bs1, bs2, bs3, bbad = _faulty_group(src, dg + 1, valid, key, row, INJECT)
    c0, c1, c2, c3, uc, cs0, cs1, cs2, cs3, cbad = _faulty_group(src, dg + 2, valid, key, row, INJECT)
    d0, d1, d2, d3, ud, ds0, ds1, ds2, ds3, dbad = _faulty_group(src, dg + 3, valid, key, row, INJECT)
    p0, p1, p2, p3, up, ps0, ps1, ps2, ps3, pbad = _faulty_group(src, pg, valid, key, row, INJECT)
    q0, q1, q2, q3, uq, qs0, qs1, qs2, qs3, qbad = _faulty_group(src, pg + GQ, valid, key, row, INJECT)
    e0, e1, e2, e3, ue, es0, es1, es2, es3, ebad = _faulty_group(src, pg + 2 * GQ, valid, key, row, INJECT)
    if INJECT:
        if tl.max((abad | bbad | cbad | dbad | pbad | qbad | ebad).to(tl.int32)) > 0:  # rare: one test, then per draw
            as0, as1, as2, as3 = group_fix(ua, key, dg, row, as0, as1, as2, as3, abad)
            bs0, bs1, bs2, bs3 = group_fix(ub, key, dg + 1, row, bs0, bs1, bs2, bs3, bbad)
            cs0, cs1, cs2, cs3 = group_fix(uc, key, dg + 2, row, cs0, cs1, cs2, cs3, cbad)
            ds0, ds1, ds2, ds3 = group_fix(ud, key, dg + 3, row, ds0, ds1, ds2, ds3, dbad)
            ps0, ps1, ps2, ps3 = group_fix(up, key, pg, row, ps0, ps1, ps2, ps3, pbad)
            qs0, qs1, qs2, qs3 = group_fix(uq, key, pg + GQ, row, qs0, qs1, qs2, qs3, qbad)
            es0, es1, es2, es3 = group_fix(ue, key, pg + 2 * GQ, row, es0, es1, es2, es3, ebad)
    a0, a1, a2, a3 = _apply(a0, a1, a2, a3, as0, as1, as2, as3, BURST_LEN)
    b0, b1, b2, b3 = _apply(b0, b1, b2, b3, bs0, bs1, bs2, bs3, BURST_LEN)
    c0, c1, c2, c3 = _apply(c0, c1, c2, c3, cs0, cs1, cs2, cs3, BURST_LEN)
    d0, d1, d2, d3 = _apply(d0, d1, d2, d3, ds0, ds1, ds2, ds3, BURST_LEN)
    p0, p1, p2, p3 = _apply(p0, p1, p2, p3, ps0, ps1, ps2, ps3, BURST_LEN)
    q0, q1, q2, q3 = _apply(q0, q1, q2, q3, qs0, qs1, qs2, qs3, BURST_LEN)
    e0, e1, e2, e3 = _apply(e0, e1, e2, e3, es0, es1, es2, es3, BURST_LEN)
    g = 4 * u
    n = _h74_out(dst, st_ptr, g, valid, a0, a1, a2, a3, p0, q0, e0, WRITE_STATUS)
    n += _h74_out(dst, st_ptr, g + 1, valid, b0, b1, b2, b3, p1, q1, e1, WRITE_STATUS)
    n += _h74_out(dst, st_ptr, g + 2, valid, c0, c1, c2, c3, p2, q2, e2, WRITE_STATUS)
    n += _h74_out(dst, st_ptr, g + 3, valid, d0, d1, d2, d3, p3, q3, e3, WRITE_STATUS)
    return n, n * 0


@triton.jit
def _golay_unit(src, dst, st_ptr, table_ptr, u, valid, GQ, key, row, WRITE_STATUS: tl.constexpr,
                ALGEBRAIC: tl.constexpr, INJECT: tl.constexpr, BURST_LEN: tl.constexpr):
    # quad u: Golay groups 4u .. 4u+3 of a row of 4 GQ groups (24 GQ words = 6 GQ aligned groups): their
    # 12 data words are the aligned groups 6 GQ r + 3 qi + (0, 1, 2), their parity words 3 GQ groups later
    r = u // GQ
    qi = u - r * GQ
    dg = r * (6 * GQ) + 3 * qi
    pg = dg + 3 * GQ
    a0, a1, a2, a3, ua, as0, as1, as2, as3, abad = _faulty_group(src, dg, valid, key, row, INJECT)
    b0, b1, b2, b3, ub, bs0, bs1, bs2, bs3, bbad = _faulty_group(src, dg + 1, valid, key, row, INJECT)
    c0, c1, c2, c3, uc, cs0, cs1, cs2, cs3, cbad = _faulty_group(src, dg + 2, valid, key, row, INJECT)
    p0, p1, p2, p3, up, ps0, ps1, ps2, ps3, pbad = _faulty_group(src, pg, valid, key, row, INJECT)
    q0, q1, q2, q3, uq, qs0, qs1, qs2, qs3, qbad = _faulty_group(src, pg + 1, valid, key, row, INJECT)
    e0, e1, e2, e3, ue, es0, es1, es2, es3, ebad = _faulty_group(src, pg + 2, valid, key, row, INJECT)
    if INJECT:
        if tl.max((abad | bbad | cbad | pbad | qbad | ebad).to(tl.int32)) > 0:  # rare: one test, then per draw
            as0, as1, as2, as3 = group_fix(ua, key, dg, row, as0, as1, as2, as3, abad)
            bs0, bs1, bs2, bs3 = group_fix(ub, key, dg + 1, row, bs0, bs1, bs2, bs3, bbad)
            cs0, cs1, cs2, cs3 = group_fix(uc, key, dg + 2, row, cs0, cs1, cs2, cs3, cbad)
            ps0, ps1, ps2, ps3 = group_fix(up, key, pg, row, ps0, ps1, ps2, ps3, pbad)
            qs0, qs1, qs2, qs3 = group_fix(uq, key, pg + 1, row, qs0, qs1, qs2, qs3, qbad)
            es0, es1, es2, es3 = group_fix(ue, key, pg + 2, row, es0, es1, es2, es3, ebad)
    a0, a1, a2, a3 = _apply(a0, a1, a2, a3, as0, as1, as2, as3, BURST_LEN)
    b0, b1, b2, b3 = _apply(b0, b1, b2, b3, bs0, bs1, bs2, bs3, BURST_LEN)
    c0, c1, c2, c3 = _apply(c0, c1, c2, c3, cs0, cs1, cs2, cs3, BURST_LEN)
    p0, p1, p2, p3 = _apply(p0, p1, p2, p3, ps0, ps1, ps2, ps3, BURST_LEN)
    q0, q1, q2, q3 = _apply(q0, q1, q2, q3, qs0, qs1, qs2, qs3, BURST_LEN)
    e0, e1, e2, e3 = _apply(e0, e1, e2, e3, es0, es1, es2, es3, BURST_LEN)
    # Golay group i of the quad holds words 3i .. 3i+2 of the 12 (a0..a3 b0..b3 c0..c3)
    o00, o01, o02, sa0, sb0 = golay_decode_group(a0, a1, a2, p0, p1, p2, table_ptr, ALGEBRAIC)
    o10, o11, o12, sa1, sb1 = golay_decode_group(a3, b0, b1, p3, q0, q1, table_ptr, ALGEBRAIC)
    o20, o21, o22, sa2, sb2 = golay_decode_group(b2, b3, c0, q2, q3, e0, table_ptr, ALGEBRAIC)
    o30, o31, o32, sa3, sb3 = golay_decode_group(c1, c2, c3, e1, e2, e3, table_ptr, ALGEBRAIC)
    og = 3 * u  # the quad's 12 output words are 3 aligned groups
    _store_group(dst, og, valid, o00, o01, o02, o10)
    _store_group(dst, og + 1, valid, o11, o12, o20, o21)
    _store_group(dst, og + 2, valid, o22, o30, o31, o32)
    if WRITE_STATUS:
        _store_group(st_ptr, 2 * u, valid, sa0, sb0, sa1, sb1)
        _store_group(st_ptr, 2 * u + 1, valid, sa2, sb2, sa3, sb3)
    lo = (sa0 & 0x01010101) + (sb0 & 0x01010101) + (sa1 & 0x01010101) + (sb1 & 0x01010101)
    lo += (sa2 & 0x01010101) + (sb2 & 0x01010101) + (sa3 & 0x01010101) + (sb3 & 0x01010101)
    hi = ((sa0 >> 1) & 0x01010101) + ((sb0 >> 1) & 0x01010101) + ((sa1 >> 1) & 0x01010101) + ((sb1 >> 1) & 0x01010101)
    hi += ((sa2 >> 1) & 0x01010101) + ((sb2 >> 1) & 0x01010101) + ((sa3 >> 1) & 0x01010101) + ((sb3 >> 1) & 0x01010101)
    return (lo * 0x01010101) >> 24, (hi * 0x01010101) >> 24  # byte sums <= 8: no carries


@triton.jit(do_not_specialize=["seed", "stream"])
def _decode_units_kernel(
    src, dst, st_ptr, cnt_ptr, table_ptr, thr_ptr, NU, U0, NG, GQ, seed, stream,
    CODEC: tl.constexpr, BLOCK: tl.constexpr, WRITE_STATUS: tl.constexpr, ALGEBRAIC: tl.constexpr,
    INJECT: tl.constexpr, BURST_LEN: tl.constexpr, TAIL: tl.constexpr,
):
    # units: Hamming(8,4) aligned groups of 4 stored words, Hamming(7,4) / Golay quads of 4 codec groups
    # (rows of 4 GQ groups); units U0 + [0, NU); NG: output words (Hamming(8,4)'s last unit may hold one)
    u = U0 + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = u < U0 + NU
    key, row = group_key_row(seed, stream, thr_ptr)
    if CODEC == 1:
        n_corr, n_det = _h84_unit(src, dst, st_ptr, u, valid, NG, key, row, WRITE_STATUS, INJECT, BURST_LEN, TAIL)
    elif CODEC == 0:
        n_corr, n_det = _h74_unit(src, dst, st_ptr, u, valid, GQ, key, row, WRITE_STATUS, INJECT, BURST_LEN)
    else:
        n_corr, n_det = _golay_unit(src, dst, st_ptr, table_ptr, u, valid, GQ, key, row, WRITE_STATUS, ALGEBRAIC,
                                    INJECT, BURST_LEN)
    add_counts(cnt_ptr, tl.sum(tl.where(valid, n_corr, 0).to(tl.int32), axis=0),
               tl.sum(tl.where(valid, n_det, 0).to(tl.int32), axis=0))


def _launch_units(args: tuple, flags: dict, cid: int, ng: int, gpr: int, seed: int, stream: int,
                  config: tuple[int, int]) -> None:
    """``_decode_units_kernel`` over ng codec groups: whole units first, then Hamming(8,4)'s half group (ng odd)."""
    block, warps = config
    nu, gq = (ng // 2, 1) if cid == 1 else (ng // 4, gpr // 4)
    if nu:
        _decode_units_kernel[(triton.cdiv(nu, block),)](*args, nu, 0, ng, gq, seed, stream, BLOCK=block, TAIL=False,
                                                         num_warps=warps, **flags)
    if cid == 1 and ng % 2:
        _decode_units_kernel[(1,)](*args, 1, nu, ng, gq, seed, stream, BLOCK=32, TAIL=True, num_warps=1, **flags)


def stored_nbytes(name: str, n: int) -> int:
    """Bytes of one stored row of ``n`` values (``n`` a multiple of ``GROUP_VALUES[name]``)."""
    return {"hamming74": 7 * n // 8, "hamming84": n, "golay2412": n}[name]


def _words(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.int32)


def _check_row(name: str, n: int, last: int, want: int, what: str) -> None:
    if name not in CODEC_IDS:
        raise ValueError(f"unknown codec {name!r}; choose one of: {', '.join(CODEC_IDS)}")
    gv = GROUP_VALUES[name]
    if n <= 0 or n % gv != 0:
        raise ValueError(f"row length n={n} must be a positive multiple of {gv} for the packed {name} kernels")
    if last != want:
        raise ValueError(f"{what} last dim is {last}, expected {want} for n={n} values of {name}")


def encode_packed(
    name: str, packed: torch.Tensor, n: int, out: torch.Tensor | None = None, config: tuple[int, int] | None = None
) -> torch.Tensor:
    """Plain packed INT4 ``[..., n/2]`` (uint8) -> stored layout ``[..., stored_nbytes(n)]`` (uint8)."""
    _check_row(name, n, packed.shape[-1], n // 2, "packed")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed.dtype={packed.dtype} must be torch.uint8")
    cid, nb = CODEC_IDS[name], stored_nbytes(name, n)
    rows = packed.numel() // (n // 2)
    if out is None:
        out = torch.empty(*packed.shape[:-1], nb, dtype=torch.uint8, device=packed.device)
    if out.numel() >= 2**31:
        raise ValueError(f"{out.numel()} stored bytes exceed the int32 indexing of the kernels")
    gpr = n // GROUP_VALUES[name]
    ng = rows * gpr
    if ng:
        block, warps = config or TUNING_ENCODE[cid]
        _encode_packed_kernel[(triton.cdiv(ng, block),)](
            _words(packed), out.view(-1).view(torch.int32), ng, gpr, CODEC=cid, BLOCK=block, num_warps=warps
        )
    return out


def decode_packed(
    name: str,
    stored: torch.Tensor,
    n: int,
    *,
    with_status: bool = True,
    algebraic: bool = False,
    out: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    ber: float = 0.0,
    seed: int = 0,
    model: str = "bsc",
    burst_len: int = 2,
    stream: int = 0,
    config: tuple[int, int] | None = None,
    units: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Stored layout ``[..., stored_nbytes(n)]`` -> (packed INT4 ``[..., n/2]``, status ``[..., m]`` or None, counts).

    ``counts``: int32 [2] (corrected, detected) on the device, added to (pass one to accumulate);
    no host sync happens here. ``algebraic`` selects the algebraic Golay decoder. ``ber > 0`` fuses
    fault injection into the read: every stored int32 word (all 32 bits are stored bits in these
    layouts) is XORed with ``kernels.faults.flip_mask(seed, word index, stream)`` before decoding,
    the same faults as ``inject_triton(stored.view(int32), 32, ber, seed, model, burst_len)``; the
    stored buffer itself is not modified. ``units``: use the aligned-unit decoder (default per codec and path:
    ``UNITS_FOR_DECODE`` / ``UNITS_FOR_INJECT``; Hamming(7,4) and Golay need rows of whole quads, n a multiple
    of 128 / 96, else the group decoder runs); same results either way. ``config``: (groups or units per
    program, warps) of the decoder that runs, default from the ``TUNING_*`` tables.
    """
    _check_row(name, n, stored.shape[-1], stored_nbytes(name, n), "stored")
    if stored.dtype != torch.uint8:
        raise TypeError(f"stored.dtype={stored.dtype} must be torch.uint8")
    cid = CODEC_IDS[name]
    lead = stored.shape[:-1]
    rows = stored.numel() // stored_nbytes(name, n)
    dev = stored.device
    if out is None:
        out = torch.empty(*lead, n // 2, dtype=torch.uint8, device=dev)
    m = n // 3 if cid == 2 else n
    status = torch.empty(*lead, m, dtype=torch.uint8, device=dev) if with_status else None
    if counts is None:
        counts = torch.zeros(2, dtype=torch.int32, device=dev)
    if stored.numel() >= 2**31:
        raise ValueError(f"{stored.numel()} stored bytes exceed the int32 indexing of the kernels")
    gpr = n // GROUP_VALUES[name]
    ng = rows * gpr
    if ng:
        inject = ber > 0
        st = status.view(-1).view(torch.int32) if status is not None else counts
        blen = 1 if model == "bsc" else burst_len
        thr = event_thresholds(event_probability(ber, model, burst_len), 32, dev) if inject else counts
        args = (_words(stored), out.view(-1).view(torch.int32), st, counts, golay_tables(dev), thr)
        flags = {"CODEC": cid, "WRITE_STATUS": with_status, "ALGEBRAIC": algebraic, "INJECT": inject, "BURST_LEN": blen}
        use_units = (UNITS_FOR_INJECT if inject else UNITS_FOR_DECODE)[cid] if units is None else units
        if use_units and (cid == 1 or gpr % 4 == 0):
            _launch_units(args, flags, cid, ng, gpr, seed, stream, config or (TUNING_UNITS_INJECT if inject else TUNING_UNITS)[cid])
        else:
            block, warps = config or (TUNING_INJECT_DECODE if inject else TUNING_DECODE)[cid]
            _decode_packed_kernel[(triton.cdiv(ng, block),)](*args, ng, gpr, seed, stream, BLOCK=block, num_warps=warps,
                                                             **flags)
    return out, status, counts
