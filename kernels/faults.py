"""Triton bit-error injection: a flip-mask device function and an in-place inject launcher.

Stream: the random numbers of a word depend only on (seed, stream, global word index, draw number),
never on the launch grid or the tile, so every kernel that calls ``flip_mask`` with the same global
word index sees the same faults (fused inject+decode, KV round trip, paged cache).

Generator: SplitMix64 as a counter-based generator: draw c of word w is
``mix64(key + (64 w + c + 1) * GAMMA)`` with ``key = mix64(mix64(seed + GAMMA) + (stream + 1) * GAMMA)``
(``mix64`` is SplitMix64's finaliser; its output sequence passes BigCrush). It replaced Philox-4x32-10
here because one Philox call costs ~100 integer instructions, two to three times the memory time
of a 32-bit word on an H100, while a SplitMix64 draw costs ~25 (docs/error_model.md).

Sampling (integer only, so interpreted and compiled runs agree bit for bit), per n-bit word with
independent Bernoulli(p) events, from the plan ``fault_plan(p, n)`` that the host packs into the table
of ``event_thresholds`` (the same for every caller):

- the event count k ~ Binomial(n, p) is the number of thresholds ``C_j = floor(2^64 P(Binomial(n, p) <= j))``,
  j < K, at or below the word's first 64-bit draw u; K is the smallest count whose tail P(k > K) is
  below ``TAIL_BOUND / 2``;
- the events are the first k distinct valid ``ceil(log2 n)``-bit chunks of, in order, the low 16 bits
  of the residual ``u - C_{k-1}`` (uniform on the interval of u that selected k, so nearly independent
  of k: total variation at most K * 2^-49 per word) and then of further draws c = 1, 2, ... taken
  only while some word of the tile still lacks events (a tile-level loop, almost never entered at
  small p). This is the Bernoulli(p)^n pattern up to a mass below ``TAIL_BOUND = 2^-40`` per word.

32-bit words (the packed stored layouts) are drawn in aligned groups of four: one count draw per
group ``g`` (words 4g .. 4g+3, 128 bits) from the 128-bit plan, positions as 7-bit chunks (bit b & 31
of word 4g + (b >> 5)), more than 64 events placed as the complement of 128 - k positions
(``group_masks``). Each bit is still an independent Bernoulli(p); a tile that holds whole groups
pays one draw per four words (``group_masks``, or ``group_draw`` + ``group_fix`` for a kernel that
draws several groups per lane and tests them all at once), a tile of scattered words one per word
(``flip_mask``), with the same faults either way. Widths below 32 keep one draw per word. A group is
placed in up to three stages, each a tile-level test away from the next and each giving the full
rule's sets for the groups it serves: counts 0..2 off the residual (``_group_fast``), counts of 3 and
repeated chunks with one more draw (``_group_more``), the full rule (``_group_events``).

Loops run to tile-level bounds (the largest count in the tile), never to per-lane ones, so the cost
follows the events actually present. BSC: an event flips its bit. Burst: an event at bit b starts a
burst flipping bits b .. b + burst_len - 1 (clipped at the top of the word, overlapping bursts merge);
the start probability is ber / burst_len (see docs/error_model.md for the resulting flip rate).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch
import triton
import triton.language as tl

WORD_DTYPES = {torch.uint8: 8, torch.int16: 16, torch.int32: 32}
TAIL_BOUND = 2.0**-40  # per-word total variation between the sampled pattern and the exact law
ROW = 40  # table entries per word width: [K, 0, C_0 .. C_{K-1}] (K <= 32)
MAX_BITS = 32
RESIDUAL_BITS = 16  # bits of the count draw's residual used for positions (bias <= 2^(16-64-1) per count)
MAX_DRAWS = 63  # position draws after the first; not finishing: < 2^-200 for k <= n/2 (docs/error_model.md)
GROUP_WORDS = 4  # 32-bit words are drawn in aligned groups of four (128 bits, one 128-bit load)
GROUP_BITS = 32 * GROUP_WORDS
GROUP_ROW = ROW * (MAX_BITS + 1)  # the 128-bit group's plan follows the per-width rows: [K, 0, C_0 .. C_{K-1}]


def event_probability(ber: float, model: str, burst_len: int) -> float:
    """Per-bit event probability: ``ber`` for BSC, the burst start rate ``ber / burst_len`` for bursts."""
    return ber if model == "bsc" else ber / burst_len


def chunk_bits(n: int) -> int:
    """Bits per position chunk for n-bit words: ceil(log2 n) (at least 1); values >= n are skipped."""
    return max(1, (n - 1).bit_length())


@functools.lru_cache(maxsize=256)
def fault_plan(p: float, n: int) -> tuple[int, tuple[int, ...]]:
    """(K, C) for n-bit words at event probability p: C_j = floor(2^64 P(Binomial(n, p) <= j)), j < K.

    K is the smallest count with P(Binomial(n, p) > K) < TAIL_BOUND / 2 (at least 1 when p > 0, so even
    a tiny p keeps its single events; K = n when p = 1). The positions' bias adds at most K * 2^-49.
    """
    if not (1 <= n <= MAX_BITS or n == GROUP_BITS):
        raise ValueError(f"bits_per_word={n} must be in 1..{MAX_BITS} (or {GROUP_BITS}, a group of 32-bit words)")
    if p <= 0.0:
        return 0, ()
    pf = Fraction(min(p, 1.0))
    qf = 1 - pf
    cdf, acc = [], Fraction(0)
    for j in range(n + 1):
        acc += math.comb(n, j) * pf**j * qf ** (n - j)
        cdf.append(acc)
    budget = Fraction(TAIL_BOUND) / 2
    k_max = max(1, next(k for k in range(n + 1) if 1 - cdf[k] < budget))
    return k_max, tuple(min(2**64 - 1, math.floor(cdf[j] * 2**64)) for j in range(k_max))


@functools.lru_cache(maxsize=64)
def _table_values(p: float) -> tuple[int, ...]:
    vals = [0] * (GROUP_ROW + 2 + GROUP_BITS)
    for n in [*range(1, MAX_BITS + 1), GROUP_BITS]:
        k, c = fault_plan(p, n)
        row = [k, 0] + [v - 2**64 if v >= 2**63 else v for v in c]
        at = GROUP_ROW if n == GROUP_BITS else ROW * n
        vals[at : at + len(row)] = row
    return tuple(vals)


def event_thresholds(p: float, bits_per_word: int, device: torch.device | str) -> torch.Tensor:
    """int64 table of the sampling plans of every word width 1..32 and of the 128-bit group at event probability p.

    ``bits_per_word`` is only checked: one table serves every width, so callers that build it for 32 bits
    and draw 16- or 24-bit words get the same faults as ``inject_triton`` on those widths. The tensor is
    cached per (p, device) and shared: never write to it.
    """
    if not 1 <= bits_per_word <= MAX_BITS:
        raise ValueError(f"bits_per_word={bits_per_word} must be in 1..{MAX_BITS}")
    return _table(float(p), str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _table(p: float, device: str) -> torch.Tensor:
    # cached per device: no host-to-device copy (and no implicit stream sync) per launch; read-only
    return torch.tensor(_table_values(p), dtype=torch.int64, device=device)


@triton.jit
def popcount32(x):
    """Number of set bits of an int32 tile (SWAR; no libdevice, so it also runs interpreted)."""
    v = x.to(tl.uint32, bitcast=True)
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def mix64(z):
    """SplitMix64's finaliser (uint64 -> uint64, a bijection with full avalanche)."""
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _draw(key, ctr, c):
    """64-bit draw number ``c`` of the words whose counters (64 * word index, uint64) are ``ctr``."""
    return mix64(key + (ctr + (c + 1)) * 0x9E3779B97F4A7C15)


@triton.jit
def _take(s, cnt, k, b, N_BITS: tl.constexpr):
    # add position b (uint32 chunk) to the event set s unless it is taken, invalid, or s is full
    bit = tl.full(b.shape, 1, tl.uint32) << b
    take = ((s & bit) == 0) & (cnt < k)
    if (1 << (1 + (N_BITS > 2) + (N_BITS > 4) + (N_BITS > 8) + (N_BITS > 16))) != N_BITS:
        take = take & (b < N_BITS)
    return tl.where(take, s | bit, s), cnt + take.to(tl.int32)


@triton.jit
def _key(seed, stream):
    z0 = tl.full([], 0, tl.uint64)  # the key is a scalar: computed once per thread, not per word
    return mix64(mix64(z0 + seed + 0x9E3779B97F4A7C15) + (z0 + stream + 1) * 0x9E3779B97F4A7C15)


@triton.jit
def _event_count(u, row):
    """(k, k_tile, base) of the count draws ``u`` against the plan at ``row`` ([K, 0, C_0 .. C_{K-1}]).

    k: thresholds at or below u; k_tile: the tile's largest k (loop bound); base: C_{k-1} (0 when k = 0).
    """
    n_thr = tl.load(row).to(tl.int32)
    umax = tl.max(u)  # counts above the tile's largest draw occur nowhere in it: loop only to there
    k_tile = tl.full([], 0, tl.int32)
    for jt in range(n_thr):
        k_tile += (umax >= tl.load(row + 2 + jt).to(tl.uint64, bitcast=True)).to(tl.int32)
    k = tl.zeros(u.shape, tl.int32)
    base = tl.zeros(u.shape, tl.uint64)
    for j in range(k_tile):
        cj = tl.load(row + 2 + j).to(tl.uint64, bitcast=True)
        hit = u >= cj
        k += hit.to(tl.int32)
        base = tl.where(hit, cj, base)
    return k, k_tile, base


@triton.jit
def _burst(s, BURST_LEN: tl.constexpr, N_BITS: tl.constexpr):
    m = s
    for i in tl.static_range(1, BURST_LEN):  # a start at b flips b .. b + BURST_LEN - 1
        m |= s << i
    if N_BITS < 32:
        m &= (1 << N_BITS) - 1
    return m.to(tl.int32, bitcast=True)


@triton.jit
def _word_mask(seed, word_index, stream, thr_ptr, N_BITS: tl.constexpr, BURST_LEN: tl.constexpr):
    # the per-word law of widths 1..31 (module docstring)
    CB: tl.constexpr = 1 + (N_BITS > 2) + (N_BITS > 4) + (N_BITS > 8) + (N_BITS > 16)  # chunk_bits
    RCH: tl.constexpr = 16 // CB  # chunks in the residual's low RESIDUAL_BITS
    DCH: tl.constexpr = 64 // CB  # chunks per further draw
    key = _key(seed, stream)
    ctr = word_index.to(tl.uint64) * 64
    u = _draw(key, ctr, 0)
    k, k_tile, base = _event_count(u, thr_ptr + N_BITS * 40)  # ROW
    s = tl.zeros(word_index.shape, tl.uint32)
    cnt = tl.zeros(word_index.shape, tl.int32)
    res = ((u - base) & 0xFFFF).to(tl.uint32)
    n_res = tl.minimum(k_tile, RCH)
    for ir in range(n_res):  # positions from the residual's low bits
        s, cnt = _take(s, cnt, k, (res >> (ir * CB)) & ((1 << CB) - 1), N_BITS)
    short = tl.max((cnt < k).to(tl.int32))
    while (short > 0) & (n_res < RCH):  # rare: duplicates; every short word scans all RCH residual chunks
        s, cnt = _take(s, cnt, k, (res >> (n_res * CB)) & ((1 << CB) - 1), N_BITS)
        n_res += 1
        short = tl.max((cnt < k).to(tl.int32))
    c = tl.full([], 1, tl.int32)
    while short > 0:  # rare: a word of the tile needs more chunks (duplicates, or more than RCH events)
        v = _draw(key, ctr, c)
        for i in tl.static_range(DCH):
            s, cnt = _take(s, cnt, k, ((v >> (i * CB)) & ((1 << CB) - 1)).to(tl.uint32), N_BITS)
        c += 1
        short = tl.max((cnt < k).to(tl.int32)) * (c <= 63)  # MAX_DRAWS
    return _burst(s, BURST_LEN, N_BITS)


@triton.jit
def _take4(s0, s1, s2, s3, cnt, k, b):
    # add position b (uint32 in 0..127: bit b & 31 of word b >> 5) unless it is taken or the set is full
    wi = b >> 5
    bit = tl.full(b.shape, 1, tl.uint32) << (b & 31)
    cur = tl.where(wi == 0, s0, tl.where(wi == 1, s1, tl.where(wi == 2, s2, s3)))
    add = tl.where(((cur & bit) == 0) & (cnt < k), bit, 0)
    s0 |= tl.where(wi == 0, add, 0)
    s1 |= tl.where(wi == 1, add, 0)
    s2 |= tl.where(wi == 2, add, 0)
    s3 |= tl.where(wi == 3, add, 0)
    return s0, s1, s2, s3, cnt + (add != 0).to(tl.int32)


@triton.jit
def _group_events(u, key, ctr, row):
    """Event sets (four uint32 tiles) of the groups with count draws ``u``: the full sampling rule."""
    k, k_tile, base = _event_count(u, row)
    flip = k > 64  # place the 128 - k bits that do not flip instead
    k = tl.where(flip, 128 - k, k)
    z = tl.zeros(u.shape, tl.uint32)
    s0, s1, s2, s3 = z, z, z, z
    cnt = tl.zeros(u.shape, tl.int32)
    res = ((u - base) & 0xFFFF).to(tl.uint32)
    n_res = tl.minimum(k_tile, 2)  # two 7-bit chunks in the residual's low RESIDUAL_BITS
    for ir in range(n_res):
        s0, s1, s2, s3, cnt = _take4(s0, s1, s2, s3, cnt, k, (res >> (ir * 7)) & 127)
    short = tl.max((cnt < k).to(tl.int32))
    while (short > 0) & (n_res < 2):
        s0, s1, s2, s3, cnt = _take4(s0, s1, s2, s3, cnt, k, (res >> (n_res * 7)) & 127)
        n_res += 1
        short = tl.max((cnt < k).to(tl.int32))
    c = tl.full([], 1, tl.int32)
    while short > 0:  # a group of the tile needs more chunks: further draws
        v = _draw(key, ctr, c)
        for i in tl.static_range(9):
            s0, s1, s2, s3, cnt = _take4(s0, s1, s2, s3, cnt, k, ((v >> (i * 7)) & 127).to(tl.uint32))
        c += 1
        short = tl.max((cnt < k).to(tl.int32)) * (c <= 63)  # MAX_DRAWS
    return tl.where(flip, ~s0, s0), tl.where(flip, ~s1, s1), tl.where(flip, ~s2, s2), tl.where(flip, ~s3, s3)


@triton.jit
def _count_hits(u, row):
    """(u >= C_0, u >= C_1, u >= C_2, C_0, C_1, C_2) for count draws ``u`` against the plan at ``row``
    (a threshold past the plan's K never hits): the counts 0..3 that both short stages read."""
    n_thr = tl.load(row).to(tl.int32)
    c0 = tl.load(row + 2).to(tl.uint64, bitcast=True)
    c1 = tl.load(row + 3).to(tl.uint64, bitcast=True)
    c2 = tl.load(row + 4).to(tl.uint64, bitcast=True)
    return (u >= c0) & (n_thr > 0), (u >= c1) & (n_thr > 1), (u >= c2) & (n_thr > 2), c0, c1, c2


@triton.jit
def _bit(r):
    """1 << r for uint32 ``r`` below 32, else 0 (compiles to one clamped shift)."""
    return tl.where(r < 32, tl.full(r.shape, 1, tl.uint32) << r, 0)


@triton.jit
def _group_fast(u, row):
    """Event sets of count draws ``u`` assuming counts <= 2 and distinct residual chunks, and a per-group
    flag where that assumption fails (a count above 2 or a duplicate): those need ``_group_events``.

    The same sets as ``_group_events`` wherever the flag is clear: count k = h0 + h1 (h1 implies h0, the
    thresholds grow), chunk 0 placed when k >= 1, chunk 1 when k = 2 unless it repeats chunk 0 (flagged).
    """
    h0, h1, h2, c0, c1, _ = _count_hits(u, row)
    # only the residual's low 16 bits are used: 32-bit arithmetic suffices
    res = (u.to(tl.uint32) - tl.where(h1, c1.to(tl.uint32), tl.where(h0, c0.to(tl.uint32), 0))) & 0xFFFF
    b0 = res & 127
    b1 = (res >> 7) & 127
    dup = b1 == b0
    # word j holds bit b - 32 j of an event at b when that is in 0..31; absent events move past the group
    # (255), and the wrapped differences of events in earlier words are above 31 too: one clamped shift
    # (SHF.L.U32) per event and word, no word index compares
    r0 = tl.where(h0, b0, 255)
    r1 = tl.where(h1 & (b1 != b0), b1, 255)
    s0 = _bit(r0) | _bit(r1)
    s1 = _bit(r0 - 32) | _bit(r1 - 32)
    s2 = _bit(r0 - 64) | _bit(r1 - 64)
    s3 = _bit(r0 - 96) | _bit(r1 - 96)
    return s0, s1, s2, s3, (h1 & dup) | h2


@triton.jit
def _group_more(u, key, ctr, row):
    """Event sets of count draws ``u`` from the residual's two chunks and the first two chunks of draw 1,
    and a per-group flag where that does not suffice (a count above 3, or too many repeats among the four
    chunks): those need ``_group_events``.

    The full rule takes the residual's chunks, then draw 1's in order; counts up to 3 finish within the
    first four chunks unless they repeat, so the same sets as ``_group_events`` wherever the flag is
    clear. At BER 1e-3 about one group in 2700 needs more than ``_group_fast`` and one in 10^5 more than
    this: a tile that holds one such group pays a draw and four placements here, not the whole rule.
    """
    h0, h1, h2, c0, c1, c2 = _count_hits(u, row)
    h3 = (u >= tl.load(row + 5).to(tl.uint64, bitcast=True)) & (tl.load(row).to(tl.int32) > 3)
    k = h0.to(tl.int32) + h1.to(tl.int32) + h2.to(tl.int32)
    base = tl.where(h2, c2, tl.where(h1, c1, tl.where(h0, c0, 0))).to(tl.uint32)
    res = (u.to(tl.uint32) - base) & 0xFFFF  # the residual's low 16 bits, as in ``_group_events``
    v = _draw(key, ctr, 1)
    z = tl.zeros(u.shape, tl.uint32)
    s0, s1, s2, s3, cnt = _take4(z, z, z, z, tl.zeros(u.shape, tl.int32), k, res & 127)
    s0, s1, s2, s3, cnt = _take4(s0, s1, s2, s3, cnt, k, (res >> 7) & 127)
    s0, s1, s2, s3, cnt = _take4(s0, s1, s2, s3, cnt, k, (v & 127).to(tl.uint32))
    s0, s1, s2, s3, cnt = _take4(s0, s1, s2, s3, cnt, k, ((v >> 7) & 127).to(tl.uint32))
    return s0, s1, s2, s3, (cnt < k) | h3


@triton.jit
def _group_finish(u, key, ctr, row, s0, s1, s2, s3, bad):
    """The sets of ``_group_events`` from ``_group_fast``'s (``bad`` its flags), paying the least the tile allows."""
    if tl.max(bad.to(tl.int32)) > 0:  # rare at small p: counts of 3, repeated chunks
        s0, s1, s2, s3, bad = _group_more(u, key, ctr, row)
        if tl.max(bad.to(tl.int32)) > 0:  # rarer: the full rule
            s0, s1, s2, s3 = _group_events(u, key, ctr, row)
    return s0, s1, s2, s3


@triton.jit
def group_bursts(s0, s1, s2, s3, BURST_LEN: tl.constexpr):
    """Event sets of a group -> its four int32 XOR masks (BURST_LEN = 1: the events themselves)."""
    return _burst(s0, BURST_LEN, 32), _burst(s1, BURST_LEN, 32), _burst(s2, BURST_LEN, 32), _burst(s3, BURST_LEN, 32)


@triton.jit
def group_masks(seed, group_index, stream, thr_ptr, BURST_LEN: tl.constexpr):
    """XOR masks (four int32 tiles) of the 32-bit words 4g, 4g+1, 4g+2, 4g+3 of each ``group_index`` g.

    The law of 32-bit words: one count draw per aligned group of four words (Binomial(128, p) from the
    group plan), positions as 7-bit chunks of the residual and further draws (``_group_events``). More
    than 64 events are placed as the complement of 128 - k chosen positions, so no group needs more than
    64 distinct chunks. A group's masks are a pure function of (seed, stream, group index).

    Fast path (``_group_fast``): counts 0..2 from three scalar thresholds and the residual's two
    chunks, one tile-level test; only a tile where that does not suffice runs ``_group_finish``.
    """
    key = _key(seed, stream)
    ctr = group_index.to(tl.uint64) * 64
    u = _draw(key, ctr, 0)
    row = thr_ptr + 1320  # GROUP_ROW; not group_key_row: through it sm_90 gets 8 more instructions a program
    s0, s1, s2, s3, bad = _group_fast(u, row)
    s0, s1, s2, s3 = _group_finish(u, key, ctr, row, s0, s1, s2, s3, bad)
    return group_bursts(s0, s1, s2, s3, BURST_LEN)


@triton.jit
def group_draw(key, group_index, row):
    """First draw and fast-path event sets of aligned groups ``group_index``, without the tile test.

    Returns (u, s0, s1, s2, s3, bad); ``group_fix`` finishes the groups flagged ``bad``. Splitting
    ``group_masks`` in two lets a kernel that draws several groups per lane test them all at once.
    ``key``: ``_key(seed, stream)``; ``row``: the group plan, ``thr_ptr + GROUP_ROW``.
    """
    u = _draw(key, group_index.to(tl.uint64) * 64, 0)
    s0, s1, s2, s3, bad = _group_fast(u, row)
    return u, s0, s1, s2, s3, bad


@triton.jit
def group_fix(u, key, group_index, row, s0, s1, s2, s3, bad):
    """Finish a tile of ``group_draw`` results where some group is ``bad``: the second stage, then the full
    rule where that does not suffice (``_group_finish``); the same sets elsewhere."""
    return _group_finish(u, key, group_index.to(tl.uint64) * 64, row, s0, s1, s2, s3, bad)


@triton.jit
def group_key_row(seed, stream, thr_ptr):
    """(key, group plan row) for ``group_draw``: computed once per program."""
    return _key(seed, stream), thr_ptr + 1320  # GROUP_ROW


@triton.jit
def select4(m0, m1, m2, m3, j):
    """m_j per element (j: int tile in 0..3, broadcast against the m's)."""
    return tl.where(j == 0, m0, tl.where(j == 1, m1, tl.where(j == 2, m2, m3)))


@triton.jit
def run_masks(seed, first, stream, thr_ptr, BURST_LEN: tl.constexpr):
    """Masks of the 32-bit words first .. first + 3 (any alignment): the two groups they touch, one test."""
    f = first.to(tl.int64)
    ga = f >> 2
    r = (f & 3).to(tl.int32)
    key, row = group_key_row(seed, stream, thr_ptr)
    ca = ga.to(tl.uint64) * 64
    cb = ca + 64
    ua = _draw(key, ca, 0)
    ub = _draw(key, cb, 0)
    a0, a1, a2, a3, bad_a = _group_fast(ua, row)
    b0, b1, b2, b3, bad_b = _group_fast(ub, row)
    if tl.max((bad_a | bad_b).to(tl.int32)) > 0:
        a0, a1, a2, a3 = _group_finish(ua, key, ca, row, a0, a1, a2, a3, bad_a)
        b0, b1, b2, b3 = _group_finish(ub, key, cb, row, b0, b1, b2, b3, bad_b)
    a0, a1, a2, a3 = group_bursts(a0, a1, a2, a3, BURST_LEN)
    b0, b1, b2, b3 = group_bursts(b0, b1, b2, b3, BURST_LEN)
    m0 = tl.where(r < 4, select4(a0, a1, a2, a3, r), select4(b0, b1, b2, b3, r - 4))
    m1 = tl.where(r + 1 < 4, select4(a0, a1, a2, a3, r + 1), select4(b0, b1, b2, b3, r - 3))
    m2 = tl.where(r + 2 < 4, select4(a0, a1, a2, a3, r + 2), select4(b0, b1, b2, b3, r - 2))
    m3 = tl.where(r + 3 < 4, select4(a0, a1, a2, a3, r + 3), select4(b0, b1, b2, b3, r - 1))
    return m0, m1, m2, m3


@triton.jit
def flip_mask(seed, word_index, stream, thr_ptr, N_BITS: tl.constexpr, BURST_LEN: tl.constexpr):
    """XOR mask (int32, low N_BITS bits) for each global ``word_index`` (int tile of any shape).

    seed: int scalar; stream: int scalar separating independent channels (values, scales, ...);
    thr_ptr: int64 table from ``event_thresholds`` (any width); BURST_LEN = 1 is the BSC.
    A word's mask is a pure function of (seed, stream, word_index): the tile only sets loop bounds.
    32-bit words follow the group law (``group_masks``); a tile holding whole aligned groups should call
    ``group_masks`` once per group instead, which is four times cheaper.
    """
    if N_BITS == 32:
        wi = word_index.to(tl.int64)
        m0, m1, m2, m3 = group_masks(seed, wi >> 2, stream, thr_ptr, BURST_LEN)
        return select4(m0, m1, m2, m3, wi & 3)
    else:
        return _word_mask(seed, word_index, stream, thr_ptr, N_BITS, BURST_LEN)


@triton.jit(do_not_specialize=["seed", "word_offset", "stream"])
def _inject_kernel(
    w_ptr, out_ptr, count_ptr, thr_ptr, N, word_offset, seed, stream,
    N_BITS: tl.constexpr, BURST_LEN: tl.constexpr, BLOCK: tl.constexpr, GROUPED: tl.constexpr,
):
    # words: [N] (uint8 / int16 / int32) -> out [N] = words ^ flip_mask; count += flipped bits
    # the loads are issued first, so their latency overlaps the (data-independent) mask computation
    if GROUPED:  # 32-bit words, word_offset % 4 == 0: a [BLOCK / 4, 4] tile of whole groups, one draw each
        grp = tl.program_id(0).to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
        col = tl.arange(0, 4)[None, :]
        offs = grp[:, None] * 4 + col
        valid = offs < N
        w = tl.load(w_ptr + offs, mask=valid, other=0).to(tl.int32)
        m0, m1, m2, m3 = group_masks(seed, grp + word_offset // 4, stream, thr_ptr, BURST_LEN)
        m = select4(m0[:, None], m1[:, None], m2[:, None], m3[:, None], col)
    else:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < N
        w = tl.load(w_ptr + offs, mask=valid, other=0).to(tl.int32)
        m = flip_mask(seed, offs + word_offset, stream, thr_ptr, N_BITS, BURST_LEN)
    tl.store(out_ptr + offs, (w ^ m).to(out_ptr.dtype.element_ty), mask=valid)
    tl.atomic_add(count_ptr, tl.sum(tl.where(valid, popcount32(m), 0).to(tl.int64)), sem="relaxed")


def inject_triton(
    words: torch.Tensor,
    bits_per_word: int,
    ber: float,
    seed: int,
    model: str = "bsc",
    burst_len: int = 2,
    word_offset: int = 0,
    stream: int = 0,
    out: torch.Tensor | None = None,
    block: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher: flip bits of ``words`` (any shape, contiguous copy taken) -> (flipped words, int64 [1] flip count).

    ``out`` may be ``words`` itself for in-place injection; ``block`` only changes the grid, never the faults.
    """
    flat = words.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    dst = torch.empty_like(flat) if out is None else out.reshape(-1)
    count = torch.zeros(1, dtype=torch.int64, device=words.device)
    n = flat.numel()
    if n:
        blen = 1 if model == "bsc" else burst_len
        thr = event_thresholds(event_probability(ber, model, burst_len), bits_per_word, words.device)
        grouped = bits_per_word == 32 and word_offset % GROUP_WORDS == 0 and block % GROUP_WORDS == 0
        _inject_kernel[(triton.cdiv(n, block),)](
            flat, dst, count, thr, n, word_offset, seed, stream, bits_per_word, blen, block, grouped
        )
    return dst.reshape(words.shape), count
