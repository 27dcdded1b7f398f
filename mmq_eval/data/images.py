"""Image bytes: read from the raw downloads, and looked up in a prepared image store.

A store is an uncompressed Arrow IPC (Feather v2) file with columns ``image_id`` (string) and
``image`` (the original encoded bytes), one row per image. It is memory-mapped: a lookup reads
one image, whatever the store's size, and nothing is copied into a cache.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import datasets
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from mmq_eval.errors import MMQDataError


def read_image(path: Path) -> bytes:
    """The encoded bytes of the image file ``path``, checked to be a readable image."""
    if not path.is_file():
        raise MMQDataError(f"image {path} is missing")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)):
            pass
    except (UnidentifiedImageError, OSError) as exc:
        raise MMQDataError(f"image {path} cannot be read ({exc})") from None
    return data


def image_cell(path: Path) -> dict:
    """``datasets.Image`` storage of the file ``path``: its bytes embedded, its name kept."""
    return {"bytes": read_image(path), "path": path.name}


def first_missing(paths: list[Path], what: str) -> None:
    """Raise MMQDataError naming the first of ``paths`` that does not exist (and how many)."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MMQDataError(f"{len(missing)} of {len(paths)} {what} are missing, the first: {missing[0]}")


def decode_image(cell, what: str, fix: str = "prepare the data set again") -> Image.Image:
    """The RGB image of a ``datasets.Image`` cell: a PIL image, or (undecoded) ``{"bytes", "path"}``.

    Tasks keep their image columns undecoded (see ``undecoded_images``): lmms-eval reads every doc
    several times, and only ``doc_to_visual`` needs the pixels. MMQDataError names ``what`` and
    the ``fix`` when the bytes are not an image.
    """
    if isinstance(cell, Image.Image):
        return cell.convert("RGB")
    try:
        with Image.open(io.BytesIO(cell["bytes"])) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, TypeError, KeyError) as exc:
        raise MMQDataError(f"{what}: the image cannot be read ({exc}); {fix}") from None


def undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with its image columns left encoded until ``decode_image`` (cheap: no copy)."""
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


class ImageStore:
    """Random access by image id to a prepared image store."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise MMQDataError(f"image store {path} is missing: run the mmq-eval prepare-data command again")
        self.table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        self.rows = {image_id: row for row, image_id in enumerate(self.table.column("image_id").to_pylist())}
        self.path = path

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, image_id) -> Image.Image:
        """The image ``image_id`` as RGB."""
        row = self.rows.get(str(image_id))
        if row is None:
            raise MMQDataError(f"image {image_id!r} is not in {self.path}: prepare the data set again")
        return Image.open(io.BytesIO(self.table.column("image")[row].as_py())).convert("RGB")


@lru_cache(maxsize=4)
def _open_store(path: Path, mtime: float) -> ImageStore:
    return ImageStore(path)


def open_store(path: Path) -> ImageStore:
    """The store at ``path``, opened once per file version."""
    return _open_store(path, path.stat().st_mtime if path.exists() else 0.0)
