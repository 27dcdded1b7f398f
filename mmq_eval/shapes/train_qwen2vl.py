"""Train the shapes Qwen2-VL from scratch on CPU (captioning + VQA) and evaluate it on the test split.

    python -m mmq_eval.shapes.train_qwen2vl --out DIR --minutes 10 --seed 0
    python -m mmq_eval.shapes.train_qwen2vl --out DIR --steps 3 --eval-size 4     # smoke test

As the shapes LLaVA (:mod:`mmq_eval.shapes.train_llava`, whose example drawing, packing and
evaluation this reuses): every example is a single-turn chat,
``<|im_start|>user\\n<|vision_start|><|image_pad|>*16<|vision_end|>{instruction}<|im_end|>\\n
<|im_start|>assistant\\n`` followed by the target and ``<|im_end|>``, with the loss on the target
tokens only. Several examples about one image are packed into one row behind the shared image
prefix (up to ``<|vision_end|>``), with a block attention mask; the position ids are Qwen2-VL's
3D M-RoPE ids, the image prefix's as the model computes them and each example's text continuing
from the prefix, so each packed example is exactly its own single-turn sequence. Budgets as in
:mod:`mmq_eval.shapes.training`; the steps reached are recorded in training.json.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from mmq_eval.shapes.qwen2vl_model import (
    GRID,
    MERGE_SIZE,
    NUM_IMAGE_TOKENS,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    VISION_END,
    build_qwen2vl_processor,
    build_shapes_qwen2vl,
)
from mmq_eval.shapes.train_llava import PromptIds, parse_args, train_packed, training_batch
from mmq_eval.shapes.training import Budget

WARMUP_STEPS = 50


def prompt_ids_for(processor) -> PromptIds:
    """Prompt ids with the 16 image tokens expanded; the shared prefix ends at ``<|vision_end|>``."""
    return PromptIds(processor, image_tokens=NUM_IMAGE_TOKENS, prefix_end=VISION_END)


def prefix_positions(model, prompt_ids: PromptIds) -> torch.Tensor:
    """(3, prefix_len) M-RoPE (temporal, height, width) ids of the image prefix, from the model."""
    ids = torch.tensor([prompt_ids.prefix])
    types = torch.tensor(prompt_ids.processor.create_mm_token_type_ids([prompt_ids.prefix]))
    grid = torch.tensor([[1, GRID, GRID]])
    positions, _ = model.model.get_rope_index(ids, types, image_grid_thw=grid)
    return positions[:, 0]


def mrope_positions(positions: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """(B, L) single-turn positions of packed rows (0..n-1 prefix, n.. text) to (3, B, L) M-RoPE ids.

    Prefix tokens take the prefix's 3D ids; text after it runs on from the prefix's largest id
    + 1, equal in all three sections (as ``get_rope_index`` numbers text).
    """
    n = prefix.shape[1]
    out = (positions - n + int(prefix.max()) + 1).unsqueeze(0).repeat(3, 1, 1)
    in_prefix = positions < n
    out[:, in_prefix] = prefix[:, positions[in_prefix]]
    return out


def patchify(pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, 64, 64) normalised images to Qwen2-VL's flat patches (B*64, 3*2*8*8).

    The same layout as the image processor's: patches in 2x2 merge blocks, each patch's pixels
    channel-major and repeated over the two temporal frames of a still image.
    """
    b, c = pixel_values.shape[:2]
    p, m, g = PATCH_SIZE, MERGE_SIZE, GRID
    x = pixel_values.reshape(b, c, g // m, m, p, g // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (b, gh, gw, mh, mw, c, ph, pw)
    x = x.unsqueeze(6).expand(*x.shape[:6], TEMPORAL_PATCH_SIZE, p, p)
    return x.reshape(b * g * g, c * TEMPORAL_PATCH_SIZE * p * p)


def qwen2vl_batch(prompt_ids: PromptIds, prefix: torch.Tensor, start: int, size: int,
                  rng: random.Random, vqa_fraction: float, caption_mix: float,
                  per_image: int) -> dict:
    """The LLaVA script's packed batch, in Qwen2-VL's inputs: 3D positions, flat patches, grids."""
    batch = training_batch(prompt_ids, start, size, rng, vqa_fraction, caption_mix, per_image)
    batch["position_ids"] = mrope_positions(batch["position_ids"], prefix)
    batch["pixel_values"] = patchify(batch["pixel_values"])
    batch["image_grid_thw"] = torch.tensor([[1, GRID, GRID]] * size)
    return batch


def train(out: Path, seed: int, budget: Budget, batch_size: int, vqa_fraction: float,
          caption_mix: float, per_image: int, eval_size: int, threads: int = 2) -> dict:
    """Run training and evaluation; save model, processor and training.json into `out`."""
    def build(seed: int):
        processor = build_qwen2vl_processor()
        model = build_shapes_qwen2vl(processor.tokenizer, seed)
        prompt_ids = prompt_ids_for(processor)
        prefix = prefix_positions(model, prompt_ids)
        return processor, model, (
            lambda start, size, rng: qwen2vl_batch(prompt_ids, prefix, start, size, rng, vqa_fraction,
                                                   caption_mix, per_image))

    return train_packed(out, seed, budget, batch_size, eval_size, threads, build,
                        {"vqa_fraction": vqa_fraction, "caption_mix": caption_mix, "examples_per_image": per_image,
                         "image_tokens": NUM_IMAGE_TOKENS})


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv, __doc__.splitlines()[0], per_image=8, lr=3e-3)
    budget = Budget(peak_lr=a.lr, warmup=WARMUP_STEPS, steps=a.steps, minutes=a.minutes, log_every=50)
    train(a.out, a.seed, budget, a.batch_size, a.vqa_fraction, a.caption_mix, a.per_image,
          a.eval_size, a.threads)


if __name__ == "__main__":
    main()
