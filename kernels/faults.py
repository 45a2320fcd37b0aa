"""Triton bit-error injection: a Philox flip-mask device function and an in-place inject launcher.

Stream: the random numbers for a word depend only on (seed, global word index, stream id, draw
number), never on the launch grid, so every kernel that calls ``flip_mask`` with the same global word
index sees the same faults (fused inject+decode, KV round trip, paged cache).

Sampling (exact, integer only, so interpreted and compiled runs agree): bit events are independent
Bernoulli(p). Instead of one uniform per bit, each 32-bit Philox output draws the *gap* to the next
event in the word from the geometric law by comparing it against the table
``T_j = floor(2^32 * (1 - (1 - p)^(j + 1)))``, j < bits_per_word (``event_thresholds``). One Philox
call gives four gaps; a word always gets ceil((bits + 1) / 4) calls (2 for 7 bits, 3 for 8, 7 for
24), enough for any number of events, with no data-dependent control flow or cross-lane reduction
(an early exit on a tile-wide reduction gave tile-dependent masks with triton 3.6 on the H100). BSC: an event flips its bit. Burst: an event at bit b
starts a burst flipping bits b .. b + burst_len - 1 (clipped at the top of the word, overlapping
bursts merge); the start probability is ber / burst_len (see docs/error_model.md for the resulting
flip rate).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

WORD_DTYPES = {torch.uint8: 8, torch.int16: 16, torch.int32: 32}


def event_probability(ber: float, model: str, burst_len: int) -> float:
    """Per-bit event probability: ``ber`` for BSC, the burst start rate ``ber / burst_len`` for bursts."""
    return ber if model == "bsc" else ber / burst_len


def event_thresholds(p: float, bits_per_word: int, device: torch.device | str) -> torch.Tensor:
    """int64 ``[bits_per_word]``: T_j = floor(2^32 * P(gap <= j)) for a geometric gap with event probability p."""
    if p >= 1.0:
        vals = [2**32] * bits_per_word
    elif p <= 0.0:
        vals = [0] * bits_per_word
    else:
        lq = math.log1p(-p)
        vals = [min(2**32, int(math.floor(-math.expm1((j + 1) * lq) * 2.0**32))) for j in range(bits_per_word)]
    return torch.tensor(vals, dtype=torch.int64, device=device)


@triton.jit
def popcount32(x):
    """Number of set bits of an int32 tile (SWAR; no libdevice, so it also runs interpreted)."""
    v = x.to(tl.uint32, bitcast=True)
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _advance(pos, mask, r, thr_ptr, N_BITS: tl.constexpr, BURST_LEN: tl.constexpr):
    # one geometric gap per word from the uint32 draw r; pos = last event bit (-1 before the first)
    rr = r.to(tl.int64)
    gap = tl.zeros(pos.shape, tl.int32)
    for j in range(N_BITS):  # a runtime loop: small code for 24- and 32-bit words
        gap += (rr >= tl.load(thr_ptr + j)).to(tl.int32)
    active = pos < N_BITS
    new_pos = tl.where(active, pos + 1 + gap, pos)
    hit = active & (new_pos < N_BITS)
    run = (((1 << BURST_LEN) - 1) << tl.where(hit, new_pos, 0).to(tl.int64)) & ((1 << N_BITS) - 1)
    mask = mask | tl.where(hit, run, 0).to(tl.int32)
    return new_pos, mask


@triton.jit
def flip_mask(seed, word_index, stream, thr_ptr, N_BITS: tl.constexpr, BURST_LEN: tl.constexpr):
    """XOR mask (int32, low N_BITS bits) for each global ``word_index`` (int64 tile of any shape).

    seed: int scalar; stream: int scalar separating independent channels (values, scales, ...);
    thr_ptr: int64 [>= N_BITS] table from ``event_thresholds``; BURST_LEN = 1 is the BSC.
    Call c (c < ceil((N_BITS + 1) / 4)) draws Philox(seed; lo, hi, c, stream): N_BITS + 1 gaps always
    finish a word. Every call is made for every lane (no tile-level early exit, no cross-lane
    reduction), so a word's mask is a pure function of (seed, word_index, stream) whatever the tile.
    """
    lo = (word_index & 0xFFFFFFFF).to(tl.uint32)
    hi = ((word_index >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = lo * 0
    st = zero + stream
    pos = tl.full(word_index.shape, -1, tl.int32)
    mask = tl.zeros(word_index.shape, tl.int32)
    for c in range((N_BITS + 4) // 4):
        r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero + c, st)
        pos, mask = _advance(pos, mask, r0, thr_ptr, N_BITS, BURST_LEN)
        pos, mask = _advance(pos, mask, r1, thr_ptr, N_BITS, BURST_LEN)
        pos, mask = _advance(pos, mask, r2, thr_ptr, N_BITS, BURST_LEN)
        pos, mask = _advance(pos, mask, r3, thr_ptr, N_BITS, BURST_LEN)
    return mask


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
