"""Fault models (torch path): flip rates within binomial bounds, burst structure, determinism, validation."""

from __future__ import annotations

import math

import pytest
import torch

from ecc_kv.faults import event_positions, expected_flip_rate, flip_masks, inject

Z = 5.0  # two-sided bound in standard deviations (results are deterministic per seed: never flaky)


def _popcount(x: torch.Tensor) -> torch.Tensor:
    bits = torch.arange(32, dtype=torch.int64, device=x.device)
    return ((x.to(torch.int64)[..., None] >> bits) & 1).sum(-1)


def flipped(words: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """XOR of before and after as non-negative int64 (no sign extension of int16/int32 words)."""
    return (words ^ out).to(torch.int64).flatten() & ((1 << (8 * words.element_size())) - 1)


def check_bsc_statistics(words: torch.Tensor, out: torch.Tensor, n: int, ber: float, n_flips: int) -> None:
    """Observed flips vs Binomial(N*n, ber); only low n bits touched; flips per word ~ Binomial(n, ber)."""
    x = flipped(words, out)
    assert int((x >> n).abs().sum()) == 0, "bits above bits_per_word were flipped"
    per_word = _popcount(x)
    assert int(per_word.sum()) == n_flips
    total = words.numel() * n
    mean, sd = total * ber, math.sqrt(total * ber * (1 - ber))
    assert abs(n_flips - mean) <= Z * sd + 1, f"{n_flips} flips, expected {mean:.1f} +- {sd:.1f}"
    # independence inside a word: fraction of words with >= 2 flips
    p2 = 1 - (1 - ber) ** n - n * ber * (1 - ber) ** (n - 1)
    m2, s2 = words.numel() * p2, math.sqrt(words.numel() * p2 * (1 - p2))
    assert abs(int((per_word >= 2).sum()) - m2) <= Z * s2 + 1
    # every bit position is hit at the same rate
    pos = ((x[:, None] >> torch.arange(n, device=x.device)) & 1).sum(0).float()
    pm, ps = words.numel() * ber, math.sqrt(words.numel() * ber * (1 - ber))
    assert ((pos - pm).abs() <= Z * ps + 1).all(), pos.tolist()


def check_burst_structure(words: torch.Tensor, out: torch.Tensor, n: int, ber: float, length: int, n_flips: int) -> None:
    """Flips come in runs of ``length`` adjacent bits (clipped at the top bit); mean matches the formula."""
    x = flipped(words, out)
    hit = x[x != 0].tolist()
    run = (1 << length) - 1
    full = (1 << n) - 1
    single = [m for m in hit if any(m == (run << b) & full for b in range(n))]
    assert len(single) >= 0.9 * len(hit)  # at small ber nearly every hit word holds one burst
    assert all(m & ~full == 0 for m in hit)
    mean = expected_flip_rate(ber, n, "burst", length) * words.numel() * n
    sd = math.sqrt(words.numel() * n * ber / length) * length  # burst count noise times burst size
    assert abs(n_flips - mean) <= Z * sd + 1, f"{n_flips} vs {mean:.1f} +- {sd:.1f}"


@pytest.mark.parametrize("n,dtype", [(7, torch.uint8), (8, torch.uint8), (16, torch.int16), (24, torch.int32)])
@pytest.mark.parametrize("ber", [1e-3, 1e-2, 0.2])
def test_bsc_rate_within_binomial_bound(n: int, dtype: torch.dtype, ber: float, device: str) -> None:
    words = torch.randint(0, 2**min(n, 15), (200_000,), dtype=torch.int64).to(dtype).to(device)
    out, k = inject(words, n, ber, seed=7)
    assert out.dtype == dtype and out.shape == words.shape
    check_bsc_statistics(words, out, n, ber, k)


@pytest.mark.parametrize("length,n", [(2, 8), (3, 24), (4, 7)])
def test_burst_structure_and_rate(length: int, n: int, device: str) -> None:
    words = torch.zeros(100_000, dtype=torch.int32, device=device)
    out, k = inject(words, n, 2e-3, seed=3, model="burst", burst_len=length)
    check_burst_structure(words, out, n, 2e-3, length, k)


def test_expected_flip_rate_formula() -> None:
    # burst_len 1 is the BSC; small-ber approximation ber * (1 - (L - 1) / (2n))
    assert expected_flip_rate(1e-3, 8, "burst", 1) == pytest.approx(1e-3)
    assert expected_flip_rate(1e-5, 8, "burst", 3) == pytest.approx(1e-5 * (1 - 2 / 16), rel=1e-4)


def test_deterministic_per_seed_and_ber_zero(device: str) -> None:
    w = torch.randint(0, 256, (5000,), dtype=torch.uint8, device=device)
    a, ka = inject(w, 8, 0.01, seed=5)
    b, kb = inject(w, 8, 0.01, seed=5)
    c, _ = inject(w, 8, 0.01, seed=6)
    assert torch.equal(a, b) and ka == kb and not torch.equal(a, c)
    z, kz = inject(w, 8, 0.0, seed=5)
    assert torch.equal(z, w) and kz == 0
    one, k1 = inject(w, 8, 1.0, seed=5)
    assert torch.equal(one, w ^ 255) and k1 == 8 * w.numel()


def test_huge_tensor_small_ber_samples_positions_not_bits() -> None:
    # 8e10 bit positions: a per-bit draw would need 80 GB; position sampling touches ~80 numbers
    pos = event_positions(10**10, 8, 1e-9, seed=1)
    assert 30 <= pos.numel() <= 150 and bool((pos[1:] > pos[:-1]).all()) and int(pos.max()) < 8 * 10**10
    idx, masks = flip_masks(10**10, 8, 1e-9, seed=1)
    assert idx.numel() == masks.numel() and int(_popcount(masks).sum()) == pos.numel()


def test_bad_arguments_raise() -> None:
    w = torch.zeros(4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="ber=1.5"):
        inject(w, 8, 1.5, seed=0)
    with pytest.raises(ValueError, match="model='gauss'"):
        inject(w, 8, 0.1, seed=0, model="gauss")
    with pytest.raises(ValueError, match="bits_per_word=24"):
        inject(w, 24, 0.1, seed=0)
    with pytest.raises(TypeError, match="float32"):
        inject(w.float(), 8, 0.1, seed=0)
    with pytest.raises(ValueError, match="burst_len=0"):
        inject(w, 8, 0.1, seed=0, model="burst", burst_len=0)
    with pytest.raises(ValueError, match="seed=-1"):
        inject(w, 8, 0.1, seed=-1)
