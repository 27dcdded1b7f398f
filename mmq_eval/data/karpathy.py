"""Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json`` from caption_datasets.zip)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mmq_eval.data.layout import raw_file
from mmq_eval.errors import MMQDataError


def read_entries(raw_dir: Path, split_file: str, dataset: str) -> list[dict]:
    """The ``images`` entries of ``raw_dir/split_file`` (one per image, with its split and sentences)."""
    path = raw_file(raw_dir, split_file, dataset)
    try:
        return json.loads(path.read_text())["images"]
    except (KeyError, TypeError, ValueError):
        raise MMQDataError(f"{dataset}: {path} is not a Karpathy split file (no 'images' list)") from None


def split_items(entries: list[dict], split: str, file_of: Callable[[dict], Path], id_key: str,
                source: str) -> list[tuple[int, Path, list[str]]]:
    """(image id, image file, raw captions) of the entries in ``split``; ``source`` names the file."""
    items = [(e[id_key], file_of(e), [s.get("raw") for s in e.get("sentences") or []])
             for e in entries if e["split"] == split]
    if not items:
        raise MMQDataError(f"{source} has no image in split {split!r}")
    return items
