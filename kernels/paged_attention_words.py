"""Packed-word path of the fused paged decode attention: raw INT4, Hamming(8,4) and Hamming(7,4) rows.

Split from ``kernels.paged_attention`` (the launcher, the general per-value kernel and the split-KV
reduce live there); the contract is the same. Every codec is first turned into packed INT4 words
(8 values per uint32, one SWAR correction step per 8 codewords), then one shared unpack gives the
``[BLOCK_N, D]`` tile of ``code - 8`` values in fp16/bf16 (magic-number trick, no int->float
conversion) and one ``tl.dot`` per operand; the one scale per row multiplies the scores (K) and
the probabilities (V) instead of every value.

- raw INT4: the row's words are the packed words.
- Hamming(8,4): words ``2m`` and ``2m + 1`` hold the 8 codeword bytes of values ``8m..8m+7``; their
  low nibbles (data) and high nibbles (parity) are merged with 6 logic ops into one data word and
  one parity word whose nibble ``n`` is value ``8m + PERM[n]`` (``PERM = 0 4 1 5 2 6 3 7``, no
  compaction shuffles); the query is loaded and the output stored in that column order.
- Hamming(7,4): bytes ``7g .. 7g+6`` of a row hold codewords ``8g .. 8g+6`` (bits 0-6) and codeword
  ``8g + 7`` spread over their bit 7; the bytes are gathered as ``[BLOCK_N, D / 8, 8]`` and folded
  into data/parity words by in-thread sums of disjoint bit fields.
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
from kernels.tiles import split8


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
                DW: tl.constexpr, DWP: tl.constexpr):  # fmt: skip
    """The loads of tokens t0 .. t0 + BLOCK_N - 1 (masked at ``end``): K and V raw words, then their scales."""
    t = t0 + tl.arange(0, BLOCK_N)
    tm = t < end
    row, srow = _rows(bt_ptr, t, tm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS)
    kr = _raw_tile(kd_ptr, row, tm, CODEC, DW, DWP)
    vr = _raw_tile(vd_ptr, row, tm, CODEC, DW, DWP)
    return kr, vr, tl.load(ks_ptr + srow, mask=tm, other=0.0), tl.load(vs_ptr + srow, mask=tm, other=0.0)


@triton.jit
def _h74_group(lo, hi):
    """Bytes 0-3 (lo) and 4-6 (hi, low 3 bytes) of one Hamming(7,4) group -> (packed data word, corrected flags)."""
    hi = hi & 0x00FFFFFF
    d = kc._compact16(lo) | (kc._compact16(hi) << 16)  # data nibbles of codewords 0..6
    p = (kc._compact16(lo >> 4) | (kc._compact16(hi >> 4) << 16)) & 0x07777777  # their parity triples
    t = ((((lo >> 7) & 0x01010101) * 0x01020408) >> 24) & 15  # bit 7 of bytes 0-3 -> bits 0-3 of codeword 7
    t = t | ((((((hi >> 7) & 0x00010101) * 0x01020408) >> 24) & 7) << 4)
    d = d | ((t & 15) << 28)
    p = p | ((t >> 4) << 28)
    s = kc._h_parity_swar(d) ^ p
    return d ^ kc._h_flip_swar(s), kc._nonzero_swar(s)


@triton.jit
def _interleave4(a, b, c, d):
    """Four [N, M] tensors -> [N, 4M], column 4i + 2 (k & 1) + (k >> 1) holding tensor k's column i."""
    j = tl.join(tl.join(a, b), tl.join(c, d))  # [N, M, 2, 2]: [i, y, x] holds tensor 2x + y
    return tl.reshape(j, [a.shape[0], 4 * a.shape[1]])


@triton.jit
def _words_of(raw, CODEC: tl.constexpr, DWP: tl.constexpr):
    """Raw loads of ``_raw_tile`` -> (packed INT4 words [BLOCK_N, DWP] uint32, corrected flags, detected flags).

    Flags: bit 0 of nibble n set where the codeword of nibble n was corrected / detected (uint32).
    """
    if CODEC == 0:
        words = raw.to(tl.uint32, bitcast=True)
        corr = tl.zeros(words.shape, dtype=tl.uint32)
        det = corr
    elif CODEC == 1:
        both = raw.to(tl.uint64, bitcast=True)
        lo = both.to(tl.uint32)  # words 2m (values 8m..8m+3) and 2m + 1 (8m+4..8m+7), little-endian
        hi = (both >> 32).to(tl.uint32)
        w = (lo & 0x0F0F0F0F) | ((hi & 0x0F0F0F0F) << 4)  # data nibbles: v0 v4 v1 v5 v2 v6 v3 v7
        p = ((lo >> 4) & 0x0F0F0F0F) | (hi & 0xF0F0F0F0)  # their parity nibbles (bit 3: overall)
        s = kc._h_parity_swar(w) ^ (p & 0x77777777)
        odd = kc._nibble_parity_swar(w) ^ kc._nibble_parity_swar(p)
        words = w ^ (kc._h_flip_swar(s) & (odd * 15))
        corr = odd
        det = kc._nonzero_swar(s) & (odd ^ 0x11111111)
    elif CODEC == 2:
        b = raw.to(tl.uint32)  # [BLOCK_N, DWP, 8]
        j = tl.arange(0, 8).to(tl.uint32)[None, None, :]
        d = tl.sum((b & 15) << (4 * j), axis=2)  # disjoint fields: the sum is an OR
        p = tl.sum(((b >> 4) & 7) << (4 * j), axis=2)
        t = tl.sum(((b >> 7) & 1) << j, axis=2)  # codeword 7 of the group, from the bit 7s
        d = d | ((t & 15) << 28)
        p = p | ((t >> 4) << 28)
        s = kc._h_parity_swar(d) ^ p
        words = d ^ kc._h_flip_swar(s)
        corr = kc._nonzero_swar(s)
        det = tl.zeros(words.shape, dtype=tl.uint32)
    else:
        w0, w1, w2, w3, w4, w5, w6, _w7 = split8(raw.to(tl.uint32, bitcast=True))
        g0, f0 = _h74_group(w0, w1)  # group bytes 0-6
        g1, f1 = _h74_group((w1 >> 24) | (w2 << 8), (w2 >> 24) | (w3 << 8))  # bytes 7-13
        g2, f2 = _h74_group((w3 >> 16) | (w4 << 16), (w4 >> 16) | (w5 << 16))  # bytes 14-20
        g3, f3 = _h74_group((w5 >> 8) | (w6 << 24), w6 >> 8)  # bytes 21-27
        words = _interleave4(g0, g1, g2, g3)  # word 4 sg + 2 (k & 1) + (k >> 1) = group 4 sg + k
        corr = _interleave4(f0, f1, f2, f3)
        det = tl.zeros(words.shape, dtype=tl.uint32)
    return words, corr, det


@triton.jit
def _unpack(words, dtype: tl.constexpr, DWP: tl.constexpr):
    """Packed words [BLOCK_N, DWP] -> signed INT4 values [BLOCK_N, 8 DWP] in ``dtype`` (column 8w + n = nibble n of w).

    Built with joins (the new axis stays inside the thread that holds the word) rather than a
    broadcast against a nibble axis, which let the compiler replicate the whole decode chain
    across the threads holding the nibbles of one word.
    """
    a = tl.join(tl.join(_nib(words, 0, dtype), _nib(words, 4, dtype)), tl.join(_nib(words, 2, dtype), _nib(words, 6, dtype)))
    b = tl.join(tl.join(_nib(words, 1, dtype), _nib(words, 5, dtype)), tl.join(_nib(words, 3, dtype), _nib(words, 7, dtype)))
    return tl.reshape(tl.join(a, b), [words.shape[0], 8 * DWP])  # [.., c, b, a] = nibble a + 2b + 4c = column


@triton.jit
def _unpack_flags(flags, DWP: tl.constexpr):
    """Nibble flags [BLOCK_N, DWP] -> bool [BLOCK_N, 8 DWP] in ``_unpack``'s column order."""
    f = flags & 0x11111111
    a = tl.join(tl.join(f & 1, (f >> 16) & 1), tl.join((f >> 8) & 1, (f >> 24) & 1))
    b = tl.join(tl.join((f >> 4) & 1, (f >> 20) & 1), tl.join((f >> 12) & 1, (f >> 28) & 1))
    return tl.reshape(tl.join(a, b), [flags.shape[0], 8 * DWP]) != 0


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
def _attend_tile(q, kx, kmul, vx, vmul, tm, m_i, l_i, acc, qk_scale, dtype: tl.constexpr):
    """Online-softmax step over one tile: values kx, vx [N, 8 DWP], per-row multipliers kmul, vmul [N] fp32."""
    qk = tl.dot(q, tl.trans(kx))  # [GP, N] fp32
    qk = tl.where(tm[None, :], qk * (kmul * qk_scale)[None, :], float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    pv = (p * vmul[None, :]).to(dtype)
    acc = acc * alpha[:, None] + tl.dot(pv, vx)  # [GP, 8 DWP]
    return m_new, l_i, acc


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
                 BLOCK_N: tl.constexpr, SUB: tl.constexpr):  # fmt: skip
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
        m_i, l_i, acc = _attend_tile(q, kx, one, vx, one, tm, m_i, l_i, acc, qk_scale, dtype)
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


@triton.jit
def _columns(DWP: tl.constexpr, CODEC: tl.constexpr):
    """Head-dim index of each unpacked column (Hamming(8,4) words interleave the two codeword words)."""
    dd = tl.arange(0, 8 * DWP)
    if CODEC == 1:
        dd = (dd & ~7) | ((dd & 7) >> 1) | ((dd & 1) << 2)
    if CODEC == 3:  # word w holds group (w & ~3) | (w & 1) << 1 | (w >> 1) & 1 (see _interleave4)
        w = dd >> 3
        dd = 8 * ((w & ~3) | ((w & 1) << 1) | ((w >> 1) & 1)) + (dd & 7)
    return dd


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
    INTERP: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """Raw INT4 / Hamming(8,4) / Hamming(7,4) rows with one scale per row (D % 8 == 0).

    Same contract as ``kernels.paged_attention._paged_decode_kernel``. With ``PREFETCH`` the raw
    words and scales of the next tile are loaded before the current tile is decoded.
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
    l_i = tl.zeros([GP], dtype=tl.float32)
    acc = tl.zeros([GP, 8 * DWP], dtype=tl.float32)
    n_corr = tl.zeros([BLOCK_N, DWP], dtype=tl.int32)
    n_det = tl.zeros([BLOCK_N, DWP], dtype=tl.int32)
    bt = bt_ptr + b.to(tl.int64) * stride_bt
    if PREFETCH:  # prologue: raw words and scales of the first tile
        kr, vr, ks, vs = _tile_words(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, start, end, h, stride_db, stride_dh,
                                     stride_dt, stride_sb, stride_sh, stride_st, BS, BLOCK_N, CODEC, DW, DWP)
    for t0 in range(start, end, BLOCK_N):
        tm = (t0 + tl.arange(0, BLOCK_N)) < end
        if PREFETCH:  # the next tile's loads (masked off past the end) go out before this tile's math
            krn, vrn, ksn, vsn = _tile_words(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0 + BLOCK_N, end, h, stride_db,
                                             stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS, BLOCK_N,
                                             CODEC, DW, DWP)
        else:
            kr, vr, ks, vs = _tile_words(kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0, end, h, stride_db, stride_dh,
                                         stride_dt, stride_sb, stride_sh, stride_st, BS, BLOCK_N, CODEC, DW, DWP)
        kw, kcor, kdet = _words_of(kr, CODEC, DWP)
        vw, vcor, vdet = _words_of(vr, CODEC, DWP)
        if COUNT:  # per-element running counts: no cross-thread reduction inside the loop
            n_corr += (kc._count_swar(kcor) + kc._count_swar(vcor)).to(tl.int32)
            n_det += (kc._count_swar(kdet) + kc._count_swar(vdet)).to(tl.int32)
        if INTERP:
            if tl.max(tl.max(kdet | vdet, axis=1), axis=0) != 0:  # rare: a detected codeword in this tile
                m_i, l_i, acc = _interp_step(q, m_i, l_i, acc, kd_ptr, ks_ptr, vd_ptr, vs_ptr, bt, t0, end, tok_lo, hi, h,
                                             stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, qk_scale,
                                             dtype, BS, CODEC, DW, DWP, BLOCK_N, 16)  # fmt: skip
            else:
                m_i, l_i, acc = _attend_tile(q, _unpack(kw, dtype, DWP), ks.to(tl.float32), _unpack(vw, dtype, DWP),
                                             vs.to(tl.float32), tm, m_i, l_i, acc, qk_scale, dtype)  # fmt: skip
        else:
            m_i, l_i, acc = _attend_tile(q, _unpack(kw, dtype, DWP), ks.to(tl.float32), _unpack(vw, dtype, DWP),
                                         vs.to(tl.float32), tm, m_i, l_i, acc, qk_scale, dtype)  # fmt: skip
        if PREFETCH:
            kr = krn
            vr = vrn
            ks = ksn
            vs = vsn
    if COUNT:
        kc.add_counts(cnt_ptr, tl.sum(tl.sum(n_corr, axis=1), axis=0), tl.sum(tl.sum(n_det, axis=1), axis=0))
    ptr, fac = _output_rows(b, h, s, g, gm, m_i, l_i, pacc_ptr, pml_ptr, out_ptr, stride_ob, stride_oh,
                            split_off, S_TOTAL, D, G, PARTIAL)
    ptr = ptr + col[None, :]
    tl.store(ptr, (acc * fac).to(ptr.dtype.element_ty), mask=qm)
