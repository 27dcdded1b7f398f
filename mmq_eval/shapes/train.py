"""Train the shapes BLIP-2 from scratch on CPU (captioning + VQA) and evaluate it on the test split.

    python -m mmq_eval.shapes.train --out DIR --minutes 10 --seed 0
    python -m mmq_eval.shapes.train --out DIR --steps 3 --eval-size 4     # smoke test

Budgets as in :mod:`mmq_eval.shapes.training`; the steps reached are recorded in training.json.
On a shared machine use --threads 1: two threads fighting other processes for two cores run up
to ten times slower.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from mmq_eval.shapes.model import build_shapes_blip2
from mmq_eval.shapes.tokenizer import NUM_QUERY_TOKENS, build_processor
from mmq_eval.shapes.training import Budget, fit, pixel_values, save_trained, vqa_accuracy
from mmq_eval.shapes.world import (
    CAPTION_PROMPT,
    VQA_PROMPT,
    balanced_vqa,
    canonical_caption,
    captions,
    make_scene,
    make_scenes,
    render,
    vqa_items,
)
from mmq_eval.tasks.captioning import cider_score

WARMUP_STEPS = 100


def training_batch(tokenizer, start: int, size: int, rng: random.Random, caption_mix: float):
    """Train-split scenes start..start+size, half captioning and half VQA, loss on targets only."""
    prompts, targets, images = [], [], []
    for index in range(start, start + size):
        scene = make_scene("train", index)
        images.append(render(scene))
        if rng.random() < 0.5:
            prompts.append(CAPTION_PROMPT)
            mixed = rng.random() < caption_mix
            targets.append(rng.choice(captions(scene)) if mixed else canonical_caption(scene))
        else:
            item = rng.choice(vqa_items(scene))
            prompts.append(VQA_PROMPT.format(question=item.question))
            targets.append(item.answer)
    image_ids = [tokenizer.convert_tokens_to_ids("<image>")] * NUM_QUERY_TOKENS
    prompt_ids = tokenizer(prompts)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    rows = [
        (image_ids + p, t + [tokenizer.eos_token_id]) for p, t in zip(prompt_ids, target_ids)
    ]
    length = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((size, length), tokenizer.pad_token_id)
    labels = torch.full((size, length), -100)
    mask = torch.zeros((size, length), dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        input_ids[i, :n] = torch.tensor(p + t)
        labels[i, len(p):n] = torch.tensor(t)
        mask[i, :n] = 1
    return dict(input_ids=input_ids, attention_mask=mask, labels=labels,
                pixel_values=pixel_values(images))


@torch.no_grad()
def generate(model, processor, images, prompts, max_new_tokens: int, batch_size: int = 50):
    """Greedy answers, exactly as the lmms-eval wrapper asks for them (new tokens only)."""
    out = []
    for i in range(0, len(images), batch_size):
        inputs = processor(images=images[i:i + batch_size], text=prompts[i:i + batch_size],
                           return_tensors="pt", padding=True)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1]:]
        out += [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


def evaluate(model, processor, n_captions: int = 200, n_questions: int = 500) -> dict:
    """Test-split CIDEr (5 references) and VQA exact-match accuracy, overall and per type."""
    model.eval()
    scenes = make_scenes("test", n_captions)
    preds = generate(model, processor, [render(s) for s in scenes],
                     [CAPTION_PROMPT] * len(scenes), max_new_tokens=24)
    score = cider_score({s.index: captions(s) for s in scenes},
                        {s.index: [p] for s, p in zip(scenes, preds)})
    pairs = balanced_vqa("test", n_questions)
    answers = generate(model, processor, [render(s) for s, _ in pairs],
                       [VQA_PROMPT.format(question=q.question) for _, q in pairs],
                       max_new_tokens=3)
    return {
        "cider": round(score, 4),
        **vqa_accuracy([q.question_type for _, q in pairs], [a == q.answer for (_, q), a in zip(pairs, answers)]),
        "examples": preds[:3],
    }


def example_loss(model, batch: dict) -> torch.Tensor:
    """Mean over examples of each example's mean target-token loss.

    Weighting examples, not tokens, keeps one-word VQA answers from being drowned out by
    captions that are ten times longer.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits[:, :-1]
    targets = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    counts = (targets != -100).sum(1).clamp(min=1)
    return (token_loss.sum(1) / counts).mean()


def train(out: Path, seed: int, budget: Budget, batch_size: int, caption_mix: float,
          eval_size: int, threads: int) -> dict:
    """Run training and evaluation; save model, processor and training.json into `out`."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    processor = build_processor()
    model = build_shapes_blip2(processor.tokenizer, seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=budget.peak_lr, weight_decay=0.01,
                            betas=(0.9, 0.98), fused=True)

    def step_loss(step: int):
        batch = training_batch(processor.tokenizer, step * batch_size, batch_size, rng, caption_mix)
        loss = example_loss(model, batch)
        return loss, f"loss {loss.item():.4f}"

    run = fit(model.parameters(), opt, step_loss, budget)
    metrics = evaluate(model, processor, n_captions=eval_size,
                       n_questions=max(5, int(eval_size * 2.5)))
    print(json.dumps(metrics), flush=True)
    record = {"seed": seed, "batch_size": batch_size, "caption_mix": caption_mix, "threads": threads,
              "eval": {"split": "test", "caption_scenes": eval_size, **metrics}}
    return save_trained(out, model, processor, run, budget, record)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=10.0,
                    help="training budget in CPU minutes of this process")
    ap.add_argument("--steps", type=int, default=None,
                    help="fixed step count (overrides --minutes)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--caption-mix", type=float, default=0.0,
                    help="probability of training on a random reference instead of the canonical")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--eval-size", type=int, default=200,
                    help="test captions to score (VQA questions: 2.5x as many)")
    a = ap.parse_args(argv)
    budget = Budget(peak_lr=a.lr, warmup=WARMUP_STEPS, steps=a.steps, minutes=a.minutes)
    train(a.out, a.seed, budget, a.batch_size, a.caption_mix, a.eval_size, a.threads)


if __name__ == "__main__":
    main()
