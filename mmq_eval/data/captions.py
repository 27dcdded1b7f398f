"""The prepared captioning layout shared by the COCO caption sets: one row per image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import datasets

from mmq_eval.data.checks import Refusals, caption_problem, repeated
from mmq_eval.data.images import decode_image
from mmq_eval.data.writer import write_parquet

FEATURES = datasets.Features({
    "image_id": datasets.Value("int64"),
    "file_name": datasets.Value("string"),
    "image": datasets.Image(),
    "captions": datasets.List(datasets.Value("string")),
})


def usable_items(items: list[tuple], refusals: Refusals, source: str, text_problem=caption_problem,
                 what: str = "") -> list[tuple]:
    """The (image id, image file, text) ``items`` whose id is unique and whose text has no
    ``text_problem``; the others are refused, named by image id and ``source`` (the annotation
    file). Missing image files (``what`` they are) are refused too; without ``--skip-bad`` any
    refusal raises here, before an image is decoded."""
    twice = repeated(image_id for image_id, _, _ in items)
    kept = [item for item in items if refusals.keep(
        f"image {item[0]} ({source})", "image id occurs more than once" if item[0] in twice else text_problem(item[2]))]
    refusals.require_files({f"image {image_id} ({source})": file for image_id, file, _ in kept},
                           what or f"images for {refusals.prepared.name}")
    refusals.check()
    return kept


def image_rows(items: list[tuple], refusals: Refusals, source: str, row) -> Iterator[dict]:
    """``row(image id, file, text, image cell)`` for each item whose image decodes completely,
    then ``refusals.check()``; MMQDataError when no item is left."""
    def rows():
        written = 0
        for image_id, file, text in items:
            data = refusals.image(f"image {image_id} ({source})", file)
            if data is not None:
                written += 1
                yield row(image_id, file, text, {"bytes": data, "path": file.name})
        if not written:
            raise refusals.none_left()
    return refusals.checked(rows())


def write_caption_set(path: Path, items: list[tuple[int, Path, list[str]]], desc: str, refusals: Refusals,
                      source: str) -> Path:
    """Write (image id, image file, reference captions) rows, images embedded, to ``path``.

    ``items`` come from ``usable_items``; an image that does not decode is refused (see ``checks``).
    """
    rows = image_rows(items, refusals, source, lambda image_id, file, captions, cell: {
        "image_id": image_id, "file_name": file.name, "image": cell, "captions": [c.strip() for c in captions]})
    written = write_parquet(path, FEATURES, rows, len(items), desc)
    refusals.write_manifest()
    return written


def doc_to_visual(doc: dict) -> list:
    """The image embedded in a caption doc, as RGB."""
    return [decode_image(doc["image"], f"image {doc.get('image_id')!r} ({doc.get('file_name')})")]
