"""Task kind ``gemm_shapes``: how fast ``torch.matmul`` is on projection shapes with an
aligned or irregular dimension (PaLU-style low-rank projections end up with ranks like 107).

One run is one shape point: ``M`` tokens times a projection whose varied side is ``dim``:

- ``vary: n`` (down-projection, the rank is the output width):  ``[M, hidden] @ [hidden, dim]``
- ``vary: k`` (up-projection, the rank is the reduction dim):    ``[M, dim] @ [dim, hidden]``

Next to ``dim`` the same run times the aligned sizes ``ceil(dim, align)`` and
``ceil(dim, align_coarse)`` (e.g. 107 -> 112 and 128) with identical settings, so the
slowdown of the irregular size is a self-contained ratio measured back to back on the
same device. The aligned sizes do *more* FLOPs: a slowdown > 1 means the irregular shape
is slower outright, not just per FLOP.

On CPU fp16/bf16 matmul works but is ~50x slower than fp32 (no fast kernels): use fp32
there. Parameters and defaults: ``DEFAULTS``; timing keys in ``_shapes_common``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ecc_kv.experiments import _shapes_common as sc
from ecc_kv.timing import time_stats

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.context import RunContext

KIND = "gemm_shapes"
VARY = ("n", "k")
DEFAULTS: dict[str, Any] = {
    "m": 4096,  # tokens (rows of the activation)
    "hidden": 4096,  # the model width on the other side of the projection
    "dim": 128,  # the varied (rank / head) dimension
    "vary": "n",
    "dtype": "fp16",
    "align": 8,  # fine reference: ceil(dim, align); 8 fp16 values = one 16-byte vector
    "align_coarse": 64,  # coarse reference (0: none)
    **sc.TIMING_DEFAULTS,
}


@dataclass(frozen=True)
class GemmConfig:
    m: int
    hidden: int
    dim: int
    vary: str
    dtype: str
    align: int
    align_coarse: int
    warmup: int
    repeats: int
    inner: int
    device: str
    seed: int
    threads: int

    def mkn(self, dim: int) -> tuple[int, int, int]:
        """(M, K, N) of the matmul when the varied side is ``dim``."""
        return (self.m, self.hidden, dim) if self.vary == "n" else (self.m, dim, self.hidden)


def _config(params: dict[str, Any]) -> GemmConfig:
    sc.check_unknown(params, DEFAULTS, KIND)
    return GemmConfig(
        m=sc.pos_int(params, "m", DEFAULTS["m"]),
        hidden=sc.pos_int(params, "hidden", DEFAULTS["hidden"]),
        dim=sc.pos_int(params, "dim", DEFAULTS["dim"]),
        vary=sc.choice(params, "vary", VARY, DEFAULTS["vary"]),
        dtype=sc.choice(params, "dtype", sc.DTYPES, DEFAULTS["dtype"]),
        align=sc.pos_int(params, "align", DEFAULTS["align"]),
        align_coarse=sc.pos_int(params, "align_coarse", DEFAULTS["align_coarse"], minimum=0),
        **sc.timing_params(params),
    )


def validate(params: dict[str, Any]) -> None:
    """Raise ValueError naming the bad key and the allowed values (called before submission)."""
    _config(params)


def _time_point(cfg: GemmConfig, dim: int, role: str, device: str) -> dict[str, Any]:
    m, k, n = cfg.mkn(dim)
    dtype = sc.DTYPES[cfg.dtype]
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    a = torch.randn(m, k, generator=gen, device=device, dtype=dtype)  # a: [M, K] activations
    b = torch.randn(k, n, generator=gen, device=device, dtype=dtype) / k**0.5  # b: [K, N] weight
    out = torch.empty(m, n, device=device, dtype=dtype)  # out: [M, N]
    res = sc.measure(lambda: torch.matmul(a, b, out=out), device, cfg.warmup, cfg.repeats, cfg.inner)
    return {"role": role, "dim": dim, "m": m, "k": k, "n": n, "flops": 2.0 * m * k * n, **res}


def run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Time the target shape and its aligned references; every repeat goes to ``raw``."""
    cfg = _config(params)
    device = sc.resolve_device(cfg.device, ctx.device)

    def measure(role: str, dim: int) -> dict[str, Any]:
        point = _time_point(cfg, dim, role, device)
        med = time_stats(point["times_ms"])["median_ms"]
        ctx.log.info("gemm %s %s %s: median %.4f ms", role, cfg.mkn(dim), cfg.dtype, med)
        return point

    with sc.cpu_threads(device, cfg.threads):
        points = sc.measure_roles(cfg.dim, cfg.align, cfg.align_coarse, measure, ctx, "dim")
    return {"kind": KIND, "config": asdict(cfg), "env": sc.env_info(device), "points": points}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Flat summary: stats of the target, TFLOP/s, and slowdown versus each aligned reference."""
    cfg = raw["config"]
    by_role = {p["role"]: p for p in raw["points"]}
    target = by_role["target"]
    stats = time_stats(target["times_ms"])
    out: dict[str, Any] = {
        "shape": "x".join(str(target[c]) for c in ("m", "k", "n")),
        "aligned": int(cfg["dim"] % cfg["align"] == 0),
        "device_used": raw["env"]["device"],
        "calls_per_repeat": target["inner"],
        "gflop": target["flops"] / 1e9,
        **stats,
        "tflops": sc.tflops(target["flops"], stats["median_ms"]),
    }
    for role, prefix in (("aligned", "aligned"), ("coarse", "coarse")):
        ref = by_role.get(role)
        if ref is None:
            continue
        med = time_stats(ref["times_ms"])["median_ms"]
        out[f"{prefix}_dim"] = ref["dim"]
        out[f"{prefix}_median_ms"] = med
        out[f"{prefix}_tflops"] = sc.tflops(ref["flops"], med)
        # > 1: the irregular size is slower although it does fewer FLOPs than the reference
        out[f"slowdown_vs_{prefix}"] = sc.ratio(stats["median_ms"], med)
        # FLOP-rate ratio: how much of the aligned size's throughput the target reaches
        out[f"tflops_frac_of_{prefix}"] = sc.ratio(out["tflops"], out[f"{prefix}_tflops"])
    return out


def plots(df: pd.DataFrame, outdir: Path) -> list[Path]:
    """Time, TFLOP/s and slowdown versus ``dim``; one panel per ``vary``, one line per dtype (and
    any other varying config); irregular dims marked with red crosses. Plus the highlight:
    dim 107 versus 112 and 128 as bars (``gemm_highlight.png``) and a table (``.md``)."""
    outdir = Path(outdir)
    df = sc.with_defaults(df, DEFAULTS)
    series = sc.varying(df, ["dtype", "m", "hidden", "align", "device_used"])
    common = {"x": "dim", "series": series, "facet": "vary", "aligned_col": "aligned"}
    made = [
        sc.plot_vs_dim(
            df,
            ys=[("median_ms", "median time per matmul [ms]"), ("tflops", "TFLOP/s")],
            path=outdir / "gemm_time_tflops_vs_dim.png",
            title="torch.matmul on projection shapes (vary=n: [M,hidden]@[hidden,dim]; vary=k: [M,dim]@[dim,hidden])",
            **common,
        ),
        sc.plot_vs_dim(
            df,
            ys=[("slowdown_vs_aligned", "time / time(ceil(dim, align))"),
                ("slowdown_vs_coarse", "time / time(ceil(dim, align_coarse))")],
            path=outdir / "gemm_slowdown_vs_dim.png",
            title="matmul slowdown versus the next aligned size (same run)",
            **common,
        ),
        sc.write_highlight(highlight(df), _highlight_groups(df), "dim", outdir / "gemm_highlight.png",
                           "matmul slowdown of the irregular dim"),
    ]
    return [p for p in made if p is not None]


def _highlight_groups(df: pd.DataFrame) -> list[str]:
    return ["vary", "dtype"] + sc.varying(df, ["m", "hidden", "align", "align_coarse", "device_used"])


def highlight(df: pd.DataFrame) -> pd.DataFrame | None:
    """dim 107 (or the first irregular dim) per vary/dtype: its time next to ceil(dim, 8) and
    ceil(dim, 64) measured in the same run, and the slowdowns (also written as
    ``gemm_highlight.md`` by :func:`plots`)."""
    return sc.highlight_table(df, "dim", _highlight_groups(df))
