"""Triton bit-error injection: a Philox flip-mask device function and an in-place inject launcher.

Stream: the random numbers for a word depend only on (seed, global word index, stream id, call number),
never on the launch grid or the tile, so every kernel that calls ``flip_mask`` with the same global word
index sees the same faults (fused inject+decode, KV round trip, paged cache).

Sampling (integer only, so interpreted and compiled runs agree bit for bit), per n-bit word with
independent Bernoulli(p) events, in one of two plans chosen on the host from (p, n) by ``fault_plan``
(the same for every caller, since the plan travels in the table from ``event_thresholds``):

- sparse (small p): Philox call 0 gives r0..r3. The event count k ~ Binomial(n, p) comes from the 64-bit
  uniform (r0, r1) compared with ``C_j = floor(2^64 P(Binomial(n, p) <= j))``, j < K; then the events
  are the first k distinct valid values among ``ceil(log2 n)``-bit chunks of r2, r3 (and of E more
  calls): a uniform k-subset, i.e. exactly the Bernoulli(p)^n pattern. K and E are the smallest values
  whose neglected mass (more than K events, or fewer than k distinct chunks) is below
  ``TAIL_BOUND = 2^-40`` per word (computed exactly on the host). 32-bit words at ber 1e-3: one call.
- dense (large p, where the sparse plan would cost more): bit j flips when draw j (call j // 4) is
  below ``floor(2^32 p)``: ceil(n / 4) calls.

No data-dependent control flow and no cross-lane reduction: the loops run a per-launch count read from
the table. BSC: an event flips its bit. Burst: an event at bit b starts a burst flipping bits
b .. b + burst_len - 1 (clipped at the top of the word, overlapping bursts merge); the start
probability is ber / burst_len (see docs/error_model.md for the resulting flip rate).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch
import triton
import triton.language as tl

WORD_DTYPES = {torch.uint8: 8, torch.int16: 16, torch.int32: 32}
TAIL_BOUND = 2.0**-40  # per-word probability that the sparse plan's pattern differs from the exact law
ROW = 40  # entries per word width: [dense, K, M_r2, M_r3, E, floor(2^32 p), C_0 .. C_{K-1}] (K <= 32)
MAX_BITS = 32
_MAX_EXTRA = 4  # at most this many extra Philox calls for sparse positions
_COST_CALL, _COST_CHUNK, _COST_CMP = 60, 9, 3  # rough instruction counts, to pick the cheaper plan


def event_probability(ber: float, model: str, burst_len: int) -> float:
    """Per-bit event probability: ``ber`` for BSC, the burst start rate ``ber / burst_len`` for bursts."""
    return ber if model == "bsc" else ber / burst_len


def chunk_bits(n: int) -> int:
    """Bits per position chunk for n-bit words: ceil(log2 n) (at least 1); values >= n are skipped."""
    return max(1, (n - 1).bit_length())


def _miss_probability(n: int, draws: int, k: int) -> float:
    """P(fewer than k distinct values < n among ``draws`` uniform chunks of ``chunk_bits(n)`` bits)."""
    span = 2 ** chunk_bits(n)
    dist = [1.0] + [0.0] * n  # dist[d]: probability of d distinct so far
    for _ in range(draws):
        nxt = [0.0] * (n + 1)
        for d, pr in enumerate(dist):
            if pr:
                new = (n - d) / span
                nxt[d] += pr * (1.0 - new)
                if d < n:
                    nxt[d + 1] += pr * new
        dist = nxt
    return sum(dist[:k])


@functools.lru_cache(maxsize=256)
def fault_plan(p: float, n: int) -> tuple[bool, int, int, int, tuple[int, ...]]:
    """(dense, K, M, E, C) for n-bit words at event probability p; C_j = floor(2^64 P(Binomial(n, p) <= j)), j < K.

    Sparse: K count thresholds, M chunks of (r2, r3) and E extra Philox calls (all their chunks), the
    cheapest with neglected mass < TAIL_BOUND; dense when the sparse plan would cost more.
    """
    if not 1 <= n <= MAX_BITS:
        raise ValueError(f"bits_per_word={n} must be in 1..{MAX_BITS}")
    if p <= 0.0:
        return False, 0, 0, 0, ()
    if p >= 1.0:
        return True, 0, 0, 0, ()
    pf, qf = Fraction(p), 1 - Fraction(p)
    pmf = [math.comb(n, j) * pf**j * qf ** (n - j) for j in range(n + 1)]
    cdf, acc = [], Fraction(0)
    for j in range(n + 1):
        acc += pmf[j]
        cdf.append(acc)
    budget = Fraction(TAIL_BOUND) / 2
    # more than K events: mass < 2^-41; K >= 1 so that even a tiny p keeps its (2^-64-resolved) single events
    k_max = max(1, next(k for k in range(n + 1) if 1 - cdf[k] < budget))
    first, per_call = 2 * (32 // chunk_bits(n)), 4 * (32 // chunk_bits(n))
    dense_cost = _COST_CALL * ((n + 3) // 4) + _COST_CMP * n
    for extra in range(_MAX_EXTRA + 1):
        for m in range(1, first + 1) if extra == 0 else [first]:
            draws = m + per_call * extra
            miss = sum(float(pmf[k]) * _miss_probability(n, draws, k) for k in range(1, k_max + 1))
            if miss < TAIL_BOUND / 2:
                cost = _COST_CALL * (1 + extra) + _COST_CMP * k_max + _COST_CHUNK * draws
                if cost > dense_cost:
                    return True, 0, 0, 0, ()
                c = tuple(min(2**64 - 1, math.floor(cdf[j] * 2**64)) for j in range(k_max))
                return False, k_max, m, extra, c
    return True, 0, 0, 0, ()


@functools.lru_cache(maxsize=64)
def _table_values(p: float) -> tuple[int, ...]:
    vals = [0] * (ROW * (MAX_BITS + 1))
    for n in range(1, MAX_BITS + 1):
        dense, k, m, e, c = fault_plan(p, n)
        thr32 = min(2**32, math.floor(p * 2**32)) if p > 0 else 0
        m2 = min(m, 32 // chunk_bits(n))  # chunks taken from r2, the rest from r3
        row = [int(dense), k, m2, m - m2, e, thr32] + [v - 2**64 if v >= 2**63 else v for v in c]
        vals[ROW * n : ROW * n + len(row)] = row
    return tuple(vals)


def event_thresholds(p: float, bits_per_word: int, device: torch.device | str) -> torch.Tensor:
    """int64 table of the sampling plans of every word width 1..32 at event probability p (``fault_plan``).

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
def _take(s, cnt, k, b, N_BITS: tl.constexpr, CB: tl.constexpr):
    # add position b (uint32 chunk) to the event set s unless it is taken, invalid, or s is full
    bit = tl.full(b.shape, 1, tl.uint32) << b
    take = ((s & bit) == 0) & (cnt < k)
    if (1 << CB) != N_BITS:
        take = take & (b < N_BITS)
    return tl.where(take, s | bit, s), cnt + take.to(tl.int32)


@triton.jit
def _place(s, cnt, k, r, N_BITS: tl.constexpr, CB: tl.constexpr):
    # all chunks of the uint32 draw r
    for i in tl.static_range(32 // CB):
        s, cnt = _take(s, cnt, k, (r >> (i * CB)) & ((1 << CB) - 1), N_BITS, CB)
    return s, cnt


@triton.jit
def flip_mask(seed, word_index, stream, thr_ptr, N_BITS: tl.constexpr, BURST_LEN: tl.constexpr):
    """XOR mask (int32, low N_BITS bits) for each global ``word_index`` (int64 tile of any shape).

    seed: int scalar; stream: int scalar separating independent channels (values, scales, ...);
    thr_ptr: int64 table from ``event_thresholds`` (any width); BURST_LEN = 1 is the BSC.
    Call c draws Philox(seed; lo, hi, c, stream). The plan (dense or sparse, K, E) is read from the
    table row of N_BITS: the same for every lane and program, so a word's mask is a pure function of
    (seed, word_index, stream) whatever the tile.
    """
    row = thr_ptr + N_BITS * 40  # ROW
    dense = tl.load(row)
    n_cmp = tl.load(row + 1).to(tl.int32)
    n_chunks2 = tl.load(row + 2).to(tl.int32)
    n_chunks3 = tl.load(row + 3).to(tl.int32)
    n_extra = tl.load(row + 4).to(tl.int32)
    lo = (word_index & 0xFFFFFFFF).to(tl.uint32)
    hi = ((word_index >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = lo * 0
    st = zero + stream
    s = tl.zeros(word_index.shape, tl.uint32)
    if dense != 0:
        thr = tl.load(row + 5)
        for c in tl.static_range((N_BITS + 3) // 4):
            r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero + c, st)
            s |= (r0.to(tl.int64) < thr).to(tl.uint32) << (4 * c)
            if 4 * c + 1 < N_BITS:
                s |= (r1.to(tl.int64) < thr).to(tl.uint32) << (4 * c + 1)
            if 4 * c + 2 < N_BITS:
                s |= (r2.to(tl.int64) < thr).to(tl.uint32) << (4 * c + 2)
            if 4 * c + 3 < N_BITS:
                s |= (r3.to(tl.int64) < thr).to(tl.uint32) << (4 * c + 3)
    else:
        CB: tl.constexpr = 1 + (N_BITS > 2) + (N_BITS > 4) + (N_BITS > 8) + (N_BITS > 16)  # chunk_bits
        r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero, st)
        u = (r0.to(tl.uint64) << 32) | r1.to(tl.uint64)
        k = tl.zeros(word_index.shape, tl.int32)
        for j in range(n_cmp):  # event count: k = #{j < K: u >= C_j}
            k += (u >= tl.load(row + 6 + j).to(tl.uint64, bitcast=True)).to(tl.int32)
        cnt = tl.zeros(word_index.shape, tl.int32)
        for i in range(n_chunks2):  # positions: the first k distinct valid chunks of r2, r3, ...
            s, cnt = _take(s, cnt, k, (r2 >> (i * CB)) & ((1 << CB) - 1), N_BITS, CB)
        for i in range(n_chunks3):
            s, cnt = _take(s, cnt, k, (r3 >> (i * CB)) & ((1 << CB) - 1), N_BITS, CB)
        for c in range(1, 1 + n_extra):
            r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero + c, st)
            s, cnt = _place(s, cnt, k, r0, N_BITS, CB)
            s, cnt = _place(s, cnt, k, r1, N_BITS, CB)
            s, cnt = _place(s, cnt, k, r2, N_BITS, CB)
            s, cnt = _place(s, cnt, k, r3, N_BITS, CB)
    m = s
    for i in tl.static_range(1, BURST_LEN):  # a start at b flips b .. b + BURST_LEN - 1
        m |= s << i
    if N_BITS < 32:
        m &= (1 << N_BITS) - 1
    return m.to(tl.int32, bitcast=True)


@triton.jit(do_not_specialize=["seed", "word_offset", "stream"])
def _inject_kernel(
    w_ptr, out_ptr, count_ptr, thr_ptr, N, word_offset, seed, stream,
    N_BITS: tl.constexpr, BURST_LEN: tl.constexpr, BLOCK: tl.constexpr,
):
    # words: [N] (uint8 / int16 / int32) -> out [N] = words ^ flip_mask; count += flipped bits
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    w = tl.load(w_ptr + offs, mask=valid, other=0).to(tl.int32)
    m = flip_mask(seed, offs + word_offset, stream, thr_ptr, N_BITS, BURST_LEN)
    tl.store(out_ptr + offs, (w ^ m).to(out_ptr.dtype.element_ty), mask=valid)
    tl.atomic_add(count_ptr, tl.sum(tl.where(valid, popcount32(m), 0).to(tl.int64)))


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
        _inject_kernel[(triton.cdiv(n, block),)](
            flat, dst, count, thr, n, word_offset, seed, stream, bits_per_word, blen, block
        )
    return dst.reshape(words.shape), count
