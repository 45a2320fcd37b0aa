"""kernels.weight_cache_update (the barrier-free one-launch update) against ecc_kv.weight_cache.plan_moves."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.sparse_mlp import random_walk_masks
from ecc_kv.weight_cache import plan_moves
from kernels.weight_cache_update import mask_ring, paired_state, paired_update


def _assert_equal_rows(got: torch.Tensor, want: torch.Tensor) -> None:
    bad = (got != want).any(dim=1).nonzero().squeeze(1)
    assert bad.numel() == 0, f"{bad.numel()} rows differ, first at slots {bad[:8].tolist()}"


def _check(state, buf, pool, want, stats) -> None:  # noqa: ANN001
    st = want.stats.tolist()
    assert stats.tolist() == st
    s2n = state.current_slots()
    assert torch.equal(s2n, want.s2n) and torch.equal(state.n2s, want.n2s)
    _assert_equal_rows(buf[: st[3]], pool[s2n[: st[3]].long()])
    # the cached-set mask the next launch reads is the new set
    assert torch.equal(state.prev[:, int(state.calls[0, 0]) & 1].bool(), want.n2s >= 0)


# (N, capacity, row length, programs): one block or several of neurons (> 4096) and slots (> 2048),
# rows of one partial chunk, of several chunks (1500 fp32 > 512 columns a chunk), programs 1..7
@pytest.mark.parametrize(("n", "cap", "r", "progs"), [(40, 12, 5, 1), (300, 150, 1500, 3), (2500, 300, 3, 7),
                                                      (5000, 2500, 3, 2)])
def test_paired_update_matches_plan_moves(n: int, cap: int, r: int, progs: int, device: str) -> None:
    """Random sets (sometimes past the capacity: nothing changes): plan_moves' maps and counts,
    the buffer equals the pool at the new slots, every program count gives the same result."""
    gen = torch.Generator().manual_seed(n + cap + r)
    state = paired_state(n, cap, device, programs=progs)
    pool = torch.randn(n, r, generator=gen).to(device)  # [N, R]
    buf = torch.zeros(cap, r, device=device)
    stats = torch.zeros(4, dtype=torch.int32, device=device)
    host = torch.zeros(4, dtype=torch.int32)
    host = host.pin_memory() if device == "cuda" else host
    for _ in range(8):
        k = int(torch.randint(0, cap + 3, (1,), generator=gen))
        new = torch.zeros(n, dtype=torch.bool)
        new[torch.randperm(n, generator=gen)[:k]] = True
        new = new.to(device)
        s2n_before, n2s_before, buf_before = state.current_slots(), state.n2s.clone(), buf.clone()
        want = plan_moves(new, n2s_before, s2n_before)
        paired_update(new, state, buf, pool, stats, host)
        if device == "cuda":
            torch.cuda.synchronize()
        assert host.tolist() == stats.tolist()
        st = want.stats.tolist()
        if st[3] > cap:
            assert [stats.tolist()[i] for i in (0, 1, 3)] == [st[i] for i in (0, 1, 3)] and stats.tolist()[2] == 0
            assert torch.equal(state.current_slots(), s2n_before) and torch.equal(state.n2s, n2s_before)
            assert torch.equal(buf, buf_before)
            continue
        _check(state, buf, pool, want, stats)
    assert state.calls.tolist() == [[8] * progs, [0] * progs]


def test_paired_update_walks_and_extremes(device: str) -> None:
    """A random walk with growth and shrink (stayers climb out of the vacated tail), then the
    empty set, the full capacity, 100% churn and the empty set again."""
    gen = torch.Generator().manual_seed(1)
    n, cap, r = 200, 64, 33
    state = paired_state(n, cap, device, programs=4)
    pool = torch.randn(n, r, generator=gen).to(device)
    buf = torch.zeros(cap, r, device=device)
    stats = torch.zeros(4, dtype=torch.int32, device=device)
    masks = list(random_walk_masks(n, 50, 0.3, 6, seed=2))
    full = torch.zeros(n, dtype=torch.bool)
    full[:cap] = True
    other = torch.zeros(n, dtype=torch.bool)
    other[cap : 2 * cap] = True
    shrink = torch.zeros(n, dtype=torch.bool)
    shrink[cap - 5 : cap] = True  # five stayers at the top of the full cache
    for new in [*masks, torch.zeros(n, dtype=torch.bool), full, shrink, other, torch.zeros(n, dtype=torch.bool)]:
        new = new.to(device)
        want = plan_moves(new, state.n2s.clone(), state.current_slots())
        paired_update(new, state, buf, pool, stats)
        _check(state, buf, pool, want, stats)


def test_paired_update_ring(device: str) -> None:
    """ring=mask_ring(state): the launch reads the mask at the address in slot calls % RING, past a ring wrap."""
    gen = torch.Generator().manual_seed(5)
    n, cap, r = 300, 90, 37
    state = paired_state(n, cap, device, programs=3)
    pool = torch.randn(n, r, generator=gen).to(device)
    buf = torch.zeros(cap, r, device=device)
    stats = torch.zeros(4, dtype=torch.int32, device=device)
    ring = mask_ring(state, slots=4)
    decoy = torch.zeros(n, dtype=torch.bool, device=device)  # what the launch is handed: never read
    masks = random_walk_masks(n, 80, 0.2, 7, seed=3).to(device)
    for t, new in enumerate(masks):
        ring.numpy()[t % 4, :, 0] = new.data_ptr()
        want = plan_moves(new, state.n2s.clone(), state.current_slots())
        paired_update(decoy, state, buf, pool, stats, ring=ring)
        if device == "cuda":
            torch.cuda.synchronize()
        _check(state, buf, pool, want, stats)
        assert state.calls[1].tolist() == [t + 1] * 3
    with pytest.raises(ValueError, match="power of two"):
        mask_ring(state, slots=3)
    with pytest.raises(ValueError, match="mask_ring"):
        paired_update(decoy, state, buf, pool, stats, ring=ring[:3])


def test_paired_update_rejects_bad_input(device: str) -> None:
    state = paired_state(10, 4, device, programs=2)
    buf, pool = torch.zeros(4, 3, device=device), torch.zeros(10, 3, device=device)
    stats = torch.zeros(4, dtype=torch.int32, device=device)
    with pytest.raises(TypeError, match="bool"):
        paired_update(torch.zeros(10, dtype=torch.uint8, device=device), state, buf, pool, stats)
    with pytest.raises(ValueError, match="sizes disagree"):
        paired_update(torch.zeros(11, dtype=torch.bool, device=device), state, buf, pool, stats)
    with pytest.raises(ValueError, match="one dtype"):
        paired_update(torch.zeros(10, dtype=torch.bool, device=device), state, buf, pool.double(), stats)
    with pytest.raises(ValueError, match="cap >= 1"):
        paired_state(10, 0, device)


@pytest.mark.gpu
def test_paired_update_graph_replays() -> None:
    """One CUDA graph of the launch replayed over a mask sequence (copied into its static input):
    the per-program counters flip the double buffers on the device, so every replay is right."""
    gen = torch.Generator().manual_seed(9)
    n, cap, r = 3000, 400, 6144
    state = paired_state(n, cap, "cuda")
    pool = torch.randn(n, r, generator=gen).half().cuda()
    buf = torch.zeros(cap, r, dtype=torch.half, device="cuda")
    stats = torch.zeros(4, dtype=torch.int32, device="cuda")
    masks = random_walk_masks(n, 300, 0.1, 12, seed=4).cuda()
    static = masks[0].clone()
    paired_update(static, state, buf, pool, stats)  # compile + first state
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paired_update(static, state, buf, pool, stats)  # recorded, not run
    for new in masks[1:]:
        want = plan_moves(new, state.n2s.clone(), state.current_slots())
        static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        _check(state, buf, pool, want, stats)
