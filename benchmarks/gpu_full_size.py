"""Full-size BLIP-2 OPT-2.7b on one GPU, offline: GPTQ cost, generation throughput, packed export.

Builds the Salesforce/blip2-opt-2.7b architecture from a config with random weights (nothing is
downloaded), then, timing each stage with CUDA synchronisation:

1. GPTQ 4-bit (symmetric, group 128) of every component (ViT, Q-Former, projector, OPT) with
   synthetic calibration (random pixels and tokens, ``--calib-samples``);
2. batched greedy generation (``--gen-batch`` images × ``--new-tokens`` forced new tokens), median
   of ``--repeats`` runs after a warm-up: throughput in new tokens per second;
3. packed export (``mmq_eval.export``): the model is compressed in place and written as a
   compressed-tensors ``pack-quantized`` checkpoint; tensor bytes and GPU memory before/after;
4. reload of that checkpoint with plain ``from_pretrained``: GPU memory at rest (still packed) and
   after the first forward (decompressed), and the largest logit difference to the in-memory
   fake-quantized model.

Prints one summary table last and writes the figures as JSON to ``$OUT/gpu_full_size.json`` when
``$OUT`` is set (or to ``--json``). ``--smoke`` runs the same code on a tiny config on the CPU
(float32) for CI.

    python benchmarks/gpu_full_size.py            # GPU, fp16, ~3.7B parameters; needs mmq-eval[export]
    python benchmarks/gpu_full_size.py --smoke    # tiny config, CPU, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quantize_model import synthetic_batches
from transformers import Blip2Config, Blip2ForConditionalGeneration

from mmq_eval.export.packed import write_packed
from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant.plan import build_plan

#: Parameters of Salesforce/blip2-opt-2.7b (ViT-g, 12-layer Q-Former, OPT-2.7b; tied LM head).
FULL_SIZE_PARAMS = 3_744_761_856
GiB = 1 << 30


def full_size_config() -> Blip2Config:
    """The blip2-opt-2.7b architecture (ViT-g/14 at 224 px, 32 query tokens, OPT-2.7b)."""
    return Blip2Config(
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                           num_attention_heads=16, image_size=224, patch_size=14, qkv_bias=True,
                           layer_norm_eps=1e-6, initializer_range=0.02),
        qformer_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, encoder_hidden_size=1408, cross_attention_frequency=2,
                            vocab_size=30522),
        text_config=dict(model_type="opt", hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                         num_attention_heads=32, vocab_size=50304, max_position_embeddings=2048,
                         word_embed_proj_dim=2560, pad_token_id=1, bos_token_id=2, eos_token_id=2),
        num_query_tokens=32, image_token_index=50265,
    )


def smoke_config() -> Blip2Config:
    """A tiny config with the same structure, for CPU runs in CI."""
    return Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8, initializer_range=0.02),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            encoder_hidden_size=32, cross_attention_frequency=2, vocab_size=64),
        text_config=dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                         num_attention_heads=2, vocab_size=96, max_position_embeddings=128,
                         word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2, eos_token_id=2),
        num_query_tokens=4, image_token_index=90,
    )


def build_model(config: Blip2Config, device: torch.device, dtype: torch.dtype) -> Blip2ForConditionalGeneration:
    """Random weights straight on the device (query tokens re-drawn: their default init is zero)."""
    torch.manual_seed(0)
    with device:
        model = Blip2ForConditionalGeneration._from_config(config, dtype=dtype)
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.5)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(figures: dict, key: str, device: torch.device):
    """Wall seconds of the block, synchronised with the device, into figures[key]."""
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    figures[key] = time.perf_counter() - start
    print(f"[{key}] {figures[key]:.1f} s", flush=True)


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds (tied tensors once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def gpu_allocated(device: torch.device) -> int | None:
    """Bytes allocated on the GPU after freeing what Python no longer references; None on CPU."""
    if device.type != "cuda":
        return None
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device)


def to_device(batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    out = {k: v.to(device) for k, v in batch.items()}
    out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def generation_throughput(model, batch: dict, new_tokens: int, repeats: int, device) -> tuple[float, int]:
    """(median seconds, new tokens per run) of greedy generation forced to ``new_tokens`` tokens."""
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1)
    times = []
    with torch.inference_mode():
        model.generate(**batch, **options)  # warm-up
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            out = model.generate(**batch, **options)
            sync(device)
            times.append(time.perf_counter() - start)
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return statistics.median(times), generated


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    config = smoke_config() if args.smoke else full_size_config()
    f: dict = {"mode": "smoke" if args.smoke else "full", "device": str(device), "dtype": args.dtype,
               "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "bits": args.bits, "group_size": args.group_size, "calib_samples": args.calib_samples}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with timed(f, "build_s", device):
        model = build_model(config, device, dtype)
    f["params"] = sum(p.numel() for p in model.parameters())
    f["dense_tensor_bytes"] = tensor_bytes(model)
    f["gpu_allocated_dense"] = gpu_allocated(device)

    batches = [to_device(b, device, dtype)
               for b in synthetic_batches(model, args.calib_samples, batch_size=args.calib_batch, text_len=32)]
    spec = QuantSpec.from_args({"method": "gptq", "bits": args.bits, "sym": True, "group_size": args.group_size,
                                "calib_samples": args.calib_samples})
    with timed(f, "gptq_s", device):
        report = quantize_model(model, spec, batches, progress=False)
    f["quantized_linears"] = len(report.layers)
    f["bpw"] = report.bpw
    f["gptq_component_s"] = {k: v for k, v in report.timings.items() if k != "total"}
    f["gpu_peak_through_gptq"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    gen = to_device(synthetic_batches(model, args.gen_batch, batch_size=args.gen_batch, text_len=8, seed=1)[0],
                    device, dtype)
    seconds, tokens = generation_throughput(model, gen, args.new_tokens, args.repeats, device)
    f.update(generate_s=seconds, generated_tokens=tokens, tokens_per_s=tokens / seconds)
    with torch.inference_mode():
        reference = model(**batches[0]).logits.float().cpu()

    out_dir = Path(args.export_dir)
    with timed(f, "export_s", device):
        write_packed(model, None, build_plan(model, spec), report.qweights, out_dir)
    f["packed_tensor_bytes"] = tensor_bytes(model)
    f["gpu_allocated_packed"] = gpu_allocated(device)
    f["packed_bytes_on_disk"] = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
    del model
    base = gpu_allocated(device)

    with timed(f, "reload_s", device):
        reloaded = Blip2ForConditionalGeneration.from_pretrained(out_dir, dtype=dtype, device_map=str(device)).eval()
    f["gpu_allocated_reloaded"] = None if base is None else gpu_allocated(device) - base
    with torch.inference_mode():
        logits = reloaded(**batches[0]).logits.float().cpu()
    f["gpu_allocated_reloaded_after_forward"] = None if base is None else gpu_allocated(device) - base
    f["reload_max_abs_logit_diff"] = float((logits - reference).abs().max())
    f["reference_max_abs_logit"] = float(reference.abs().max())
    if device.type == "cuda":
        f["gpu_peak"] = torch.cuda.max_memory_allocated(device)
    return f


def _size(n) -> str:
    if n is None:
        return "-"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / (1 << 20):.2f} MiB"


def summary(f: dict) -> str:
    """The figures as one table."""
    published = "" if f["mode"] == "smoke" else f" (published model: {FULL_SIZE_PARAMS:,})"
    per_component = ", ".join(f"{k} {v:.1f} s" for k, v in f["gptq_component_s"].items())
    rows = [
        ("model", f"BLIP-2 OPT-2.7b architecture ({f['mode']}), random weights, {f['params']:,} params{published}"),
        ("device / dtype", f"{f['gpu'] or f['device']} / {f['dtype']}, torch {f['torch']}"),
        ("build", f"{f['build_s']:.1f} s"),
        (f"GPTQ {f['bits']}-bit g{f['group_size']} sym, all components",
         f"{f['gptq_s']:.1f} s for {f['quantized_linears']} Linears, {f['calib_samples']} samples ({per_component})"),
        ("bits per weight", f"{f['bpw']:.3f}"),
        ("generation", (f"{f['tokens_per_s']:.1f} new tokens/s ({f['generated_tokens']} tokens in "
                        f"{f['generate_s']:.2f} s, median of {f['repeats']})")),
        ("export (pack-quantized)", f"{f['export_s']:.1f} s; on disk {_size(f['packed_bytes_on_disk'])}"),
        ("model tensors dense -> packed", f"{_size(f['dense_tensor_bytes'])} -> {_size(f['packed_tensor_bytes'])}"),
        ("GPU allocated dense -> packed", f"{_size(f['gpu_allocated_dense'])} -> {_size(f['gpu_allocated_packed'])}"),
        ("GPU peak through GPTQ / overall", f"{_size(f['gpu_peak_through_gptq'])} / {_size(f.get('gpu_peak'))}"),
        ("reload", (f"{f['reload_s']:.1f} s; GPU at rest {_size(f['gpu_allocated_reloaded'])}, after first "
                    f"forward {_size(f['gpu_allocated_reloaded_after_forward'])}")),
        ("reload max |logit diff|",
         f"{f['reload_max_abs_logit_diff']:.3g} (max |logit| {f['reference_max_abs_logit']:.3g})"),
        ("total", f"{f['total_s']:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU (CI)")
    parser.add_argument("--device", help="default: cuda if available (never for --smoke), else cpu")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                        help="default: float16 on CUDA, float32 on the CPU")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, help="default 128 (smoke: 16)")
    parser.add_argument("--calib-samples", type=int, help="default 128 (smoke: 8)")
    parser.add_argument("--calib-batch", type=int, default=16)
    parser.add_argument("--gen-batch", type=int, help="images per generate call (default 32; smoke: 2)")
    parser.add_argument("--new-tokens", type=int, help="tokens generated per image (default 32; smoke: 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--export-dir", help="keep the checkpoint here (default: a temporary folder, deleted)")
    parser.add_argument("--json", help="write the figures here (default: $OUT/gpu_full_size.json if $OUT is set)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    args.device = args.device or ("cuda" if cuda else "cpu")
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    args.group_size = args.group_size or (16 if args.smoke else 128)
    args.calib_samples = args.calib_samples or (8 if args.smoke else 128)
    args.gen_batch = args.gen_batch or (2 if args.smoke else 32)
    args.new_tokens = args.new_tokens or (4 if args.smoke else 32)
    if args.smoke:
        torch.set_num_threads(1)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmq-gpu-full-size-") as tmp:
        keep = args.export_dir
        args.export_dir = keep or tmp
        figures = run(args)
    figures.update(repeats=args.repeats, export_dir=keep, total_s=time.perf_counter() - start)
    target = args.json or (Path(os.environ["OUT"]) / "gpu_full_size.json" if os.environ.get("OUT") else None)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(figures, indent=2) + "\n")
    print(summary(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
