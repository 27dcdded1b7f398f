"""Flatten sweep records into one row per configuration; write the CSV and Markdown tables."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


def flatten(records: list[dict]) -> pd.DataFrame:
    """Rows: ``config_id``, every feature, ``bpw`` and one ``task/metric`` column per score."""
    rows = []
    for rec in records:
        row = {"config_id": rec["config_id"], **rec.get("features", {}), "bpw": rec.get("bpw")}
        for task, metrics in (rec.get("results") or {}).items():
            for metric, value in metrics.items():
                row[f"{task}/{metric}"] = value
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in df.columns:  # a component without an override inherits the global setting
        for setting in ("layer_group", "layer_type"):
            if col.endswith("_" + setting) and setting in df:
                df[col] = df[col].fillna(df[setting])
    front = [c for c in df.columns if "/" not in c]
    return df[front + sorted(c for c in df.columns if "/" in c)]


def score_columns(df: pd.DataFrame) -> list[str]:
    """The ``task/metric`` columns."""
    return [c for c in df.columns if "/" in c]


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df``."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_table(df: pd.DataFrame, out: Path) -> Path:
    """Write ``df`` to ``out/results.csv``."""
    path = out / "results.csv"
    df.to_csv(path, index=False, float_format="%.6g")
    return path


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Highest bits per weight first, ties by config id: a stable, readable order."""
    return df.sort_values(["bpw", "config_id"], ascending=[False, True], kind="mergesort").reset_index(drop=True)
