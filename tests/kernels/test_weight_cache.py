"""kernels.weight_cache (row moves, fused planners, the one-launch update) against the torch twins in ecc_kv.weight_cache."""

from __future__ import annotations

import pytest
import torch

from ecc_kv.sparse_mlp import random_walk_masks
from ecc_kv.weight_cache import apply_moves_torch, plan_moves
from kernels.weight_cache import (
    apply_moves,
    barrier_timeouts,
    fused_scratch,
    mask_ring,
    plan_and_commit,
    plan_and_move,
)


def _state(n: int, cap: int, m: int, gen: torch.Generator, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps of a cache holding m random neurons in slots 0..m-1."""
    ids = torch.randperm(n, generator=gen)[:m]
    s2n = torch.full((cap,), -1, dtype=torch.int32)
    s2n[:m] = ids.int()
    n2s = torch.full((n,), -1, dtype=torch.int32)
    n2s[ids] = torch.arange(m, dtype=torch.int32)
    return s2n.to(device), n2s.to(device)


def _assert_equal_rows(got: torch.Tensor, want: torch.Tensor) -> None:
    bad = (got != want).any(dim=1).nonzero().squeeze(1)
    assert bad.numel() == 0, f"{bad.numel()} rows differ, first at slots {bad[:8].tolist()}"


# (N, capacity, row length): row lengths that are not multiples of any block size
SHAPES = [(20, 9, 1), (37, 16, 15), (64, 33, 100), (50, 50, 259)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("full_grid", [False, True])
def test_apply_moves_matches_torch(shape: tuple[int, int, int], dtype: torch.dtype, full_grid: bool, device: str) -> None:
    n, cap, r = shape
    gen = torch.Generator().manual_seed(n * 31 + r)
    pool = torch.randn(n, r, generator=gen).to(device, dtype)  # [N, R]
    for _trial in range(3):
        m = int(torch.randint(0, cap + 1, (1,), generator=gen))
        s2n, n2s = _state(n, cap, m, gen, device)
        new = torch.zeros(n, dtype=torch.bool)
        new[torch.randperm(n, generator=gen)[: int(torch.randint(0, cap + 1, (1,), generator=gen))]] = True
        new = new.to(device)
        plan = plan_moves(new, n2s, s2n)
        n_pool, n_moves = plan.counts.tolist()
        buf = torch.randn(cap, r, generator=gen).to(device, dtype)  # stale rows everywhere
        buf[:m] = pool[s2n[:m].long()]
        want = buf.clone()
        apply_moves_torch(want, pool, plan.dst, plan.src, n_pool, n_moves)
        got = buf.clone()
        apply_moves(got, pool, plan.dst, plan.src, plan.counts, max_moves=None if full_grid else n_moves)
        _assert_equal_rows(got, want)
        m_new = int(plan.stats[3])
        _assert_equal_rows(got[:m_new], pool[plan.s2n[:m_new].long()])


@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_staged_moves(shape: tuple[int, int, int], device: str) -> None:
    """Staged mode (offloaded cache): move j < n_pool reads row j of a staging block."""
    n, cap, r = shape
    gen = torch.Generator().manual_seed(5)
    pool = torch.randn(n, r, generator=gen).to(device)
    s2n, n2s = _state(n, cap, cap // 2, gen, device)
    new = torch.zeros(n, dtype=torch.bool)
    new[torch.randperm(n, generator=gen)[: cap - 2]] = True
    plan = plan_moves(new.to(device), n2s, s2n)
    n_pool, n_moves = plan.counts.tolist()
    stage = torch.zeros(cap, r, device=device)
    stage[:n_pool] = pool[plan.src[:n_pool].long()]
    buf = torch.zeros(cap, r, device=device)
    buf[: cap // 2] = pool[s2n[: cap // 2].long()]
    want = buf.clone()
    apply_moves_torch(want, stage, plan.dst, plan.src, n_pool, n_moves, staged=True)
    apply_moves(buf, stage, plan.dst, plan.src, plan.counts, staged=True)
    _assert_equal_rows(buf, want)


def test_no_moves_and_bad_inputs(device: str) -> None:
    buf = torch.ones(4, 8, device=device)
    pool = torch.zeros(10, 8, device=device)
    idx = torch.zeros(4, dtype=torch.int32, device=device)
    apply_moves(buf, pool, idx, idx, torch.zeros(2, dtype=torch.int32, device=device))
    assert bool((buf == 1).all())  # counts (0, 0): nothing written by the full grid
    with pytest.raises(TypeError, match="int32"):
        apply_moves(buf, pool, idx.long(), idx, torch.zeros(2, dtype=torch.int32, device=device))
    with pytest.raises(ValueError, match="equal R"):
        apply_moves(buf, pool[:, :7], idx, idx, torch.zeros(2, dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match="dtype"):
        apply_moves(buf, pool.half(), idx, idx, torch.zeros(2, dtype=torch.int32, device=device))


@pytest.mark.parametrize(("n", "cap"), [(40, 12), (300, 150), (2500, 300)])
def test_fused_planner_matches_plan_moves(n: int, cap: int, device: str) -> None:
    """plan_and_commit: the same moves in the same order as plan_moves, and the same new maps."""
    gen = torch.Generator().manual_seed(n + cap)
    s2n = torch.full((cap,), -1, dtype=torch.int32, device=device)
    n2s = torch.full((n,), -1, dtype=torch.int32, device=device)
    z = lambda k: torch.zeros(k, dtype=torch.int32, device=device)  # noqa: E731
    dst, src, moved, counts, stats = z(cap), z(cap), z(cap), z(2), z(4)
    for _ in range(8):
        k = int(torch.randint(0, cap + 3, (1,), generator=gen))  # sometimes past the capacity
        new = torch.zeros(n, dtype=torch.bool)
        new[torch.randperm(n, generator=gen)[:k]] = True
        new = new.to(device)
        want = plan_moves(new, n2s, s2n)
        a, b = s2n.clone(), n2s.clone()
        plan_and_commit(new, b, a, dst, src, moved, counts, stats)
        st = want.stats.tolist()
        if st[3] > cap:  # overflow: nothing committed, nothing to move
            assert counts.tolist() == [0, 0] and torch.equal(a, s2n) and torch.equal(b, n2s)
            assert [stats.tolist()[i] for i in (0, 1, 3)] == [st[i] for i in (0, 1, 3)]
            continue
        w = st[2]
        assert stats.tolist() == st and counts.tolist() == want.counts.tolist()
        assert torch.equal(dst[:w], want.dst[:w]) and torch.equal(src[:w], want.src[:w])
        assert torch.equal(a, want.s2n) and torch.equal(b, want.n2s)
        s2n, n2s = a, b


# (N, capacity, row length): one slot block kept in registers, or several (cap > 2048); a
# row longer than one copy step (1500 fp32 > 1024 columns)
@pytest.mark.parametrize(("n", "cap", "r"), [(40, 12, 5), (300, 150, 1500), (2500, 300, 3), (5000, 2500, 3)])
def test_plan_and_move_matches_plan_moves(n: int, cap: int, r: int, device: str) -> None:
    """plan_and_move (one launch: plan, moves, map commit): plan_moves' maps and counts, and
    the buffer equals the pool at the new slots; on overflow nothing changes. On a GPU the
    launch has many programs and two grid barriers; under the interpreter one program."""
    gen = torch.Generator().manual_seed(n + cap + r)
    s2n = torch.full((cap,), -1, dtype=torch.int32, device=device)
    n2s = torch.full((n,), -1, dtype=torch.int32, device=device)
    pool = torch.randn(n, r, generator=gen).to(device)  # [N, R]
    buf = torch.zeros(cap, r, device=device)
    scratch, stats = fused_scratch(n, cap, device), torch.zeros(4, dtype=torch.int32, device=device)
    host = torch.zeros(4, dtype=torch.int32)
    host = host.pin_memory() if device == "cuda" else host
    for step in range(8):
        k = int(torch.randint(0, cap + 3, (1,), generator=gen))  # sometimes past the capacity
        new = torch.zeros(n, dtype=torch.bool)
        new[torch.randperm(n, generator=gen)[:k]] = True
        new = new.to(device)
        want = plan_moves(new, n2s, s2n)
        a, b, got = s2n.clone(), n2s.clone(), buf.clone()
        copy = torch.zeros_like(new) if step % 2 else None  # odd steps: the mask read once, copied for the slot scan
        plan_and_move(new, b, a, got, pool, scratch, stats, host, mask_out=copy)
        if device == "cuda":
            torch.cuda.synchronize()
        st = want.stats.tolist()
        assert host.tolist() == stats.tolist()
        assert copy is None or torch.equal(copy, new)
        if st[3] > cap:
            assert torch.equal(a, s2n) and torch.equal(b, n2s) and torch.equal(got, buf)
            assert [stats.tolist()[i] for i in (0, 1, 3)] == [st[i] for i in (0, 1, 3)]
            continue
        assert stats.tolist() == st
        assert torch.equal(a, want.s2n) and torch.equal(b, want.n2s)
        _assert_equal_rows(got[: st[3]], pool[a[: st[3]].long()])
        s2n, n2s, buf = a, b, got
    assert barrier_timeouts(scratch) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_moves_read_pinned_host_memory(dtype: torch.dtype) -> None:
    """Direct offload: the kernel reads the plan and the pool rows from pinned host memory
    (unified addressing) and writes the GPU buffer; the same bytes as the torch twin."""
    gen = torch.Generator().manual_seed(11)
    n, cap, r = 300, 64, 259
    pool = torch.randn(n, r, generator=gen).to(dtype).pin_memory()  # [N, R] on the host
    s2n, n2s = _state(n, cap, 40, gen, "cpu")
    new = torch.zeros(n, dtype=torch.bool)
    new[torch.randperm(n, generator=gen)[:50]] = True
    plan = plan_moves(new, n2s, s2n)
    n_pool, n_moves = plan.counts.tolist()
    packed = torch.cat([plan.counts, plan.dst, plan.src]).pin_memory()  # int32 [2 + 2 cap]
    buf = torch.zeros(cap, r, dtype=dtype, device="cuda")
    buf[:40] = pool[s2n[:40].long()].cuda()
    want = buf.cpu().clone()
    apply_moves_torch(want, pool, plan.dst, plan.src, n_pool, n_moves)
    apply_moves(buf, pool, packed[2 : 2 + cap], packed[2 + cap :], packed[:2], max_moves=n_moves)
    torch.cuda.synchronize()
    _assert_equal_rows(buf.cpu(), want)


@pytest.mark.gpu
@pytest.mark.parametrize(("n", "cap", "r", "dtype"), [(3000, 300, 12288, torch.float16), (500, 200, 1500, torch.float32)])
def test_plan_and_move_reads_pinned_pool(n: int, cap: int, r: int, dtype: torch.dtype) -> None:
    """Offloaded fused update: the one launch reads the added rows from a pool in pinned host
    memory (unified addressing), rows split in column chunks over all programs (a 24 KiB row
    is 12 work items; 1500 fp32 ends in a partial chunk), and on odd steps the mask from
    pinned host memory too (mask_out); plan_moves' maps, exact rows."""
    gen = torch.Generator().manual_seed(n + r)
    pool = torch.randn(n, r, generator=gen).to(dtype).pin_memory()  # [N, R] on the host
    s2n = torch.full((cap,), -1, dtype=torch.int32, device="cuda")
    n2s = torch.full((n,), -1, dtype=torch.int32, device="cuda")
    buf = torch.zeros(cap, r, dtype=dtype, device="cuda")
    scratch, stats = fused_scratch(n, cap, "cuda"), torch.zeros(4, dtype=torch.int32, device="cuda")
    copy = torch.zeros(n, dtype=torch.bool, device="cuda")
    for step, k in enumerate((cap // 2, cap // 2, cap, 3, cap // 3, 0)):
        new = torch.zeros(n, dtype=torch.bool)
        new[torch.randperm(n, generator=gen)[:k]] = True
        want = plan_moves(new.cuda(), n2s, s2n)
        if step % 2:  # the mask in pinned host memory too, read once by the launch and copied for the slot scan
            pinned = new.pin_memory()  # held until the launch has run
            plan_and_move(pinned, n2s, s2n, buf, pool, scratch, stats, mask_out=copy)
        else:
            plan_and_move(new.cuda(), n2s, s2n, buf, pool, scratch, stats)
        torch.cuda.synchronize()
        st = want.stats.tolist()
        assert stats.tolist() == st
        assert torch.equal(s2n, want.s2n) and torch.equal(n2s, want.n2s)
        _assert_equal_rows(buf[: st[3]].cpu(), pool[s2n[: st[3]].long().cpu()])
    assert barrier_timeouts(scratch) == 0


def test_plan_and_move_reads_mask_through_ring(device: str) -> None:
    """ring=mask_ring(...): the launch ignores the mask it is handed and reads the address in
    slot counter % RING (one copy per program line), then counts the call; the same plan,
    maps and rows as plan_moves on the real mask, past a ring wrap."""
    gen = torch.Generator().manual_seed(5)
    n, cap, r = 300, 90, 37
    s2n = torch.full((cap,), -1, dtype=torch.int32, device=device)
    n2s = torch.full((n,), -1, dtype=torch.int32, device=device)
    pool = torch.randn(n, r, generator=gen).to(device)
    buf = torch.zeros(cap, r, device=device)
    scratch, stats = fused_scratch(n, cap, device), torch.zeros(4, dtype=torch.int32, device=device)
    ring = mask_ring(n, cap, device, slots=4)
    decoy = torch.zeros(n, dtype=torch.bool, device=device)  # what the launch is handed: never read
    masks = random_walk_masks(n, 80, 0.2, 7, seed=3).to(device)
    for t, new in enumerate(masks):
        ring[0].numpy()[t % 4, :, 0] = new.data_ptr()
        want = plan_moves(new, n2s, s2n)
        plan_and_move(decoy, n2s, s2n, buf, pool, scratch, stats, ring=ring)
        if device == "cuda":
            torch.cuda.synchronize()
        assert stats.tolist() == want.stats.tolist() and int(ring[1]) == t + 1
        assert torch.equal(s2n, want.s2n) and torch.equal(n2s, want.n2s)
        _assert_equal_rows(buf[:80], pool[s2n[:80].long()])
    with pytest.raises(ValueError, match="power of two"):
        mask_ring(n, cap, device, slots=3)
    with pytest.raises(ValueError, match="mask_ring"):
        plan_and_move(decoy, n2s, s2n, buf, pool, scratch, stats, ring=(ring[0][:3], ring[1]))
