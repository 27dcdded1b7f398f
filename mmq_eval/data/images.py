"""Image bytes: read from the raw downloads, and looked up in a prepared image store.

A store is an uncompressed Arrow IPC (Feather v2) file with columns ``image_id`` (string) and
``image`` (the original encoded bytes), one row per image. It is memory-mapped: a lookup reads
one image, whatever the store's size, and nothing is copied into a cache.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import datasets
import pyarrow as pa
from PIL import Image, ImageFile, UnidentifiedImageError

from mmq_eval.errors import MMQDataError

#: What PIL raises for bytes that are not a whole image (truncated, corrupt, not an image).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@contextmanager
def strict_decoding():
    """PIL refuses truncated images while open (lmms-eval sets ``LOAD_TRUNCATED_IMAGES``
    globally, which fills a cut JPEG with grey); the previous setting is restored after."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def decode_rgb(data: bytes) -> Image.Image:
    """The whole image encoded in ``data``, as RGB; a PIL error if any of it is missing."""
    with strict_decoding(), Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def read_image(path: Path) -> bytes:
    """The encoded bytes of the image file ``path``, checked to decode completely.

    MMQDataError names the file when it is missing, empty, truncated or not an image.
    """
    if not path.is_file():
        raise MMQDataError(f"image {path} is missing")
    data = path.read_bytes()
    if not data:
        raise MMQDataError(f"image {path} is empty (0 bytes)")
    try:
        with strict_decoding(), Image.open(io.BytesIO(data)) as image:
            image.load()
    except DECODE_ERRORS as exc:
        raise MMQDataError(f"image {path} does not decode ({exc})") from None
    return data


def decode_image(cell, what: str, fix: str = "prepare the data set again") -> Image.Image:
    """The RGB image of a ``datasets.Image`` cell: a PIL image, or (undecoded) ``{"bytes", "path"}``.

    Tasks keep their image columns undecoded (see ``undecoded_images``): lmms-eval reads every doc
    several times, and only ``doc_to_visual`` needs the pixels. MMQDataError names ``what`` and
    the ``fix`` when the bytes are not a whole image (a truncated one is refused, never grey-filled).
    """
    if isinstance(cell, Image.Image):
        return cell.convert("RGB")
    try:
        return decode_rgb(cell["bytes"])
    except (*DECODE_ERRORS, TypeError, KeyError) as exc:
        raise MMQDataError(f"{what}: the image cannot be read ({exc}); {fix}") from None


def undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with its image columns left encoded until ``decode_image`` (cheap: no copy)."""
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


class ImageStore:
    """Random access by image id to a prepared image store.

    ``fix`` is what to do when the store is missing or damaged (the prepare-data command).
    """

    def __init__(self, path: Path, fix: str = "run the mmq-eval prepare-data command again") -> None:
        if not path.is_file():
            raise MMQDataError(f"image store {path} is missing: {fix}")
        try:
            self.table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
            self.table.validate(full=True)
        except (pa.ArrowException, OSError) as exc:
            raise MMQDataError(f"image store {path} is damaged or not an image store ({exc}): {fix}") from None
        if self.table.column_names != ["image_id", "image"]:
            raise MMQDataError(f"image store {path} has columns {self.table.column_names}, not "
                               f"['image_id', 'image']: {fix}")
        self.rows = {image_id: row for row, image_id in enumerate(self.table.column("image_id").to_pylist())}
        self.path = path
        self.fix = fix

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, image_id) -> Image.Image:
        """The image ``image_id`` as RGB."""
        row = self.rows.get(str(image_id))
        if row is None:
            raise MMQDataError(f"image {image_id!r} is not in {self.path}: {self.fix}")
        return decode_image({"bytes": self.table.column("image")[row].as_py()},
                            f"image {image_id!r} of {self.path}", self.fix)


@lru_cache(maxsize=4)
def _open_store(path: Path, mtime: float, fix: str) -> ImageStore:
    return ImageStore(path, fix)


def open_store(path: Path, fix: str = "run the mmq-eval prepare-data command again") -> ImageStore:
    """The store at ``path``, opened once per file version."""
    return _open_store(path, path.stat().st_mtime if path.exists() else 0.0, fix)
