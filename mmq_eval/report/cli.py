"""``mmq-eval report``: results table, Pareto plots and component-importance analysis."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mmq_eval.errors import MMQConfigError
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
                    "importance, permutation importance, mean |SHAP| and 5-fold CV R².")
    p.add_argument("results", help="results .jsonl file or a folder of them")
    p.add_argument("--out", default="report", metavar="DIR", help="output folder (default: report)")
    p.add_argument("--seed", type=int, default=0, help="random seed of forest, folds and permutations")
    p.set_defaults(func=handle)


def _slug(column: str) -> str:
    return re.sub(r"[^\w.-]+", "_", column)


def build_report(records: list[dict], out: Path, seed: int = 0) -> Path:
    """Write every report file into ``out``; returns the Markdown report's path."""
    import pandas as pd  # the analysis stack loads only when a report is built

    from mmq_eval.report.importance import importance, plot_importance
    from mmq_eval.report.pareto import plot_pareto
    from mmq_eval.report.table import flatten, markdown, score_columns, sort_rows, write_table

    out.mkdir(parents=True, exist_ok=True)
    df = sort_rows(flatten(records))
    write_table(df, out)
    features = [c for c in df.columns if c not in ("config_id", "bpw") and "/" not in c]
    md = [f"# Quantization sweep report\n\n{len(df)} configurations. Scores are higher-is-better.\n"]
    no_effect = sorted(r["config_id"] for r in records if r.get("effective") is False)
    if no_effect:
        md.append(f"Without effect (they quantize only blocks that do not affect outputs, so they score as "
                  f"full precision while their bits count): {', '.join(no_effect)}.\n")
    md += ["## Results\n", markdown(df), ""]
    importance_rows = []
    for column in score_columns(df):
        md.append(f"## {column}\n")
        pareto_png = out / f"pareto_{_slug(column)}.png"
        front = plot_pareto(df, column, pareto_png)
        md += [f"![Pareto front]({pareto_png.name})\n", "Pareto front (lowest bpw first):\n",
               markdown(df.set_index("config_id").loc[front].reset_index()[["config_id", *features, "bpw", column]]), ""]
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


def handle(args) -> int:
    """Build the report; 2 when the results are missing or empty."""
    try:
        records = load_records(args.results)
        if not records:
            raise MMQConfigError(f"no finished configurations in {args.results}")
    except MMQConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = build_report(records, Path(args.out), args.seed)
    print(f"wrote {path} ({len(records)} configurations)")
    return 0
