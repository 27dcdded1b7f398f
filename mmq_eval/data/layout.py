"""Where prepared data lives, and the errors that name what is missing or damaged."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets.exceptions import DatasetGenerationError

from mmq_eval.data.checks import skipped_manifest
from mmq_eval.data.images import undecoded_images
from mmq_eval.errors import MMQDataError

#: Column of the placeholder doc that ``load_prepared`` returns when a file is missing or damaged.
UNPREPARED = "mmq_unprepared"


def data_root(override: str | os.PathLike | None = None) -> Path:
    """``override`` (``--data-dir``), else ``$MMQ_DATA_DIR``, else ``~/.cache/mmq-eval/data``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MMQ_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmq-eval" / "data"


def raw_file(raw_dir: Path, relative: str, dataset: str) -> Path:
    """``raw_dir/relative``, or MMQDataError naming it when it does not exist."""
    path = raw_dir / relative
    if not path.exists():
        raise MMQDataError(f"{dataset}: expected {path} (the official '{relative}') in --from {raw_dir}")
    return path


def prepare_again(dataset: str) -> str:
    """The fix for a damaged prepared file of ``dataset``."""
    return f"prepare it again with: mmq-eval prepare-data {dataset} --from <raw folder> (see docs/data.md)"


def unprepared_message(path: Path, dataset: str, raw: str) -> str:
    """What a task says when its prepared file is missing; ``raw`` lists the files needed."""
    return (
        f"{path} is missing: prepare it once with\n"
        f"  mmq-eval prepare-data {dataset} --from <folder holding {raw}>"
        + ("" if os.environ.get("MMQ_DATA_DIR") else "  (or set MMQ_DATA_DIR to where it was prepared)")
        + "\nSee docs/data.md for the raw files each data set needs."
    )


def prepared_problem(path: Path, dataset: str, raw: str) -> str | None:
    """Why the prepared file ``path`` (a ``.parquet`` question/caption set or an ``.arrow`` image
    store) cannot be read, naming it and the fix; None when its footer, schema and row count are
    sound. Reads only metadata: milliseconds, whatever the file's size."""
    if not path.is_file():
        return unprepared_message(path, dataset, raw)
    try:
        if path.suffix == ".arrow":
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        else:
            rows = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        return f"{path} is damaged or truncated ({exc}): {prepare_again(dataset)}"
    return None if rows else f"{path} holds no rows: {prepare_again(dataset)}"


def _empty_reference_problem(docs: datasets.Dataset, path: Path, dataset: str) -> str | None:
    """A doc without reference answers or captions (a set prepared before they were refused),
    which would otherwise crash the scoring at the end of the evaluation."""
    for column in ("answers", "captions"):
        if column in docs.column_names:
            lengths = pc.fill_null(pc.list_value_length(docs.data.column(column)), 0)
            empty = np.flatnonzero(lengths.to_numpy(zero_copy_only=False) == 0)
            if len(empty):
                first = int(empty[0])
                return (f"{path}: {len(empty)} docs have no {column} (the first: row {first}, "
                        f"{docs.column_names[0]} {docs[first][docs.column_names[0]]!r}): {prepare_again(dataset)}")
    return None


def load_prepared(relative: str, dataset: str, raw: str, also: tuple[str, ...] = ()) -> datasets.Dataset:
    """The prepared parquet ``relative`` under the data root as a Dataset; ``also`` names other
    prepared files the task reads (an image store), checked with it.

    A missing or unreadable file gives a one-doc placeholder instead of an error: lmms-eval
    retries whatever fails inside ``process_docs`` (5 times, 8 s) and then hides it in a
    ``RetryError``; the task's ``doc_to_text`` raises the MMQDataError (see
    ``raise_if_unprepared``) right after. A set prepared with ``--skip-bad`` gives a warning
    naming its list of left-out entries.
    """
    root = data_root()
    path = root / relative
    problem = next(filter(None, (prepared_problem(root / name, dataset, raw) for name in (relative, *also))), None)
    if problem is None:
        try:
            docs = undecoded_images(datasets.Dataset.from_parquet(str(path)))
        except (pa.ArrowException, OSError, DatasetGenerationError) as exc:
            problem = f"{path} cannot be read ({exc.__cause__ or exc}): {prepare_again(dataset)}"
        else:
            problem = _empty_reference_problem(docs, path, dataset)
    if problem is not None:
        return datasets.Dataset.from_dict({UNPREPARED: [problem]})
    if skipped_manifest(path).is_file():
        warnings.warn(f"{path} was prepared with --skip-bad: the entries listed in {skipped_manifest(path)} "
                      "are left out, so its scores do not cover the full set", stacklevel=2)
    return docs


def raise_if_unprepared(doc: dict) -> None:
    """Raise the MMQDataError carried by ``load_prepared``'s placeholder doc."""
    if UNPREPARED in doc:
        raise MMQDataError(doc[UNPREPARED])
