"""``mmq-eval prepare-data calib``: a seeded image-caption calibration sample for GPTQ/AWQ, which
``calib_data=auto`` (the default) uses for real checkpoints.

Raw (``--from RAW``), the first layout found:

- COCO 2017 train: ``annotations/captions_train2017.json`` and ``train2017/``. train2017 holds
  most of val2014 (the Karpathy test and VQAv2 val images), so ``dataset_coco.json`` (Karpathy's
  split file) or ``annotations/captions_val2014.json`` must lie beside it: their val2014 images
  are dropped.
- COCO 2014 train: ``annotations/captions_train2014.json`` and ``train2014/`` (disjoint from every
  COCO evaluation split).
- A folder of images with ``metadata.jsonl`` (``datasets``' image-folder convention: one line per
  image with ``file_name`` and ``text`` or ``caption``, a string or a list).
- A folder of images each with a caption file of the same name ending in ``.txt``.

Every image of a prepared evaluation set under the data root is dropped too. Image ids carry
their collection: ``coco:<id>``, ``flickr30k:<photo id>``, ``folder:<relative path>``.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from mmq_eval.data import coco2017, coco_karpathy, flickr30k, gqa, vqav2
from mmq_eval.data.captions import image_rows, usable_items
from mmq_eval.data.checks import Refusals
from mmq_eval.data.karpathy import read_entries
from mmq_eval.data.layout import data_root
from mmq_eval.data.writer import write_parquet
from mmq_eval.errors import MMQConfigError, MMQDataError

NAME = "calib"
CALIB_FILE = "calib/captions.parquet"
CALIB_SIZE = 512
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FEATURES = datasets.Features({
    "image_id": datasets.Value("string"), "image": datasets.Image(), "text": datasets.Value("string"),
})
RAW = ("annotations/captions_train2017.json + train2017/ (+ dataset_coco.json), "
       "annotations/captions_train2014.json + train2014/, images + metadata.jsonl, or images + .txt captions")

#: Prepared evaluation file -> (id column, collection) of its images.
EVALUATION_SETS = {
    coco_karpathy.TEST_FILE: ("image_id", "coco"),
    coco2017.VAL_FILE: ("image_id", "coco"),
    vqav2.VAL_FILE: ("image_id", "coco"),
    flickr30k.TEST_FILE: ("file_name", "flickr30k"),
    gqa.TESTDEV_FILE: ("image_id", "gqa"),
}

Item = tuple[str, Path, list[str]]  # (image id, image file, captions)


def collection_id(collection: str, value) -> str:
    """The id ``<collection>:<id>``; a Flickr30k id is the photo id (the file name's stem)."""
    return f"{collection}:{Path(str(value)).stem if collection == 'flickr30k' else value}"


def evaluation_image_ids(root: Path | None = None) -> set[str]:
    """Ids (``collection_id``) of every image in the evaluation sets prepared under the data root."""
    root = root or data_root()
    ids = set()
    for relative, (column, collection) in EVALUATION_SETS.items():
        path = root / relative
        if path.is_file():
            values = pq.read_table(path, columns=[column]).column(column).to_pylist()
            ids.update(collection_id(collection, v) for v in values)
    return ids


def _coco_captions(path: Path) -> tuple[list[dict], dict[int, list[str]]]:
    try:
        coco = json.loads(path.read_text())
        captions = defaultdict(list)
        for annotation in coco["annotations"]:
            captions[annotation["image_id"]].append(annotation["caption"])
        return coco["images"], captions
    except (KeyError, TypeError, ValueError):
        raise MMQDataError(f"{NAME}: {path} is not a COCO captions file (no 'images'/'annotations')") from None


def _val2014_ids(raw_dir: Path) -> set[int]:
    karpathy = raw_dir / coco_karpathy.SPLIT_FILE
    if karpathy.is_file():
        return {e["cocoid"] for e in read_entries(raw_dir, coco_karpathy.SPLIT_FILE, NAME) if e["filepath"] == "val2014"}
    val_captions = raw_dir / "annotations" / "captions_val2014.json"
    if val_captions.is_file():
        return {image["id"] for image in _coco_captions(val_captions)[0]}
    raise MMQDataError(
        f"{NAME}: train2017 holds most COCO val2014 images (the Karpathy test and VQAv2 val images); "
        f"put {karpathy} (Karpathy's split file) or {val_captions} beside it so that they are "
        "dropped, or use annotations/captions_train2014.json with train2014/ instead"
    )


def _coco_items(raw_dir: Path, year: str) -> list[Item]:
    images, captions = _coco_captions(raw_dir / "annotations" / f"captions_train{year}.json")
    dropped = _val2014_ids(raw_dir) if year == "2017" else set()
    folder = raw_dir / f"train{year}"
    return [(collection_id("coco", image["id"]), folder / image["file_name"], captions[image["id"]])
            for image in images if image["id"] not in dropped]


def _jsonl_items(raw_dir: Path) -> list[Item]:
    path = raw_dir / "metadata.jsonl"
    items = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
        except (KeyError, TypeError, ValueError):
            raise MMQDataError(f"{path}, line {number}: expected a JSON object with 'file_name' and "
                               "'text' (or 'caption')") from None
        text = row.get("text", row.get("caption")) or []
        items.append((collection_id("folder", name), raw_dir / name, [text] if isinstance(text, str) else list(text)))
    return items


def _sidecar_items(raw_dir: Path) -> list[Item]:
    files = sorted(p for p in raw_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(collection_id("folder", p.relative_to(raw_dir).as_posix()), p, [p.with_suffix(".txt").read_text()])
            for p in files if p.with_suffix(".txt").is_file()]


def caption_items(raw_dir: Path) -> tuple[str, list[Item]]:
    """(layout name, items with at least one non-empty caption) of the first layout in ``raw_dir``."""
    if (raw_dir / "annotations" / "captions_train2017.json").is_file():
        layout, items = "COCO train2017", _coco_items(raw_dir, "2017")
    elif (raw_dir / "annotations" / "captions_train2014.json").is_file():
        layout, items = "COCO train2014", _coco_items(raw_dir, "2014")
    elif (raw_dir / "metadata.jsonl").is_file():
        layout, items = "metadata.jsonl", _jsonl_items(raw_dir)
    else:
        layout, items = "images with .txt captions", _sidecar_items(raw_dir)
    return layout, [(i, f, [c.strip() for c in cs if c and c.strip()]) for i, f, cs in items
                    if any(c and c.strip() for c in cs)]


def prepare(raw_dir: Path, root: Path, calib_size: int = CALIB_SIZE, seed: int = 0,
            skip_bad: bool = False) -> list[Path]:
    """Write ``calib_size`` seeded images (one of their captions each, drawn with the same seed) to
    CALIB_FILE, leaving out every image of the evaluation sets prepared under ``root``
    (``skip_bad``: and the images that do not decode)."""
    if calib_size < 1:
        raise MMQConfigError(f"--calib-size {calib_size}: give a positive number of images (default {CALIB_SIZE})")
    layout, items = caption_items(raw_dir)
    excluded = evaluation_image_ids(root)
    pool = [item for item in items if item[0] not in excluded]
    if not pool:
        raise MMQDataError(
            f"{NAME}: --from {raw_dir} ({layout}) holds no image with a non-empty caption"
            + (f" outside the prepared evaluation sets ({len(items)} excluded)" if items else "")
            + f"; expected one of: {RAW}"
        )
    rng = random.Random(seed)
    drawn = [(image_id, file, rng.choice(captions))
             for image_id, file, captions in sorted(rng.sample(pool, min(calib_size, len(pool))))]
    refusals = Refusals(NAME, root / CALIB_FILE, skip_bad)
    drawn = usable_items(drawn, refusals, layout, lambda text: None, f"calibration images ({layout})")
    rows = image_rows(drawn, refusals, layout,
                      lambda image_id, file, text, cell: {"image_id": image_id, "image": cell, "text": text})
    written = write_parquet(root / CALIB_FILE, FEATURES, rows, len(drawn), "calibration sample")
    refusals.write_manifest()
    return [written]
