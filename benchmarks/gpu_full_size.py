"""Full-size VLMs on one GPU, offline: GPTQ cost, generation throughput, packed export.

``--arch`` picks the architecture: ``blip2-opt-2.7b`` (Salesforce/blip2-opt-2.7b, default),
``llava-1.5-7b`` (llava-hf/llava-1.5-7b-hf), ``qwen2.5-vl-7b`` (Qwen/Qwen2.5-VL-7B-Instruct) or
``all`` (one after another within ``--budget-s``: an architecture whose estimated time no longer
fits is skipped, and the summary says so). Each is built from its published config with random
weights (nothing is downloaded), then, timing each stage with CUDA synchronisation:

1. GPTQ 4-bit (symmetric, group 128) of every component (ViT, Q-Former, projector, LLM) with
   synthetic calibration (random pixels and tokens, ``--calib-samples``);
2. batched greedy generation (``--gen-batch`` images × ``--new-tokens`` forced new tokens), median
   of ``--repeats`` runs after a warm-up: throughput in new tokens per second;
3. packed export (``mmq_eval.export``): the model is compressed in place and written as a
   compressed-tensors ``pack-quantized`` checkpoint; tensor bytes and GPU memory before/after;
4. reload of that checkpoint with plain ``from_pretrained``: GPU memory at rest (still packed) and
   after the first forward (decompressed), and the largest logit difference to the in-memory
   fake-quantized model.

Prints one summary table per architecture last and writes the figures as JSON (a list, one
entry per architecture) to ``$OUT/gpu_full_size.json`` when ``$OUT`` is set (or to ``--json``).
``--smoke`` runs the same code on a tiny config of the same architecture on the CPU (float32) for CI.

    python benchmarks/gpu_full_size.py --arch all              # GPU, fp16; needs mmq-eval[export]
    python benchmarks/gpu_full_size.py --arch llava-1.5-7b --smoke   # tiny config, CPU, seconds
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
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from mmq_eval.export.packed import write_packed
from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant.plan import build_plan

GiB = 1 << 30


def blip2_config() -> Blip2Config:
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


def blip2_smoke_config() -> Blip2Config:
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


def llava_config() -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px, 2-layer MLP projector, Vicuna-7B."""
    return LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768, hidden_act="quick_gelu"),
        text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                         max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=0),
        image_token_index=32000, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def llava_smoke_config() -> LlavaConfig:
    return LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32),
        text_config=dict(model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=96, max_position_embeddings=256,
                         pad_token_id=0),
        image_token_index=90, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


def _qwen_ids(image: int) -> dict:
    return dict(image_token_id=image, video_token_id=image + 1, vision_start_token_id=image - 3,
                vision_end_token_id=image - 2)


def qwen2_5_vl_config() -> Qwen2_5_VLConfig:
    """Qwen/Qwen2.5-VL-7B-Instruct: 32-block window-attention ViT (MLP width 3420), merger, Qwen2.5-7B."""
    return Qwen2_5_VLConfig(
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu"),
        text_config=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                                             "rope_theta": 1000000.0}),
        **_qwen_ids(151655),
    )


def qwen2_5_vl_smoke_config() -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=40, num_heads=2, out_hidden_size=48,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                           fullatt_block_indexes=[1]),
        text_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=96, max_position_embeddings=256,
                         rope_parameters={"rope_type": "default", "mrope_section": [4, 4, 4], "rope_theta": 10000.0}),
        **_qwen_ids(90),
    )


def qwen_batches(model, n_samples: int, batch_size: int = 8, text_len: int = 12, seed: int = 0,
                 image_size: int | None = None) -> list[dict]:
    """Processor-shaped Qwen2.5-VL batches from the config: flattened patches of one image per
    sample (``image_size`` px, default 224; 32 in smoke runs), its grid, and the image tokens."""
    cfg, vision = model.config, model.config.vision_config
    size = image_size or (224 if vision.patch_size == 14 else 32)
    grid = size // vision.patch_size
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size ** 2
    n_image = grid * grid // vision.spatial_merge_size ** 2
    g = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - start)
        text = torch.randint(0, cfg.vision_start_token_id - 1, (n, text_len), generator=g)
        image = torch.cat([torch.full((n, 1), cfg.vision_start_token_id), torch.full((n, n_image), cfg.image_token_id),
                           torch.full((n, 1), cfg.vision_end_token_id)], 1)
        ids = torch.cat([image, text], 1)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "mm_token_type_ids": (ids == cfg.image_token_id).long(),
                        "pixel_values": torch.randn(n * grid * grid, patch_dim, generator=g),
                        "image_grid_thw": torch.tensor([[1, grid, grid]] * n)})
    return batches


#: name -> (model class, published config, smoke config, calibration batches, published parameter count)
ARCHS = {
    # ViT-g, 12-layer Q-Former, OPT-2.7b; tied LM head
    "blip2-opt-2.7b": (Blip2ForConditionalGeneration, blip2_config, blip2_smoke_config, synthetic_batches,
                       3_744_761_856),
    "llava-1.5-7b": (LlavaForConditionalGeneration, llava_config, llava_smoke_config, synthetic_batches,
                     7_063_427_072),
    "qwen2.5-vl-7b": (Qwen2_5_VLForConditionalGeneration, qwen2_5_vl_config, qwen2_5_vl_smoke_config, qwen_batches,
                      8_292_166_656),
}
#: Rough seconds per architecture on one H100-class GPU (build, GPTQ, generation, export, reload),
#: used by --arch all to skip what no longer fits in --budget-s.
ESTIMATED_S = {"blip2-opt-2.7b": 150, "llava-1.5-7b": 240, "qwen2.5-vl-7b": 270}


def build_model(model_class, config, device: torch.device, dtype: torch.dtype):
    """Random weights straight on the device (BLIP-2's query tokens re-drawn: their default init is zero)."""
    torch.manual_seed(0)
    with device:
        model = model_class._from_config(config, dtype=dtype)
    if hasattr(model, "query_tokens"):
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


def run(args, arch: str) -> dict:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model_class, full, smoke, make_batches, published = ARCHS[arch]
    config = smoke() if args.smoke else full()
    f: dict = {"arch": arch, "published_params": published,
               "mode": "smoke" if args.smoke else "full", "device": str(device), "dtype": args.dtype,
               "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "bits": args.bits, "group_size": args.group_size, "calib_samples": args.calib_samples}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    with timed(f, "build_s", device):
        model = build_model(model_class, config, device, dtype)
    f["params"] = sum(p.numel() for p in model.parameters())
    f["dense_tensor_bytes"] = tensor_bytes(model)
    f["gpu_allocated_dense"] = gpu_allocated(device)

    batches = [to_device(b, device, dtype)
               for b in make_batches(model, args.calib_samples, batch_size=args.calib_batch, text_len=32)]
    spec = QuantSpec.from_args({"method": "gptq", "bits": args.bits, "sym": True,
                                **({"group_size": args.group_size} if args.group_size else {}),
                                "calib_samples": args.calib_samples})
    with timed(f, "gptq_s", device):
        report = quantize_model(model, spec, batches, progress=False)
    f["quantized_linears"] = len(report.layers)
    f["bpw"] = report.bpw
    f["gptq_component_s"] = {k: v for k, v in report.timings.items() if k != "total" and "/" not in k}
    f["gptq_stage_s"] = report.stage_timings()
    f["gpu_peak_through_gptq"] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    gen = to_device(make_batches(model, args.gen_batch, batch_size=args.gen_batch, text_len=8, seed=1)[0],
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
        reloaded = model_class.from_pretrained(out_dir, dtype=dtype, device_map=str(device)).eval()
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
    """The figures of one architecture as one table (or the line saying it was skipped)."""
    if f.get("skipped"):
        return f"{f['arch']}: skipped ({f['skipped']})"
    published = "" if f["mode"] == "smoke" else f" (published model: {f['published_params']:,})"
    per_component = ", ".join(f"{k} {v:.1f} s" for k, v in f["gptq_component_s"].items())
    rows = [
        ("model", f"{f['arch']} architecture ({f['mode']}), random weights, {f['params']:,} params{published}"),
        ("device / dtype", f"{f['gpu'] or f['device']} / {f['dtype']}, torch {f['torch']}"),
        ("build", f"{f['build_s']:.1f} s"),
        (f"GPTQ {f['bits']}-bit g{f['group_size'] or '128 (per channel where 128 does not divide)'} sym, all components",
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
    parser.add_argument("--arch", choices=(*ARCHS, "all"), default="blip2-opt-2.7b")
    parser.add_argument("--budget-s", type=float, default=570,
                        help="with --arch all: skip an architecture whose estimated time no longer fits (default 570)")
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU (CI)")
    parser.add_argument("--device", help="default: cuda if available (never for --smoke), else cpu")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                        help="default: float16 on CUDA, float32 on the CPU")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int,
                        help="default: 128 where it divides a layer's input width, per channel elsewhere")
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
    args.calib_samples = args.calib_samples or (8 if args.smoke else 128)
    args.gen_batch = args.gen_batch or (2 if args.smoke else 32)
    args.new_tokens = args.new_tokens or (4 if args.smoke else 32)
    if args.smoke:
        torch.set_num_threads(1)

    start = time.perf_counter()
    results = []
    keep = args.export_dir
    for arch in (ARCHS if args.arch == "all" else (args.arch,)):
        used = time.perf_counter() - start
        estimate = 1 if args.smoke else ESTIMATED_S[arch]
        if args.arch == "all" and used + estimate > args.budget_s:
            results.append({"arch": arch, "skipped": f"~{estimate} s would not fit: "
                                                     f"{used:.1f} of {args.budget_s:.0f} s used"})
            print(f"[{arch}] skipped: does not fit the time budget", flush=True)
            continue
        arch_start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="mmq-gpu-full-size-") as tmp:
            args.export_dir = str(Path(keep) / arch) if keep else tmp
            figures = run(args, arch)
        figures.update(repeats=args.repeats, export_dir=args.export_dir if keep else None,
                       total_s=time.perf_counter() - arch_start)
        results.append(figures)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    target = args.json or (Path(os.environ["OUT"]) / "gpu_full_size.json" if os.environ.get("OUT") else None)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(results, indent=2) + "\n")
    print("\n\n".join(summary(f) for f in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
