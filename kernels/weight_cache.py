"""Row moves of the paired-replacement weight cache in one Triton launch, and a fused planner.

Program (j, c) copies column block c of move j: buffer row ``dst[j]`` receives either a
pool row (``j < n_pool``; pool row ``src[j]``, or staging row ``j`` when the pool rows were
already gathered into a staging block) or the buffer row ``src[j]`` from the tail being
vacated. The planner guarantees sources and destinations never overlap, so all moves run
at once. The counts are read from device memory, so the launch needs no host sync and a
fixed grid of ``capacity`` moves can be captured in a CUDA graph. The plain-torch twin is
``ecc_kv.weight_cache.apply_moves_torch``.

``plan_and_commit`` computes the same plan as ``ecc_kv.weight_cache.plan_moves`` (same
moves, same order) in ONE single-program launch: ranks by ``tl.cumsum`` over blocks with
a running carry, then it commits the new slot/neuron maps in place (unless the new set
overflows the capacity, in which case it changes nothing), so a GPU update is two
launches (plan, move) instead of ~40 small torch ops.

``plan_and_move`` is the whole update in ONE launch of one program per SM: chunk counts,
a grid barrier, ranks, a second barrier, then the row copies as (move, column chunk)
work items over every program and the map commit. The pool (and, with ``mask_out``,
the mask) may sit in pinned host memory (the offloaded cache); with ``ring`` the launch
reads its mask's address from a ring in pinned host memory, so one CUDA graph of it takes
a new mask every replay without a copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _apply_moves_kernel(
    buf_ptr,
    rows_ptr,
    dst_ptr,
    src_ptr,
    counts_ptr,
    row_len,
    BLOCK: tl.constexpr,
    STAGED: tl.constexpr,
):
    j = tl.program_id(0)
    cb = tl.program_id(1)
    n_pool = tl.load(counts_ptr)
    n_moves = tl.load(counts_ptr + 1)
    if j < n_moves:
        d = tl.load(dst_ptr + j).to(tl.int64)
        s = tl.load(src_ptr + j).to(tl.int64)
        cols = cb * BLOCK + tl.arange(0, BLOCK)
        ok = cols < row_len
        if j < n_pool:
            if STAGED:
                r = j.to(tl.int64)
            else:
                r = s
            v = tl.load(rows_ptr + r * row_len + cols, mask=ok)
        else:
            v = tl.load(buf_ptr + s * row_len + cols, mask=ok)
        tl.store(buf_ptr + d * row_len + cols, v, mask=ok)


def _block(row_len: int, elem_bytes: int) -> int:
    """Column block: up to 16 KiB per program, a power of two, at least one 16-byte vector."""
    return max(16 // elem_bytes, min(triton.next_power_of_2(row_len), 16384 // elem_bytes))


def apply_moves(
    buf: torch.Tensor,
    rows: torch.Tensor,
    dst: torch.Tensor,
    src: torch.Tensor,
    counts: torch.Tensor,
    *,
    max_moves: int | None = None,
    staged: bool = False,
) -> None:
    """Apply a move plan to ``buf`` in one launch.

    buf: [cap, R] contiguous; rows: [*, R] contiguous (the pool, or a staging block when
    ``staged``); dst, src: int32 [>= max_moves]; counts: int32 [2] = (n_pool, n_moves) on
    the buffer's device. ``max_moves`` bounds the grid (default: every slot of ``buf``,
    which keeps the launch free of host syncs and CUDA-graph capturable).
    """
    if buf.dim() != 2 or rows.dim() != 2 or rows.shape[1] != buf.shape[1]:
        raise ValueError(f"buf and rows must be [*, R] with equal R, got {tuple(buf.shape)} and {tuple(rows.shape)}")
    if not (buf.is_contiguous() and rows.is_contiguous()):
        raise ValueError("buf and rows must be contiguous")
    if rows.dtype != buf.dtype:
        raise TypeError(f"rows dtype {rows.dtype} differs from buf dtype {buf.dtype}")
    for name, t in (("dst", dst), ("src", src), ("counts", counts)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
    n = buf.shape[0] if max_moves is None else int(max_moves)
    if n <= 0:
        return
    row_len = buf.shape[1]
    block = _block(row_len, buf.element_size())
    grid = (n, triton.cdiv(row_len, block))
    _apply_moves_kernel[grid](buf, rows, dst, src, counts, row_len, BLOCK=block, STAGED=staged, num_warps=4)


@triton.jit
def _in_mask(mask_ptr, nid, occ, ok, CG: tl.constexpr = False):
    """Whether each slot's neuron ``nid`` (occupied slots only) is set in the mask: the slot stays.

    ``CG`` reads around L1 (a mask that other programs of the launch wrote before a grid barrier).
    """
    if CG:
        nw = tl.load(mask_ptr + tl.maximum(nid, 0), mask=ok & occ, other=0, cache_modifier=".cg")
    else:
        nw = tl.load(mask_ptr + tl.maximum(nid, 0), mask=ok & occ, other=0)
    return occ & (nw != 0)


@triton.jit
def _slots(s2n_ptr, mask_ptr, s, ok):
    """(neuron, occupied, stays) of slots ``s`` (-1 / False where not ``ok``)."""
    nid = tl.load(s2n_ptr + s, mask=ok, other=-1)
    occ = nid >= 0
    return nid, occ, _in_mask(mask_ptr, nid, occ, ok)


@triton.jit
def _count_stayers(s2n_ptr, new_ptr, CAP, BLOCK: tl.constexpr):
    """(cached neurons still in the new mask, cached neurons) over all ``CAP`` slots, BLOCK slots a step."""
    offs = tl.arange(0, BLOCK)
    n_stay = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), axis=0)
    n_old = n_stay
    for start in range(0, CAP, BLOCK):
        s = start + offs
        _, occ, stays = _slots(s2n_ptr, new_ptr, s, s < CAP)
        n_stay += tl.sum(stays.to(tl.int32), axis=0)
        n_old += tl.sum(occ.to(tl.int32), axis=0)
    return n_stay, n_old


@triton.jit
def _plan_kernel(
    new_ptr,  # uint8 [N]: the new mask
    n2s_ptr,  # int32 [N]: neuron -> slot, updated in place
    s2n_ptr,  # int32 [CAP]: slot -> neuron, updated in place
    dst_ptr,  # int32 [CAP] out: destination slots
    src_ptr,  # int32 [CAP] out: pool neuron (j < n_add) or buffer slot
    moved_ptr,  # int32 [CAP] scratch: the neuron landing in dst[j]
    counts_ptr,  # int32 [2] out: (n_add, n_moves); (0, 0) on overflow
    stats_ptr,  # int32 [4] out: (added, removed, n_moves, new size)
    N,
    CAP,
    BLOCK: tl.constexpr,
):
    offs = tl.arange(0, BLOCK)
    zero = tl.sum(tl.zeros([BLOCK], dtype=tl.int32), axis=0)
    # 1) how many cached neurons stay
    n_stay, n_old = _count_stayers(s2n_ptr, new_ptr, CAP, BLOCK)
    # 2) added neurons in id order -> the first moves (from the pool)
    n_add = zero
    for start in range(0, N, BLOCK):
        i = start + offs
        ok = i < N
        nw = tl.load(new_ptr + i, mask=ok, other=0)
        sl = tl.load(n2s_ptr + i, mask=ok, other=0)
        add = (ok & (nw != 0) & (sl < 0)).to(tl.int32)
        rank = n_add + tl.cumsum(add, axis=0) - 1
        w = (add != 0) & (rank < CAP)
        tl.store(src_ptr + rank, i, mask=w)
        tl.store(moved_ptr + rank, i, mask=w)
        n_add += tl.sum(add, axis=0)
    m_new = n_stay + n_add
    lim = tl.where(m_new <= CAP, CAP, 0)  # overflow: no slot is touched
    # 3) holes below the new size in slot order; stayers in the vacated tail follow the added
    n_hole = zero
    n_climb = zero
    for start in range(0, CAP, BLOCK):
        s = start + offs
        ok = s < lim
        nid, occ, stays = _slots(s2n_ptr, new_ptr, s, ok)
        below = s < m_new
        hole = (ok & below & (stays == 0)).to(tl.int32)
        climb = (ok & stays & (below == 0)).to(tl.int32)
        hr = n_hole + tl.cumsum(hole, axis=0) - 1
        tl.store(dst_ptr + hr, s, mask=hole != 0)
        cr = n_add + n_climb + tl.cumsum(climb, axis=0) - 1
        tl.store(src_ptr + cr, s, mask=climb != 0)
        tl.store(moved_ptr + cr, nid, mask=climb != 0)
        tl.store(n2s_ptr + tl.maximum(nid, 0), -1, mask=ok & occ & (stays == 0))  # removed neurons
        n_hole += tl.sum(hole, axis=0)
        n_climb += tl.sum(climb, axis=0)
    tl.debug_barrier()  # every read of the old slot map is done; the move lists are written
    # 4) commit: the vacated tail empties, every move's neuron takes its slot
    for start in range(0, CAP, BLOCK):
        s = start + offs
        tl.store(s2n_ptr + s, -1, mask=(s < lim) & (s >= m_new))
    for start in range(0, CAP, BLOCK):
        j = start + offs
        ok = j < n_hole
        d = tl.load(dst_ptr + j, mask=ok, other=0)
        v = tl.load(moved_ptr + j, mask=ok, other=0)
        tl.store(s2n_ptr + d, v, mask=ok)
        tl.store(n2s_ptr + v, d, mask=ok)
    n_add_c = tl.where(m_new <= CAP, n_add, 0)
    tl.store(counts_ptr, n_add_c)
    tl.store(counts_ptr + 1, n_hole)
    tl.store(stats_ptr, n_add)
    tl.store(stats_ptr + 1, n_old - n_stay)
    tl.store(stats_ptr + 2, n_hole)
    tl.store(stats_ptr + 3, m_new)


def plan_and_commit(
    new: torch.Tensor,
    n2s: torch.Tensor,
    s2n: torch.Tensor,
    dst: torch.Tensor,
    src: torch.Tensor,
    moved: torch.Tensor,
    counts: torch.Tensor,
    stats: torch.Tensor,
) -> None:
    """Plan a paired update and commit the maps in place, in one single-program launch.

    new: bool [N]; n2s: int32 [N]; s2n: int32 [cap] (both updated in place unless the
    new set exceeds cap); dst, src, moved: int32 [cap] (outputs / scratch); counts: int32
    [2] = (n_pool, n_moves) for :func:`apply_moves`; stats: int32 [4] = (added, removed,
    moves, new size). No host sync: capturable in a CUDA graph.
    """
    if new.dtype != torch.bool or new.dim() != 1:
        raise TypeError(f"new must be a 1-D bool mask, got {new.dtype} {tuple(new.shape)}")
    for name, t in (("n2s", n2s), ("s2n", s2n), ("dst", dst), ("src", src), ("moved", moved),
                    ("counts", counts), ("stats", stats)):
        if t.dtype != torch.int32 or not t.is_contiguous():
            raise TypeError(f"{name} must be a contiguous int32 tensor, got {t.dtype}")
    n, cap = n2s.numel(), s2n.numel()
    if new.numel() != n or min(dst.numel(), src.numel(), moved.numel()) < cap:
        raise ValueError(f"sizes disagree: new {new.numel()}, n2s {n}, s2n {cap}, dst/src/moved >= {cap}")
    block = min(2048, max(128, triton.next_power_of_2(max(n, cap))))
    _plan_kernel[(1,)](new.view(torch.uint8), n2s, s2n, dst, src, moved, counts, stats, n, cap,
                       BLOCK=block, num_warps=8)


SYNC_WORDS = 65  # barrier state: arrivals [0], timeouts [64] (own 128-byte line)


@triton.jit
def _grid_sync(sync_ptr, pid, flip, SPIN: tl.constexpr):
    """Grid barrier (all programs must be resident at once), the scheme of CUDA cooperative
    groups' grid sync: every program adds 1 to the arrival word, program 0 adds ``flip`` =
    2^31 - (P - 1), so the word's top bit flips exactly when the last program arrives and its
    low bits return to 0: no reset and no generation word, one atomic per program, and
    waiters poll until the top bit differs from the value their own arrival returned.
    sync_ptr[64] counts waits that gave up after SPIN polls (0 unless programs were starved
    of SMs). The arrival is an acq_rel atomic bracketed by CTA barriers; waiters poll with
    volatile loads, then acquire once on the same word, so every store any thread made
    before the barrier is visible to every thread after it.
    """
    tl.debug_barrier()  # all threads' stores precede the (single-thread) release below
    old = tl.atomic_add(sync_ptr, tl.where(pid == 0, flip, 1))
    spins = old * 0
    while (((tl.load(sync_ptr, volatile=True) ^ old) >= 0) & (spins < SPIN)):  # top bit not flipped yet
        spins += 1
    if spins >= SPIN:
        tl.atomic_add(sync_ptr + 64, 1)
    tl.atomic_add(sync_ptr, 0)  # acquire
    tl.debug_barrier()  # every thread's later loads follow the acquire


def _flip(progs: int) -> int:
    """Program 0's barrier arrival, 2^31 - (P - 1), as the int32 it wraps to."""
    v = (1 << 31) - (progs - 1)
    return v - (1 << 32) if v >= 1 << 31 else v


@triton.jit
def _slot_block(s, ok, mine, nid, occ, stays, m_new, n_add, n_hole, n_climb, dst_ptr, src_ptr, moved_ptr, n2s_ptr):
    """Ranks of one block of slots: holes below the new size (destinations, slot order) and
    stayers in the vacated tail (buffer sources after the added); removed neurons leave n2s.
    Stores only where ``mine``; returns the running (holes, climbers) counts."""
    below = s < m_new
    hole = (ok & below & (stays == 0)).to(tl.int32)
    climb = (ok & stays & (below == 0)).to(tl.int32)
    hr = n_hole + tl.cumsum(hole, axis=0) - 1
    tl.store(dst_ptr + hr, s, mask=mine & (hole != 0))
    cr = n_add + n_climb + tl.cumsum(climb, axis=0) - 1
    tl.store(src_ptr + cr, s, mask=mine & (climb != 0))
    tl.store(moved_ptr + cr, nid, mask=mine & (climb != 0))
    tl.store(n2s_ptr + tl.maximum(nid, 0), -1, mask=mine & ok & occ & (stays == 0))  # removed neurons
    return n_hole + tl.sum(hole, axis=0), n_climb + tl.sum(climb, axis=0)


@triton.jit
def _plan_move_kernel(
    new_ptr,  # uint8 [N]: the new mask
    n2s_ptr,  # int32 [N]: neuron -> slot, updated in place
    s2n_ptr,  # int32 [CAP]: slot -> neuron, updated in place
    buf_ptr,  # [CAP, row_len]: the buffer
    pool_ptr,  # [N, row_len]: the pool
    dst_ptr,  # int32 [CAP] scratch: destination slot of move j
    src_ptr,  # int32 [CAP] scratch: pool neuron (j < added) or tail slot of move j
    moved_ptr,  # int32 [CAP] scratch: the neuron landing in dst[j]
    part_ptr,  # int32 [n_prog] scratch: added neurons per program's neuron chunk
    sync_ptr,  # int32 [SYNC_WORDS]: grid barrier state
    newd_ptr,  # uint8 [N] out (PUBLISH): the device copy of the mask the slot scan reads
    stats_ptr,  # int32 [4] out: (added, removed, moves, new size)
    hstats_ptr,  # int32 [4] out (HOST_STATS): the same, in pinned host memory
    ring_ptr,  # int64 [RING, n_prog, 16] (INDIRECT): mask addresses, pinned host memory, a line per program
    ctr_ptr,  # int32 [1] (INDIRECT): launches so far; this launch's mask address is ring[ctr % RING, pid, 0]
    N,
    CAP,
    row_len,
    n_prog,
    flip,  # program 0's barrier arrival (see _grid_sync)
    NB: tl.constexpr,  # neurons per program (power of two)
    SB: tl.constexpr,  # slots per block (power of two)
    PB: tl.constexpr,  # power of two >= n_prog
    MB: tl.constexpr,  # work items (move, column chunk) per program per copy step
    COLS: tl.constexpr,  # row elements per column chunk
    SPIN: tl.constexpr,
    HOST_STATS: tl.constexpr,
    ONE: tl.constexpr,  # CAP <= SB: the slot block stays in registers from phase 1 to phase 2
    PUBLISH: tl.constexpr,  # new_ptr may be host memory: read once, copied to newd_ptr for the slot scan
    INDIRECT: tl.constexpr,  # the mask's address comes from the ring (a graph replayed with a new mask each call)
    RING: tl.constexpr,  # ring slots (a power of two)
):
    pid = tl.program_id(0)
    if INDIRECT:  # each program reads its own 128-byte line: no two programs read one host line
        call = tl.load(ctr_ptr)
        new_ptr = tl.load(ring_ptr + ((call & (RING - 1)) * n_prog + pid) * 16).to(tl.pointer_type(tl.uint8))
    zero = tl.sum(tl.zeros([SB], dtype=tl.int32), axis=0)
    # phase 1: added neurons of this program's chunk; stayers over all slots (every program;
    # with PUBLISH after the barrier, from the device copy of the mask the chunks make)
    i = pid * NB + tl.arange(0, NB)
    iok = i < N
    nw = tl.load(new_ptr + i, mask=iok, other=0)
    if PUBLISH:
        tl.store(newd_ptr + i, nw, mask=iok)
        scan_ptr = newd_ptr
    else:
        scan_ptr = new_ptr
    sl = tl.load(n2s_ptr + i, mask=iok, other=0)
    add = (iok & (nw != 0) & (sl < 0)).to(tl.int32)  # [NB]
    tl.store(part_ptr + pid, tl.sum(add, axis=0))
    offs = tl.arange(0, SB)
    if ONE:
        ok1 = offs < CAP
        nid1 = tl.load(s2n_ptr + offs, mask=ok1, other=-1)
        occ1 = nid1 >= 0
        n_old = tl.sum(occ1.to(tl.int32), axis=0)
    if not PUBLISH:
        if ONE:
            stays1 = _in_mask(new_ptr, nid1, occ1, ok1)
            n_stay = tl.sum(stays1.to(tl.int32), axis=0)
        else:
            n_stay, n_old = _count_stayers(s2n_ptr, new_ptr, CAP, SB)
    _grid_sync(sync_ptr, pid, flip, SPIN)
    if INDIRECT:
        if pid == 0:  # every program read the counter before the barrier
            tl.store(ctr_ptr, call + 1)
    if PUBLISH:
        if ONE:
            stays1 = _in_mask(newd_ptr, nid1, occ1, ok1, CG=True)
            n_stay = tl.sum(stays1.to(tl.int32), axis=0)
        else:
            n_stay, n_old = _count_stayers(s2n_ptr, newd_ptr, CAP, SB)
    # phase 2: ranks. Added neurons in id order take moves 0..A-1 (program offsets from the
    # per-chunk counts); holes below the new size in slot order are the destinations; stayers
    # in the vacated tail follow the added as sources. Slot block b is written by program b % n_prog.
    p = tl.arange(0, PB)
    parts = tl.load(part_ptr + p, mask=p < n_prog, other=0, cache_modifier=".cg")
    n_add = tl.sum(parts, axis=0)
    before = tl.sum(tl.where(p < pid, parts, 0), axis=0)
    m_new = n_stay + n_add
    lim = tl.where(m_new <= CAP, CAP, 0)  # overflow: nothing is written
    rank = before + tl.cumsum(add, axis=0) - 1
    wa = (add != 0) & (rank < lim)
    tl.store(src_ptr + rank, i, mask=wa)
    tl.store(moved_ptr + rank, i, mask=wa)
    if ONE:
        ok = offs < lim
        n_hole, n_climb = _slot_block(offs, ok, ok & ((offs * 0 + pid) == 0), nid1, occ1, stays1, m_new, n_add,
                                      zero, zero, dst_ptr, src_ptr, moved_ptr, n2s_ptr)
    else:
        n_hole = zero
        n_climb = zero
        for start in range(0, CAP, SB):
            s = start + offs
            ok = s < lim
            owner = (start // SB) % n_prog
            nid, occ, stays = _slots(s2n_ptr, scan_ptr, s, ok)
            n_hole, n_climb = _slot_block(s, ok, ok & ((offs * 0 + owner) == pid), nid, occ, stays, m_new, n_add,
                                          n_hole, n_climb, dst_ptr, src_ptr, moved_ptr, n2s_ptr)
    _grid_sync(sync_ptr, pid, flip, SPIN)
    # phase 3: work items q = (move j, column chunk c) of C = cdiv(row_len, COLS) chunks a row;
    # items q = t + pid + r * n_prog (r < MB) form one [MB, COLS] tile per copy step, so a
    # program has all its chunks in flight at once and a few moves still spread over every
    # program (rows read from pinned host memory need many loads in flight); sources never
    # overlap destinations
    rows = tl.arange(0, MB)
    cols0 = tl.arange(0, COLS)
    n_chunk = tl.cdiv(row_len, COLS)
    n_items = n_hole * n_chunk
    for t in range(0, n_items, n_prog * MB):
        q = t + pid + rows * n_prog  # [MB]
        okq = q < n_items
        j = q // n_chunk
        cb = q - j * n_chunk
        d = tl.load(dst_ptr + j, mask=okq, other=0, cache_modifier=".cg")
        sj = tl.load(src_ptr + j, mask=okq, other=0, cache_modifier=".cg")
        fp = (okq & (j < n_add))[:, None]  # [MB, 1] from the pool
        fb = (okq & (j >= n_add))[:, None]  # [MB, 1] from the buffer tail
        cols = (cb * COLS)[:, None] + cols0[None, :]  # [MB, COLS]
        okc = cols < row_len
        d2 = (d.to(tl.int64) * row_len)[:, None]
        s2 = (sj.to(tl.int64) * row_len)[:, None]
        x = tl.load(pool_ptr + s2 + cols, mask=fp & okc, other=0)
        y = tl.load(buf_ptr + s2 + cols, mask=fb & okc, other=0)
        tl.store(buf_ptr + d2 + cols, tl.where(fp, x, y), mask=okq[:, None] & okc)
        first = okq & (cb == 0)  # the item holding a move's first chunk commits its slot in both maps
        v = tl.load(moved_ptr + j, mask=first, other=0, cache_modifier=".cg")
        tl.store(s2n_ptr + d, v, mask=first)
        tl.store(n2s_ptr + v, d, mask=first)
    for start in range(pid * SB, CAP, n_prog * SB):  # the vacated tail empties
        s = start + offs
        tl.store(s2n_ptr + s, -1, mask=(s < lim) & (s >= m_new))
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


SPIN_LIMIT = 1 << 22  # barrier polls before a program gives up (seconds; only when starved of SMs)
TILE_BYTES = 16384  # bytes of one [MB, COLS] copy tile (two masked loads of it in registers: 128 B a thread at 8 warps)
CHUNK_BYTES = 2048  # bytes of one column chunk: a 24 KiB row is 12 work items, so even 1% churn keeps every SM loading


def _programs(n: int, cap: int, device: torch.device) -> int:
    """Programs of the fused launch: one per SM (all must be resident for the grid barrier),
    never more than the slot or neuron blocks need; one under the interpreter (programs run
    one after another there, so a barrier can only wait for itself)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(sms, max(cap, triton.cdiv(n, 64))))


def plan_and_move(
    new: torch.Tensor,
    n2s: torch.Tensor,
    s2n: torch.Tensor,
    buf: torch.Tensor,
    pool: torch.Tensor,
    scratch: torch.Tensor,
    stats: torch.Tensor,
    host_stats: torch.Tensor | None = None,
    mask_out: torch.Tensor | None = None,
    ring: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """A whole paired update in ONE launch: plan, row moves and map commit.

    new: bool [N]; n2s: int32 [N]; s2n: int32 [cap] (updated in place unless the new set
    exceeds cap, which changes nothing); buf: [cap, R], pool: [N, R] contiguous, one dtype;
    scratch: int32 from :func:`fused_scratch` (zeroed once, reused: it holds the grid
    barrier's state); stats: int32 [4] = (added, removed, moves, new size), also written to
    ``host_stats`` (pinned host memory, read after a stream sync without a device-to-host
    copy) when given. No host sync: capturable in a CUDA graph.

    The grid has one program per SM; two grid barriers (atomics, all programs resident)
    separate counting, ranking and moving, so the scan over N is split across programs and
    the row copies, in (move, 2 KiB column chunk) work items, spread over the whole GPU.
    Offloaded, ``pool`` sits in pinned host memory (the kernel reads it through unified
    addressing) and so may ``new``: with ``mask_out`` (bool [N] on the buffer's device)
    every program reads its chunk of ``new`` once and copies it there, and the scan over
    the slots reads that copy after the first barrier, so no separate mask copy is needed.
    ``ring`` = (addresses, counter) from :func:`mask_ring`: the launch ignores ``new``'s
    address (only its size is checked) and reads its mask's address from slot
    ``counter % RING`` of the ring (pinned host memory, written by the host before the
    launch; each program reads its own copy on its own 128-byte line), then increments
    ``counter``: one graph of this launch takes a new mask every replay without a copy.
    """
    if new.dtype != torch.bool or new.dim() != 1:
        raise TypeError(f"new must be a 1-D bool mask, got {new.dtype} {tuple(new.shape)}")
    if not new.is_contiguous():
        raise ValueError(f"new must be contiguous (the launch reads N consecutive bytes), got stride {new.stride()}")
    for name, t in (("n2s", n2s), ("s2n", s2n), ("scratch", scratch), ("stats", stats)):
        if t.dtype != torch.int32 or not t.is_contiguous():
            raise TypeError(f"{name} must be a contiguous int32 tensor, got {t.dtype}")
    if not (buf.is_contiguous() and pool.is_contiguous()) or buf.dtype != pool.dtype:
        raise ValueError("buf and pool must be contiguous and of one dtype")
    n, cap = n2s.numel(), s2n.numel()
    progs = _programs(n, cap, buf.device)
    if new.numel() != n or pool.shape[0] != n or buf.shape[0] != cap or buf.shape[1] != pool.shape[1]:
        raise ValueError(f"sizes disagree: new {new.numel()}, n2s {n}, s2n {cap}, buf {tuple(buf.shape)}, "
                         f"pool {tuple(pool.shape)}")
    if scratch.numel() != 3 * cap + progs + SYNC_WORDS:
        raise ValueError(f"scratch must hold {3 * cap + progs + SYNC_WORDS} int32 (fused_scratch), got {scratch.numel()}")
    row_len, es = buf.shape[1], buf.element_size()
    sb = min(2048, triton.next_power_of_2(cap))
    cols = min(triton.next_power_of_2(row_len), max(16, CHUNK_BYTES) // es)
    mb = max(1, min(64, TILE_BYTES // (cols * es)))
    dst, src, moved = scratch[:cap], scratch[cap : 2 * cap], scratch[2 * cap : 3 * cap]
    part, sync = scratch[3 * cap : 3 * cap + progs], scratch[3 * cap + progs :]
    if mask_out is not None and (mask_out.dtype != torch.bool or mask_out.numel() != n):
        raise TypeError(f"mask_out must be a bool [N={n}] tensor, got {mask_out.dtype} {tuple(mask_out.shape)}")
    hs = stats if host_stats is None else host_stats
    newd = new if mask_out is None else mask_out
    addrs, ctr = ring if ring is not None else (stats, stats)
    slots = addrs.numel() // (progs * 16) if ring is not None else 1
    if ring is not None and (addrs.dtype != torch.int64 or ctr.dtype != torch.int32 or ctr.numel() != 1
                             or addrs.numel() != slots * progs * 16 or slots & (slots - 1) or mask_out is not None):
        raise ValueError(f"ring must be mask_ring()'s (int64 [RING, {progs}, 16], RING a power of two; int32 [1]) "
                         f"and excludes mask_out, got {addrs.dtype} {tuple(addrs.shape)}, {ctr.dtype} {tuple(ctr.shape)}")
    _plan_move_kernel[(progs,)](
        new.view(torch.uint8), n2s, s2n, buf, pool, dst, src, moved, part, sync, newd.view(torch.uint8), stats, hs,
        addrs, ctr, n, cap, row_len, progs, _flip(progs), NB=triton.next_power_of_2(triton.cdiv(n, progs)), SB=sb,
        PB=triton.next_power_of_2(progs), MB=mb, COLS=cols, SPIN=SPIN_LIMIT, HOST_STATS=host_stats is not None,
        ONE=cap <= sb, PUBLISH=mask_out is not None, INDIRECT=ring is not None, RING=slots, num_warps=8)


def fused_scratch(n: int, cap: int, device: torch.device | str) -> torch.Tensor:
    """Zeroed int32 scratch for :func:`plan_and_move`: move lists, chunk counts, barrier state."""
    device = torch.device(device)
    return torch.zeros(3 * cap + _programs(n, cap, device) + SYNC_WORDS, dtype=torch.int32, device=device)


def mask_ring(n: int, cap: int, device: torch.device | str, slots: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(addresses, counter) for :func:`plan_and_move`'s ``ring``: int64 [slots, programs, 16]
    in pinned host memory (pageable on a CPU device) and a zeroed int32 [1] launch counter on
    ``device``. The host writes a mask's address into every program's line of the slot that
    launch number ``counter`` reads: ``addresses.numpy()[counter % slots, :, 0] = mask.data_ptr()``."""
    device = torch.device(device)
    if slots < 1 or slots & (slots - 1):
        raise ValueError(f"slots must be a power of two, got {slots}")
    addrs = torch.zeros(slots, _programs(n, cap, device), 16, dtype=torch.int64)
    return (addrs.pin_memory() if device.type == "cuda" else addrs), torch.zeros(1, dtype=torch.int32, device=device)


def barrier_timeouts(scratch: torch.Tensor) -> int:
    """How many barrier waits gave up (programs not resident together): 0 in a healthy run."""
    return int(scratch[-1])
