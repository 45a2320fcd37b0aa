"""Task kind ``weight_cache_bench``: how fast the active weights of a sparse MLP follow the mask.

One run = one setting (N neurons, hidden width, m active, churn k per step, dtype,
placement). Every method replays the SAME pre-generated random-walk mask sequence (each
step swaps k active neurons for k inactive ones, so A = R = k) from the same start:

- ``paired``: :class:`ecc_kv.weight_cache.PairedWeightCache` (<= max(A, R) row writes).
- ``hybrid``: the same cache with ``rebuild_tau``: a full rebuild when churn > tau * m.
- ``rebuild``: ``torch.index_select`` of all m active rows from the bundled pool
  ``[gate | up | down^T]`` into a preallocated buffer (down stored transposed, so the
  baseline gathers whole contiguous rows and is as fast as index_select gets).
- ``masking``: boolean masking of the separate matrices, ``gate[mask]``, ``up[mask]``,
  ``down[:, mask]`` (what code without a cache does).
- ``paired_async`` (GPU placement only): ``update_async`` called eagerly (no host sync,
  fixed size: what a decode loop that never reads the counts pays).
- ``paired_graph`` (GPU placement only): the paired update captured once in a CUDA graph
  (``update_async``, fixed size) and replayed per step (the step also copies the mask into
  the graph's static input).

The methods are timed round robin, ``BLOCK`` steps each, so a noisy shared machine
loads them alike. Per step: the time (median and p90 over ``steps`` steps after ``warmup``), the bytes
written against the lower bound max(A, R) * row bytes, and the achieved bandwidth
(read + write) against a plain copy of the SAME bytes (max(A, R) rows, one contiguous block)
timed the same way in the same run (``copy_gbps``; on a GPU also that copy replayed from a
CUDA graph, ``copy_graph_gbps``, the reference for ``paired_graph`` and ``paired_async``); for
``offloaded`` also the bytes that cross PCIe against a pinned host-to-device copy of the same
bytes. ``host_lead_ms`` > 0 times device time only (``ecc_kv.timing.time_fn``: the GPU sleeps
before each window, so the host has queued the step when it opens), for the methods and the
references alike; 0 (default) includes the host's launch latency, which on a GPU is most of a
step at these sizes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ecc_kv.experiments import _shapes_common as sc
from ecc_kv.experiments._plotting import loglog_panels
from ecc_kv.sparse_mlp import churn_count, random_walk_masks
from ecc_kv.timing import copy_bandwidth_gbps, time_fn, time_stats
from ecc_kv.weight_cache import PLACEMENTS, PairedWeightCache

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.context import RunContext

KIND = "weight_cache_bench"
BLOCK = 10  # steps per method before the round robin moves on
METHODS: tuple[str, ...] = ("paired", "hybrid", "rebuild", "masking", "paired_graph", "paired_async")
GPU_ONLY: tuple[str, ...] = ("paired_graph", "paired_async")
DEFAULTS: dict[str, Any] = {
    "n_neurons": 8192,
    "hidden": 1024,
    "m": 1024,  # active neurons
    "churn": 64,  # neurons swapped per step: an int count, or a float fraction of m (1.0 = all)
    "dtype": "fp32",
    "placement": "cpu",
    "methods": ["paired", "hybrid", "rebuild", "masking"],
    "tau": 0.25,  # hybrid: rebuild when max(A, R) > tau * m
    "gated": True,  # SwiGLU (gate, up, down) or a plain MLP (up, down)
    "backend": "auto",  # cache moves: auto (triton on CUDA, torch on CPU) | torch | triton
    "planner": "torch",  # torch ops (host numpy offloaded) | triton (plan launch + move launch) | fused (one launch)
    "offload": "staged",  # offloaded pool rows: staged (host gather + one copy) | direct (kernel reads pinned pool)
    "mask_feed": "auto",  # gpu + fused graph's mask: auto (the cache's default: copy) | copy (into a static input) | ring
    "steps": 200,
    "warmup": 20,
    "seed": 0,
    "threads": 0,  # CPU intra-op threads (0: torch default)
    "host_lead_ms": 0.0,  # GPU: > 0 times device time only (ecc_kv.timing.time_fn), methods and references alike
}


def _methods(params: dict[str, Any]) -> list[str]:
    methods = params.get("methods", DEFAULTS["methods"])
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list) or not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"methods={methods!r} must be a non-empty list out of {list(METHODS)}")
    return list(dict.fromkeys(methods))


def _config(params: dict[str, Any]) -> dict[str, Any]:
    sc.check_unknown(params, DEFAULTS, KIND)
    cfg = {
        "n_neurons": sc.pos_int(params, "n_neurons", DEFAULTS["n_neurons"]),
        "hidden": sc.pos_int(params, "hidden", DEFAULTS["hidden"]),
        "m": sc.pos_int(params, "m", DEFAULTS["m"]),
        "dtype": sc.choice(params, "dtype", sc.DTYPES, DEFAULTS["dtype"]),
        "placement": sc.choice(params, "placement", PLACEMENTS, DEFAULTS["placement"]),
        "methods": _methods(params),
        "gated": sc.flag(params, "gated", DEFAULTS["gated"]),
        "backend": sc.choice(params, "backend", ("auto", "torch", "triton"), DEFAULTS["backend"]),
        "offload": sc.choice(params, "offload", ("staged", "direct"), DEFAULTS["offload"]),
        "planner": sc.choice(params, "planner", ("torch", "triton", "fused"), DEFAULTS["planner"]),
        "mask_feed": sc.choice(params, "mask_feed", ("auto", "copy", "ring"), DEFAULTS["mask_feed"]),
        "steps": sc.pos_int(params, "steps", DEFAULTS["steps"]),
        "warmup": sc.pos_int(params, "warmup", DEFAULTS["warmup"], minimum=0),
        "seed": sc.pos_int(params, "seed", DEFAULTS["seed"], minimum=0),
        "threads": sc.pos_int(params, "threads", DEFAULTS["threads"], minimum=0),
        "host_lead_ms": sc.nonneg_float(params, "host_lead_ms", DEFAULTS["host_lead_ms"]),
    }
    churn, tau = params.get("churn", DEFAULTS["churn"]), params.get("tau", DEFAULTS["tau"])
    try:
        k = churn_count(churn, cfg["m"])
    except TypeError as exc:
        raise ValueError(f"churn={churn!r} must be an int count or a float fraction of m in [0, 1]") from exc
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau < 0:
        raise ValueError(f"tau={tau!r} must be a number >= 0")
    if cfg["m"] > cfg["n_neurons"]:
        raise ValueError(f"m={cfg['m']} must not exceed n_neurons={cfg['n_neurons']}")
    if "masking" in cfg["methods"] and cfg["placement"] == "offloaded":
        raise ValueError("methods: 'masking' has no offloaded form; use placement cpu or gpu for it")
    if cfg["placement"] == "offloaded" and cfg["planner"] == "triton":
        raise ValueError("planner='triton' has no offloaded form; offloaded takes planner 'torch' (host plan) or 'fused'")
    if cfg["placement"] == "offloaded" and cfg["planner"] == "fused" and cfg["offload"] != "direct":
        raise ValueError(f"planner='fused' offloaded reads the pinned pool in its launch: it needs offload='direct', "
                         f"got offload={cfg['offload']!r}")
    if cfg["mask_feed"] == "ring" and (cfg["planner"] != "fused" or cfg["placement"] != "gpu"):
        raise ValueError(f"mask_feed='ring' needs planner='fused' and placement='gpu', got planner={cfg['planner']!r}, "
                         f"placement={cfg['placement']!r}")
    for meth in GPU_ONLY:
        if meth in cfg["methods"] and cfg["placement"] != "gpu":
            raise ValueError(f"method {meth!r} needs placement 'gpu', got placement={cfg['placement']!r}")
    cfg.update(churn=churn, tau=float(tau), churn_k=min(k, cfg["m"], cfg["n_neurons"] - cfg["m"]))
    return cfg


def validate(params: dict[str, Any]) -> None:
    """Raise ValueError naming the bad key and the allowed values."""
    _config(params)


def h2d_bandwidth_gbps(nbytes: int, device: str, repeats: int = 50, host_lead_ms: float = 0.0) -> float:
    """Pinned host -> device copy bandwidth (bytes counted once: they cross PCIe once)."""
    src = torch.empty(max(nbytes, 1), dtype=torch.uint8).pin_memory()
    dst = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    times = time_fn(lambda: dst.copy_(src, non_blocking=True), device=device, warmup=3, repeats=repeats,
                    host_lead_ms=host_lead_ms)
    return src.numel() / (statistics.median(times) * 1e-3) / 1e9


def graph_copy_bandwidth_gbps(nbytes: int, device: str, repeats: int = 50, host_lead_ms: float = 0.0) -> float:
    """Device copy bandwidth (read + write) of one copy replayed from a CUDA graph: the
    reference for an update that is replayed from a graph too."""
    src = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        dst.copy_(src)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dst.copy_(src)
    times = time_fn(graph.replay, device=device, warmup=3, repeats=repeats, host_lead_ms=host_lead_ms)
    return 2 * src.numel() / (statistics.median(times) * 1e-3) / 1e9


def _stepper(
    method: str, cfg: dict[str, Any], w: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor],
    masks: torch.Tensor, device: str,
) -> tuple[Callable[[], object], list[int], PairedWeightCache | None]:
    """(step function that consumes the next mask, rows written per step, the cache if any)."""
    gate, up, down = w
    n_steps = masks.shape[0]
    written: list[int] = []
    pos = [1]  # mask 0 is the untimed start state

    def nxt() -> torch.Tensor:
        mask = masks[pos[0] % n_steps]
        pos[0] += 1
        return mask

    cap, place = cfg["m"], cfg["placement"]
    backend = None if cfg["backend"] == "auto" else cfg["backend"]
    if method in ("paired", "hybrid", "paired_graph", "paired_async"):
        tau = cfg["tau"] if method == "hybrid" else None
        cache = PairedWeightCache(gate, up, down, cap, placement=place, backend=backend, rebuild_tau=tau,
                                  device=device, offload=cfg["offload"],
                                  planner=cfg["planner"], mask_feed=None if cfg["mask_feed"] == "auto" else cfg["mask_feed"])
        cache.update(masks[0])
        if method == "paired_graph":
            static = masks[0].clone()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    cache.update_async(static)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                cache.update_async(static)

            def step_graph() -> None:
                static.copy_(nxt())
                graph.replay()

            return step_graph, written, cache
        if method == "paired_async":

            def step_async() -> None:
                cache.update_async(nxt())

            return step_async, written, cache

        def step_cache() -> None:
            written.append(cache.update(nxt()))

        return step_cache, written, cache
    if method == "rebuild":
        host = place == "offloaded"
        mats = [t for t in (gate, up) if t is not None] + [down.t()]
        pool = torch.cat(mats, dim=1).contiguous()  # [N, R] rows [gate | up | down^T]
        pool = pool.pin_memory() if host else pool
        buf = torch.empty(cap, pool.shape[1], dtype=pool.dtype, device=device)
        stage = torch.empty(cap, pool.shape[1], dtype=pool.dtype, pin_memory=host) if host else None
        sent = torch.cuda.Event() if host else None  # the staging block is free once its copy ran

        def step_rebuild() -> None:
            ids = nxt().nonzero().squeeze(1)
            n = ids.numel()
            if stage is None:
                torch.index_select(pool, 0, ids, out=buf[:n])
            else:  # offloaded: gather on the host, send the whole active set
                sent.synchronize()
                torch.index_select(pool, 0, ids, out=stage[:n])
                buf[:n].copy_(stage[:n], non_blocking=True)
                sent.record()
            written.append(n)

        return step_rebuild, written, None
    def step_mask() -> None:
        mask = nxt()
        parts = [up[mask], down[:, mask]] + ([gate[mask]] if gate is not None else [])
        written.append(parts[0].shape[0])

    return step_mask, written, None


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Replay one mask sequence through every method; keep every per-step time and write count."""
    cfg = _config(params)
    device = "cpu" if cfg["placement"] == "cpu" else sc.resolve_device("cuda", ctx.device)
    dtype = sc.DTYPES[cfg["dtype"]]
    n, h, m, k = cfg["n_neurons"], cfg["hidden"], cfg["m"], cfg["churn_k"]
    total = 1 + max(cfg["warmup"], 1) + cfg["steps"]
    masks = random_walk_masks(n, m, k, total, seed=cfg["seed"])  # [T, N], A = R = k each step
    wdev = "cpu" if cfg["placement"] == "offloaded" else device
    g = torch.Generator().manual_seed(cfg["seed"])
    mk = lambda *s: (torch.randn(*s, generator=g) / h**0.5).to(wdev, dtype)  # noqa: E731
    w = (mk(n, h) if cfg["gated"] else None, mk(n, h), mk(h, n))
    mask_dev = masks.to(wdev)
    row_bytes = (3 if cfg["gated"] else 2) * h * dtype.itemsize
    results: dict[str, Any] = {}
    with sc.cpu_threads(device, cfg["threads"]):
        moved = max(k, 1) * row_bytes  # the bytes a paired step moves: the references copy exactly these
        lead = cfg["host_lead_ms"]  # time_fn uses it on CUDA only
        copy_gbps = copy_bandwidth_gbps(moved, device=device, repeats=50, host_lead_ms=lead)
        copy_graph_gbps = graph_copy_bandwidth_gbps(moved, device, host_lead_ms=lead) if cfg["placement"] == "gpu" else None
        h2d_gbps = h2d_bandwidth_gbps(moved, device, host_lead_ms=lead) if cfg["placement"] == "offloaded" else None
        methods = cfg["methods"]
        runs = {m: _stepper(m, cfg, w, mask_dev, device) for m in methods}
        for step, _, _ in runs.values():
            time_fn(step, device=device, warmup=0, repeats=max(cfg["warmup"], 1), host_lead_ms=lead)  # discarded
        # round robin in blocks of BLOCK steps: every method sees the same background load
        times: dict[str, list[float]] = {m: [] for m in methods}
        for done in range(0, cfg["steps"], BLOCK):
            ctx.progress(done, cfg["steps"], "steps")
            for m in methods:
                times[m] += time_fn(runs[m][0], device=device, warmup=0, repeats=min(BLOCK, cfg["steps"] - done),
                                    host_lead_ms=lead)
        last = masks[max(cfg["warmup"], 1) + cfg["steps"]]
        for m in methods:
            _, written, cache = runs[m]
            consistent = None
            if cache is not None:
                cache.check()  # raises if the buffer is not exactly pool[active]
                consistent = int(sorted(cache.active.tolist()) == last.nonzero().squeeze(1).tolist())
            if m in GPU_ONLY:  # A = R = k every step: the fixed-size update writes exactly k rows
                written = [k] * (max(cfg["warmup"], 1) + cfg["steps"])
            results[m] = {"times_ms": times[m], "rows_written": written[max(cfg["warmup"], 1):],
                          "consistent": consistent}
            ctx.log.info("%s: median %.4f ms (k=%d)", m, statistics.median(times[m]), k)
    ctx.progress(len(cfg["methods"]), len(cfg["methods"]), "done")
    return {
        "kind": KIND, "config": cfg, "env": sc.env_info(device), "row_bytes": row_bytes,
        "copy_gbps": copy_gbps, "copy_graph_gbps": copy_graph_gbps, "h2d_gbps": h2d_gbps, "bound_rows": k,
        "methods": results,
    }


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Per method: median/p90 step time, bytes per step against max(A, R) rows, bandwidth fractions."""
    rb, k = raw["row_bytes"], raw["bound_rows"]
    out: dict[str, Any] = {"churn_k": k, "row_bytes": rb, "copy_gbps": raw["copy_gbps"],
                           "device_used": raw["env"]["device"]}
    for key in ("copy_graph_gbps", "h2d_gbps"):
        if raw.get(key) is not None:
            out[key] = raw[key]
    for method, res in raw["methods"].items():
        st = time_stats(res["times_ms"])
        nbytes = statistics.median(res["rows_written"]) * rb
        gbps = 2 * nbytes / (st["median_ms"] * 1e-3) / 1e9 if st["median_ms"] > 0 else None
        out[f"{method}_median_ms"] = st["median_ms"]
        out[f"{method}_p90_ms"] = st["p90_ms"]
        out[f"{method}_bytes_per_step"] = nbytes
        out[f"{method}_bytes_vs_bound"] = sc.ratio(nbytes, k * rb) if k else None
        out[f"{method}_gbps"] = gbps
        out[f"{method}_copy_frac"] = sc.ratio(gbps, raw["copy_gbps"])
        if method in GPU_ONLY and raw.get("copy_graph_gbps"):  # graph replays against a graph-replayed copy
            out[f"{method}_graph_copy_frac"] = sc.ratio(gbps, raw["copy_graph_gbps"])
        if raw.get("h2d_gbps") and method in ("paired", "hybrid", "rebuild"):
            # bytes that crossed PCIe (counted once) against the pinned H2D bandwidth
            out[f"{method}_h2d_frac"] = sc.ratio(nbytes / (st["median_ms"] * 1e-3) / 1e9, raw["h2d_gbps"])
        if res.get("consistent") is not None:
            out[f"{method}_consistent"] = res["consistent"]
    if "rebuild_median_ms" in out:
        for method in raw["methods"]:
            if method != "rebuild":
                out[f"{method}_speedup_vs_rebuild"] = sc.ratio(out["rebuild_median_ms"], out[f"{method}_median_ms"])
    return {key: sc.finite_or_none(v) if isinstance(v, float) else v for key, v in out.items()}


def plots(df: pd.DataFrame, outdir: Path) -> list[Path]:
    """Update time versus churn per method (log-log), one panel per placement/dtype."""
    return loglog_panels(df, x="churn_k", series=METHODS, column="{}_median_ms",
                         panel_keys=("placement", "dtype", "n_neurons", "hidden", "m"),
                         xlabel="churn k (neurons swapped per step)", ylabel="update time per step, median [ms]",
                         title="weight cache update", path=Path(outdir) / "weight_cache_update_vs_churn.png")
