"""Where prepared data lives, and the errors that name what is missing."""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from mmq_eval.data.images import undecoded_images
from mmq_eval.errors import MMQDataError

#: Column of the placeholder doc that ``load_prepared`` returns when a file is missing.
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


def unprepared_message(path: Path, dataset: str, raw: str) -> str:
    """What a task says when its prepared file is missing; ``raw`` lists the files needed."""
    return (
        f"{path} is missing: prepare it once with\n"
        f"  mmq-eval prepare-data {dataset} --from <folder holding {raw}>"
        + ("" if os.environ.get("MMQ_DATA_DIR") else "  (or set MMQ_DATA_DIR to where it was prepared)")
        + "\nSee docs/data.md for the raw files each data set needs."
    )


def load_prepared(relative: str, dataset: str, raw: str) -> datasets.Dataset:
    """The prepared parquet ``relative`` under the data root as a Dataset.

    A missing file gives a one-doc placeholder instead of an error: lmms-eval retries whatever
    fails inside ``process_docs`` (5 times, 8 s) and then hides it in a ``RetryError``; the
    task's ``doc_to_text`` raises the MMQDataError (see ``raise_if_unprepared``) right after.
    """
    path = data_root() / relative
    if not path.is_file():
        return datasets.Dataset.from_dict({UNPREPARED: [unprepared_message(path, dataset, raw)]})
    return undecoded_images(datasets.Dataset.from_parquet(str(path)))


def raise_if_unprepared(doc: dict) -> None:
    """Raise the MMQDataError carried by ``load_prepared``'s placeholder doc."""
    if UNPREPARED in doc:
        raise MMQDataError(doc[UNPREPARED])
