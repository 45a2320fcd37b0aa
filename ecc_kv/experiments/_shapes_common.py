"""Shared pieces of the shape benchmarks (``gemm_shapes``, ``sdpa_shapes``, ``pad_shapes``).

Parameter checking that names the key and the allowed values, dtype/device resolution,
the timing loop (``ecc_kv.timing`` with an auto-calibrated inner loop so microsecond
kernels are not dominated by launch gaps between CUDA events), and the plot helper that
draws a metric against a dimension with aligned and irregular points marked apart.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ecc_kv.timing import time_fn

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# Timing keys every shape task accepts; ``inner=0`` means "calibrate": enough calls per
# timed repeat that one repeat lasts about ``TARGET_REPEAT_MS``.
# ``threads`` (CPU only, 0 = torch's default) pins the intra-op thread count: on a shared
# laptop/CI box OpenMP threads that wait for each other turn a 40 us matmul into 30 ms.
TIMING_DEFAULTS: dict[str, Any] = {"warmup": 10, "repeats": 50, "inner": 0, "device": "auto", "seed": 0, "threads": 0}
TARGET_REPEAT_MS = 1.0
# an out-of-memory shape is data (status "oom"), not a crash; torch.OutOfMemoryError is newer
OOM: type[Exception] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
MAX_INNER = 1000


# --------------------------------------------------------------------------- params


def check_unknown(params: Mapping[str, Any], allowed: Iterable[str], kind: str) -> None:
    """Reject keys the task does not know (a typo would otherwise be silently ignored)."""
    allowed = set(allowed)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for task {kind}; possible parameters are: {sorted(allowed)}"
        )


def choice(params: Mapping[str, Any], key: str, choices: Iterable[str], default: str) -> str:
    """``params[key]`` (or ``default``), which must be one of ``choices``."""
    choices = tuple(choices)
    value = params.get(key, default)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{key}={value!r} is not valid; allowed values: {list(choices)}")
    return value


def pos_int(params: Mapping[str, Any], key: str, default: int | None, minimum: int = 1) -> int:
    """``params[key]`` as an int >= ``minimum`` (bools and floats like 1.5 are refused)."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{key}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{key}={value!r} must be an integer >= {minimum}")
    return value


def nonneg_float(params: Mapping[str, Any], key: str, default: float) -> float:
    """``params[key]`` as a float >= 0 (bools refused): e.g. ``host_lead_ms``."""
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{key}={value!r} must be a number >= 0")
    return float(value)


def opt_pos_int(params: Mapping[str, Any], key: str) -> int | None:
    """Like :func:`pos_int` but ``None`` (absent or null) is allowed and kept."""
    if params.get(key) is None:
        return None
    return pos_int(params, key, None)


def flag(params: Mapping[str, Any], key: str, default: bool) -> bool:
    """A boolean parameter; YAML ``true``/``false`` only (no truthy strings)."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r} must be true or false")
    return value


def timing_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The validated timing/device keys shared by all shape tasks."""
    return {
        "warmup": pos_int(params, "warmup", TIMING_DEFAULTS["warmup"], minimum=0),
        "repeats": pos_int(params, "repeats", TIMING_DEFAULTS["repeats"]),
        "inner": pos_int(params, "inner", TIMING_DEFAULTS["inner"], minimum=0),
        "device": choice(params, "device", DEVICES, TIMING_DEFAULTS["device"]),
        "seed": pos_int(params, "seed", TIMING_DEFAULTS["seed"], minimum=0),
        "threads": pos_int(params, "threads", TIMING_DEFAULTS["threads"], minimum=0),
    }


def resolve_device(requested: str, ctx_device: str) -> str:
    """``auto`` follows the run context; ``cuda`` without a GPU is a run-time error."""
    device = ctx_device if requested == "auto" else requested
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA GPU is visible to this process")
    return device


def ceil_to(n: int, align: int) -> int:
    """Smallest multiple of ``align`` that is >= ``n``."""
    return -(-n // align) * align


def ref_dims(dim: int, align: int, align_coarse: int) -> tuple[int, int | None]:
    """The aligned reference sizes measured next to ``dim``: fine and (optionally) coarse."""
    fine = ceil_to(dim, align)
    coarse = ceil_to(dim, align_coarse) if align_coarse > 0 else None
    return fine, coarse


def measure_roles(
    dim: int, align: int, align_coarse: int, measure: Callable[[str, int], dict[str, Any]], ctx: Any, what: str
) -> list[dict[str, Any]]:
    """Points for ``dim`` ("target") and its aligned references ("aligned", "coarse").

    ``measure(role, dim)`` times one size; a reference equal to a size already timed (``dim`` is
    aligned already) is reused, marked ``reused``, not timed twice. Progress goes to ``ctx``.
    """
    fine, coarse = ref_dims(dim, align, align_coarse)
    roles = [("target", dim), ("aligned", fine)] + ([("coarse", coarse)] if coarse is not None else [])
    points: list[dict[str, Any]] = []
    measured: dict[int, dict[str, Any]] = {}
    for i, (role, d) in enumerate(roles):
        if d in measured:
            points.append({**measured[d], "role": role, "reused": True})
            continue
        ctx.progress(i, len(roles), f"{role} {what}={d}")
        measured[d] = measure(role, d)
        points.append(measured[d])
    ctx.progress(len(roles), len(roles), "done")
    return points


@contextmanager
def cpu_threads(device: str, threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op CPU threads (0 or a GPU device: unchanged)."""
    if device != "cpu" or threads == 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def env_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on (the run record has more; this keeps raw self-contained)."""
    info: dict[str, Any] = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = list(torch.cuda.get_device_capability())
        # fp32 matmul numbers mean different things with TF32 on or off
        info["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    else:
        info["threads"] = torch.get_num_threads()
    return info


# --------------------------------------------------------------------------- timing


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], device: str, warmup: int, repeats: int, inner: int) -> dict[str, Any]:
    """Per-call milliseconds of ``fn`` for every repeat, after warm-up.

    Each timed repeat runs ``fn`` ``inner`` times back to back and is divided by
    ``inner``; with ``inner == 0`` it is calibrated so a repeat lasts about
    ``TARGET_REPEAT_MS`` (on a GPU that keeps the queue full, so a 10 us kernel is not
    timed together with the launch gap between its CUDA events).
    """
    for _ in range(warmup):
        fn()
    sync(device)
    if inner == 0:
        probe = time_fn(fn, device=device, warmup=0, repeats=3)
        one = max(sorted(probe)[1], 1e-6)
        inner = max(1, min(MAX_INNER, math.ceil(TARGET_REPEAT_MS / one)))

    def loop() -> None:
        for _ in range(inner):
            fn()

    times = time_fn(loop, device=device, warmup=0, repeats=repeats)
    return {"inner": inner, "times_ms": [t / inner for t in times]}


def finite_or_none(x: float | None) -> float | None:
    """JSON-safe number: NaN/inf become ``None`` (null)."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return finite_or_none(a / b)


def tflops(flops: float, median_ms: float | None) -> float | None:
    if median_ms is None or median_ms <= 0:
        return None
    return flops / (median_ms * 1e-3) / 1e12


# --------------------------------------------------------------------------- plots


def with_defaults(df: Any, defaults: Mapping[str, Any]) -> Any:
    """``df`` with the task defaults filled in for config columns the spec never set (the
    aggregator only has the spec's keys), so plots can group by any parameter."""
    missing = {k: v for k, v in defaults.items() if k not in df.columns}
    return df.assign(**{k: [v] * len(df) for k, v in missing.items()}) if missing else df


def varying(df: Any, candidates: Iterable[str]) -> list[str]:
    """The candidate columns that take more than one value in ``df`` (they label series)."""
    return [c for c in candidates if c in df.columns and df[c].astype(str).nunique() > 1]


def plot_vs_dim(
    df: Any,
    *,
    x: str,
    ys: list[tuple[str, str]],
    series: list[str],
    facet: str | None,
    aligned_col: str,
    path: Path,
    title: str,
) -> Path | None:
    """One row of panels per metric in ``ys`` ((column, axis label)), one column per ``facet``
    value; one line per ``series`` combination, with the same colour in every panel; aligned
    points drawn as dots, irregular ones as red crosses (no crosses when ``aligned_col`` is
    not a column). Rows with a missing metric (refused shapes) are skipped; the legend sits
    under the panels. Returns the PNG path, or ``None`` when nothing could be drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    ys = [(col, label) for col, label in ys if col in df.columns and df[col].notna().any()]
    if df.empty or x not in df.columns or not ys:
        return None
    facets = sorted(df[facet].astype(str).unique()) if facet and facet in df.columns else [None]
    keys = sorted({tuple(str(v) for v in row) for row in df[series].itertuples(index=False)}) if series else [()]
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    colors = {k: cmap(i % cmap.N) for i, k in enumerate(keys)}
    fig, axes = plt.subplots(
        len(ys), len(facets), figsize=(5.5 * len(facets), 3.4 * len(ys) + 0.25 * len(keys) / 2 + 0.8),
        squeeze=False, sharex="col",
    )
    for j, fval in enumerate(facets):
        sub = df if fval is None else df[df[facet].astype(str) == fval]
        for i, (col, label) in enumerate(ys):
            ax = axes[i][j]
            groups = sub.groupby(series, dropna=False, sort=True) if series else [((), sub)]
            if not sub[col].notna().any():
                ax.text(0.5, 0.5, "no accepted runs\n(refused / failed)", ha="center", va="center",
                        transform=ax.transAxes, color="gray")
            for key, g in groups:
                g = g[g[col].notna()].sort_values(x)
                if g.empty:
                    continue
                key = tuple(str(v) for v in (key if isinstance(key, tuple) else (key,)))
                color = colors.get(key, "black")
                ax.plot(g[x], g[col], "-", alpha=0.7, color=color)
                al = g[g[aligned_col].astype(bool)] if aligned_col in g.columns else g
                ir = g[~g[aligned_col].astype(bool)] if aligned_col in g.columns else g.iloc[0:0]
                ax.plot(al[x], al[col], "o", color=color, markersize=4)
                ax.plot(ir[x], ir[col], "x", color="red", markersize=8, markeredgewidth=2)
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            if i == 0 and fval is not None:
                ax.set_title(f"{facet}={fval}", fontsize=10)
            if i == len(ys) - 1:
                ax.set_xlabel(x)
    handles = [Line2D([], [], color=colors[k], marker="o", label=", ".join(f"{n}={v}" for n, v in zip(series, k, strict=True)))
               for k in keys if series]
    if aligned_col in df.columns:
        handles.append(Line2D([], [], color="red", marker="x", linestyle="", label="irregular dim"))
    legend_h = 0.0
    if handles:
        ncol = min(3, len(handles))
        rows = -(-len(handles) // ncol)
        legend_h = min(0.45, (0.3 * rows + 0.2) / fig.get_figheight())
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle(textwrap.fill(title, width=int(60 * len(facets))), fontsize=10)
    fig.tight_layout(rect=(0, legend_h, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- highlight: 107 vs 112 / 128

HIGHLIGHT_DIM = 107  # the PaLU-style irregular head dim / rank the study is about
_HIGHLIGHT_COLS = ("status", "picked_backend", "default_backend", "median_ms", "aligned_dim", "aligned_median_ms",
                   "slowdown_vs_aligned", "coarse_dim", "coarse_median_ms", "slowdown_vs_coarse")


def highlight_dim(df: Any, dim_col: str) -> int | None:
    """107 when the sweep has it, else its smallest irregular dim, else ``None``."""
    if df.empty or dim_col not in df.columns:
        return None
    if HIGHLIGHT_DIM in set(df[dim_col]):
        return HIGHLIGHT_DIM
    irregular = sorted(df.loc[df.get("aligned", 0) == 0, dim_col].unique()) if "aligned" in df.columns else []
    return int(irregular[0]) if irregular else None


def highlight_table(df: Any, dim_col: str, groups: list[str]) -> Any:
    """One row per ``groups`` combination at the highlight dim: its median time next to the
    aligned references timed in the same run, and the slowdowns. ``None`` if there is no
    irregular dim in ``df``."""
    dim = highlight_dim(df, dim_col)
    if dim is None:
        return None
    sub = df[df[dim_col] == dim]
    groups = [g for g in groups if g in sub.columns]
    cols = groups + [dim_col] + [c for c in _HIGHLIGHT_COLS if c in sub.columns]
    return sub[cols].sort_values(groups).reset_index(drop=True) if groups else sub[cols].reset_index(drop=True)


def _md_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def write_highlight(table: Any, groups: list[str], dim_col: str, path_png: Path, title: str) -> Path | None:
    """Bar chart of the two slowdowns per group (labelled, 1.0 line = as fast as aligned) and
    the same numbers as a Markdown table next to it (``<stem>.md``) for the docs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if table is None or table.empty:
        return None
    groups = [g for g in groups if g in table.columns]
    labels = [", ".join(str(row[g]) for g in groups) or "all" for _, row in table.iterrows()]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4.2))
    width = 0.4
    for k, (col, name) in enumerate((("slowdown_vs_aligned", "vs ceil(dim, align)"),
                                     ("slowdown_vs_coarse", "vs ceil(dim, align_coarse)"))):
        if col not in table.columns:
            continue
        vals = [v if v is not None and math.isfinite(v) else 0.0 for v in table[col].astype(float)]
        refs = table.get(col.replace("slowdown_vs_", "") + "_dim")
        xs = [i + (k - 0.5) * width for i in range(len(vals))]
        ax.bar(xs, vals, width, label=name)
        for i, (x, v) in enumerate(zip(xs, vals, strict=True)):
            ref = f"\n{int(refs.iloc[i])}" if refs is not None and refs.iloc[i] == refs.iloc[i] else ""
            status = table["status"].iloc[i] if "status" in table.columns else "ok"
            ax.text(x, v, f"{v:.2f}x{ref}" if v else (status if status != "ok" else "n/a"),
                    ha="center", va="bottom", fontsize=7, rotation=0 if v else 90)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    dim = int(table[dim_col].iloc[0])
    ax.set_ylabel(f"time({dim}) / time(aligned)")
    ax.set_title(textwrap.fill(f"{title}: {dim_col}={dim} (>1: slower than the larger aligned size)", 70),
                 fontsize=10)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path_png, dpi=110)
    plt.close(fig)
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_md_cell(row[c]) for c in cols) + " |" for _, row in table.iterrows()]
    path_png.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path_png
