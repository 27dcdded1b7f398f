"""Benchmark: one in-process sweep vs separate lmms-eval runs, on the embedded shapes model.

Grid: uniform quantization, vit_bits x llm_bits in {16, 4, 2}^2 (nine configurations; 16/16 is
the full-precision baseline). Times ``mmq-eval sweep`` (one process: model loaded once, weights
restored and requantized per configuration) against nine ``python -m lmms_eval`` invocations
(one process, model load and task build each), checks both give the same scores, and prints
the time ratio; the target is <= 0.5. Needs mmq-eval installed (lmms-eval finds ``mmq_blip2``
through its entry point).

    python benchmarks/sweep_vs_separate.py [--limit N] [--batch-size 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BITS = (16, 4, 2)


def run(cmd: list[str], env: dict) -> float:
    """Wall seconds of ``cmd``; raises with its output tail on failure."""
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return elapsed


def sweep(work: Path, args, env: dict) -> tuple[float, dict]:
    spec = {"model": {"pretrained": args.pretrained, "batch_size": args.batch_size, "device": "cpu"},
            "tasks": args.tasks.split(","), "fixed": {"method": "uniform"},
            "grid": {"vit_bits": list(BITS), "llm_bits": list(BITS)}}
    (work / "spec.yaml").write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "mmq_eval.cli", "sweep", str(work / "spec.yaml"), "--out", str(work / "sweep")]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    elapsed = run(cmd, env)
    scores = {}
    for line in (work / "sweep" / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        scores[(rec["features"]["vit_bits"], rec["features"]["llm_bits"])] = rec["results"]
    return elapsed, scores


def separate(work: Path, args, env: dict) -> tuple[float, dict]:
    from mmq_eval.sweep.evaluate import metrics_of
    from mmq_eval.tasks import tasks_path

    total, scores = 0.0, {}
    for vit, llm in itertools.product(BITS, BITS):
        out = work / f"separate_{vit}_{llm}"
        cmd = [sys.executable, "-m", "lmms_eval", "--model", "mmq_blip2",
               "--model_args", f"pretrained={args.pretrained},device=cpu,method=uniform,vit_bits={vit},llm_bits={llm}",
               "--tasks", args.tasks, "--include_path", tasks_path(),
               "--batch_size", str(args.batch_size), "--output_path", str(out)]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        total += run(cmd, env)
        found = sorted(out.rglob("*_results.json"))
        if not found:  # lmms-eval exits 0 even when an evaluation failed
            raise SystemExit(f"no results written by: {' '.join(cmd)}")
        scores[(vit, llm)] = metrics_of(json.loads(found[-1].read_text())["results"])
    return total, scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="mmq:shapes-blip2", help="BLIP-2 checkpoint (default: the embedded one)")
    parser.add_argument("--tasks", default="mmq_shapes_cap,mmq_shapes_vqa", help="comma-separated task names")
    parser.add_argument("--limit", type=int, help="documents per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="mmq-bench-") as tmp:
        work = Path(tmp)
        t_sweep, s_sweep = sweep(work, args, env)
        t_sep, s_sep = separate(work, args, env)
    diff = max(abs(s_sweep[k][t][m] - s_sep[k][t][m]) for k in s_sep for t in s_sep[k] for m in s_sep[k][t])
    ratio = t_sweep / t_sep
    result = {"configs": len(s_sep), "sweep_s": round(t_sweep, 1), "separate_s": round(t_sep, 1),
              "ratio": round(ratio, 3), "target": 0.5, "max_score_diff": diff}
    print(json.dumps(result, indent=2))
    print(f"in-process sweep {t_sweep:.1f}s vs nine separate runs {t_sep:.1f}s: ratio {ratio:.2f} "
          f"({'meets' if ratio <= 0.5 else 'misses'} the <= 0.5 target); max score difference {diff:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ratio <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
