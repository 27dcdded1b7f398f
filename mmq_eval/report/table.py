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


def delta_table(records: list[dict], per_doc: dict, resamples: int, seed: int) -> tuple[pd.DataFrame | None, str | None, str]:
    """Every configuration's difference to the full-precision one, per score, with its paired
    bootstrap interval where both have per-document scores: ``(long table or None, the
    full-precision config id or None, a paragraph explaining it for report.md)``."""
    from mmq_eval.report.paired import PairedComparer, config_label, full_precision

    fp = full_precision(records)
    if fp is None:
        return None, None, ("No full-precision configuration (method `none` or 16 bits everywhere) in these "
                            "results: no differences Δ to it.\n")
    comparer = PairedComparer(resamples=resamples, seed=seed)
    rows = []
    for rec in records:
        cid = rec["config_id"]
        for d in comparer.compare(fp.get("results") or {}, per_doc.get(fp["config_id"]),
                                  rec.get("results") or {}, per_doc.get(cid)):
            r = d.result
            if cid == fp["config_id"]:
                verdict = "reference"
            elif r is None or math.isnan(r.lo):
                verdict = ""
            else:
                verdict = "≈ FP" if r.indistinguishable else ("lower" if r.hi < 0 else "higher")
            rows.append({"config_id": cid, "score": d.column, "value": d.new, "delta": d.delta,
                         "ci_lo": r.lo if r else math.nan, "ci_hi": r.hi if r else math.nan,
                         "p_value": r.p_value if r else math.nan, "n_docs": r.n_docs if r else math.nan,
                         "indistinguishable": r.indistinguishable if r and not math.isnan(r.lo) else None,
                         "vs_fp": verdict, "note": d.note})
    table = pd.DataFrame(rows, columns=["config_id", "score", "value", "delta", "ci_lo", "ci_hi", "p_value",
                                        "n_docs", "indistinguishable", "vs_fp", "note"])
    label = config_label(fp.get("features", {}))
    intro = (f"Δ: each score minus that of the full-precision configuration `{fp['config_id']}` ({label}) on the "
             "same documents.")
    if table["ci_lo"].notna().any():
        intro += (f" 95 % CI: paired bootstrap over the documents ({resamples} resamples, seed {seed}; per-image "
                  "CIDEr-D with the corpus IDF fixed, corpus BLEU from per-image n-gram counts, Recall@K from "
                  "per-query ranks); p: two-sided bootstrap p-value. **≈ FP**: the interval contains 0, i.e. the "
                  "configuration is indistinguishable from full precision on that score; `lower`/`higher`: the "
                  "interval excludes 0. Scores without per-document values (METEOR) have Δ without an interval. "
                  "The same intervals are the error bars of the Pareto plots (hollow markers: ≈ FP).\n")
    elif resamples < 1:
        intro += " No intervals (`--resamples 0`).\n"
    else:
        intro += " No intervals: these results have no per-document scores (a `per_doc/` sidecar).\n"
    return table, fp["config_id"], intro


def _signed(x: float) -> str:
    return "" if x is None or math.isnan(x) else f"{x + 0.0:+.4g}"  # no "-0"


def delta_markdown(df: pd.DataFrame, intervals: pd.DataFrame) -> str:
    """One score's differences to full precision (``intervals``: rows of :func:`delta_table`
    indexed by config id), in the order of ``df``, as Markdown."""
    from mmq_eval.report.paired import config_label

    features = df.set_index("config_id")
    feature_cols = [c for c in df.columns if c not in ("config_id", "bpw") and "/" not in c]
    rows = []
    for cid in df["config_id"]:
        if cid not in intervals.index:
            continue
        d = intervals.loc[cid]
        feats = {c: features.at[cid, c] for c in feature_cols if not pd.isna(features.at[cid, c])}
        ci = "" if math.isnan(d["ci_lo"]) else f"[{_signed(d['ci_lo'])}, {_signed(d['ci_hi'])}]"
        p = "" if math.isnan(d["p_value"]) else f"{d['p_value']:.3f}"
        rows.append([cid, config_label(feats), _cell(features.at[cid, "bpw"]), _cell(float(d["value"])),
                     _signed(float(d["delta"])), ci, p, d["vs_fp"]])
    header = ["config_id", "configuration", "bpw", "score", "Δ", "95% CI", "p", "vs FP"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
