"""Pareto fronts of score vs bits per weight, one PNG per task metric."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

MARKERS = "osD^v<>Pp*hX"


def pareto_mask(bpw: np.ndarray, score: np.ndarray) -> np.ndarray:
    """True where no other point has bpw <= and score >= with at least one strict."""
    bpw, score = np.asarray(bpw, float), np.asarray(score, float)
    dominated = np.zeros(len(bpw), bool)
    for i in range(len(bpw)):
        better = (bpw <= bpw[i]) & (score >= score[i]) & ((bpw < bpw[i]) | (score > score[i]))
        dominated[i] = better.any()
    return ~dominated


def plot_pareto(df: pd.DataFrame, column: str, path: Path) -> list[str]:
    """Scatter ``column`` vs ``bpw`` per method, highlight the front; returns front config ids."""
    data = df[["config_id", "method", "bpw", column]].dropna()
    front = data[pareto_mask(data["bpw"], data[column])].sort_values("bpw")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for i, (method, group) in enumerate(sorted(data.groupby("method"), key=lambda g: str(g[0]))):
        ax.scatter(group["bpw"], group[column], marker=MARKERS[i % len(MARKERS)], s=28, alpha=0.75,
                   label=str(method))
    ax.step(front["bpw"], front[column], where="post", color="black", lw=1.2, label="Pareto front")
    ax.scatter(front["bpw"], front[column], s=90, facecolors="none", edgecolors="black", lw=1.2)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel(column)
    ax.set_title(f"{column} vs bits per weight")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return list(front["config_id"])
