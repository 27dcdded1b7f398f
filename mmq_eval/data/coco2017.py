"""COCO 2017 val captions (5K images, the paper's captioning split).

Raw: ``annotations/captions_val2017.json`` and ``val2017/``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import datasets

from mmq_eval.data.captions import write_caption_set
from mmq_eval.data.layout import load_prepared, raw_file

NAME = "coco2017"
VAL_FILE = "coco/val2017_cap.parquet"
ANNOTATIONS = "annotations/captions_val2017.json"
RAW = f"{ANNOTATIONS} and val2017/"


def prepare(raw_dir: Path, root: Path) -> list[Path]:
    """Write the val2017 images with their reference captions."""
    coco = json.loads(raw_file(raw_dir, ANNOTATIONS, NAME).read_text())
    images = raw_file(raw_dir, "val2017", NAME)
    captions = defaultdict(list)
    for annotation in coco["annotations"]:
        captions[annotation["image_id"]].append(annotation["caption"])
    items = [(image["id"], images / image["file_name"], captions[image["id"]]) for image in coco["images"]]
    return [write_caption_set(root / VAL_FILE, items, "COCO val2017")]


def load_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_coco2017_cap_val``: the prepared val2017 set."""
    return load_prepared(VAL_FILE, NAME, RAW)
