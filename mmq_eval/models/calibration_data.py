"""Calibration examples (image, text) for GPTQ/AWQ, drawn from a split that is never evaluated."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mmq_eval.errors import MMQConfigError, MMQDataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _open_image(source, where: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise MMQDataError(f"calibration image {where} cannot be read ({exc}); remove or replace it") from None


def _shapes_examples(n: int, seed: int, split: str) -> list[tuple[Image.Image, str]]:
    from mmq_eval.shapes import calibration_examples

    if split != "calib":
        raise MMQConfigError(
            f"calib_split={split!r}: the shapes world calibrates on its 'calib' split only "
            "(the 'test' split is what the tasks evaluate)"
        )
    return [(image, f"{prompt} {target}".strip()) for image, prompt, target in
            calibration_examples(n, seed)]


def _table_examples(path: Path, n: int, seed: int) -> list[tuple[Image.Image, str]]:
    import pandas as pd

    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
    if "image" not in frame.columns:
        raise MMQDataError(f"calibration file {path} has no 'image' column (columns: {list(frame.columns)})")
    rows = list(range(len(frame)))
    random.Random(seed).shuffle(rows)
    examples = []
    for row in rows[:n]:
        cell = frame["image"].iloc[row]
        if isinstance(cell, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
            cell = cell.get("bytes") or cell.get("path")
        if isinstance(cell, str) and not Path(cell).is_absolute():
            cell = str(path.parent / cell)
        text = str(frame["text"].iloc[row]) if "text" in frame.columns else ""
        examples.append((_open_image(cell, f"{path}#row{row}"), text))
    return examples


def _folder_examples(path: Path, n: int, seed: int) -> list[tuple[Image.Image, str]]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MMQDataError(f"calib_data={str(path)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    random.Random(seed).shuffle(files)
    return [(_open_image(p, str(p)), "") for p in files[:n]]


def load_calibration_examples(calib_data: str, n: int, seed: int, split: str = "calib"):
    """Return ``n`` seeded (image, text) calibration pairs from ``calib_data``.

    ``calib_data`` is ``shapes`` (the embedded world's ``split``), a parquet/JSONL file with an
    ``image`` column (bytes or paths) and an optional ``text`` column, or a folder of images.
    """
    if calib_data == "shapes":
        return _shapes_examples(n, seed, split)
    path = Path(calib_data).expanduser()
    if not path.exists():
        raise MMQDataError(
            f"calib_data={calib_data!r} does not exist; pass a folder of images, a parquet/JSONL "
            "file with 'image' and 'text' columns, or 'shapes'"
        )
    if path.is_dir():
        return _folder_examples(path, n, seed)
    if path.suffix in {".parquet", ".jsonl"}:
        return _table_examples(path, n, seed)
    raise MMQConfigError(f"calib_data={calib_data!r}: expected a folder, a .parquet or a .jsonl file")
