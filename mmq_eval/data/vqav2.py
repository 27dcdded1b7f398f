"""VQAv2 val2014 (214K questions, ten human answers each), and a fixed 2,000-question subset.

Raw: ``v2_OpenEnded_mscoco_val2014_questions.json``, ``v2_mscoco_val2014_annotations.json``
and ``val2014/``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets

from mmq_eval.data.checks import Refusals, blank, repeated
from mmq_eval.data.layout import load_prepared, raw_file
from mmq_eval.data.questions import image_for, question_problem, store_file, write_question_set

NAME = "vqav2"
VAL_FILE = "vqav2/val.parquet"
QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
RAW = f"{QUESTIONS}, {ANNOTATIONS} and val2014/"
LITE_SIZE = 2000
LITE_SEED = 0
FEATURES = datasets.Features({
    "question_id": datasets.Value("int64"),
    "image_id": datasets.Value("int64"),
    "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")),
    "answer": datasets.Value("string"),
    "question_type": datasets.Value("string"),
    "answer_type": datasets.Value("string"),
})


def _answers_problem(annotation: dict | None) -> str | None:
    """Why a question's annotation is unusable (absent, or no non-blank answer), or None."""
    if annotation is None:
        return f"not in {ANNOTATIONS}: use the val2014 files of one VQAv2 release"
    answers = annotation.get("answers")
    texts = [a.get("answer") if isinstance(a, dict) else None for a in answers] if isinstance(answers, list) else []
    if all(blank(text) for text in texts):
        return f"no answers in {ANNOTATIONS}"
    if not all(isinstance(text, str) for text in texts):
        return f"an answer in {ANNOTATIONS} is not text"
    return None


def prepare(raw_dir: Path, root: Path, skip_bad: bool = False) -> list[Path]:
    """Join questions with their annotations; store each val2014 image once (``skip_bad``:
    without the unusable questions and images)."""
    questions = json.loads(raw_file(raw_dir, QUESTIONS, NAME).read_text())["questions"]
    annotations = json.loads(raw_file(raw_dir, ANNOTATIONS, NAME).read_text())["annotations"]
    images_dir = raw_file(raw_dir, "val2014", NAME)
    refusals = Refusals(NAME, root / VAL_FILE, skip_bad)
    twice = repeated(q.get("question_id") for q in questions) | repeated(a.get("question_id") for a in annotations)
    by_id = {a["question_id"]: a for a in annotations}
    rows, images = [], {}
    for q in questions:
        a = by_id.get(q["question_id"])
        problem = (f"question id occurs more than once in {QUESTIONS} or {ANNOTATIONS}" if q["question_id"] in twice
                   else question_problem(q.get("question"), _answers_problem(a)))
        if not refusals.keep(f"question {q['question_id']}", problem):
            continue
        rows.append({
            "question_id": q["question_id"], "image_id": q["image_id"], "question": q["question"],
            "answers": [x["answer"] for x in a["answers"]], "answer": a.get("multiple_choice_answer"),
            "question_type": a.get("question_type"), "answer_type": a.get("answer_type"),
        })
        images.setdefault(str(q["image_id"]), images_dir / f"COCO_val2014_{q['image_id']:012d}.jpg")
    refusals.check()
    return write_question_set(root, VAL_FILE, FEATURES, rows, images, "VQAv2 val", refusals)


def load_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_vqav2_val``: every prepared question."""
    return load_prepared(VAL_FILE, NAME, RAW, also=(store_file(VAL_FILE),))


def load_docs_lite(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_vqav2_val_lite``: ``LITE_SIZE`` questions drawn with ``LITE_SEED``."""
    docs = load_prepared(VAL_FILE, NAME, RAW, also=(store_file(VAL_FILE),))
    if len(docs) <= LITE_SIZE:
        return docs
    return docs.select(sorted(random.Random(LITE_SEED).sample(range(len(docs)), LITE_SIZE)))


def doc_to_visual(doc: dict) -> list:
    """The question's val2014 image."""
    return image_for(doc, VAL_FILE, NAME)
