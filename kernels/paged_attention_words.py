"""Packed-word path of the fused paged decode attention: raw INT4, Hamming(8,4) and Hamming(7,4) rows.

Split from ``kernels.paged_attention`` (the launcher, the general per-value kernel and the split-KV
reduce live there); the contract is the same. Every codec is first turned into packed INT4 words
(8 values per uint32, one SWAR correction step per 8 codewords), then one shared unpack gives the
``[BLOCK_N, D]`` tile of ``code - 8`` values in fp16/bf16 and one ``tl.dot`` per operand; the one
scale per row multiplies the scores (K) and the probabilities (V) instead of every value. The
decode and unpack device functions (PTX nibble conversion with its plain twin, the Hamming SWAR
steps, the column order) are in ``kernels.paged_attention_unpack``.

- ``TRANS``: the tile is the M side of both dots (scores ``[BLOCK_N, GP]``, ``acc`` ``[D, GP]``): on
  sm_90 Triton issues wgmma with the dequantized tile from registers.
- ``LAZY`` (Hamming(8,4)): syndromes always, corrections, flags and counts only in a tile with a
  non-codeword (one tile-wide OR); that rare branch reloads the tile, so the common path keeps
  neither raw words nor syndromes live (168 registers at head_dim 128: 3 programs per SM).
- The softmax row sums are kept per score element and reduced once after the loop.
- Interpolation (Hamming modes): a tile with a detected codeword (rare; one reduction tells) is
  rebuilt scaled, with each detected value replaced by the mean of the neighbouring tokens' good
  values (``ecc_kv.interp``, window 1); its row-scale multipliers become 1.

Why it is shaped this way (H100 measurements in ``docs/paged_cache.md``): the loop is bound by
load latency and instruction issue, not by bytes. With ``PREFETCH`` the raw words of tile ``i + 1``
are loaded (block-table gather included) before tile ``i`` is decoded (register double buffering:
Triton's pipeliner does not overlap this gather -> load -> decode chain).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels import codecs as kc
from kernels.paged_attention_unpack import (
    _any,
    _columns,
    _count_pair,
    _h84_decode,
    _h84_dirty,
    _h84_raw,
    _h84_syndromes,
    _unpack,
    _unpack_flags,
    _words_of,
)


@triton.jit
def _rows(bt_ptr, t, tmask, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS: tl.constexpr,
          I32: tl.constexpr = False):  # fmt: skip
    """Offsets of the data and scale rows of tokens ``t`` (gathered through the block table).

    ``t`` >= 0 wherever ``tmask`` holds, so the block and the offset in it are taken unsigned (a shift
    and a mask, not a signed division). ``I32``: every offset fits in int32 (host check), so the
    row arithmetic stays 32-bit; otherwise int64.
    """
    tu = t.to(tl.uint32)
    phys = tl.load(bt_ptr + (tu // BS).to(tl.int32), mask=tmask, other=0)
    off = (tu % BS).to(tl.int32)
    if I32:
        row = phys * stride_db + h * stride_dh + off * stride_dt
        srow = phys * stride_sb + h * stride_sh + off * stride_st
    else:
        phys = phys.to(tl.int64)
        off = off.to(tl.int64)
        row = phys * stride_db + h * stride_dh + off * stride_dt
        srow = phys * stride_sb + h * stride_sh + off * stride_st
    return row, srow


@triton.jit
def _raw_tile(data_ptr, row, tmask, CODEC: tl.constexpr, DW: tl.constexpr, DWP: tl.constexpr):
    """Raw loads of the rows at byte offsets ``row``, issued ahead of their decode.

    CODEC 0 (INT4): int32 ``[BLOCK_N, DWP]``; 1 (Hamming(8,4)): int64 ``[BLOCK_N, DWP]`` (8 codeword
    bytes each); 2 (Hamming(7,4), any D % 8 == 0):
    uint8 ``[BLOCK_N, DWP, 8]`` (byte ``7g + j``, ``j = 7`` reads nothing); 3 (Hamming(7,4),
    D % 32 == 0): int32 ``[BLOCK_N, DWP / 4, 8]``, the 7 words of each 4-group supergroup.
    """
    if CODEC == 0:
        base = (data_ptr + row[:, None]).to(tl.pointer_type(tl.int32))
        w = tl.arange(0, DWP)[None, :]
        raw = tl.load(base + w, mask=tmask[:, None] & (w < DW), other=-2004318072)  # 0x88888888: zeros
    elif CODEC == 1:  # one 64-bit load per 8 codewords: the two words split without a reshape
        base = (data_ptr + row[:, None]).to(tl.pointer_type(tl.int64))
        w = tl.arange(0, DWP)[None, :]
        raw = tl.load(base + w, mask=tmask[:, None] & (w < DW), other=0)
    elif CODEC == 2:
        g = tl.arange(0, DWP)[None, :, None]
        j = tl.arange(0, 8)[None, None, :]
        m = tmask[:, None, None] & (g < DW) & (j < 7)
        raw = tl.load(data_ptr + row[:, None, None] + 7 * g + j, mask=m, other=0)
    else:  # Hamming(7,4), D % 32 == 0: 4 groups (28 bytes) = 7 aligned words per supergroup
        sg = tl.arange(0, DWP // 4)[None, :, None]
        w = tl.arange(0, 8)[None, None, :]
        base = (data_ptr + row[:, None, None]).to(tl.pointer_type(tl.int32))
        raw = tl.load(base + 7 * sg + w, mask=tmask[:, None, None] & (sg < DW // 4) & (w < 7), other=0)
    return raw


@triton.jit
def _tile_words(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt_ptr, t0, end, h, stride_db, stride_dh, stride_dt, stride_sb,
                stride_sh, stride_st, BS: tl.constexpr, BLOCK_N: tl.constexpr, CODEC: tl.constexpr,
                DW: tl.constexpr, DWP: tl.constexpr, I32: tl.constexpr):  # fmt: skip
    """The loads of tokens t0 .. t0 + BLOCK_N - 1 (masked at ``end``): K and V raw words, then their scales."""
    t = t0 + tl.arange(0, BLOCK_N)
    tm = t < end
    row, srow = _rows(bt_ptr, t, tm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS, I32)
    kr = _raw_tile(kd_ptr, row, tm, CODEC, DW, DWP)
    vr = _raw_tile(vd_ptr, row, tm, CODEC, DW, DWP)
    return kr, vr, tl.load(ks_ptr + srow, mask=tm, other=0.0), tl.load(vs_ptr + srow, mask=tm, other=0.0)


@triton.jit
def _scaled(words, scale_ptr, srow, tmask, dtype: tl.constexpr, DWP: tl.constexpr):
    """Dequantized values (code - 8) * scale rounded once to ``dtype``, as ``ecc_kv.quant`` does."""
    s = tl.load(scale_ptr + srow, mask=tmask, other=0.0).to(tl.float32)
    return (_unpack(words, tl.float32, DWP) * s[:, None]).to(dtype)


@triton.jit
def _interp_words(x, bad, data_ptr, scale_ptr, bt_ptr, t, tmask, lo, hi, h,
                  stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, dtype: tl.constexpr,
                  BS: tl.constexpr, CODEC: tl.constexpr, DW: tl.constexpr, DWP: tl.constexpr):  # fmt: skip
    """Detected values of the scaled tile ``x`` -> mean of the same channel at tokens t - 1 and t + 1.

    Mirrors ``ecc_kv.interp.interpolate_detected`` (window 1): a neighbour outside ``[lo, hi)`` or
    detected itself is left out; no usable neighbour gives 0; the mean of the dtype-rounded
    neighbours is taken in fp32 and rounded once.
    """
    pm = tmask & (t - 1 >= lo)
    prow, psrow = _rows(bt_ptr, t - 1, pm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
    pw, _pc, pd = _words_of(_raw_tile(data_ptr, prow, pm, CODEC, DW, DWP), CODEC, DWP)
    xp = _scaled(pw, scale_ptr, psrow, pm, dtype, DWP).to(tl.float32)
    okp = pm[:, None] & (_unpack_flags(pd, DWP) == 0)
    nm = tmask & (t + 1 < hi)
    nrow, nsrow = _rows(bt_ptr, t + 1, nm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
    nw, _nc, nd = _words_of(_raw_tile(data_ptr, nrow, nm, CODEC, DW, DWP), CODEC, DWP)
    xn = _scaled(nw, scale_ptr, nsrow, nm, dtype, DWP).to(tl.float32)
    okn = nm[:, None] & (_unpack_flags(nd, DWP) == 0)
    cnt = okp.to(tl.float32) + okn.to(tl.float32)
    tot = tl.where(okp, xp, 0.0) + tl.where(okn, xn, 0.0)
    rep = tl.where(cnt > 0, tot / tl.maximum(cnt, 1.0), 0.0)
    return tl.where(bad & tmask[:, None], rep.to(dtype), x)


@triton.jit
def _attend_tile(q, kx, kmul, vx, vmul, tm, m_i, l_acc, acc, qk_scale, dtype: tl.constexpr, WHOLE: tl.constexpr,
                 TRANS: tl.constexpr):  # fmt: skip
    """Online-softmax step over one tile: values kx, vx [N, 8 DWP], per-row multipliers kmul, vmul [N] fp32.

    ``l_acc``: running sums per score element (``WHOLE``: the tile is BLOCK_N wide) or in the first
    token slot (a sub-tile); the kernel reduces it once after the loop, so no row sum (shuffles, a
    cross-warp exchange and its barriers) is taken per tile. ``TRANS``: the tile is the M side of
    both dots (scores [N, GP], ``acc`` [8 DWP, GP]): on sm_90 Triton then issues wgmma with the
    values from registers; otherwise scores [GP, N], ``acc`` [GP, 8 DWP].
    """
    if TRANS:
        qk = tl.dot(kx, tl.trans(q))  # [N, GP] fp32
        qk = tl.where(tm[:, None], qk * (kmul * qk_scale)[:, None], float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=0))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[None, :])
        if WHOLE:
            l_acc = l_acc * alpha[None, :] + p
        else:
            first = (tl.arange(0, l_acc.shape[0]) == 0)[:, None]
            l_acc = l_acc * alpha[None, :] + tl.where(first, tl.sum(p, axis=0)[None, :], 0.0)
        pv = (p * vmul[:, None]).to(dtype)
        acc = acc * alpha[None, :] + tl.dot(tl.trans(vx), pv)  # [8 DWP, GP]
    else:
        qk = tl.dot(q, tl.trans(kx))  # [GP, N] fp32
        qk = tl.where(tm[None, :], qk * (kmul * qk_scale)[None, :], float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        if WHOLE:
            l_acc = l_acc * alpha[:, None] + p
        else:
            first = (tl.arange(0, l_acc.shape[1]) == 0)[None, :]
            l_acc = l_acc * alpha[:, None] + tl.where(first, tl.sum(p, axis=1)[:, None], 0.0)
        pv = (p * vmul[None, :]).to(dtype)
        acc = acc * alpha[:, None] + tl.dot(pv, vx)  # [GP, 8 DWP]
    return m_new, l_acc, acc


@triton.jit
def _interp_operand(data_ptr, scale_ptr, bt_ptr, t, tm, lo, hi, h,
                    stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, dtype: tl.constexpr,
                    BS: tl.constexpr, CODEC: tl.constexpr, DW: tl.constexpr, DWP: tl.constexpr):  # fmt: skip
    """Scaled values of the rows of tokens ``t`` with detected values interpolated: [N, 8 DWP] in dtype."""
    row, srow = _rows(bt_ptr, t, tm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
    words, _c, det = _words_of(_raw_tile(data_ptr, row, tm, CODEC, DW, DWP), CODEC, DWP)
    x = _scaled(words, scale_ptr, srow, tm, dtype, DWP)
    if tl.max(tl.max(det, axis=1), axis=0) != 0:
        x = _interp_words(x, _unpack_flags(det, DWP), data_ptr, scale_ptr, bt_ptr, t, tm, lo, hi, h,
                          stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, dtype,
                          BS, CODEC, DW, DWP)  # fmt: skip
    return x


@triton.jit
def _interp_step(q, m_i, l_i, acc, kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt_ptr, t0, end, lo, hi, h,
                 stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, qk_scale, dtype: tl.constexpr,
                 BS: tl.constexpr, CODEC: tl.constexpr, DW: tl.constexpr, DWP: tl.constexpr,
                 BLOCK_N: tl.constexpr, SUB: tl.constexpr, TRANS: tl.constexpr):  # fmt: skip
    """The tile at ``t0`` again, from memory, in sub-tiles of SUB tokens, with interpolation (rare path).

    Sub-tiles keep this path's registers (neighbour rows, flags, fp32 means) small, so the
    common path keeps its occupancy.
    """
    for r0 in range(0, BLOCK_N, SUB):
        t = t0 + r0 + tl.arange(0, SUB)
        tm = t < end
        kx = _interp_operand(kd_ptr, ks_ptr, bt_ptr, t, tm, lo, hi, h, stride_db, stride_dh, stride_dt,
                             stride_sb, stride_sh, stride_st, dtype, BS, CODEC, DW, DWP)  # fmt: skip
        vx = _interp_operand(vd_ptr, vs_ptr, bt_ptr, t, tm, lo, hi, h, stride_db, stride_dh, stride_dt,
                             stride_sb, stride_sh, stride_st, dtype, BS, CODEC, DW, DWP)  # fmt: skip
        one = tl.where(tm, 1.0, 0.0)
        m_i, l_i, acc = _attend_tile(q, kx, one, vx, one, tm, m_i, l_i, acc, qk_scale, dtype, False, TRANS)
    return m_i, l_i, acc


@triton.jit
def _split_bounds(len_ptr, b, s, tok_lo, tok_hi, part_tokens):
    """(sequence length, end of the token range, first token, end token) of split ``s`` of sequence ``b``."""
    seq_len = tl.load(len_ptr + b)
    hi = tl.minimum(seq_len, tok_hi)
    start = tok_lo + s * part_tokens
    return seq_len, hi, start, tl.minimum(start + part_tokens, hi)


@triton.jit
def _output_rows(b, h, s, g, gm, m_i, l_i, pacc_ptr, pml_ptr, out_ptr, stride_ob, stride_oh, split_off, S_TOTAL, D,
                 G: tl.constexpr, PARTIAL: tl.constexpr):
    """(row pointers [GP, 1], factor [GP, 1]) for the accumulators of query heads ``h * G + g``.

    A split of a split-KV launch (``PARTIAL``) stores its running max and sum for the reduce
    kernel and writes its accumulators unnormalised (factor 1) to the scratch rows; a single
    split writes the normalised output (factor 1 / l) straight to ``out``.
    """
    hq = h * G + g
    if PARTIAL:
        base = (b.to(tl.int64) * (G * tl.num_programs(1)) + hq) * S_TOTAL + split_off + s  # [GP]
        tl.store(pml_ptr + base * 2, m_i, mask=gm)
        tl.store(pml_ptr + base * 2 + 1, l_i, mask=gm)
        ptr = pacc_ptr + base[:, None] * D
        fac = tl.full(l_i.shape, 1.0, tl.float32)[:, None]
    else:
        ptr = out_ptr + b.to(tl.int64) * stride_ob + hq[:, None] * stride_oh
        fac = tl.where(l_i > 0, 1.0 / l_i, 0.0)[:, None]
    return ptr, fac


@triton.jit
def _load_parts(ptr, d0, cm, D, R: tl.constexpr):
    """Columns ``d0 + i`` (i < R) of the rows at ``ptr`` [GP, 1], masked by ``cm`` and D; parts past R repeat part 0."""
    x0 = tl.load(ptr + d0[None, :], mask=cm & (d0 < D)[None, :], other=0.0)
    x1 = x0
    x2 = x0
    if R > 1:
        x1 = tl.load(ptr + (d0 + 1)[None, :], mask=cm & (d0 + 1 < D)[None, :], other=0.0)
    if R > 2:
        x2 = tl.load(ptr + (d0 + 2)[None, :], mask=cm & (d0 + 2 < D)[None, :], other=0.0)
    return x0, x1, x2


@triton.jit
def _store_parts(ptr, fac, acc0, acc1, acc2, d0, cm, D, R: tl.constexpr):
    """Inverse of ``_load_parts``: accumulators times ``fac`` (``_output_rows``) to columns ``d0 + i``, i < R."""
    ety = ptr.dtype.element_ty
    tl.store(ptr + d0[None, :], (acc0 * fac).to(ety), mask=cm & (d0 < D)[None, :])
    if R > 1:
        tl.store(ptr + (d0 + 1)[None, :], (acc1 * fac).to(ety), mask=cm & (d0 + 1 < D)[None, :])
    if R > 2:
        tl.store(ptr + (d0 + 2)[None, :], (acc2 * fac).to(ety), mask=cm & (d0 + 2 < D)[None, :])


@triton.jit(do_not_specialize=["qk_scale", "tok_lo", "tok_hi", "part_tokens", "split_off", "S_TOTAL"])
def _paged_decode_words_kernel(
    q_ptr, stride_qb, stride_qh,
    kd_ptr, ks_ptr, vd_ptr, vs_ptr,
    stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st,
    bt_ptr, stride_bt, len_ptr,
    out_ptr, stride_ob, stride_oh,
    pacc_ptr, pml_ptr, cnt_ptr,
    qk_scale, tok_lo, tok_hi, part_tokens, split_off, S_TOTAL,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
    CODEC: tl.constexpr, DW: tl.constexpr, DWP: tl.constexpr, PARTIAL: tl.constexpr, COUNT: tl.constexpr,
    INTERP: tl.constexpr, PREFETCH: tl.constexpr, ASM: tl.constexpr = False, I32: tl.constexpr = False,
    TRANS: tl.constexpr = False, LAZY: tl.constexpr = False,
):  # fmt: skip
    """Raw INT4 / Hamming(8,4) / Hamming(7,4) rows with one scale per row (D % 8 == 0).

    Same contract as ``kernels.paged_attention._paged_decode_kernel``. With ``PREFETCH`` the raw
    words and scales of the next tile are loaded before the current tile is decoded. ``ASM``:
    inline PTX (compiled kernels only); ``I32``: 32-bit row offsets (the host checked they fit);
    ``TRANS`` and ``LAZY``: see the module docstring.
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    seq_len, hi, start, end = _split_bounds(len_ptr, b, s, tok_lo, tok_hi, part_tokens)
    dtype = q_ptr.dtype.element_ty
    g = tl.arange(0, GP)
    gm = g < G
    col = _columns(DWP, CODEC)  # [8 DWP] head-dim index of each column
    qm = gm[:, None] & (col < D)[None, :]
    # q: [GP, 8 DWP] in the unpacked column order (rows past G and columns past D are zero)
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + (h * G + g)[:, None] * stride_qh + col[None, :], mask=qm, other=0.0)
    m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
    if TRANS:
        l_acc = tl.zeros([BLOCK_N, GP], dtype=tl.float32)  # running sums per score, reduced after the loop
        acc = tl.zeros([8 * DWP, GP], dtype=tl.float32)
    else:
        l_acc = tl.zeros([GP, BLOCK_N], dtype=tl.float32)
        acc = tl.zeros([GP, 8 * DWP], dtype=tl.float32)
    n_corr = tl.zeros([BLOCK_N, DWP], dtype=tl.int32)
    n_det = tl.zeros([BLOCK_N, DWP], dtype=tl.int32)
    n_corr_s = tl.zeros([], dtype=tl.int32)
    n_det_s = tl.zeros([], dtype=tl.int32)
    bt = bt_ptr + b.to(tl.int64) * stride_bt
    if PREFETCH:  # prologue: raw words and scales of the first tile
        kr, vr, ks, vs = _tile_words(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, start, end, h, stride_db, stride_dh,
                                     stride_dt, stride_sb, stride_sh, stride_st, BS, BLOCK_N, CODEC, DW, DWP, I32)
    for t0 in range(start, end, BLOCK_N):
        tm = (t0 + tl.arange(0, BLOCK_N)) < end
        if PREFETCH:  # the next tile's loads (masked off past the end) go out before this tile's math
            krn, vrn, ksn, vsn = _tile_words(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0 + BLOCK_N, end, h, stride_db,
                                             stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS, BLOCK_N,
                                             CODEC, DW, DWP, I32)
        else:
            kr, vr, ks, vs = _tile_words(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0, end, h, stride_db, stride_dh,
                                         stride_dt, stride_sb, stride_sh, stride_st, BS, BLOCK_N, CODEC, DW, DWP, I32)
        redo = tl.zeros([], dtype=tl.int32)  # INTERP: a detected codeword in this tile
        if CODEC == 1 and LAZY:  # Hamming(8,4): syndromes always, corrections only where a tile needs them
            klo, khi = _h84_raw(kr)
            kw, k0, k1, k2, kodd = _h84_syndromes(klo, khi)
            vlo, vhi = _h84_raw(vr)
            vw, v0, v1, v2, vodd = _h84_syndromes(vlo, vhi)
            if _any(_h84_dirty(k0, k1, k2, kodd) | _h84_dirty(v0, v1, v2, vodd)) != 0:
                # rare: a tile with an error, decoded again from a second load of its rows, so neither
                # the raw words nor the syndromes stay live across the test (registers: occupancy)
                kr2, vr2, _ks2, _vs2 = _tile_words(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0, end, h, stride_db, stride_dh,
                                                   stride_dt, stride_sb, stride_sh, stride_st, BS, BLOCK_N, CODEC, DW,
                                                   DWP, I32)  # fmt: skip
                klo, khi = _h84_raw(kr2)
                kw, kcor, kdet = _h84_decode(klo, khi)
                vlo, vhi = _h84_raw(vr2)
                vw, vcor, vdet = _h84_decode(vlo, vhi)
                if COUNT:  # scalar sums here: per-element counters would hold registers on the common path
                    n_corr_s += tl.sum(tl.sum(_count_pair(kcor, vcor, ASM), axis=1), axis=0)
                    n_det_s += tl.sum(tl.sum(_count_pair(kdet, vdet, ASM), axis=1), axis=0)
                if INTERP:
                    redo = _any(kdet | vdet).to(tl.int32)
        else:
            kw, kcor, kdet = _words_of(kr, CODEC, DWP)
            vw, vcor, vdet = _words_of(vr, CODEC, DWP)
            if COUNT and CODEC != 0:  # per-element running counts: no cross-thread reduction inside the loop
                n_corr += _count_pair(kcor, vcor, ASM)
                n_det += _count_pair(kdet, vdet, ASM)
            if INTERP:
                redo = _any(kdet | vdet).to(tl.int32)
        if INTERP:
            if redo != 0:  # rare: the tile again from memory, with detected values interpolated
                m_i, l_acc, acc = _interp_step(q, m_i, l_acc, acc, kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0, end, tok_lo, hi,
                                               h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st,
                                               qk_scale, dtype, BS, CODEC, DW, DWP, BLOCK_N, 16, TRANS)  # fmt: skip
            else:
                m_i, l_acc, acc = _attend_tile(q, _unpack(kw, dtype, DWP, ASM), ks.to(tl.float32), _unpack(vw, dtype, DWP, ASM),
                                               vs.to(tl.float32), tm, m_i, l_acc, acc, qk_scale, dtype, True, TRANS)  # fmt: skip
        else:
            m_i, l_acc, acc = _attend_tile(q, _unpack(kw, dtype, DWP, ASM), ks.to(tl.float32), _unpack(vw, dtype, DWP, ASM),
                                           vs.to(tl.float32), tm, m_i, l_acc, acc, qk_scale, dtype, True, TRANS)  # fmt: skip
        if PREFETCH:
            kr = krn
            vr = vrn
            ks = ksn
            vs = vsn
    if TRANS:
        l_i = tl.sum(l_acc, axis=0)
        acc = tl.trans(acc)
    else:
        l_i = tl.sum(l_acc, axis=1)
    if COUNT:
        kc.add_counts(cnt_ptr, tl.sum(tl.sum(n_corr, axis=1), axis=0) + n_corr_s,
                      tl.sum(tl.sum(n_det, axis=1), axis=0) + n_det_s)  # fmt: skip
    ptr, fac = _output_rows(b, h, s, g, gm, m_i, l_i, pacc_ptr, pml_ptr, out_ptr, stride_ob, stride_oh,
                            split_off, S_TOTAL, D, G, PARTIAL)
    ptr = ptr + col[None, :]
    tl.store(ptr, (acc * fac).to(ptr.dtype.element_ty), mask=qm)
