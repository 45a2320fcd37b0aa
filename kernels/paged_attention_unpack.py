"""Packed INT4 words -> fp16 MMA operands for the fused paged decode attention (packed-word and Golay kernels).

Split from ``kernels.paged_attention_words`` (the kernel, its loads and its softmax live there). The
layers, each a Triton device function inlined into the kernels:

- codewords -> packed words: ``_words_of`` (raw INT4; Hamming(8,4) by ``_h84_syndromes`` /
  ``_h84_fix``, the syndromes formed unmasked at bit 0 of each nibble as 3-input XORs, one ``lop3``
  each; Hamming(7,4) byte gathers or 7-word supergroups ``_h74_group``), flags per nibble;
- packed words -> fp16: ``_nibbles`` / ``_half_nibbles``: ``w & 0x000F000F | 0x64006400`` is the
  fp16 pair ``1024 + n`` for two nibbles 16 bits apart (``0x00F000F0`` gives ``1024 + 16 n``), then
  one f16x2 subtract or fma gives ``code - 8`` for both: two values per instruction pair. Inline
  PTX (``ASM``) on compiled kernels; a plain-Triton twin with the same values for the interpreter,
  which cannot run PTX;
- ``_unpack``: the ``[BLOCK_N, 8 DWP]`` tile, adjacent columns the nibble pair (n, n + 4) of one
  word so the two fp16 halves of a register are what the MMA operand packs (no byte permutes);
  ``_columns`` maps columns to head-dim indices for the query load and the output store.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels import codecs as kc
from kernels.tiles import split8


@triton.jit
def _nib(w, J: tl.constexpr, dtype: tl.constexpr):
    """Nibble J of packed words ``w`` (uint32) as the signed INT4 value q = code - 8, exact in fp16.

    fp16 bits 0x6400 | n encode 1024 + n, so no int->float conversion is issued.
    """
    h = (((w >> (4 * J)) & 15) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
    return (h - 1032.0).to(dtype)


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


# the merged-word Hamming(8,4) syndromes and fix live with the codec's other word functions
_h84_syndromes = kc.h84_merged_syndromes
_h84_fix = kc.h84_merged_fix


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
        a0, a1, a2, _, b0, b1, b2, _ = _nibbles(x, False)
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
