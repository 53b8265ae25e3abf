"""Plots the bench scripts share."""
from __future__ import annotations

from typing import Dict, Optional, Sequence


def grouped_bars(path: str, groups: Sequence[str], series: Dict[str, Sequence[Optional[float]]], ylabel: str,
                 title: str, hline: Optional[float] = None, rotate: bool = False, fontsize: int = 9) -> None:
    """One bar per series in each group (a None value draws no bar), side by side; writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(7 if not rotate else 8, (0.7 if rotate else 1.8) * len(groups)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (label, ys) in enumerate(series.items()):
        pts = [(j + i * width, y) for j, y in enumerate(ys) if y is not None]
        ax.bar([x for x, _ in pts], [y for _, y in pts], width, label=label)
    ticks = [j + 0.4 - width / 2 for j in range(len(groups))]
    if rotate:
        ax.set_xticks(ticks, groups, rotation=45, ha="right", fontsize=fontsize)
    else:
        ax.set_xticks(ticks, groups, fontsize=fontsize)
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.8, ls="--")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
