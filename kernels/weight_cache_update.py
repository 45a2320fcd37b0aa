"""The GPU weight cache's paired update in ONE launch with no grid barrier.

``kernels.weight_cache.plan_and_move`` splits the plan over its programs and so needs two grid
barriers (counts, ranks, moves) and every program resident at once; on an H100 those barriers
and the round trips around them cost 14-27 us, several times the row copies they guard. Here
every program makes the WHOLE plan itself instead (a scan of the mask and the slot map, a few KB
from L2, the same for every program), keeps the move list entries of the rows it copies, and
copies them: no program ever waits for another.

Two things make that race-free without a barrier:

- the state that the plan reads is double-buffered: launch number ``c`` reads column ``c & 1`` of
  the slot map ``s2n`` [CAP, 2] and of the cached-set mask ``prev`` [N, 2] and writes column
  ``1 - (c & 1)``, every entry of it, each entry by exactly one program; the neuron map ``n2s``
  is not read by the launch, so it is updated in place (each changed entry by one program);
- ``calls`` holds one launch counter per program, read and bumped by that program only, so every
  program of a launch sees the same ``c`` with no atomics (and a CUDA graph of the launch stays
  correct over any number of replays).

Work items are (move, column chunk) pairs dealt round robin over the programs, as in
``plan_and_move``; a program writes only the list entries of the moves it has items of (into
its own rows of ``lists``), so list reads never cross programs either. The plan is
``ecc_kv.weight_cache.plan_moves``' (same moves, same order, same maps): added neurons in id
order fill the holes below the new size in slot order, then the stayers of the vacated tail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

NEURON_BLOCK = 4096  # neurons per scan step (a power of two)
SLOT_BLOCK = 2048  # slots per scan step (a power of two)
TILE_BYTES = 16384  # bytes of one [MB, COLS] copy tile
CHUNK_BYTES = 2048  # bytes of one column chunk: a 24 KiB row is 12 work items
CPU_PROGRAMS = 3  # programs under the interpreter: several, so the tests cover the dealing of work


@dataclass
class PairedState:
    """Device state of a GPU cache updated by :func:`paired_update` (see the module docstring)."""

    s2n: torch.Tensor  # int32 [CAP, 2]: slot -> neuron (-1 empty), column calls & 1 current
    prev: torch.Tensor  # uint8 [N, 2]: the cached set as a mask, column calls & 1 current
    n2s: torch.Tensor  # int32 [N]: neuron -> slot (-1 absent), updated in place
    lists: torch.Tensor  # int32 [P, 3, CAP] scratch: per program, the (dst, src, neuron) of its moves
    calls: torch.Tensor  # int32 [2, P]: per program, launches so far and launches fed by a mask ring

    @property
    def programs(self) -> int:
        return self.calls.shape[1]

    def current_slots(self) -> torch.Tensor:
        """int32 [CAP]: the current slot -> neuron map (a copy; selected on the device, no host sync)."""
        col = (self.calls[0, :1] & 1).long()
        return torch.index_select(self.s2n, 1, col)[:, 0]

    def set_slots(self, s2n: torch.Tensor) -> None:
        """Overwrite the current slot map (a rebuild done outside the launch); no host sync."""
        self.s2n.index_copy_(1, (self.calls[0, :1] & 1).long(), s2n.view(-1, 1).to(self.s2n.dtype))


def paired_state(n: int, cap: int, device: torch.device | str, programs: int | None = None) -> PairedState:
    """The state of an empty cache of ``cap`` slots over ``n`` neurons on ``device``.

    ``programs`` fixes the launch's grid for the state's life (default: one per SM on CUDA,
    ``CPU_PROGRAMS`` elsewhere); every launch on this state uses it.
    """
    device = torch.device(device)
    if n < 1 or cap < 1:
        raise ValueError(f"need n >= 1 neurons and cap >= 1 slots, got n={n}, cap={cap}")
    if programs is None:
        programs = (torch.cuda.get_device_properties(device).multi_processor_count
                    if device.type == "cuda" else CPU_PROGRAMS)
    if programs < 1:
        raise ValueError(f"programs must be >= 1, got {programs}")
    return PairedState(
        s2n=torch.full((cap, 2), -1, dtype=torch.int32, device=device),
        prev=torch.zeros(n, 2, dtype=torch.uint8, device=device),
        n2s=torch.full((n,), -1, dtype=torch.int32, device=device),
        lists=torch.zeros(programs, 3, cap, dtype=torch.int32, device=device),
        calls=torch.zeros(2, programs, dtype=torch.int32, device=device),
    )


def mask_ring(state: PairedState, slots: int = 64) -> torch.Tensor:
    """int64 [slots, programs, 16] ring of mask addresses for :func:`paired_update`'s ``ring``, in
    pinned host memory (pageable on a CPU device). The c-th launch fed by a ring (``state.calls[1]``
    counts them) reads slot ``c % slots``, each program its own 128-byte line: the host writes
    ``ring.numpy()[c % slots, :, 0] = mask.data_ptr()`` before it, so one CUDA graph of the launch
    takes a new mask every replay without a copy."""
    if slots < 1 or slots & (slots - 1):
        raise ValueError(f"slots must be a power of two, got {slots}")
    ring = torch.zeros(slots, state.programs, 16, dtype=torch.int64)
    return ring.pin_memory() if state.calls.is_cuda else ring


@triton.jit
def _touches(j, pid, n_chunk, n_prog):
    """Whether program ``pid`` gets an item of move ``j``: items j * n_chunk + c, c < n_chunk, go to
    program (item % n_prog)."""
    r = (j * n_chunk) % n_prog
    return ((pid - r + n_prog) % n_prog) < n_chunk


@triton.jit
def _paired_update_kernel(
    new_ptr,  # uint8 [N]: the new mask
    prev_ptr,  # uint8 [N, 2]: cached-set masks (read column RD, written column 1 - RD)
    s2n_ptr,  # int32 [CAP, 2]: slot maps (likewise)
    n2s_ptr,  # int32 [N]: neuron map, in place
    buf_ptr,  # [CAP, row_len]
    pool_ptr,  # [N, row_len]
    list_ptr,  # int32 [n_prog, 3, CAP]: per program (dst slot, source, neuron) of move j
    calls_ptr,  # int32 [2, n_prog]: launches, ring-fed launches
    stats_ptr,  # int32 [4] out: (added, removed, moves, new size)
    hstats_ptr,  # int32 [4] out (HOST_STATS): the same, in pinned host memory
    ring_ptr,  # int64 [RING, n_prog, 16] (INDIRECT): mask addresses
    N,
    CAP,
    row_len,
    n_prog,
    NB: tl.constexpr,
    SB: tl.constexpr,
    MB: tl.constexpr,  # work items per program per copy step
    COLS: tl.constexpr,  # row elements per column chunk
    HOST_STATS: tl.constexpr,
    INDIRECT: tl.constexpr,
    RING: tl.constexpr,
):
    pid = tl.program_id(0)
    call = tl.load(calls_ptr + pid)
    rd = call & 1
    wr = 1 - rd
    if INDIRECT:
        fed = tl.load(calls_ptr + n_prog + pid)
        new_ptr = tl.load(ring_ptr + ((fed & (RING - 1)) * n_prog + pid) * 16).to(tl.pointer_type(tl.uint8))
        tl.store(calls_ptr + n_prog + pid, fed + 1)
    dst_l = list_ptr + pid.to(tl.int64) * 3 * CAP
    src_l = dst_l + CAP
    nid_l = src_l + CAP
    n_chunk = tl.cdiv(row_len, COLS)
    io = tl.arange(0, NB)
    so = tl.arange(0, SB)
    zero = tl.sum(tl.zeros([SB], dtype=tl.int32), axis=0)
    # 1) added neurons (in the new mask, not cached) in id order are moves 0..A-1, from the pool
    n_add = zero
    for start in range(0, N, NB):
        i = start + io
        ok = i < N
        nw = tl.load(new_ptr + i, mask=ok, other=0)
        pv = tl.load(prev_ptr + 2 * i + rd, mask=ok, other=0)
        add = ok & (nw != 0) & (pv == 0)
        rank = n_add + tl.cumsum(add.to(tl.int32), axis=0) - 1
        mine = add & (rank < CAP) & _touches(rank, pid, n_chunk, n_prog)
        tl.store(src_l + rank, i, mask=mine)
        tl.store(nid_l + rank, i, mask=mine)
        n_add += tl.sum(add.to(tl.int32), axis=0)
    # 2) cached neurons that stay: the new size
    n_stay = zero
    n_old = zero
    for start in range(0, CAP, SB):
        s = start + so
        nid = tl.load(s2n_ptr + 2 * s + rd, mask=s < CAP, other=-1)
        occ = nid >= 0
        stays = occ & (tl.load(new_ptr + tl.maximum(nid, 0), mask=occ, other=0) != 0)
        n_stay += tl.sum(stays.to(tl.int32), axis=0)
        n_old += tl.sum(occ.to(tl.int32), axis=0)
    m_new = n_stay + n_add
    lim = tl.where(m_new <= CAP, CAP, 0)  # overflow: the maps are carried over unchanged and no row moves
    # 3) holes below the new size in slot order are the destinations; stayers in the vacated tail
    # follow the added as buffer sources. The slot block's owner writes the next slot map (holes:
    # the move's committer) and clears the removed neurons' n2s entries.
    n_hole = zero
    n_climb = zero
    for start in range(0, CAP, SB):
        s = start + so
        ok = s < CAP
        nid = tl.load(s2n_ptr + 2 * s + rd, mask=ok, other=-1)
        occ = nid >= 0
        stays = occ & (tl.load(new_ptr + tl.maximum(nid, 0), mask=occ, other=0) != 0)
        fits = s < lim  # (vector comparisons: scalar & tensor masks break the interpreter)
        below = s < m_new
        hole = fits & below & (stays == 0)
        climb = fits & stays & (below == 0)
        hr = n_hole + tl.cumsum(hole.to(tl.int32), axis=0) - 1
        cr = n_add + n_climb + tl.cumsum(climb.to(tl.int32), axis=0) - 1
        tl.store(dst_l + hr, s, mask=hole & _touches(hr, pid, n_chunk, n_prog))
        mc = climb & _touches(cr, pid, n_chunk, n_prog)
        tl.store(src_l + cr, s, mask=mc)
        tl.store(nid_l + cr, nid, mask=mc)
        own = ok & ((so * 0 + (start // SB) % n_prog) == pid)
        keep = ((so * 0 + lim) == 0) | (stays & below)
        tl.store(s2n_ptr + 2 * s + wr, tl.where(keep, nid, -1), mask=own & (hole == 0))
        tl.store(n2s_ptr + tl.maximum(nid, 0), -1, mask=own & fits & occ & (stays == 0))
        n_hole += tl.sum(hole.to(tl.int32), axis=0)
        n_climb += tl.sum(climb.to(tl.int32), axis=0)
    # the next cached-set mask, each neuron block by its owner
    for start in range(pid * NB, N, n_prog * NB):
        i = start + io
        ok = i < N
        nw = tl.load(new_ptr + i, mask=ok, other=0)
        pv = tl.load(prev_ptr + 2 * i + rd, mask=ok, other=0)
        tl.store(prev_ptr + 2 * i + wr, tl.where(lim > 0, (nw != 0).to(tl.uint8), pv), mask=ok)
    tl.debug_barrier()  # this program's list entries are written before its threads read them
    # 4) copies: work items q = (move j, column chunk c), q = t + pid + r * n_prog (r < MB) in one
    # [MB, COLS] tile per step; sources (pool rows, tail slots >= m_new) never overlap the
    # destinations (holes < m_new). The item of chunk 0 commits its move in both maps.
    rows = tl.arange(0, MB)
    cols0 = tl.arange(0, COLS)
    n_items = n_hole * n_chunk
    for t in range(0, n_items, n_prog * MB):
        q = t + pid + rows * n_prog  # [MB]
        okq = q < n_items
        j = q // n_chunk
        cb = q - j * n_chunk
        d = tl.load(dst_l + j, mask=okq, other=0)
        sj = tl.load(src_l + j, mask=okq, other=0)
        fp = (okq & (j < n_add))[:, None]  # [MB, 1] from the pool
        fb = (okq & (j >= n_add))[:, None]  # [MB, 1] from the buffer tail
        cols = (cb * COLS)[:, None] + cols0[None, :]  # [MB, COLS]
        okc = cols < row_len
        d2 = (d.to(tl.int64) * row_len)[:, None]
        s2 = (sj.to(tl.int64) * row_len)[:, None]
        x = tl.load(pool_ptr + s2 + cols, mask=fp & okc, other=0)
        y = tl.load(buf_ptr + s2 + cols, mask=fb & okc, other=0)
        tl.store(buf_ptr + d2 + cols, tl.where(fp, x, y), mask=okq[:, None] & okc)
        first = okq & (cb == 0)
        v = tl.load(nid_l + j, mask=first, other=0)
        tl.store(s2n_ptr + 2 * d + wr, v, mask=first)
        tl.store(n2s_ptr + v, d, mask=first)
    if pid == 0:
        tl.store(stats_ptr, n_add)
        tl.store(stats_ptr + 1, n_old - n_stay)
        tl.store(stats_ptr + 2, n_hole)
        tl.store(stats_ptr + 3, m_new)
        if HOST_STATS:
            tl.store(hstats_ptr, n_add)
            tl.store(hstats_ptr + 1, n_old - n_stay)
            tl.store(hstats_ptr + 2, n_hole)
            tl.store(hstats_ptr + 3, m_new)
    tl.store(calls_ptr + pid, call + 1)


def paired_update(
    new: torch.Tensor,
    state: PairedState,
    buf: torch.Tensor,
    pool: torch.Tensor,
    stats: torch.Tensor,
    host_stats: torch.Tensor | None = None,
    ring: torch.Tensor | None = None,
) -> None:
    """A whole paired update in ONE launch with no grid barrier: plan, row moves, map commit.

    new: bool [N] on the buffer's device (with ``ring``: only its size is used, the launch reads
    the mask at the address in the ring); buf: [cap, R] and pool: [N, R] contiguous, one dtype, on
    the state's device; stats: int32 [4] = (added, removed, moves, new size), also written to
    ``host_stats`` (pinned host memory) when given. A new set larger than ``cap`` changes nothing
    (stats tell). No host sync: capturable in a CUDA graph, and any number of replays stays right.
    """
    if new.dtype != torch.bool or new.dim() != 1 or not new.is_contiguous():
        raise TypeError(f"new must be a contiguous 1-D bool mask, got {new.dtype} {tuple(new.shape)}")
    if stats.dtype != torch.int32 or stats.numel() != 4:
        raise TypeError(f"stats must be int32 [4], got {stats.dtype} {tuple(stats.shape)}")
    n, cap, progs = state.n2s.numel(), state.s2n.shape[0], state.programs
    if new.numel() != n or pool.shape[0] != n or buf.shape[0] != cap or buf.dim() != 2 or buf.shape[1] != pool.shape[1]:
        raise ValueError(f"sizes disagree: new {new.numel()}, state n={n} cap={cap}, buf {tuple(buf.shape)}, "
                         f"pool {tuple(pool.shape)}")
    if not (buf.is_contiguous() and pool.is_contiguous()) or buf.dtype != pool.dtype:
        raise ValueError("buf and pool must be contiguous and of one dtype")
    if ring is not None and (ring.dtype != torch.int64 or ring.dim() != 3 or ring.shape[1:] != (progs, 16)
                             or ring.shape[0] & (ring.shape[0] - 1)):
        raise ValueError(f"ring must be mask_ring()'s int64 [RING, {progs}, 16] (RING a power of two), "
                         f"got {ring.dtype} {tuple(ring.shape)}")
    row_len, es = buf.shape[1], buf.element_size()
    cols = min(triton.next_power_of_2(row_len), max(16, CHUNK_BYTES) // es)
    if cap * triton.cdiv(row_len, cols) >= 2**31:
        raise ValueError(f"cap {cap} x {triton.cdiv(row_len, cols)} column chunks exceeds the int32 work-item index")
    mb = max(1, min(64, TILE_BYTES // (cols * es)))
    hs = stats if host_stats is None else host_stats
    rg = ring if ring is not None else stats
    _paired_update_kernel[(progs,)](
        new.view(torch.uint8), state.prev, state.s2n, state.n2s, buf, pool, state.lists, state.calls, stats, hs, rg,
        n, cap, row_len, progs, NB=min(NEURON_BLOCK, triton.next_power_of_2(n)),
        SB=min(SLOT_BLOCK, triton.next_power_of_2(cap)), MB=mb, COLS=cols, HOST_STATS=host_stats is not None,
        INDIRECT=ring is not None, RING=ring.shape[0] if ring is not None else 1, num_warps=8)
