"""Exact content fingerprints of files, tensors and checkpoints, for the quantization cache's keys.

One hash everywhere: xxh3-128 (``xxhash``). On one core it runs at several GB/s, where sha256 and
blake2b reach 0.4–1.8 GB/s (``benchmarks/fingerprint.py``), so fingerprinting a checkpoint runs at
disk-read speed. It detects any change to the bytes; it is not meant to resist forgery (whoever can
rewrite a checkpoint can rewrite the cache too).

File digests are memoised in a JSON file (``DigestMemo``) keyed by absolute path and checked against
the file's size, mtime_ns, ctime_ns and inode, so a sweep hashes each checkpoint file once. A file
changed less than ``RACY_NS`` before it was hashed is not memoised: a second change within one
timestamp tick would keep the same times.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path

import torch
import xxhash
from filelock import FileLock
from torch import nn

logger = logging.getLogger(__name__)

HASH_NAME = "xxh3_128"
CHUNK = 16 << 20  # bytes per read
RACY_NS = 2_000_000_000
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
_BLOB_NAME = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # git sha1 (small files) or sha256 (LFS)


def new_hash():
    """A fresh hash object of the fingerprint algorithm (``HASH_NAME``)."""
    return xxhash.xxh3_128()


def _now_ns() -> int:
    return time.time_ns()


def file_digest(path: str | os.PathLike) -> str:
    """Digest of a file's bytes, read in ``CHUNK``-byte pieces."""
    h, buf = new_hash(), bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def update_with_tensor(h, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and every byte into the hash object `h`."""
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def tensor_digest(t: torch.Tensor) -> str:
    """Digest of one tensor (dtype, shape, all bytes)."""
    h = new_hash()
    update_with_tensor(h, t)
    return h.hexdigest()


def state_digests(model: nn.Module) -> dict[str, str]:
    """Digest of every tensor in the model's state dict by name; tensors sharing storage (tied
    weights) are hashed once."""
    seen: dict[tuple, str] = {}
    digests = {}
    for name, t in model.state_dict().items():
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride())
        if ident not in seen:
            seen[ident] = tensor_digest(t)
        digests[name] = seen[ident]
    return digests


def combine(digests: dict[str, str]) -> str:
    """One digest of named digests (order-independent)."""
    h = new_hash()
    for name in sorted(digests):
        h.update(f"{name}={digests[name]}\n".encode())
    return h.hexdigest()


def write_json_atomic(path: Path, payload) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class DigestMemo:
    """File digests memoised in a JSON file (see the module docstring); writes are atomic and locked."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            memo = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("fingerprint memo %s is unreadable (%s); hashing the files again", self.path, exc)
            return {}
        return memo if isinstance(memo, dict) else {}

    @staticmethod
    def _identity(st: os.stat_result) -> dict:
        return {"hash": HASH_NAME, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                "ino": st.st_ino}

    def digests(self, files: list[Path]) -> dict[Path, str]:
        """Digest of each file: from the memo when its identity is unchanged, else hashed (and memoised)."""
        memo, out, fresh = self._read(), {}, {}
        for file in files:
            path = str(file.resolve())
            ident = self._identity(os.stat(path))
            known = memo.get(path)
            if isinstance(known, dict) and {k: known.get(k) for k in ident} == ident and "digest" in known:
                out[file] = known["digest"]
                continue
            hashed_at = _now_ns()
            out[file] = file_digest(path)
            if max(ident["mtime_ns"], ident["ctime_ns"]) + RACY_NS <= hashed_at:
                fresh[path] = {**ident, "digest": out[file]}
        if fresh:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock"):
                write_json_atomic(self.path, {**self._read(), **fresh})
        return out


def blob_name(file: Path) -> str | None:
    """The content address of a Hugging Face cache snapshot file (the name of the blob its symlink
    points to: sha256 for LFS files, the git blob sha1 otherwise); None for an ordinary file."""
    if not file.is_symlink():
        return None
    target = file.resolve()
    return target.name if target.parent.name == "blobs" and _BLOB_NAME.match(target.name) else None


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub model (its name is the commit), or None if not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    return Path(config).parent if isinstance(config, str) else None


def checkpoint_digest(source: str, config: dict, memo: DigestMemo) -> str:
    """Exact fingerprint of a checkpoint: its loaded config plus every weight file
    (``WEIGHT_PATTERNS``) and ``config.json``, by content.

    `source`: a local folder (files hashed, through `memo`) or a hub id (its cached snapshot:
    the commit and each file's blob name, free). A hub model missing from the Hugging Face cache
    contributes its config only (the cache keys also hash the loaded weights themselves).
    """
    h = new_hash()
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    folder = Path(source)
    if not folder.is_dir():
        folder = hub_snapshot(source)
        h.update(f"hub {source} commit {folder.name if folder else 'unknown'}\n".encode())
    if folder is None:
        return h.hexdigest()
    files = sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern)} |
                   ({folder / "config.json"} if (folder / "config.json").exists() else set()))
    blobs = {f: blob_name(f) for f in files}
    content = memo.digests([f for f, blob in blobs.items() if blob is None])
    for f in files:
        h.update(f"{f.name}={blobs[f] or content[f]}\n".encode())
    return h.hexdigest()
