"""Packed-word fast path of the fused paged decode attention (raw INT4 and Hamming(8,4) rows).

Split from ``kernels.paged_attention`` (the launcher, the per-value kernel and the split-KV
reduce live there); the contract is the same. Rows are read as 32-bit words, Hamming(8,4) is
corrected 8 codewords per SWAR step, values come out of the nibbles without int->float
conversions, and the one scale per row multiplies the scores (K) and probabilities (V).

Why it is shaped this way (H100 measurements in ``docs/paged_cache.md``): the loop is bound by
load latency and register pressure, not by bytes. The raw words of tile ``i + 1`` are loaded
(block-table gather included) before tile ``i`` is decoded, so the loads are in flight while
the current tile is computed (register double buffering; Triton's pipeliner does not overlap
this gather -> load -> decode chain). Each tile is unpacked once to ``[BLOCK_N, D]`` and
multiplied with one ``tl.dot`` per operand instead of eight K=16 dots over nibble planes.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels import codecs as kc


@triton.jit
def _rows(bt_ptr, t, tmask, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS: tl.constexpr):
    """Byte offsets of the data and scale rows of tokens ``t`` (gathered through the block table)."""
    phys = tl.load(bt_ptr + t // BS, mask=tmask, other=0).to(tl.int64)
    off = (t % BS).to(tl.int64)
    row = phys * stride_db + h * stride_dh + off * stride_dt
    srow = phys * stride_sb + h * stride_sh + off * stride_st
    return row, srow


@triton.jit
def _nib(w, J: tl.constexpr, dtype: tl.constexpr):
    """Nibble J of packed words ``w`` (uint32) as the signed INT4 value q = code - 8, exact in fp16.

    fp16 bits 0x6400 | n encode 1024 + n, so no int->float conversion is issued.
    """
    h = (((w >> (4 * J)) & 15) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
    return (h - 1032.0).to(dtype)


@triton.jit
def _raw_tile(data_ptr, row, tmask, CODEC: tl.constexpr, DW: tl.constexpr, DWP: tl.constexpr):
    """Raw int32 words of the rows at byte offsets ``row``: [BLOCK_N, DWP] (INT4) or [BLOCK_N, 2 DWP] (Hamming(8,4)).

    Only the loads, so the caller can issue them one tile ahead of the decode.
    """
    base = (data_ptr + row[:, None]).to(tl.pointer_type(tl.int32))
    if CODEC == 0:
        w = tl.arange(0, DWP)[None, :]
        raw = tl.load(base + w, mask=tmask[:, None] & (w < DW), other=-2004318072)  # 0x88888888: zeros
    else:
        w2 = tl.arange(0, 2 * DWP)[None, :]  # one contiguous (vectorizable) load, split in registers later
        raw = tl.load(base + w2, mask=tmask[:, None] & (w2 < 2 * DW), other=0)
    return raw


@triton.jit
def _words_of(raw, CODEC: tl.constexpr, DWP: tl.constexpr):
    """Raw words of ``_raw_tile`` -> (packed INT4 words [BLOCK_N, DWP] uint32, value 8w + j in nibble j, corrected, detected).

    Hamming(8,4) rows are corrected 8 codewords at a time in SWAR (``kernels.codecs.hamming84_decode_word``).
    """
    if CODEC == 0:
        words = raw.to(tl.uint32, bitcast=True)
        n_corr = tl.zeros([], dtype=tl.int32)
        n_det = tl.zeros([], dtype=tl.int32)
    else:
        both = raw.to(tl.uint32, bitcast=True)
        lo, hi = tl.split(tl.reshape(both, [both.shape[0], DWP, 2]))
        words, odd, det = kc.hamming84_decode_word(lo, hi)
        n_corr = tl.sum(tl.sum(((odd * 0x11111111) >> 28).to(tl.int32), axis=1), axis=0)
        n_det = tl.sum(tl.sum(((det * 0x11111111) >> 28).to(tl.int32), axis=1), axis=0)
    return words, n_corr, n_det


@triton.jit
def _unpack(words, dtype: tl.constexpr, DWP: tl.constexpr):
    """Packed words [BLOCK_N, DWP] -> signed INT4 values [BLOCK_N, 8 DWP] in ``dtype`` (value 8w + j = nibble j of w)."""
    sh = 4 * tl.arange(0, 8).to(tl.uint32)
    x = (words[:, :, None] >> sh[None, None, :]) & 15  # [BLOCK_N, DWP, 8]
    h = (x | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)  # 1024 + code, exact
    return tl.reshape((h - 1032.0).to(dtype), [words.shape[0], 8 * DWP])


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
):  # fmt: skip
    """Fast path for raw INT4 and Hamming(8,4) with one scale per row (D % 8 == 0, no interpolation).

    Same contract as ``_paged_decode_kernel``. The raw words and scales of the next tile are
    loaded before the current tile is decoded (see the module docstring); the per-row scales
    are applied to the scores (K) and to the probabilities (V) instead of to every value.
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    seq_len = tl.load(len_ptr + b)
    hi = tl.minimum(seq_len, tok_hi)
    start = tok_lo + s * part_tokens
    end = tl.minimum(start + part_tokens, hi)
    dtype = q_ptr.dtype.element_ty
    g = tl.arange(0, GP)
    gm = g < G
    dd = tl.arange(0, 8 * DWP)
    qm = gm[:, None] & (dd < D)[None, :]
    # q: [GP, 8 DWP] (rows past G and columns past D are zero)
    q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + (h * G + g)[:, None] * stride_qh + dd[None, :], mask=qm, other=0.0)
    m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GP], dtype=tl.float32)
    acc = tl.zeros([GP, 8 * DWP], dtype=tl.float32)
    n_corr = tl.zeros([], dtype=tl.int32)
    n_det = tl.zeros([], dtype=tl.int32)
    bt = bt_ptr + b.to(tl.int64) * stride_bt
    # prologue: raw words and scales of the first tile
    t = start + tl.arange(0, BLOCK_N)
    tm = t < end
    row, srow = _rows(bt, t, tm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
    kr = _raw_tile(kd_ptr, row, tm, CODEC, DW, DWP)
    vr = _raw_tile(vd_ptr, row, tm, CODEC, DW, DWP)
    ks = tl.load(ks_ptr + srow, mask=tm, other=0.0)
    vs = tl.load(vs_ptr + srow, mask=tm, other=0.0)
    for t0 in range(start, end, BLOCK_N):
        # issue the loads of the next tile (masked off past the end) before touching this one
        tn = t0 + BLOCK_N + tl.arange(0, BLOCK_N)
        tmn = tn < end
        rown, srown = _rows(bt, tn, tmn, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
        krn = _raw_tile(kd_ptr, rown, tmn, CODEC, DW, DWP)
        vrn = _raw_tile(vd_ptr, rown, tmn, CODEC, DW, DWP)
        ksn = tl.load(ks_ptr + srown, mask=tmn, other=0.0)
        vsn = tl.load(vs_ptr + srown, mask=tmn, other=0.0)
        kw, kc_, kd_ = _words_of(kr, CODEC, DWP)
        vw, vc_, vd_ = _words_of(vr, CODEC, DWP)
        qk = tl.dot(q, tl.trans(_unpack(kw, dtype, DWP)))  # [GP, BLOCK_N] fp32
        qk = tl.where(tm[None, :], qk * (ks.to(tl.float32) * qk_scale)[None, :], float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        pv = (p * vs.to(tl.float32)[None, :]).to(dtype)
        acc = acc * alpha[:, None] + tl.dot(pv, _unpack(vw, dtype, DWP))  # [GP, 8 DWP]
        n_corr += kc_ + vc_
        n_det += kd_ + vd_
        kr = krn
        vr = vrn
        ks = ksn
        vs = vsn
        tm = tmn
    if COUNT:
        tl.atomic_add(cnt_ptr, n_corr.to(tl.int64))
        tl.atomic_add(cnt_ptr + 1, n_det.to(tl.int64))
    hq = h * G + g
    if PARTIAL:
        base = (b.to(tl.int64) * (G * tl.num_programs(1)) + hq) * S_TOTAL + split_off + s  # [GP]
        ptr = pacc_ptr + base[:, None] * D + dd[None, :]
        tl.store(pml_ptr + base * 2, m_i, mask=gm)
        tl.store(pml_ptr + base * 2 + 1, l_i, mask=gm)
    else:
        acc = acc * tl.where(l_i > 0, 1.0 / l_i, 0.0)[:, None]
        ptr = out_ptr + b.to(tl.int64) * stride_ob + hq[:, None] * stride_oh + dd[None, :]
    tl.store(ptr, acc.to(ptr.dtype.element_ty), mask=qm)
