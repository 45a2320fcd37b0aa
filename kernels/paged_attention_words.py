"""Packed-word fast path of the fused paged decode attention (raw INT4 and Hamming(8,4) rows).

Split from ``kernels.paged_attention`` (the launcher, the per-value kernel and the split-KV
reduce live there); the contract is the same. Rows are read as 32-bit words, Hamming(8,4) is
corrected 8 codewords per SWAR step, values come out of the nibbles without int->float
conversions, and the one scale per row multiplies the scores (K) and probabilities (V).
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
def _words_tile(data_ptr, row, tmask, CODEC: tl.constexpr, DW: tl.constexpr, DWP: tl.constexpr):
    """Packed INT4 words [BLOCK_N, DWP] (value 8w + j in nibble j) of the rows at byte offsets ``row``.

    Raw INT4 rows are such words already; Hamming(8,4) rows are corrected 8 codewords at a time
    in SWAR (``kernels.codecs.hamming84_decode_word``). Returns (words, corrected, detected).
    """
    w = tl.arange(0, DWP)[None, :]
    m = tmask[:, None] & (w < DW)
    base = (data_ptr + row[:, None]).to(tl.pointer_type(tl.int32))
    if CODEC == 0:
        words = tl.load(base + w, mask=m, other=-2004318072).to(tl.uint32, bitcast=True)  # 0x88888888: zeros
        n_corr = tl.zeros([], dtype=tl.int32)
        n_det = tl.zeros([], dtype=tl.int32)
    else:
        w2 = tl.arange(0, 2 * DWP)[None, :]  # one contiguous (vectorizable) load, then split in registers
        both = tl.load(base + w2, mask=tmask[:, None] & (w2 < 2 * DW), other=0).to(tl.uint32, bitcast=True)
        lo, hi = tl.split(tl.reshape(both, [both.shape[0], DWP, 2]))
        words, odd, det = kc.hamming84_decode_word(lo, hi)
        n_corr = tl.sum(tl.sum(((odd * 0x11111111) >> 28).to(tl.int32), axis=1), axis=0)
        n_det = tl.sum(tl.sum(((det * 0x11111111) >> 28).to(tl.int32), axis=1), axis=0)
    return words, n_corr, n_det


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

    Same contract as ``_paged_decode_kernel``; the row is held as 8 parts (value 8w + j in part j),
    the decode runs on packed 32-bit words, and the per-row scales are applied to the scores
    (K) and to the probabilities (V) instead of to every value.
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
    w = tl.arange(0, DWP)
    d0 = 8 * w
    qrow = q_ptr + b.to(tl.int64) * stride_qb + (h * G + g)[:, None] * stride_qh + d0[None, :]
    qm = gm[:, None] & (w < DW)[None, :]
    q0 = tl.load(qrow + 0, mask=qm, other=0.0)
    q1 = tl.load(qrow + 1, mask=qm, other=0.0)
    q2 = tl.load(qrow + 2, mask=qm, other=0.0)
    q3 = tl.load(qrow + 3, mask=qm, other=0.0)
    q4 = tl.load(qrow + 4, mask=qm, other=0.0)
    q5 = tl.load(qrow + 5, mask=qm, other=0.0)
    q6 = tl.load(qrow + 6, mask=qm, other=0.0)
    q7 = tl.load(qrow + 7, mask=qm, other=0.0)
    m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GP], dtype=tl.float32)
    a0 = tl.zeros([GP, DWP], dtype=tl.float32)
    a1 = tl.zeros([GP, DWP], dtype=tl.float32)
    a2 = tl.zeros([GP, DWP], dtype=tl.float32)
    a3 = tl.zeros([GP, DWP], dtype=tl.float32)
    a4 = tl.zeros([GP, DWP], dtype=tl.float32)
    a5 = tl.zeros([GP, DWP], dtype=tl.float32)
    a6 = tl.zeros([GP, DWP], dtype=tl.float32)
    a7 = tl.zeros([GP, DWP], dtype=tl.float32)
    n_corr = tl.zeros([], dtype=tl.int32)
    n_det = tl.zeros([], dtype=tl.int32)
    bt = bt_ptr + b.to(tl.int64) * stride_bt
    for t0 in range(start, end, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)
        tm = t < end
        row, srow = _rows(bt, t, tm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
        kw, kc_, kd_ = _words_tile(kd_ptr, row, tm, CODEC, DW, DWP)
        vw, vc_, vd_ = _words_tile(vd_ptr, row, tm, CODEC, DW, DWP)
        ks = tl.load(ks_ptr + srow, mask=tm, other=0.0).to(tl.float32)
        vs = tl.load(vs_ptr + srow, mask=tm, other=0.0).to(tl.float32)
        qk = tl.dot(q0, tl.trans(_nib(kw, 0, dtype)))
        qk += tl.dot(q1, tl.trans(_nib(kw, 1, dtype)))
        qk += tl.dot(q2, tl.trans(_nib(kw, 2, dtype)))
        qk += tl.dot(q3, tl.trans(_nib(kw, 3, dtype)))
        qk += tl.dot(q4, tl.trans(_nib(kw, 4, dtype)))
        qk += tl.dot(q5, tl.trans(_nib(kw, 5, dtype)))
        qk += tl.dot(q6, tl.trans(_nib(kw, 6, dtype)))
        qk += tl.dot(q7, tl.trans(_nib(kw, 7, dtype)))
        qk = tl.where(tm[None, :], qk * (ks * qk_scale)[None, :], float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        pv = (p * vs[None, :]).to(dtype)
        al = alpha[:, None]
        a0 = a0 * al + tl.dot(pv, _nib(vw, 0, dtype))
        a1 = a1 * al + tl.dot(pv, _nib(vw, 1, dtype))
        a2 = a2 * al + tl.dot(pv, _nib(vw, 2, dtype))
        a3 = a3 * al + tl.dot(pv, _nib(vw, 3, dtype))
        a4 = a4 * al + tl.dot(pv, _nib(vw, 4, dtype))
        a5 = a5 * al + tl.dot(pv, _nib(vw, 5, dtype))
        a6 = a6 * al + tl.dot(pv, _nib(vw, 6, dtype))
        a7 = a7 * al + tl.dot(pv, _nib(vw, 7, dtype))
        n_corr += kc_ + vc_
        n_det += kd_ + vd_
    if COUNT:
        tl.atomic_add(cnt_ptr, n_corr.to(tl.int64))
        tl.atomic_add(cnt_ptr + 1, n_det.to(tl.int64))
    hq = h * G + g
    if PARTIAL:
        base = (b.to(tl.int64) * (G * tl.num_programs(1)) + hq) * S_TOTAL + split_off + s  # [GP]
        ptr = pacc_ptr + base[:, None] * D + d0[None, :]
        tl.store(pml_ptr + base * 2, m_i, mask=gm)
        tl.store(pml_ptr + base * 2 + 1, l_i, mask=gm)
    else:
        inv = tl.where(l_i > 0, 1.0 / l_i, 0.0)[:, None]
        a0 *= inv
        a1 *= inv
        a2 *= inv
        a3 *= inv
        a4 *= inv
        a5 *= inv
        a6 *= inv
        a7 *= inv
        ptr = out_ptr + b.to(tl.int64) * stride_ob + hq[:, None] * stride_oh + d0[None, :]
    ety = ptr.dtype.element_ty
    tl.store(ptr + 0, a0.to(ety), mask=qm)
    tl.store(ptr + 1, a1.to(ety), mask=qm)
    tl.store(ptr + 2, a2.to(ety), mask=qm)
    tl.store(ptr + 3, a3.to(ety), mask=qm)
    tl.store(ptr + 4, a4.to(ety), mask=qm)
    tl.store(ptr + 5, a5.to(ety), mask=qm)
    tl.store(ptr + 6, a6.to(ety), mask=qm)
    tl.store(ptr + 7, a7.to(ety), mask=qm)
