"""The prepared VQA layout: a question parquet (no images) beside an image store.

Many questions share an image (VQAv2 val: 214K questions on 40K images), so each image is
stored once, in ``<name>_images.arrow`` (see ``images``), and ``doc_to_visual`` looks it up by
the doc's ``image_id``.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from PIL import Image

from mmq_eval.data.images import first_missing, open_store
from mmq_eval.data.layout import data_root
from mmq_eval.data.writer import write_image_store, write_parquet


def store_file(docs_file: str) -> str:
    """The image store beside the question file ``docs_file``."""
    return docs_file.removesuffix(".parquet") + "_images.arrow"


def write_question_set(root: Path, docs_file: str, features: datasets.Features, rows: list[dict],
                       images: dict[str, Path], desc: str) -> list[Path]:
    """Write the image store (image id -> file), then the question rows, under ``root``."""
    first_missing(list(images.values()), f"{desc} images")
    store = write_image_store(root / store_file(docs_file), images, f"{desc} images")
    return [write_parquet(root / docs_file, features, rows, len(rows), f"{desc} questions"), store]


def image_for(doc: dict, docs_file: str) -> list[Image.Image]:
    """``doc_to_visual`` of a question set: the doc's image from the store."""
    return [open_store(data_root() / store_file(docs_file)).image(doc["image_id"])]
