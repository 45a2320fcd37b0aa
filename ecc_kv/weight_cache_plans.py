"""Move planners of the paired-replacement weight cache and the torch twin of its move kernel.

A plan is a list of independent row moves that turns the old buffer into the new one:
holes below the new size (a removed neuron's slot, or an empty slot when the set grows)
are filled first by the added neurons, read from the pool, then by the staying neurons
that sit in the vacated tail, read from the buffer. Every source lies in the pool or in
the tail and every destination below the new size, so the moves run in any order or all
at once. :func:`plan_moves` is the fixed-shape (GPU, graph-capturable) planner,
:func:`plan_moves_host` the numpy one, :func:`commit_host_plan` the same plan committed
in place on host maps (the cpu and offloaded updates), :func:`plan_rebuild` the hybrid
policy's full rebuild; ``kernels.weight_cache`` has the fused Triton planners that make
the same plans. :func:`apply_moves_torch`, :func:`apply_plan_triton` and
:func:`apply_packed` apply a plan. Used by :mod:`ecc_kv.weight_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MovePlan:
    """Independent row moves that turn the old buffer into the new one.

    Move ``j < n_moves`` writes buffer slot ``dst[j]``; for ``j < n_pool`` it reads pool
    row ``src[j]`` (a neuron id), otherwise buffer slot ``src[j]``, which always lies in
    the tail being vacated (>= the new size), while every destination lies below it, so
    the moves may run in any order or all at once.
    """

    dst: torch.Tensor  # int32 [cap]: destination slots, first n_moves valid
    src: torch.Tensor  # int32 [cap]: pool neuron id (j < n_pool) or buffer slot (j >= n_pool)
    counts: torch.Tensor  # int32 [2]: (n_pool, n_moves), read by the kernel on its device
    stats: torch.Tensor  # int64 [4]: (added, removed, n_moves, new size), one host read
    s2n: torch.Tensor  # int32 [cap]: slot -> neuron after the update
    n2s: torch.Tensor  # int32 [N]: neuron -> slot after the update


def plan_moves(new: torch.Tensor, n2s: torch.Tensor, s2n: torch.Tensor) -> MovePlan:
    """Plan a paired-replacement update from the maps and the new mask, in fixed-shape ops.

    added = new & ~old and removed = old & ~new. The new size is m' = stays + added;
    every slot below m' that does not hold a staying neuron is a hole (a removed
    neuron's slot, or an empty slot when the set grows). Holes are filled first with the
    added neurons (from the pool), then with the staying neurons that sit in the
    vacated tail [m', m) (from the buffer). Writes = added + tail stayers <= max(A, R).
    """
    cap, n = s2n.numel(), n2s.numel()
    dev = new.device
    slots = torch.arange(cap, device=dev)  # [cap]
    occ = s2n >= 0  # [cap]
    held = s2n.long().clamp(min=0)  # [cap] neuron in each slot (0 when empty)
    stays = occ & new[held]  # [cap] slot holds a neuron that remains active
    added = new & (n2s < 0)  # [N]
    n_add = added.sum()
    n_old, n_stay = occ.sum(), stays.sum()
    m_new = n_stay + n_add
    below = slots < m_new
    hole = below & ~stays  # [cap] slots that receive a row
    climb = stays & ~below  # [cap] stayers above the new size: move down into a hole
    n_moves = hole.sum()  # == n_add + climb.sum() whenever m_new <= cap

    trash = cap  # padded lists: index `cap` absorbs the scatters of inactive entries
    dst = torch.zeros(cap + 1, dtype=torch.int32, device=dev)
    dst.scatter_(0, torch.where(hole, hole.cumsum(0) - 1, trash), slots.int())
    src = torch.zeros(cap + 1, dtype=torch.int32, device=dev)
    rank_a = added.cumsum(0) - 1  # [N]
    src.scatter_(0, torch.where(added & (rank_a < cap), rank_a, trash), torch.arange(n, device=dev, dtype=torch.int32))
    rank_c = n_add + climb.cumsum(0) - 1  # [cap]
    src.scatter_(0, torch.where(climb & (rank_c < cap), rank_c, trash), slots.int())
    dst, src = dst[:cap], src[:cap]

    from_pool = slots < n_add
    src_l = src.long()
    moved = torch.where(from_pool, src_l, held[src_l.clamp(max=cap - 1)])  # [cap] neuron landing in dst[j]
    valid = slots < n_moves
    new_s2n = torch.full((cap + 1,), -1, dtype=torch.int32, device=dev)
    new_s2n[:cap] = torch.where(stays & below, s2n, -1)
    new_s2n.scatter_(0, torch.where(valid, dst.long(), trash), moved.int())
    new_n2s = torch.full((n + 1,), -1, dtype=torch.int32, device=dev)
    new_n2s[:n] = torch.where(new, n2s, -1)
    new_n2s.scatter_(0, torch.where(valid, moved, n), dst)
    counts = torch.stack([n_add, n_moves]).int()
    stats = torch.stack([n_add, n_old - n_stay, n_moves, m_new])
    return MovePlan(dst, src, counts, stats, new_s2n[:cap], new_n2s[:n])


def plan_moves_host(new: torch.Tensor, n2s: torch.Tensor, s2n: torch.Tensor, size: int) -> MovePlan:
    """The same plan as :func:`plan_moves` (same moves, same order), for maps in host memory.

    On the host the sizes are free to read, so this variant works on index lists with
    numpy (a few microseconds per op, against ~5 us per small torch op on a CPU), which
    is what makes the CPU update cheap next to a full index_select rebuild.
    """
    new_np, n2s_np, s2n_np = new.numpy(), n2s.numpy(), s2n.numpy()
    cap = s2n_np.shape[0]
    held = s2n_np[:size]  # [m] neurons in slot order
    stays = new_np[held]  # [m]
    added = np.flatnonzero(new_np & (n2s_np < 0))  # [A] ascending neuron ids
    n_add = added.shape[0]
    n_stay = int(np.count_nonzero(stays))
    m_new = n_stay + n_add
    if m_new > cap:  # no plan: the caller raises before touching the cache
        stats = torch.tensor([n_add, size - n_stay, 0, m_new], dtype=torch.int64)
        return MovePlan(torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                        torch.zeros(2, dtype=torch.int32), stats, s2n, n2s)
    low = min(m_new, size)
    holes = np.flatnonzero(~stays[:low]).astype(np.int32)  # [W] removed slots below m', then new slots
    if m_new > size:
        holes = np.concatenate([holes, np.arange(size, m_new, dtype=np.int32)])
    climb = (m_new + np.flatnonzero(stays[m_new:])).astype(np.int32)  # [W - A] tail stayers
    src = np.concatenate([added.astype(np.int32), climb])  # [W]
    moved = np.concatenate([added.astype(np.int32), held[climb]])  # [W] neuron landing in holes[j]
    new_s2n, new_n2s = s2n_np.copy(), n2s_np.copy()
    new_n2s[held[~stays]] = -1
    new_s2n[m_new:size] = -1
    new_s2n[holes] = moved
    new_n2s[moved] = holes
    w = holes.shape[0]
    counts = torch.from_numpy(np.array([n_add, w], dtype=np.int32))
    stats = torch.from_numpy(np.array([n_add, size - n_stay, w, m_new], dtype=np.int64))
    return MovePlan(torch.from_numpy(holes), torch.from_numpy(src), counts, stats,
                    torch.from_numpy(new_s2n), torch.from_numpy(new_n2s))


def plan_rebuild(new: torch.Tensor, cap: int) -> MovePlan:
    """A full rebuild as a plan: every active neuron, in id order, copied from the pool."""
    n = new.numel()
    dev = new.device
    ids = new.nonzero().squeeze(1)  # [m'] int64
    m_new = ids.numel()
    if m_new > cap:
        raise ValueError(f"mask has {m_new} active neurons, more than the cache capacity {cap}")
    dst = torch.zeros(cap, dtype=torch.int32, device=dev)
    dst[:m_new] = torch.arange(m_new, dtype=torch.int32, device=dev)
    src = torch.zeros(cap, dtype=torch.int32, device=dev)
    src[:m_new] = ids.int()
    s2n = torch.full((cap,), -1, dtype=torch.int32, device=dev)
    s2n[:m_new] = ids.int()
    n2s = torch.full((n,), -1, dtype=torch.int32, device=dev)
    n2s[ids] = dst[:m_new]
    counts = torch.tensor([m_new, m_new], dtype=torch.int32, device=dev)
    stats = torch.tensor([m_new, 0, m_new, m_new], dtype=torch.int64)
    return MovePlan(dst, src, counts, stats, s2n, n2s)


def commit_host_plan(
    new: np.ndarray, s2n: np.ndarray, n2s: np.ndarray, absent: np.ndarray, size: int, tau: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Plan an update on host maps and commit it in place (the cpu and offloaded updates).

    The plan of :func:`plan_moves_host` (same moves, same order) or, past the hybrid
    threshold ``tau``, of :func:`plan_rebuild`, from a few numpy calls on index lists, with
    no tensor allocations. ``absent`` (bool [N], ~cached mask) is updated in place too.
    Returns (dst, from_pool, climb, last): slots ``dst[:A]`` receive the pool rows
    ``from_pool``, slots ``dst[A:]`` the buffer rows at the tail slots ``climb``; ``last``
    = added, removed, written, size, rebuilt. Raises ValueError on overflow before
    changing anything.
    """
    # new: bool [N]; s2n: int32 [cap]; n2s: int32 [N]
    cap = s2n.shape[0]
    held = s2n[:size]  # [m] neurons in slot order
    freed = np.flatnonzero(~new[held])  # [R] ascending slots of the removed neurons
    added = np.flatnonzero(new & absent)  # [A] ascending neuron ids
    removed, n_add = freed.shape[0], added.shape[0]
    m_new = size - removed + n_add
    if m_new > cap:
        raise ValueError(f"mask has {m_new} active neurons, more than the cache capacity {cap}")
    rebuilt = tau is not None and max(n_add, removed) > tau * m_new
    climb = freed[:0]
    if rebuilt:  # every active neuron, in id order, into slots 0..m'-1
        ids = np.flatnonzero(new)  # [m']
        n2s[held] = -1
        dst = np.arange(m_new, dtype=np.int32)
        n2s[ids] = dst
        s2n[:m_new] = ids
        s2n[m_new:] = -1
        from_pool = ids
    elif n_add or removed:
        gone = held[freed]  # [R] removed neurons (read before the slots change)
        if m_new < size:  # shrink: holes below m', stayers of the vacated tail move down
            dst = freed[: np.searchsorted(freed, m_new)]  # [W]
            climb = m_new + np.flatnonzero(new[held[m_new:]])  # [W - A]
        else:  # grow or keep: every freed slot, then the new slots
            dst = freed if m_new == size else np.concatenate([freed, np.arange(size, m_new)])
        to_pool, to_climb = dst[:n_add], dst[n_add:]
        if climb.shape[0]:  # sources in the vacated tail, destinations below m': independent
            climbers = s2n[climb]  # [W - A] (a copy)
            s2n[to_climb] = climbers
            n2s[climbers] = to_climb
        n2s[gone] = -1
        s2n[m_new:size] = -1
        s2n[to_pool] = added
        n2s[added] = to_pool
        from_pool = added
    else:  # A = R = 0: nothing moves
        dst = from_pool = freed
    np.logical_not(new, out=absent)
    last = {"added": n_add, "removed": removed, "written": dst.shape[0], "size": m_new, "rebuilt": int(rebuilt)}
    return dst, from_pool, climb, last


_INT_VIEW = {4: torch.int32, 2: torch.int16}


def row_items(t: torch.Tensor) -> np.ndarray:
    """A [rows, R] host tensor as a numpy vector of ``rows`` opaque items of R elements each
    (shared memory, any dtype: numpy has no bfloat16), so fancy indexing copies whole rows."""
    a = t.view(_INT_VIEW[t.element_size()]).numpy()  # [rows, R]
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(a.shape[0])


def _scatter_rows(buf: torch.Tensor, dst: torch.Tensor, part: torch.Tensor) -> None:
    """buf[dst] = part, row by row. On the CPU through numpy, whose fancy assignment copies
    whole rows (torch's CPU index_copy_ goes element by element, ~3x slower here)."""
    if buf.device.type == "cpu":
        iv = _INT_VIEW[buf.element_size()]  # bit-exact view: numpy has no bfloat16
        buf.view(iv).numpy()[dst.numpy()] = part.view(iv).numpy()
    else:
        buf.index_copy_(0, dst.long(), part)


def apply_moves_torch(
    buf: torch.Tensor, rows: torch.Tensor, dst: torch.Tensor, src: torch.Tensor, n_pool: int, n_moves: int,
    *, staged: bool = False,
) -> None:
    """The torch twin of ``kernels.weight_cache.apply_moves``: the same moves, as gathers and scatters.

    ``rows`` is the pool (``staged=False``: move j reads row ``src[j]``) or a staging
    block of already gathered pool rows (``staged=True``: move j reads row j). ``dst`` and
    ``src`` live on the buffer's device (host for a host pool, except ``staged``).
    """
    # buf: [cap, R], rows: [N or cap, R]
    if n_pool > 0:
        part = rows[:n_pool] if staged else rows.index_select(0, src[:n_pool].to(rows.device))
        _scatter_rows(buf, dst[:n_pool].to(buf.device), part.to(buf.device))
    if n_moves > n_pool:
        d, s = dst[n_pool:n_moves].to(buf.device), src[n_pool:n_moves].to(buf.device)
        _scatter_rows(buf, d, buf.index_select(0, s))


def apply_plan_triton(buf: torch.Tensor, rows: torch.Tensor, plan: MovePlan, n_moves: int | None,
                      staged: bool) -> None:
    """A plan's moves in one Triton launch (``kernels.weight_cache.apply_moves``)."""
    from kernels.weight_cache import apply_moves

    apply_moves(buf, rows, plan.dst, plan.src, plan.counts, max_moves=n_moves, staged=staged)


def apply_packed(buf: torch.Tensor, rows: torch.Tensor, packed: torch.Tensor, cap: int, n_moves: int, *,
                 staged: bool, backend: str) -> None:
    """Moves of a packed plan ``[n_pool, n_moves | dst (cap) | src (cap)]`` (int32) into ``buf``.

    ``packed`` and ``rows`` may sit in pinned host memory while ``buf`` is on the GPU: the
    Triton kernel then reads them through unified addressing (one launch, no copy).
    """
    counts, dst, src = packed[:2], packed[2 : 2 + cap], packed[2 + cap :]
    if backend == "triton":
        from kernels.weight_cache import apply_moves

        apply_moves(buf, rows, dst, src, counts, max_moves=n_moves, staged=staged)
    else:
        n_pool = int(packed[0])
        apply_moves_torch(buf, rows, dst, src, n_pool, n_moves, staged=staged)
