"""Fused decode attention over the paged, ECC-protected INT4 KV cache (flash-decoding style).

One query token per sequence. Each program owns one (sequence, KV head, split) and all
``G`` query heads of that KV head (GQA; ``G = 1`` is MHA). Per tile of ``BLOCK_N`` tokens
it gathers the rows through the block table, loads the packed codeword bytes, rebuilds
and decodes the codewords in int32 registers (``kernels.codecs``), optionally replaces
detected values by the mean of their neighbouring tokens, dequantizes and runs an
online-softmax attention step; nothing decoded is written to memory. With more than one
split, partial (max, sum, accumulator) triples go to a small fp32 buffer and a reduce
kernel merges them. Row layouts: ``ecc_kv.cache_layout``. Torch twin:
``ecc_kv.cache_reference.reference_attention``. Rows with one scale per row take a specialised
kernel: raw INT4, Hamming(8,4) (also with interpolation) and Hamming(7,4) the packed-word kernel of
``kernels.paged_attention_words``, Golay the one of ``kernels.paged_attention_golay`` (both decode
once per codeword, one dot per operand part). The per-value kernel here is the general fallback
(group scales, head dims that are not a multiple of 8).

The value tile of one row is held in ``R`` parts so packed layouts never need an
in-register interleave: raw INT4 keeps low/high nibbles apart (``R = 2``, value
``2c + i``), Golay keeps the three values of a codeword apart (``R = 3``, value
``3c + i``); the query and the output use the same split, so ``q . k`` is a sum of ``R``
dot products.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels import codecs as kc
from kernels.cache_write import CODEC_IDS
from kernels.paged_attention_golay import _paged_decode_golay_kernel
from kernels.paged_attention_unpack import _nib
from kernels.paged_attention_words import (
    _load_parts,
    _output_rows,
    _paged_decode_words_kernel,
    _rows,
    _split_bounds,
    _store_parts,
)
from kernels.quant import int4_dequantize


@triton.jit
def _decode_tile(data_ptr, scale_ptr, gtab_ptr, row, srow, tmask, dtype: tl.constexpr,
                 CODEC: tl.constexpr, D: tl.constexpr, NU: tl.constexpr, DR: tl.constexpr,
                 GS: tl.constexpr, NG: tl.constexpr, FOLD: tl.constexpr = False):  # fmt: skip
    """Dequantized parts x0, x1, x2 [BLOCK_N, DR] of the rows at byte offsets ``row``; statuses.

    Returns (x0, x1, x2, status0 [BLOCK_N, DR] int32, corrected, detected) where statuses are
    per codeword (0 clean, 1 corrected, 2 detected) and the counts are over valid codewords.
    ``FOLD``: return q = code - 8 unscaled (the caller applies the one row scale).
    """
    c = tl.arange(0, DR)[None, :]
    r2 = row[:, None]
    m = tmask[:, None] & (c < NU)
    st0 = tl.zeros(m.shape, dtype=tl.int32)
    if CODEC == 0:  # raw INT4, two codes per byte
        byte = tl.load(data_ptr + r2 + c, mask=m, other=0x88).to(tl.int32)
        v0 = byte & 15
        v1 = byte >> 4
        v2 = v0
        st = st0
        vpu = 2
    elif CODEC == 1:  # hamming84, one byte per value
        cw = tl.load(data_ptr + r2 + c, mask=m, other=0).to(tl.int32)
        v0, st = kc.hamming84_decode(cw)
        v0 = v0.to(tl.int32)
        st = st.to(tl.int32)
        v1 = v0
        v2 = v0
        vpu = 1
    elif CODEC == 2:  # hamming74, 8 codewords in 7 bytes
        j = c % 8
        base = data_ptr + r2 + 7 * (c // 8)
        main = tl.load(base + tl.minimum(j, 6), mask=m, other=0).to(tl.int32) & 0x7F
        tail = tl.zeros(m.shape, dtype=tl.int32)
        for bb in tl.static_range(7):
            bit = (tl.load(base + bb, mask=m & (j == 7), other=0).to(tl.int32) >> 7) & 1
            tail = tail | (bit << bb)
        v0, st = kc.hamming74_decode(tl.where(j == 7, tail, main))
        v0 = v0.to(tl.int32)
        st = st.to(tl.int32)
        v1 = v0
        v2 = v0
        vpu = 1
    else:  # golay2412, three byte planes of NU bytes
        p0 = tl.load(data_ptr + r2 + c, mask=m, other=0).to(tl.int32)
        p1 = tl.load(data_ptr + r2 + NU + c, mask=m, other=0).to(tl.int32)
        p2 = tl.load(data_ptr + r2 + 2 * NU + c, mask=m, other=0).to(tl.int32)
        msg, st = kc.golay_decode(p0 | (p1 << 8) | (p2 << 16), gtab_ptr)
        msg = msg.to(tl.int32)
        st = st.to(tl.int32)
        v0 = msg & 15
        v1 = (msg >> 4) & 15
        v2 = (msg >> 8) & 15
        vpu = 3
    st = tl.where(m, st, 0)
    n_corr = tl.sum(tl.sum((st == 1).to(tl.int32), axis=1), axis=0)
    n_det = tl.sum(tl.sum((st == 2).to(tl.int32), axis=1), axis=0)
    x0, x1, x2 = _dequant_parts(v0, v1, v2, scale_ptr, srow, tmask, m, c, vpu, dtype, D, GS, NG, FOLD)
    return x0, x1, x2, st, n_corr, n_det


@triton.jit
def _dequant_parts(v0, v1, v2, scale_ptr, srow, tmask, m, c, vpu: tl.constexpr, dtype: tl.constexpr,
                   D: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr, FOLD: tl.constexpr):  # fmt: skip
    """Codes (int32) of the R parts -> values in ``dtype`` (zero outside the row); FOLD: unscaled q."""
    if FOLD:
        x0 = tl.where(m, _nib(v0.to(tl.uint32), 0, dtype), 0.0).to(dtype)
        x1 = tl.where(m & (vpu * c + 1 < D), _nib(v1.to(tl.uint32), 0, dtype), 0.0).to(dtype)
        x2 = tl.where(m & (vpu * c + 2 < D), _nib(v2.to(tl.uint32), 0, dtype), 0.0).to(dtype)
        return x0, x1, x2
    if NG == 1:
        s = tl.load(scale_ptr + srow, mask=tmask, other=0.0).to(tl.float32)[:, None]
        s0 = s
        s1 = s
        s2 = s
    else:
        s2d = scale_ptr + srow[:, None]
        s0 = tl.load(s2d + tl.minimum(vpu * c, D - 1) // GS, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(s2d + tl.minimum(vpu * c + 1, D - 1) // GS, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(s2d + tl.minimum(vpu * c + 2, D - 1) // GS, mask=m, other=0.0).to(tl.float32)
    x0 = tl.where(m, int4_dequantize(v0, s0), 0.0).to(dtype)
    x1 = tl.where(m & (vpu * c + 1 < D), int4_dequantize(v1, s1), 0.0).to(dtype)
    x2 = tl.where(m & (vpu * c + 2 < D), int4_dequantize(v2, s2), 0.0).to(dtype)
    return x0, x1, x2


@triton.jit
def _golay_kv_tile(kd_ptr, vd_ptr, gtab_ptr, row, tmask, NU: tl.constexpr, DR: tl.constexpr):
    """Golay codes of the K and V rows at once: K's and V's codeword c share one 32-bit word.

    ``kernels.codecs._golay_fix_pair`` computes both syndromes with one parity evaluation and
    corrects each through the syndrome table (loads masked off for clean words). Returns the
    three code parts of K and of V (int32 [BLOCK_N, DR]) and the corrected/detected counts.
    """
    c = tl.arange(0, DR)[None, :]
    r2 = row[:, None]
    m = tmask[:, None] & (c < NU)
    k0 = tl.load(kd_ptr + r2 + c, mask=m, other=0).to(tl.uint32)
    k1 = tl.load(kd_ptr + r2 + NU + c, mask=m, other=0).to(tl.uint32)
    k2 = tl.load(kd_ptr + r2 + 2 * NU + c, mask=m, other=0).to(tl.uint32)
    w0 = tl.load(vd_ptr + r2 + c, mask=m, other=0).to(tl.uint32)
    w1 = tl.load(vd_ptr + r2 + NU + c, mask=m, other=0).to(tl.uint32)
    w2 = tl.load(vd_ptr + r2 + 2 * NU + c, mask=m, other=0).to(tl.uint32)
    data = (k0 | ((k1 & 15) << 8)) | ((w0 | ((w1 & 15) << 8)) << 16)  # 12 data bits of K | V << 16
    par = ((k1 >> 4) | (k2 << 4)) | (((w1 >> 4) | (w2 << 4)) << 16)  # 12 parity bits of K | V << 16
    fixed, st = kc._golay_fix_pair(data, par, gtab_ptr, False)
    st = tl.where(m, st, 0)
    stk = st & 0xFF
    stv = st >> 8
    n_corr = tl.sum(tl.sum((stk == 1).to(tl.int32) + (stv == 1).to(tl.int32), axis=1), axis=0)
    n_det = tl.sum(tl.sum((stk == 2).to(tl.int32) + (stv == 2).to(tl.int32), axis=1), axis=0)
    fk = fixed.to(tl.int32)
    fv = (fixed >> 16).to(tl.int32)
    return fk & 15, (fk >> 4) & 15, (fk >> 8) & 15, fv & 15, (fv >> 4) & 15, (fv >> 8) & 15, n_corr, n_det


@triton.jit
def _interp_tile(x, st, data_ptr, scale_ptr, gtab_ptr, bt_ptr, t, tmask, seq_len, h,
                 stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, dtype: tl.constexpr,
                 BS: tl.constexpr, CODEC: tl.constexpr, D: tl.constexpr, NU: tl.constexpr, DR: tl.constexpr,
                 GS: tl.constexpr, NG: tl.constexpr):  # fmt: skip
    """Replace detected values by the mean of the same channel at the neighbouring tokens.

    Mirrors ``ecc_kv.interp.interpolate_detected`` with window 1: neighbours outside the
    sequence or detected themselves are left out, a value with no usable neighbour becomes 0;
    the mean of the dtype-rounded neighbours is taken in fp32 and rounded once.
    """
    bad = (st == 2) & tmask[:, None]
    if tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0) > 0:
        pm = tmask & (t >= 1)
        prow, psrow = _rows(bt_ptr, t - 1, pm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
        xp, _a, _b, stp, _c, _d = _decode_tile(data_ptr, scale_ptr, gtab_ptr, prow, psrow, pm, dtype, CODEC, D, NU, DR, GS, NG)
        nm = tmask & (t + 1 < seq_len)
        nrow, nsrow = _rows(bt_ptr, t + 1, nm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
        xn, _e, _f, stn, _g, _h = _decode_tile(data_ptr, scale_ptr, gtab_ptr, nrow, nsrow, nm, dtype, CODEC, D, NU, DR, GS, NG)
        okp = pm[:, None] & (stp != 2)
        okn = nm[:, None] & (stn != 2)
        cnt = okp.to(tl.float32) + okn.to(tl.float32)
        tot = tl.where(okp, xp.to(tl.float32), 0.0) + tl.where(okn, xn.to(tl.float32), 0.0)
        rep = tl.where(cnt > 0, tot / tl.maximum(cnt, 1.0), 0.0)
        x = tl.where(bad, rep.to(dtype), x)
    return x


@triton.jit(do_not_specialize=["qk_scale", "tok_lo", "tok_hi", "part_tokens", "split_off", "S_TOTAL"])
def _paged_decode_kernel(
    q_ptr, stride_qb, stride_qh,  # q: [B, HQ, D]
    kd_ptr, ks_ptr, vd_ptr, vs_ptr,  # data [NB, HKV, BS, W] uint8, scale [NB, HKV, BS, NG] fp16 (K, V alike)
    stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st,
    bt_ptr, stride_bt, len_ptr,  # block_tables [B, MAXB] int32, lengths [B] int32
    out_ptr, stride_ob, stride_oh,  # out: [B, HQ, D] (single split)
    pacc_ptr, pml_ptr,  # partial acc [B, HQ, S, D] fp32, (m, l) [B, HQ, S, 2] fp32
    cnt_ptr,  # [2] int64: corrected, detected codewords
    gtab_ptr,  # Golay syndrome table (kernels.codecs.golay_tables)
    qk_scale, tok_lo, tok_hi, part_tokens, split_off, S_TOTAL,
    G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr,
    CODEC: tl.constexpr, R: tl.constexpr, NU: tl.constexpr, DR: tl.constexpr, GS: tl.constexpr, NG: tl.constexpr,
    PARTIAL: tl.constexpr, COUNT: tl.constexpr, INTERP: tl.constexpr, FOLD: tl.constexpr, VPU: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.program_id(2)
    seq_len, hi, start, end = _split_bounds(len_ptr, b, s, tok_lo, tok_hi, part_tokens)
    dtype = q_ptr.dtype.element_ty
    g = tl.arange(0, GP)
    gm = g < G
    c = tl.arange(0, DR)
    qrow = q_ptr + b.to(tl.int64) * stride_qb + (h * G + g)[:, None] * stride_qh
    d0 = R * c
    om = gm[:, None] & (c < NU)[None, :]
    q0, q1, q2 = _load_parts(qrow, d0, om, D, R)
    m_i = tl.full([GP], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([GP], dtype=tl.float32)
    acc0 = tl.zeros([GP, DR], dtype=tl.float32)
    acc1 = tl.zeros([GP, DR], dtype=tl.float32)
    acc2 = tl.zeros([GP, DR], dtype=tl.float32)
    n_corr = tl.zeros([], dtype=tl.int32)
    n_det = tl.zeros([], dtype=tl.int32)
    bt = bt_ptr + b.to(tl.int64) * stride_bt
    cc = tl.arange(0, DR)[None, :]
    for t0 in range(start, end, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)
        tm = t < end
        row, srow = _rows(bt, t, tm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
        # K and V are loaded and decoded before any math so both loads are in flight together
        if CODEC == 3:
            c0, c1, c2, e0, e1, e2, nc_, nd_ = _golay_kv_tile(kd_ptr, vd_ptr, gtab_ptr, row, tm, NU, DR)
            m2 = tm[:, None] & (cc < NU)
            k0, k1, k2 = _dequant_parts(c0, c1, c2, ks_ptr, srow, tm, m2, cc, VPU, dtype, D, GS, NG, FOLD)
            v0, v1, v2 = _dequant_parts(e0, e1, e2, vs_ptr, srow, tm, m2, cc, VPU, dtype, D, GS, NG, FOLD)
        else:
            k0, k1, k2, kst, kc_, kd_ = _decode_tile(kd_ptr, ks_ptr, gtab_ptr, row, srow, tm, dtype, CODEC, D, NU, DR, GS, NG, FOLD)
            v0, v1, v2, vst, vc_, vd_ = _decode_tile(vd_ptr, vs_ptr, gtab_ptr, row, srow, tm, dtype, CODEC, D, NU, DR, GS, NG, FOLD)
            nc_ = kc_ + vc_
            nd_ = kd_ + vd_
            if INTERP:
                k0 = _interp_tile(k0, kst, kd_ptr, ks_ptr, gtab_ptr, bt, t, tm, seq_len, h, stride_db, stride_dh, stride_dt,
                                  stride_sb, stride_sh, stride_st, dtype, BS, CODEC, D, NU, DR, GS, NG)  # fmt: skip
                v0 = _interp_tile(v0, vst, vd_ptr, vs_ptr, gtab_ptr, bt, t, tm, seq_len, h, stride_db, stride_dh, stride_dt,
                                  stride_sb, stride_sh, stride_st, dtype, BS, CODEC, D, NU, DR, GS, NG)  # fmt: skip
        qk = tl.dot(q0, tl.trans(k0))  # [GP, BLOCK_N] fp32
        if R > 1:
            qk += tl.dot(q1, tl.trans(k1))
        if R > 2:
            qk += tl.dot(q2, tl.trans(k2))
        if FOLD:  # one scale per row: scale the scores instead of every value
            kscale = tl.load(ks_ptr + srow, mask=tm, other=0.0).to(tl.float32)
            qk = qk * (kscale * qk_scale)[None, :]
        else:
            qk = qk * qk_scale
        qk = tl.where(tm[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
        if FOLD:
            vscale = tl.load(vs_ptr + srow, mask=tm, other=0.0).to(tl.float32)
            pc = (p * vscale[None, :]).to(dtype)
        else:
            pc = p.to(dtype)
        acc0 = acc0 * alpha[:, None] + tl.dot(pc, v0)
        if R > 1:
            acc1 = acc1 * alpha[:, None] + tl.dot(pc, v1)
        if R > 2:
            acc2 = acc2 * alpha[:, None] + tl.dot(pc, v2)
        n_corr += nc_
        n_det += nd_
    if COUNT:
        kc.add_counts(cnt_ptr, n_corr, n_det)
    ptr, fac = _output_rows(b, h, s, g, gm, m_i, l_i, pacc_ptr, pml_ptr, out_ptr, stride_ob, stride_oh,
                            split_off, S_TOTAL, D, G, PARTIAL)
    _store_parts(ptr, fac, acc0, acc1, acc2, d0, om, D, R)


@triton.jit(do_not_specialize=["HQ", "S_TOTAL"])
def _reduce_kernel(pacc_ptr, pml_ptr, out_ptr, stride_ob, stride_oh, HQ, S_TOTAL,
                   D: tl.constexpr, DP: tl.constexpr, SP: tl.constexpr, SC: tl.constexpr):  # fmt: skip
    """Merge the split partials of one (sequence, query head): out = sum_s w_s acc_s / sum_s w_s l_s.

    The (m, l) pairs of all SP splits fit in registers; the accumulators are summed SC splits at a time.
    """
    b = tl.program_id(0)
    hq = tl.program_id(1)
    s = tl.arange(0, SP)
    sm = s < S_TOTAL
    d = tl.arange(0, DP)
    base0 = (b.to(tl.int64) * HQ + hq) * S_TOTAL
    m = tl.load(pml_ptr + (base0 + s) * 2, mask=sm, other=float("-inf"))
    ls = tl.load(pml_ptr + (base0 + s) * 2 + 1, mask=sm, other=0.0)
    mmax = tl.max(m, axis=0)
    w = tl.where(m > float("-inf"), tl.math.exp2(m - mmax), 0.0)
    den = tl.sum(ls * w, axis=0)
    num = tl.zeros([DP], dtype=tl.float32)
    for c0 in range(0, S_TOTAL, SC):
        sc = c0 + tl.arange(0, SC)
        scm = sc < S_TOTAL
        mc = tl.load(pml_ptr + (base0 + sc) * 2, mask=scm, other=float("-inf"))
        wc = tl.where(mc > float("-inf"), tl.math.exp2(mc - mmax), 0.0)
        acc = tl.load(pacc_ptr + (base0 + sc)[:, None] * D + d[None, :], mask=scm[:, None] & (d < D)[None, :], other=0.0)
        num += tl.sum(acc * wc[:, None], axis=0)
    out = tl.where(den > 0, num / den, 0.0)
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + hq * stride_oh + d, out.to(out_ptr.dtype.element_ty), mask=d < D)


TRANS_DEFAULT = True  # packed-word kernel: tile as the M side of the dots (H100 measurements in docs/paged_cache.md)

_DUMMY: dict[str, torch.Tensor] = {}


def _dummy_counters(device: torch.device) -> torch.Tensor:
    """A placeholder counter tensor (never written: COUNT=False), cached so no launch allocates."""
    key = str(device)
    if key not in _DUMMY:
        _DUMMY[key] = torch.zeros(2, dtype=torch.int64, device=device)
    return _DUMMY[key]



def _word_aligned(kd: torch.Tensor, vd: torch.Tensor) -> bool:
    """Whether byte rows can be read as aligned 32-bit words: contiguous views that start and end on a word."""
    return all(x.is_contiguous() and x.data_ptr() % 4 == 0 and x.numel() % 4 == 0 for x in (kd, vd))


def _fits_i32(*xs: torch.Tensor) -> bool:
    """Whether every element offset into these tensors fits in int32 (the kernels' row arithmetic stays 32-bit)."""
    return all(x.storage_offset() + x.numel() < 2**31 for x in xs)


def _asm_default(device: torch.device) -> bool:
    """Inline PTX where it can run: compiled CUDA kernels (Triton's interpreter cannot execute PTX)."""
    return device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


def _geometry(codec: str | None, d: int) -> tuple[int, int, int]:
    """(codec id, R parts, units per row NU) of a codec at head dim d."""
    cid = CODEC_IDS[codec]
    r = {0: 2, 1: 1, 2: 1, 3: 3}[cid]
    return cid, r, -(-d // r)


def programs_per_sm(codec: str | None, interpolate: bool = False, block_n: int = 64, num_warps: int = 4,
                    lazy: bool = True, head_dim: int = 128) -> int:  # fmt: skip
    """Programs of the specialised kernel that fit on one H100 SM at once (64K registers per SM).

    From sm_90 compiles with triton 3.6 (the GPU's) at ``block_n`` 64 and 4 warps, packed-word
    kernel: head_dim 128 takes 145 registers for raw INT4 and 168 for Hamming(8,4) with lazy
    correction (3 programs), head_dim 64 95 and 128 (5 and 4); Hamming(8,4) correcting every tile,
    with interpolation, Hamming(7,4) and Golay take 180-255 (2). Other shapes: 2 (a safe guess).
    """
    plain = codec is None or (codec == "hamming84" and lazy and not interpolate)
    if block_n != 64 or num_warps != 4 or not plain or head_dim > 128:
        return 2
    if head_dim <= 64:
        return 5 if codec is None else 4
    return 3


def auto_num_splits(batch: int, kv_heads: int, max_len: int, head_dim: int, groups: int, codec: str | None,
                    device: torch.device, *, interpolate: bool = False, block_n: int = 64, num_warps: int = 4,
                    fast: bool = True, trans: bool | None = None, lazy: bool = True) -> int:  # fmt: skip
    """The split count ``paged_decode_attention`` picks when ``num_splits`` is None (``groups``: scale
    groups per row); callers that report it (attention_bench) ask here rather than re-derive it."""
    use_trans = TRANS_DEFAULT if trans is None else bool(trans)
    words_kernel = fast and groups == 1 and head_dim % 8 == 0 and use_trans
    per_sm = programs_per_sm(codec, interpolate, block_n, num_warps, lazy, head_dim) if words_kernel else 2
    return default_num_splits(batch, kv_heads, max_len, block_n, device, per_sm)


def default_num_splits(batch: int, kv_heads: int, max_len: int, block_n: int, device: torch.device,
                       per_sm: int = 2) -> int:  # fmt: skip
    """Splits per (sequence, head) so the grid fills whole waves of ``per_sm`` programs per SM.

    The smallest split count whose programs fill at least 90% of the last wave they need (each
    split at least 4 tiles long), else the one that fills the most. A program of these kernels
    holds one tile ahead in registers, so only 2-3 fit on an SM: a grid a little larger than one
    wave runs a second, nearly empty wave (H100, 1 x 32k Hamming(8,4) at 2 programs per SM: 33
    splits 0.059 ms, 66 splits 0.063 ms, 132 splits 0.072 ms), and more, shorter splits add
    prologues, partial writes and reduce traffic.
    """
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8
    slots = max(1, per_sm * sms)
    heads = max(batch * kv_heads, 1)
    cap = max(1, -(-max_len // (4 * block_n)))  # amortise the prefetch prologue and the partial write
    best, best_fill = 1, 0.0
    for s in range(1, cap + 1):
        progs = heads * s
        fill = progs / (-(-progs // slots) * slots)
        if fill >= 0.9:
            return s
        if fill > best_fill + 1e-9:
            best, best_fill = s, fill
    return best


def paged_decode_attention(
    q: torch.Tensor,
    k_data: torch.Tensor,
    k_scale: torch.Tensor,
    v_data: torch.Tensor,
    v_scale: torch.Tensor,
    block_tables: torch.Tensor,
    lengths: torch.Tensor,
    *,
    sm_scale: float,
    codec: str | None,
    max_len: int,
    interpolate: bool = False,
    sink: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    sink_codec: str | None = None,
    sink_tokens: int = 0,
    counters: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_n: int = 64,
    num_warps: int = 4,
    fast: bool = True,
    prefetch: bool | None = None,
    words: bool | None = None,
    asm: bool | None = None,
    trans: bool | None = None,
    lazy: bool = True,
) -> torch.Tensor:
    """Attention of ``q [B, HQ, D]`` over the paged cache; returns ``[B, HQ, D]`` in q's dtype.

    fp16 and bf16 queries are used as they are; fp32 queries are rounded to fp16 for the dots.

    k_data/v_data: ``[NB, HKV, BS, W]`` uint8 rows (layout of ``codec``); k_scale/v_scale:
    ``[NB, HKV, BS, NG]`` fp16; block_tables ``[B, MAXB]`` int32; lengths ``[B]`` int32 (>= 1);
    ``max_len`` >= max(lengths) (host value, sizes the splits without a sync). ``sink``:
    (k_data, k_scale, v_data, v_scale) of the sink pool holding tokens ``[0, sink_tokens)``
    with ``sink_codec`` (adaptive mode). ``counters``: int64 ``[2]``, corrected and detected
    codewords of this call are added. ``num_splits``: None picks enough to fill the GPU.
    ``fast``: use the specialised kernels where they apply (one scale per row; D % 8 == 0 for
    the packed-word one); False forces the per-value kernel. ``prefetch``: load the next tile
    ahead in registers (None: the per-codec default). ``words``: Golay rows read as aligned words
    (None: when the storage allows it), Hamming(7,4) rows as words when D % 32 == 0; False: byte loads.
    ``asm``: inline PTX for the nibble -> fp16 conversion and the flag counts (None: on compiled CUDA
    kernels; False: the plain-Triton twin, as the interpreter runs; both give the same values).
    ``trans``: packed-word kernel with the tile as the M side of both dots (None: the default,
    ``TRANS_DEFAULT``). ``lazy``: Hamming(8,4) corrections only in tiles with a non-codeword (the
    syndromes are always computed; False corrects every tile).
    """
    if codec not in CODEC_IDS:
        raise ValueError(f"codec={codec!r} is not one of {list(CODEC_IDS)}")
    if block_n < 16 or block_n & (block_n - 1):
        raise ValueError(f"block_n={block_n} must be a power of two >= 16")
    if interpolate and codec not in ("hamming84", "hamming74"):
        raise ValueError(f"interpolate=True needs a Hamming codec, got codec={codec!r}")
    if q.dim() != 3 or q.stride(2) != 1 or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"q must be [B, HQ, D] fp16/bf16/fp32 with a contiguous last dim, got {tuple(q.shape)} {q.dtype}")
    if q.dtype == torch.float32:  # the dots run in fp16 (the cache holds INT4 x fp16 values); result back in fp32
        kw = dict(sm_scale=sm_scale, codec=codec, max_len=max_len, interpolate=interpolate, sink=sink,
                  sink_codec=sink_codec, sink_tokens=sink_tokens, counters=counters, num_splits=num_splits,
                  block_n=block_n, num_warps=num_warps, fast=fast, prefetch=prefetch, words=words, asm=asm,
                  trans=trans, lazy=lazy)  # fmt: skip
        args = (k_data, k_scale, v_data, v_scale, block_tables, lengths)
        return paged_decode_attention(q.to(torch.float16), *args, **kw).to(torch.float32)
    bsz, hq, d = q.shape
    nb, hkv, bs, _ = k_data.shape
    if hq % hkv:
        raise ValueError(f"query heads {hq} must be a multiple of KV heads {hkv}")
    if k_data.stride() != v_data.stride() or k_scale.stride() != v_scale.stride():
        raise ValueError("K and V storage must share strides")
    group = hq // hkv
    ng = k_scale.shape[3]
    gs = d // ng
    out = torch.empty_like(q)
    cnt = counters if counters is not None else _dummy_counters(q.device)
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): the kernel works in exp2
    bt = block_tables.to(torch.int32)
    max_len = max(int(max_len), 1)
    if num_splits is None:
        num_splits = auto_num_splits(bsz, hkv, max_len, d, ng, codec, q.device, interpolate=interpolate,
                                     block_n=block_n, num_warps=num_warps, fast=fast, trans=trans, lazy=lazy)
    num_splits = max(1, min(int(num_splits), -(-max_len // block_n)))
    launches = []  # (codec, storage, tok_lo, tok_hi, splits, split_off)
    if sink is not None:
        launches.append((sink_codec, sink, 0, sink_tokens, 1, 0))
        rest = max(max_len - sink_tokens, 1)
        splits = max(1, min(num_splits, -(-rest // block_n)))
        launches.append((codec, (k_data, k_scale, v_data, v_scale), sink_tokens, 2**31 - 1, splits, 1))
        s_total = 1 + splits
    else:
        launches.append((codec, (k_data, k_scale, v_data, v_scale), 0, 2**31 - 1, num_splits, 0))
        s_total = num_splits
    partial = s_total > 1
    gtab = kc.golay_tables(q.device)
    use_asm = _asm_default(q.device) if asm is None else bool(asm)
    if use_asm and not _asm_default(q.device):
        raise ValueError(f"asm=True needs compiled CUDA kernels (device {q.device}, TRITON_INTERPRET="
                         f"{os.environ.get('TRITON_INTERPRET')!r}); use asm=None or False")
    if partial:
        pacc = torch.empty(bsz, hq, s_total, d, dtype=torch.float32, device=q.device)
        pml = torch.empty(bsz, hq, s_total, 2, dtype=torch.float32, device=q.device)
    else:
        pacc = pml = out  # unused
    for cod, (kd, ks, vd, vs), lo, hi, splits, off in launches:
        cid, r, nu = _geometry(cod, d)
        span = min(hi, max_len) - lo
        part = -(-max(span, 1) // splits)
        part = -(-part // block_n) * block_n
        common = (
            q, q.stride(0), q.stride(1),
            kd, ks, vd, vs, kd.stride(0), kd.stride(1), kd.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
            bt, bt.stride(0), lengths,
            out, out.stride(0), out.stride(1), pacc, pml, cnt,
        )  # fmt: skip
        gp = max(16, triton.next_power_of_2(group))
        pre = True if prefetch is None else prefetch  # next tile loaded ahead by default, every codec
        if fast and ng == 1 and cid in (0, 1, 2) and d % 8 == 0 and (not interpolate or cid in (1, 2)):
            wcodec = 3 if cid == 2 and d % 32 == 0 and words is not False and _word_aligned(kd, vd) else cid  # Hamming(7,4) on aligned words
            _paged_decode_words_kernel[(bsz, hkv, splits)](
                *common, qk_scale, lo, hi, part, off, s_total,
                G=group, GP=gp, D=d, BS=bs, BLOCK_N=block_n,
                CODEC=wcodec, DW=d // 8, DWP=max(2, triton.next_power_of_2(d // 8)),  # dots need 8 DWP >= 16
                PARTIAL=partial, COUNT=counters is not None, INTERP=interpolate, PREFETCH=pre,
                ASM=use_asm, I32=_fits_i32(kd, ks, vd, vs), TRANS=TRANS_DEFAULT if trans is None else bool(trans),
                LAZY=bool(lazy), num_warps=num_warps,
            )  # fmt: skip
            continue
        if fast and ng == 1 and cid == 3:
            nw = -(-nu // 4)
            wds = _word_aligned(kd, vd) if words is None else words
            ncp, nwp = max(16, triton.next_power_of_2(nu)), max(4, triton.next_power_of_2(nw))
            _paged_decode_golay_kernel[(bsz, hkv, splits)](
                *common, gtab, qk_scale, lo, hi, part, off, s_total, kd.numel(),
                G=group, GP=gp, D=d, BS=bs, BLOCK_N=block_n, NC=nu, NCP=ncp,
                NW=nw, NWP=nwp, WORDS=wds, CP=4 * nwp if wds else ncp,
                PARTIAL=partial, COUNT=counters is not None, PREFETCH=pre, ASM=use_asm,
                I32=_fits_i32(kd, ks, vd, vs), num_warps=num_warps,
            )  # fmt: skip
            continue
        # general per-value kernel: its 3-part Golay tiles outgrow shared memory past 64 tokens
        bn = min(block_n, 64)
        part = -(-part // bn) * bn
        _paged_decode_kernel[(bsz, hkv, splits)](
            *common, gtab, qk_scale, lo, hi, part, off, s_total,
            G=group, GP=gp, D=d, BS=bs, BLOCK_N=bn,
            CODEC=cid, R=r, NU=nu, DR=max(16, triton.next_power_of_2(nu)), GS=gs, NG=ng,
            PARTIAL=partial, COUNT=counters is not None, INTERP=interpolate, FOLD=ng == 1 and not interpolate, VPU=r,
            num_warps=num_warps,
        )  # fmt: skip
    if partial:
        _reduce_kernel[(bsz, hq)](
            pacc, pml, out, out.stride(0), out.stride(1), hq, s_total,
            D=d, DP=triton.next_power_of_2(d), SP=max(2, triton.next_power_of_2(s_total)), SC=min(64, max(2, triton.next_power_of_2(s_total))),
        )  # fmt: skip
    return out
