"""Forward passes of GPTQ calibration: our layer-sequential engine vs the seed repo's chunked scheme.

Counted with forward hooks on every transformer block of the embedded ``mmq:shapes-blip2``
(ViT, Q-Former, OPT), on the same 128 calibration images of the shapes world (half captioning,
half VQA prompts):

- ``ours``: ``quantize_model`` with GPTQ 4-bit on all components, batches of 16 with prompt and
  target text (as the lmms-eval wrapper builds them): per stack one partial model forward
  captures the first block's inputs, then each block runs on the recorded inputs (statistics,
  then the quantized block's outputs);
- ``seed``: the seed repo's scheme (gautomdas/mmq ``gptq_blip2.py``), forwards only, no GPTQ math:
  each component's Linears in chunks of 32; per chunk every calibration example (batch 1, image
  and prompt) runs through the model up to that component (ViT: ``vision_model``; Q-Former:
  ViT + Q-Former; language model and projector: ``model.generate``, ``--max-new-tokens``).

Reports, per component, block calls, token-block executions (tokens processed by a block,
summed: the compute) and passes per block per example, and wall time (ours: the whole
quantization; seed: its forwards alone, a lower bound of its cost). The seed's chunk counts for
the full-size model follow from its Linear counts (printed).

    python benchmarks/forward_count.py [--samples 128] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transformers import AutoProcessor, Blip2ForConditionalGeneration

from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant.arch import resolve_arch
from mmq_eval.shapes import calibration_examples

MODEL = ROOT / "mmq_eval" / "assets" / "shapes-blip2"
SEED_CHUNK = 32  # Linears per chunk in the seed's BLIP2Quantizer


class BlockCounter:
    """Forward hooks counting, per component, completed block calls and tokens processed."""

    def __init__(self, model: nn.Module):
        self.calls: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self._handles = [model.get_submodule(path).register_forward_hook(self._hook(comp.name), with_kwargs=True)
                         for comp in resolve_arch(model).components if comp.has_blocks for path in comp.blocks]

    def _hook(self, component: str):
        def hook(module, args, kwargs, output):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.calls[component] += 1
            self.tokens[component] += hidden.shape[0] * hidden.shape[1]
        return hook

    def remove(self) -> dict:
        for h in self._handles:
            h.remove()
        return {"calls": dict(self.calls), "tokens": dict(self.tokens)}


def linears(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Linear) for m in module.modules())


def seed_chunks(model) -> dict[str, int]:
    """Passes over the calibration set per component in the seed's scheme (chunks of 32 Linears)."""
    return {"vit": math.ceil(linears(model.vision_model) / SEED_CHUNK),
            "qformer": math.ceil(linears(model.qformer) / SEED_CHUNK),
            "llm": math.ceil((linears(model.language_model) + 1) / SEED_CHUNK)}  # + language_projection


@torch.no_grad()
def seed_forwards(model, examples, max_new_tokens: int) -> None:
    """The seed's calibration forwards, one example at a time."""
    chunks = seed_chunks(model)
    for _ in range(chunks["vit"]):
        for ex in examples:
            model.vision_model(pixel_values=ex["pixel_values"])
    for _ in range(chunks["qformer"]):
        for ex in examples:
            image = model.vision_model(pixel_values=ex["pixel_values"]).last_hidden_state
            mask = torch.ones(image.shape[:-1], dtype=torch.long)
            model.qformer(query_embeds=model.query_tokens.expand(image.shape[0], -1, -1),
                          encoder_hidden_states=image, encoder_attention_mask=mask)
    for _ in range(chunks["llm"]):
        for ex in examples:
            model.generate(**ex, max_new_tokens=max_new_tokens)


def full_size_seed_passes() -> str:
    """The seed's chunk counts for blip2-opt-2.7b, from its Linear counts."""
    vit, qformer, llm = 39 * 4, 12 * 8 + 6 * 4, 32 * 6 + 1 + 1  # + lm_head, language_projection
    return (f"blip2-opt-2.7b in the seed's scheme: ViT {math.ceil(vit / SEED_CHUNK)} passes, Q-Former "
            f"{math.ceil(qformer / SEED_CHUNK)}, language model {math.ceil(llm / SEED_CHUNK)} generate() passes "
            "over the calibration set, one example at a time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=20, help="seed generate() length (its default, 20)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the counts here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    processor = AutoProcessor.from_pretrained(MODEL)
    processor.tokenizer.padding_side = "left"
    examples = calibration_examples(args.samples, 0)

    def encode(chunk, with_target: bool):
        texts = [f"{prompt} {target}".strip() if with_target else prompt for _, prompt, target in chunk]
        return dict(processor(images=[image for image, _, _ in chunk], text=texts, return_tensors="pt",
                              padding=True))

    result = {}
    model = Blip2ForConditionalGeneration.from_pretrained(MODEL).eval()
    batches = [encode(examples[s:s + args.batch_size], True) for s in range(0, len(examples), args.batch_size)]
    counter = BlockCounter(model)
    start = time.perf_counter()
    quantize_model(model, QuantSpec.from_args({"method": "gptq", "bits": 4, "calib_samples": args.samples}),
                   batches, progress=False)
    result["ours"] = {**counter.remove(), "seconds": time.perf_counter() - start}

    model = Blip2ForConditionalGeneration.from_pretrained(MODEL).eval()
    singles = [encode([ex], False) for ex in examples]
    counter = BlockCounter(model)
    start = time.perf_counter()
    seed_forwards(model, singles, args.max_new_tokens)
    result["seed"] = {**counter.remove(), "seconds": time.perf_counter() - start, "passes": seed_chunks(model)}

    cfg = model.config
    per_example = {"vit": (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 + 1,
                   "qformer": cfg.num_query_tokens}
    blocks = {c.name: len(c.blocks) for c in resolve_arch(model).components}
    print(f"{args.samples} calibration examples, shapes-blip2, {args.threads} thread(s)")
    print(f"{'':>6} {'component':>9} {'block calls':>12} {'token-blocks':>13} {'passes/block/example':>21}")
    for who in ("ours", "seed"):
        for comp in ("vit", "qformer", "llm"):
            tokens = result[who]["tokens"].get(comp, 0)
            passes = f"{tokens / (blocks[comp] * args.samples * per_example[comp]):.2f}" if comp in per_example else "-"
            print(f"{who:>6} {comp:>9} {result[who]['calls'].get(comp, 0):>12,} {tokens:>13,} {passes:>21}")
    total = {who: sum(result[who]["tokens"].values()) for who in ("ours", "seed")}
    result["token_block_ratio_seed_over_ours"] = total["seed"] / total["ours"]
    print(f"token-block executions: seed / ours = {result['token_block_ratio_seed_over_ours']:.2f}x; "
          f"time: ours {result['ours']['seconds']:.1f} s (whole GPTQ) vs seed forwards alone "
          f"{result['seed']['seconds']:.1f} s")
    print(full_size_seed_passes())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
