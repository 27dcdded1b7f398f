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


def plot_pareto(df: pd.DataFrame, column: str, path: Path, intervals: pd.DataFrame | None = None,
                fp_id: str | None = None) -> list[str]:
    """Scatter ``column`` vs ``bpw`` per method, highlight the front; returns front config ids.

    ``intervals`` (rows of ``table.delta_table`` for this score, indexed by config id) adds, where
    it has them, each configuration's 95 % interval of the difference to full precision as an
    error bar around its score, the full-precision score as a dashed line (a bar crossing it:
    indistinguishable from full precision) and hollow markers for those indistinguishable ones.
    """
    data = df[["config_id", "method", "bpw", column]].dropna()
    front = data[pareto_mask(data["bpw"], data[column])].sort_values("bpw")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    with_ci = intervals is not None and intervals["ci_lo"].notna().any()
    if fp_id is not None and fp_id in set(data["config_id"]):
        ax.axhline(float(data.loc[data["config_id"] == fp_id, column].iloc[0]), ls="--", lw=1, color="grey",
                   label="full precision")
    any_same = False
    for i, (method, group) in enumerate(sorted(data.groupby("method"), key=lambda g: str(g[0]))):
        color = f"C{i % 10}"
        marker = MARKERS[i % len(MARKERS)]
        same = np.zeros(len(group), bool)
        if with_ci:
            ci = intervals.reindex(group["config_id"])
            ok = ci["ci_lo"].notna().to_numpy()
            centre = group[column].to_numpy(float) - ci["delta"].to_numpy(float)  # the full-precision score
            lo, hi = centre + ci["ci_lo"].to_numpy(float), centre + ci["ci_hi"].to_numpy(float)
            x = group["bpw"].to_numpy(float)
            ax.vlines(x[ok], lo[ok], hi[ok], color=color, lw=1.1, alpha=0.8)
            ax.scatter(np.r_[x[ok], x[ok]], np.r_[lo[ok], hi[ok]], marker="_", s=30, color=color, lw=1.1, alpha=0.8)
            same = (ci["indistinguishable"] == True).to_numpy() & (group["config_id"] != fp_id).to_numpy()
        if not same.any():
            ax.scatter(group["bpw"], group[column], marker=marker, s=28, alpha=0.75, color=color, label=str(method))
            continue
        any_same = True
        ax.scatter([], [], marker=marker, s=28, alpha=0.75, color=color, label=str(method))
        ax.scatter(group["bpw"][~same], group[column][~same], marker=marker, s=28, alpha=0.75, color=color)
        ax.scatter(group["bpw"][same], group[column][same], marker=marker, s=28, facecolors="none",
                   edgecolors=color, lw=1.1)
    if any_same:
        ax.scatter([], [], marker="o", s=28, facecolors="none", edgecolors="grey", lw=1.1,
                   label="≈ full precision (CI ∋ 0)")
    ax.step(front["bpw"], front[column], where="post", color="black", lw=1.2, label="Pareto front")
    ax.scatter(front["bpw"], front[column], s=90, facecolors="none", edgecolors="black", lw=1.2)
    ax.set_xlabel("bits per weight")
    ax.set_ylabel(column)
    title = f"{column} vs bits per weight"
    if with_ci:
        title += "\nbars: 95% paired-bootstrap CI of the difference to full precision"
    ax.set_title(title, fontsize=10 if with_ci else None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return list(front["config_id"])
