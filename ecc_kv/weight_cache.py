"""Paired-replacement weight cache for dynamic sparse MLPs (CPU, GPU and offloaded).

With contextual sparsity each decode step runs the MLP only on the neurons predicted
active. The cache keeps the active neurons' weights contiguous in a preallocated buffer,
so the sparse MLP is a small dense GEMM, and when the mask changes only the changed
neurons move: every removed neuron is paired with an added one whose row is written
straight into the freed slot. That is at most max(added, removed) row writes per update
instead of gathering all m active rows again.

Layout: one pool of bundled rows ``[gate_i | up_i | down_i^T]`` (so one row copy moves
all three matrices of a neuron), a buffer of ``capacity`` such rows, and int32 maps
slot->neuron and neuron->slot (-1 when absent). ``cache.gate``, ``cache.up`` and
``cache.down`` are strided views of the buffer that ``torch.matmul`` / ``F.linear`` take
without a copy (the leading dimension is the bundled row length; BLAS accepts it).

The move plans come from ``ecc_kv.weight_cache_plans`` (torch, numpy) or from the fused
Triton kernels in ``kernels.weight_cache``; all make the same plan, move for move. On the
GPU the fastest update (``planner="fused"``) is ONE launch that plans, moves the rows and
commits the maps, replayed from a CUDA graph; offloaded, the same launch reads the mask
and the added rows from pinned host memory while the host only counts (or the host plans
and one kernel reads the added rows from the pinned pool: ``planner="torch"``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ecc_kv.weight_cache_plans import (
    MovePlan,
    apply_moves_torch,
    apply_packed,
    apply_plan_triton,
    commit_host_plan,
    plan_moves,
    plan_moves_host,
    plan_rebuild,
    row_items,
)

__all__ = ["PairedWeightCache", "MovePlan", "apply_moves_torch", "plan_moves", "plan_moves_host", "plan_rebuild",
           "PLACEMENTS", "BACKENDS", "OFFLOADS", "PLANNERS", "MASK_FEEDS", "DTYPES"]

Placement = Literal["cpu", "gpu", "offloaded"]
PLACEMENTS: tuple[str, ...] = ("cpu", "gpu", "offloaded")
BACKENDS: tuple[str, ...] = ("torch", "triton")
OFFLOADS: tuple[str, ...] = ("staged", "direct")
PLANNERS: tuple[str, ...] = ("torch", "triton", "fused")
MASK_FEEDS: tuple[str, ...] = ("copy", "ring")
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


class PairedWeightCache:
    """The active neurons' MLP weights, contiguous, updated by paired replacement.

    Parameters
    ----------
    gate, up: [N, H] (``gate`` may be None for a non-gated MLP); down: [H, N]; one dtype
        out of fp32/fp16/bf16, on one device.
    capacity: the most neurons ever active at once (buffer rows).
    placement: ``"cpu"`` (pool and buffer in host memory), ``"gpu"`` (both on the GPU) or
        ``"offloaded"`` (pool in pinned host memory, buffer on ``device``; only the added
        rows cross PCIe, asynchronously). Default: where the weights are.
    backend: ``"torch"`` or ``"triton"`` (one-launch kernel); default triton when the
        buffer is on CUDA, else torch.
    rebuild_tau: hybrid policy: when max(added, removed) > tau * new size, rebuild the
        buffer from scratch instead (the maps are rebuilt too, so the cache stays exact).
    device: the buffer's device for ``"offloaded"`` (default ``"cuda"``).
    offload: how pool rows reach the GPU when offloaded: ``"staged"`` gathers them on the
        host into a pinned staging block and sends it in one asynchronous copy;
        ``"direct"`` (triton backend) lets the move kernel read the pinned pool itself
        through unified addressing, so the rows cross PCIe once with no host gather
        (default when the buffer is on CUDA and the backend is triton).
    planner: ``"torch"`` (fixed-shape torch ops on the GPU, numpy on the host),
        ``"triton"`` (``kernels.weight_cache.plan_and_commit``: the whole plan and the map
        updates in one single-program launch, then the move launch) or ``"fused"``
        (``kernels.weight_cache.plan_and_move``: plan, moves and map commit in ONE
        multi-program launch; the counts come back through pinned host memory; default for
        the gpu placement with the triton backend). Offloaded: ``"torch"`` (the host plans
        on host maps) or ``"fused"`` (the host only counts; one launch plans on GPU maps and
        reads the mask and the added rows from pinned host memory; needs ``offload="direct"``;
        default when the buffer is on CUDA, the backend triton and offload direct).
    mask_feed: how the fused update's CUDA graph (gpu placement) gets each call's mask:
        ``"copy"`` (default: a device copy into the graph's static input, then the replay)
        or ``"ring"`` (planner fused, gpu placement: the host writes the mask's address into
        a ring in pinned host memory that the launch reads; one replay, no copy; measured
        faster on the H100, see docs/weight_cache.md).
    """

    def __init__(
        self,
        gate: torch.Tensor | None,
        up: torch.Tensor,
        down: torch.Tensor,
        capacity: int,
        *,
        placement: str | None = None,
        backend: str | None = None,
        rebuild_tau: float | None = None,
        device: str | torch.device | None = None,
        offload: str | None = None,
        planner: str | None = None,
        mask_feed: str | None = None,
    ) -> None:
        if up.dim() != 2:
            raise ValueError(f"up must be [N, H], got shape {tuple(up.shape)}")
        n, h = up.shape
        if gate is not None and tuple(gate.shape) != (n, h):
            raise ValueError(f"gate must be [N, H] = {(n, h)} like up, got {tuple(gate.shape)}")
        if tuple(down.shape) != (h, n):
            raise ValueError(f"down must be [H, N] = {(h, n)}, got {tuple(down.shape)}")
        mats = [t for t in (gate, up, down) if t is not None]
        if up.dtype not in DTYPES or any(t.dtype != up.dtype for t in mats):
            raise TypeError(f"weights must share one dtype out of {DTYPES}, got {[t.dtype for t in mats]}")
        if any(t.device != up.device for t in mats):
            raise ValueError(f"weights must be on one device, got {[str(t.device) for t in mats]}")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= n:
            raise ValueError(f"capacity must be an int in [1, N={n}], got {capacity!r}")
        placement = placement or ("gpu" if up.is_cuda else "cpu")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if rebuild_tau is not None and not rebuild_tau >= 0:
            raise ValueError(f"rebuild_tau must be None or >= 0, got {rebuild_tau!r}")
        if placement == "cpu":
            pool_dev = buf_dev = torch.device("cpu")
        elif placement == "gpu":
            buf_dev = up.device if up.is_cuda else torch.device(device or "cuda")
            pool_dev = buf_dev
        else:
            buf_dev = torch.device(device or "cuda")
            pool_dev = torch.device("cpu")
        backend = backend or ("triton" if buf_dev.type == "cuda" or planner == "fused" else "torch")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        gpu_triton = backend == "triton" and buf_dev.type == "cuda"  # the fast paths need a GPU and Triton
        fused_ok = placement == "gpu" or (placement == "offloaded" and offload in (None, "direct"))
        planner = planner or ("fused" if gpu_triton and fused_ok else "torch")
        offload = offload or ("direct" if gpu_triton or planner == "fused" else "staged")
        if planner not in PLANNERS:
            raise ValueError(f"planner must be one of {PLANNERS}, got {planner!r}")
        if placement == "offloaded" and planner == "triton":
            raise ValueError("planner='triton' is not offered offloaded: use 'torch' (host plan) or 'fused' (one launch)")
        if placement == "offloaded" and planner == "fused" and offload != "direct":
            raise ValueError("an offloaded cache with planner='fused' reads the pool rows in its launch: it needs "
                             f"offload='direct', got offload={offload!r}")
        if planner == "fused" and backend != "triton":
            raise ValueError("planner='fused' moves the rows in its own Triton launch: it needs backend='triton'")
        if offload not in OFFLOADS:
            raise ValueError(f"offload must be one of {OFFLOADS}, got {offload!r}")
        mask_feed = mask_feed or "copy"
        if mask_feed not in MASK_FEEDS:
            raise ValueError(f"mask_feed must be one of {MASK_FEEDS}, got {mask_feed!r}")
        if mask_feed == "ring" and (planner != "fused" or placement != "gpu"):
            raise ValueError(f"mask_feed='ring' feeds the fused update's graph: it needs planner='fused' and placement "
                             f"'gpu', got planner={planner!r}, placement={placement!r}")
        if offload == "direct" and placement == "offloaded" and backend != "triton":
            raise ValueError("offload='direct' needs backend='triton' (the kernel reads the pinned pool)")

        self.n_neurons, self.hidden, self.capacity = n, h, capacity
        self.placement, self.backend, self.rebuild_tau, self.offload = placement, backend, rebuild_tau, offload
        self.mask_feed = mask_feed
        self.gated = gate is not None
        parts = [t.to(pool_dev) for t in mats[:-1]] + [down.to(pool_dev).t()]
        pool = torch.cat(parts, dim=1).contiguous()  # [N, R]: [gate_i | up_i | down_i^T]
        pin = placement == "offloaded" and torch.cuda.is_available()
        self.pool = pool.pin_memory() if pin else pool
        self.row_len = pool.shape[1]
        self.row_bytes = self.row_len * pool.element_size()
        self.buffer = torch.zeros(capacity, self.row_len, dtype=pool.dtype, device=buf_dev)  # [cap, R]
        # the planner runs where the pool is (host for offloaded), except the fused planner (the buffer's device)
        map_dev = buf_dev if planner == "fused" else pool_dev
        self._s2n = torch.full((capacity,), -1, dtype=torch.int32, device=map_dev)
        self._n2s = torch.full((n,), -1, dtype=torch.int32, device=map_dev)
        self._m = 0
        self.planner = planner
        self._mask_at = torch.device("cpu") if placement == "offloaded" else map_dev  # offloaded: counts on the host
        # cpu placement, torch backend and planner: the update runs on numpy views of the maps
        # and of the rows (one void item per bundled row, so a fancy copy moves whole rows)
        self._host = placement == "cpu" and backend == "torch" and planner == "torch"
        if self._host or placement == "offloaded":  # plan committed in place on numpy views of the maps
            if map_dev.type == "cpu":
                self._s2n_np, self._n2s_np = self._s2n.numpy(), self._n2s.numpy()
            self._absent = np.ones(n, dtype=bool)  # [N] ~(cached mask): added = new & absent, one byte a neuron
        if self._host:
            self._pool_rows, self._buf_rows = row_items(self.pool), row_items(self.buffer)
        if planner == "triton":
            z = lambda k: torch.zeros(k, dtype=torch.int32, device=map_dev)  # noqa: E731
            self._fused = {"dst": z(capacity), "src": z(capacity), "moved": z(capacity), "counts": z(2), "stats": z(4)}
        if planner == "fused":
            from kernels.weight_cache import fused_scratch

            self._scratch = fused_scratch(n, capacity, buf_dev)  # move lists, chunk counts, barrier state
            self._stats = torch.zeros(4, dtype=torch.int32, device=buf_dev)
            self._moves = self._stats[2]  # 0-d view: rows written by the last launch (update_async)
            # the launch also writes its counts to pinned host memory: update() reads them after a
            # stream sync, with no device-to-host copy to launch
            self._hstats = torch.zeros(4, dtype=torch.int32).pin_memory() if buf_dev.type == "cuda" else None
            self._graph: torch.cuda.CUDAGraph | None = None  # the launch, captured on first use
            self._calls = 0  # graph launches that read the mask-address ring (mask_feed='ring')
        self.rows_written = 0  # total over the cache's life
        self.last: dict[str, int] = {"added": 0, "removed": 0, "written": 0, "size": 0, "rebuilt": 0}
        if placement == "offloaded":
            # two of everything the host writes (packed plans, staging blocks), used in turn, each
            # guarded by an event until the copy or kernel that reads it has run: the host plans
            # update t+1 while the GPU still moves the rows of update t
            cuda = buf_dev.type == "cuda"
            self._plan_h = [torch.zeros(2 * capacity + 2, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
            self._plan_np = [t.numpy() for t in self._plan_h]
            self._events = [torch.cuda.Event() for _ in range(2)] if cuda else None
            self._turn = 0
            if offload == "direct" and cuda and backend == "triton":
                # per turn: the packed plan's device twin and a graph of (plan copy, move kernel)
                self._plan_dev = [torch.empty(2 * capacity + 2, dtype=torch.int32, device=buf_dev) for _ in range(2)]
                self._direct_graphs: list[torch.cuda.CUDAGraph | None] = [None, None]
            if planner == "fused":
                # per turn: the mask in pinned host memory and a graph of the fused launch that reads it
                self._mask_h = [torch.zeros(n, dtype=torch.bool, pin_memory=pin) for _ in range(2)]
                self._mask_hnp = [t.numpy() for t in self._mask_h]
                self._mask_d = torch.zeros(n, dtype=torch.bool, device=buf_dev)  # the launch's device copy
                self._added = np.zeros(n, dtype=bool)  # [N] scratch: new & absent (the counts, on the host)
                self._off_graphs: list[torch.cuda.CUDAGraph | None] = [None, None]
            if offload == "staged":
                self._stage_h = [torch.empty(capacity, self.row_len, dtype=pool.dtype, pin_memory=pin)
                                 for _ in range(2)]
                self._stage_d = torch.empty(capacity, self.row_len, dtype=pool.dtype, device=buf_dev)
                self._plan_d = torch.empty(2 * capacity + 2, dtype=torch.int32, device=buf_dev)

    # -- views -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._m

    @property
    def active(self) -> torch.Tensor:
        """int64 [n]: the active neuron ids, in slot order (row i of the views is neuron active[i])."""
        return self._s2n[: self._m].long()

    @property
    def slot_to_neuron(self) -> torch.Tensor:
        """int32 [capacity]: the neuron in each slot, -1 when empty."""
        return self._s2n

    @property
    def neuron_to_slot(self) -> torch.Tensor:
        """int32 [N]: each neuron's slot, -1 when not cached."""
        return self._n2s

    def _cols(self, k: int) -> torch.Tensor:
        return self.buffer[: self._m, k * self.hidden : (k + 1) * self.hidden]

    @property
    def gate(self) -> torch.Tensor | None:
        """[n, H] view of the buffer (row stride R): no copy."""
        return self._cols(0) if self.gated else None

    @property
    def up(self) -> torch.Tensor:
        """[n, H] view of the buffer (row stride R): no copy."""
        return self._cols(1 if self.gated else 0)

    @property
    def down(self) -> torch.Tensor:
        """[H, n] transposed view of the buffer (column stride R): no copy."""
        return self._cols(2 if self.gated else 1).t()

    # -- updates -----------------------------------------------------------------------
    def _check_mask(self, mask: torch.Tensor) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a bool tensor of shape [{self.n_neurons}], got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
        if mask.dim() != 1 or mask.numel() != self.n_neurons:
            raise ValueError(f"mask must have shape [{self.n_neurons}] (N neurons), got {tuple(mask.shape)}")
        return mask.to(self._mask_at).contiguous()  # the kernels read the mask as N consecutive bytes

    def update(self, mask: torch.Tensor) -> int:
        """Make the cache hold exactly the neurons of ``mask`` (bool [N]); returns rows written.

        Reads the plan's counts once on the host (for the new size and the capacity check).
        """
        new = self._check_mask(mask)
        if self._host:
            return self._update_host(new.numpy())
        if self.placement == "offloaded":
            if self.planner == "fused":
                return self._update_offloaded_fused(new.numpy())
            return self._update_offloaded(new.numpy())
        if self.planner == "fused":
            return self._update_fused(new)
        fused = self._fused_plan(new)  # triton planner: maps already committed (unless overflow)
        if fused is not None:
            plan = fused
        elif self._s2n.is_cuda:
            plan = plan_moves(new, self._n2s, self._s2n)
        else:
            plan = plan_moves_host(new, self._n2s, self._s2n, self._m)
        added, removed, n_moves, m_new = plan.stats.tolist()
        if m_new > self.capacity:
            raise ValueError(f"mask has {m_new} active neurons, more than the cache capacity {self.capacity}")
        rebuilt = self.rebuild_tau is not None and max(added, removed) > self.rebuild_tau * m_new
        if rebuilt:
            plan = plan_rebuild(new, self.capacity)
            n_pool = n_moves = m_new
        else:
            n_pool = added
        self._apply(plan, n_pool, n_moves, rebuilt)
        if fused is None or rebuilt:
            self._s2n.copy_(plan.s2n)
            self._n2s.copy_(plan.n2s)
        self._m = m_new
        self.rows_written += n_moves
        self.last = {"added": added, "removed": removed, "written": n_moves, "size": m_new, "rebuilt": int(rebuilt)}
        return n_moves

    def _commit_host(self, new: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The host plan committed in place on the numpy map views (cpu and offloaded
        placements; :func:`commit_host_plan`); returns (dst, from_pool, climb)."""
        dst, from_pool, climb, last = commit_host_plan(new, self._s2n_np, self._n2s_np, self._absent, self._m,
                                                       self.rebuild_tau)
        self._m = last["size"]
        self.rows_written += last["written"]
        self.last = last
        return dst, from_pool, climb

    def _update_host(self, new: np.ndarray) -> int:
        """The CPU update: the host plan committed in place, then the rows copied straight from
        the pool into the buffer, one numpy fancy copy of whole-row items per move kind (a
        rebuild: one index_select). The fixed cost per update is tens of microseconds."""
        dst, from_pool, climb = self._commit_host(new)
        n_pool = from_pool.shape[0]
        if self.last["rebuilt"]:
            torch.index_select(self.pool, 0, torch.from_numpy(from_pool), out=self.buffer[:n_pool])
            return n_pool
        if n_pool:  # pool rows straight into their slots (the fancy read stages them once)
            self._buf_rows[dst[:n_pool]] = self._pool_rows[from_pool]
        if climb.shape[0]:
            self._buf_rows[dst[n_pool:]] = self._buf_rows[climb]
        return dst.shape[0]

    def _update_offloaded(self, new: np.ndarray) -> int:
        """The offloaded update: the host plan, packed into a pinned block, then ONE kernel.

        ``direct``: the move kernel reads the packed plan and the added pool rows from pinned
        host memory itself (unified addressing), so only the moved rows cross PCIe, in one
        launch, with no host gather, staging copy or host sync. ``staged``: the added rows
        are gathered on the host into a pinned staging block and sent with the plan in two
        asynchronous copies before the kernel.
        """
        dst, from_pool, climb = self._commit_host(new)
        w, n_pool, cap = dst.shape[0], from_pool.shape[0], self.capacity
        if w == 0:
            return 0
        k = self._turn = 1 - self._turn
        if self._events is not None:
            self._events[k].synchronize()  # the kernel or copies that read these pinned blocks ran
        plan = self._plan_np[k]  # [counts(2) | dst(cap) | src(cap)]
        plan[0], plan[1] = n_pool, w
        plan[2 : 2 + w] = dst
        plan[2 + cap : 2 + cap + n_pool] = from_pool
        plan[2 + cap + n_pool : 2 + cap + w] = climb
        ph = self._plan_h[k]
        if self.offload == "direct" and self._events is not None and self.backend == "triton":
            self._direct_moves(k)
        elif self.offload == "direct":
            apply_packed(self.buffer, self.pool, ph, cap, w, staged=False, backend=self.backend)
        else:
            stage = self._stage_h[k]
            if n_pool:
                torch.index_select(self.pool, 0, torch.from_numpy(from_pool), out=stage[:n_pool])
            self._plan_d.copy_(ph, non_blocking=True)
            self._stage_d[:n_pool].copy_(stage[:n_pool], non_blocking=True)
            apply_packed(self.buffer, self._stage_d, self._plan_d, cap, w, staged=True, backend=self.backend)
        if self._events is not None:
            self._events[k].record()
        return w

    def _update_offloaded_fused(self, new: np.ndarray) -> int:
        """Offloaded, planner='fused': the host only counts (added, new size: three numpy calls
        on the mask and the absent mask it keeps), then ONE launch plans on the GPU maps, reads
        the added rows from the pinned pool and commits the maps; no host plan, no host sync
        unless the set shrinks (then the rows written are read back after a stream sync)."""
        np.logical_and(new, self._absent, out=self._added)
        n_add, m_new, size = int(np.count_nonzero(self._added)), int(np.count_nonzero(new)), self._m
        removed = size + n_add - m_new
        if m_new > self.capacity:
            raise ValueError(f"mask has {m_new} active neurons, more than the cache capacity {self.capacity}")
        rebuilt = self.rebuild_tau is not None and max(n_add, removed) > self.rebuild_tau * m_new
        k = self._turn = 1 - self._turn
        if self._events is not None:
            self._events[k].synchronize()  # the copy or kernel that read the pinned blocks of turn k ran
        if rebuilt:  # every active neuron, in id order, into slots 0..m'-1, maps rebuilt
            ids = np.flatnonzero(new).astype(np.int32)  # [m']
            plan = self._plan_np[k]  # [counts(2) | dst(cap) | src(cap)]
            plan[0] = plan[1] = m_new
            plan[2 : 2 + m_new] = np.arange(m_new, dtype=np.int32)
            plan[2 + self.capacity : 2 + self.capacity + m_new] = ids
            apply_packed(self.buffer, self.pool, self._plan_h[k], self.capacity, m_new, staged=False,
                          backend="triton")
            s2n = torch.full((self.capacity,), -1, dtype=torch.int32)
            s2n[:m_new] = torch.from_numpy(ids)
            n2s = torch.full((self.n_neurons,), -1, dtype=torch.int32)
            n2s[torch.from_numpy(ids).long()] = torch.arange(m_new, dtype=torch.int32)
            self._s2n.copy_(s2n)
            self._n2s.copy_(n2s)
            written = m_new
        else:
            np.copyto(self._mask_hnp[k], new)
            self._offloaded_launch(k)
            written = n_add
            if m_new < size:  # shrink: stayers of the vacated tail move too; the launch counted them
                written = self._read_stats()[2]
        if self._events is not None:
            self._events[k].record()
        np.logical_not(new, out=self._absent)
        self._m = m_new
        self.rows_written += written
        self.last = {"added": n_add, "removed": removed, "written": written, "size": m_new, "rebuilt": int(rebuilt)}
        return written

    def _read_stats(self) -> list[int]:
        """(added, removed, moves, new size) of the last fused launch, after a stream sync."""
        if self._hstats is not None:
            torch.cuda.current_stream(self.buffer.device).synchronize()
            return self._hstats.tolist()
        return self._stats.tolist()

    def _offloaded_launch(self, k: int) -> None:
        """The fused launch over the GPU maps, reading mask block k and the added pool rows from
        pinned host memory (each program reads its chunk of the mask once and copies it to the
        device for the slot scan: no separate mask copy); replayed from graph k, captured on
        first use (CUDA only)."""
        from kernels.weight_cache import plan_and_move

        def launch() -> None:
            plan_and_move(self._mask_h[k], self._n2s, self._s2n, self.buffer, self.pool, self._scratch, self._stats,
                          self._hstats, mask_out=self._mask_d)

        if not self.buffer.is_cuda or torch.cuda.is_current_stream_capturing():
            launch()
            return
        graph = self._off_graphs[k]
        if graph is not None:
            graph.replay()
            return
        launch()  # compiles the kernel on first use; the graph serves the next calls
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            launch()
        self._off_graphs[k] = graph

    def _launch_fused(self, new: torch.Tensor) -> None:
        """The one-launch update, replayed from a CUDA graph captured on first use.

        A Triton launch costs tens of microseconds of Python on the host (argument binding
        and specialisation), many times the kernel; a graph replay of the same launch a few.
        ``mask_feed="copy"``: the graph reads the mask from a static input the call copies it
        into. ``"ring"``: the host writes the mask's address into the ring slot of this call
        (pinned host memory) and the launch reads it there (its device counter names the
        slot): one replay and no copy per call; every half ring the host waits for the
        launch of half a ring ago, so it never overwrites a slot a queued launch has yet to
        read. Launched directly where no graph can be (CPU, or inside a capture the caller
        is recording).
        """
        from kernels.weight_cache import mask_ring, plan_and_move

        args = (self._n2s, self._s2n, self.buffer, self.pool, self._scratch, self._stats, self._hstats)
        if not self.buffer.is_cuda or torch.cuda.is_current_stream_capturing():
            plan_and_move(new, *args)
            return
        if self.mask_feed == "copy":
            if self._graph is None:
                plan_and_move(new, *args)  # compiles the kernel; the graph serves the next calls
                self._mask_in = torch.zeros_like(new)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    plan_and_move(self._mask_in, *args)
                self._graph = graph
                return
            self._mask_in.copy_(new)
            self._graph.replay()
            return
        if self._graph is None:
            self._ring = mask_ring(self.n_neurons, self.capacity, self.buffer.device)  # [slots, programs, 16], ctr
            self._ring_np = self._ring[0].numpy()
            self._ring_event = torch.cuda.Event()
        slots = self._ring_np.shape[0]
        self._ring_np[self._calls % slots, :, 0] = new.data_ptr()
        if self._graph is not None:
            self._graph.replay()
        else:
            plan_and_move(new, *args, ring=self._ring)  # compiles the kernel and runs this update
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                plan_and_move(new, *args, ring=self._ring)  # recorded, not run: each replay reads the ring
            self._graph = graph
        self._calls += 1
        if self._calls % (slots // 2) == 0:  # every launch up to half a ring ago has read its slot
            self._ring_event.synchronize()
            self._ring_event.record()

    def _direct_moves(self, k: int) -> None:
        """Direct offload on a GPU: copy packed plan k to the device, then one move kernel over a
        fixed grid (its counts read on the device) that reads the added rows from the pinned
        pool through unified addressing; both replayed from a graph captured on first use (a
        Triton launch costs tens of microseconds of host time, a replay a few)."""
        from kernels.weight_cache import apply_moves

        pd, cap = self._plan_dev[k], self.capacity

        def moves() -> None:
            pd.copy_(self._plan_h[k], non_blocking=True)
            apply_moves(self.buffer, self.pool, pd[2 : 2 + cap], pd[2 + cap :], pd[:2])

        graph = self._direct_graphs[k]
        if graph is not None and not torch.cuda.is_current_stream_capturing():
            graph.replay()
            return
        moves()  # compiles the kernel on first use; the graph serves the next calls
        if graph is None and not torch.cuda.is_current_stream_capturing():
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                moves()
            self._direct_graphs[k] = graph

    def _update_fused(self, new: torch.Tensor) -> int:
        """planner='fused': one launch plans, moves and commits; one stream sync reads the counts."""
        self._launch_fused(new)
        added, removed, n_moves, m_new = self._read_stats()
        if m_new > self.capacity:  # the kernel changed nothing
            raise ValueError(f"mask has {m_new} active neurons, more than the cache capacity {self.capacity}")
        rebuilt = self.rebuild_tau is not None and max(added, removed) > self.rebuild_tau * m_new
        if rebuilt:  # the paired moves ran already; the rebuild overwrites them and the maps
            plan = plan_rebuild(new, self.capacity)
            torch.index_select(self.pool, 0, plan.src[:m_new].long(), out=self.buffer[:m_new])
            self._s2n.copy_(plan.s2n)
            self._n2s.copy_(plan.n2s)
            n_moves = m_new
        self._m = m_new
        self.rows_written += n_moves
        self.last = {"added": added, "removed": removed, "written": n_moves, "size": m_new, "rebuilt": int(rebuilt)}
        return n_moves

    def update_async(self, mask: torch.Tensor) -> torch.Tensor:
        """Paired update with no host sync (GPU placement, triton backend); returns rows written as a device tensor.

        The active count must not change (``mask.sum() == len(cache)``, e.g. fixed top-k
        masks): the views keep their size. Under that condition the call is capturable in
        a CUDA graph (static ``mask`` input, in-place state).
        """
        if self.placement != "gpu" or self.backend != "triton":
            raise ValueError(f"update_async needs placement 'gpu' and backend 'triton', got {self.placement!r}/{self.backend!r}")
        new = self._check_mask(mask)
        if self.planner == "fused":
            self._launch_fused(new)
            return self._moves  # a view of the launch's counts
        fused = self._fused_plan(new)
        plan = fused if fused is not None else plan_moves(new, self._n2s, self._s2n)
        apply_plan_triton(self.buffer, self.pool, plan, None, staged=False)
        if fused is None:
            self._s2n.copy_(plan.s2n)
            self._n2s.copy_(plan.n2s)
        return plan.stats[2]

    def _fused_plan(self, new: torch.Tensor) -> MovePlan | None:
        """planner='triton': plan AND commit the maps in one launch; None for the other planners."""
        if self.planner != "triton":
            return None
        from kernels.weight_cache import plan_and_commit

        t = self._fused  # dst, src, moved [cap]; counts [2]; stats [4]: fixed addresses for graphs
        plan_and_commit(new, self._n2s, self._s2n, t["dst"], t["src"], t["moved"], t["counts"], t["stats"])
        return MovePlan(t["dst"], t["src"], t["counts"], t["stats"], self._s2n, self._n2s)

    def _apply(self, plan: MovePlan, n_pool: int, n_moves: int, rebuilt: bool = False) -> None:
        if n_moves == 0:
            return
        if rebuilt and self.backend == "torch":
            # a rebuild writes slots 0..m'-1 in order: one index_select straight into the buffer
            torch.index_select(self.pool, 0, plan.src[:n_moves].long(), out=self.buffer[:n_moves])
        elif self.backend == "triton":
            apply_plan_triton(self.buffer, self.pool, plan, n_moves, staged=False)
        else:
            apply_moves_torch(self.buffer, self.pool, plan.dst, plan.src, n_pool, n_moves)

    def check(self) -> None:
        """Raise ValueError if the buffer or the maps disagree with the pool (tests, debugging)."""
        act = self.active
        if not torch.equal(self.buffer[: self._m].cpu(), self.pool.index_select(0, act.to(self.pool.device)).cpu()):
            raise ValueError("weight cache buffer differs from pool[active]")
        n2s = self._n2s.long().cpu()
        if not torch.equal(n2s[act.cpu()], torch.arange(self._m)) or int((n2s >= 0).sum()) != self._m:
            raise ValueError("neuron->slot map disagrees with slot->neuron map")
        if bool((self._s2n[self._m :] >= 0).any()):
            raise ValueError("slots past the active size are not empty")
        if self.planner == "fused":
            from kernels.weight_cache import barrier_timeouts

            if barrier_timeouts(self._scratch):
                raise ValueError("fused update: a grid barrier gave up (its programs were not resident together)")
