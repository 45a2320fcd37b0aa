"""PairedWeightCache: exact consistency over long mask sequences, write bounds, planners, views, errors."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import profile

from ecc_kv.sparse_mlp import (
    drifting_topk_masks,
    masked_mlp_reference,
    mlp_forward,
    random_walk_masks,
    union_masks,
)
from ecc_kv.weight_cache import PairedWeightCache, plan_moves, plan_moves_host, plan_rebuild

N, H = 96, 12
# dtype -> (atol, rtol) of the cached MLP against the float32 masked reference
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-2, 2e-2), torch.bfloat16: (1e-1, 5e-2)}


def _weights(gated: bool, dtype: torch.dtype = torch.float32, device: str = "cpu", n: int = N, h: int = H):
    g = torch.Generator().manual_seed(7)
    mk = lambda *s: (torch.randn(*s, generator=g) / h**0.5).to(device=device, dtype=dtype)  # noqa: E731
    return (mk(n, h) if gated else None), mk(n, h), mk(h, n)


def _sequences() -> dict[str, torch.Tensor]:
    """Mask sequences [T, N] covering the regimes the issue lists."""
    gen = torch.Generator().manual_seed(3)
    sizes = torch.randint(0, 41, (40,), generator=gen)
    rand = torch.zeros(40, N, dtype=torch.bool)
    for t, s in enumerate(sizes.tolist()):
        rand[t, torch.randperm(N, generator=gen)[:s]] = True
    empty_full = torch.zeros(6, N, dtype=torch.bool)
    empty_full[1:3, :40] = True
    empty_full[4, 50:90] = True
    disjoint = torch.zeros(8, N, dtype=torch.bool)  # 100% churn every step
    for t in range(8):
        disjoint[t, (t % 2) * 40 : (t % 2) * 40 + 40] = True
    per_token = torch.rand(64, N, generator=gen).topk(8, dim=-1).indices
    pt = torch.zeros(64, N, dtype=torch.bool).scatter_(1, per_token, True)
    return {
        "random_walk": random_walk_masks(N, 30, 4, 60, seed=1),
        "random_walk_frac": random_walk_masks(N, 40, 0.25, 30, seed=2),
        "fixed_topk": drifting_topk_masks(N, 24, 60, drift=0.3, seed=4),
        "union_batch4": union_masks(pt, 4),
        "random_sizes": rand,
        "empty_full": empty_full,
        "full_churn": disjoint,
    }


SEQS = _sequences()


def _run_sequence(cache: PairedWeightCache, masks: torch.Tensor, x: torch.Tensor, weights, tol) -> None:
    gate, up, down = weights
    for t, mask in enumerate(masks):
        old = cache.neuron_to_slot.cpu() >= 0
        a, r = int((mask & ~old).sum()), int((old & ~mask).sum())
        written = cache.update(mask.to(cache.neuron_to_slot.device))
        cache.check()  # buffer == pool[active], maps consistent, tail empty
        bound = cache.last["size"] if cache.last["rebuilt"] else max(a, r)  # a hybrid rebuild writes all m'
        assert written <= bound, f"step {t}: wrote {written} rows, A={a}, R={r}, last={cache.last}"
        assert sorted(cache.active.tolist()) == mask.nonzero().squeeze(1).tolist(), f"step {t}"
        y = mlp_forward(x, cache.gate, cache.up, cache.down).float()
        ref = masked_mlp_reference(x, gate, up, down, mask)
        torch.testing.assert_close(y, ref, atol=tol[0], rtol=tol[1], msg=lambda m, t=t: f"step {t}: {m}")


@pytest.mark.parametrize("seq", list(SEQS))
@pytest.mark.parametrize("gated", [True, False])
def test_sequences_cpu(seq: str, gated: bool) -> None:
    w = _weights(gated)
    x = torch.randn(3, H, generator=torch.Generator().manual_seed(0))
    cache = PairedWeightCache(*w, capacity=48 if seq != "empty_full" else N)
    masks = SEQS[seq]
    if seq == "empty_full":
        masks = masks.clone()
        masks[3] = True  # the full set
    _run_sequence(cache, masks, x, w, TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype: torch.dtype, device: str) -> None:
    w = _weights(True, dtype, device)
    x = torch.randn(2, H, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    cache = PairedWeightCache(*w, capacity=48)
    assert cache.buffer.dtype == dtype and cache.row_bytes == 3 * H * dtype.itemsize
    _run_sequence(cache, SEQS["random_walk"][:20], x, w, TOL[dtype])


def test_triton_matches_torch(device: str) -> None:
    """Same sequence through both backends: the buffers agree bit for bit after every step."""
    w = _weights(True, device=device, n=40, h=5)  # row length 15: not a multiple of any block
    a = PairedWeightCache(*w, capacity=20, backend="torch")
    b = PairedWeightCache(*w, capacity=20, backend="triton")
    c = PairedWeightCache(*w, capacity=20, backend="triton", planner="triton", rebuild_tau=0.6)
    d = PairedWeightCache(*w, capacity=20, planner="fused")  # one launch: plan, moves, maps
    masks = torch.cat([random_walk_masks(40, 12, 3, 6, seed=5), drifting_topk_masks(40, 18, 4, seed=6)])
    masks[3] = False
    for mask in masks.to(device):
        assert a.update(mask) == b.update(mask)
        assert torch.equal(a.buffer[: len(a)], b.buffer[: len(b)])
        assert torch.equal(a.active, b.active)
        b.check()
        c.update(mask)  # fused planner (+ hybrid rebuilds on the big jumps)
        c.check()
        assert d.update(mask) == b.last["written"]  # the same plan, so the same slots
        assert torch.equal(d.buffer[: len(d)], b.buffer[: len(b)]) and torch.equal(d.active, b.active)
        d.check()
        if not c.last["rebuilt"]:
            assert c.last["written"] <= max(c.last["added"], c.last["removed"])
    over = torch.ones(40, dtype=torch.bool, device=device)
    before = c.slot_to_neuron.clone()
    with pytest.raises(ValueError, match="more than the cache capacity 20"):
        c.update(over)
    assert torch.equal(c.slot_to_neuron, before)  # the fused planner left the maps alone
    before, rows = d.slot_to_neuron.clone(), d.buffer.clone()
    with pytest.raises(ValueError, match="more than the cache capacity 20"):
        d.update(over)
    assert torch.equal(d.slot_to_neuron, before) and torch.equal(d.buffer, rows)
    with pytest.raises(ValueError, match="backend='triton'"):
        PairedWeightCache(*w, capacity=20, planner="fused", backend="torch")


def test_planners_agree() -> None:
    """The fixed-shape (GPU, graph-capturable) planner and the host planner make the same plan."""
    cache = PairedWeightCache(*_weights(True), capacity=48)
    for seq in ("random_walk", "union_batch4", "random_sizes", "full_churn"):
        for mask in SEQS[seq]:
            s2n, n2s, m = cache.slot_to_neuron.clone(), cache.neuron_to_slot.clone(), len(cache)
            p, q = plan_moves(mask, n2s, s2n), plan_moves_host(mask, n2s, s2n, m)
            assert p.stats.tolist() == q.stats.tolist()
            w = int(p.stats[2])
            assert p.counts.tolist() == q.counts.tolist() == [int(p.stats[0]), w]
            assert torch.equal(p.dst[:w], q.dst[:w]) and torch.equal(p.src[:w], q.src[:w])
            assert torch.equal(p.s2n, q.s2n) and torch.equal(p.n2s, q.n2s)
            # independence: destinations below the new size; buffer sources in the vacated tail
            m_new, n_pool = int(p.stats[3]), int(p.stats[0])
            assert bool((p.dst[:w] < m_new).all()) and bool((p.src[n_pool:w] >= m_new).all())
            assert len(set(p.dst[:w].tolist())) == w
            cache.update(mask)


@pytest.mark.parametrize("tau", [None, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_update_follows_the_host_plan(tau: float | None, dtype: torch.dtype) -> None:
    """The CPU fast path (numpy maps committed in place, rows copied straight from the pool)
    lands every neuron in the slot that plan_moves_host / plan_rebuild gives it, and writes
    exactly the planned rows, so every placement and backend ends in the same layout."""
    w = _weights(True, dtype)
    cache = PairedWeightCache(*w, capacity=N, rebuild_tau=tau)
    masks = torch.cat([SEQS[s] for s in ("random_walk", "empty_full", "union_batch4", "random_sizes", "full_churn")])
    n_rebuilt = 0
    for t, mask in enumerate(masks):
        s2n, n2s, m = cache.slot_to_neuron.clone(), cache.neuron_to_slot.clone(), len(cache)
        plan = plan_moves_host(mask, n2s, s2n, m)
        added, removed, n_moves, m_new = plan.stats.tolist()
        rebuilt = tau is not None and max(added, removed) > tau * m_new
        if rebuilt:
            plan = plan_rebuild(mask, N)
            n_rebuilt += 1
        written = cache.update(mask)
        assert written == (m_new if rebuilt else n_moves), f"step {t}"
        assert cache.last == {"added": added, "removed": removed, "written": written, "size": m_new,
                              "rebuilt": int(rebuilt)}, f"step {t}"
        assert torch.equal(cache.slot_to_neuron, plan.s2n), f"step {t}"
        assert torch.equal(cache.neuron_to_slot, plan.n2s), f"step {t}"
        cache.check()
    assert (n_rebuilt > 0) == (tau is not None)


def test_fewer_writes_when_removed_rows_sit_in_the_tail() -> None:
    cache = PairedWeightCache(*_weights(True), capacity=48)
    mask = torch.zeros(N, dtype=torch.bool)
    mask[:20] = True
    cache.update(mask)
    tail = cache.active[-5:]
    new = mask.clone()
    new[tail] = False  # R = 5 removed, all in the tail being vacated
    new[60] = True  # A = 1
    assert cache.update(new) == 1  # only the added row moves
    cache.check()


def test_hybrid_rebuild_keeps_cache_exact() -> None:
    w = _weights(True)
    x = torch.randn(2, H)
    cache = PairedWeightCache(*w, capacity=48, rebuild_tau=0.5)
    masks = SEQS["full_churn"]
    _run_sequence(cache, masks, x, w, TOL[torch.float32])
    assert cache.last["rebuilt"] == 1 and cache.last["written"] == 40
    small = masks[-1].clone()
    small[int(cache.active[-1])] = False  # churn 1 < tau * m: paired again; the last slot just empties
    assert cache.update(small) == 0 and cache.last["rebuilt"] == 0
    cache.check()
    plan = plan_rebuild(masks[0], 48)
    assert plan.stats.tolist() == [40, 0, 40, 40]


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton on CPU tensors needs the interpreter, which is off on a GPU machine")
def test_offloaded_logic_on_host() -> None:
    """The offloaded path (host staging, packed plan, staged moves; the fused launch with host
    counts) with the buffer on the CPU."""
    w = _weights(True)
    x = torch.randn(2, H)
    for backend, offload, planner in (("torch", "staged", "torch"), ("triton", "staged", "torch"),
                                      ("triton", "direct", "torch"), ("triton", "direct", "fused")):
        cache = PairedWeightCache(*w, capacity=48, placement="offloaded", device="cpu", backend=backend,
                                  offload=offload, planner=planner)
        _run_sequence(cache, SEQS["union_batch4"][:8], x, w, TOL[torch.float32])
    with pytest.raises(ValueError, match="direct"):
        PairedWeightCache(*w, capacity=4, placement="offloaded", device="cpu", backend="torch", offload="direct")


@pytest.mark.parametrize("planner", ["torch", "fused"])
def test_strided_mask_views(planner: str, device: str) -> None:
    """A mask that is a strided view (a column of a [N, 2] tensor) gives the same cache as
    its contiguous copy: the kernels read N consecutive bytes, so the cache makes it so."""
    place = "gpu" if device == "cuda" else "cpu"
    w = _weights(True, device=device)
    masks = random_walk_masks(N, 30, 6, 5, seed=4).to(device)
    cache = PairedWeightCache(*w, capacity=30, placement=place, planner=planner)
    for mask in masks:
        pair = torch.stack([mask, ~mask], dim=1)  # [N, 2]: column 0 is a view with stride 2
        cache.update(pair[:, 0])
        cache.check()
        assert sorted(cache.active.tolist()) == mask.nonzero().squeeze(1).tolist()


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton on CPU tensors needs the interpreter, which is off on a GPU machine")
def test_offloaded_fused_counts_on_host_shrink_and_rebuild() -> None:
    """Offloaded with planner='fused': the host counts (added, size) from the mask, the launch
    plans and moves; shrinking steps read the rows written back from the launch, hybrid
    rebuilds replace the launch; the counts always equal the host plan's."""
    w = _weights(True)
    x = torch.randn(2, H)
    for tau in (None, 0.4):
        cache = PairedWeightCache(*w, capacity=48, placement="offloaded", device="cpu", planner="fused",
                                  rebuild_tau=tau)
        assert cache.backend == "triton" and cache.offload == "direct"
        ref = PairedWeightCache(*w, capacity=48, placement="cpu", rebuild_tau=tau)
        for seq in ("random_sizes", "full_churn", "empty_full"):
            for mask in SEQS[seq][:12]:
                assert cache.update(mask) == ref.update(mask)
                assert cache.last == ref.last
                cache.check()
        _run_sequence(cache, SEQS["random_walk"][:6], x, w, TOL[torch.float32])
    with pytest.raises(ValueError, match="offload='direct'"):
        PairedWeightCache(*w, capacity=4, placement="offloaded", device="cpu", planner="fused", offload="staged")
    with pytest.raises(ValueError, match="planner='triton'"):
        PairedWeightCache(*w, capacity=4, placement="offloaded", device="cpu", planner="triton")


def test_views_are_zero_copy_and_matmul_takes_them() -> None:
    w = _weights(True)
    cache = PairedWeightCache(*w, capacity=48)
    cache.update(SEQS["random_walk"][0])
    base, end = cache.buffer.data_ptr(), cache.buffer.data_ptr() + cache.buffer.nbytes
    for v, shape in ((cache.gate, (30, H)), (cache.up, (30, H)), (cache.down, (H, 30))):
        assert tuple(v.shape) == shape and base <= v.data_ptr() < end
        assert v.untyped_storage().data_ptr() == cache.buffer.untyped_storage().data_ptr()
    x = torch.randn(2, H)
    copies = {"aten::copy_", "aten::clone", "aten::contiguous"}

    def ops(fn) -> set[str]:
        with profile() as p:
            fn()
        return {e.name for e in p.events()}

    assert not ops(lambda: torch.matmul(torch.matmul(x, cache.up.t()), cache.down.t())) & copies
    assert not ops(lambda: mlp_forward(x, cache.gate, cache.up, cache.down)) & copies
    # negative control: a view BLAS cannot take is copied, and the profiler sees it
    assert ops(lambda: torch.matmul(x, cache.buffer[:30, : 2 * H : 2].t())) & copies


def test_errors_are_clear_and_leave_cache_intact() -> None:
    w = _weights(True)
    cache = PairedWeightCache(*w, capacity=10)
    mask = torch.zeros(N, dtype=torch.bool)
    mask[:10] = True
    cache.update(mask)
    with pytest.raises(ValueError, match=r"shape \[96\]"):
        cache.update(torch.zeros(N + 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="torch.bool"):
        cache.update(torch.zeros(N, dtype=torch.int64))
    with pytest.raises(TypeError, match="bool tensor"):
        cache.update([True] * N)  # type: ignore[arg-type]
    over = mask.clone()
    over[50] = True
    with pytest.raises(ValueError, match="11 active neurons, more than the cache capacity 10"):
        cache.update(over)
    cache.check()
    assert cache.active.tolist() == list(range(10))
    with pytest.raises(ValueError, match="capacity"):
        PairedWeightCache(*w, capacity=N + 1)
    with pytest.raises(ValueError, match="down must be"):
        PairedWeightCache(w[0], w[1], w[2].t(), capacity=4)
    with pytest.raises(ValueError, match="placement"):
        PairedWeightCache(*w, capacity=4, placement="disk")
    with pytest.raises(ValueError, match="backend"):
        PairedWeightCache(*w, capacity=4, backend="cuda")
    with pytest.raises(TypeError, match="dtype"):
        PairedWeightCache(w[0], w[1].double(), w[2], capacity=4)
    with pytest.raises(ValueError, match="mask_feed must be one of"):
        PairedWeightCache(*w, capacity=4, mask_feed="post")
    with pytest.raises(ValueError, match="mask_feed='ring'.*planner='fused'"):
        PairedWeightCache(*w, capacity=4, mask_feed="ring")  # cpu placement, torch planner


@pytest.mark.gpu
@pytest.mark.parametrize("planner", ["torch", "triton", "fused"])
def test_cuda_graph_capture_fixed_topk(planner: str) -> None:
    """With A = R (fixed top-k masks) the GPU update runs with no host sync inside a CUDA graph."""
    w = _weights(True, torch.float16, "cuda", n=512, h=64)
    cache = PairedWeightCache(*w, capacity=64, planner=planner)
    masks = drifting_topk_masks(512, 64, 30, drift=0.2, seed=9).cuda()
    cache.update(masks[0])
    static = masks[0].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm up (compiles the kernel) on a side stream
            cache.update_async(static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        written = cache.update_async(static)
    for mask in masks[1:]:
        old = cache.neuron_to_slot >= 0
        a = int((mask & ~old).sum())
        static.copy_(mask)
        graph.replay()
        torch.cuda.synchronize()
        assert int(written) == a
        cache.check()
        assert sorted(cache.active.tolist()) == mask.nonzero().squeeze(1).tolist()


@pytest.mark.gpu
@pytest.mark.parametrize(("backend", "offload", "planner"), [("torch", "staged", "torch"), ("triton", "staged", "torch"),
                                                        ("triton", "direct", "torch"), ("triton", "direct", "fused")])
@pytest.mark.parametrize("tau", [None, 0.4])
def test_offloaded_on_gpu(backend: str, offload: str, planner: str, tau: float | None) -> None:
    """Pool in pinned host memory, buffer on the GPU: exact after every step, for every way the
    rows cross PCIe (direct: the kernel reads plan and rows through unified addressing; fused:
    one launch plans on the GPU maps and reads the rows from the pinned pool)."""
    w = _weights(True)
    x = torch.randn(2, H)
    cache = PairedWeightCache(*w, capacity=48, placement="offloaded", backend=backend, offload=offload,
                              rebuild_tau=tau, planner=planner)
    assert cache.pool.is_pinned() and cache.buffer.is_cuda
    for seq in ("union_batch4", "random_sizes", "full_churn", "empty_full"):
        _run_sequence(cache, SEQS[seq], x.cuda(), tuple(t.cuda() for t in w), TOL[torch.float32])


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "feed"), [(torch.float16, "copy"), (torch.bfloat16, "copy"), (torch.float16, "ring")])
def test_fused_update_on_gpu_sequences(dtype: torch.dtype, feed: str) -> None:
    """planner='fused' on the GPU (many programs, grid barriers): every regime, with and
    without hybrid rebuilds, at a size where the neuron scan spans many programs; the
    graph's mask by copy or through the address ring."""
    for tau in (None, 0.5):
        w = _weights(True, dtype, "cuda", n=N, h=H)
        cache = PairedWeightCache(*w, capacity=N, planner="fused", rebuild_tau=tau, mask_feed=feed)
        for seq in SEQS:
            _run_sequence(cache, SEQS[seq], torch.randn(2, H, device="cuda", dtype=dtype), w, TOL[dtype])
    big = _weights(True, dtype, "cuda", n=20000, h=8)
    cache = PairedWeightCache(*big, capacity=3000, planner="fused", mask_feed=feed)
    for mask in random_walk_masks(20000, 2500, 0.3, 12, seed=8).cuda():
        cache.update(mask)
        cache.check()
        assert sorted(cache.active.tolist()) == mask.nonzero().squeeze(1).tolist()


@pytest.mark.gpu
@pytest.mark.parametrize("feed", ["copy", "ring"])
def test_fused_graph_many_calls_on_gpu(feed: str) -> None:
    """The fused graph replayed 300 times without a host sync (mask_feed='ring': the ring of
    64 slots wraps, the host waits every half ring), masks that are views or temporaries
    freed right after the call, update() (counts read back) interleaved; exact at every
    checked step and at the end."""
    w = _weights(True, torch.float16, "cuda", n=N, h=H)
    masks = random_walk_masks(N, 30, 5, 301, seed=9).cuda()
    cache = PairedWeightCache(*w, capacity=30, planner="fused", mask_feed=feed)
    cache.update(masks[0])
    for t in range(1, 301):
        mask = masks[t] if t % 2 else masks[t].clone()  # a clone is freed as soon as the call returns
        if t % 37 == 0:
            assert cache.update(mask) == 5
            cache.check()
            assert sorted(cache.active.tolist()) == masks[t].nonzero().squeeze(1).tolist()
        else:
            cache.update_async(mask)
    torch.cuda.synchronize()
    cache.check()
    assert sorted(cache.active.tolist()) == masks[300].nonzero().squeeze(1).tolist()
