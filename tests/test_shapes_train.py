"""Training script smoke test and the behaviour of the committed shapes BLIP-2 checkpoint."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from mmq_eval.shapes import train
from mmq_eval.shapes.tokenizer import build_processor
from mmq_eval.shapes.world import Scene, Shape, make_scenes, render

ASSET = Path(__file__).resolve().parents[1] / "mmq_eval" / "assets" / "shapes-blip2"

# Reloads a checkpoint with the hub switched off and generates as the lmms-eval wrapper would.
RELOAD = """
import sys, torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor
from mmq_eval.shapes.world import make_scenes, render
processor = Blip2Processor.from_pretrained(sys.argv[1])
model = Blip2ForConditionalGeneration.from_pretrained(sys.argv[1]).eval()
images = [render(s) for s in make_scenes("test", 2)]
inputs = processor(images=images, text=["", "Question: which shape is red? Answer:"],
                   return_tensors="pt", padding=True)
out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
print(out.shape[0], out.shape[1] - inputs["input_ids"].shape[1])
"""


def answer(model, processor, scenes: list[Scene], prompt: str) -> list[str]:
    return train.generate(model, processor, [render(s) for s in scenes], [prompt] * len(scenes),
                          max_new_tokens=20)


def test_train_smoke_saves_a_model_that_reloads_offline(tmp_path):
    threads = torch.get_num_threads()
    try:
        train.main(["--out", str(tmp_path), "--steps", "3", "--eval-size", "2",
                    "--batch-size", "8", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["steps"] == 3 and {"cider", "vqa_accuracy"} <= set(record["eval"])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path)], env=env,
                         capture_output=True, text=True, check=True)
    rows, new_tokens = map(int, out.stdout.split())
    assert rows == 2 and 1 <= new_tokens <= 5


def test_training_batch_masks_everything_but_the_target():
    tok = build_processor().tokenizer
    batch = train.training_batch(tok, 0, 6, random.Random(0), caption_mix=0.0)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert batch["pixel_values"].shape == (6, 3, 64, 64)
    for row in range(6):
        target = labels[row][labels[row] != -100].tolist()
        assert target[-1] == tok.eos_token_id and len(target) >= 2
        assert ids[row, :8].tolist() == [tok.convert_tokens_to_ids("<image>")] * 8
        assert ids[row, 8].item() == tok.bos_token_id
        assert (labels[row][mask[row] == 0] == -100).all()


def test_pixel_values_match_the_processor():
    images = [render(s) for s in make_scenes("test", 3)]
    expected = build_processor()(images=images, text=[""] * 3, return_tensors="pt")
    assert torch.equal(train.pixel_values(images), expected["pixel_values"])


def test_committed_checkpoint_answers_and_captions_simple_scenes():
    record = json.loads((ASSET / "training.json").read_text())
    assert record["eval"]["cider"] >= 2.5 and record["eval"]["vqa_accuracy"] >= 0.55
    processor = Blip2Processor.from_pretrained(ASSET)
    model = Blip2ForConditionalGeneration.from_pretrained(ASSET).eval()
    square = Scene("test", 0, (Shape("square", "blue", "large", 30, 34),))
    circle = Scene("test", 0, (Shape("circle", "red", "large", 20, 20),))
    assert answer(model, processor, [square], "Question: which shape is blue? Answer:") == [
        "square"
    ]
    assert answer(model, processor, [circle], "Question: what colour is the circle? Answer:") == [
        "red"
    ]
    assert answer(model, processor, [square, circle], "") == [
        "a large blue square",
        "a large red circle",
    ]
