"""Write prepared files in row groups with a progress bar, atomically (``.part`` then rename;
an error while writing removes the ``.part`` and leaves the previous file)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

ROWS_PER_GROUP = 256


def _batches(rows: Iterable[dict], total: int, desc: str):
    rows = iter(tqdm(rows, total=total, desc=desc, unit="row"))
    while chunk := list(itertools.islice(rows, ROWS_PER_GROUP)):
        yield chunk


@contextmanager
def _committed(path: Path):
    """Yield ``path.part`` to write; rename it to ``path`` when the block ends, delete it on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        yield part
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(path)


def write_parquet(path: Path, features: datasets.Features, rows: Iterable[dict], total: int, desc: str) -> Path:
    """Write ``rows`` (dicts of ``features``) to the parquet file ``path``; lmms-eval/datasets
    read it back with the same features (images as ``datasets.Image``). An error raised while
    ``rows`` are produced leaves ``path`` as it was."""
    schema = features.arrow_schema
    with _committed(path) as part, pq.ParquetWriter(part, schema) as out:
        for chunk in _batches(rows, total, desc):
            out.write_table(pa.Table.from_pylist(chunk, schema=schema))
    return path


def write_image_store(path: Path, images: Iterable[tuple[str, bytes]], total: int, desc: str) -> Path:
    """Write the (image id, encoded bytes) pairs to the Arrow image store ``path`` (see ``images``)."""
    schema = pa.schema([("image_id", pa.string()), ("image", pa.binary())])
    rows = ({"image_id": image_id, "image": data} for image_id, data in images)
    with _committed(path) as part, pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, schema) as out:
        for chunk in _batches(rows, total, desc):
            out.write_table(pa.Table.from_pylist(chunk, schema=schema))
    return path
