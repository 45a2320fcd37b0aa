"""Plots and tables of ``ber_sweep`` results: quality versus bit error rate per cache mode.

``plots(df, outdir)`` takes one row per finished run (config columns + summary columns) and
pools the runs of each (error_model, cache_mode, ber) point over seeds: per-sample means and
standard deviations are combined exactly (within- plus between-run variance), so the bands are
95% Student-t intervals over all samples and seeds. BER 0 sits at a tenth of the smallest
non-zero BER on the log axis, labelled "0".

Writes ``ppl_vs_ber[_<error_model>].png``, ``kl_vs_ber…``, ``top5_vs_ber…``,
``catastrophic_vs_ber…``, ``ppl_at_ber_table.md`` / ``.csv`` (the paper's table: PPL at BER
1e-2 per mode, or at the largest BER swept) and ``speed_table.md`` (tokens/s per mode).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ecc_kv.metrics import t_quantile_975, wilson_ci
from ecc_kv.modes import MODES

TABLE_BER = 1e-2
_STYLE = {  # one colour per mode, stable across plots
    "fp16": "black", "int4": "tab:red", "int4-hamming": "tab:orange", "int4-hamming84": "tab:blue",
    "int4-hamming84-interp": "tab:cyan", "int12-golay": "tab:green", "adaptive": "tab:purple",
    "int4-msb-secded": "tab:brown",
}  # fmt: skip


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def pool(rows: list[dict[str, Any]], metric: str) -> tuple[float, float, float]:
    """Pooled (mean, lo, hi) of a per-sample metric over runs with ``<m>_mean``, ``<m>_sd``, ``samples_scored``."""
    parts = [(_num(r[f"{metric}_mean"]), _num(r[f"{metric}_sd"]), int(r["samples_scored"])) for r in rows]
    parts = [(m, s, n) for m, s, n in parts if n > 0]
    if not parts or any(not math.isfinite(m) for m, _, _ in parts):
        return float("nan"), float("nan"), float("nan")
    total = sum(n for _, _, n in parts)
    mean = sum(m * n for m, _, n in parts) / total
    if total < 2:
        return mean, mean, mean
    ss = sum((n - 1) * s * s + n * (m - mean) ** 2 for m, s, n in parts)
    half = t_quantile_975(total - 1) * math.sqrt(ss / (total - 1) / total)
    return mean, mean - half, mean + half


def pooled_points(df: Any) -> list[dict[str, Any]]:
    """One dict per (error_model, cache_mode, ber) with pooled metrics over seeds."""
    out = []
    keys = [k for k in ("error_model", "cache_mode", "ber") if k in df.columns]
    for key, grp in df.groupby(keys, dropna=False):
        rows = grp.to_dict("records")
        point = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        point.setdefault("error_model", "bsc")
        point["runs"] = len(rows)
        for m in ("nll", "kl", "top5"):
            point[m], point[f"{m}_lo"], point[f"{m}_hi"] = pool(rows, m)
        for k in ("", "_lo", "_hi"):
            v = point[f"nll{k}"]
            point[f"ppl{k}"] = math.exp(v) if math.isfinite(v) else float("nan")
        n = sum(int(r["samples_scored"]) for r in rows)
        cat = sum(int(_num(r["catastrophic_count"])) for r in rows)
        point["cat"], point["cat_lo"], point["cat_hi"] = wilson_ci(cat, n) if n else (float("nan"),) * 3
        for k in ("clean_ppl", "bits_per_value", "corrected_per_value", "detected_per_value", "flips_per_value",
                  "tokens_per_s", "clean_tokens_per_s", "time_ratio_vs_clean"):  # fmt: skip
            vals = [_num(r.get(k)) for r in rows if math.isfinite(_num(r.get(k)))]
            point[k] = sorted(vals)[len(vals) // 2] if vals else float("nan")
        out.append(point)
    return out


def _mode_order(modes: set[str]) -> list[str]:
    return [m for m in MODES if m in modes] + sorted(modes - set(MODES))


def _xpos(bers: list[float]) -> tuple[dict[float, float], float]:
    nonzero = sorted(b for b in bers if b > 0)
    zero_x = (nonzero[0] / 10) if nonzero else 1e-6
    return {b: (b if b > 0 else zero_x) for b in bers}, zero_x


def _line_plot(points: list[dict[str, Any]], metric: str, ylabel: str, path: Path, logy: bool, title: str) -> None:
    import matplotlib.pyplot as plt

    bers = sorted({float(p["ber"]) for p in points})
    xpos, zero_x = _xpos(bers)
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for mode in _mode_order({p["cache_mode"] for p in points}):
        pts = sorted((p for p in points if p["cache_mode"] == mode), key=lambda p: float(p["ber"]))
        if mode == "fp16" and len(pts) == 1:  # the fp16 baseline is one point at BER 0: draw a line
            ax.axhline(pts[0][metric], color=_STYLE["fp16"], ls="--", lw=1.2, label="fp16 (BER 0)")
            continue
        xs = [xpos[float(p["ber"])] for p in pts]
        ys = [p[metric] for p in pts]
        color = _STYLE.get(mode)
        ax.plot(xs, ys, marker="o", ms=4, lw=1.5, color=color, label=mode)
        lo, hi = [p.get(f"{metric}_lo", float("nan")) for p in pts], [p.get(f"{metric}_hi", float("nan")) for p in pts]
        if any(math.isfinite(v) for v in lo + hi):
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
    ax.set_xscale("log")
    ticks = sorted(set(xpos.values()))
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0" if t == zero_x and 0.0 in xpos else f"{t:.0e}" for t in ticks])
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("bit error rate of stored KV bits")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(v: float, digits: int = 3) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"


def _table(points: list[dict[str, Any]], outdir: Path) -> None:
    import pandas as pd

    lines = ["# Perplexity per cache mode at a fixed bit error rate", ""]
    rows = []
    for em in sorted({p["error_model"] for p in points}):
        pts = [p for p in points if p["error_model"] == em]
        bers = sorted({float(p["ber"]) for p in pts})
        target = TABLE_BER if TABLE_BER in bers else bers[-1]
        clean = next((p["clean_ppl"] for p in pts if math.isfinite(p["clean_ppl"])), float("nan"))
        lines += [f"## error model `{em}`, BER {target:g} (clean PPL {_fmt(clean, 4)})", "",
                  "| mode | bits/value | PPL (95% CI) | PPL / clean | KL nats/token | top-5 | catastrophic | "
                  "corrected/value | detected/value | runs |", "|" + "---|" * 10]  # fmt: skip
        at = {p["cache_mode"]: p for p in pts if float(p["ber"]) == target}
        if "fp16" not in at:  # fp16 is swept at BER 0 only: show it as the reference row
            at.update({p["cache_mode"]: p for p in pts if p["cache_mode"] == "fp16" and float(p["ber"]) == 0.0})
        for mode in _mode_order(set(at)):
            p = at[mode]
            ber_note = "" if float(p["ber"]) == target else f" (BER {float(p['ber']):g})"
            lines.append(
                f"| {mode}{ber_note} | {_fmt(p['bits_per_value'])} | {_fmt(p['ppl'], 4)} "
                f"[{_fmt(p['ppl_lo'], 4)}, {_fmt(p['ppl_hi'], 4)}] | {_fmt(p['ppl'] / clean)} | {_fmt(p['kl'])} | "
                f"{_fmt(p['top5'])} | {_fmt(p['cat'])} | {_fmt(p['corrected_per_value'])} | "
                f"{_fmt(p['detected_per_value'])} | {p['runs']} |"
            )
            rows.append({"error_model": em, "ber": float(p["ber"]), "cache_mode": mode,
                         **{k: p[k] for k in ("bits_per_value", "ppl", "ppl_lo", "ppl_hi", "kl", "top5", "cat",
                                              "corrected_per_value", "detected_per_value", "runs")}})  # fmt: skip
        lines.append("")
    (outdir / "ppl_at_ber_table.md").write_text("\n".join(lines) + "\n")
    pd.DataFrame(rows).to_csv(outdir / "ppl_at_ber_table.csv", index=False)


def _speed_table(points: list[dict[str, Any]], outdir: Path) -> None:
    lines = ["# Forward throughput per cache mode (median over points)", "",
             "| mode | tokens/s | clean tokens/s | time / clean forward |", "|---|---|---|---|"]  # fmt: skip
    for mode in _mode_order({p["cache_mode"] for p in points}):
        pts = [p for p in points if p["cache_mode"] == mode]
        med = {k: sorted(p[k] for p in pts)[len(pts) // 2] for k in ("tokens_per_s", "clean_tokens_per_s",
                                                                     "time_ratio_vs_clean")}  # fmt: skip
        lines.append(f"| {mode} | {_fmt(med['tokens_per_s'], 4)} | {_fmt(med['clean_tokens_per_s'], 4)} | "
                     f"{_fmt(med['time_ratio_vs_clean'])} |")  # fmt: skip
    (outdir / "speed_table.md").write_text("\n".join(lines) + "\n")


def plots(df: Any, outdir: str | Path) -> None:
    """PPL, KL, top-5 and catastrophic rate versus BER per mode, plus the PPL and speed tables."""
    import matplotlib

    matplotlib.use("Agg")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if df is None or len(df) == 0:
        return
    points = pooled_points(df)
    models = sorted({str(m) for m in df["model"]}) if "model" in df.columns else []
    ems = sorted({p["error_model"] for p in points})
    for em in ems:
        pts = [p for p in points if p["error_model"] == em or p["cache_mode"] == "fp16"]
        sfx = "" if len(ems) == 1 else f"_{em}"
        what = f"{', '.join(models)} · error model {em}"
        _line_plot(pts, "ppl", "perplexity (95% CI)", outdir / f"ppl_vs_ber{sfx}.png", True, f"Perplexity · {what}")
        _line_plot(pts, "kl", "KL from clean (nats/token)", outdir / f"kl_vs_ber{sfx}.png", False, f"KL · {what}")
        _line_plot(pts, "top5", "top-5 accuracy", outdir / f"top5_vs_ber{sfx}.png", False, f"Top-5 · {what}")
        _line_plot(pts, "cat", "catastrophic-failure rate (Wilson 95%)", outdir / f"catastrophic_vs_ber{sfx}.png",
                   False, f"Catastrophic failures · {what}")  # fmt: skip
    _table(points, outdir)
    _speed_table(points, outdir)
