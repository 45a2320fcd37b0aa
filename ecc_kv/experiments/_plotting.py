"""Plot helpers shared by task kinds (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def loglog_panels(
    df: pd.DataFrame,
    *,
    x: str,
    series: Iterable[str],
    column: str,
    panel_keys: Iterable[str],
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
) -> list[Path]:
    """One log-log panel per combination of the ``panel_keys`` that vary, one line per series.

    ``column`` is a format string giving the y column of a series (``"{}_median_ms"``); points
    with the same ``x`` are reduced to their median, x <= 0 is dropped (log axis). Returns
    ``[path]``, or ``[]`` when ``df`` has no ``x`` column.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if df.empty or x not in df:
        return []
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = [c for c in panel_keys if c in df and df[c].nunique() > 1]
    groups = list(df.groupby(panels)) if panels else [((), df)]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (key, sub) in zip(axes[0], groups, strict=True):
        for name in series:
            col = column.format(name)
            if col not in sub or sub[col].isna().all():
                continue
            pts = sub[[x, col]].dropna().groupby(x)[col].median().sort_index()
            pts = pts[pts.index > 0]
            ax.plot(pts.index, pts.values, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        keys = key if isinstance(key, tuple) else (key,)
        ax.set_title(", ".join(f"{c}={v}" for c, v in zip(panels, keys, strict=False)) or title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
