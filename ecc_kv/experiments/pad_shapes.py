"""Task kind ``pad_shapes``: the padding remedy for an irregular dim (e.g. 107 -> 112 or 128),
timed against the irregular shape itself, with the pad cost charged where it belongs.

One run is one irregular ``dim`` padded to ``ceil(dim, align)``; ``op`` picks the variant:

- ``op: gemm, vary: n`` (``[M, hidden] @ [hidden, dim]``): the weight gets zero columns once,
  offline (its one-time cost is ``offline_pad_ms``, not charged per call); the output
  ``y[:, :dim]`` is a free view (the next GEMM reads it with a row stride). Per call:
  the padded matmul only.
- ``op: gemm, vary: k`` (``[M, dim] @ [dim, hidden]``): the weight gets zero rows offline;
  the activation is produced at run time, so each call copies it into a zero-padded buffer
  (``padded_ms``) before the matmul. ``padded_kernel_ms`` is the matmul alone: the bound if
  the producer wrote the padded layout directly.
- ``op: sdpa`` (``head_dim = dim``): q, k and v are copied into zero-padded buffers each call
  (prefill: all three are fresh), attention runs with the *original* scale 1/sqrt(dim),
  and ``out[..., :dim]`` is a view. Zero columns change neither QK^T nor the kept
  output columns; ``max_abs_err_*`` checks it against a plain fp32 oracle.
  ``padded_kernel_ms`` is attention on pre-padded tensors (K/V kept padded in the cache).
  A forced ``backend`` may refuse the irregular shape but accept the padded one: recorded.

``wasted_flops_frac`` is the share of the padded computation spent on zeros.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ecc_kv.experiments import _shapes_common as sc
from ecc_kv.experiments import sdpa_shapes
from ecc_kv.timing import time_fn, time_stats

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.context import RunContext

KIND = "pad_shapes"
OPS = ("gemm", "sdpa")
_VARIANTS = ("irregular", "padded", "padded_kernel")
DEFAULTS: dict[str, Any] = {
    "op": "gemm",
    "dim": 107,  # the irregular size (rank for gemm, head_dim for sdpa)
    "align": 8,
    "dtype": "fp16",
    # gemm keys (ignored by op=sdpa)
    "m": 4096,
    "hidden": 4096,
    "vary": "n",
    # sdpa keys (ignored by op=gemm)
    "batch": 4,
    "heads": 32,
    "seq_len": 2048,
    "backend": "default",
    "causal": False,
    **sc.TIMING_DEFAULTS,
}


@dataclass(frozen=True)
class PadConfig:
    op: str
    dim: int
    align: int
    dtype: str
    m: int
    hidden: int
    vary: str
    batch: int
    heads: int
    seq_len: int
    backend: str
    causal: bool
    warmup: int
    repeats: int
    inner: int
    device: str
    seed: int
    threads: int

    @property
    def padded_dim(self) -> int:
        return sc.ceil_to(self.dim, self.align)

    def flops(self, dim: int) -> float:
        if self.op == "gemm":
            return 2.0 * self.m * self.hidden * dim
        return sdpa_shapes.attention_flops(self.batch, self.heads, self.seq_len, self.seq_len, dim, self.causal)


def _config(params: dict[str, Any]) -> PadConfig:
    sc.check_unknown(params, DEFAULTS, KIND)
    return PadConfig(
        op=sc.choice(params, "op", OPS, DEFAULTS["op"]),
        dim=sc.pos_int(params, "dim", DEFAULTS["dim"]),
        align=sc.pos_int(params, "align", DEFAULTS["align"]),
        dtype=sc.choice(params, "dtype", sc.DTYPES, DEFAULTS["dtype"]),
        m=sc.pos_int(params, "m", DEFAULTS["m"]),
        hidden=sc.pos_int(params, "hidden", DEFAULTS["hidden"]),
        vary=sc.choice(params, "vary", ("n", "k"), DEFAULTS["vary"]),
        batch=sc.pos_int(params, "batch", DEFAULTS["batch"]),
        heads=sc.pos_int(params, "heads", DEFAULTS["heads"]),
        seq_len=sc.pos_int(params, "seq_len", DEFAULTS["seq_len"]),
        backend=sc.choice(params, "backend", sdpa_shapes.BACKENDS, DEFAULTS["backend"]),
        causal=sc.flag(params, "causal", DEFAULTS["causal"]),
        **sc.timing_params(params),
    )


def validate(params: dict[str, Any]) -> None:
    """Raise ValueError naming the bad key and the allowed values (called before submission)."""
    _config(params)


Variant = tuple[str, Callable[[], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _time_variant(
    cfg: PadConfig, device: str, name: str, fn: Callable[[], torch.Tensor],
    crop: Callable[[torch.Tensor], torch.Tensor], oracle: torch.Tensor | None, backend: str,
) -> dict[str, Any]:
    """Run ``fn`` once (error vs ``oracle``, backend that ran), then time it; refusals are data."""
    point: dict[str, Any] = {"variant": name}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with sdpa_shapes.backend_context(backend):
                out = crop(fn())
                if oracle is not None:
                    point["max_abs_err"] = float((out.float() - oracle).abs().max())
                if cfg.op == "sdpa":  # forced: the only enabled backend is the one that ran
                    point["picked"] = sdpa_shapes.picked_backend(fn) if backend == "default" else backend
                del out
                point.update(sc.measure(fn, device, cfg.warmup, cfg.repeats, cfg.inner))
        point["status"] = "ok"
    except sc.OOM as exc:
        point.update(status="oom", reason=f"{type(exc).__name__}: {str(exc).strip()[:500]}")
    except RuntimeError as exc:
        point.update(status="refused", reason=sdpa_shapes.refusal_text(exc, caught))
    return point


def _first_rows(crop: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Check only the first 64 output rows against the fp32 oracle (cheap on any M)."""
    return lambda o: crop(o)[:64]


def _gemm_variants(cfg: PadConfig, device: str) -> tuple[list[Variant], torch.Tensor, float]:
    dtype, d, dp = sc.DTYPES[cfg.dtype], cfg.dim, cfg.padded_dim
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    if cfg.vary == "n":
        x = torch.randn(cfg.m, cfg.hidden, generator=gen, device=device, dtype=dtype)  # x: [M, hidden]
        w = torch.randn(cfg.hidden, d, generator=gen, device=device, dtype=dtype) / cfg.hidden**0.5  # [hidden, D]
        offline = time_stats(time_fn(lambda: F.pad(w, (0, dp - d)), device=device, warmup=2, repeats=10))
        wp = F.pad(w, (0, dp - d))  # wp: [hidden, Dp], zero columns
        y, yp = torch.empty(cfg.m, d, device=device, dtype=dtype), torch.empty(cfg.m, dp, device=device, dtype=dtype)
        variants: list[Variant] = [
            ("irregular", lambda: torch.matmul(x, w, out=y), lambda o: o),
            ("padded", lambda: torch.matmul(x, wp, out=yp), lambda o: o[:, :d]),  # y[:, :D]: a free view
        ]
        oracle = x[:64].float() @ w.float()  # first 64 rows: [64, N]
    else:
        x = torch.randn(cfg.m, d, generator=gen, device=device, dtype=dtype)  # x: [M, D] (run-time activation)
        w = torch.randn(d, cfg.hidden, generator=gen, device=device, dtype=dtype) / d**0.5  # w: [D, hidden]
        offline = time_stats(time_fn(lambda: F.pad(w, (0, 0, 0, dp - d)), device=device, warmup=2, repeats=10))
        wp = F.pad(w, (0, 0, 0, dp - d))  # wp: [Dp, hidden], zero rows
        xp = torch.zeros(cfg.m, dp, device=device, dtype=dtype)  # xp: [M, Dp], pad columns stay 0
        y = torch.empty(cfg.m, cfg.hidden, device=device, dtype=dtype)

        def padded() -> torch.Tensor:
            xp[:, :d].copy_(x)  # the per-call pad: write the activation into the padded buffer
            return torch.matmul(xp, wp, out=y)

        variants = [
            ("irregular", lambda: torch.matmul(x, w, out=y), lambda o: o),
            ("padded", padded, lambda o: o),
            ("padded_kernel", lambda: torch.matmul(xp, wp, out=y), lambda o: o),
        ]
        oracle = x[:64].float() @ w.float()  # first 64 rows: [64, N]
    return [(n, f, _first_rows(c)) for n, f, c in variants], oracle, offline["median_ms"]


def _sdpa_variants(cfg: PadConfig, device: str) -> tuple[list[Variant], torch.Tensor, float]:
    dtype, d, dp = sc.DTYPES[cfg.dtype], cfg.dim, cfg.padded_dim
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    shape = (cfg.batch, cfg.heads, cfg.seq_len, d)
    q, k, v = (torch.randn(*shape, generator=gen, device=device, dtype=dtype) for _ in range(3))  # [B, H, T, D]
    qp, kp, vp = (torch.zeros(*shape[:-1], dp, device=device, dtype=dtype) for _ in range(3))  # [B, H, T, Dp]
    for src, dst in ((q, qp), (k, kp), (v, vp)):
        dst[..., :d].copy_(src)
    scale = 1.0 / math.sqrt(d)  # the irregular model's scale, not 1/sqrt(Dp)

    def padded() -> torch.Tensor:
        for src, dst in ((q, qp), (k, kp), (v, vp)):
            dst[..., :d].copy_(src)  # per-call pad of fresh q, k, v
        return F.scaled_dot_product_attention(qp, kp, vp, is_causal=cfg.causal, scale=scale)

    variants: list[Variant] = [
        ("irregular", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal), lambda o: o[0, 0]),
        ("padded", padded, lambda o: o[0, 0, :, :d]),
        ("padded_kernel", lambda: F.scaled_dot_product_attention(qp, kp, vp, is_causal=cfg.causal, scale=scale),
         lambda o: o[0, 0, :, :d]),
    ]
    return variants, sdpa_shapes.reference_slice(q, k, v, cfg.causal), 0.0


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Time the irregular shape, the padded one with its per-call pad, and the padded kernel alone."""
    cfg = _config(params)
    device = sc.resolve_device(cfg.device, ctx.device)
    backend = cfg.backend if cfg.op == "sdpa" else "default"
    points: list[dict[str, Any]] = []
    with sc.cpu_threads(device, cfg.threads):
        variants, oracle, offline_ms = (_gemm_variants if cfg.op == "gemm" else _sdpa_variants)(cfg, device)
        for i, (name, fn, crop) in enumerate(variants):
            ctx.progress(i, len(variants), name)
            p = _time_variant(cfg, device, name, fn, crop, oracle, backend)
            points.append(p)
            detail = f"median {time_stats(p['times_ms'])['median_ms']:.4f} ms" if p["status"] == "ok" else p["reason"]
            ctx.log.info("pad %s dim=%d->%d %s: %s", cfg.op, cfg.dim, cfg.padded_dim, name, detail)
    ctx.progress(len(variants), len(variants), "done")
    return {"kind": KIND, "config": asdict(cfg), "env": sc.env_info(device), "padded_dim": cfg.padded_dim,
            "useful_flops": cfg.flops(cfg.dim), "padded_flops": cfg.flops(cfg.padded_dim),
            "offline_pad_ms": offline_ms, "points": points}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Flat summary: irregular vs padded medians, pad overhead, speedups, wasted FLOPs, errors."""
    cfg = raw["config"]
    useful, padded = raw["useful_flops"], raw["padded_flops"]
    out: dict[str, Any] = {
        "padded_dim": raw["padded_dim"],
        "aligned": int(cfg["dim"] % cfg["align"] == 0),
        "device_used": raw["env"]["device"],
        "wasted_flops_frac": 1.0 - useful / padded,
        "memory_overhead_frac": raw["padded_dim"] / cfg["dim"] - 1.0,
        "offline_pad_ms": raw["offline_pad_ms"],
        "useful_gflop": useful / 1e9,
    }
    med: dict[str, float | None] = {}
    points = {p["variant"]: p for p in raw["points"]}
    if "padded_kernel" not in points:  # gemm vary=n: nothing is padded per call
        points["padded_kernel"] = points["padded"]
    for name, p in points.items():
        ok = p["status"] == "ok"
        st = time_stats(p["times_ms"]) if ok else {}
        med[name] = st.get("median_ms")
        out[f"{name}_status"] = p["status"]
        out[f"{name}_reason"] = p.get("reason", "")
        out[f"{name}_ms"] = med[name]
        out[f"{name}_iqr_ms"] = st.get("iqr_ms")
        out[f"{name}_max_abs_err"] = p.get("max_abs_err")
        if "picked" in p or not ok:
            out[f"{name}_picked_backend"] = p.get("picked", "")
    out["pad_overhead_ms"] = (
        med["padded"] - med["padded_kernel"] if med["padded"] is not None and med["padded_kernel"] is not None else None
    )
    # > 1: padding pays off (the padded call, pad included, is faster than the irregular one)
    out["speedup_padded"] = sc.ratio(med["irregular"], med["padded"])
    out["speedup_padded_kernel"] = sc.ratio(med["irregular"], med["padded_kernel"])
    out["useful_tflops_irregular"] = sc.tflops(useful, med["irregular"])
    out["useful_tflops_padded"] = sc.tflops(useful, med["padded"])
    out["padded_tflops_kernel"] = sc.tflops(padded, med["padded_kernel"])
    return out


def plots(df: pd.DataFrame, outdir: Path) -> list[Path]:
    """Irregular vs padded time and the padding speedup versus ``dim``, one panel per op."""
    import pandas as pd

    outdir = Path(outdir)
    df = sc.with_defaults(df, DEFAULTS)
    if df.empty or "dim" not in df.columns:
        return []
    # one panel per (op, vary) for GEMM or (op, backend) for SDPA; lines per align and the rest
    df = df.assign(panel=[f"gemm vary={r.vary}" if r.op == "gemm" else f"sdpa {r.backend}"
                          for r in df[["op", "vary", "backend"]].itertuples(index=False)])
    series = sc.varying(df, ["align", "dtype", "seq_len", "batch", "heads", "m", "hidden", "causal", "device_used"])
    common = {"x": "dim", "series": series, "facet": "panel", "aligned_col": "aligned"}
    long = pd.concat(
        [df.assign(variant=v, time_ms=df[f"{v}_ms"]) for v in _VARIANTS if f"{v}_ms" in df.columns],
        ignore_index=True,
    )
    made = [
        sc.plot_vs_dim(
            long, ys=[("time_ms", "median time per call [ms]")],
            path=outdir / "pad_time_vs_dim.png",
            title="irregular dim versus padded to ceil(dim, align) (padded: per-call pad included)",
            **{**common, "series": ["variant"] + series, "aligned_col": "-"},
        ),
        sc.plot_vs_dim(
            df, ys=[("speedup_padded", "irregular / padded (>1: pad pays off)"),
                    ("wasted_flops_frac", "wasted FLOPs fraction")],
            path=outdir / "pad_speedup_vs_dim.png", title="padding speedup and wasted FLOPs", **common,
        ),
    ]
    return [p for p in made if p is not None]
