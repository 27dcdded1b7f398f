"""The prepared VQA layout: a question parquet (no images) beside an image store.

Many questions share an image (VQAv2 val: 214K questions on 40K images), so each image is
stored once, in ``<name>_images.arrow`` (see ``images``), and ``doc_to_visual`` looks it up by
the doc's ``image_id``.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from PIL import Image

from mmq_eval.data.checks import Refusals, blank
from mmq_eval.data.images import open_store
from mmq_eval.data.layout import data_root, prepare_again
from mmq_eval.data.writer import write_image_store, write_parquet


def store_file(docs_file: str) -> str:
    """The image store beside the question file ``docs_file``."""
    return docs_file.removesuffix(".parquet") + "_images.arrow"


def write_question_set(root: Path, docs_file: str, features: datasets.Features, rows: list[dict],
                       images: dict[str, Path], desc: str, refusals: Refusals) -> list[Path]:
    """Write the image store (image id -> file), then the question rows, under ``root``.

    ``rows`` are the questions that passed their checks; an image that is missing or does not
    decode is refused, and (with ``--skip-bad``) so are the questions on it.
    """
    refusals.require_files({f"image {image_id}": file for image_id, file in images.items()}, f"{desc} images")
    stored = set()

    def decodable():
        for image_id, file in images.items():
            data = refusals.image(f"image {image_id}", file)
            if data is not None:
                stored.add(image_id)
                yield image_id, data
        if not stored:
            raise refusals.none_left()
        refusals.check()

    store = write_image_store(root / store_file(docs_file), decodable(), len(images), f"{desc} images")
    kept = [row for row in rows if refusals.keep(
        f"question {row['question_id']}",
        None if str(row["image_id"]) in stored else f"its image {row['image_id']} was refused")]
    written = write_parquet(root / docs_file, features, kept, len(kept), f"{desc} questions")
    refusals.write_manifest()
    return [written, store]


def question_problem(question, answers_problem: str | None = None) -> str | None:
    """Why a question entry is unusable (a blank question, else ``answers_problem``), or None."""
    return "the question is empty" if blank(question) else answers_problem


def image_for(doc: dict, docs_file: str, dataset: str) -> list[Image.Image]:
    """``doc_to_visual`` of a question set: the doc's image from the store."""
    return [open_store(data_root() / store_file(docs_file), prepare_again(dataset)).image(doc["image_id"])]
