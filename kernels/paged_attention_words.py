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
                DW: tl.constexpr, DWP: tl.constexpr, I32: tl.constexpr):  # fmt: skip
    """The loads of tokens t0 .. t0 + BLOCK_N - 1 (masked at ``end``): K and V raw words, then their scales."""
    t = t0 + tl.arange(0, BLOCK_N)
    tm = t < end
    row, srow = _rows(bt_ptr, t, tm, h, stride_db, stride_dh, stride_dt, stride_sb, stride_sh, stride_st, BS, I32)
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
def _h84_syndromes(lo, hi):
    """Two words of 4 Hamming(8,4) codeword bytes -> (data word, s0, s1, s2, odd), the last four unmasked.

    The low nibbles (data) of ``lo`` and ``hi`` merge into one word whose nibble ``n`` is codeword
    ``PERM[n]`` (0 4 1 5 2 6 3 7), the high nibbles (parity, bit 3 the overall parity) into another.
    Syndrome bits and the overall parity are formed at bit 0 of each nibble with garbage above, as
    3-input XORs (one ``lop3`` each): a codeword is clean where all four are 0 at bit 0.
    """
    w = (lo & 0x0F0F0F0F) | ((hi << 4) & 0xF0F0F0F0)  # data nibbles
    p = ((lo >> 4) & 0x0F0F0F0F) | (hi & 0xF0F0F0F0)  # parity nibbles
    a = w >> 1
    b = w >> 2
    c = w >> 3
    p1 = p >> 1
    x = w ^ c
    s0 = x ^ a ^ p  # d0 ^ d1 ^ d3 ^ p0
    s1 = x ^ b ^ p1  # d0 ^ d2 ^ d3 ^ p1
    s2 = (a ^ b ^ c) ^ (p >> 2)  # d1 ^ d2 ^ d3 ^ p2
    odd = (s2 ^ w ^ p) ^ p1 ^ (p >> 3)  # parity of all 8 bits
    return w, s0, s1, s2, odd


@triton.jit
def _h84_fix(w, s0, s1, s2, odd):
    """Syndromes of ``_h84_syndromes`` -> (corrected data word, corrected flags, detected flags).

    SECDED: odd overall parity corrects the data bit the syndrome names (3, 5, 6, 7 -> d0..d3; other
    syndromes name a parity bit); even parity with a non-zero syndrome is detected, left as read.
    """
    g0 = s0 & odd & 0x11111111
    g2 = s2 & odd & 0x11111111
    f0 = g0 & s1 & ~s2  # syndrome 3 -> d0
    f1 = g0 & ~s1 & s2  # 5 -> d1
    f2 = ~s0 & s1 & g2  # 6 -> d2
    f3 = g0 & s1 & s2  # 7 -> d3
    flip = f0 + (f1 << 1) + (f2 << 2) + (f3 << 3)
    det = (s0 | s1 | s2) & ~odd & 0x11111111
    return w ^ flip, odd & 0x11111111, det


@triton.jit
def _h84_dirty(s0, s1, s2, odd):
    """Bit 0 of each nibble set where that codeword is not a clean codeword (to be OR-reduced)."""
    return (s0 | s1 | s2 | odd) & 0x11111111


@triton.jit
def _h84_decode(lo, hi):
    """Two words of 4 Hamming(8,4) codeword bytes -> (corrected data word, corrected flags, detected flags).

    Same results as ``kernels.codecs.hamming84_decode_word`` with the nibbles in ``PERM`` order
    (tested exhaustively per nibble lane); about 30 instead of 45 instructions per 8 codewords.
    """
    w, s0, s1, s2, odd = _h84_syndromes(lo, hi)
    return _h84_fix(w, s0, s1, s2, odd)


@triton.jit
def _any(x):
    """Max over every element of a 2-D tile (order free: one flat reduction, no per-axis steps)."""
    return tl.max(tl.reshape(x, [x.shape[0] * x.shape[1]]), axis=0)


@triton.jit
def _h84_raw(raw):
    """int64 loads of 8 codeword bytes -> their two 32-bit halves (codewords 0-3, 4-7), little-endian."""
    both = raw.to(tl.uint64, bitcast=True)
    return both.to(tl.uint32), (both >> 32).to(tl.uint32)


@triton.jit
def _count_pair(a, b, ASM: tl.constexpr):
    """Number of set flags (bit 0 of each nibble) in ``a`` and ``b`` together, per element (int32)."""
    if ASM:  # the flags are disjoint from each other shifted by one: one popc
        n = tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [a | (b << 1)], dtype=tl.int32, is_pure=True, pack=1)
    else:
        n = (kc._count_swar(a) + kc._count_swar(b)).to(tl.int32)
    return n


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
        lo, hi = _h84_raw(raw)  # words 2m (values 8m..8m+3) and 2m + 1 (8m+4..8m+7)
        words, corr, det = _h84_decode(lo, hi)
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


# w -> 8 fp16 values q = code - 8 (nibble n in output n): one mask | magic per pair of nibbles
# (n, n + 4), then 1032 subtracted (low nibbles) or x / 16 - 72 in one fma (nibbles at bits 4-7)
_NIB8_PTX = tl.constexpr("""{
.reg .b32 t0, t1, t2, t3, u, m, c, f, g;
mov.b32 m, 0x64006400;
mov.b32 c, 0x64086408;
mov.b32 f, 0x2C002C00;
mov.b32 g, 0xD480D480;
shr.b32 u, $8, 8;
lop3.b32 t0, $8, 0x000F000F, m, 0xEA;
lop3.b32 t1, $8, 0x00F000F0, m, 0xEA;
lop3.b32 t2, u, 0x000F000F, m, 0xEA;
lop3.b32 t3, u, 0x00F000F0, m, 0xEA;
sub.f16x2 t0, t0, c;
fma.rn.f16x2 t1, t1, f, g;
sub.f16x2 t2, t2, c;
fma.rn.f16x2 t3, t3, f, g;
mov.b32 {$0, $4}, t0;
mov.b32 {$1, $5}, t1;
mov.b32 {$2, $6}, t2;
mov.b32 {$3, $7}, t3;
}""")


# w -> 6 fp16 values: nibbles 0-2 of the low half (outputs 0-2) and of the high half (3-5), code - 8
_NIB6_PTX = tl.constexpr("""{
.reg .b32 t0, t1, t2, u, m, c, f, g;
mov.b32 m, 0x64006400;
mov.b32 c, 0x64086408;
mov.b32 f, 0x2C002C00;
mov.b32 g, 0xD480D480;
shr.b32 u, $6, 8;
lop3.b32 t0, $6, 0x000F000F, m, 0xEA;
lop3.b32 t1, $6, 0x00F000F0, m, 0xEA;
lop3.b32 t2, u, 0x000F000F, m, 0xEA;
sub.f16x2 t0, t0, c;
fma.rn.f16x2 t1, t1, f, g;
sub.f16x2 t2, t2, c;
mov.b32 {$0, $3}, t0;
mov.b32 {$1, $4}, t1;
mov.b32 {$2, $5}, t2;
}""")


@triton.jit
def _half_nibbles(x, ASM: tl.constexpr):
    """Nibbles 0-2 of both 16-bit halves of ``x`` (uint32) as fp16 code - 8: (lo 0, lo 1, lo 2, hi 0, hi 1, hi 2).

    The Golay kernel keeps two codewords' 12 data bits per word (bits 0-11 and 16-27); ASM: PTX
    (one mask and one f16x2 op per pair of values), else the plain version (same values).
    """
    if ASM:
        a0, a1, a2, b0, b1, b2 = tl.inline_asm_elementwise(
            _NIB6_PTX, "=h,=h,=h,=h,=h,=h,r", [x], dtype=(tl.float16,) * 6, is_pure=True, pack=1
        )
    else:
        a0 = _nib(x, 0, tl.float16)
        a1 = _nib(x, 1, tl.float16)
        a2 = _nib(x, 2, tl.float16)
        b0 = _nib(x, 4, tl.float16)
        b1 = _nib(x, 5, tl.float16)
        b2 = _nib(x, 6, tl.float16)
    return a0, a1, a2, b0, b1, b2


@triton.jit
def _nibbles(words, ASM: tl.constexpr):
    """The 8 nibbles of ``words`` (uint32) as fp16 q = code - 8; ASM: PTX (lop3 + f16x2 math, two values per op).

    The plain version (Triton's interpreter cannot run PTX) gives the same values.
    """
    if ASM:
        n0, n1, n2, n3, n4, n5, n6, n7 = tl.inline_asm_elementwise(
            _NIB8_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r", [words], dtype=(tl.float16,) * 8, is_pure=True, pack=1
        )
    else:
        n0 = _nib(words, 0, tl.float16)
        n1 = _nib(words, 1, tl.float16)
        n2 = _nib(words, 2, tl.float16)
        n3 = _nib(words, 3, tl.float16)
        n4 = _nib(words, 4, tl.float16)
        n5 = _nib(words, 5, tl.float16)
        n6 = _nib(words, 6, tl.float16)
        n7 = _nib(words, 7, tl.float16)
    return n0, n1, n2, n3, n4, n5, n6, n7


@triton.jit
def _unpack(words, dtype: tl.constexpr, DWP: tl.constexpr, ASM: tl.constexpr = False):
    """Packed words [BLOCK_N, DWP] -> signed INT4 values [BLOCK_N, 8 DWP] in ``dtype``.

    Column ``8w + 2j + h`` holds nibble ``j + 4h`` of word ``w`` (nibble order 0 4 1 5 2 6 3 7): each
    pair of adjacent columns is one 32-bit register whose halves come from one 32-bit mask of
    the word, so no byte permutes are needed to pack the fp16 operand. Built with joins (the new
    axes stay inside the thread that holds the word) rather than a broadcast against a nibble
    axis, which let the compiler replicate the whole decode chain across threads.
    """
    n0, n1, n2, n3, n4, n5, n6, n7 = _nibbles(words, ASM)
    lo = tl.join(tl.join(n0, n2), tl.join(n1, n3))
    hi = tl.join(tl.join(n4, n6), tl.join(n5, n7))
    return tl.reshape(tl.join(lo, hi), [words.shape[0], 8 * DWP]).to(dtype)  # [.., j >> 1, j & 1, h]


@triton.jit
def _unpack_flags(flags, DWP: tl.constexpr):
    """Nibble flags [BLOCK_N, DWP] -> bool [BLOCK_N, 8 DWP] in ``_unpack``'s column order."""
    f = flags & 0x11111111
    lo = tl.join(tl.join(f & 1, (f >> 8) & 1), tl.join((f >> 4) & 1, (f >> 12) & 1))
    hi = tl.join(tl.join((f >> 16) & 1, (f >> 24) & 1), tl.join((f >> 20) & 1, (f >> 28) & 1))
    return tl.reshape(tl.join(lo, hi), [flags.shape[0], 8 * DWP]) != 0


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


@triton.jit
def _columns(DWP: tl.constexpr, CODEC: tl.constexpr):
    """Head-dim index of each unpacked column: column ``8w + c`` holds nibble ``(c >> 1) + 4 (c & 1)`` of word w.

    Raw INT4 and Hamming(7,4): nibble n of word w is value ``8w + n``; Hamming(8,4): value
    ``8w + PERM[n]`` (PERM = 0 4 1 5 2 6 3 7, ``_h84_decode``); Hamming(7,4) on words: word w holds
    group ``(w & ~3) | (w & 1) << 1 | (w >> 1) & 1`` (``_interleave4``).
    """
    dd = tl.arange(0, 8 * DWP)
    c = dd & 7
    w = dd >> 3
    if CODEC == 1:
        n = 2 * (c & 3) + (c >> 2)  # PERM[(c >> 1) + 4 (c & 1)]
    else:
        n = (c >> 1) + 4 * (c & 1)
    if CODEC == 3:
        w = (w & ~3) | ((w & 1) << 1) | ((w >> 1) & 1)
    return 8 * w + n


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
