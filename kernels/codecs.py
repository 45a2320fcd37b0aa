"""Triton codecs: Hamming(7,4), extended Hamming(8,4), extended Golay(24,12); bit-for-bit twin of ``ecc_kv.codecs``.

Two levels, one bit layout (see ``ecc_kv/codecs.py`` and ``ecc_kv/layouts.py``):

- Element device functions (``hamming74_encode/decode``, ``hamming84_encode/decode``,
  ``golay_encode/decode``): one logical codeword per element, for the fused kernels (cache write,
  paged attention, KV round trip) and the logical launchers ``encode_triton``/``decode_triton``.
- Word device functions (SWAR: 8 INT4 values per uint32, all nibbles at once): the launchers of
  ``kernels.packed_codecs`` (``encode_packed``/``decode_packed``) read plain packed INT4 and write the stored layout at the
  nominal rate (and back). A handful of 3-input logic ops per 8 values keeps them memory-bound.

Golay decodes by a 4096-entry syndrome table in global memory (16 KiB, L1/L2 resident; the load is
masked off for zero syndromes, so clean data issues no gather); ``ALGEBRAIC=True`` selects the
textbook algebraic decoder instead (measured against the table in docs/codecs.md).
Decoding failure (status 2) returns the received data bits unchanged.
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------
# SWAR helpers: w is uint32 holding 8 nibbles; results per nibble.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _h_parity_swar(w):
    """Hamming parity triples (p0 | p1 << 1 | p2 << 2) of every data nibble of ``w`` (bit 3 of each nibble 0)."""
    a = w >> 1
    b = w >> 2
    c = w >> 3
    p0 = (w ^ a ^ c) & 0x11111111  # d0 ^ d1 ^ d3
    p1 = (w ^ b ^ c) & 0x11111111  # d0 ^ d2 ^ d3
    p2 = (a ^ b ^ c) & 0x11111111  # d1 ^ d2 ^ d3
    return p0 | (p1 << 1) | (p2 << 2)


@triton.jit
def _h_flip_swar(s):
    """Data-bit flips for Hamming syndrome triples ``s`` (per nibble): 3 -> d0, 5 -> d1, 6 -> d2, 7 -> d3."""
    s0 = s & 0x11111111
    s1 = (s >> 1) & 0x11111111
    s2 = (s >> 2) & 0x11111111
    n0 = s0 ^ 0x11111111
    n1 = s1 ^ 0x11111111
    n2 = s2 ^ 0x11111111
    return (s0 & s1 & n2) | ((s0 & n1 & s2) << 1) | ((n0 & s1 & s2) << 2) | ((s0 & s1 & s2) << 3)


@triton.jit
def _nonzero_swar(s):
    """Bit 0 of each nibble set where the nibble of ``s`` is non-zero."""
    return (s | (s >> 1) | (s >> 2) | (s >> 3)) & 0x11111111


@triton.jit
def _nibble_parity_swar(x):
    """Parity of each nibble of ``x`` in bit 0 of that nibble."""
    t = x ^ (x >> 2)
    return (t ^ (t >> 1)) & 0x11111111


@triton.jit
def _count_swar(flags):
    """Number of nibbles with bit 0 set (flags has only bit 0 of nibbles), per element."""
    return (flags * 0x11111111) >> 28


@triton.jit
def _spread16(x):
    """Nibble i of the low 16 bits of ``x`` -> low nibble of byte i."""
    x = x & 0xFFFF
    x = (x | (x << 8)) & 0x00FF00FF
    return (x | (x << 4)) & 0x0F0F0F0F


@triton.jit
def _compact16(x):
    """Inverse of ``_spread16``: low nibble of byte i -> nibble i (16-bit result)."""
    x = x & 0x0F0F0F0F
    x = (x | (x >> 4)) & 0x00FF00FF
    return (x | (x >> 8)) & 0xFFFF


@triton.jit
def _u32(x):
    return x.to(tl.uint32, bitcast=True)


# ----------------------------------------------------------------------------------------------
# Element device functions (the contract in docs/design.md). Inputs any int dtype; outputs uint32.
# ----------------------------------------------------------------------------------------------


@triton.jit
def hamming74_encode(q):
    """INT4 code (low nibble used) -> Hamming(7,4) codeword in bits 0-6."""
    d = q.to(tl.uint32) & 15
    return d | (_h_parity_swar(d) << 4)


@triton.jit
def hamming74_decode(cw):
    """Hamming(7,4) codeword (bits 0-6 used) -> (code, status 0/1)."""
    c = cw.to(tl.uint32)
    d = c & 15
    s = _h_parity_swar(d) ^ ((c >> 4) & 7)
    return d ^ _h_flip_swar(s), (s != 0).to(tl.uint32)


@triton.jit
def hamming84_encode(q):
    """INT4 code (low nibble used) -> extended Hamming(8,4) codeword (bit 7: overall parity)."""
    d = q.to(tl.uint32) & 15
    p = _h_parity_swar(d)
    ov = _nibble_parity_swar(d) ^ _nibble_parity_swar(p)
    return d | (p << 4) | (ov << 7)


@triton.jit
def hamming84_decode(cw):
    """Extended Hamming(8,4) codeword (bits 0-7) -> (code, status 0 clean / 1 corrected / 2 detected)."""
    c = cw.to(tl.uint32) & 255
    d = c & 15
    p = c >> 4
    s = _h_parity_swar(d) ^ (p & 7)
    odd = (_nibble_parity_swar(d) ^ _nibble_parity_swar(p)) & 1
    q = tl.where(odd != 0, d ^ _h_flip_swar(s), d)
    status = tl.where(odd != 0, 1, tl.where(s != 0, 2, 0)).to(tl.uint32)
    return q, status


@triton.jit
def _golay_parity_pair(x):
    """Golay parity of two 12-bit data words at once: x = d_a | d_b << 16 -> p_a | p_b << 16 (GF(2) d*B)."""
    p = (x & 0x10001) * 0xA3B
    p ^= ((x >> 1) & 0x10001) * 0xD1D
    p ^= ((x >> 2) & 0x10001) * 0xE8E
    p ^= ((x >> 3) & 0x10001) * 0xB47
    p ^= ((x >> 4) & 0x10001) * 0xDA3
    p ^= ((x >> 5) & 0x10001) * 0xED1
    p ^= ((x >> 6) & 0x10001) * 0xF68
    p ^= ((x >> 7) & 0x10001) * 0xBB4
    p ^= ((x >> 8) & 0x10001) * 0x9DA
    p ^= ((x >> 9) & 0x10001) * 0x8ED
    p ^= ((x >> 10) & 0x10001) * 0xC76
    p ^= ((x >> 11) & 0x10001) * 0x7FF
    return p


@triton.jit
def golay_encode(d):
    """12 data bits (three INT4 codes, q0 in bits 0-3) -> 24-bit Golay codeword (parity in bits 12-23)."""
    d = d.to(tl.uint32) & 0xFFF
    return d | ((_golay_parity_pair(d) & 0xFFF) << 12)


@triton.jit
def _wt12(x):
    x = x - ((x >> 1) & 0x555)
    x = (x & 0x333) + ((x >> 2) & 0x333)
    x = (x + (x >> 4)) & 0x0F0F
    return (x + (x >> 8)) & 0x1F


@triton.jit
def _golay_correct_algebraic(s, rows_ptr):
    """Algebraic decode of syndromes ``s`` -> (data correction, status)."""
    s2 = _golay_parity_pair(s) & 0xFFF  # = e_p*B ^ e_d since B*B = I
    found = _wt12(s) <= 3
    ed = tl.zeros_like(s)
    for k in tl.static_range(12):
        r = tl.load(rows_ptr + k).to(tl.uint32)
        hit = (_wt12(s ^ r) <= 2) & (found == 0)
        ed = tl.where(hit, 1 << k, ed)
        found = found | hit
    hit3 = (_wt12(s2) <= 3) & (found == 0)
    ed = tl.where(hit3, s2, ed)
    found = found | hit3
    for k in tl.static_range(12):
        r = tl.load(rows_ptr + k).to(tl.uint32)
        t = s2 ^ r
        hit = (_wt12(t) <= 2) & (found == 0)
        ed = tl.where(hit, t, ed)
        found = found | hit
    status = tl.where(found, tl.where(s == 0, 0, 1), 2).to(tl.uint32)
    return tl.where(found, ed, 0), status


@triton.jit
def _golay_correct(s, table_ptr, ALGEBRAIC: tl.constexpr = False):
    """Syndrome -> (data correction, status) via the 4096-entry table (or algebraically)."""
    if ALGEBRAIC:
        return _golay_correct_algebraic(s, table_ptr + 4096)
    entry = tl.load(table_ptr + s, mask=s != 0, other=0).to(tl.uint32)
    return entry & 0xFFF, entry >> 12


@triton.jit
def golay_decode(cw, table_ptr, ALGEBRAIC: tl.constexpr = False):
    """24-bit Golay codeword (bits 0-23 used) -> (12 data bits, status). ``table_ptr``: ``golay_tables`` on device."""
    c = cw.to(tl.uint32, bitcast=True) & 0xFFFFFF
    d = c & 0xFFF
    s = (_golay_parity_pair(d) & 0xFFF) ^ (c >> 12)
    corr, status = _golay_correct(s, table_ptr, ALGEBRAIC)
    return d ^ corr, status


# ----------------------------------------------------------------------------------------------
# Word/group device functions for the packed layouts (ecc_kv/layouts.py documents the formats).
# ----------------------------------------------------------------------------------------------


@triton.jit
def hamming84_encode_word(w):
    """Packed INT4 word (8 codes) -> two words of Hamming(8,4) codeword bytes (codes 0-3, codes 4-7)."""
    p = _h_parity_swar(w)
    p4 = p | ((_nibble_parity_swar(w) ^ _nibble_parity_swar(p)) << 3)
    lo = _spread16(w) | (_spread16(p4) << 4)
    hi = _spread16(w >> 16) | (_spread16(p4 >> 16) << 4)
    return lo, hi


@triton.jit
def h84_merged_syndromes(lo, hi):
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
def h84_merged_fix(w, s0, s1, s2, odd):
    """Syndromes of ``h84_merged_syndromes`` -> (corrected data word, corrected flags, detected flags).

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
def _delta_swap(x, m, S: tl.constexpr):
    # exchange the bits of x under mask m with those S bits above them
    t = ((x >> S) ^ x) & m
    return x ^ t ^ (t << S)


@triton.jit
def h84_in_order(x):
    """Nibbles of merged order 0 4 1 5 2 6 3 7 (``h84_merged_syndromes``) -> value order 0..7: two delta swaps."""
    return _delta_swap(_delta_swap(x, 0x00F000F0, 4), 0x0000FF00, 8)


@triton.jit
def hamming84_decode_word(lo, hi, FLAGS_IN_ORDER: tl.constexpr = True):
    """Two words of Hamming(8,4) codeword bytes -> (packed INT4 word, corrected flags, detected flags) per nibble.

    The bytes merge into one data and one parity word without compaction (``h84_merged_syndromes``),
    in the order 0 4 1 5 2 6 3 7, and the corrected data word is put back in value order: about 40
    instead of 60 integer operations per 8 codewords. The flags come in value order too, or in the
    merged order without FLAGS_IN_ORDER (enough to count them; two delta swaps fewer each).
    """
    w, s0, s1, s2, odd = h84_merged_syndromes(lo, hi)
    w, corr, det = h84_merged_fix(w, s0, s1, s2, odd)
    if FLAGS_IN_ORDER:
        corr = h84_in_order(corr)
        det = h84_in_order(det)
    return h84_in_order(w), corr, det


@triton.jit
def hamming74_encode_group(w0, w1, w2, w3):
    """Four packed INT4 words (32 codes) -> the three parity words Q0, Q1, Q2 of the Hamming(7,4) layout."""
    p3 = _h_parity_swar(w3)
    q0 = _h_parity_swar(w0) | ((p3 & 0x11111111) << 3)
    q1 = _h_parity_swar(w1) | ((p3 & 0x22222222) << 2)
    q2 = _h_parity_swar(w2) | ((p3 & 0x44444444) << 1)
    return q0, q1, q2


@triton.jit
def _h74_fix(w, p):
    s = _h_parity_swar(w) ^ p
    return w ^ _h_flip_swar(s), _nonzero_swar(s)


@triton.jit
def hamming74_decode_group(w0, w1, w2, w3, q0, q1, q2):
    """Data words + parity words of one Hamming(7,4) group -> corrected words and per-nibble corrected flags."""
    p3 = ((q0 >> 3) & 0x11111111) | ((q1 >> 2) & 0x22222222) | ((q2 >> 1) & 0x44444444)
    w0, f0 = _h74_fix(w0, q0 & 0x77777777)
    w1, f1 = _h74_fix(w1, q1 & 0x77777777)
    w2, f2 = _h74_fix(w2, q2 & 0x77777777)
    w3, f3 = _h74_fix(w3, p3)
    return w0, w1, w2, w3, f0, f1, f2, f3


@triton.jit
def golay_chunks(w0, w1, w2):
    """Three words of a 12-bit-chunk stream (96 bits) -> the 8 chunks, as 4 pairs c_2k | c_2k+1 << 16."""
    x01 = (w0 & 0xFFF) | ((w0 >> 12) & 0xFFF) << 16
    x23 = ((w0 >> 24) | ((w1 & 0xF) << 8)) | ((w1 >> 4) & 0xFFF) << 16
    x45 = ((w1 >> 16) & 0xFFF) | ((w1 >> 28) | ((w2 & 0xFF) << 4)) << 16
    x67 = ((w2 >> 8) & 0xFFF) | (w2 >> 20) << 16
    return x01, x23, x45, x67


@triton.jit
def golay_unchunk(x01, x23, x45, x67):
    """Inverse of ``golay_chunks``: 4 chunk pairs -> three stream words."""
    c0 = x01 & 0xFFF
    c1 = x01 >> 16
    c2 = x23 & 0xFFF
    c3 = x23 >> 16
    c4 = x45 & 0xFFF
    c5 = x45 >> 16
    c6 = x67 & 0xFFF
    c7 = x67 >> 16
    w0 = c0 | (c1 << 12) | (c2 << 24)
    w1 = (c2 >> 8) | (c3 << 4) | (c4 << 16) | (c5 << 28)
    w2 = (c5 >> 4) | (c6 << 8) | (c7 << 20)
    return w0, w1, w2


@triton.jit
def golay_encode_group(w0, w1, w2):
    """Three packed INT4 words (24 codes = 8 codewords) -> the three parity-stream words."""
    x01, x23, x45, x67 = golay_chunks(w0, w1, w2)
    return golay_unchunk(_golay_parity_pair(x01), _golay_parity_pair(x23), _golay_parity_pair(x45), _golay_parity_pair(x67))


@triton.jit
def _golay_fix_pair(x, y, table_ptr, ALGEBRAIC: tl.constexpr):
    s = _golay_parity_pair(x) ^ y  # two syndromes, 16 bits apart
    ca, sa = _golay_correct(s & 0xFFF, table_ptr, ALGEBRAIC)
    cb, sb = _golay_correct(s >> 16, table_ptr, ALGEBRAIC)
    return x ^ (ca | (cb << 16)), sa | (sb << 8)


@triton.jit
def golay_decode_group(w0, w1, w2, p0, p1, p2, table_ptr, ALGEBRAIC: tl.constexpr = False):
    """Data + parity stream words of 8 Golay codewords -> (3 corrected data words, status bytes 0-3, 4-7)."""
    x01, x23, x45, x67 = golay_chunks(w0, w1, w2)
    y01, y23, y45, y67 = golay_chunks(p0, p1, p2)
    x01, s01 = _golay_fix_pair(x01, y01, table_ptr, ALGEBRAIC)
    x23, s23 = _golay_fix_pair(x23, y23, table_ptr, ALGEBRAIC)
    x45, s45 = _golay_fix_pair(x45, y45, table_ptr, ALGEBRAIC)
    x67, s67 = _golay_fix_pair(x67, y67, table_ptr, ALGEBRAIC)
    o0, o1, o2 = golay_unchunk(x01, x23, x45, x67)
    return o0, o1, o2, s01 | (s23 << 16), s45 | (s67 << 16)


@triton.jit
def add_counts(cnt_ptr, n_corr, n_det):
    """Add a program's (corrected, detected) totals to ``cnt_ptr[0:2]``.

    Relaxed atomics: the counts are read only after the kernel, and Triton's default (acq_rel)
    puts a GPU-wide memory fence in every program, which then waits for its own stores.
    """
    tl.atomic_add(cnt_ptr, n_corr.to(cnt_ptr.dtype.element_ty), sem="relaxed")
    tl.atomic_add(cnt_ptr + 1, n_det.to(cnt_ptr.dtype.element_ty), sem="relaxed")


@triton.jit
def status_counts(st_a, st_b):
    """(corrected, detected) totals of status bytes packed 4 per word (values 0/1/2)."""
    lo = (st_a & 0x01010101) + (st_b & 0x01010101)
    hi = ((st_a >> 1) & 0x01010101) + ((st_b >> 1) & 0x01010101)
    corr = tl.sum(((lo * 0x01010101) >> 24).to(tl.int32), axis=0)
    det = tl.sum(((hi * 0x01010101) >> 24).to(tl.int32), axis=0)
    return corr, det


GOLAY_B_ROWS = (0xA3B, 0xD1D, 0xE8E, 0xB47, 0xDA3, 0xED1, 0xF68, 0xBB4, 0x9DA, 0x8ED, 0xC76, 0x7FF)
_GOLAY_TABLES: dict[torch.device, torch.Tensor] = {}


def _golay_table_values() -> list[int]:
    """Syndrome -> correction | status << 12 by plain enumeration (independent of the torch builder)."""

    def parity(d: int) -> int:
        p = 0
        for k, row in enumerate(GOLAY_B_ROWS):
            if (d >> k) & 1:
                p ^= row
        return p

    table = [2 << 12] * 4096
    for weight in range(4):
        for bits in itertools.combinations(range(24), weight):
            e = sum(1 << b for b in bits)
            table[parity(e & 0xFFF) ^ (e >> 12)] = (e & 0xFFF) | ((1 if weight else 0) << 12)
    return table + list(GOLAY_B_ROWS)


def golay_tables(device: torch.device | str) -> torch.Tensor:
    """int32 [4096 + 12] on ``device``: the syndrome table (bits 0-11 data correction, 12-13 status), then B's rows."""
    dev = torch.device(device)
    if dev not in _GOLAY_TABLES:
        _GOLAY_TABLES[dev] = torch.tensor(_golay_table_values(), dtype=torch.int32, device=dev)
    return _GOLAY_TABLES[dev]


# ----------------------------------------------------------------------------------------------
# Kernels and launchers.
# ----------------------------------------------------------------------------------------------

CODEC_IDS = {"hamming74": 0, "hamming84": 1, "golay2412": 2}
# values per aligned group of the packed layouts: row lengths must be multiples of these
GROUP_VALUES = {"hamming74": 32, "hamming84": 8, "golay2412": 24}
_MAX_ELEMS = 2**31 - 1


@triton.jit
def _i32(x):
    return x.to(tl.int32, bitcast=True)


@triton.jit
def _encode_kernel(q_ptr, cw_ptr, M, CODEC: tl.constexpr, BLOCK: tl.constexpr):
    # q: [M * S] uint8 codes -> cw: [M] codewords (uint8 Hamming, int32 Golay), S = 1 or 3
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    if CODEC == 2:
        q0 = tl.load(q_ptr + 3 * offs, mask=mask, other=0).to(tl.uint32) & 15
        q1 = tl.load(q_ptr + 3 * offs + 1, mask=mask, other=0).to(tl.uint32) & 15
        q2 = tl.load(q_ptr + 3 * offs + 2, mask=mask, other=0).to(tl.uint32) & 15
        tl.store(cw_ptr + offs, _i32(golay_encode(q0 | (q1 << 4) | (q2 << 8))), mask=mask)
    else:
        q = tl.load(q_ptr + offs, mask=mask, other=0)
        if CODEC == 0:
            cw = hamming74_encode(q)
        else:
            cw = hamming84_encode(q)
        tl.store(cw_ptr + offs, cw.to(tl.uint8), mask=mask)


@triton.jit
def _decode_kernel(cw_ptr, q_ptr, st_ptr, table_ptr, M, CODEC: tl.constexpr, BLOCK: tl.constexpr):
    # cw: [M] codewords -> q: [M * S] uint8 codes, st: [M] uint8 status
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    cw = tl.load(cw_ptr + offs, mask=mask, other=0)
    if CODEC == 2:
        d, st = golay_decode(cw, table_ptr)
        tl.store(q_ptr + 3 * offs, (d & 15).to(tl.uint8), mask=mask)
        tl.store(q_ptr + 3 * offs + 1, ((d >> 4) & 15).to(tl.uint8), mask=mask)
        tl.store(q_ptr + 3 * offs + 2, (d >> 8).to(tl.uint8), mask=mask)
    else:
        if CODEC == 0:
            q, st = hamming74_decode(cw)
        else:
            q, st = hamming84_decode(cw)
        tl.store(q_ptr + offs, q.to(tl.uint8), mask=mask)
    tl.store(st_ptr + offs, st.to(tl.uint8), mask=mask)


def _check_size(t: torch.Tensor, what: str) -> None:
    if t.numel() > _MAX_ELEMS // 4:
        raise ValueError(f"{what} has {t.numel()} elements; the kernels index in int32 (max {_MAX_ELEMS // 4})")


def encode_triton(name: str, q: torch.Tensor) -> torch.Tensor:
    """Logical encode (codec contract): uint8 codes ``[..., n]`` -> codewords ``[..., n / S]``."""
    cid = CODEC_IDS[name]
    s = 3 if cid == 2 else 1
    _check_size(q, "q")
    qf = q.contiguous().reshape(-1)
    m = qf.numel() // s
    cw = torch.empty(m, dtype=torch.int32 if cid == 2 else torch.uint8, device=q.device)
    if m:
        _encode_kernel[(triton.cdiv(m, 1024),)](qf, cw, m, CODEC=cid, BLOCK=1024)
    return cw.reshape(*q.shape[:-1], q.shape[-1] // s)


def decode_triton(name: str, cw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logical decode (codec contract): codewords ``[..., m]`` -> (codes uint8 ``[..., m * S]``, status uint8 ``[..., m]``)."""
    cid = CODEC_IDS[name]
    s = 3 if cid == 2 else 1
    _check_size(cw, "cw")
    cf = cw.contiguous().reshape(-1)
    m = cf.numel()
    q = torch.empty(m * s, dtype=torch.uint8, device=cw.device)
    st = torch.empty(m, dtype=torch.uint8, device=cw.device)
    if m:
        _decode_kernel[(triton.cdiv(m, 1024),)](cf, q, st, golay_tables(cw.device), m, CODEC=cid, BLOCK=1024)
    return q.reshape(*cw.shape[:-1], cw.shape[-1] * s), st.reshape(cw.shape)
