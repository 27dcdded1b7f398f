"""The shapes Qwen2-VL: prompt format and special tokens, M-RoPE packing, training script smoke
test, committed checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from test_shapes_llava import answer  # generation as the lmms-eval wrapper does it
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

from mmq_eval.models.image_only import allow_processors_without_torchvision
from mmq_eval.shapes import train_llava, train_qwen2vl
from mmq_eval.shapes.qwen2vl_model import (
    CAPTION_INSTRUCTION,
    NUM_IMAGE_TOKENS,
    VQA_INSTRUCTION,
    build_qwen2vl_processor,
    build_shapes_qwen2vl,
    user_prompt,
)
from mmq_eval.shapes.training import pixel_values
from mmq_eval.shapes.world import Scene, Shape, make_scene, render

ASSET = Path(__file__).resolve().parents[1] / "mmq_eval" / "assets" / "shapes-qwen2vl"


def load(path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    allow_processors_without_torchvision()
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path).eval()
    return model, processor


def test_chat_prompt_special_tokens_and_image_tokens():
    processor = build_qwen2vl_processor()
    tok = processor.tokenizer
    prompt = user_prompt(processor, VQA_INSTRUCTION.format(question="which shape is red?"))
    assert prompt == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>which shape is red?\n"
                      "Answer the question using a single word or phrase.<|im_end|>\n"
                      "<|im_start|>assistant\n")
    inputs = processor(images=[render(make_scene("test", 0))], text=[prompt], return_tensors="pt")
    tokens = tok.convert_ids_to_tokens(inputs["input_ids"][0])
    # 64x64 stays 64x64: 8x8 patches of 8 pixels (x2 frames), merged 2x2 into 16 LLM tokens
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert tuple(inputs["pixel_values"].shape) == (64, 3 * 2 * 8 * 8)
    assert tokens.count("<|image_pad|>") == NUM_IMAGE_TOKENS == 16
    assert inputs["mm_token_type_ids"][0].tolist() == [int(t == "<|image_pad|>") for t in tokens]
    assert tokens[:4] == ["<|im_start|>", "user", "\n", "<|vision_start|>"]
    assert tokens[-5:] == ["<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]
    assert "<unk>" not in tokens
    caption = tok.convert_ids_to_tokens(tok(user_prompt(processor, CAPTION_INSTRUCTION))["input_ids"])
    assert "<unk>" not in caption
    assert (tok.pad_token, tok.eos_token, tok.bos_token) == ("<|endoftext|>", "<|im_end|>", None)
    assert tok.padding_side == "left"
    config = build_shapes_qwen2vl(tok, seed=0).config
    ids = tok.convert_tokens_to_ids
    assert (config.image_token_id, config.video_token_id) == (ids("<|image_pad|>"), ids("<|video_pad|>"))
    assert (config.vision_start_token_id, config.vision_end_token_id) == (
        ids("<|vision_start|>"), ids("<|vision_end|>"))
    assert config.text_config.vocab_size == len(tok)
    assert config.vision_config.hidden_size == config.text_config.hidden_size


def test_patchify_matches_the_image_processor():
    processor = build_qwen2vl_processor()
    images = [render(make_scene("train", i)) for i in range(3)]
    expected = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    assert torch.equal(train_qwen2vl.patchify(pixel_values(images)), expected)


def test_packed_rows_are_single_turn_chat_examples():
    """Each example packed behind the image prefix has the processor's single-turn ids, and the
    model (positions from its own get_rope_index) gives it the same logits as when it stands alone."""
    processor = build_qwen2vl_processor()
    tok = processor.tokenizer
    model = build_shapes_qwen2vl(tok, seed=0).eval()
    prompt_ids = train_qwen2vl.prompt_ids_for(processor)
    n = prompt_ids.prefix_len
    assert n == 4 + NUM_IMAGE_TOKENS + 1  # <|im_start|> user \n <|vision_start|> pads <|vision_end|>
    prefix = train_qwen2vl.prefix_positions(model, prompt_ids)
    assert prefix[:, -1].tolist() == [8, 8, 8]  # text resumes after the 4x4 grid's positions
    scene = make_scene("train", 0)
    examples = train_llava.image_examples(scene, random.Random(0), 3, 0.6, 0.0)
    ids, labels, _, segments = train_llava.pack_row(prompt_ids, examples)
    batch = train_qwen2vl.qwen2vl_batch(prompt_ids, prefix, 0, 1, random.Random(0), 0.6, 0.0, 3)
    assert batch["input_ids"][0].tolist() == ids
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        for k, (text, target) in enumerate(examples, start=1):
            where = [i for i, s in enumerate(segments) if s == k]
            alone = processor(images=[render(scene)], text=[user_prompt(processor, text)],
                              return_tensors="pt")
            expected = alone["input_ids"][0].tolist()
            answer_ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert ids[:n] + [ids[i] for i in where] == expected + answer_ids
            assert [labels[i] for i in where][-len(answer_ids):] == answer_ids
            full = torch.tensor([expected + answer_ids])
            single = model(input_ids=full, attention_mask=torch.ones_like(full),
                           mm_token_type_ids=torch.tensor(processor.create_mm_token_type_ids(full)),
                           pixel_values=alone["pixel_values"],
                           image_grid_thw=alone["image_grid_thw"]).logits[0, n:]
            torch.testing.assert_close(packed[where], single, atol=1e-5, rtol=1e-4)


def test_train_smoke_saves_a_reloadable_model(tmp_path, monkeypatch):
    train_qwen2vl.main(["--out", str(tmp_path), "--steps", "3", "--eval-size", "2",
                        "--batch-size", "4", "--per-image", "2"])
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["steps"] == 3 and set(record["eval"]) >= {"cider", "vqa_accuracy"}
    assert record["architecture"] == "Qwen2VLForConditionalGeneration"
    model, processor = load(tmp_path, monkeypatch)
    assert isinstance(processor, Qwen2VLProcessor)
    assert processor.tokenizer.padding_side == "left" and processor.chat_template
    fresh = build_qwen2vl_processor()
    text = VQA_INSTRUCTION.format(question="how many shapes are there?")
    assert user_prompt(processor, text) == user_prompt(fresh, text)
    images = [render(make_scene("test", i)) for i in range(2)]
    prompts = [user_prompt(fresh, CAPTION_INSTRUCTION), user_prompt(fresh, text)]
    got = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    want = fresh(images=images, text=prompts, return_tensors="pt", padding=True)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    answers = answer(model, processor, images, [CAPTION_INSTRUCTION] * 2)
    assert len(answers) == 2  # untrained: any text, but it reloads offline and generates


@pytest.mark.skipif(not (ASSET / "model.safetensors").exists(), reason="checkpoint not trained")
def test_committed_checkpoint_answers_and_captions(monkeypatch):
    from mmq_eval.models.loading import load_processor, resolve_pretrained

    record = json.loads((ASSET / "training.json").read_text())
    assert record["eval"]["vqa_accuracy"] >= 0.55 and record["eval"]["cider"] >= 1.5
    assert record["eval"]["caption_scenes"] == 200 and record["eval"]["vqa_questions"] == 500
    assert (ASSET / "model.safetensors").stat().st_size < 10_000_000
    assert resolve_pretrained("mmq:shapes-qwen2vl") == str(ASSET)
    model, processor = load(ASSET, monkeypatch)
    assert isinstance(load_processor(str(ASSET)), Qwen2VLProcessor)
    square = render(Scene("test", 0, (Shape("square", "red", "large", 32, 32),)))
    circle = render(Scene("test", 0, (Shape("circle", "blue", "large", 32, 32),)))
    questions = [VQA_INSTRUCTION.format(question="which shape is red?"),
                 VQA_INSTRUCTION.format(question="how many shapes are there?")]
    # one batch of prompts of different lengths (left padding), as a wrapper sends them
    got = answer(model, processor, [square, circle, square], [*questions, CAPTION_INSTRUCTION],
                 max_new_tokens=24)
    assert got == ["square", "one", "a large red square"]
    # and alone: padding does not change an answer
    assert answer(model, processor, [circle], [questions[1]]) == ["one"]


@pytest.fixture(scope="module")
def through_lmms_eval():
    """``score(**quant_args)`` of the embedded Qwen2-VL through ``mmq_qwen2_vl`` (lmms-eval's own
    ``qwen2_vl`` class) on both whole shapes test splits; one loaded model, specs applied in turn."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from mmq_eval.quant import QuantSpec
    from mmq_eval.tasks import tasks_path

    lm = get_model("mmq_qwen2_vl")(pretrained="mmq:shapes-qwen2vl", batch_size=32, quant_cache="none")
    manager = TaskManager(include_path=tasks_path(), model_name="mmq_qwen2_vl")

    def score(**quant_args):
        lm.apply_quant(QuantSpec.from_args(quant_args or {"method": "none"}))
        out = simple_evaluate(model=lm, tasks=["mmq_shapes_vqa", "mmq_shapes_cap"], task_manager=manager,
                              bootstrap_iters=0)
        return out["results"]["mmq_shapes_vqa"]["accuracy,none"], out["results"]["mmq_shapes_cap"]["cider,none"]

    return score


def test_quality_through_lmms_evals_qwen2_vl(through_lmms_eval):
    """Full precision: VQA >= 0.55 and meaningful captions; GPTQ 4-bit on every component keeps
    >= 90 %; a 2-bit ViT alone changes the scores (the vision tower is really quantized and used)."""
    vqa, cider = through_lmms_eval()
    assert vqa >= 0.55 and cider >= 2.0
    vqa4, cider4 = through_lmms_eval(method="gptq", bits=4)
    assert vqa4 >= 0.9 * vqa and cider4 >= 0.9 * cider
    vqa_vit2, cider_vit2 = through_lmms_eval(method="uniform", vit_bits=2)
    assert vqa_vit2 < vqa - 0.05 and cider_vit2 < 0.8 * cider
