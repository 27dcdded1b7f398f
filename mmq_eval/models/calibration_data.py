"""Calibration examples (image, text) for GPTQ/AWQ, drawn from data that is never evaluated.

``calib_data=auto`` (the default) resolves, in this order: an embedded ``mmq:shapes*`` model →
the shapes world's ``calib`` split; a real checkpoint → the calibration set prepared under the
data root (``mmq-eval prepare-data calib``, else the ``coco_karpathy`` calibration sample); else,
when the hub may be used, ``ONLINE_DATASET`` streamed through ``datasets`` without the images of
the evaluation sets prepared under the data root; else MMQConfigError naming both ways.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path

import datasets
from loguru import logger
from PIL import Image, UnidentifiedImageError

from mmq_eval.data import calibration_set, coco_karpathy
from mmq_eval.data.calibration_set import collection_id, evaluation_image_ids
from mmq_eval.data.layout import data_root
from mmq_eval.errors import MMQConfigError, MMQDataError
from mmq_eval.models.loading import EMBEDDED_PREFIX

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
AUTO = "auto"
SHAPES = "shapes"
#: The Flickr30k copy llm-compressor's VLM examples calibrate on (all 31,783 images, one split).
ONLINE_DATASET, ONLINE_SPLIT = "lmms-lab/flickr30k", "test"
#: ``calib_data`` value (and report source) of the online set.
ONLINE = f"{ONLINE_DATASET}:{ONLINE_SPLIT}"
STREAM_BUFFER = 2048
#: Prepared calibration files under the data root, in order of preference.
PREPARED = (calibration_set.CALIB_FILE, coco_karpathy.CALIB_FILE)
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
#: What an explicit ``calib_data`` may be (for error messages).
ACCEPTED = (f"a folder of images, a .parquet or .jsonl file with an 'image' column (bytes or paths) and "
            f"an optional 'text' column (captions), {ONLINE}, 'shapes' or 'auto'")


class CalibrationSet(list):
    """(image, text) pairs, with where they came from (``source``) and one id per pair (``ids``)."""

    def __init__(self, examples: list[tuple[Image.Image, str]], source: str, ids: list[str],
                 warning: str | None = None) -> None:
        super().__init__(examples)
        self.source, self.ids, self.warning = source, [str(i) for i in ids], warning

    def info(self) -> dict:
        """Source, sample count, the sha256 of the sorted sample ids (one per line), and a warning
        when evaluation images may be among the samples."""
        digest = hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()
        return {"source": self.source, "samples": len(self), "ids_sha256": digest,
                **({"warning": self.warning} if self.warning else {})}


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE forbids downloads."""
    return any(os.environ.get(name, "").upper() in TRUE_VALUES for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def prepared_calibration_file() -> Path | None:
    """The first prepared calibration file under the data root, or None."""
    return next((data_root() / p for p in PREPARED if (data_root() / p).is_file()), None)


def resolve_calib_data(calib_data: str, pretrained: str, needed_by: str) -> str:
    """What ``calib_data`` means for checkpoint ``pretrained``: the value itself unless it is
    ``auto`` (see the module docstring). MMQConfigError names both ways to calibration data when
    ``auto`` finds none; ``needed_by`` (``method=gptq``) says who asks."""
    if calib_data != AUTO:
        return calib_data
    if pretrained.startswith(EMBEDDED_PREFIX + "shapes"):
        return SHAPES
    prepared = prepared_calibration_file()
    if prepared is not None:
        return str(prepared)
    if not hub_offline():
        return ONLINE
    raise MMQConfigError(
        f"{needed_by} needs calibration data, and calib_data=auto found none for {pretrained}: no "
        f"{calibration_set.CALIB_FILE} under the data root {data_root()}, and the hub is off "
        "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE). Either prepare a calibration set once:\n"
        "  mmq-eval prepare-data calib --from <COCO download with annotations/captions_train2017.json "
        "and train2017/, or a folder of images with captions> (see docs/data.md)\n"
        f"or go online (unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE) to calibrate on {ONLINE_DATASET}, "
        "or pass calib_data=<folder of images | parquet/JSONL file with 'image' and 'text' columns>."
    )


def _open_image(source, where: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise MMQDataError(f"calibration image {where} cannot be read ({exc}); remove or replace it") from None


def _shapes_examples(n: int, seed: int, split: str) -> CalibrationSet:
    from mmq_eval.shapes import calibration_examples

    if split != "calib":
        raise MMQConfigError(
            f"calib_split={split!r}: the shapes world calibrates on its 'calib' split only "
            "(the 'test' split is what the tasks evaluate)"
        )
    examples = [(image, f"{prompt} {target}".strip()) for image, prompt, target in calibration_examples(n, seed)]
    return CalibrationSet(examples, "shapes:calib", [f"shapes:calib:{seed}:{i}" for i in range(len(examples))])


def _table_examples(path: Path, n: int, seed: int) -> CalibrationSet:
    import pandas as pd

    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
    rows = list(range(len(frame)))
    random.Random(seed).shuffle(rows)
    examples, ids = [], []
    for row in rows[:n]:
        cell = frame["image"].iloc[row]
        if isinstance(cell, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
            cell = cell.get("bytes") or cell.get("path")
        if isinstance(cell, str) and not Path(cell).is_absolute():
            cell = str(path.parent / cell)
        text = str(frame["text"].iloc[row]) if "text" in frame.columns else ""
        examples.append((_open_image(cell, f"{path}#row{row}"), text))
        ids.append(frame["image_id"].iloc[row] if "image_id" in frame.columns else f"{path.name}#row{row}")
    return CalibrationSet(examples, str(path.resolve()), ids)


def _folder_examples(path: Path, n: int, seed: int) -> CalibrationSet:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    random.Random(seed).shuffle(files)
    return CalibrationSet([(_open_image(p, str(p)), "") for p in files[:n]], str(path.resolve()),
                          [p.relative_to(path).as_posix() for p in files[:n]])


def _online_examples(n: int, seed: int) -> CalibrationSet:
    """``n`` seeded images of ONLINE_DATASET (one caption each), streamed, none of them in an
    evaluation set prepared under the data root."""
    excluded = evaluation_image_ids()
    warning = None
    if not any(i.startswith("flickr30k:") for i in excluded):
        warning = (f"the Flickr30k 1K test is not prepared under {data_root()}, so its images were not "
                   "left out of the calibration sample: do not score Flickr30k with this model")
        logger.warning(f"calibrating on {ONLINE_DATASET}: {warning}")
    logger.info(f"calibration data: {n} images streamed from {ONLINE} (seed {seed})")
    stream = datasets.load_dataset(ONLINE_DATASET, split=ONLINE_SPLIT, streaming=True)
    rng = random.Random(seed)
    examples, ids = [], []
    for row in stream.shuffle(seed=seed, buffer_size=STREAM_BUFFER):
        image_id = collection_id("flickr30k", row["filename"])
        texts = [row["caption"]] if isinstance(row["caption"], str) else row["caption"]
        captions = [c.strip() for c in texts if c and c.strip()]
        if image_id in excluded or not captions:
            continue
        examples.append((_open_image(row["image"], f"{image_id} of {ONLINE}"), rng.choice(captions)))
        ids.append(image_id)
        if len(examples) == n:
            break
    return CalibrationSet(examples, ONLINE, ids, warning)


def _table_columns(path: Path) -> tuple[list[str], int]:
    """The column names and row count of a parquet file (from its footer), or the keys of a JSONL
    file's first record and 1 (0 for an empty file)."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as exc:
            raise MMQDataError(f"calib_data={str(path)!r} is not a readable parquet file ({exc}); "
                               "rewrite it (e.g. mmq-eval prepare-data calib)") from None
        return metadata.schema.to_arrow_schema().names, metadata.num_rows
    with path.open(encoding="utf-8") as lines:
        first = next((line for line in lines if line.strip()), None)
    if first is None:
        return [], 0
    try:
        record = json.loads(first)
    except json.JSONDecodeError as exc:
        raise MMQDataError(f"calib_data={str(path)!r}: the first line is not JSON ({exc}); expected one "
                           "JSON object per line") from None
    return (list(record) if isinstance(record, dict) else []), 1


def check_calib_data(calib_data: str) -> None:
    """Refuse a resolved ``calib_data`` that cannot give calibration examples, before any model is
    loaded: a path that does not exist, a folder without images, a file that is not parquet/JSONL,
    or a table that is empty or has no ``image`` column (read from the parquet footer or the first
    JSONL line). MMQConfigError names the value and the accepted forms."""
    if calib_data in (SHAPES, ONLINE):
        return
    path = Path(calib_data).expanduser()
    if not path.exists():
        raise MMQConfigError(f"calib_data={calib_data!r}: no such file or folder; pass {ACCEPTED}")
    if path.is_dir():
        if next((p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), None) is None:
            raise MMQConfigError(f"calib_data={calib_data!r} is a folder without images "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))}); pass {ACCEPTED}")
        return
    if path.suffix not in {".parquet", ".jsonl"}:
        raise MMQConfigError(f"calib_data={calib_data!r}: expected a folder, a .parquet or a .jsonl file; pass {ACCEPTED}")
    columns, rows = _table_columns(path)
    if rows == 0:
        raise MMQConfigError(f"calib_data={calib_data!r} holds no rows; pass {ACCEPTED}")
    if "image" not in columns:
        raise MMQConfigError(f"calib_data={calib_data!r} has no 'image' column (columns: {columns}); pass {ACCEPTED}")


def load_calibration_examples(calib_data: str, n: int, seed: int, split: str = "calib") -> CalibrationSet:
    """Return ``n`` seeded (image, text) calibration pairs from ``calib_data`` (resolved: not ``auto``).

    ``calib_data`` is ``shapes`` (the embedded world's ``split``), ONLINE (the hub set), a
    parquet/JSONL file with an ``image`` column (bytes or paths) and optional ``text`` and
    ``image_id`` columns, or a folder of images (``check_calib_data`` refuses anything else).
    """
    check_calib_data(calib_data)
    if calib_data == SHAPES:
        return _shapes_examples(n, seed, split)
    if calib_data == ONLINE:
        return _online_examples(n, seed)
    path = Path(calib_data).expanduser()
    if path.is_dir():
        return _folder_examples(path, n, seed)
    return _table_examples(path, n, seed)
