"""Task kind ``sparse_mlp``: one SwiGLU MLP decode step with a dynamic sparsity mask, end to end.

One run = one (shape, density, batch, mask source, dtype) point. Shapes: ``llama3-8b``
(hidden 4096, intermediate 14336) and ``smollm2-135m`` (576 / 1536, the embedded model).
Masks per token are either synthetic (a random walk with ``churn`` per step) or real:
top-k of |act| (the input of ``down_proj``) per token, recorded from a layer of the
embedded SmolLM2 on real text; then the real layer's weights and inputs are used too.
A batch step runs the union of its ``batch`` tokens' masks.

Methods, each split into an update (making the weights ready) and a compute (the GEMMs):

- ``dense``: the full MLP, no mask (its error against the masked reference is the
  sparsification error itself, not a bug).
- ``rebuild``: index_select of all active rows into a buffer, then GEMMs on it.
- ``gather``: no cache: ``gate[ids]``, ``up[ids]``, ``down[:, ids]`` each step, then GEMMs.
- ``paired``: :class:`ecc_kv.weight_cache.PairedWeightCache` update, GEMMs on its views.
- ``hybrid``: the same cache with ``rebuild_tau=tau`` (full rebuild on high churn).
- ``offloaded`` (GPU): the paired cache with its pool in pinned host memory (rows gathered
  on the host, one copy); ``offloaded_direct``: one kernel reads the packed plan and the
  added rows from the pinned pool itself (unified addressing), so only they cross PCIe.
- ``offloaded_rebuild`` (GPU): pool in pinned host memory, every active row sent each step.

Times: pass 1 replays the mask sequence timing the update only, pass 2 replays it timing
update + compute; compute = median(step) - median(update). Output error: a separate pass
compares every method's output with the dense masked float32 reference.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ecc_kv.experiments import _shapes_common as sc
from ecc_kv.experiments._plotting import loglog_panels
from ecc_kv.sparse_mlp import masked_mlp_reference, mlp_forward, random_walk_masks, topk_masks
from ecc_kv.timing import time_fn, time_stats
from ecc_kv.weight_cache import PairedWeightCache

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.context import RunContext

KIND = "sparse_mlp"
SHAPES: dict[str, tuple[int, int]] = {"llama3-8b": (4096, 14336), "smollm2-135m": (576, 1536)}
MASKS: tuple[str, ...] = ("synthetic", "trace")
METHODS: tuple[str, ...] = ("dense", "rebuild", "gather", "paired", "hybrid", "offloaded", "offloaded_direct",
                            "offloaded_rebuild")
GPU_METHODS = ("offloaded", "offloaded_direct", "offloaded_rebuild")
DEFAULTS: dict[str, Any] = {
    "shape": "smollm2-135m",
    "density": 0.1,  # active fraction of the intermediate neurons per token
    "batch": 1,  # tokens per decode step; the step runs the union of their masks
    "masks": "synthetic",
    "churn": 0.1,  # synthetic: fraction of a token's active set swapped per step
    "dtype": "fp32",
    "methods": ["dense", "rebuild", "gather", "paired", "hybrid"],
    "tau": 0.5,  # hybrid: full rebuild when max(added, removed) > tau * active
    "planner": "torch",  # paired/hybrid on the GPU: torch ops | triton (plan + move launches) | fused (one launch)
    "model": "smollm2-135m",  # trace: the model, text, tokens and layer recorded
    "text": "pydoc",
    "tokens": 512,
    "layer": 15,
    "steps": 200,
    "warmup": 20,
    "check_steps": 8,
    "device": "auto",
    "seed": 0,
    "threads": 0,
}


def _config(params: dict[str, Any]) -> dict[str, Any]:
    sc.check_unknown(params, DEFAULTS, KIND)
    methods = params.get("methods", DEFAULTS["methods"])
    methods = [methods] if isinstance(methods, str) else methods
    if not isinstance(methods, list) or not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"methods={methods!r} must be a non-empty list out of {list(METHODS)}")
    density, churn = params.get("density", DEFAULTS["density"]), params.get("churn", DEFAULTS["churn"])
    tau = params.get("tau", DEFAULTS["tau"])
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or tau < 0:
        raise ValueError(f"tau={tau!r} must be a number >= 0")
    for key, val in (("density", density), ("churn", churn)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val <= 1:
            raise ValueError(f"{key}={val!r} must be a fraction in [0, 1]")
    cfg = {
        "shape": sc.choice(params, "shape", SHAPES, DEFAULTS["shape"]),
        "masks": sc.choice(params, "masks", MASKS, DEFAULTS["masks"]),
        "dtype": sc.choice(params, "dtype", sc.DTYPES, DEFAULTS["dtype"]),
        "device": sc.choice(params, "device", sc.DEVICES, DEFAULTS["device"]),
        "model": str(params.get("model", DEFAULTS["model"])),
        "text": str(params.get("text", DEFAULTS["text"])),
        "methods": list(dict.fromkeys(methods)),
        "density": float(density),
        "churn": float(churn),
        "tau": float(tau),
        "planner": sc.choice(params, "planner", ("torch", "triton", "fused"), DEFAULTS["planner"]),
        **{k: sc.pos_int(params, k, DEFAULTS[k]) for k in ("batch", "tokens", "steps")},
        **{k: sc.pos_int(params, k, DEFAULTS[k], minimum=0) for k in ("layer", "warmup", "check_steps", "seed",
                                                                        "threads")},
    }
    if cfg["masks"] == "trace" and cfg["shape"] != "smollm2-135m":
        raise ValueError(f"masks='trace' records the embedded model, so shape must be 'smollm2-135m', "
                         f"got shape={cfg['shape']!r}")
    if cfg["device"] == "cpu" and any(m in GPU_METHODS for m in cfg["methods"]):
        raise ValueError(f"methods {list(GPU_METHODS)} need a GPU (device cuda or auto), got device='cpu'")
    return cfg


def validate(params: dict[str, Any]) -> None:
    """Raise ValueError naming the bad key and the allowed values."""
    _config(params)


def _trace_inputs(cfg: dict[str, Any], ctx: RunContext) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """Real weights (gate, up, down), MLP inputs [T, H] and |act| [T, N] of one layer, cached in ctx.shared."""
    key = ("sparse_mlp_trace", cfg["model"], cfg["text"], cfg["tokens"], cfg["layer"])
    if key not in ctx.shared:
        from ecc_kv.models import load_model, load_tokenizer
        from ecc_kv.sparse_mlp import record_mlp_trace
        from ecc_kv.text import load_samples

        model = load_model(cfg["model"], device="cpu", dtype=torch.float32)
        ids = load_samples(load_tokenizer(cfg["model"]), cfg["text"], n_samples=1, seq_len=cfg["tokens"])
        tr = record_mlp_trace(model, ids, cfg["layer"])
        ctx.shared[key] = ((tr.gate, tr.up, tr.down), tr.x, tr.act.abs())
        del model
    return ctx.shared[key]


Weights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # gate [N, H], up [N, H], down [H, N]
Update = Callable[[torch.Tensor], object]
Compute = Callable[[torch.Tensor], torch.Tensor]


def _inputs(cfg: dict[str, Any], ctx: RunContext, device: str) -> tuple[Weights, torch.Tensor, torch.Tensor]:
    """Weights on ``device``, per-step inputs x [T, B, H] and union masks [T, N] (CPU)."""
    h, n = SHAPES[cfg["shape"]]
    b, m = cfg["batch"], max(1, int(round(cfg["density"] * n)))
    total = 1 + cfg["warmup"] + cfg["steps"]
    dtype = sc.DTYPES[cfg["dtype"]]
    if cfg["masks"] == "trace":
        w, xs, act = _trace_inputs(cfg, ctx)
        per_tok = topk_masks(act, m)  # [T, N]
        streams = xs.shape[0] // b  # b token streams of consecutive tokens, one per batch row
        pick = (torch.arange(total)[:, None] % streams) + torch.arange(b)[None, :] * streams  # [T, B]
        masks = per_tok[pick].any(dim=1)  # [T, N]
        x = xs[pick]  # [T, B, H]
        w = tuple(t.to(device, dtype) for t in w)
    else:
        g = torch.Generator(device=device).manual_seed(cfg["seed"])
        mk = lambda *s: (torch.randn(*s, generator=g, device=device, dtype=torch.float32) / h**0.5).to(dtype)  # noqa: E731
        w = (mk(n, h), mk(n, h), mk(h, n))
        walks = [random_walk_masks(n, m, cfg["churn"], total, seed=cfg["seed"] * 1000 + j) for j in range(b)]
        masks = torch.stack(walks).any(dim=0)  # [T, N]
        x = torch.randn(total, b, h, generator=torch.Generator().manual_seed(cfg["seed"] + 1))
    return w, x.to(device, dtype), masks


def _method(name: str, w: Weights, masks: torch.Tensor, cap: int, device: str, shared_pool: list[torch.Tensor],
            tau: float, planner: str = "torch") -> tuple[Update, Compute]:
    """(update(mask), compute(x) -> y) of one method, started from masks[0]."""
    gate, up, down = w
    if name == "dense":
        return (lambda mask: None), (lambda x: mlp_forward(x, gate, up, down))
    if name in ("paired", "hybrid", "offloaded", "offloaded_direct"):
        off = name.startswith("offloaded")
        place = "offloaded" if off else ("gpu" if device == "cuda" else "cpu")
        src = [t.cpu() for t in w] if off else w
        cache = PairedWeightCache(*src, cap, placement=place, device=device,
                                  rebuild_tau=tau if name == "hybrid" else None,
                                  offload="direct" if name == "offloaded_direct" else "staged",
                                  planner="torch" if off else planner)
        if name == "paired":
            shared_pool.append(cache.pool)
        cache.update(masks[0].to(cache.neuron_to_slot.device))
        mdev = cache.neuron_to_slot.device
        return (lambda mask: cache.update(mask.to(mdev))), (lambda x: mlp_forward(x, cache.gate, cache.up, cache.down))
    if name == "gather":
        held: dict[str, torch.Tensor] = {}

        def upd_gather(mask: torch.Tensor) -> None:
            ids = mask.to(device).nonzero().squeeze(1)
            held.update(g=gate[ids], u=up[ids], d=down[:, ids])

        upd_gather(masks[0])
        return upd_gather, (lambda x: mlp_forward(x, held["g"], held["u"], held["d"]))
    # rebuild / offloaded_rebuild: all active rows of the bundled pool [gate | up | down^T] each step
    h = up.shape[1]
    host = name == "offloaded_rebuild"
    pool = shared_pool[0] if (shared_pool and not host) else torch.cat([gate, up, down.t()], 1).contiguous()
    pool = pool.cpu().pin_memory() if host else pool
    buf = torch.empty(cap, 3 * h, dtype=pool.dtype, device=device)
    stage = torch.empty(cap, 3 * h, dtype=pool.dtype).pin_memory() if host else None
    sent = torch.cuda.Event() if host else None  # the staging block is free once its copy ran
    size = [0]

    def upd_rebuild(mask: torch.Tensor) -> None:
        ids = mask.to(pool.device).nonzero().squeeze(1)
        n = size[0] = ids.numel()
        if stage is None:
            torch.index_select(pool, 0, ids, out=buf[:n])
        else:
            sent.synchronize()
            torch.index_select(pool, 0, ids, out=stage[:n])
            buf[:n].copy_(stage[:n], non_blocking=True)
            sent.record()

    upd_rebuild(masks[0])

    def comp_rebuild(x: torch.Tensor) -> torch.Tensor:
        b = buf[: size[0]]
        return mlp_forward(x, b[:, :h], b[:, h : 2 * h], b[:, 2 * h :].t())

    return upd_rebuild, comp_rebuild


def _cycle(seq_len: int) -> Callable[[], int]:
    pos = [0]

    def nxt() -> int:
        pos[0] = pos[0] % (seq_len - 1) + 1  # 1..T-1; mask 0 is the start state
        return pos[0]

    return nxt


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Time update and update + compute per step for every method; check outputs against the reference."""
    cfg = _config(params)
    device = sc.resolve_device(cfg["device"], ctx.device)
    if device == "cpu" and any(m in GPU_METHODS for m in cfg["methods"]):
        raise RuntimeError(f"methods {list(GPU_METHODS)} need a CUDA GPU; none is visible")
    with sc.cpu_threads(device, cfg["threads"]):
        w, x, masks = _inputs(cfg, ctx, device)
        sizes = masks.sum(dim=1)  # [T]
        cap = int(sizes.max())
        old = torch.cat([masks[:1], masks[:-1]])
        churn = torch.maximum((masks & ~old).sum(1), (old & ~masks).sum(1))[1:]
        results: dict[str, Any] = {}
        shared_pool: list[torch.Tensor] = []
        order = sorted(cfg["methods"], key=lambda m: m != "paired")  # the cache's pool serves rebuild
        on_dev = masks.to(device)  # a predictor's masks live where the model runs; offloaded plans on the host
        for i, name in enumerate(order):
            ctx.progress(i, len(order), name)
            res: dict[str, Any] = {}
            mseq = masks if name in GPU_METHODS else on_dev
            for part in ("update", "step"):
                upd, comp = _method(name, w, mseq, cap, device, shared_pool, cfg["tau"], cfg["planner"])
                nxt = _cycle(masks.shape[0])

                def step(upd=upd, comp=comp, nxt=nxt, part=part, mseq=mseq) -> None:
                    t = nxt()
                    upd(mseq[t])
                    if part == "step":
                        comp(x[t])

                res[f"{part}_ms"] = time_fn(step, device=device, warmup=cfg["warmup"], repeats=cfg["steps"])
            upd, comp = _method(name, w, mseq, cap, device, shared_pool, cfg["tau"], cfg["planner"])
            errs = []
            for t in range(1, min(cfg["check_steps"], masks.shape[0] - 1) + 1):
                upd(mseq[t])
                y = comp(x[t]).float()
                ref = masked_mlp_reference(x[t], *w, masks[t])
                errs.append((float((y - ref).abs().max()), float(ref.abs().max())))
            res["max_abs_err"] = max(e for e, _ in errs) if errs else None
            res["rel_err"] = max(e / max(r, 1e-30) for e, r in errs) if errs else None
            results[name] = res
            ctx.log.info("%s: update %.4f ms, step %.4f ms, rel err %.2e", name,
                         statistics.median(res["update_ms"]), statistics.median(res["step_ms"]), res["rel_err"] or 0)
        del shared_pool
    ctx.progress(len(order), len(order), "done")
    h, n = SHAPES[cfg["shape"]]
    return {
        "kind": KIND, "config": cfg, "env": sc.env_info(device), "hidden": h, "intermediate": n,
        "capacity": cap, "mean_active": float(sizes.float().mean()), "mean_churn": float(churn.float().mean()),
        "methods": results,
    }


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Per method: update, compute and step medians, step p90, output error; speedups over rebuild."""
    n = raw["intermediate"]
    out: dict[str, Any] = {
        "hidden": raw["hidden"], "intermediate": n, "capacity": raw["capacity"],
        "active_frac": raw["mean_active"] / n, "churn_frac": raw["mean_churn"] / max(raw["mean_active"], 1),
        "device_used": raw["env"]["device"],
    }
    for name, res in raw["methods"].items():
        up, st = time_stats(res["update_ms"]), time_stats(res["step_ms"])
        out[f"{name}_update_ms"] = up["median_ms"]
        out[f"{name}_step_ms"] = st["median_ms"]
        out[f"{name}_step_p90_ms"] = st["p90_ms"]
        out[f"{name}_compute_ms"] = max(st["median_ms"] - up["median_ms"], 0.0)
        out[f"{name}_max_abs_err"] = res["max_abs_err"]
        out[f"{name}_rel_err"] = res["rel_err"]
    for name, base in (("paired", "rebuild"), ("paired", "gather"), ("paired", "dense"), ("hybrid", "rebuild"),
                       ("offloaded", "offloaded_rebuild"), ("offloaded_direct", "offloaded_rebuild")):
        if f"{name}_step_ms" in out and f"{base}_step_ms" in out:
            out[f"{name}_step_speedup_vs_{base}"] = sc.ratio(out[f"{base}_step_ms"], out[f"{name}_step_ms"])
    return {k: sc.finite_or_none(v) if isinstance(v, float) else v for k, v in out.items()}


def plots(df: pd.DataFrame, outdir: Path) -> list[Path]:
    """Step latency versus density, one line per method, one panel per shape/batch/mask source/device."""
    return loglog_panels(df, x="density", series=METHODS, column="{}_step_ms",
                         panel_keys=("shape", "batch", "masks", "dtype", "device_used"),
                         xlabel="density (active fraction per token)", ylabel="MLP decode step, median [ms]",
                         title="sparse MLP step", path=Path(outdir) / "sparse_mlp_step_vs_density.png")
