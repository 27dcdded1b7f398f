"""Flickr30k, Karpathy test split (1,000 images, 5 captions each): the retrieval gallery.

Raw: ``dataset_flickr30k.json`` (Karpathy's split file) and ``flickr30k-images/``.
"""

from __future__ import annotations

from pathlib import Path

import datasets

from mmq_eval.data.captions import usable_items, write_caption_set
from mmq_eval.data.checks import Refusals
from mmq_eval.data.karpathy import read_entries, split_items
from mmq_eval.data.layout import load_prepared, raw_file

NAME = "flickr30k"
TEST_FILE = "flickr30k/test.parquet"
SPLIT_FILE = "dataset_flickr30k.json"
IMAGES = "flickr30k-images"
RAW = f"{SPLIT_FILE} and {IMAGES}/"


def prepare(raw_dir: Path, root: Path, skip_bad: bool = False) -> list[Path]:
    """Write the test images with their captions; ``image_id`` is Karpathy's ``imgid``
    (``skip_bad``: without the unusable entries)."""
    entries = read_entries(raw_dir, SPLIT_FILE, NAME)
    images = raw_file(raw_dir, IMAGES, NAME)
    test = split_items(entries, "test", lambda e: images / e["filename"], "imgid", SPLIT_FILE)
    refusals = Refusals(NAME, root / TEST_FILE, skip_bad)
    test = usable_items(test, refusals, SPLIT_FILE)
    return [write_caption_set(root / TEST_FILE, test, "Flickr30k test", refusals, SPLIT_FILE)]


def load_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """``process_docs`` of ``mmq_flickr30k_retrieval``: the prepared test set."""
    return load_prepared(TEST_FILE, NAME, RAW)
