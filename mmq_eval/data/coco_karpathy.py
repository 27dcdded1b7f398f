"""COCO captions, Karpathy split: the 5K test images (captioning and retrieval), and a training
sample for calibration.

Raw: ``dataset_coco.json`` (Karpathy's split file) and the COCO 2014 images it points to
(``<filepath>/<filename>``: ``val2014/`` for test, ``train2014/`` for the calibration sample).
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets

from mmq_eval.data.captions import write_caption_set
from mmq_eval.data.images import first_missing, image_cell
from mmq_eval.data.karpathy import read_entries, split_items
from mmq_eval.data.layout import load_prepared
from mmq_eval.data.writer import write_parquet
from mmq_eval.errors import MMQConfigError

NAME = "coco_karpathy"
TEST_FILE = "coco/karpathy_test.parquet"
CALIB_FILE = "coco/karpathy_train_calib.parquet"
SPLIT_FILE = "dataset_coco.json"
RAW = "dataset_coco.json, val2014/ and train2014/"
CALIB_SIZE = 2000
CALIB_FEATURES = datasets.Features({
    "image_id": datasets.Value("int64"), "image": datasets.Image(), "text": datasets.Value("string"),
})


def _file(raw_dir: Path, entry: dict) -> Path:
    return raw_dir / entry["filepath"] / entry["filename"]


def _calib_sample(entries: list[dict], raw_dir: Path, size: int, seed: int) -> list[tuple[int, Path, str]]:
    """A seeded sample of ``size`` Karpathy ``train`` images with one of their captions each.

    These are COCO train2014 images: disjoint from both Karpathy test and COCO val2017.
    """
    if size < 0:
        raise MMQConfigError(f"--calib-size {size}: give a number of images, or 0 for none")
    rng = random.Random(seed)
    pool = [e for e in entries if e["split"] == "train"]
    sample = rng.sample(pool, min(size, len(pool)))
    return [(e["cocoid"], _file(raw_dir, e), rng.choice(e["sentences"])["raw"].strip()) for e in sample]


def prepare(raw_dir: Path, root: Path, calib_size: int = CALIB_SIZE, seed: int = 0) -> list[Path]:
    """Write the Karpathy test set and (unless ``calib_size`` is 0) the calibration sample."""
    entries = read_entries(raw_dir, SPLIT_FILE, NAME)
    test = split_items(entries, "test", lambda e: _file(raw_dir, e), "cocoid", SPLIT_FILE)
    calib = _calib_sample(entries, raw_dir, calib_size, seed)
    first_missing([file for _, file, _ in calib], "calibration images (Karpathy train, in train2014/)")
    written = [write_caption_set(root / TEST_FILE, test, "Karpathy test")]
    if calib:
        rows = ({"image_id": image_id, "image": image_cell(file), "text": text} for image_id, file, text in calib)
        written.append(write_parquet(root / CALIB_FILE, CALIB_FEATURES, rows, len(calib), "calibration sample"))
    return written


def load_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_coco_cap_karpathy`` and ``mmq_coco_retrieval``: the prepared test set."""
    return load_prepared(TEST_FILE, NAME, RAW)
