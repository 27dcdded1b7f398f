"""Full-width quantization cost on this CPU: real architectures with every stack cut to a few blocks.

Builds ``--arch`` from its published config (built here, no network) with random float32 weights and
every block stack cut to ``--blocks`` blocks (the BLIP-2 Q-Former keeps 2: it alternates
cross-attention; LLaVA's ViT keeps 2: it reads the second-to-last layer), full widths and image
resolution, quantizes every component with each of ``--methods`` at 4 bits on ``--calib-samples``
synthetic samples, and reports per component the seconds per block split by stage (input capture,
statistics, solve, propagation: ``QuantReport.timings``), the peak resident memory per stage
(sampled every 20 ms), the peak over the run against the float32 weights, and the projection to the
full model: seconds per block × the published block count, and the peak plus 5 bytes (float32
weight + uint8 code) per parameter the cut removed. Each (arch, method) runs in a fresh process so
that its peak memory is its own.

    .venv/bin/python benchmarks/full_width.py --arch blip2-opt-2.7b --methods gptq awq [--json out.json]
    .venv/bin/python benchmarks/full_width.py --arch all --methods gptq awq
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

ARCH_NAMES = ("blip2-opt-2.7b", "blip2-flan-t5-xl", "blip2-itm-vit-g", "llava-1.5-7b", "qwen2.5-vl-7b")
STAGES = ("capture", "statistics", "solve", "propagate")
GiB = 1 << 30
PAGE = 4096


def _blip2_vision_qformer() -> dict:
    """ViT-g/14 at 224 px and the 12-layer Q-Former, shared by every BLIP-2 checkpoint."""
    return dict(
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                           image_size=224, patch_size=14, qkv_bias=True, layer_norm_eps=1e-6,
                           initializer_range=0.02),
        qformer_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            encoder_hidden_size=1408, cross_attention_frequency=2, vocab_size=30522),
        num_query_tokens=32,
    )


def blip2_flan_t5_xl_config():
    """Salesforce/blip2-flan-t5-xl: ViT-g, Q-Former, Flan-T5-XL (24 + 24 blocks, width 2048, gated GELU)."""
    from transformers import Blip2Config

    return Blip2Config(
        **_blip2_vision_qformer(),
        text_config=dict(model_type="t5", d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24,
                         num_decoder_layers=24, vocab_size=32128, feed_forward_proj="gated-gelu",
                         relative_attention_num_buckets=32, relative_attention_max_distance=128,
                         layer_norm_epsilon=1e-6, tie_word_embeddings=False, decoder_start_token_id=0,
                         pad_token_id=0, eos_token_id=1),
        image_token_index=32100,
    )


def blip2_itm_vit_g_config():
    """Salesforce/blip2-itm-vit-g: ViT-g and the Q-Former with its text stream (ITC/ITM heads), no LLM."""
    from transformers import Blip2Config

    parts = _blip2_vision_qformer()
    parts["qformer_config"].update(use_qformer_text_input=True, vocab_size=30523, max_position_embeddings=512)
    return Blip2Config(**parts, image_text_hidden_size=256)


def archs() -> dict:
    """name -> (model class, published config, calibration batches)."""
    import gpu_full_size as g
    from quantize_model import synthetic_batches
    from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

    out = {name: (cls, full, batches) for name, (cls, full, _, batches, _) in g.ARCHS.items()}
    out["blip2-flan-t5-xl"] = (Blip2ForConditionalGeneration, blip2_flan_t5_xl_config, synthetic_batches)
    out["blip2-itm-vit-g"] = (Blip2ForImageTextRetrieval, blip2_itm_vit_g_config, synthetic_batches)
    return out


def cut_config(arch: str, cfg, blocks: int) -> dict:
    """Cut every block stack of `cfg` to `blocks` in place; returns the published block count per component."""
    if arch.startswith("blip2"):
        counts = {"vit": cfg.vision_config.num_hidden_layers, "qformer": cfg.qformer_config.num_hidden_layers}
        cfg.vision_config.num_hidden_layers = blocks
        cfg.qformer_config.num_hidden_layers = max(2, blocks)  # one with and one without cross-attention
        if arch == "blip2-opt-2.7b":
            counts["llm"] = cfg.text_config.num_hidden_layers
            cfg.text_config.num_hidden_layers = blocks
        elif arch == "blip2-flan-t5-xl":  # encoder and decoder blocks together
            counts["llm"] = cfg.text_config.num_layers + cfg.text_config.num_decoder_layers
            cfg.text_config.num_layers = cfg.text_config.num_decoder_layers = blocks
    elif arch == "llava-1.5-7b":
        counts = {"vit": cfg.vision_config.num_hidden_layers, "llm": cfg.text_config.num_hidden_layers}
        cfg.vision_config.num_hidden_layers = max(2, blocks)  # features come from the second-to-last layer
        cfg.text_config.num_hidden_layers = blocks
    else:
        counts = {"vit": cfg.vision_config.depth, "llm": cfg.text_config.num_hidden_layers}
        cfg.vision_config.depth = blocks
        cfg.vision_config.fullatt_block_indexes = [blocks - 1]
        cfg.text_config.num_hidden_layers = blocks
    return counts


class StageMemory:
    """Samples this process's resident memory every `interval` s and books each sample to the
    (component, stage) the main thread is in, read from its call stack (``engine._Run``'s methods)."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak = interval, {}
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _where(self) -> tuple[str, str]:
        frame = sys._current_frames().get(self._main)
        names, component = [], "-"
        while frame is not None:
            names.append(frame.f_code.co_name)
            if frame.f_code.co_name == "_calibrate_component":
                component = frame.f_locals["comp"].name
            frame = frame.f_back
        if "capture_stack_inputs" in names:
            return component, "capture"
        if "_quantize_block" in names:
            return component, "statistics" if "run_block" in names else "solve"
        if "_calibrate_component" in names:
            return component, "propagate"
        return component, "other"

    def _run(self):
        with open("/proc/self/statm") as statm:
            while not self._stop.wait(self.interval):
                statm.seek(0)
                rss = int(statm.read().split()[1]) * PAGE
                key = "/".join(self._where())
                self.peak[key] = max(self.peak.get(key, 0), rss)


def measure(arch: str, method: str, blocks: int, calib_samples: int, threads: int) -> dict:
    """One measurement, in this process (run through a child of `main`)."""
    import gpu_full_size as g
    import torch

    from mmq_eval.quant import QuantSpec, quantize_model
    from mmq_eval.quant.arch import resolve_arch

    torch.set_num_threads(threads)
    model_class, full, make_batches = archs()[arch]
    with torch.device("meta"):
        full_params = sum(p.numel() for p in model_class._from_config(full()).parameters())
    cfg = full()
    counts = cut_config(arch, cfg, blocks)
    t = time.perf_counter()
    model = g.build_model(model_class, cfg, torch.device("cpu"), torch.float32)
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batches = make_batches(model, calib_samples, batch_size=16, text_len=32)
    arch_map = resolve_arch(model)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    spec = QuantSpec.from_args({"method": method, "bits": 4, "sym": True, "calib_samples": calib_samples})
    with StageMemory() as memory:
        report = quantize_model(model, spec, batches, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    split = report.stage_timings()
    components, projected_s = {}, 0.0
    for comp in arch_map.components:
        seconds = report.timings.get(comp.name, 0.0)
        n = len(comp.blocks)
        full_n = counts.get(comp.name, n) if comp.has_blocks else n
        components[comp.name] = {
            "blocks": n, "full_blocks": full_n, "seconds": seconds, "per_block_s": seconds / n,
            "stage_per_block_s": {s: v / n for s, v in split.get(comp.name, {}).items()},
            "peak_rss_by_stage": {s: memory.peak.get(f"{comp.name}/{s}", 0) for s in STAGES},
        }
        projected_s += seconds / n * full_n
    return {"arch": arch, "method": method, "blocks": blocks, "calib_samples": calib_samples, "threads": threads,
            "params": params, "full_params": full_params, "weight_bytes": weight_bytes, "build_s": build_s,
            "total_s": report.timings["total"], "peak_rss": peak, "rss_before_quantization": rss_before,
            "components": components, "projected_full_s": projected_s,
            "projected_full_peak_rss": peak + 5 * (full_params - params),
            "linears": len(report.layers),
            "mean_output_err": sum(r.output_rel_err or 0 for r in report.layers) / len(report.layers)}


def table(results: list[dict]) -> str:
    head = ("arch", "method", "component", "blocks", "s/block", *STAGES, "peak RSS GiB", "full blocks", "projected")
    rows = [head]
    for r in results:
        for name, c in r["components"].items():
            st = c["stage_per_block_s"]
            rows.append((r["arch"], r["method"], name, str(c["blocks"]), f"{c['per_block_s']:.1f}",
                         *(f"{st[s]:.1f}" if s in st else "" for s in STAGES),
                         f"{max(c['peak_rss_by_stage'].values()) / GiB:.2f}", str(c["full_blocks"]),
                         f"{c['per_block_s'] * c['full_blocks'] / 60:.1f} min"))
        rows.append((r["arch"], r["method"], "all", "", "", "", "", "", "", f"{r['peak_rss'] / GiB:.2f}", "",
                     f"{r['projected_full_s'] / 3600:.2f} h, {r['projected_full_peak_rss'] / GiB:.1f} GiB "
                     f"(weights here {r['weight_bytes'] / GiB:.2f} GiB, "
                     f"full {4 * r['full_params'] / GiB:.1f} GiB)"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=(*ARCH_NAMES, "all"), nargs="+", default=["all"])
    p.add_argument("--methods", "--method", dest="methods", choices=("gptq", "awq"), nargs="+", default=["gptq"])
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = ARCH_NAMES if "all" in args.arch else tuple(args.arch)
    if args.child:
        print(json.dumps(measure(names[0], args.methods[0], args.blocks, args.calib_samples, args.threads)))
        return 0
    results = []
    for arch in names:
        for method in args.methods:
            cmd = [sys.executable, __file__, "--child", "--arch", arch, "--methods", method, "--blocks",
                   str(args.blocks), "--calib-samples", str(args.calib_samples), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"[{arch} {method}] {results[-1]['total_s']:.1f} s, peak RSS "
                  f"{results[-1]['peak_rss'] / GiB:.2f} GiB", flush=True)
            if args.json:  # after every run, so an interrupted table keeps what it measured
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
