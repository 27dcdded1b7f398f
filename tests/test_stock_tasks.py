"""lmms-eval's stock tasks with the mmq_* models: their own YAMLs, loaded by lmms-eval's task
machinery, with the hub data sets swapped for tiny local parquet copies (shapes images embedded).

BLIP-2 (not instruction-tuned) reads stock captioning instructions as its captioning input (the
image alone) and stock VQA questions as the seed's ``Question: {} Short answer:`` with
``prompt_style=auto``, the task's text with ``prompt_style=raw``; an instruction-tuned family (the
embedded LLaVA) reads the task's text in its chat template either way.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import datasets
import pandas as pd
import pytest
from loguru import logger
from PIL import Image

import lmms_eval.tasks

from mmq_eval.errors import MMQConfigError
from mmq_eval.tasks import tasks_path

STOCK = Path(lmms_eval.tasks.__file__).parent
STOCK_DIRS = ("coco_cap", "flickr30k", "vqav2", "gqa", "textvqa", "ok_vqa", "pope", "mme")
SHAPES = Path(tasks_path()) / "mmq_shapes" / "data" / "shapes_vqa_test.parquet"
CAPTION = "Provide a one-sentence caption for the provided image."
SHORT = "\nAnswer the question using a single word or phrase."
OK_VQA = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT
LIMIT = 2


def _images() -> list[Image.Image]:
    cells = pd.read_parquet(SHAPES)["image"][:LIMIT]
    return [Image.open(io.BytesIO(cell["bytes"])).convert("RGB") for cell in cells]


def _hub_copies() -> dict:
    """(hub path, config name) -> {split: rows} for every data set the stock tasks load."""
    img = _images()
    captions = [["a small green circle", "one green circle"], ["a large red square", "a red square"]]
    coco = [{"image": img[i], "question_id": f"COCO_val2014_00000000004{i}.jpg", "id": 40 + i,
             "answer": captions[i], "question": CAPTION} for i in range(LIMIT)]
    vqa_answers = [[{"answer": "green", "answer_confidence": "yes", "answer_id": k} for k in range(10)],
                   [{"answer": "one", "answer_confidence": "yes", "answer_id": k} for k in range(10)]]
    return {
        ("lmms-lab-encoder/COCO-Caption", None): {"val": coco, "test": coco},
        ("lmms-lab-encoder/COCO-Caption2017", None): {"val": coco, "test": coco},
        ("lmms-lab-encoder/flickr30k", None): {"test": [
            {"image": img[i], "img_id": str(7 + i), "filename": f"{7 + i}.jpg", "caption": captions[i]}
            for i in range(LIMIT)]},
        ("lmms-lab-encoder/VQAv2", None): {"validation": [
            {"image": img[i], "question_id": 900 + i, "question": q, "answers": vqa_answers[i],
             "multiple_choice_answer": vqa_answers[i][0]["answer"]}
            for i, q in enumerate(["what colour is the small circle?", "how many shapes are there?"])]},
        ("lmms-lab-encoder/GQA", "testdev_balanced_instructions"): {"testdev": [
            {"id": f"g{i}", "imageId": f"n{i}", "question": q, "answer": a}
            for i, (q, a) in enumerate([("Which shape is blue?", "square"), ("Is it red?", "no")])]},
        ("lmms-lab-encoder/GQA", "testdev_balanced_images"): {"testdev": [
            {"id": f"n{i}", "image": img[i]} for i in range(LIMIT)]},
        ("lmms-lab-encoder/textvqa", None): {"validation": [
            {"image": img[i], "question_id": 30 + i, "question": q, "answers": ["green"] * 10,
             "ocr_tokens": ["x"]} for i, q in enumerate(["what colour is it?", "what is written?"])]},
        ("lmms-lab-encoder/OK-VQA", None): {"val2014": [
            {"image": img[i], "question_id": 50 + i, "question": q, "answers": ["circle"] * 10}
            for i, q in enumerate(["what shape is this?", "what is this used for?"])]},
        ("lmms-lab-encoder/POPE", None): {"test": [
            {"image": img[i], "question_id": str(60 + i), "question": q, "answer": a, "category": "adversarial"}
            for i, (q, a) in enumerate([("Is there a circle in the image?", "yes"),
                                        (" Is there a dog in the image? ", "no")])]},
        ("lmms-lab-encoder/MME", None): {"test": [  # MME scores its questions in pairs per image
            {"image": img[0], "question_id": "color/0.png", "question": q, "answer": a, "category": "color"}
            for q, a in [("Is the circle green? Please answer yes or no.", "Yes"),
                         ("Is the square red? Please answer yes or no.", "No")]]},
    }


#: Each stock task (members of the coco_cap group by name) and the text it gives a model that takes
#: it as it is (``raw``), and BLIP-2 with ``prompt_style=auto``: the same documents as `_hub_copies`.
STOCK_TEXT = {
    "coco2014_cap_val": [(CAPTION, "")] * 2,
    "coco2014_cap_test": [(CAPTION, "")] * 2,
    "coco2017_cap_val": [(CAPTION, "")] * 2,
    "coco2017_cap_test": [(CAPTION, "")] * 2,
    "flickr30k_test": [(CAPTION, "")] * 2,
    "vqav2_val": [("what colour is the small circle?" + SHORT, "Question: what colour is the small circle? Short answer:"),
                  ("how many shapes are there?" + SHORT, "Question: how many shapes are there? Short answer:")],
    "gqa": [("Which shape is blue?" + SHORT, "Question: Which shape is blue? Short answer:"),
            ("Is it red?" + SHORT, "Question: Is it red? Short answer:")],
    "textvqa_val": [("What colour is it?" + SHORT, "Question: What colour is it? Short answer:"),
                    ("What is written?" + SHORT, "Question: What is written? Short answer:")],
    "ok_vqa_val2014": [("what shape is this?" + OK_VQA, "Question: what shape is this? Short answer:"),
                       ("what is this used for?" + OK_VQA, "Question: what is this used for? Short answer:")],
    "pope": [("Is there a circle in the image?" + SHORT, "Question: Is there a circle in the image? Short answer:"),
             ("Is there a dog in the image?" + SHORT, "Question: Is there a dog in the image? Short answer:")],
    "mme": [("Is the circle green?" + SHORT, "Question: Is the circle green? Short answer:"),
            ("Is the square red?" + SHORT, "Question: Is the square red? Short answer:")],
}
TASKS = ["coco_cap", "flickr30k_test", "vqav2_val", "gqa", "textvqa_val", "ok_vqa_val2014", "pope", "mme"]


@pytest.fixture(scope="module")
def hub_copies(tmp_path_factory):
    """``datasets.load_dataset`` answers the stock tasks' hub ids (and gqa's second one, in its
    ``process_docs``) from parquet files with embedded images; anything else fails."""
    root = tmp_path_factory.mktemp("stock-hub")
    load = datasets.load_dataset
    files = {}
    for n, ((path, name), splits) in enumerate(_hub_copies().items()):
        for split, rows in splits.items():
            file = root / f"{n}-{split}.parquet"
            table = datasets.Dataset.from_list(rows)
            if "image" in table.column_names:  # from PIL images: the bytes are embedded
                table = table.cast_column("image", datasets.Image())
            table.to_parquet(file)
            files.setdefault((path, name), {})[split] = str(file)

    def from_copy(path, name=None, split=None, **_):
        if (path, name) not in files:
            raise AssertionError(f"unexpected data set {path!r} {name!r}")
        loaded = load("parquet", data_files=files[(path, name)], cache_dir=str(root / "cache"))
        return loaded[split] if split else loaded

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets, "load_dataset", from_copy)
        patch.chdir(root)  # lmms-eval writes the test splits' submission files under ./submissions
        yield


@pytest.fixture(scope="module")
def models(one_torch_thread):
    """The embedded BLIP-2 and LLaVA through their lmms-eval models, per ``prompt_style``."""
    from lmms_eval.models import get_model

    return {(name, style): get_model(name)(pretrained=f"mmq:shapes-{name.split('_')[1]}", device="cpu",
                                           batch_size=4, prompt_style=style)
            for name in ("mmq_blip2", "mmq_llava") for style in ("auto", "raw")}


def _evaluate(lm, model_name: str, tasks: list[str], predict_only: bool = True) -> tuple[dict, list[str]]:
    """lmms-eval's own evaluation of `tasks` (LIMIT docs each) and every text the processor got."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    manager = TaskManager(verbosity="ERROR", include_path=[str(STOCK / d) for d in STOCK_DIRS],
                          include_defaults=False, model_name=model_name)
    texts: list[str] = []
    encode = lm._encode

    def recording(images, batch_texts):
        texts.extend(batch_texts)
        return encode(images, batch_texts)

    lm._encode = recording
    try:
        out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=LIMIT, bootstrap_iters=0,
                              log_samples=True, predict_only=predict_only, verbosity="ERROR")
    finally:
        del lm._encode
    return out, texts


def test_blip2_vqa_prompt_is_the_seeds_format_string():
    from mmq_eval.tasks.prompts import BLIP2_VQA_PROMPT, uninstructed_prompt

    assert BLIP2_VQA_PROMPT == "Question: {} Short answer:"
    assert uninstructed_prompt("what is it?" + SHORT) == ("Question: what is it? Short answer:", SHORT.strip())
    assert uninstructed_prompt(CAPTION) == ("", CAPTION)
    assert uninstructed_prompt("Question: what is it? Short answer:") == ("Question: what is it? Short answer:", None)


@pytest.mark.parametrize("style", ["auto", "raw"])
def test_blip2_reads_stock_tasks_in_its_own_prompt_format(hub_copies, models, style):
    import lmms_eval.evaluator  # noqa: F401  (its import removes every loguru handler)

    logged: list[str] = []
    sink = logger.add(logged.append, level="INFO", filter=lambda record: "stock instruction" in record["message"])
    try:
        out, texts = _evaluate(models["mmq_blip2", style], "mmq_blip2", TASKS)
    finally:
        logger.remove(sink)
    expected = [pair[0].strip() if style == "raw" else pair[1] for pairs in STOCK_TEXT.values() for pair in pairs]
    assert sorted(texts) == sorted(expected)
    assert set(out["samples"]) == set(STOCK_TEXT)
    # once per replaced instruction: the caption one, the short-answer one and ok_vqa's
    assert len(logged) == (3 if style == "auto" else 0)


@pytest.mark.parametrize("style", ["auto", "raw"])
def test_instruction_tuned_family_reads_the_stock_prompts(hub_copies, models, style):
    _, texts = _evaluate(models["mmq_llava", style], "mmq_llava", TASKS)
    expected = [f"USER: <image>\n{raw.strip()} ASSISTANT:" for pairs in STOCK_TEXT.values() for raw, _ in pairs]
    assert sorted(texts) == sorted(expected)


def test_stock_task_scores_are_computed(hub_copies, models):
    # one coco_cap member: its seven metrics start about 15 JVMs (PTB tokenizer, METEOR), ~35 s;
    # the other members share its scoring code (coco2014/2017 val) or only write a submission file
    tasks = ["coco2017_cap_val", "vqav2_val", "pope", "mme"]
    out, _ = _evaluate(models["mmq_blip2", "auto"], "mmq_blip2", tasks, predict_only=False)
    results = out["results"]
    for task, metric in [("coco2017_cap_val", "coco_CIDEr"), ("coco2017_cap_val", "coco_Bleu_4"),
                         ("vqav2_val", "exact_match"), ("pope", "pope_accuracy"), ("pope", "pope_f1_score"),
                         ("mme", "mme_perception_score")]:
        value = results[task][f"{metric},none"]
        assert isinstance(value, (int, float)) and math.isfinite(value), (task, metric, value)
    # VQA accuracy with ten identical answers, POPE accuracy: 1 for the right answer, 0 otherwise
    for task, metric, truth in [("vqav2_val", "exact_match", ["green", "one"]), ("pope", "pope_accuracy", ["yes", "no"])]:
        answers = [s["filtered_resps"][0].lower().strip()
                   for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]
        assert results[task][f"{metric},none"] == sum(a == t for a, t in zip(answers, truth)) / LIMIT


def test_prompt_style_is_validated():
    from mmq_eval.models.args import parse_wrapper_args

    assert parse_wrapper_args({}, "x").prompt_style == "auto"
    assert parse_wrapper_args({"prompt_style": "raw"}, "x").prompt_style == "raw"
    with pytest.raises(MMQConfigError, match="prompt_style='short' is not supported; use one of auto, raw"):
        parse_wrapper_args({"prompt_style": "short"}, "x")
    from lmms_eval.models import get_model

    with pytest.raises(MMQConfigError, match="prompt_style='Raw' is not supported"):
        get_model("mmq_blip2")(pretrained="mmq:shapes-blip2", prompt_style="Raw")
