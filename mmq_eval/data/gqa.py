"""GQA testdev-balanced (12,578 questions on 398 images), scored by exact match.

Raw: ``testdev_balanced_questions.json`` (from questions1.2.zip) and ``images/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from mmq_eval.data.checks import Refusals, blank, repeated
from mmq_eval.data.layout import load_prepared, raw_file
from mmq_eval.data.questions import image_for, question_problem, store_file, write_question_set

NAME = "gqa"
TESTDEV_FILE = "gqa/testdev_balanced.parquet"
QUESTIONS = "testdev_balanced_questions.json"
RAW = f"{QUESTIONS} and images/"
FEATURES = datasets.Features({
    "question_id": datasets.Value("string"),
    "image_id": datasets.Value("string"),
    "question": datasets.Value("string"),
    "answer": datasets.Value("string"),
})


def _read_questions(path: Path) -> tuple[dict, set[str]]:
    """The questions file (question id -> question) and the ids that occur in it more than once
    (json keeps only the last of them)."""
    twice: set[str] = set()

    def collect_repeated(pairs: list[tuple[str, object]]) -> dict:
        twice.update(repeated(key for key, _ in pairs))
        return dict(pairs)

    return json.loads(path.read_text(), object_pairs_hook=collect_repeated), twice


def _question_problem(q: dict) -> str | None:
    if blank(q.get("imageId")):
        return f"no imageId in {QUESTIONS}"
    return question_problem(q.get("question"), f"no answer in {QUESTIONS}" if blank(q.get("answer")) else None)


def prepare(raw_dir: Path, root: Path, skip_bad: bool = False) -> list[Path]:
    """Write the testdev-balanced questions; store each image once (``skip_bad``: without the
    unusable questions and images)."""
    questions, twice = _read_questions(raw_file(raw_dir, QUESTIONS, NAME))
    images_dir = raw_file(raw_dir, "images", NAME)
    refusals = Refusals(NAME, root / TESTDEV_FILE, skip_bad)
    rows, images = [], {}
    for question_id, q in questions.items():
        problem = f"question id occurs more than once in {QUESTIONS}" if question_id in twice else _question_problem(q)
        if not refusals.keep(f"question {question_id}", problem):
            continue
        rows.append({"question_id": str(question_id), "image_id": q["imageId"],
                     "question": q["question"], "answer": q["answer"]})
        images.setdefault(q["imageId"], images_dir / f"{q['imageId']}.jpg")
    refusals.check()
    return write_question_set(root, TESTDEV_FILE, FEATURES, rows, images, "GQA testdev", refusals)


def load_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_gqa_testdev``: the prepared questions."""
    return load_prepared(TESTDEV_FILE, NAME, RAW, also=(store_file(TESTDEV_FILE),))


def doc_to_visual(doc: dict) -> list:
    """The question's GQA image."""
    return image_for(doc, TESTDEV_FILE, NAME)
