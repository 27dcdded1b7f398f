"""``mmq-eval report``: results table, Pareto plots and component-importance analysis."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mmq_eval.errors import MMQConfigError
from mmq_eval.report.bootstrap import DEFAULT_RESAMPLES
from mmq_eval.sweep.store import load_records

#: Below this cross-validated R² the importance tables carry a caution.
TRUSTED_R2 = 0.5


def register(subparsers) -> None:
    """Add the ``report`` subcommand."""
    p = subparsers.add_parser(
        "report", help="tables, Pareto plots and feature importance from sweep results",
        description="Write OUT/report.md, results.csv, importance.csv and one Pareto and one "
                    "importance PNG per task metric. Importance: a random forest predicts each "
                    "score from the configuration's features (component bits, block group, "
                    "layer type, method; categoricals one-hot); reported are its impurity "
                    "importance, permutation importance, mean |SHAP| and 5-fold CV R². Every "
                    "configuration's difference to the sweep's full-precision configuration (Δ) "
                    "gets a 95 % paired-bootstrap interval where per-document scores were kept "
                    "(deltas.csv, the tables, error bars on the Pareto plots).")
    p.add_argument("results", help="results .jsonl file or a folder of them")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report)")
    p.add_argument("--seed", type=int, default=0, help="random seed of forest, folds, permutations and bootstrap")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, metavar="B",
                   help=f"bootstrap resamples of the documents (default {DEFAULT_RESAMPLES}; 0: no intervals)")
    p.set_defaults(func=handle)


def _slug(column: str) -> str:
    return re.sub(r"[^\w.-]+", "_", column)


def build_report(records: list[dict], out: Path, seed: int = 0, per_doc: dict | None = None,
                 resamples: int = DEFAULT_RESAMPLES) -> Path:
    """Write every report file into ``out``; returns the Markdown report's path. ``per_doc``:
    ``{config_id: {task: payload}}`` (``mmq_eval.sweep.per_doc``) for the intervals."""
    import pandas as pd  # the analysis stack loads only when a report is built

    from mmq_eval.report.importance import importance, plot_importance
    from mmq_eval.report.pareto import plot_pareto
    from mmq_eval.report.table import (
        delta_markdown,
        delta_table,
        flatten,
        markdown,
        score_columns,
        sort_rows,
        write_table,
    )

    out.mkdir(parents=True, exist_ok=True)
    df = sort_rows(flatten(records))
    write_table(df, out)
    features = [c for c in df.columns if c not in ("config_id", "bpw") and "/" not in c]
    md = [f"# Quantization sweep report\n\n{len(df)} configurations. Scores are higher-is-better.\n"]
    no_effect = sorted(r["config_id"] for r in records if r.get("effective") is False)
    if no_effect:
        md.append(f"Without effect (they quantize only blocks that do not affect outputs, so they score as "
                  f"full precision while their bits count): {', '.join(no_effect)}.\n")
    deltas, fp_id, intro = delta_table(records, per_doc or {}, resamples, seed)
    md.append(intro)
    if deltas is not None:
        deltas.to_csv(out / "deltas.csv", index=False, float_format="%.6g")
    md += ["## Results\n", markdown(_with_fp_column(df, deltas)), ""]
    importance_rows = []
    for column in score_columns(df):
        md.append(f"## {column}\n")
        pareto_png = out / f"pareto_{_slug(column)}.png"
        intervals = None if deltas is None else deltas[deltas["score"] == column].set_index("config_id")
        front = plot_pareto(df, column, pareto_png, intervals, fp_id)
        md += [f"![Pareto front]({pareto_png.name})\n", "Pareto front (lowest bpw first):\n",
               markdown(df.set_index("config_id").loc[front].reset_index()[["config_id", *features, "bpw", column]]), ""]
        if intervals is not None:
            md += [f"Difference to full precision ({fp_id}):\n", delta_markdown(df, intervals), ""]
        result = importance(df, features, column, seed)
        if result is None:
            md.append("No importance analysis: fewer than 4 configurations, no varying feature or a constant score.\n")
            continue
        imp_png = out / f"importance_{_slug(column)}.png"
        plot_importance(result, column, imp_png)
        md += [f"![Feature importance]({imp_png.name})\n",
               f"Random-forest CV R² = {result.cv_r2:.3f} (n = {result.n_rows}).\n"]
        if result.cv_r2 < TRUSTED_R2:
            md.append(f"**Caution:** the forest does not predict this score from the features "
                      f"(CV R² < {TRUSTED_R2}); these importances are not reliable. A larger sweep helps.\n")
        md += [markdown(result.table), ""]
        importance_rows.append(result.table.assign(score=column, cv_r2=result.cv_r2, n=result.n_rows))
    if importance_rows:
        table = pd.concat(importance_rows, ignore_index=True)
        table[["score", "feature", "impurity", "permutation", "shap", "cv_r2", "n"]].to_csv(
            out / "importance.csv", index=False, float_format="%.6g")
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _with_fp_column(df, deltas):
    """The results table with "≈ FP": of the metrics with an interval, how many contain 0 ("FP":
    the full-precision configuration itself)."""
    if deltas is None or not deltas["ci_lo"].notna().any():
        return df
    with_ci = deltas[deltas["ci_lo"].notna()]
    same = with_ci.assign(same=with_ci["indistinguishable"].astype(int)).groupby("config_id")["same"].agg(["sum", "count"])
    cells = {cid: f"{int(row['sum'])}/{int(row['count'])}" for cid, row in same.iterrows()}
    cells.update({cid: "FP" for cid in deltas.loc[deltas["vs_fp"] == "reference", "config_id"]})
    return df.assign(**{"≈ FP": [cells.get(cid, "") for cid in df["config_id"]]})


def handle(args) -> int:
    """Build the report; 2 when the results are missing or empty."""
    from mmq_eval.sweep.per_doc import load_per_doc

    resamples = getattr(args, "resamples", DEFAULT_RESAMPLES)
    try:
        if resamples < 0:
            raise MMQConfigError("--resamples must be >= 0")
        records = load_records(args.results)
        if not records:
            raise MMQConfigError(f"no finished configurations in {args.results}")
        per_doc = load_per_doc(args.results, [r["config_id"] for r in records]) if resamples else {}
    except MMQConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = build_report(records, Path(args.out), args.seed, per_doc, resamples)
    print(f"wrote {path} ({len(records)} configurations)")
    return 0
