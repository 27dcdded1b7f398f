"""COCO captions, Karpathy split: the 5K test images (captioning and retrieval), and a training
sample for calibration.

Raw: ``dataset_coco.json`` (Karpathy's split file) and the COCO 2014 images it points to
(``<filepath>/<filename>``: ``val2014/`` for test, ``train2014/`` for the calibration sample).
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets

from mmq_eval.data.captions import image_rows, usable_items, write_caption_set
from mmq_eval.data.checks import Refusals, blank
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


def _calib_sample(entries: list[dict], raw_dir: Path, size: int, seed: int,
                  refusals: Refusals) -> list[tuple[int, Path, str]]:
    """A seeded sample of ``size`` Karpathy ``train`` images with one of their captions each.

    These are COCO train2014 images: disjoint from both Karpathy test and COCO val2017. A drawn
    image without captions is refused (and, with ``--skip-bad``, left out of the sample).
    """
    if size < 0:
        raise MMQConfigError(f"--calib-size {size}: give a number of images, or 0 for none")
    rng = random.Random(seed)
    pool = [e for e in entries if e["split"] == "train"]
    sample = rng.sample(pool, min(size, len(pool)))
    return [(e["cocoid"], _file(raw_dir, e), (rng.choice(e["sentences"]).get("raw") or "").strip()) for e in sample
            if refusals.keep(f"image {e['cocoid']} ({SPLIT_FILE})", None if e.get("sentences") else "no captions")]


def _text_problem(text) -> str | None:
    return "its caption is empty" if blank(text) else None


def prepare(raw_dir: Path, root: Path, calib_size: int = CALIB_SIZE, seed: int = 0,
            skip_bad: bool = False) -> list[Path]:
    """Write the Karpathy test set and (unless ``calib_size`` is 0) the calibration sample
    (``skip_bad``: without the unusable entries)."""
    entries = read_entries(raw_dir, SPLIT_FILE, NAME)
    test = split_items(entries, "test", lambda e: _file(raw_dir, e), "cocoid", SPLIT_FILE)
    test_refusals = Refusals(NAME, root / TEST_FILE, skip_bad)
    test = usable_items(test, test_refusals, SPLIT_FILE)
    calib_refusals = Refusals(NAME, root / CALIB_FILE, skip_bad)
    calib = usable_items(_calib_sample(entries, raw_dir, calib_size, seed, calib_refusals), calib_refusals,
                         SPLIT_FILE, _text_problem, "calibration images (Karpathy train, in train2014/)")
    written = [write_caption_set(root / TEST_FILE, test, "Karpathy test", test_refusals, SPLIT_FILE)]
    if calib or calib_refusals.refused:
        rows = image_rows(calib, calib_refusals, SPLIT_FILE,
                          lambda image_id, file, text, cell: {"image_id": image_id, "image": cell, "text": text})
        written.append(write_parquet(root / CALIB_FILE, CALIB_FEATURES, rows, len(calib), "calibration sample"))
        calib_refusals.write_manifest()
    return written


def load_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_coco_cap_karpathy`` and ``mmq_coco_retrieval``: the prepared test set."""
    return load_prepared(TEST_FILE, NAME, RAW)
