"""Triton fault injection: binomial flip rates, burst structure, grid independence, offsets, counts.

Shapes are small because the CPU CI runs Triton interpreted; the statistics reuse the torch-path checks.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from ecc_kv.faults import inject
from kernels.faults import TAIL_BOUND, event_thresholds, fault_plan, inject_triton
from tests.ecc_kv.test_faults import check_bsc_statistics, check_burst_structure


@pytest.mark.parametrize("n,dtype,ber", [(7, torch.uint8, 0.05), (8, torch.uint8, 1e-2), (24, torch.int32, 1e-2), (16, torch.int16, 0.3)])
def test_bsc_rate_within_binomial_bound(n: int, dtype: torch.dtype, ber: float, device: str) -> None:
    size = 4000 if n > 8 else 10_000  # interpreted on CPU: keep the work small
    words = torch.randint(0, 2**min(n, 15), (size,), dtype=torch.int64).to(dtype).to(device)
    out, k = inject(words, n, ber, seed=11, backend="triton")
    assert out.dtype == dtype
    check_bsc_statistics(words, out, n, ber, k)


@pytest.mark.parametrize("length,n", [(2, 8), (3, 24)])
def test_burst_structure_and_rate(length: int, n: int, device: str) -> None:
    words = torch.zeros(10_000 if n <= 8 else 4000, dtype=torch.int32, device=device)
    out, k = inject(words, n, 5e-3, seed=4, model="burst", burst_len=length, backend="triton")
    check_burst_structure(words, out, n, 5e-3, length, k)


@pytest.mark.parametrize("n,ber", [(12, 0.1), (32, 0.02), (32, 0.3)])  # 0.3: duplicates, further draws
def test_independent_of_grid_and_keyed_by_global_word_index(n: int, ber: float, device: str) -> None:
    # a tile's loop bounds follow its largest count: different tiles must still give every word its own mask
    w = torch.randint(-(2**31), 2**31 - 1, (601,), dtype=torch.int32, device=device) & ((1 << n) - 1 if n < 32 else -1)
    a, ka = inject_triton(w, n, ber, seed=9, block=256)
    b, kb = inject_triton(w, n, ber, seed=9, block=64)
    assert torch.equal(a, b) and int(ka) == int(kb) > 0
    assert int(ka) == int((((a ^ w)[:, None] >> torch.arange(n, device=device)) & 1).sum())
    # a slice injected with its global offset sees exactly the same faults
    part, _ = inject_triton(w[100:300], n, ber, seed=9, word_offset=100)
    assert torch.equal(part, a[100:300])
    # another stream or seed is another pattern
    c, _ = inject_triton(w, n, ber, seed=9, stream=1)
    d, _ = inject_triton(w, n, ber, seed=10)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_in_place_and_extremes(device: str) -> None:
    w = torch.randint(0, 128, (777,), dtype=torch.uint8, device=device)
    ref, k = inject_triton(w, 7, 0.1, seed=1)
    buf = w.clone()
    out, k2 = inject_triton(buf, 7, 0.1, seed=1, out=buf)
    assert torch.equal(buf, ref) and int(k) == int(k2)
    all_, kall = inject(w, 7, 1.0, seed=1, backend="triton")
    assert torch.equal(all_, w ^ 127) and kall == 7 * w.numel()
    none, k0 = inject(w, 7, 0.0, seed=1, backend="triton")
    assert torch.equal(none, w) and k0 == 0


def test_plan_thresholds_are_the_binomial_cdf_and_tail_is_bounded() -> None:
    k, c = fault_plan(1e-3, 32)  # the codec benchmark's 32-bit words
    assert 1 <= k < 32 and len(c) == k
    pf = Fraction(1e-3)
    cdf = [sum(math.comb(32, i) * pf**i * (1 - pf) ** (32 - i) for i in range(j + 1)) for j in range(33)]
    assert list(c) == [math.floor(x * 2**64) for x in cdf[:k]]  # C_j = floor(2^64 P(count <= j))
    assert 1 - cdf[k] < TAIL_BOUND / 2  # more than K events: below the documented bound
    assert k * 2.0**-49 + TAIL_BOUND / 2 <= TAIL_BOUND  # plus the residual positions' bias
    assert fault_plan(1.0, 3) == (3, (0, 0, 0))  # p = 1: every bit, k = n always
    assert fault_plan(0.0, 8) == (0, ())
    t = event_thresholds(1e-3, 32, "cpu")
    assert torch.equal(t, event_thresholds(1e-3, 8, "cpu"))  # one table for every word width


@pytest.mark.parametrize("n,dtype,ber,size", [(32, torch.int32, 1e-2, 3000), (16, torch.int16, 0.3, 1000)])
def test_counts_have_the_binomial_law(n: int, dtype: torch.dtype, ber: float, size: int, device: str) -> None:
    # per-word event counts vs Binomial(n, p): mostly residual positions at 1e-2, many further draws at 0.3
    w = torch.zeros(size, dtype=dtype, device=device)
    out, _ = inject_triton(w, n, ber, seed=21)
    cnt = ((out.to(torch.int64)[:, None] >> torch.arange(n, device=device)) & 1).sum(1).cpu()
    for j in range(4):
        pj = math.comb(n, j) * ber**j * (1 - ber) ** (n - j)
        mean, sd = size * pj, math.sqrt(size * pj * (1 - pj))
        assert abs(int((cnt == j).sum()) - mean) <= 5 * sd + 1, (ber, j)


def test_positions_are_uniform_given_the_count(device: str) -> None:
    # single events (positions from the residual) and pairs are spread evenly over the 32 bits
    w = torch.zeros(40_000, dtype=torch.int32, device=device)
    out, _ = inject_triton(w, 32, 0.01, seed=5)
    bits = ((out.to(torch.int64)[:, None] >> torch.arange(32, device=device)) & 1).cpu()
    per_bit = bits.sum(0).double()
    mean = per_bit.mean()
    chi2 = float(((per_bit - mean) ** 2 / mean).sum())  # 31 degrees of freedom: P(chi2 > 70) < 1e-4
    assert chi2 < 70, per_bit.tolist()
    pairs = bits[bits.sum(1) == 2]
    assert pairs.shape[0] > 500 and (pairs.sum(0) > 0).sum() >= 28


@pytest.mark.parametrize("ber", [0.02, 0.6])  # 0.6: more than 64 events per group, drawn as the complement
def test_32_bit_words_follow_the_group_law(ber: float, device: str) -> None:
    # one draw per aligned group of four 32-bit words: group counts are Binomial(128, p), every bit is hit
    size = 4000
    w = torch.zeros(size, dtype=torch.int32, device=device)
    out, k = inject_triton(w, 32, ber, seed=3)
    bits = ((out.to(torch.int64)[:, None] >> torch.arange(32, device=device)) & 1).cpu()
    assert int(k) == int(bits.sum())
    per_group = bits.reshape(-1, 128).sum(1).double()
    mean, var = 128 * ber, 128 * ber * (1 - ber)
    groups = per_group.numel()
    assert abs(float(per_group.mean()) - mean) <= 5 * math.sqrt(var / groups)
    assert 0.7 * var <= float(per_group.var()) <= 1.3 * var
    assert int((bits.sum(0) > 0).sum()) == 32
    # a tile of unaligned words (per-word path) sees the same faults as the grouped tiles
    part, _ = inject_triton(w[101:3003], 32, ber, seed=3, word_offset=101)
    assert torch.equal(part, out[101:3003])
    assert fault_plan(ber, 128)[0] >= 1


def test_every_bit_of_a_group_flips_at_ber_one(device: str) -> None:
    w = torch.randint(-(2**31), 2**31 - 1, (37,), dtype=torch.int32, device=device)
    out, k = inject_triton(w, 32, 1.0, seed=0)
    assert torch.equal(out, ~w) and int(k) == 32 * 37


def test_group_fast_path_equals_the_full_rule(device: str) -> None:
    # small tiles mostly take the fast path (counts <= 2), large ones mostly the full rule: same faults
    w = torch.randint(-(2**31), 2**31 - 1, (16_000,), dtype=torch.int32, device=device)
    small, ks = inject_triton(w, 32, 3e-3, seed=8, block=64)
    large, kl = inject_triton(w, 32, 3e-3, seed=8, block=4096)
    assert torch.equal(small, large) and int(ks) == int(kl) > 0
    per_word, _ = inject_triton(w[1:], 32, 3e-3, seed=8, word_offset=1, block=256)  # one draw per word
    assert torch.equal(per_word, small[1:])


def test_each_group_path_equals_the_full_rule(device: str) -> None:
    # one group per tile: every group takes the cheapest path that serves it (fast for counts <= 2, the
    # second stage for counts of 3 and repeated chunks, the full rule above); a 1024-word tile at 2% holds
    # a count of 4 or more, so all of its groups take the full rule
    w = torch.randint(-(2**31), 2**31 - 1, (1024,), dtype=torch.int32, device=device)
    one, k1 = inject_triton(w, 32, 0.02, seed=21, block=4)
    full, kf = inject_triton(w, 32, 0.02, seed=21, block=1024)
    assert torch.equal(one, full) and int(k1) == int(kf)
    flips = ((((one ^ w).to(torch.int64)[:, None] >> torch.arange(32, device=device)) & 1).reshape(-1, 128).sum(1))
    assert int((flips == 3).sum()) > 0 and int((flips >= 4).sum()) > 0  # every path ran
