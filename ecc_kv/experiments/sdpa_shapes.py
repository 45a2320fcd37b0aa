"""Task kind ``sdpa_shapes``: ``scaled_dot_product_attention`` speed per backend across head
dims (aligned 64/96/112/128 versus irregular 107), sequence lengths, batch and heads.

One run is one shape point and one ``backend``:

- ``flash`` / ``efficient`` / ``math`` / ``cudnn``: forced with
  ``torch.nn.attention.sdpa_kernel``. A backend that refuses the shape (or is absent from
  this torch build) is *data*: the run succeeds with ``status: refused`` and the reason
  PyTorch gave (its warnings plus the error text), and no time.
- ``default``: PyTorch chooses; the run records which backend it chose.

Which backend runs is found by profiling one call (``torch.profiler``, CPU activity only)
and reading the dispatched ATen op: ``aten::_scaled_dot_product_flash_attention`` (and
``..._for_cpu``) = flash, ``..._efficient_attention`` = efficient, ``..._cudnn_attention``
= cudnn, ``..._fused_attention_overrideable`` = overrideable, ``..._attention_math`` =
math. Every run records ``default_backend`` (PyTorch's own pick for that shape, profiled
once per shape per process and kept in ``ctx.shared``); a forced run reports the forced
backend as ``picked_backend`` (it is the only one enabled).

As in ``gemm_shapes``, the run also times ``ceil(head_dim, align)`` and
``ceil(head_dim, align_coarse)`` (107 -> 112 and 128) with the same backend, so
``slowdown_vs_aligned`` is measured back to back. Each output is checked against a plain
fp32 softmax(QK^T)V on one (batch, head) slice (``max_abs_err``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ecc_kv.experiments import _shapes_common as sc
from ecc_kv.timing import time_stats

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.context import RunContext

KIND = "sdpa_shapes"
BACKENDS = ("default", "flash", "efficient", "math", "cudnn")
_SDP_NAMES = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH", "cudnn": "CUDNN_ATTENTION"}
# ATen op name fragment -> backend; fused kernels first, math last (it may appear as a fallback)
_OP_FRAGMENTS = (
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_efficient_attention", "efficient"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_fused_attention_overrideable", "overrideable"),
    ("_scaled_dot_product_attention_math", "math"),
)
_STAT_KEYS = tuple(time_stats([1.0]))
DEFAULTS: dict[str, Any] = {
    "batch": 4,
    "heads": 32,
    "seq_len": 2048,  # key/value length
    "q_len": None,  # query length; None = seq_len (prefill); 1 = one decode step
    "head_dim": 128,
    "dtype": "fp16",
    "backend": "default",
    "causal": False,
    "align": 8,
    "align_coarse": 64,
    **sc.TIMING_DEFAULTS,
}


@dataclass(frozen=True)
class SdpaConfig:
    batch: int
    heads: int
    seq_len: int
    q_len: int
    head_dim: int
    dtype: str
    backend: str
    causal: bool
    align: int
    align_coarse: int
    warmup: int
    repeats: int
    inner: int
    device: str
    seed: int
    threads: int


def _config(params: dict[str, Any]) -> SdpaConfig:
    sc.check_unknown(params, DEFAULTS, KIND)
    seq_len = sc.pos_int(params, "seq_len", DEFAULTS["seq_len"])
    q_len = sc.opt_pos_int(params, "q_len") or seq_len
    causal = sc.flag(params, "causal", DEFAULTS["causal"])
    if causal and q_len != seq_len:
        # PyTorch's is_causal mask is top-left aligned: a 1-token query would see only key 0
        raise ValueError(f"causal=true needs q_len == seq_len (got q_len={q_len}, seq_len={seq_len}); "
                         "use causal=false for decode-style shapes")
    return SdpaConfig(
        batch=sc.pos_int(params, "batch", DEFAULTS["batch"]),
        heads=sc.pos_int(params, "heads", DEFAULTS["heads"]),
        seq_len=seq_len,
        q_len=q_len,
        head_dim=sc.pos_int(params, "head_dim", DEFAULTS["head_dim"]),
        dtype=sc.choice(params, "dtype", sc.DTYPES, DEFAULTS["dtype"]),
        backend=sc.choice(params, "backend", BACKENDS, DEFAULTS["backend"]),
        causal=causal,
        align=sc.pos_int(params, "align", DEFAULTS["align"]),
        align_coarse=sc.pos_int(params, "align_coarse", DEFAULTS["align_coarse"], minimum=0),
        **sc.timing_params(params),
    )


def validate(params: dict[str, Any]) -> None:
    """Raise ValueError naming the bad key and the allowed values (called before submission)."""
    _config(params)


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, causal: bool) -> float:
    """FLOPs of QK^T plus PV (2 multiply-adds each) over the unmasked (query, key) pairs."""
    pairs = sum(min(i + 1, kv_len) for i in range(q_len)) if causal else q_len * kv_len
    return 4.0 * batch * heads * head_dim * pairs


def backend_context(backend: str) -> AbstractContextManager[Any]:
    """``sdpa_kernel`` forcing one backend, or a no-op for ``default``; KeyError-free: a backend
    this torch build does not know raises RuntimeError (recorded as a refusal by the caller)."""
    if backend == "default":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    member = getattr(SDPBackend, _SDP_NAMES[backend], None)
    if member is None:
        raise RuntimeError(f"this torch build ({torch.__version__}) has no SDPBackend.{_SDP_NAMES[backend]}")
    return sdpa_kernel([member])


def picked_backend(call: Callable[[], object]) -> str:
    """Which backend ``call`` dispatches to, read from the ATen ops the profiler records."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    names = {e.name for e in prof.events()}
    for fragment, backend in _OP_FRAGMENTS:
        if any(fragment in n for n in names):
            return backend
    return "unknown"


def reference_slice(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None = None
) -> torch.Tensor:
    """Plain fp32 softmax(q k^T * scale) v for batch 0, head 0 (scale defaults to 1/sqrt(D)):
    the oracle every backend's output is checked against."""
    q0, k0, v0 = (t[0, 0].float() for t in (q, k, v))  # q0: [Tq, D], k0/v0: [Tk, D]
    s = q0 @ k0.T * (scale if scale is not None else 1.0 / math.sqrt(q0.shape[-1]))  # s: [Tq, Tk]
    if causal:
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v0  # [Tq, D]


def refusal_text(exc: BaseException, caught: list[warnings.WarningMessage]) -> str:
    msgs = [str(w.message).strip() for w in caught]
    msgs = list(dict.fromkeys(m for m in msgs if m))  # de-duplicate, keep order
    return " | ".join(msgs + [f"{type(exc).__name__}: {str(exc).strip()}"])[:2000]


def _time_point(cfg: SdpaConfig, head_dim: int, role: str, device: str, shared: dict[str, Any]) -> dict[str, Any]:
    dtype = sc.DTYPES[cfg.dtype]
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    q = torch.randn(cfg.batch, cfg.heads, cfg.q_len, head_dim, generator=gen, device=device, dtype=dtype)
    k = torch.randn(cfg.batch, cfg.heads, cfg.seq_len, head_dim, generator=gen, device=device, dtype=dtype)
    v = torch.randn(cfg.batch, cfg.heads, cfg.seq_len, head_dim, generator=gen, device=device, dtype=dtype)
    # q: [B, H, Tq, D], k/v: [B, H, Tk, D]

    def call() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=cfg.causal)

    point: dict[str, Any] = {
        "role": role, "head_dim": head_dim,
        "flops": attention_flops(cfg.batch, cfg.heads, cfg.q_len, cfg.seq_len, head_dim, cfg.causal),
    }
    # PyTorch's own pick depends only on the shape/dtype/flags: profile it once per process
    pick_key = ("sdpa_default_backend", device, cfg.dtype, cfg.batch, cfg.heads, cfg.q_len, cfg.seq_len,
                head_dim, cfg.causal)
    if pick_key not in shared:
        try:
            shared[pick_key] = picked_backend(call)
        except RuntimeError as exc:  # incl. out of memory: the forced backend below may still fit
            shared[pick_key] = f"none ({type(exc).__name__})"
    point["default_backend"] = shared[pick_key]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with backend_context(cfg.backend):
                out = call()  # out: [B, H, Tq, D]
                # forced: only that backend is enabled, so it is the one that ran
                point["picked"] = point["default_backend"] if cfg.backend == "default" else cfg.backend
                point["max_abs_err"] = float((out[0, 0].float() - reference_slice(q, k, v, cfg.causal)).abs().max())
                del out
                point.update(sc.measure(call, device, cfg.warmup, cfg.repeats, cfg.inner))
        point["status"] = "ok"
    except sc.OOM as exc:
        point.update(status="oom", reason=f"{type(exc).__name__}: {str(exc).strip()[:500]}")
    except RuntimeError as exc:  # the forced backend does not accept this shape (or is absent)
        point.update(status="refused", reason=refusal_text(exc, caught))
    return point


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Time one backend on the target head dim and its aligned references; refusals are data."""
    cfg = _config(params)
    device = sc.resolve_device(cfg.device, ctx.device)

    def measure(role: str, dim: int) -> dict[str, Any]:
        p = _time_point(cfg, dim, role, device, ctx.shared)
        if p["status"] == "ok":
            ctx.log.info("sdpa %s %s D=%d: %s, median %.4f ms", cfg.backend, role, dim, p["picked"],
                         time_stats(p["times_ms"])["median_ms"])
        else:
            ctx.log.info("sdpa %s %s D=%d: %s: %s", cfg.backend, role, dim, p["status"], p["reason"])
        if device == "cuda":
            torch.cuda.empty_cache()
        return p

    with sc.cpu_threads(device, cfg.threads):
        points = sc.measure_roles(cfg.head_dim, cfg.align, cfg.align_coarse, measure, ctx, "head_dim")
    return {"kind": KIND, "config": asdict(cfg), "env": sc.env_info(device), "points": points}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Flat summary: status/refusal, picked and default backend, stats, TFLOP/s, slowdown vs aligned."""
    cfg = raw["config"]
    by_role = {p["role"]: p for p in raw["points"]}
    target = by_role["target"]
    ok = target["status"] == "ok"
    stats: dict[str, Any] = time_stats(target["times_ms"]) if ok else dict.fromkeys(_STAT_KEYS)
    out: dict[str, Any] = {
        "status": target["status"],
        "accepted": int(ok),
        "refusal_reason": target.get("reason", ""),
        "picked_backend": target.get("picked", ""),
        "default_backend": target["default_backend"],
        "aligned": int(cfg["head_dim"] % cfg["align"] == 0),
        "device_used": raw["env"]["device"],
        "gflop": target["flops"] / 1e9,
        "calls_per_repeat": target.get("inner"),
        **stats,
        "tflops": sc.tflops(target["flops"], stats["median_ms"]),
        "max_abs_err": target.get("max_abs_err"),
    }
    for role in ("aligned", "coarse"):
        ref = by_role.get(role)
        if ref is None:
            continue
        med = time_stats(ref["times_ms"])["median_ms"] if ref["status"] == "ok" else None
        out[f"{role}_dim"] = ref["head_dim"]
        out[f"{role}_status"] = ref["status"]
        out[f"{role}_picked_backend"] = ref.get("picked", "")
        out[f"{role}_median_ms"] = med
        out[f"{role}_tflops"] = sc.tflops(ref["flops"], med)
        out[f"slowdown_vs_{role}"] = sc.ratio(stats["median_ms"], med)
    return out


def _acceptance_plot(df: pd.DataFrame, path: Path) -> Path | None:
    """Backend x head_dim grid: green = accepted everywhere, red = refused, with the backend
    that actually ran written in each cell (what ``default`` resolves to, in its row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if df.empty or not {"backend", "head_dim", "accepted"} <= set(df.columns):
        return None
    dims = sorted(df["head_dim"].unique())
    backends = [b for b in BACKENDS if b in set(df["backend"])]
    frac = df.groupby(["backend", "head_dim"])["accepted"].mean()
    fig, ax = plt.subplots(figsize=(0.8 * len(dims) + 2.5, 0.6 * len(backends) + 1.5))
    grid = [[frac.get((b, d), float("nan")) for d in dims] for b in backends]
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i, b in enumerate(backends):
        for j, d in enumerate(dims):
            picks = df[(df["backend"] == b) & (df["head_dim"] == d)].get("picked_backend")
            text = "/".join(sorted({p for p in picks if isinstance(p, str) and p})) if picks is not None else ""
            ax.text(j, i, text or "refused", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(dims)), [str(d) for d in dims])
    ax.set_yticks(range(len(backends)), backends)
    ax.set_xlabel("head_dim")
    ax.set_title("SDPA backend acceptance (cell text: backend that ran)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(df: pd.DataFrame, outdir: Path) -> list[Path]:
    """Time and TFLOP/s versus head_dim per backend (one panel per seq_len), slowdown versus
    the aligned sizes, the backend acceptance grid, and the highlight (head_dim 107 versus
    112 and 128 per backend: ``sdpa_highlight.png`` and ``sdpa_highlight.md``); irregular
    head dims marked in red."""
    outdir = Path(outdir)
    df = sc.with_defaults(df, DEFAULTS)
    series = ["backend"] + sc.varying(df, ["dtype", "causal", "batch", "heads", "q_len", "align", "device_used"])
    series = [s for s in series if s in df.columns]
    common = {"x": "head_dim", "series": series, "facet": "seq_len", "aligned_col": "aligned"}
    made = [
        sc.plot_vs_dim(
            df, ys=[("median_ms", "median time per call [ms]"), ("tflops", "TFLOP/s")],
            path=outdir / "sdpa_time_tflops_vs_head_dim.png",
            title="scaled_dot_product_attention per backend (refused shapes have no point)", **common,
        ),
        sc.plot_vs_dim(
            df, ys=[("slowdown_vs_aligned", "time / time(ceil(D, align))"),
                    ("slowdown_vs_coarse", "time / time(ceil(D, align_coarse))")],
            path=outdir / "sdpa_slowdown_vs_head_dim.png",
            title="SDPA slowdown versus the next aligned head dim (same backend, same run)", **common,
        ),
        _acceptance_plot(df, outdir / "sdpa_backend_acceptance.png"),
        sc.write_highlight(highlight(df), _highlight_groups(df), "head_dim", outdir / "sdpa_highlight.png",
                           "SDPA slowdown of the irregular head dim per backend"),
    ]
    return [p for p in made if p is not None]


def _highlight_groups(df: pd.DataFrame) -> list[str]:
    return ["seq_len", "backend"] + sc.varying(df, ["dtype", "causal", "batch", "heads", "q_len", "align",
                                                   "align_coarse", "device_used"])


def highlight(df: pd.DataFrame) -> pd.DataFrame | None:
    """head_dim 107 (or the first irregular one) per seq_len and backend: status, the backend
    that ran, its time next to ceil(D, 8) and ceil(D, 64) timed in the same run, slowdowns
    (also written as ``sdpa_highlight.md`` by :func:`plots`)."""
    return sc.highlight_table(df, "head_dim", _highlight_groups(df))
