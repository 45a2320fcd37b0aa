"""Bit-error models for stored codewords: binary symmetric channel and bursts within a word.

``inject(words, bits_per_word, ber, seed, model, burst_len, backend)`` flips only the low
``bits_per_word`` bits of each element, i.e. exactly the bits a layout really stores (7 per
Hamming(7,4) codeword, 8 per SECDED byte or packed INT4 pair, 24 per Golay word, 16 per fp16).

- ``bsc``: every stored bit flips independently with probability ``ber``.
- ``burst``: every bit position starts a burst independently with probability ``ber / burst_len``;
  a burst at bit b flips bits b .. b + burst_len - 1 of the same word (clipped at the word's top bit,
  overlapping bursts merge). Expected flipped bits per n-bit word: sum_i 1 - (1 - ber/L)^min(i+1, L),
  ~ ``ber * (n - (L - 1) / 2)`` at small ber (``expected_flip_rate``; docs/error_model.md).

Backends are each deterministic for a seed but draw different streams: the torch path samples the
number of events (binomial) and their positions (uniform without replacement) on a CPU generator,
never one random number per bit unless ber is large; the Triton path (``kernels.faults``) draws SplitMix64
numbers keyed by (seed, global word index), independent of the launch grid, with a per-word plan chosen
on the host (exact up to a neglected mass below 2^-40 per word, docs/error_model.md); 32-bit words are
drawn in aligned groups of four (one draw per 128 bits, the same independent bits). ``n_flips`` counts
flipped bits (after merging overlapping bursts).
"""

from __future__ import annotations

import torch

from ecc_kv.quant import check_backend

MODELS = ("bsc", "burst")
WORD_DTYPES = {torch.uint8: 8, torch.int16: 16, torch.int32: 32}
_DENSE_ABOVE = 1.0 / 16  # above this event probability, one Bernoulli draw per bit is cheaper


def validate_fault_args(bits_per_word: int, ber: float, seed: int, model: str, burst_len: int) -> None:
    """Raise ValueError/TypeError naming the bad argument (shared with kv_protect)."""
    if isinstance(bits_per_word, bool) or not isinstance(bits_per_word, int) or not 1 <= bits_per_word <= 32:
        raise ValueError(f"bits_per_word={bits_per_word!r} must be an int in 1..32")
    if isinstance(ber, bool) or not isinstance(ber, (int, float)) or not 0.0 <= float(ber) <= 1.0:
        raise ValueError(f"ber={ber!r} must be a number in [0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed!r} must be an int in [0, 2**63)")
    if model not in MODELS:
        raise ValueError(f"model={model!r} is not one of {MODELS}")
    if isinstance(burst_len, bool) or not isinstance(burst_len, int) or not 1 <= burst_len <= 32:
        raise ValueError(f"burst_len={burst_len!r} must be an int in 1..32")


def expected_flip_rate(ber: float, bits_per_word: int, model: str = "bsc", burst_len: int = 2) -> float:
    """Expected fraction of stored bits flipped per word under ``model`` (exact)."""
    if model == "bsc":
        return float(ber)
    ps = ber / burst_len
    n = bits_per_word
    return sum(1.0 - (1.0 - ps) ** min(i + 1, burst_len) for i in range(n)) / n


def _unique_positions(total: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random k-subset of range(total), sorted (int64), without per-bit draws."""
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    pos = torch.empty(0, dtype=torch.int64)
    while pos.numel() < k:
        need = k - pos.numel()
        extra = torch.randint(0, total, (need + need // 8 + 16,), generator=gen, dtype=torch.int64)
        pos = torch.unique(torch.cat([pos, extra]))
    if pos.numel() > k:  # a uniform subset of a uniform random set is uniform
        keep = torch.randperm(pos.numel(), generator=gen)[:k]
        pos = pos[keep].sort().values
    return pos


def event_positions(n_words: int, bits_per_word: int, p: float, seed: int) -> torch.Tensor:
    """Sorted global bit positions (word * bits_per_word + bit) of independent Bernoulli(p) events, int64 on CPU."""
    total = n_words * bits_per_word
    if total == 0 or p <= 0.0:
        return torch.empty(0, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    if p > _DENSE_ABOVE:
        bits = torch.rand(total, generator=gen, dtype=torch.float64) < p
        return bits.nonzero().flatten()
    k = int(torch.binomial(torch.tensor([float(total)], dtype=torch.float64),
                           torch.tensor([p], dtype=torch.float64), generator=gen).item())
    return _unique_positions(total, min(k, total), gen)


def flip_masks(
    n_words: int, bits_per_word: int, ber: float, seed: int, model: str = "bsc", burst_len: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse fault pattern: (word indices int64 [K], XOR masks int64 [K]), sorted by word, on CPU."""
    n = bits_per_word
    p = ber if model == "bsc" else ber / burst_len
    starts = event_positions(n_words, n, p, seed)
    if model == "burst" and burst_len > 1 and starts.numel():
        bit = starts % n
        span = torch.arange(burst_len, dtype=torch.int64)
        cover = (starts[:, None] + span[None, :])[(bit[:, None] + span[None, :]) < n]
        starts = torch.unique(cover)
    words = starts // n
    uw, inv = torch.unique_consecutive(words, return_inverse=True)
    masks = torch.zeros(uw.numel(), dtype=torch.int64).index_add_(0, inv, torch.ones_like(words) << (starts % n))
    return uw, masks


def apply_masks(words: torch.Tensor, index: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``words`` with ``words.flat[index] ^= masks`` (a new tensor)."""
    flat = words.reshape(-1).clone()
    if index.numel():
        idx = index.to(words.device)
        m = masks.to(words.device)
        flat[idx] = (flat[idx].to(torch.int64) ^ m).to(words.dtype)
    return flat.reshape(words.shape)


def inject(
    words: torch.Tensor,
    bits_per_word: int,
    ber: float,
    seed: int,
    model: str = "bsc",
    burst_len: int = 2,
    backend: str = "torch",
    word_offset: int = 0,
    stream: int = 0,
) -> tuple[torch.Tensor, int]:
    """Flip the stored bits of ``words`` (uint8 / int16 / int32, any shape) -> (new words, bits flipped).

    ``word_offset`` and ``stream`` key the Triton SplitMix64 stream (global word index, channel); the torch
    path mixes them into its seed.
    """
    check_backend(backend)
    validate_fault_args(bits_per_word, ber, seed, model, burst_len)
    if words.dtype not in WORD_DTYPES:
        raise TypeError(f"words.dtype={words.dtype} is not one of {list(WORD_DTYPES)}")
    if bits_per_word > WORD_DTYPES[words.dtype]:
        raise ValueError(f"bits_per_word={bits_per_word} does not fit in words.dtype={words.dtype}")
    if ber == 0 or words.numel() == 0:
        return words.clone(), 0
    if backend == "triton":
        from kernels.faults import inject_triton

        out, count = inject_triton(words, bits_per_word, float(ber), seed, model, burst_len, word_offset, stream)
        return out, int(count.item())
    sub_seed = (seed * 1_000_003 + word_offset * 7919 + stream) % 2**63
    index, masks = flip_masks(words.numel(), bits_per_word, float(ber), sub_seed, model, burst_len)
    n_flips = int(sum(bin(int(m)).count("1") for m in masks)) if masks.numel() < 64 else _popcount_sum(masks)
    return apply_masks(words, index, masks), n_flips


def _popcount_sum(masks: torch.Tensor) -> int:
    bits = torch.arange(32, dtype=torch.int64)
    return int(((masks[:, None] >> bits[None, :]) & 1).sum())
