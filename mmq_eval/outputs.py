"""Output locations checked before any compute: a run that cannot save its results must not start."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mmq_eval.errors import MMQConfigError


def _probe(folder: Path, option: str, path: Path) -> None:
    """Create and drop a temporary file in ``folder`` (the only test that also holds for root
    and read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        where = "" if folder == path else f" (its nearest existing folder {folder})"
        raise MMQConfigError(f"{option} {path}: cannot write there{where}: {err.strerror or err}; "
                             "choose a writable folder") from None


def _check_folder(folder: Path, option: str, path: Path) -> None:
    """MMQConfigError naming ``option`` and ``path`` (the output: ``folder`` or a file in it)
    unless ``folder`` is, or can be created as, a writable folder."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MMQConfigError(f"{option} {path}: {existing} is a file, so the folder cannot be created; "
                             "choose another path")
    _probe(existing, option, path)


def check_output_dir(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a Path if it is, or can be created as, a writable folder; else MMQConfigError
    naming ``option`` and the path."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise MMQConfigError(f"{option} {path}: is a file, not a folder; choose a folder")
    _check_folder(path, option, path)
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a Path if a file can be written there: not a folder, not a read-only file, in
    a folder that is, or can be created as, writable; else MMQConfigError naming ``option`` and
    the path."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MMQConfigError(f"{option} {path}: is a folder; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise MMQConfigError(f"{option} {path}: the file is read-only; make it writable or choose another path")
    _check_folder(path.parent, option, path)
    return path
