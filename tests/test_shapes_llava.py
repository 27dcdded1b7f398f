"""The shapes LLaVA: training script smoke test, prompt format, layer -2 wiring, committed checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from mmq_eval.shapes import train_llava
from mmq_eval.shapes.llava_model import (
    CAPTION_INSTRUCTION,
    NUM_IMAGE_TOKENS,
    VQA_INSTRUCTION,
    build_llava_processor,
    build_shapes_llava,
    user_prompt,
)
from mmq_eval.shapes.world import Scene, Shape, make_scene, render

ASSET = Path(__file__).resolve().parents[1] / "mmq_eval" / "assets" / "shapes-llava"


def answer(model, processor, images, texts, max_new_tokens=5) -> list[str]:
    """As the lmms-eval wrapper does: chat template, left padding, greedy, new tokens only."""
    prompts = [user_prompt(processor, t) for t in texts]
    inputs = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [a.strip() for a in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def load(path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    processor = LlavaProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    return model, processor


def test_chat_prompt_and_special_tokens():
    processor = build_llava_processor()
    tok = processor.tokenizer
    prompt = user_prompt(processor, VQA_INSTRUCTION.format(question="which shape is red?"))
    assert prompt == ("USER: <image>\nwhich shape is red?\n"
                      "Answer the question using a single word or phrase. ASSISTANT:")
    ids = processor(images=[render(make_scene("test", 0))], text=[prompt])["input_ids"][0]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens.count("<image>") == NUM_IMAGE_TOKENS == 64
    assert "<unk>" not in tokens and tokens[-2:] == ["assistant", ":"]
    caption = tok.convert_ids_to_tokens(tok(user_prompt(processor, CAPTION_INSTRUCTION))["input_ids"])
    assert "<unk>" not in caption
    assert (tok.pad_token_id, tok.eos_token_id, tok.convert_tokens_to_ids("<image>")) == (0, 2, 3)
    assert tok.padding_side == "left"


def test_packed_rows_are_single_turn_chat_examples():
    """Each example packed behind the image prefix has the processor's single-turn ids, and
    the model gives it the same logits as when it stands alone."""
    processor = build_llava_processor()
    tok = processor.tokenizer
    prompt_ids = train_llava.PromptIds(processor)
    scene = make_scene("train", 0)
    examples = train_llava.image_examples(scene, random.Random(0), 3, 0.6, 0.0)
    assert len({text for text, _ in examples}) == 3
    ids, labels, positions, segments = train_llava.pack_row(prompt_ids, examples)
    n = prompt_ids.prefix_len
    assert n == 1 + 2 + NUM_IMAGE_TOKENS + 1  # </s> user : <image>*64 \n
    model = build_shapes_llava(tok, seed=0).eval()
    batch = train_llava.training_batch(prompt_ids, 0, 1, random.Random(0), 0.6, 0.0, 3)
    assert batch["input_ids"][0].tolist() == ids
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        for k, (text, target) in enumerate(examples, start=1):
            where = [i for i, s in enumerate(segments) if s == k]
            chat = user_prompt(processor, text)
            alone = processor(images=[render(scene)], text=[chat], return_tensors="pt")
            expected = alone["input_ids"][0].tolist()
            answer = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert ids[:n] + [ids[i] for i in where] == expected + answer
            assert [labels[i] for i in where][-len(answer):] == answer
            assert [positions[i] for i in where] == list(range(n, len(expected) + len(answer)))
            single = model(input_ids=torch.tensor([expected + answer]),
                           pixel_values=alone["pixel_values"]).logits[0, n:]
            torch.testing.assert_close(packed[where], single, atol=1e-5, rtol=1e-4)
    assert sum(label != -100 for label in labels) == sum(
        len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for _, t in examples)


def test_train_smoke_saves_a_reloadable_model(tmp_path, monkeypatch):
    train_llava.main(["--out", str(tmp_path), "--steps", "3", "--eval-size", "2",
                      "--batch-size", "4", "--per-image", "2"])
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["steps"] == 3 and set(record["eval"]) >= {"cider", "vqa_accuracy"}
    model, processor = load(tmp_path, monkeypatch)
    assert processor.tokenizer.padding_side == "left" and processor.chat_template
    images = [render(make_scene("test", i)) for i in range(2)]
    answers = answer(model, processor, images, [CAPTION_INSTRUCTION] * 2)
    assert len(answers) == 2  # untrained: any text, but it reloads offline and generates


def test_last_vit_layer_does_not_affect_outputs():
    """vision_feature_layer=-2 (LLaVA-1.5): the last ViT layer's weights never reach the logits."""
    processor = build_llava_processor()
    model = build_shapes_llava(processor.tokenizer, seed=0).eval()
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"
    inputs = processor(images=[render(make_scene("test", 1))],
                       text=[user_prompt(processor, CAPTION_INSTRUCTION)], return_tensors="pt")
    layers = model.model.vision_tower.encoder.layers
    with torch.no_grad():
        before = model(**inputs).logits
        for p in layers[-1].parameters():
            p.add_(torch.randn_like(p))
        assert torch.equal(model(**inputs).logits, before)
        for p in layers[-2].parameters():
            p.add_(torch.randn_like(p))
        assert not torch.allclose(model(**inputs).logits, before)


@pytest.mark.skipif(not (ASSET / "model.safetensors").exists(), reason="checkpoint not trained")
def test_committed_checkpoint_answers_easy_questions(monkeypatch):
    model, processor = load(ASSET, monkeypatch)
    record = json.loads((ASSET / "training.json").read_text())
    assert record["eval"]["vqa_accuracy"] >= 0.55
    assert (ASSET / "model.safetensors").stat().st_size < 10_000_000
    square = render(Scene("test", 0, (Shape("square", "red", "large", 32, 32),)))
    circle = render(Scene("test", 0, (Shape("circle", "blue", "large", 32, 32),)))
    got = answer(model, processor, [square, circle],
                 [VQA_INSTRUCTION.format(question="which shape is red?"),
                  VQA_INSTRUCTION.format(question="which shape is blue?")])
    assert got == ["square", "circle"]


@pytest.mark.parametrize(("model_name", "task", "prompt"), [
    ("mmq_llava", "mmq_shapes_vqa", VQA_INSTRUCTION.format(question="{question}")),
    ("mmq_llava", "mmq_shapes_cap", CAPTION_INSTRUCTION),
    ("mmq_blip2", "mmq_shapes_vqa", "Question: {question} Answer:"),
    ("mmq_blip2", "mmq_shapes_cap", ""),
])
def test_shapes_tasks_prompt_each_family_as_it_was_trained(model_name, task, prompt):
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False,
                          model_name=model_name)
    task_obj = get_task_dict([task], manager)[task]
    doc = task_obj.test_docs()[0]
    assert task_obj.doc_to_text(doc) == prompt.format(question=doc.get("question"))


@pytest.fixture(scope="module")
def shapes_llava_vqa():
    """``accuracy(**quant_args)`` on all of mmq_shapes_vqa, as a sweep scores it (one loaded model,
    each spec applied to the kept full-precision weights)."""
    from mmq_eval.quant import QuantSpec
    from mmq_eval.sweep.evaluate import LmmsEvaluator

    evaluator = LmmsEvaluator({"name": "mmq_llava", "pretrained": "mmq:shapes-llava", "batch_size": 64,
                               "device": "cpu", "quant_cache": "none"}, ["mmq_shapes_vqa"], None)

    def accuracy(**quant_args):
        bpw, results, _ = evaluator(QuantSpec.from_args(quant_args))
        return bpw, results["mmq_shapes_vqa"]["accuracy"]

    return accuracy


@pytest.mark.skipif(not (ASSET / "model.safetensors").exists(), reason="checkpoint not trained")
def test_full_precision_and_gptq_4bit_vqa(shapes_llava_vqa):
    """Issue 6: FP VQA >= 0.55 (and what training measured); all-components GPTQ 4-bit >= 90% of it."""
    recorded = json.loads((ASSET / "training.json").read_text())["eval"]["vqa_accuracy"]
    bpw, fp = shapes_llava_vqa(method="none")
    assert bpw == 16.0 and fp >= 0.55 and fp == pytest.approx(recorded, abs=0.01)
    bpw, gptq = shapes_llava_vqa(method="gptq", bits=4)
    assert bpw < 5 and gptq >= 0.9 * fp


@pytest.mark.skipif(not (ASSET / "model.safetensors").exists(), reason="checkpoint not trained")
def test_calibration_examples_are_captioning_exchanges():
    """GPTQ/AWQ calibrate LLaVA on the chat turn it is evaluated with, answered by the caption."""
    from mmq_eval.models.calibration_data import load_calibration_examples
    from mmq_eval.models.llava import MMQLlava
    from mmq_eval.quant import QuantSpec

    lm = MMQLlava(pretrained="mmq:shapes-llava", device="cpu")
    spec = QuantSpec.from_args({"method": "gptq", "bits": 4, "calib_samples": 3})
    (batch,) = lm.calibration_batches(spec)
    captions = [text for _, text in load_calibration_examples("shapes", 3, spec.calib_seed)]
    tokenizer, image_token = lm._processor.tokenizer, lm.model.config.image_token_id
    for ids, mask, caption in zip(batch["input_ids"], batch["attention_mask"], captions):
        want = tokenizer(lm._format_prompt(CAPTION_INSTRUCTION) + " " + caption).input_ids
        got = ids[mask.bool()].tolist()  # the processor expands the one image token to the patches
        assert [t for t in got if t != image_token] == [t for t in want if t != image_token]
        caption_ids = tokenizer(caption, add_special_tokens=False).input_ids
        assert got[-len(caption_ids):] == caption_ids  # the caption is the answer, at the end
