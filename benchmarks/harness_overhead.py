"""Harness overhead: lmms-eval end to end on ``mmq_shapes_cap`` vs a bare ``generate`` loop.

Both paths caption the task's 200 test images with one loaded model (the embedded
``mmq:shapes-blip2`` through the ``mmq_blip2`` wrapper), batch size 16, the task's generation
settings (greedy, 24 new tokens), in this process:

- ``bare``: read the parquet, run the processor and ``model.generate`` batch by batch, decode;
- ``lmms-eval``: ``simple_evaluate`` on the task (task build from the parquet, requests, the
  wrapper's batching, generation, response filtering) with ``predict_only`` (no scoring), and
  once more with the captioning metrics (CIDEr, BLEU, METEOR, ROUGE-L: Java tokenizer start-ups).

One warm-up of each, then ``--repeats`` rounds alternating the paths; medians and their ratio.
The target is lmms-eval (predict only) <= 1.2x bare. Outputs of both paths are compared.

    python benchmarks/harness_overhead.py [--repeats 5] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASK = "mmq_shapes_cap"
PARQUET = ROOT / "mmq_eval" / "task_configs" / "mmq_shapes" / "data" / "shapes_cap_test.parquet"
BATCH = 16
MAX_NEW_TOKENS = 24


def bare_loop(model, processor) -> list[str]:
    """Caption every test image with plain transformers calls."""
    import pandas as pd
    from PIL import Image

    frame = pd.read_parquet(PARQUET)
    images = [Image.open(io.BytesIO(cell["bytes"])).convert("RGB") for cell in frame["image"]]
    captions = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        inputs = processor(images=chunk, text=[""] * len(chunk), return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
        texts = processor.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        captions.extend(t.strip() for t in texts)
    return captions


def harness(lm, task_manager, predict_only: bool) -> list[str]:
    """Captions from lmms-eval's simple_evaluate (document order)."""
    from lmms_eval.evaluator import simple_evaluate

    out = simple_evaluate(model=lm, tasks=[TASK], task_manager=task_manager, bootstrap_iters=0,
                          log_samples=True, predict_only=predict_only, verbosity="ERROR")
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return [s["filtered_resps"][0] for s in samples]


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from mmq_eval.models.loading import load_processor, resolve_pretrained
    from mmq_eval.tasks import tasks_path

    lm = get_model("mmq_blip2")(pretrained="mmq:shapes-blip2", device="cpu", batch_size=BATCH)
    processor = load_processor(resolve_pretrained("mmq:shapes-blip2"))
    processor.tokenizer.padding_side = "left"
    task_manager = TaskManager(verbosity="ERROR", include_path=tasks_path(), include_defaults=False)

    paths = {"bare": lambda: bare_loop(lm.model, processor),
             "lmms-eval predict-only": lambda: harness(lm, task_manager, True),
             "lmms-eval with metrics": lambda: harness(lm, task_manager, False)}
    outputs = {name: fn() for name, fn in paths.items()}  # warm-up
    times = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            times[name].append(timed(fn)[0])
    medians = {name: statistics.median(t) for name, t in times.items()}
    same = sum(a == b for a, b in zip(outputs["bare"], outputs["lmms-eval predict-only"]))
    result = {
        "images": len(outputs["bare"]), "repeats": args.repeats, "threads": args.threads,
        "median_s": {k: round(v, 3) for k, v in medians.items()},
        "ratio_predict_only": round(medians["lmms-eval predict-only"] / medians["bare"], 3),
        "ratio_with_metrics": round(medians["lmms-eval with metrics"] / medians["bare"], 3),
        "identical_captions": same, "target": 1.2,
    }
    for name, t in times.items():
        print(f"{name:>24}: median {medians[name]:.2f} s  (runs: {', '.join(f'{x:.2f}' for x in t)})")
    print(f"lmms-eval predict-only / bare = {result['ratio_predict_only']:.2f} (target <= 1.2); with metrics "
          f"{result['ratio_with_metrics']:.2f}; identical captions {same}/{result['images']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ratio_predict_only"] <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
