"""What ``prepare-data`` refuses: it writes only complete, decodable entries.

An entry (an image with its captions, a question with its answers) is refused when its image file
is missing, empty, truncated or not an image (every image is decoded in full), when it has no
captions or answers, when a question or caption is empty or whitespace, or when its id is not
unique. By default the first refusals (up to ``MAX_NAMED``) stop ``prepare-data`` with exit
code 2, each named; ``--skip-bad`` writes the set without them and lists them in a manifest
beside the prepared file, which the task then warns about.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from mmq_eval.data.images import read_image
from mmq_eval.errors import MMQDataError

#: Refused entries named in one error: preparation stops once this many are found.
MAX_NAMED = 20


def blank(text) -> bool:
    """True unless ``text`` is a string with something besides whitespace."""
    return not isinstance(text, str) or not text.strip()


def repeated(ids: Iterable) -> set:
    """The ids that occur more than once."""
    return {key for key, count in Counter(ids).items() if count > 1}


def caption_problem(captions) -> str | None:
    """Why a reference caption list is unusable (none, or a blank caption), or None."""
    if not isinstance(captions, list) or not captions:
        return "no captions"
    empty = [i for i, caption in enumerate(captions) if blank(caption)]
    return f"caption {empty[0]} of {len(captions)} is empty" if empty else None


def skipped_manifest(prepared: Path) -> Path:
    """The manifest listing the entries ``--skip-bad`` left out of the prepared file ``prepared``."""
    return prepared.with_name(prepared.name.split(".")[0] + "_skipped.json")


class Refusals:
    """The refused entries of one prepared file of data set ``dataset``.

    Without ``skip_bad`` the ``MAX_NAMED``-th refusal, or ``check`` after any, raises MMQDataError
    naming them and the fix; with it, callers leave refused entries out and ``write_manifest``
    lists them.
    """

    def __init__(self, dataset: str, prepared: Path, skip_bad: bool = False) -> None:
        self.dataset, self.prepared, self.skip_bad = dataset, prepared, skip_bad
        self.refused: list[tuple[str, str]] = []

    def refuse(self, entry: str, reason: str) -> None:
        """Record that ``entry`` (e.g. "question 42 (annotations.json)") is unusable, and why."""
        self.refused.append((entry, reason))
        if not self.skip_bad and len(self.refused) >= MAX_NAMED:
            raise MMQDataError(self.message(complete=False))

    def keep(self, entry: str, problem: str | None) -> bool:
        """True when ``problem`` is None; otherwise refuse ``entry`` for it."""
        if problem is not None:
            self.refuse(entry, problem)
        return problem is None

    def image(self, entry: str, path: Path) -> bytes | None:
        """The bytes of ``entry``'s image file if it decodes completely; else refuse it (None)."""
        try:
            return read_image(path)
        except MMQDataError as exc:
            self.refuse(entry, str(exc))
            return None

    def require_files(self, files: dict[str, Path], what: str) -> None:
        """Refuse the entries (entry -> image file) whose file does not exist, all at once, so
        that a wrong folder is reported before any image is decoded."""
        missing = [(entry, path) for entry, path in files.items() if not path.is_file()]
        if missing and not self.skip_bad:
            entry, path = missing[0]
            raise MMQDataError(
                f"{len(missing)} of {len(files)} {what} are missing, the first: {path} ({entry})\n{self.fix()}"
            )

    def check(self) -> None:
        """Raise MMQDataError naming the refused entries, unless ``skip_bad``."""
        if self.refused and not self.skip_bad:
            raise MMQDataError(self.message(complete=True))

    def checked(self, rows: Iterable[dict]) -> Iterator[dict]:
        """``rows``, then ``check``: a writer consuming them stops before its file is committed."""
        yield from rows
        self.check()

    def none_left(self) -> MMQDataError:
        """The error when every entry was refused: there is nothing to write."""
        return MMQDataError(f"nothing left to write. {self.message(complete=True)}")

    def fix(self) -> str:
        """How to go on: repair the raw files, or leave the bad entries out."""
        return (
            "Fix: re-download the files named (or use the unmodified official annotation files), or leave "
            f"these entries out with\n  mmq-eval prepare-data {self.dataset} --from <raw folder> --skip-bad\n"
            f"(they are then listed in {skipped_manifest(self.prepared)}, and scores cover only the rest)"
        )

    def message(self, complete: bool) -> str:
        """The error naming the refused entries (``complete``: all were looked at)."""
        count = len(self.refused)
        number = (f"{count} entry is" if count == 1 else f"{count} entries are") if complete \
            else f"at least {count} entries are"
        lines = [f"  {entry}: {reason}" for entry, reason in self.refused[:MAX_NAMED]]
        return (
            f"{self.dataset}: {number} incomplete or unreadable for {self.prepared.name} "
            "(prepare-data writes only complete, decodable entries):\n" + "\n".join(lines) + f"\n{self.fix()}"
        )

    def write_manifest(self) -> Path | None:
        """List the left-out entries beside the prepared file (removing a stale list when none)."""
        manifest = skipped_manifest(self.prepared)
        if not self.refused:
            manifest.unlink(missing_ok=True)
            return None
        manifest.write_text(json.dumps({
            "dataset": self.dataset, "prepared": self.prepared.name,
            "skipped": [{"entry": entry, "reason": reason} for entry, reason in self.refused],
        }, indent=1))
        print(f"{self.dataset}: left {len(self.refused)} entries out of {self.prepared} (--skip-bad), "
              f"listed in {manifest}", file=sys.stderr)
        return manifest
