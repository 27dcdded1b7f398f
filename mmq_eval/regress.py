"""``mmq-eval regress``: a CI gate comparing sweep results against a stored baseline."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mmq_eval.errors import MMQConfigError
from mmq_eval.sweep.store import load_records

FORMAT = "mmq-eval-baseline/1"
RULE = """\
Every (configuration, task, metric) of the baseline is compared with the results; scores are
higher-is-better. With drop = baseline - current, a metric REGRESSES when
    drop > ABS_TOL  and  drop > REL_TOL * |baseline|
i.e. only a drop beyond both tolerances fails; a smaller drop or any rise passes. A current
value that is NaN, a metric or configuration present in the baseline but missing from the
results, also fails. Configurations only in the results are listed and ignored.
Exit status: 0 all within tolerance, 1 regression or missing, 2 bad input (missing or
unreadable file). --update writes the baseline from the results instead (exit 0).
"""


def register(subparsers) -> None:
    """Add the ``regress`` subcommand."""
    p = subparsers.add_parser("regress", help="fail when scores dropped against a baseline",
                              description=RULE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, metavar="BASELINE.json")
    p.add_argument("--results", required=True, metavar="RESULTS", help="results .jsonl file or folder")
    p.add_argument("--abs-tol", type=float, default=0.02, help="absolute tolerance (default 0.02)")
    p.add_argument("--rel-tol", type=float, default=0.05, help="relative tolerance, a fraction of |baseline| (default 0.05)")
    p.add_argument("--update", action="store_true", help="write BASELINE.json from RESULTS and exit")
    p.set_defaults(func=handle)


def baseline_from(records: list[dict]) -> dict:
    """A baseline document holding every record's features and scores."""
    return {"format": FORMAT, "configs": {
        r["config_id"]: {"features": r.get("features", {}), "results": r.get("results", {})}
        for r in sorted(records, key=lambda r: r["config_id"])
    }}


def load_baseline(path: Path) -> dict:
    """The ``configs`` mapping of a baseline file; MMQConfigError naming the file if unusable."""
    if not path.is_file():
        raise MMQConfigError(f"baseline not found: {path} (create one with --update)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MMQConfigError(f"baseline {path}: not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("configs"), dict):
        raise MMQConfigError(f"baseline {path}: not an {FORMAT} document (write one with --update)")
    return doc["configs"]


_DEFAULTS = {"layer_group": "all", "layer_type": "both"}


def _label(features: dict) -> str:
    """Compact description, e.g. ``gptq vit=4 llm=2 layer_type=mlp``; ``none`` = full precision."""
    parts = [str(features.get("method", "?"))]
    for key, value in features.items():
        if key.endswith("_bits") and value != 16:
            parts.append(f"{key[:-5]}={value}")
        elif key.endswith(("layer_group", "layer_type")) and value != _DEFAULTS.get(key):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def compare(baseline: dict, records: list[dict], abs_tol: float, rel_tol: float) -> tuple[list[list[str]], list[str]]:
    """Table rows and failure messages for ``records`` against ``baseline`` configs."""
    current = {r["config_id"]: r for r in records}
    rows, failures = [], []
    for cid, base in sorted(baseline.items()):
        label = _label(base.get("features", {}))
        rec = current.get(cid)
        for task, metrics in sorted(base.get("results", {}).items()):
            for metric, old in sorted(metrics.items()):
                name = f"{task}/{metric}"
                new = (rec or {}).get("results", {}).get(task, {}).get(metric)
                if new is None:
                    what = "configuration" if rec is None else "metric"
                    rows.append([cid, label, name, f"{old:.4f}", "-", "-", "MISSING"])
                    failures.append(f"MISSING {what}: {name} [{cid} {label}]: baseline {old:.4f}, current missing")
                    continue
                drop = old - new
                bad = math.isnan(new) or (drop > abs_tol and drop > rel_tol * abs(old))
                rows.append([cid, label, name, f"{old:.4f}", f"{new:.4f}", f"{new - old:+.4f}", "REGRESSION" if bad else "ok"])
                if bad:
                    rel = f"{drop / abs(old):.1%}" if old else "inf"
                    failures.append(f"REGRESSION {name} [{cid} {label}]: baseline {old:.4f}, current {new:.4f} "
                                    f"(drop {drop:.4f} = {rel} > abs-tol {abs_tol} and rel-tol {rel_tol:.0%})")
    for cid in sorted(set(current) - set(baseline)):
        rows.append([cid, _label(current[cid].get("features", {})), "-", "-", "-", "-", "not in baseline"])
    return rows, failures


def format_table(rows: list[list[str]]) -> str:
    """Plain aligned text table with a header."""
    header = ["config", "features", "task/metric", "baseline", "current", "delta", "status"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def handle(args) -> int:
    """Compare (or ``--update``); exit 0 / 1 / 2 as described in :data:`RULE`."""
    try:
        if args.abs_tol < 0 or args.rel_tol < 0:
            raise MMQConfigError("--abs-tol and --rel-tol must be >= 0")
        records = load_records(args.results)
        if not records:
            raise MMQConfigError(f"no finished configurations in {args.results}")
        baseline_path = Path(args.baseline)
        if args.update:
            baseline_path.parent.mkdir(parents=True, exist_ok=True)
            baseline_path.write_text(json.dumps(baseline_from(records), indent=2, sort_keys=True) + "\n")
            print(f"wrote baseline {baseline_path} ({len(records)} configurations)")
            return 0
        baseline = load_baseline(baseline_path)
    except MMQConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows, failures = compare(baseline, records, args.abs_tol, args.rel_tol)
    print(format_table(rows))
    for line in failures:
        print(line)
    verdict = f"{len(failures)} failure(s)" if failures else "all within tolerance"
    print(f"\n{verdict} (abs-tol {args.abs_tol}, rel-tol {args.rel_tol})")
    return 1 if failures else 0
