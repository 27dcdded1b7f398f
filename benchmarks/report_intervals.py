"""Cost of the paired-bootstrap intervals in ``mmq-eval report``.

A 27-configuration sweep of the embedded BLIP-2 on both shapes tasks in full (uniform
quantization, vit_bits x qformer_bits x llm_bits in {16, 4, 2}^3; 200 captioning images, 500 VQA
questions; per-document scores in the sweep's ``per_doc/`` sidecar), then ``mmq-eval report`` on
it with 1,000 bootstrap resamples and with none (``--resamples 0``: Δ to full precision without
intervals), each in its own process, alternating, ``--repeats`` times; medians and their
difference. Target: <= 10 s more with intervals.

    python benchmarks/report_intervals.py [--results DIR] [--keep DIR] [--repeats 3] [--json out.json]
    python benchmarks/report_intervals.py --eval-overhead 9

``--results`` reuses a finished sweep folder; ``--keep`` writes the sweep there (and reuses it
on the next run: the sweep resumes) instead of a temporary folder. ``--eval-overhead N`` instead
measures what keeping per-document scores costs a sweep's evaluation: the sweep evaluator on the
full-precision model, both shapes tasks in full, as it was (``log_samples=False``, corpus scores
only) and as it is (logged samples, per-document extraction), N alternating rounds, one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sweep_vs_separate import run  # wall seconds of a command, its output tail on failure

SPEC = {"model": {"pretrained": "mmq:shapes-blip2", "batch_size": 16, "device": "cpu", "quant_cache": "none"},
        "tasks": ["mmq_shapes_cap", "mmq_shapes_vqa"], "fixed": {"method": "uniform"},
        "grid": {"vit_bits": [16, 4, 2], "qformer_bits": [16, 4, 2], "llm_bits": [16, 4, 2]}}


def eval_overhead(rounds: int) -> dict:
    """Median seconds per evaluation without and with per-document scores (same scores checked)."""
    import torch
    from lmms_eval.evaluator import simple_evaluate

    from mmq_eval.quant.spec import QuantSpec
    from mmq_eval.sweep.evaluate import LmmsEvaluator, metrics_of

    torch.set_num_threads(1)
    ev = LmmsEvaluator({**SPEC["model"], "batch_size": 16}, SPEC["tasks"], None)
    spec = QuantSpec()

    def before():
        ev.lm.apply_quant(spec)
        out = simple_evaluate(model=ev.lm, tasks=ev.tasks, task_manager=ev.task_manager, limit=None,
                              bootstrap_iters=0, log_samples=False, verbosity="WARNING")
        return metrics_of(out["results"])

    def after():
        return ev(spec)[1]

    if before() != after():
        raise SystemExit("scores differ with per-document scores kept")
    times = {"without_per_doc": [], "with_per_doc": []}
    for _ in range(rounds):
        for name, fn in (("without_per_doc", before), ("with_per_doc", after)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"rounds": rounds, **{f"{k}_s": round(v, 3) for k, v in medians.items()},
            "extra_s": round(medians["with_per_doc"] - medians["without_per_doc"], 3),
            "runs": {k: [round(x, 3) for x in v] for k, v in times.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", help="a finished sweep folder with per-document scores (skips the sweep)")
    parser.add_argument("--keep", help="run the sweep into this folder (resumed if present)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--eval-overhead", type=int, metavar="N",
                        help="measure the evaluation's cost of per-document scores instead (N rounds)")
    args = parser.parse_args()
    if args.eval_overhead:
        os.environ["HF_HUB_OFFLINE"] = "1"
        result = eval_overhead(args.eval_overhead)
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    py = [sys.executable, "-m", "mmq_eval.cli"]
    with tempfile.TemporaryDirectory(prefix="mmq-bench-report-") as tmp:
        work = Path(tmp)
        sweep_s = None
        results = Path(args.results) if args.results else Path(args.keep or work / "sweep")
        if not args.results:
            (work / "spec.yaml").write_text(yaml.safe_dump(SPEC))
            sweep_s = run([*py, "sweep", str(work / "spec.yaml"), "--out", str(results)], env)
        from mmq_eval.sweep.per_doc import load_per_doc
        from mmq_eval.sweep.store import load_records

        records = load_records(results)
        per_doc = load_per_doc(results)
        times = {0: [], args.resamples: []}
        for i in range(args.repeats):
            for resamples, runs in times.items():
                out = work / f"report_{resamples}_{i}"
                runs.append(run([*py, "report", str(results), "--out", str(out),
                                             "--resamples", str(resamples)], env))
        md = (work / f"report_{args.resamples}_0" / "report.md").read_text()
    medians = {k: statistics.median(v) for k, v in times.items()}
    extra = medians[args.resamples] - medians[0]
    result = {"configs": len(records), "configs_with_per_doc": len(per_doc), "resamples": args.resamples,
              "sweep_s": None if sweep_s is None else round(sweep_s, 1),
              "report_s_without_intervals": round(medians[0], 2),
              "report_s_with_intervals": round(medians[args.resamples], 2),
              "extra_s": round(extra, 2), "target_extra_s": 10.0,
              "runs": {str(k): [round(x, 2) for x in v] for k, v in times.items()},
              "indistinguishable_rows": md.count("| ≈ FP |")}
    print(json.dumps(result, indent=2))
    print(f"report on {len(records)} configurations: {medians[0]:.1f} s without intervals, "
          f"{medians[args.resamples]:.1f} s with {args.resamples} resamples: {extra:+.1f} s "
          f"({'meets' if extra <= 10 else 'misses'} the <= 10 s target)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if extra <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
