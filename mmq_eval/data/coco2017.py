"""COCO 2017 val captions (5K images, the paper's captioning split).

Raw: ``annotations/captions_val2017.json`` and ``val2017/``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import datasets

from mmq_eval.data.captions import usable_items, write_caption_set
from mmq_eval.data.checks import Refusals
from mmq_eval.data.layout import load_prepared, raw_file

NAME = "coco2017"
VAL_FILE = "coco/val2017_cap.parquet"
ANNOTATIONS = "annotations/captions_val2017.json"
RAW = f"{ANNOTATIONS} and val2017/"


def prepare(raw_dir: Path, root: Path, skip_bad: bool = False) -> list[Path]:
    """Write the val2017 images with their reference captions (``skip_bad``: without the unusable ones)."""
    coco = json.loads(raw_file(raw_dir, ANNOTATIONS, NAME).read_text())
    images = raw_file(raw_dir, "val2017", NAME)
    captions = defaultdict(list)
    for annotation in coco["annotations"]:
        captions[annotation["image_id"]].append(annotation.get("caption"))
    items = [(image["id"], images / image["file_name"], captions[image["id"]]) for image in coco["images"]]
    refusals = Refusals(NAME, root / VAL_FILE, skip_bad)
    items = usable_items(items, refusals, Path(ANNOTATIONS).name)
    return [write_caption_set(root / VAL_FILE, items, "COCO val2017", refusals, Path(ANNOTATIONS).name)]


def load_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_coco2017_cap_val``: the prepared val2017 set."""
    return load_prepared(VAL_FILE, NAME, RAW)
