"""Content fingerprinting of a checkpoint against the disk's read speed, and its memo.

Writes a random float16 safetensors file of ``--gb`` GiB (default 1) to a temporary folder, then
measures, each in MB/s (10^6 bytes per second):

- raw reads in 16 MB chunks: "cold" after ``posix_fadvise(DONTNEED)`` has asked the kernel to
  drop the file's pages (no root needed; the kernel may keep some), then warm (page cache);
- the fingerprint (``checkpoint_digest``: xxh3-128 of every weight file), cold and warm, and the
  memoised second call's time (the memo trusts a file written at least ``RACY_NS`` earlier, so the
  run waits for that);
- sha256 and blake2b over the same warm file, for comparison;
- ``state_digests`` (the in-memory weight fingerprint every cached ``quantize_model`` call takes)
  over the same tensors in memory, and its projection to 7B float16 parameters.

The file is deleted at the end.

    python benchmarks/fingerprint.py [--gb 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmq_eval.quant.fingerprint import CHUNK, RACY_NS, DigestMemo, checkpoint_digest, state_digests  # noqa: E402

TENSOR_BYTES = 64 << 20


def drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def raw_read(path: Path) -> int:
    buf, total = bytearray(CHUNK), 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def hashlib_read(path: Path, name: str) -> str:
    h, buf = hashlib.new(name), bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="file size in GiB")
    args = parser.parse_args()
    n_tensors = max(1, round(args.gb * (1 << 30) / TENSOR_BYTES))
    gen = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.weight": torch.randn(TENSOR_BYTES // 2, generator=gen).half().reshape(4096, -1)
               for i in range(n_tensors)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmq-fingerprint-") as tmp:
        folder = Path(tmp) / "ckpt"
        folder.mkdir()
        weights = folder / "model.safetensors"
        save_file(tensors, str(weights))
        (folder / "config.json").write_text('{"model_type": "bench"}')
        size = weights.stat().st_size
        mb = size / 1e6

        def rate(seconds: float) -> str:
            return f"{mb / seconds:,.0f} MB/s ({seconds:.2f} s)"

        drop_from_page_cache(weights)
        rows.append(("raw read, 16 MB chunks, cold (fadvise DONTNEED)", rate(timed(lambda: raw_read(weights))[0])))
        rows.append(("raw read, 16 MB chunks, warm", rate(timed(lambda: raw_read(weights))[0])))
        time.sleep(max(0.0, (weights.stat().st_mtime_ns + RACY_NS - time.time_ns()) / 1e9))
        memo = DigestMemo(Path(tmp) / "fingerprints.json")
        drop_from_page_cache(weights)
        seconds, digest = timed(lambda: checkpoint_digest(str(folder), {}, DigestMemo(Path(tmp) / "cold.json")))
        rows.append(("fingerprint (xxh3-128), cold", rate(seconds)))
        seconds, warm = timed(lambda: checkpoint_digest(str(folder), {}, memo))
        rows.append(("fingerprint (xxh3-128), warm", rate(seconds)))
        seconds, memoised = timed(lambda: checkpoint_digest(str(folder), {}, memo))
        assert digest == warm == memoised
        rows.append(("fingerprint, memoised second call", f"{seconds * 1e3:.2f} ms"))
        for name in ("sha256", "blake2b"):
            rows.append((f"{name}, warm (for comparison)", rate(timed(lambda: hashlib_read(weights, name))[0])))

    holder = nn.Module()
    for i, t in enumerate(tensors.values()):
        holder.register_buffer(f"w{i}", t)
    seconds, _ = timed(lambda: state_digests(holder))
    rows.append(("in-memory weight fingerprint (state_digests)", rate(seconds)))
    rows.append(("  projected to 7B float16 parameters (14 GB)", f"{14e9 / (size / seconds):.1f} s"))

    print(f"file: {size / 1e9:.2f} GB ({n_tensors} float16 tensors); torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs\n")
    print("| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
