"""GQA testdev-balanced (12,578 questions on 398 images), scored by exact match.

Raw: ``testdev_balanced_questions.json`` (from questions1.2.zip) and ``images/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from mmq_eval.data.layout import load_prepared, raw_file
from mmq_eval.data.questions import image_for, write_question_set

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


def prepare(raw_dir: Path, root: Path) -> list[Path]:
    """Write the testdev-balanced questions; store each image once."""
    questions = json.loads(raw_file(raw_dir, QUESTIONS, NAME).read_text())
    images_dir = raw_file(raw_dir, "images", NAME)
    rows, images = [], {}
    for question_id, q in questions.items():
        rows.append({"question_id": str(question_id), "image_id": q["imageId"],
                     "question": q["question"], "answer": q["answer"]})
        images.setdefault(q["imageId"], images_dir / f"{q['imageId']}.jpg")
    return write_question_set(root, TESTDEV_FILE, FEATURES, rows, images, "GQA testdev")


def load_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_gqa_testdev``: the prepared questions."""
    return load_prepared(TESTDEV_FILE, NAME, RAW)


def doc_to_visual(doc: dict) -> list:
    """The question's GQA image."""
    return image_for(doc, TESTDEV_FILE)
