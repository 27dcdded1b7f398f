"""Write prepared files in row groups with a progress bar, atomically (``.part`` then rename)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from mmq_eval.data.images import read_image

ROWS_PER_GROUP = 256


def _batches(rows: Iterable[dict], total: int, desc: str):
    rows = iter(tqdm(rows, total=total, desc=desc, unit="row"))
    while chunk := list(itertools.islice(rows, ROWS_PER_GROUP)):
        yield chunk


def write_parquet(path: Path, features: datasets.Features, rows: Iterable[dict], total: int, desc: str) -> Path:
    """Write ``rows`` (dicts of ``features``) to the parquet file ``path``; lmms-eval/datasets
    read it back with the same features (images as ``datasets.Image``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    schema = features.arrow_schema
    with pq.ParquetWriter(part, schema) as out:
        for chunk in _batches(rows, total, desc):
            out.write_table(pa.Table.from_pylist(chunk, schema=schema))
    part.replace(path)
    return path


def write_image_store(path: Path, images: dict[str, Path], desc: str) -> Path:
    """Write the images (image id -> file) to the Arrow image store ``path`` (see ``images``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    schema = pa.schema([("image_id", pa.string()), ("image", pa.binary())])
    rows = ({"image_id": image_id, "image": read_image(file)} for image_id, file in images.items())
    with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, schema) as out:
        for chunk in _batches(rows, len(images), desc):
            out.write_table(pa.Table.from_pylist(chunk, schema=schema))
    part.replace(path)
    return path
