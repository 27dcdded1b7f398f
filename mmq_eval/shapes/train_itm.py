"""Train the shapes BLIP-2 image-text retrieval model (ITC + ITM) from scratch on CPU.

    python -m mmq_eval.shapes.train_itm --out DIR --minutes 9 --seed 0
    python -m mmq_eval.shapes.train_itm --out DIR --steps 3 --eval-size 8     # smoke test

Losses as BLIP-2's stage 1 without the generation term: in-batch image-text contrastive (ITC,
learnable temperature; every caption an image's references hold is a positive, since scenes
share captions) and image-text matching (ITM) on the positives plus one hard negative text per
image and one hard negative image per text, drawn from the ITC similarities. Evaluation: the
retrieval protocol of ``mmq_shapes_retrieval`` on the first test scenes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from torch.nn import functional as F
from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor

from mmq_eval.models.retrieval import (
    DEFAULTS,
    gallery_ranks,
    image_features,
    itc_similarity,
    itm_logits,
    text_features,
)
from mmq_eval.shapes.model import QFORMER, VISION
from mmq_eval.shapes.tokenizer import NUM_QUERY_TOKENS, build_processor, build_tokenizer
from mmq_eval.shapes.training import Budget, fit, pixel_values, save_trained
from mmq_eval.shapes.world import captions, make_scene, make_scenes, render
from mmq_eval.tasks.retrieval_metrics import recall_at_k

EMBED_DIM = 64
MAX_TEXT_POSITIONS = 64
WARMUP_STEPS = 100
#: The retrieval settings of task_configs/mmq_shapes/mmq_shapes_retrieval.yaml.
EVAL_SETTINGS = dict(DEFAULTS, k_test=16, match_identical_captions=True)


def shapes_itm_config(tokenizer) -> Blip2Config:
    """Retrieval config: the shapes ViT and Q-Former, a text stream, no image tokens in the text."""
    qformer = dict(
        QFORMER, use_qformer_text_input=True, vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id, max_position_embeddings=MAX_TEXT_POSITIONS,
    )
    return Blip2Config(
        vision_config=dict(VISION), qformer_config=qformer, num_query_tokens=NUM_QUERY_TOKENS,
        image_text_hidden_size=EMBED_DIM, image_token_index=None,
    )


def build_shapes_blip2_itm(tokenizer, seed: int) -> Blip2ForImageTextRetrieval:
    """A freshly initialised shapes retrieval model (non-zero ViT init, random query tokens)."""
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(shapes_itm_config(tokenizer))
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.1)
    return model


def build_itm_processor() -> Blip2Processor:
    """The shapes processor adding no image tokens to the text (0, not None: 5.24 subtracts it)."""
    processor = build_processor(build_tokenizer())
    processor.num_query_tokens = 0
    return processor


def training_batch(tokenizer, start: int, size: int, rng: random.Random) -> dict:
    """Train scenes start..start+size, one random reference each, and which captions fit which image."""
    scenes = [make_scene("train", i) for i in range(start, start + size)]
    refs = [set(captions(s)) for s in scenes]
    texts = [rng.choice(captions(s)) for s in scenes]
    tokens = tokenizer(texts, padding="longest", return_tensors="pt", padding_side="right")
    positive = torch.tensor([[t in r for t in texts] for r in refs])
    return {"pixel_values": pixel_values([render(s) for s in scenes]), "positive": positive,
            "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}


def _contrastive(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    targets = positive.float() / positive.sum(dim=1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _hard_negatives(sim: torch.Tensor, positive: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each row, a column drawn with probability softmax(sim), positives excluded."""
    weights = sim.softmax(dim=1).masked_fill(positive, 0.0) + 1e-8 * ~positive
    return torch.multinomial(weights, 1, generator=gen).squeeze(1)


def losses(model, temp: torch.Tensor, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(ITC loss, ITM loss) of one batch."""
    ids, mask, positive = batch["input_ids"], batch["attention_mask"], batch["positive"]
    vit, image_embeds = image_features(model, batch["pixel_values"])
    sim = itc_similarity(image_embeds, text_features(model, ids, mask)) / temp
    itc = (_contrastive(sim, positive) + _contrastive(sim.t(), positive.t())) / 2
    with torch.no_grad():
        neg_text = _hard_negatives(sim, positive, gen)
        neg_image = _hard_negatives(sim.t(), positive.t(), gen)
    logits = itm_logits(
        model,
        torch.cat([vit, vit, vit[neg_image]]),
        torch.cat([ids, ids[neg_text], ids]),
        torch.cat([mask, mask[neg_text], mask]),
    )
    n = len(ids)
    labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long()
    return itc, F.cross_entropy(logits, labels)


def evaluate(model, processor, n_images: int = 100) -> dict:
    """Recall@1/5/10 (%) of the mmq_shapes_retrieval protocol on the first test scenes."""
    model.eval()
    scenes = make_scenes("test", n_images)
    i2t, t2i = gallery_ranks(model, processor, [render(s) for s in scenes],
                             [captions(s) for s in scenes], EVAL_SETTINGS, batch_size=100)
    return {f"{name}_r{k}": round(100 * recall_at_k(ranks, k), 2)
            for name, ranks in (("i2t", i2t), ("t2i", t2i)) for k in (1, 5, 10)}


def train(out: Path, seed: int, budget: Budget, batch_size: int, eval_size: int,
          threads: int = 2) -> dict:
    """Train, evaluate, and save model, processor and training.json into ``out``."""
    torch.set_num_threads(threads)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    processor = build_itm_processor()
    model = build_shapes_blip2_itm(processor.tokenizer, seed)
    model.train()
    temp = torch.nn.Parameter(torch.tensor(0.07))
    opt = torch.optim.AdamW([*model.parameters(), temp], lr=budget.peak_lr, weight_decay=0.05,
                            betas=(0.9, 0.98))
    last: dict[str, float] = {}

    def step_loss(step: int):
        batch = training_batch(processor.tokenizer, step * batch_size, batch_size, rng)
        itc, itm = losses(model, temp, batch, gen)
        last.update(itc=itc.item(), itm=itm.item())
        return itc + itm, f"itc {last['itc']:.3f} itm {last['itm']:.3f} temp {temp.item():.3f}"

    def clamp_temperature():
        with torch.no_grad():
            temp.clamp_(0.001, 0.5)

    run = fit(model.parameters(), opt, step_loss, budget, after_step=clamp_temperature)
    metrics = evaluate(model, processor, eval_size)
    print(json.dumps(metrics), flush=True)
    record = {"seed": seed, "batch_size": batch_size, "temperature": round(temp.item(), 4),
              "final_itc_loss": round(last["itc"], 4), "final_itm_loss": round(last["itm"], 4),
              "threads": threads, "eval": {"split": "test", "images": eval_size, **metrics}}
    return save_trained(out, model, processor, run, budget, record)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=9.0, help="training budget in CPU minutes of this process")
    ap.add_argument("--steps", type=int, default=None, help="fixed step count (overrides --minutes)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-size", type=int, default=100, help="test images in the gallery")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    a = ap.parse_args(argv)
    budget = Budget(peak_lr=a.lr, warmup=WARMUP_STEPS, steps=a.steps, minutes=a.minutes)
    train(a.out, a.seed, budget, a.batch_size, a.eval_size, a.threads)


if __name__ == "__main__":
    main()
