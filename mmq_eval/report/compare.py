"""``mmq-eval compare A B``: is the difference between two evaluations real?"""

from __future__ import annotations

import argparse
import math
import sys

from mmq_eval.errors import MMQConfigError
from mmq_eval.report.bootstrap import DEFAULT_RESAMPLES

DESCRIPTION = """\
Compare two evaluations of the same documents metric by metric: the difference B - A, its 95 %
paired-bootstrap interval (documents resampled, the same draws for both) and a two-sided
bootstrap p-value. "same" means the interval contains 0: the two are indistinguishable on that
metric; "B lower" / "B higher": the interval excludes 0.

A and B are each a sweep's results (a results .jsonl file or folder; pick a configuration with
--config-a/--config-b: its id, a unique id prefix, or 'fp' for the full-precision one) or an
lmms-eval run (its *_results.json, or a folder holding one). Per-document scores come from the
sweep's per_doc/ sidecar or from lmms-eval's --log_samples files (*_samples_<task>.jsonl);
without them a metric gets its difference only.
"""


def register(subparsers) -> None:
    """Add the ``compare`` subcommand."""
    p = subparsers.add_parser("compare", help="paired bootstrap of the difference between two results",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A", help="reference results (file or folder)")
    p.add_argument("b", metavar="B", help="results compared with A (file or folder)")
    p.add_argument("--config-a", metavar="ID", help="configuration of A (id, id prefix or 'fp')")
    p.add_argument("--config-b", metavar="ID", help="configuration of B (id, id prefix or 'fp')")
    p.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, metavar="N",
                   help=f"bootstrap resamples of the documents (default {DEFAULT_RESAMPLES})")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=handle)


def _num(x: float, signed: bool = False) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x + 0.0:+.4f}" if signed else f"{x:.4f}"  # no "-0"


def format_rows(deltas) -> list[list[str]]:
    """Table rows (with a header) of :class:`~mmq_eval.report.paired.MetricDelta` values."""
    rows = [["task/metric", "A", "B", "delta (B-A)", "95% CI", "p", "verdict"]]
    for d in deltas:
        r = d.result
        if r is None or math.isnan(r.lo):
            ci, p, verdict = "-", "-", d.note or "no interval"
        else:
            ci, p = f"[{_num(r.lo, True)}, {_num(r.hi, True)}]", f"{r.p_value:.3f}"
            verdict = "same" if r.indistinguishable else ("B lower" if r.hi < 0 else "B higher")
        rows.append([d.column, _num(d.ref), _num(d.new), _num(d.delta, True), ci, p, verdict])
    return rows


def aligned(rows: list[list[str]]) -> str:
    """Plain aligned text table."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def handle(args) -> int:
    """Print the comparison; 2 on bad input."""
    from mmq_eval.report.paired import PairedComparer, load_evaluation

    try:
        if args.resamples < 1:
            raise MMQConfigError("--resamples must be >= 1")
        a = load_evaluation(args.a, args.config_a)
        b = load_evaluation(args.b, args.config_b)
    except MMQConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    deltas = PairedComparer(args.resamples, args.seed).compare(a.results, a.per_doc, b.results, b.per_doc)
    if not deltas:
        print("error: A and B have no task metric in common", file=sys.stderr)
        return 2
    for name, ev in (("A", a), ("B", b)):
        bpw = "" if ev.bpw is None else f", {ev.bpw:.3f} bits per weight"
        print(f"{name}: {ev.label}{bpw}")
    print()
    print(aligned(format_rows(deltas)))
    n = {d.result.n_docs for d in deltas if d.result is not None}
    print(f"\npaired bootstrap: {args.resamples} resamples of the documents (seed {args.seed}"
          f"{', ' + '/'.join(map(str, sorted(n))) + ' documents' if n else ''}); "
          "same = the 95% interval contains 0")
    return 0
