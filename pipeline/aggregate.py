"""``python -m pipeline.aggregate results/ [--experiment NAME]``: tables and plots of finished runs.

For each experiment: one pandas DataFrame (``run_id``, the config columns, then the
summary columns) -> ``<exp>/report/summary.csv``, ``report.md`` (Markdown tables) and
PNG plots: generic ones, plus the task's own ``plots(df, outdir)`` when it has one.
Unfinished, failed and unreadable runs are counted and listed, never fatal.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.records import CORRUPT, DONE, FAILED, RunPaths, read_json, write_text_atomic
from pipeline.status import experiment_dirs, is_run_dir

log = logging.getLogger("pipeline.aggregate")
MAX_GENERIC_PLOTS = 6
MAX_MD_ROWS = 200


@dataclass
class Collected:
    """The finished runs of one experiment and what was skipped."""

    name: str
    df: pd.DataFrame
    config_cols: list[str]
    summary_cols: list[str]
    task: str | None
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def collect(exp_dir: Path) -> Collected:
    """Read every run folder; only runs with a readable config and summary become rows."""
    rows: list[dict[str, Any]] = []
    config_cols: list[str] = []
    summary_cols: list[str] = []
    counts: Counter[str] = Counter()
    problems: list[str] = []
    tasks: Counter[str] = Counter()
    for run_dir in sorted(exp_dir.iterdir()):
        if not is_run_dir(run_dir):
            continue
        paths = RunPaths(run_dir)
        state = paths.state()
        if state != DONE:
            counts[state] += 1
            if state == FAILED:
                err = read_json(paths.error) or {}
                problems.append(f"{run_dir.name}: failed: {str(err.get('message', '?')).splitlines()[0][:160]}")
            elif state == CORRUPT:
                problems.append(f"{run_dir.name}: summary.json is not valid JSON")
            continue
        config, summary = read_json(paths.config), read_json(paths.summary)
        if not isinstance(config, dict) or not isinstance(config.get("params"), dict) or not isinstance(summary, dict):
            counts[CORRUPT] += 1
            problems.append(f"{run_dir.name}: config.json or summary.json unreadable or malformed")
            continue
        counts[DONE] += 1
        tasks[str(config.get("task"))] += 1
        row: dict[str, Any] = {"run_id": run_dir.name}
        for k, v in config["params"].items():
            row[k] = _cell(v)
            if k not in config_cols:
                config_cols.append(k)
        for k, v in summary.items():
            if k in config["params"] and _cell(v) == row.get(k):
                continue  # the task echoed a parameter: the config column already holds it
            col = k if k not in config_cols and k != "run_id" else f"summary.{k}"
            row[col] = _cell(v)
            if col not in summary_cols:
                summary_cols.append(col)
        rows.append(row)
    df = pd.DataFrame(rows, columns=["run_id", *config_cols, *summary_cols])
    varying = varying_columns(df, config_cols)
    if varying and len(df):
        try:
            df = df.sort_values(varying, kind="stable").reset_index(drop=True)
        except TypeError:  # mixed types in a column: keep folder order
            pass
    task = tasks.most_common(1)[0][0] if tasks else None
    return Collected(exp_dir.name, df, config_cols, summary_cols, task, counts, problems)


def varying_columns(df: pd.DataFrame, cols: list[str]) -> list[str]:
    return [c for c in cols if c in df and df[c].astype(str).nunique(dropna=False) > 1]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame, max_rows: int = MAX_MD_ROWS) -> str:
    """A GitHub Markdown table (no tabulate dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.head(max_rows).itertuples(index=False):  # itertuples keeps each column's dtype
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    if len(df) > max_rows:
        lines.append(f"\n({len(df) - max_rows} more rows in summary.csv)")
    return "\n".join(lines)


def generic_plots(col: Collected, outdir: Path) -> list[Path]:
    """Each numeric summary column against the first numeric varying parameter (one line per
    value of the next varying parameter, mean over the rest), or a bar chart per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = col.df
    varying = varying_columns(df, col.config_cols)
    numeric_y = [c for c in col.summary_cols if pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()
                 and not pd.api.types.is_bool_dtype(df[c]) and (len(df) == 1 or df[c].nunique() > 1)]
    numeric_y = numeric_y[:MAX_GENERIC_PLOTS]  # constant columns say nothing in a plot
    numeric_x = [c for c in varying if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    written: list[Path] = []
    for y in numeric_y:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if numeric_x:
            x = numeric_x[0]
            hue = next((c for c in varying if c != x), None)
            groups = df.groupby(hue, dropna=False) if hue else [(None, df)]
            for key, sub in groups:
                line = sub.groupby(x)[y].mean().sort_index()
                ax.plot(line.index, line.values, marker="o", label=f"{hue}={key}" if hue else None)
            ax.set_xlabel(x)
            if hue:
                ax.legend(fontsize=7)
            if (df[x] > 0).all() and df[x].max() / max(df[x].min(), 1e-300) > 100:
                ax.set_xscale("log")
        else:
            labels = df[varying].astype(str).agg(",".join, axis=1) if varying else df["run_id"]
            ax.bar(range(len(df)), df[y].values)
            ax.set_xticks(range(len(df)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(y)
        ax.set_title(f"{col.name}: {y}")
        fig.tight_layout()
        path = outdir / f"generic_{y.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def task_plots(col: Collected, outdir: Path) -> tuple[list[Path], str | None]:
    """The task's own ``plots(df, outdir)``; returns new PNGs and a warning on failure."""
    if not col.task or col.task == "None":
        return [], None
    from pipeline.tasks import load_task

    before = set(outdir.glob("*.png"))
    try:
        task = load_task(col.task)
        if task.plots is None:
            return [], None
        import matplotlib

        matplotlib.use("Agg")
        task.plots(col.df.copy(), outdir)
    except Exception as exc:  # a plotting bug must not lose the tables
        return [], f"task plots ({col.task}) failed: {type(exc).__name__}: {exc}"
    return sorted(set(outdir.glob("*.png")) - before), None


def report(exp_dir: Path, outdir: Path | None = None) -> Collected:
    """Write summary.csv, plots and report.md for one experiment folder."""
    col = collect(exp_dir)
    outdir = outdir or exp_dir / "report"
    outdir.mkdir(parents=True, exist_ok=True)
    for stale in outdir.glob("generic_*.png"):  # ours from an earlier aggregate; the set of columns may differ
        stale.unlink()
    write_text_atomic(outdir / "summary.csv", col.df.to_csv(index=False))
    plots: list[Path] = []
    warnings: list[str] = []
    if len(col.df):
        try:
            plots += generic_plots(col, outdir)
        except Exception as exc:
            warnings.append(f"generic plots failed: {type(exc).__name__}: {exc}")
        own, warn = task_plots(col, outdir)
        plots += own
        warnings += [warn] if warn else []
    skipped = sum(v for k, v in col.counts.items() if k != DONE)
    why = ", ".join(f"{k} {v}" for k, v in sorted(col.counts.items()) if k != DONE)
    md = [f"# {col.name}", "", f"Task: `{col.task}`", "",
          f"Runs: {col.counts.get(DONE, 0)} finished, {skipped} skipped" + (f" ({why})" if why else ""), ""]
    varying = varying_columns(col.df, col.config_cols)
    if len(col.df):
        md += ["## Results", "", markdown_table(col.df[[*varying, *col.summary_cols]] if varying
                                                else col.df[["run_id", *col.summary_cols]]), ""]
        fixed = [c for c in col.config_cols if c not in varying]
        if fixed:
            md += ["## Fixed parameters", "", markdown_table(col.df[fixed].head(1)), ""]
    if col.problems:
        md += ["## Runs not in the tables", ""] + [f"- {p}" for p in col.problems] + [""]
    if warnings:
        md += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]
    if plots:
        md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    write_text_atomic(outdir / "report.md", "\n".join(md))
    for w in warnings:
        log.warning("%s: %s", col.name, w)
    return col


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.aggregate", description=__doc__.splitlines()[0])
    p.add_argument("results", help="results folder (results/ or results/<experiment>)")
    p.add_argument("--experiment", action="append", help="only this experiment (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dirs = experiment_dirs(Path(args.results))
    if args.experiment:
        known = {d.name: d for d in dirs}
        missing = [e for e in args.experiment if e not in known]
        if missing:
            print(f"error: --experiment {', '.join(missing)} not found under {args.results}; "
                  f"found: {', '.join(sorted(known)) or 'none'}", file=sys.stderr)
            return 2
        dirs = [known[e] for e in args.experiment]
    if not dirs:
        print(f"error: no run records under {args.results}", file=sys.stderr)
        return 2
    for d in dirs:
        col = report(d)
        skipped = sum(v for k, v in col.counts.items() if k != DONE)
        why = ", ".join(f"{k} {v}" for k, v in sorted(col.counts.items()) if k != DONE)
        print(f"{col.name}: {col.counts.get(DONE, 0)} finished runs, {skipped} skipped"
              + (f" ({why})" if why else "") + f" -> {d / 'report'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
