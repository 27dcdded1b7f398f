"""Train the shapes LLaVA from scratch on CPU (captioning + VQA) and evaluate it on the test split.

    python -m mmq_eval.shapes.train_llava --out DIR --minutes 10 --seed 0
    python -m mmq_eval.shapes.train_llava --out DIR --steps 3 --eval-size 4     # smoke test

Every example is a single-turn LLaVA-1.5 chat, ``USER: <image>\\n{instruction} ASSISTANT:``
followed by the target and ``</s>``; the loss covers only the target tokens. Several examples
about one image are packed into one row behind the shared image prefix, with a block attention
mask and position ids that make each exactly equivalent to its own single-turn sequence (multi-
turn chats were tried first: later turns learned to answer from the earlier answers in the
text). Budgets as in :mod:`mmq_eval.shapes.training`; the steps reached are recorded in
training.json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from mmq_eval.shapes.llava_model import (
    CAPTION_INSTRUCTION,
    NEWLINE,
    NUM_IMAGE_TOKENS,
    VQA_INSTRUCTION,
    build_llava_processor,
    build_shapes_llava,
    user_prompt,
)
from mmq_eval.shapes.train import generate
from mmq_eval.shapes.training import Budget, fit, pixel_values, save_trained, vqa_accuracy
from mmq_eval.shapes.world import (
    balanced_vqa,
    canonical_caption,
    captions,
    make_scene,
    make_scenes,
    render,
    vqa_items,
)
from mmq_eval.tasks.captioning import cider_score

WARMUP_STEPS = 50


class PromptIds:
    """Token ids of chat-template prompts with the image token expanded (as the processor does).

    Every prompt starts with the same image prefix ``</s> USER : <image>*64 \\n``
    (`prefix_len` tokens, up to the first `prefix_end`); the rest depends on the user text only.
    Other chat families give their image-token count and the token that closes their prefix.
    """

    def __init__(self, processor, image_tokens: int = NUM_IMAGE_TOKENS, prefix_end: str = NEWLINE):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_tokens = image_tokens
        self._cache: dict[str, list[int]] = {}
        end = self.tokenizer.convert_tokens_to_ids(prefix_end)
        probe = self(CAPTION_INSTRUCTION)
        self.prefix = probe[:probe.index(end) + 1]
        self.prefix_len = len(self.prefix)

    def __call__(self, text: str) -> list[int]:
        if text not in self._cache:
            prompt = user_prompt(self.processor, text)
            image = self.processor.image_token
            prompt = prompt.replace(image, image * self.image_tokens)
            ids = self.tokenizer(prompt)["input_ids"]
            if hasattr(self, "prefix") and ids[:self.prefix_len] != self.prefix:
                raise ValueError(f"prompt for {text!r} does not start with the image prefix")
            self._cache[text] = ids
        return self._cache[text]


def image_examples(scene, rng: random.Random, k: int, vqa_fraction: float,
                   caption_mix: float) -> list[tuple[str, str]]:
    """Up to `k` distinct (user text, target) single-turn examples about one scene.

    Each is the caption request (at most once, with probability 1 - vqa_fraction) or a
    question of a uniformly drawn type.
    """
    items, out, captioned = vqa_items(scene), [], False
    for _ in range(k):
        if not captioned and (rng.random() >= vqa_fraction or not items):
            mixed = rng.random() < caption_mix
            out.append((CAPTION_INSTRUCTION,
                        rng.choice(captions(scene)) if mixed else canonical_caption(scene)))
            captioned = True
        elif items:
            qtype = rng.choice(sorted({q.question_type for q in items}))
            item = rng.choice([q for q in items if q.question_type == qtype])
            items.remove(item)
            out.append((VQA_INSTRUCTION.format(question=item.question), item.answer))
    return out


def pack_row(prompt_ids: PromptIds, examples: list[tuple[str, str]]):
    """One sequence holding `examples` (single-turn chats about one image) behind a shared prefix.

    Returns ids, labels, position ids and segment ids (0: image prefix, k: example k). With the
    mask of `packed_attention_mask` and these positions, every example sees exactly what it
    would see alone (the prefix, then itself, at the same positions), so the packed row trains
    k independent single-turn examples while the image prefix is computed once.
    """
    tokenizer, n = prompt_ids.tokenizer, prompt_ids.prefix_len
    ids, labels = list(prompt_ids.prefix), [-100] * n
    positions, segments = list(range(n)), [0] * n
    for k, (text, target) in enumerate(examples, start=1):
        tail = prompt_ids(text)[n:]
        answer = tokenizer(target, add_special_tokens=False)["input_ids"]
        answer = answer + [tokenizer.eos_token_id]
        ids += tail + answer
        labels += [-100] * len(tail) + answer
        positions += range(n, n + len(tail) + len(answer))
        segments += [k] * (len(tail) + len(answer))
    return ids, labels, positions, segments


def packed_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) boolean mask: causal, within one example or onto the image prefix.

    `segments` is (B, L) with 0 for the prefix, k >= 1 for example k and -1 for padding (padding
    attends to itself, so no row is empty).
    """
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    prefix = (segments == 0)[:, None, :]
    return (causal & (same | prefix))[:, None]


def training_batch(prompt_ids: PromptIds, start: int, size: int, rng: random.Random,
                   vqa_fraction: float, caption_mix: float, per_image: int = 1) -> dict:
    """Train-split scenes start..start+size, `per_image` packed examples each, loss on targets."""
    tokenizer = prompt_ids.tokenizer
    rows, images = [], []
    for index in range(start, start + size):
        scene = make_scene("train", index)
        images.append(render(scene))
        rows.append(pack_row(prompt_ids, image_examples(scene, rng, per_image, vqa_fraction,
                                                        caption_mix)))
    length = max(len(r[0]) for r in rows)
    input_ids = torch.full((size, length), tokenizer.pad_token_id)
    labels = torch.full((size, length), -100)
    positions = torch.zeros((size, length), dtype=torch.long)
    segments = torch.full((size, length), -1)
    for i, (ids, lab, pos, seg) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(ids)] = torch.tensor(lab)
        positions[i, :len(ids)] = torch.tensor(pos)
        segments[i, :len(ids)] = torch.tensor(seg)
    return dict(input_ids=input_ids, attention_mask=packed_attention_mask(segments),
                position_ids=positions, labels=labels, pixel_values=pixel_values(images))


def evaluate(model, processor, n_captions: int = 200, n_questions: int = 500) -> dict:
    """Test-split CIDEr (5 references) and VQA exact-match accuracy through the chat template.

    The defaults are the scenes and questions of task_configs/mmq_shapes/data/*.parquet.
    """
    model.eval()
    scenes = make_scenes("test", n_captions)
    preds = generate(model, processor, [render(s) for s in scenes],
                     [user_prompt(processor, CAPTION_INSTRUCTION)] * len(scenes),
                     max_new_tokens=24)
    score = cider_score({s.index: captions(s) for s in scenes},
                        {s.index: [p] for s, p in zip(scenes, preds)})
    pairs = balanced_vqa("test", n_questions)
    answers = generate(model, processor, [render(s) for s, _ in pairs],
                       [user_prompt(processor, VQA_INSTRUCTION.format(question=q.question))
                        for _, q in pairs],
                       max_new_tokens=5)
    return {
        "cider": round(score, 4),
        **vqa_accuracy([q.question_type for _, q in pairs], [a == q.answer for (_, q), a in zip(pairs, answers)]),
        "caption_scenes": n_captions,
        "vqa_questions": len(pairs),
        "examples": preds[:3],
    }


def train_packed(out: Path, seed: int, budget: Budget, batch_size: int, eval_size: int, threads: int,
                 build, record: dict) -> dict:
    """The packed chat-model training run shared by this script and train_qwen2vl: seed, build,
    fit, evaluate, save model, processor and training.json (``record`` plus run settings and scores).

    ``build(seed)`` returns (processor, model, make_batch), ``make_batch(start, size, rng)`` a
    training batch of packed rows.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor, model, make_batch = build(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=budget.peak_lr, weight_decay=0.01, betas=(0.9, 0.98))

    def step_loss(step: int):
        loss = model(**make_batch(step * batch_size, batch_size, rng)).loss
        return loss, f"loss {loss.item():.4f}"

    run = fit(model.parameters(), opt, step_loss, budget)
    metrics = evaluate(model, processor, n_captions=eval_size,
                       n_questions=max(5, int(eval_size * 2.5)))
    print(json.dumps(metrics), flush=True)
    record = {"architecture": type(model).__name__, "seed": seed, "batch_size": batch_size, **record,
              "threads": threads, "eval": {"split": "test", **metrics}}
    return save_trained(out, model, processor, run, budget, record)


def train(out: Path, seed: int, budget: Budget, batch_size: int, vqa_fraction: float,
          caption_mix: float, per_image: int, eval_size: int, threads: int = 2) -> dict:
    """Run training and evaluation; save model, processor and training.json into `out`."""
    def build(seed: int):
        processor = build_llava_processor()
        prompt_ids = PromptIds(processor)
        return processor, build_shapes_llava(processor.tokenizer, seed), (
            lambda start, size, rng: training_batch(prompt_ids, start, size, rng, vqa_fraction, caption_mix,
                                                    per_image))

    return train_packed(out, seed, budget, batch_size, eval_size, threads, build,
                        {"vqa_fraction": vqa_fraction, "caption_mix": caption_mix, "examples_per_image": per_image})


def parse_args(argv: list[str] | None, description: str, per_image: int, lr: float) -> argparse.Namespace:
    """The command line of the packed chat-model training scripts (this one and train_qwen2vl)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget in CPU minutes of this process")
    ap.add_argument("--steps", type=int, default=None,
                    help="fixed step count (overrides --minutes)")
    ap.add_argument("--batch-size", type=int, default=16, help="images (packed rows) per step")
    ap.add_argument("--per-image", type=int, default=per_image,
                    help="single-turn examples packed per image (behind one shared image prefix)")
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--vqa-fraction", type=float, default=0.6,
                    help="share of examples that are questions (the rest are captions)")
    ap.add_argument("--caption-mix", type=float, default=0.0,
                    help="probability of training on a random reference instead of the canonical")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (1 avoids thrashing when another job shares 2 cores)")
    ap.add_argument("--eval-size", type=int, default=200,
                    help="test captions to score (VQA questions: 2.5x as many)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv, __doc__.splitlines()[0], per_image=6, lr=2e-3)
    budget = Budget(peak_lr=a.lr, warmup=WARMUP_STEPS, steps=a.steps, minutes=a.minutes, log_every=50)
    train(a.out, a.seed, budget, a.batch_size, a.vqa_fraction, a.caption_mix, a.per_image,
          a.eval_size, a.threads)


if __name__ == "__main__":
    main()
