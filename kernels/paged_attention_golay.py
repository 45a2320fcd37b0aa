"""Golay(24,12) path of the fused paged decode attention (int12-golay and adaptive's sink pool).

Split from ``kernels.paged_attention`` (launcher, general per-value kernel, split-KV reduce); the
contract is the same. A row of ``D`` values holds ``NC = ceil(D / 3)`` codewords in three byte
planes (``ecc_kv.cache_layout``): byte ``c`` of plane 0 = data bits 0-7 of codeword ``c``, plane 1 =
data bits 8-11 | parity bits 0-3, plane 2 = parity bits 4-11. Per tile:

- codeword ``c`` of K and of V share one 32-bit word (K in bits 0-11, V in bits 16-27) and their
  parity word, so one GF(2) parity evaluation (``kernels.codecs._golay_parity_pair``) gives both
  syndromes;
- a tile whose syndromes are all zero (one reduction tells: the common case) skips correction;
  otherwise the syndrome table (``kernels.codecs.golay_tables``) corrects every codeword and the
  status counts are taken;
- values are the nibbles of the fixed words (``code - 8`` in fp16 by the magic-number trick), kept
  as three parts (value ``3c + i`` in part ``i``) so no in-register interleave is needed: the query
  and the output use the same split and ``q . k`` is three dots;
- the one scale per row multiplies the scores (K) and the probabilities (V).

Rows are 3 * NC bytes (129 at D = 128): no wider-than-byte loads are aligned, so each plane is a
byte gather. ``PREFETCH`` loads the next tile's bytes before the current tile's math (as in
``kernels.paged_attention_words``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels import codecs as kc
from kernels.paged_attention_unpack import _half_nibbles, _nib
from kernels.paged_attention_words import _load_parts, _output_rows, _rows, _split_bounds, _store_parts


@triton.jit
def _planes(data_ptr, row, tmask, NC: tl.constexpr, NCP: tl.constexpr):
    """The three byte planes of the rows at byte offsets ``row``: uint8 [BLOCK_N, NCP] each."""
    c = tl.arange(0, NCP)[None, :]
    m = tmask[:, None] & (c < NC)
    base = data_ptr + row[:, None] + c
    return tl.load(base, mask=m, other=0), tl.load(base + NC, mask=m, other=0), tl.load(base + 2 * NC, mask=m, other=0)


@triton.jit
def _golay_kv(k0, k1, k2, v0, v1, v2, gtab_ptr):
    """Planes of K and V -> (fixed data words: K codes in bits 0-11, V in 16-27; corrected; detected)."""
    a0 = k0.to(tl.uint32)
    a1 = k1.to(tl.uint32)
    b0 = v0.to(tl.uint32)
    b1 = v1.to(tl.uint32)
    x = (a0 | ((a1 & 15) << 8)) | ((b0 | ((b1 & 15) << 8)) << 16)
    y = ((a1 >> 4) | (k2.to(tl.uint32) << 4)) | (((b1 >> 4) | (v2.to(tl.uint32) << 4)) << 16)
    syn = kc._golay_parity_pair(x) ^ y  # two syndromes, 16 bits apart
    n_corr = tl.zeros([], dtype=tl.int32)
    n_det = tl.zeros([], dtype=tl.int32)
    if tl.max(tl.max(syn, axis=1), axis=0) != 0:  # rare: correct through the syndrome table
        sa = syn & 0xFFF
        sb = syn >> 16
        ea = tl.load(gtab_ptr + sa, mask=sa != 0, other=0).to(tl.uint32)
        eb = tl.load(gtab_ptr + sb, mask=sb != 0, other=0).to(tl.uint32)
        x = x ^ ((ea & 0xFFF) | ((eb & 0xFFF) << 16))
        sta = ea >> 12
        stb = eb >> 12
        n_corr = tl.sum(tl.sum((sta == 1).to(tl.int32) + (stb == 1).to(tl.int32), axis=1), axis=0)
        n_det = tl.sum(tl.sum((sta == 2).to(tl.int32) + (stb == 2).to(tl.int32), axis=1), axis=0)
    return x, n_corr, n_det


@triton.jit
def _plane_words(data_ptr, start, tmask, limit, NW: tl.constexpr, NWP: tl.constexpr):
    """Aligned words i and i + 1 around plane bytes ``start + 4i``: int32 [BLOCK_N, NWP, 2].

    ``data_ptr`` is 4-byte aligned and the view ends on a word boundary (host check), so no load
    leaves ``[0, limit)``; a word wholly past ``limit`` is never needed (and not loaded).
    """
    al = start - (start & 3)
    i = tl.arange(0, NWP)[None, :, None]
    k = tl.arange(0, 2)[None, None, :]
    off = al[:, None, None] + 4 * (i + k)
    m = tmask[:, None, None] & (i < NW) & (off + 4 <= limit)
    return tl.load((data_ptr + off).to(tl.pointer_type(tl.int32)), mask=m, other=0)


@triton.jit
def _funnel(ab, start, NC: tl.constexpr, NWP: tl.constexpr):
    """Word pairs of ``_plane_words`` -> the plane's bytes ``4i .. 4i + 3`` as uint32 [BLOCK_N, NWP].

    Bytes past the plane (codewords >= NC) are zeroed: a zero codeword is clean.
    """
    a, b = tl.split(ab.to(tl.uint32, bitcast=True))
    sh = ((start & 3) * 8).to(tl.uint32)[:, None]
    nv = tl.minimum(tl.maximum(NC - 4 * tl.arange(0, NWP), 0), 4).to(tl.int64)  # valid bytes per word
    keep = ((tl.full([NWP], 1, tl.int64) << (8 * nv)) - 1).to(tl.uint32)
    return ((a >> sh) | ((b << (31 - sh)) << 1)) & keep[None, :]  # two shifts: no shift by 32 when aligned


@triton.jit
def _fix(x, syn, gtab_ptr):
    """Correct the two codewords of each pair word through the syndrome table: (x, corrected, detected)."""
    sa = syn & 0xFFF
    sb = syn >> 16
    ea = tl.load(gtab_ptr + sa, mask=sa != 0, other=0).to(tl.uint32)
    eb = tl.load(gtab_ptr + sb, mask=sb != 0, other=0).to(tl.uint32)
    sta = ea >> 12
    stb = eb >> 12
    n_corr = tl.sum(tl.sum((sta == 1).to(tl.int32) + (stb == 1).to(tl.int32), axis=1), axis=0)
    n_det = tl.sum(tl.sum((sta == 2).to(tl.int32) + (stb == 2).to(tl.int32), axis=1), axis=0)
    return x ^ ((ea & 0xFFF) | ((eb & 0xFFF) << 16)), n_corr, n_det


@triton.jit
def _pairs(p0, p1, p2):
    """Plane words (byte lane e of word i = codeword 4i + e) -> data/parity pair words of codewords (4i, 4i+2), (4i+1, 4i+3)."""
    x02 = (p0 & 0x00FF00FF) | ((p1 & 0x000F000F) << 8)
    y02 = ((p1 >> 4) & 0x000F000F) | ((p2 & 0x00FF00FF) << 4)
    x13 = ((p0 >> 8) & 0x00FF00FF) | (((p1 >> 8) & 0x000F000F) << 8)
    y13 = ((p1 >> 12) & 0x000F000F) | (((p2 >> 8) & 0x00FF00FF) << 4)
    return x02, y02, x13, y13


@triton.jit
def _golay_words_kv(k0, k1, k2, v0, v1, v2, row, gtab_ptr, NC: tl.constexpr, NWP: tl.constexpr):
    """Word pairs of K's and V's planes -> fixed pair words (K 02, K 13, V 02, V 13) and the counts."""
    kx02, ky02, kx13, ky13 = _pairs(_funnel(k0, row, NC, NWP), _funnel(k1, row + NC, NC, NWP),
                                    _funnel(k2, row + 2 * NC, NC, NWP))  # fmt: skip
    vx02, vy02, vx13, vy13 = _pairs(_funnel(v0, row, NC, NWP), _funnel(v1, row + NC, NC, NWP),
                                    _funnel(v2, row + 2 * NC, NC, NWP))  # fmt: skip
    ks02 = kc._golay_parity_pair(kx02) ^ ky02
    ks13 = kc._golay_parity_pair(kx13) ^ ky13
    vs02 = kc._golay_parity_pair(vx02) ^ vy02
    vs13 = kc._golay_parity_pair(vx13) ^ vy13
    n_corr = tl.zeros([], dtype=tl.int32)
    n_det = tl.zeros([], dtype=tl.int32)
    if tl.max(tl.max(ks02 | ks13 | vs02 | vs13, axis=1), axis=0) != 0:  # rare: table correction
        kx02, c0, d0 = _fix(kx02, ks02, gtab_ptr)
        kx13, c1, d1 = _fix(kx13, ks13, gtab_ptr)
        vx02, c2, d2 = _fix(vx02, vs02, gtab_ptr)
        vx13, c3, d3 = _fix(vx13, vs13, gtab_ptr)
        n_corr = c0 + c1 + c2 + c3
        n_det = d0 + d1 + d2 + d3
    return kx02, kx13, vx02, vx13, n_corr, n_det


@triton.jit
def _parts(x02, x13, dtype: tl.constexpr, ASM: tl.constexpr):
    """The three parts of codewords c = 4i + e: part J holds values 3c + J, [BLOCK_N, 4 NWP], column 4i + 2 (e & 1) + (e >> 1).

    Codewords 4i and 4i + 2 share the pair word ``x02`` (and 4i + 1, 4i + 3 ``x13``), so adjacent
    columns are the two halves of one word: one mask and one f16x2 op per two values with ASM.
    """
    a0, a1, a2, c0, c1, c2 = _half_nibbles(x02, ASM)  # codeword 4i (a) and 4i + 2 (c)
    b0, b1, b2, d0, d1, d2 = _half_nibbles(x13, ASM)  # 4i + 1 (b) and 4i + 3 (d); [i, b, a] holds e = 2a + b
    p0 = tl.reshape(tl.join(tl.join(a0, b0), tl.join(c0, d0)), [x02.shape[0], 4 * x02.shape[1]]).to(dtype)
    p1 = tl.reshape(tl.join(tl.join(a1, b1), tl.join(c1, d1)), [x02.shape[0], 4 * x02.shape[1]]).to(dtype)
    p2 = tl.reshape(tl.join(tl.join(a2, b2), tl.join(c2, d2)), [x02.shape[0], 4 * x02.shape[1]]).to(dtype)
    return p0, p1, p2


@triton.jit
def _raw(kd_ptr, vd_ptr, row, tm, limit, NC: tl.constexpr, NCP: tl.constexpr, NW: tl.constexpr,
         NWP: tl.constexpr, WORDS: tl.constexpr):  # fmt: skip
    """The loads of one tile: K's and V's three planes (bytes, or aligned word pairs with WORDS)."""
    if WORDS:
        k0 = _plane_words(kd_ptr, row, tm, limit, NW, NWP)
        k1 = _plane_words(kd_ptr, row + NC, tm, limit, NW, NWP)
        k2 = _plane_words(kd_ptr, row + 2 * NC, tm, limit, NW, NWP)
        v0 = _plane_words(vd_ptr, row, tm, limit, NW, NWP)
        v1 = _plane_words(vd_ptr, row + NC, tm, limit, NW, NWP)
        v2 = _plane_words(vd_ptr, row + 2 * NC, tm, limit, NW, NWP)
    else:
        k0, k1, k2 = _planes(kd_ptr, row, tm, NC, NCP)
        v0, v1, v2 = _planes(vd_ptr, row, tm, NC, NCP)
    return k0, k1, k2, v0, v1, v2


@triton.jit
def _tile(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt_ptr, t0, end, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh,
          stride_st, limit, BS: tl.constexpr, BLOCK_N: tl.constexpr, NC: tl.constexpr, NCP: tl.constexpr,
          NW: tl.constexpr, NWP: tl.constexpr, WORDS: tl.constexpr, I32: tl.constexpr):  # fmt: skip
    """The loads of tokens t0 .. t0 + BLOCK_N - 1 (masked at ``end``): data rows, K and V planes, their scales."""
    t = t0 + tl.arange(0, BLOCK_N)
    tm = t < end
    row, srow = _rows(bt_ptr, t, tm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS, I32)
    k0, k1, k2, v0, v1, v2 = _raw(kd_ptr, vd_ptr, row, tm, limit, NC, NCP, NW, NWP, WORDS)
    ks = tl.load(ks_ptr + srow, mask=tm, other=0.0)
    vs = tl.load(vs_ptr + srow, mask=tm, other=0.0)
    return row, k0, k1, k2, v0, v1, v2, ks, vs


@triton.jit
def _columns(CP: tl.constexpr, WORDS: tl.constexpr):
    """Codeword index of each part column (the word path interleaves codewords 4i + e)."""
    col = tl.arange(0, CP)
    if WORDS:
        col = (col & ~3) | ((col & 1) << 1) | ((col >> 1) & 1)
    return col


@triton.jit(do_not_specialize=["qk_scale", "tok_lo", "tok_hi", "part_tokens", "split_off", "S_TOTAL", "limit"])
def _paged_decode_golay_kernel(
    q_ptr, stride_qb, stride_qh,
    kd_ptr, ks_ptr, vd_ptr, vs_ptr,
    stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st,
    bt_ptr, stride_bt, len_ptr,
    out_ptr, stride_ob, stride_oh,
    pacc_ptr, pml_ptr, cnt_ptr, gtab_ptr,
    qk_scale, tok_lo, tok_hi, part_tokens, split_off, S_TOTAL, limit,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
    NC: tl.constexpr, NCP: tl.constexpr, NW: tl.constexpr, NWP: tl.constexpr, WORDS: tl.constexpr, CP: tl.constexpr,
    PARTIAL: tl.constexpr, COUNT: tl.constexpr, PREFETCH: tl.constexpr, ASM: tl.constexpr = False,
    I32: tl.constexpr = False,
):  # fmt: skip
    """Golay rows with one scale per row; same contract as ``kernels.paged_attention._paged_decode_kernel``.

    ``WORDS``: planes read as aligned 32-bit words and realigned in registers (4 codewords per
    word, ``limit`` = bytes of the K/V view); otherwise byte loads (any alignment).
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    seq_len, hi, start, end = _split_bounds(len_ptr, b, s, tok_lo, tok_hi, part_tokens)
    dtype = q_ptr.dtype.element_ty
    g = tl.arange(0, GP)
    gm = g < G
    cw = _columns(CP, WORDS)  # codeword of each part column; part i holds head-dim columns 3 cw + i
    d0 = 3 * cw
    cm = gm[:, None] & (cw < NC)[None, :]
    qrow = q_ptr + b.to(tl.int64) * stride_qb + (h * G + g)[:, None] * stride_qh
    q0, q1, q2 = _load_parts(qrow, d0, cm, D, 3)  # [GP, CP] each
    m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
    l_acc = tl.zeros([GP, BLOCK_N], dtype=tl.float32)
    acc0 = tl.zeros([GP, CP], dtype=tl.float32)
    acc1 = tl.zeros([GP, CP], dtype=tl.float32)
    acc2 = tl.zeros([GP, CP], dtype=tl.float32)
    n_corr = tl.zeros([], dtype=tl.int32)
    n_det = tl.zeros([], dtype=tl.int32)
    bt = bt_ptr + b.to(tl.int64) * stride_bt
    if PREFETCH:
        row, k0, k1, k2, v0, v1, v2, ks, vs = _tile(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, start, end, h, stride_db,
                                                    stride_dh, stride_dt, stride_sb, stride_sh, stride_st, limit,
                                                    BS, BLOCK_N, NC, NCP, NW, NWP, WORDS, I32)  # fmt: skip
    for t0 in range(start, end, BLOCK_N):
        tm = (t0 + tl.arange(0, BLOCK_N)) < end
        if PREFETCH:
            rown, k0n, k1n, k2n, v0n, v1n, v2n, ksn, vsn = _tile(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0 + BLOCK_N, end,
                                                                h, stride_db, stride_dh, stride_dt, stride_sb,
                                                                stride_sh, stride_st, limit, BS, BLOCK_N, NC, NCP,
                                                                NW, NWP, WORDS, I32)  # fmt: skip
        else:
            row, k0, k1, k2, v0, v1, v2, ks, vs = _tile(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0, end, h, stride_db,
                                                        stride_dh, stride_dt, stride_sb, stride_sh, stride_st, limit,
                                                        BS, BLOCK_N, NC, NCP, NW, NWP, WORDS, I32)  # fmt: skip
        if WORDS:
            kx02, kx13, vx02, vx13, nc_, nd_ = _golay_words_kv(k0, k1, k2, v0, v1, v2, row, gtab_ptr, NC, NWP)
            kp0, kp1, kp2 = _parts(kx02, kx13, dtype, ASM)
            qk = tl.dot(q0, tl.trans(kp0))  # [GP, BLOCK_N] fp32
            qk += tl.dot(q1, tl.trans(kp1))
            qk += tl.dot(q2, tl.trans(kp2))
        else:
            x, nc_, nd_ = _golay_kv(k0, k1, k2, v0, v1, v2, gtab_ptr)
            qk = tl.dot(q0, tl.trans(_nib(x, 0, dtype)))
            qk += tl.dot(q1, tl.trans(_nib(x, 1, dtype)))
            qk += tl.dot(q2, tl.trans(_nib(x, 2, dtype)))
        qk = tl.where(tm[None, :], qk * (ks.to(tl.float32) * qk_scale)[None, :], float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_acc = l_acc * alpha[:, None] + p  # per-column running sums, reduced once after the loop
        m_i = m_new
        pv = (p * vs.to(tl.float32)[None, :]).to(dtype)
        if WORDS:
            vp0, vp1, vp2 = _parts(vx02, vx13, dtype, ASM)
            acc0 = acc0 * alpha[:, None] + tl.dot(pv, vp0)  # [GP, CP]
            acc1 = acc1 * alpha[:, None] + tl.dot(pv, vp1)
            acc2 = acc2 * alpha[:, None] + tl.dot(pv, vp2)
        else:
            acc0 = acc0 * alpha[:, None] + tl.dot(pv, _nib(x, 4, dtype))
            acc1 = acc1 * alpha[:, None] + tl.dot(pv, _nib(x, 5, dtype))
            acc2 = acc2 * alpha[:, None] + tl.dot(pv, _nib(x, 6, dtype))
        n_corr += nc_
        n_det += nd_
        if PREFETCH:
            k0 = k0n
            k1 = k1n
            k2 = k2n
            v0 = v0n
            v1 = v1n
            v2 = v2n
            ks = ksn
            vs = vsn
            row = rown
    l_i = tl.sum(l_acc, axis=1)
    if COUNT:
        kc.add_counts(cnt_ptr, n_corr, n_det)
    ptr, fac = _output_rows(b, h, s, g, gm, m_i, l_i, pacc_ptr, pml_ptr, out_ptr, stride_ob, stride_oh,
                            split_off, S_TOTAL, D, G, PARTIAL)
    _store_parts(ptr, fac, acc0, acc1, acc2, d0, cm, D, 3)
