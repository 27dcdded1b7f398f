"""Results store: one JSON line per finished configuration, appended atomically.

Each append takes a file lock, repairs a torn last line left by a crash, skips a configuration
already present, then writes the whole line with one ``write`` followed by ``fsync``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from mmq_eval.errors import MMQConfigError


def shard_path(out_dir: str | os.PathLike, index: int, count: int) -> Path:
    """The results file a shard writes: ``results.jsonl`` unsharded, else one per shard."""
    name = "results.jsonl" if count == 1 else f"results.shard{index}of{count}.jsonl"
    return Path(out_dir) / name


def results_files(path: str | os.PathLike) -> list[Path]:
    """A JSONL file itself, or every ``*.jsonl`` in a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        return sorted(path.glob("*.jsonl"))
    if path.is_file():
        return [path]
    raise MMQConfigError(f"results not found: {path} (give a results .jsonl file or a folder of them)")


def _complete_lines(path: Path) -> Iterator[dict]:
    """Parsed records of a file, ignoring a torn (unterminated or unparsable) last line."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    # The element after the final newline is empty for a clean file, a torn fragment otherwise.
    for raw in lines[:-1]:
        if raw.strip():
            try:
                yield json.loads(raw)
            except json.JSONDecodeError:
                continue


def load_records(path: str | os.PathLike) -> list[dict]:
    """All records under ``path`` (file or folder), first occurrence of each ``config_id`` kept."""
    seen: set[str] = set()
    records = []
    for file in results_files(path):
        for rec in _complete_lines(file):
            cid = rec.get("config_id")
            if cid is not None and cid not in seen:
                seen.add(cid)
                records.append(rec)
    return records


def finished_ids(out_dir: str | os.PathLike) -> set[str]:
    """Config ids already finished in any results file of ``out_dir``."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return set()
    return {rec["config_id"] for rec in load_records(out_dir)}


class ResultStore:
    """Append-only JSONL results file safe against crashes and concurrent writers."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock")

    def _truncate_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                fh.flush()
                os.fsync(fh.fileno())

    def _contains(self, config_id: str) -> bool:
        return any(r.get("config_id") == config_id for r in _complete_lines(self.path))

    def _line(self, record: dict) -> bytes:
        return (json.dumps(record) + "\n").encode()

    def append(self, record: dict) -> bool:
        """Write ``record`` as one line; False (nothing written) if its config_id is present."""
        if self._lock is None:  # a subclass that creates its folder with the first line
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(self.path) + ".lock")
        line = self._line(record)
        with self._lock:
            self._truncate_torn_tail()
            if self.path.exists() and self._contains(record["config_id"]):
                return False
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        return True

