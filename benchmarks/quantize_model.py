"""Whole-model quantization time (uniform / rtn / gptq / awq) of a saved checkpoint of any registered family.

Loads the checkpoint afresh for every run, builds synthetic calibration batches (BLIP-2, BLIP-2
ITM, LLaVA: from the config, random pixels and random prompt tokens around the image
placeholders; other families: random-colour images and a chat prompt through the checkpoint's
own processor), runs ``quantize_model`` and prints the median time of ``--repeats`` runs, the
time per quantized Linear, bits per weight and the mean calibration output error per method.

    .venv/bin/python benchmarks/quantize_model.py [PATH] [--bits 4] [--calib-samples 32] [--repeats 3] [--threads 1]

PATH defaults to the embedded ``mmq_eval/assets/shapes-blip2``; without it, the tiny random
BLIP-2 of ``tests/tiny_models.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmq_eval.quant import QuantSpec, quantize_model

DEFAULT_MODEL = ROOT / "mmq_eval" / "assets" / "shapes-blip2"


def load(path: Path | None):
    """(model factory, description): a fresh model per call."""
    if path is not None and (path / "config.json").is_file():
        import transformers
        from transformers import AutoConfig

        arch = (AutoConfig.from_pretrained(path).architectures or ["Blip2ForConditionalGeneration"])[0]
        return (lambda: getattr(transformers, arch).from_pretrained(path, dtype=torch.float32).eval()), f"{arch} from {path}"
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import make_tiny_blip2

    return (lambda: make_tiny_blip2(0, "opt")[0]), "tiny random BLIP-2 OPT (tests/tiny_models.py)"


SYNTHETIC = ("Blip2ForConditionalGeneration", "Blip2ForImageTextRetrieval", "LlavaForConditionalGeneration")


def processor_batches(path: Path, n_samples: int, batch_size: int = 8, seed: int = 0) -> list[dict]:
    """Calibration batches from the checkpoint's processor: random-colour 64×64 images and a chat prompt."""
    from PIL import Image
    from transformers import AutoProcessor

    from mmq_eval.models.image_only import allow_processors_without_torchvision

    allow_processors_without_torchvision()
    processor = AutoProcessor.from_pretrained(path)
    g = torch.Generator().manual_seed(seed)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle ?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batches = []
    for start in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - start)
        images = [Image.new("RGB", (64, 64), tuple(int(v) for v in torch.randint(0, 256, (3,), generator=g)))
                  for _ in range(n)]
        batches.append(dict(processor(images=images, text=[f"{prompt} red"] * n, return_tensors="pt", padding=True)))
    return batches


def synthetic_batches(model, n_samples: int, batch_size: int = 8, text_len: int = 12, seed: int = 0) -> list[dict]:
    """Calibration batches shaped like processor output, from the model's config alone."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    vision = cfg.vision_config
    batches = []
    for start in range(0, n_samples, batch_size):
        n = min(batch_size, n_samples - start)
        pixels = torch.randn(n, 3, vision.image_size, vision.image_size, generator=g)
        name = type(model).__name__
        if name == "Blip2ForImageTextRetrieval":
            ids = torch.randint(3, cfg.qformer_config.vocab_size, (n, text_len), generator=g)
            batches.append({"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids)})
            continue
        if name == "LlavaForConditionalGeneration":
            n_image = (vision.image_size // vision.patch_size) ** 2
        else:
            n_image = cfg.num_query_tokens
        image = torch.full((n, n_image), cfg.image_token_index)
        text = torch.randint(cfg.image_token_index + 1, cfg.text_config.vocab_size, (n, text_len), generator=g)
        ids = torch.cat([image, text], 1)
        batch = {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if getattr(cfg.text_config, "model_type", "") == "t5":
            batch["decoder_input_ids"] = text[:, :4].contiguous()
        batches.append(batch)
    return batches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=["uniform", "rtn", "gptq", "awq"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    make, desc = load(args.path)
    print(f"{desc}; {args.bits}-bit all components; {args.calib_samples} calibration samples; "
          f"median of {args.repeats}; {args.threads} thread(s); torch {torch.__version__}")
    print(f"{'method':>8} {'time s':>8} {'s/Linear':>9} {'bpw':>7} {'linears':>8} {'mean out err':>13}")
    for method in args.methods:
        params = {"method": method, "bits": args.bits}
        if method in ("gptq", "awq"):
            params["calib_samples"] = args.calib_samples
        times = []
        for _ in range(args.repeats):
            model = make()
            batches = None
            if method in ("gptq", "awq"):
                batches = (synthetic_batches(model, args.calib_samples) if type(model).__name__ in SYNTHETIC
                           else processor_batches(args.path, args.calib_samples))
            t = time.perf_counter()
            report = quantize_model(model, QuantSpec.from_args(params), batches, progress=False)
            times.append(time.perf_counter() - t)
        errs = [r.output_rel_err for r in report.layers if r.output_rel_err is not None]
        err = f"{statistics.fmean(errs):.4f}" if errs else "-"
        median = statistics.median(times)
        print(f"{method:>8} {median:>8.2f} {median / len(report.layers):>9.4f} {report.bpw:>7.3f} "
              f"{len(report.layers):>8} {err:>13}")


if __name__ == "__main__":
    main()
