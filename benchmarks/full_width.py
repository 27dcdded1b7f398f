"""Full-width quantization cost on this CPU: real architectures with every stack cut to a few blocks.

Builds ``--arch`` (blip2-opt-2.7b, llava-1.5-7b, qwen2.5-vl-7b: the published configs of
``gpu_full_size.py``) with random float32 weights and every block stack cut to ``--blocks`` blocks
(LLaVA keeps 2 ViT blocks: it reads the second-to-last layer), full widths and image resolution,
then quantizes every component with ``--method`` at 4 bits on ``--calib-samples`` synthetic samples
and reports, per component, the seconds per block (input capture, statistics, solve and
propagation included), the process's peak resident memory against the float32 weights, and the
projection to the full model (seconds per block × the published block count, per component).
Each (arch, method) runs in a fresh process so that its peak memory is its own.

    .venv/bin/python benchmarks/full_width.py --arch all --method gptq [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCH_NAMES = ("blip2-opt-2.7b", "llava-1.5-7b", "qwen2.5-vl-7b")
GiB = 1 << 30


def cut_config(arch: str, blocks: int):
    """The published config with every block stack cut to `blocks` (and the full block counts)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_full_size as g

    _, full, _, _, _ = g.ARCHS[arch]
    cfg = full()
    if arch == "blip2-opt-2.7b":
        counts = {"vit": cfg.vision_config.num_hidden_layers, "qformer": cfg.qformer_config.num_hidden_layers,
                  "llm": cfg.text_config.num_hidden_layers}
        cfg.vision_config.num_hidden_layers = blocks
        cfg.qformer_config.num_hidden_layers = max(2, blocks)  # one with and one without cross-attention
        cfg.text_config.num_hidden_layers = blocks
    elif arch == "llava-1.5-7b":
        counts = {"vit": cfg.vision_config.num_hidden_layers, "llm": cfg.text_config.num_hidden_layers}
        cfg.vision_config.num_hidden_layers = max(2, blocks)  # features come from the second-to-last layer
        cfg.text_config.num_hidden_layers = blocks
    else:
        counts = {"vit": cfg.vision_config.depth, "llm": cfg.text_config.num_hidden_layers}
        cfg.vision_config.depth = blocks
        cfg.vision_config.fullatt_block_indexes = [blocks - 1]
        cfg.text_config.num_hidden_layers = blocks
    return cfg, counts


def measure(arch: str, method: str, blocks: int, calib_samples: int, threads: int) -> dict:
    """One measurement, in this process (run through a child of `main`)."""
    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_full_size as g

    from mmq_eval.quant import QuantSpec, quantize_model
    from mmq_eval.quant.arch import resolve_arch

    torch.set_num_threads(threads)
    model_class, _, _, make_batches, published = g.ARCHS[arch]
    cfg, counts = cut_config(arch, blocks)
    t = time.perf_counter()
    model = g.build_model(model_class, cfg, torch.device("cpu"), torch.float32)
    build_s = time.perf_counter() - t
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batches = make_batches(model, calib_samples, batch_size=16, text_len=32)
    arch_map = resolve_arch(model)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    spec = QuantSpec.from_args({"method": method, "bits": 4, "sym": True, "calib_samples": calib_samples})
    report = quantize_model(model, spec, batches, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    per_block, projected = {}, 0.0
    for comp in arch_map.components:
        seconds = report.timings.get(comp.name, 0.0)
        n = len(comp.blocks)
        per_block[comp.name] = {"blocks": n, "seconds": seconds, "per_block_s": seconds / n}
        full_n = counts.get(comp.name, n) if comp.has_blocks else n
        per_block[comp.name]["full_blocks"] = full_n
        projected += seconds / n * full_n
    return {"arch": arch, "method": method, "blocks": blocks, "calib_samples": calib_samples, "threads": threads,
            "params": sum(p.numel() for p in model.parameters()), "published_params": published,
            "weight_bytes": weight_bytes, "build_s": build_s, "total_s": report.timings["total"],
            "peak_rss": peak, "rss_before_quantization": rss_before, "components": per_block,
            "projected_full_s": projected, "linears": len(report.layers),
            "mean_output_err": sum(r.output_rel_err or 0 for r in report.layers) / len(report.layers)}


def table(results: list[dict]) -> str:
    rows = [("arch", "method", "component", "blocks", "s/block", "full blocks", "projected")]
    for r in results:
        for name, c in r["components"].items():
            rows.append((r["arch"], r["method"], name, str(c["blocks"]), f"{c['per_block_s']:.1f}",
                         str(c["full_blocks"]), f"{c['per_block_s'] * c['full_blocks'] / 60:.1f} min"))
        rows.append((r["arch"], r["method"], "all", "", "", "",
                     f"{r['projected_full_s'] / 3600:.2f} h; peak RSS {r['peak_rss'] / GiB:.2f} GiB for "
                     f"{r['weight_bytes'] / GiB:.2f} GiB of float32 weights"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=(*ARCH_NAMES, "all"), default="all")
    p.add_argument("--method", choices=("gptq", "awq"), nargs="+", default=["gptq"])
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    archs = ARCH_NAMES if args.arch == "all" else (args.arch,)
    if args.child:
        print(json.dumps(measure(archs[0], args.method[0], args.blocks, args.calib_samples, args.threads)))
        return 0
    results = []
    for arch in archs:
        for method in args.method:
            cmd = [sys.executable, __file__, "--child", "--arch", arch, "--method", method, "--blocks",
                   str(args.blocks), "--calib-samples", str(args.calib_samples), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"[{arch} {method}] {results[-1]['total_s']:.1f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
