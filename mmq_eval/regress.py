"""``mmq-eval regress``: a CI gate comparing sweep results against a stored baseline."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mmq_eval.errors import MMQConfigError, MMQDataError
from mmq_eval.outputs import check_output_file
from mmq_eval.report.bootstrap import DEFAULT_RESAMPLES
from mmq_eval.report.paired import PairedComparer, config_label
from mmq_eval.sweep.per_doc import PerDocStore, load_per_doc, read_per_doc
from mmq_eval.sweep.store import load_records, results_files

FORMAT = "mmq-eval-baseline/1"
RULE = """\
Every (configuration, task, metric) of the baseline is compared with the results; scores are
higher-is-better. With drop = baseline - current and TOL = max(ABS_TOL, REL_TOL * |baseline|):

  --mode tolerance (default): a metric REGRESSES when drop > TOL, i.e. only a drop beyond both
      tolerances fails; a smaller drop or any rise passes.
  --mode ci: a metric REGRESSES only when the whole 95 % interval of the drop lies above TOL:
      a paired bootstrap over the documents (--resamples, --seed) of the per-document scores
      kept beside the results (per_doc/) and beside the baseline (BASELINE.per_doc.jsonl,
      written by --update). Metrics without per-document scores on both sides (METEOR, other
      documents) fall back to the tolerance rule; the table says which rule judged each.

A current value that is not a finite number (NaN, Infinity) where the baseline has one, a
metric or configuration present in the baseline but missing from the results, also fails.
Configurations only in the results are listed and ignored.
Everything read is validated first: every baseline score must be a finite number, every result
score a number, every results/features entry an object, the tolerances finite and >= 0, and the
baseline must hold at least one configuration with at least one metric; otherwise the error
names the file and the field (e.g. configs.aaaa.results.mmq_shapes_vqa.accuracy) and the exit
status is 2. --update refuses results holding NaN/Infinity (a baseline must be finite).
Exit status: 0 all within tolerance, 1 regression or missing, 2 bad input (missing, unreadable
or invalid file or setting; --mode ci without the baseline's per-document scores). --update
writes the baseline (and its per-document scores, where the results have them) instead (exit 0).
"""


def register(subparsers) -> None:
    """Add the ``regress`` subcommand."""
    p = subparsers.add_parser("regress", help="fail when scores dropped against a baseline",
                              description=RULE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, metavar="BASELINE.json")
    p.add_argument("--results", required=True, metavar="RESULTS", help="results .jsonl file or folder")
    p.add_argument("--abs-tol", type=float, default=0.02, help="absolute tolerance (default 0.02)")
    p.add_argument("--rel-tol", type=float, default=0.05, help="relative tolerance, a fraction of |baseline| (default 0.05)")
    p.add_argument("--mode", choices=("tolerance", "ci"), default="tolerance",
                   help="tolerance: the point drop against the tolerances (default); ci: its 95%% interval")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"bootstrap resamples for --mode ci (default {DEFAULT_RESAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed for --mode ci (default 0)")
    p.add_argument("--update", action="store_true", help="write BASELINE.json from RESULTS and exit")
    p.set_defaults(func=handle)


def baseline_from(records: list[dict]) -> dict:
    """A baseline document holding every record's features and scores."""
    return {"format": FORMAT, "configs": {
        r["config_id"]: {"features": r.get("features", {}), "results": r.get("results", {})}
        for r in sorted(records, key=lambda r: r["config_id"])
    }}


def per_doc_path(baseline: Path) -> Path:
    """The baseline's per-document scores: ``BASELINE.per_doc.jsonl`` beside it."""
    return baseline.with_name(baseline.stem + ".per_doc.jsonl")


def write_baseline(path: Path, records: list[dict], per_doc: dict) -> int:
    """Write the baseline and, for the configurations that have them, its per-document scores
    (a stale per-document file is removed); returns how many configurations have them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline_from(records), indent=2, sort_keys=True) + "\n")
    docs = per_doc_path(path)
    docs.unlink(missing_ok=True)
    with_docs = [r["config_id"] for r in sorted(records, key=lambda r: r["config_id"]) if per_doc.get(r["config_id"])]
    store = PerDocStore(docs)
    for cid in with_docs:
        store.add(cid, per_doc[cid])
    Path(str(docs) + ".lock").unlink(missing_ok=True)
    return len(with_docs)


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
    configs = doc["configs"]
    if not configs:
        raise MMQDataError(f"baseline {path}: configs is empty, so it checks nothing; write it with --update "
                           "from results that hold finished configurations")
    for cid, entry in configs.items():
        check_scores(_object(entry, f"baseline {path}", f"configs.{cid}"), f"baseline {path}", f"configs.{cid}",
                     finite_fix="rewrite the baseline with --update from results without NaN/Infinity")
        if not any(entry.get("results", {}).values()):
            raise MMQDataError(f"baseline {path}: configs.{cid}.results holds no metric, so it checks nothing; "
                               "rewrite the baseline with --update")
    return configs


def _kind(value) -> str:
    """What a JSON value is, for an error message."""
    kinds = {type(None): "null", bool: "a boolean", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _object(value, where: str, field: str) -> dict:
    if not isinstance(value, dict):
        raise MMQDataError(f"{where}: {field} is {_kind(value)}; expected an object")
    return value


def check_scores(entry: dict, where: str, field: str = "", finite_fix: str | None = None) -> None:
    """Check a configuration's ``features`` (an object, if present) and ``results`` ({task:
    {metric: number}}); with `finite_fix`, every score must also be finite (the fix is named).
    MMQDataError naming `where` (the file) and the field's JSON path (below `field`)."""
    prefix = f"{field}." if field else ""
    if "features" in entry:
        _object(entry["features"], where, f"{prefix}features")
    results = _object(entry.get("results", {}), where, f"{prefix}results")
    for task, metrics in results.items():
        for metric, value in _object(metrics, where, f"{prefix}results.{task}").items():
            path = f"{prefix}results.{task}.{metric}"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                shown = "null" if value is None else f"{json.dumps(value)} ({_kind(value)})"
                raise MMQDataError(f"{where}: {path} is {shown}; expected a number")
            if finite_fix and not math.isfinite(value):
                raise MMQDataError(f"{where}: {path} is {value}, not a finite number; {finite_fix}")


def load_checked_records(path: str, finite: bool) -> list[dict]:
    """The records under `path` (as ``load_records``: first of each config_id), each checked by
    `check_scores` naming its file and config_id; with `finite`, NaN/Infinity are refused."""
    seen, records = set(), []
    for file in results_files(path):
        try:
            file_records = load_records(file)
            new = [r for r in file_records if r["config_id"] not in seen]
        except (AttributeError, TypeError) as err:
            raise MMQDataError(f"results {file}: a line is not a JSON object with a string config_id ({err}); "
                               "the file is not a sweep results file or is corrupt") from err
        for rec in new:
            if not isinstance(rec["config_id"], str):
                raise MMQDataError(f"results {file}: config_id {json.dumps(rec['config_id'])} is "
                                   f"{_kind(rec['config_id'])}; expected a string")
            check_scores(rec, f"results {file} (config_id {rec['config_id']})",
                         finite_fix="--update writes only finite scores: rerun that configuration" if finite else None)
            seen.add(rec["config_id"])
            records.append(rec)
    return records


_label = config_label


def compare(baseline: dict, records: list[dict], abs_tol: float, rel_tol: float, mode: str = "tolerance",
            base_per_doc: dict | None = None, cur_per_doc: dict | None = None,
            comparer: PairedComparer | None = None) -> tuple[list[list[str]], list[str]]:
    """Table rows and failure messages for ``records`` against ``baseline`` configs. With
    ``mode="ci"`` a metric with per-document scores on both sides (``{config_id: {task:
    payload}}``) regresses only when its drop's whole interval exceeds the tolerance; the rows
    then carry the interval of the drop (or "tolerance rule" where it fell back)."""
    ci_mode = mode == "ci"
    comparer = comparer or PairedComparer()
    base_per_doc, cur_per_doc = base_per_doc or {}, cur_per_doc or {}
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
                    rows.append([cid, label, name, f"{old:.4f}", "-", "-", *(["-"] if ci_mode else []), "MISSING"])
                    failures.append(f"MISSING {what}: {name} [{cid} {label}]: baseline {old:.4f}, current missing")
                    continue
                if not math.isfinite(new):
                    rows.append([cid, label, name, f"{old:.4f}", f"{new}", "-", *(["-"] if ci_mode else []),
                                 "REGRESSION"])
                    failures.append(f"REGRESSION {name} [{cid} {label}]: baseline {old:.4f}, current {new}: not a "
                                    "finite number (the run produced NaN/Infinity for this metric)")
                    continue
                drop = old - new
                tol = max(abs_tol, rel_tol * abs(old))
                result = None
                if ci_mode:
                    result = comparer.metric(task, metric, old, new, base_per_doc.get(cid, {}).get(task),
                                             cur_per_doc.get(cid, {}).get(task)).result
                    result = None if result is None or math.isnan(result.lo) else result
                if result is not None:  # the drop's interval is minus that of current - baseline
                    drop_lo, drop_hi = 0.0 - result.hi, 0.0 - result.lo
                    bad = drop_lo > tol
                else:
                    bad = drop > abs_tol and drop > rel_tol * abs(old)
                extra = []
                if ci_mode:
                    extra = [f"[{drop_lo:+.4f}, {drop_hi:+.4f}]" if result is not None else "tolerance rule"]
                rows.append([cid, label, name, f"{old:.4f}", f"{new:.4f}", f"{new - old:+.4f}", *extra,
                             "REGRESSION" if bad else "ok"])
                if bad and result is not None:
                    failures.append(f"REGRESSION {name} [{cid} {label}]: baseline {old:.4f}, current {new:.4f} "
                                    f"(drop {drop:.4f}, 95% CI [{drop_lo:.4f}, {drop_hi:.4f}] entirely above the "
                                    f"tolerance {tol:.4f} = max(abs-tol {abs_tol}, rel-tol {rel_tol:.0%} of baseline))")
                elif bad:
                    rel = f"{drop / abs(old):.1%}" if old else "inf"
                    failures.append(f"REGRESSION {name} [{cid} {label}]: baseline {old:.4f}, current {new:.4f} "
                                    f"(drop {drop:.4f} = {rel} > abs-tol {abs_tol} and rel-tol {rel_tol:.0%})")
    for cid in sorted(set(current) - set(baseline)):
        rows.append([cid, _label(current[cid].get("features", {})), "-", "-", "-", "-", *(["-"] if ci_mode else []),
                     "not in baseline"])
    return rows, failures


def format_table(rows: list[list[str]]) -> str:
    """Plain aligned text table with a header (the drop's interval as a column in ci mode)."""
    header = ["config", "features", "task/metric", "baseline", "current", "delta", "status"]
    if rows and len(rows[0]) == len(header) + 1:
        header.insert(6, "drop 95% CI")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])


def handle(args) -> int:
    """Compare (or ``--update``); exit 0 / 1 / 2 as described in :data:`RULE`."""
    mode = getattr(args, "mode", "tolerance")
    try:
        if args.update:  # --baseline itself is checked by ``mmq-eval`` (cli.OUTPUT_OPTIONS)
            check_output_file(per_doc_path(Path(args.baseline)), "--baseline's per-document scores")
        for flag, tol in (("--abs-tol", args.abs_tol), ("--rel-tol", args.rel_tol)):
            if not (math.isfinite(tol) and tol >= 0):
                raise MMQConfigError(f"{flag} {tol}: must be a finite number >= 0")
        if mode == "ci" and args.resamples < 1:
            raise MMQConfigError("--resamples must be >= 1")
        records = load_checked_records(args.results, finite=args.update)
        if not records:
            raise MMQConfigError(f"no finished configurations in {args.results}")
        baseline_path = Path(args.baseline)
        if args.update:
            n_docs = write_baseline(baseline_path, records, load_per_doc(args.results, [r["config_id"] for r in records]))
            print(f"wrote baseline {baseline_path} ({len(records)} configurations"
                  f"{f'; per-document scores of {n_docs} in {per_doc_path(baseline_path)}' if n_docs else ''})")
            return 0
        baseline = load_baseline(baseline_path)
        base_docs = cur_docs = None
        if mode == "ci":
            base_docs = read_per_doc([per_doc_path(baseline_path)]) if per_doc_path(baseline_path).is_file() else {}
            if not base_docs:
                raise MMQConfigError(f"--mode ci needs the baseline's per-document scores: {per_doc_path(baseline_path)} "
                                     "is missing (rewrite the baseline with --update from results that have them, "
                                     "or use --mode tolerance)")
            cur_docs = load_per_doc(args.results, [r["config_id"] for r in records])
    except (MMQConfigError, MMQDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows, failures = compare(baseline, records, args.abs_tol, args.rel_tol, mode, base_docs, cur_docs,
                             PairedComparer(getattr(args, "resamples", DEFAULT_RESAMPLES), getattr(args, "seed", 0)))
    print(format_table(rows))
    for line in failures:
        print(line)
    verdict = f"{len(failures)} failure(s)" if failures else "all within tolerance"
    how = ""
    if mode == "ci":
        judged = sum(1 for r in rows if len(r) == 8 and r[6].startswith("["))
        how = f"mode ci: {judged} metric(s) by their 95% interval ({args.resamples} resamples, seed {args.seed}), the rest by the tolerances; "
    print(f"\n{verdict} ({how}abs-tol {args.abs_tol}, rel-tol {args.rel_tol})")
    return 1 if failures else 0
