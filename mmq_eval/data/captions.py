"""The prepared captioning layout shared by the COCO caption sets: one row per image."""

from __future__ import annotations

from pathlib import Path

import datasets

from mmq_eval.data.images import decode_image, first_missing, image_cell
from mmq_eval.data.writer import write_parquet

FEATURES = datasets.Features({
    "image_id": datasets.Value("int64"),
    "file_name": datasets.Value("string"),
    "image": datasets.Image(),
    "captions": datasets.List(datasets.Value("string")),
})


def write_caption_set(path: Path, items: list[tuple[int, Path, list[str]]], desc: str) -> Path:
    """Write (image id, image file, reference captions) rows, images embedded, to ``path``."""
    first_missing([file for _, file, _ in items], f"images for {path.name}")
    rows = (
        {"image_id": image_id, "file_name": file.name, "image": image_cell(file),
         "captions": [c.strip() for c in captions]}
        for image_id, file, captions in items
    )
    return write_parquet(path, FEATURES, rows, len(items), desc)


def doc_to_visual(doc: dict) -> list:
    """The image embedded in a caption doc, as RGB."""
    return [decode_image(doc["image"], f"image {doc.get('image_id')!r} ({doc.get('file_name')})")]
