"""The quantization cache is never trusted blindly: bad entries are recomputed, keys are exact.

Each corrupted entry (truncated, checksum mismatch, missing file, unreadable or edited record,
wrong dtype, NaN, missing tensors) must give a warning naming the entry and a result bit-identical
to an uncached run; fingerprints must see every byte of a checkpoint and of every weight upstream
of a calibrated component; concurrent writers must leave one whole entry.
"""

import copy
import json
import logging
import os
import shutil
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
from quant_tiny import blip2_batches, make_tiny_blip2
from safetensors.torch import load_file, save_file

from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant import fingerprint as fp
from mmq_eval.quant.cache import QuantCache

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RTN = QuantSpec.from_args({"method": "rtn", "bits": 4})
GPTQ = QuantSpec.from_args({"method": "gptq", "vit_bits": 3, "llm_bits": 4, "calib_samples": 8})
LOGGER = "mmq_eval.quant.cache"
_TINY: dict = {}


def tiny():
    """A fresh copy of the tiny BLIP-2 (OPT) and its calibration batches."""
    if not _TINY:
        model, processor = make_tiny_blip2(0, "opt")
        _TINY["model"], _TINY["batches"] = model, blip2_batches(processor, "opt")
    return copy.deepcopy(_TINY["model"]), _TINY["batches"]


def uncached(spec):
    model, batches = tiny()
    report = quantize_model(model, spec, batches if spec.needs_calibration else None, progress=False)
    return model.state_dict(), report


def cached_run(spec, cache_dir):
    model, batches = tiny()
    report = quantize_model(model, spec, batches if spec.needs_calibration else None, progress=False,
                            cache_dir=cache_dir, model_id="tiny-opt")
    return model.state_dict(), report


def assert_same_state(got, want):
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.rglob("report.json") if not p.parent.name.startswith("."))


def resign(entry: Path) -> None:
    """Rewrite the manifest's file sizes, checksums and tensor lists from the files as they are now
    (so that only the check under test can catch the change)."""
    stored = json.loads((entry / "report.json").read_text())
    for name, meta in stored["manifest"]["files"].items():
        path = entry / name
        tensors = load_file(str(path))
        meta.update(size=path.stat().st_size, digest=fp.file_digest(path),
                    tensors={n: [str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in tensors.items()})
    (entry / "report.json").write_text(json.dumps(stored))


def rewrite_tensors(entry: Path, fname: str, change) -> None:
    tensors = load_file(str(entry / fname))
    change(tensors)
    save_file(tensors, str(entry / fname))
    resign(entry)


def first_weight(tensors):
    return sorted(n for n in tensors if n.endswith(".weight"))[0]


def truncate(entry):
    path = entry / "weights.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def truncate_and_resign_checksum(entry):
    """A truncated file whose manifest size and checksum match it: safetensors cannot parse it."""
    truncate(entry)
    stored = json.loads((entry / "report.json").read_text())
    path = entry / "weights.safetensors"
    stored["manifest"]["files"]["weights.safetensors"].update(size=path.stat().st_size, digest=fp.file_digest(path))
    (entry / "report.json").write_text(json.dumps(stored))


def flip_byte(entry):
    data = bytearray((entry / "weights.safetensors").read_bytes())
    data[-5] ^= 0x01
    (entry / "weights.safetensors").write_bytes(bytes(data))


def edit_record(entry):
    stored = json.loads((entry / "report.json").read_text())
    stored["changed"] = stored["changed"][1:]
    (entry / "report.json").write_text(json.dumps(stored))


def to_float64(tensors):
    name = first_weight(tensors)
    tensors[name] = tensors[name].double()


def add_nan(tensors):
    tensors[first_weight(tensors)][0, 0] = float("nan")


def drop_weight(tensors):
    del tensors[first_weight(tensors)]


def drop_scale(tensors):
    del tensors[sorted(n for n in tensors if n.endswith(".scale"))[0]]


CORRUPTIONS = {
    "truncated": (truncate, "truncated"),
    "truncated, checksum matching": (truncate_and_resign_checksum, "weights.safetensors is unreadable"),
    "checksum": (flip_byte, "weights.safetensors: checksum mismatch"),
    "missing file": (lambda e: (e / "codes.safetensors").unlink(), "codes.safetensors is missing"),
    "corrupt report": (lambda e: (e / "report.json").write_text('{"record": {"lay'), "report.json is unreadable"),
    "edited record": (edit_record, "report.json: checksum mismatch"),
    "wrong dtype": (lambda e: rewrite_tensors(e, "weights.safetensors", to_float64), "the model's is torch.float32"),
    "nan": (lambda e: rewrite_tensors(e, "weights.safetensors", add_nan), "holds NaN or Inf"),
    "partial weights": (lambda e: rewrite_tensors(e, "weights.safetensors", drop_weight), "missing (partial entry)"),
    "partial codes": (lambda e: rewrite_tensors(e, "codes.safetensors", drop_scale), "missing (partial entry)"),
}


@pytest.fixture(scope="module")
def rtn_reference():
    return uncached(RTN)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_bad_whole_model_entry_is_recomputed_never_used(kind, tmp_path, caplog, rtn_reference):
    want, want_report = rtn_reference
    corrupt, reason = CORRUPTIONS[kind]
    assert not cached_run(RTN, tmp_path)[1].cached
    [report_file] = entries(tmp_path)
    entry = report_file.parent
    corrupt(entry)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got, report = cached_run(RTN, tmp_path)
    assert not report.cached
    assert f"quantization cache entry {entry} is unusable" in caplog.text and reason in caplog.text
    assert_same_state(got, want)
    assert [r.weight_rel_err for r in report.layers] == [r.weight_rel_err for r in want_report.layers]
    # the fresh entry written in its place is whole: the next run uses it
    caplog.clear()
    again, report = cached_run(RTN, tmp_path)
    assert report.cached and "unusable" not in caplog.text and len(entries(tmp_path)) == 1
    assert_same_state(again, want)


def test_a_nan_component_entry_is_recalibrated_and_the_others_reused(tmp_path, caplog):
    want, want_report = uncached(GPTQ)
    cached_run(GPTQ, tmp_path)
    llm = next(e.parent for e in entries(tmp_path)
               if json.loads(e.read_text())["record"]["records"][0]["component"] == "llm")
    rewrite_tensors(llm, "weights.safetensors", add_nan)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got, report = cached_run(GPTQ, tmp_path)
    assert f"quantization cache entry {llm} is unusable" in caplog.text and "holds NaN" in caplog.text
    assert not report.cached and any(n.startswith("vit: gptq weights reused") for n in report.notes)
    assert not any(n.startswith("llm: gptq weights reused") for n in report.notes)
    assert_same_state(got, want)
    assert [r.output_rel_err for r in report.layers] == [r.output_rel_err for r in want_report.layers]


def test_no_entry_is_a_silent_miss(tmp_path, caplog):
    model, _ = tiny()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert QuantCache(tmp_path, "absent").load(model) is None
    assert caplog.text == ""


def _cached_and_entries(spec, cache_dir, change=None) -> tuple[bool, int]:
    """(cached, number of entries) after a run on a tiny model changed by `change`."""
    model, batches = tiny()
    if change:
        with torch.no_grad():
            change(model)
    report = quantize_model(model, spec, batches, progress=False, cache_dir=cache_dir, model_id="tiny-opt")
    return report.cached, len(entries(cache_dir))


def _bump(name):
    def change(model):
        model.get_parameter(name).view(-1)[0] += 1e-3
    return change


VIT_WEIGHT = "vision_model.encoder.layers.0.mlp.fc1.weight"
LLM_WEIGHT = "language_model.model.decoder.layers.1.fc2.weight"


def test_an_upstream_weight_change_changes_the_component_key(tmp_path):
    """Only the LLM is calibrated; one ViT weight (not a target) changed: the LLM misses."""
    spec = QuantSpec.from_args({"method": "gptq", "llm_bits": 4, "calib_samples": 8})
    assert _cached_and_entries(spec, tmp_path) == (False, 1)
    assert _cached_and_entries(spec, tmp_path) == (True, 1)
    assert _cached_and_entries(spec, tmp_path, _bump(VIT_WEIGHT)) == (False, 2)
    assert _cached_and_entries(spec, tmp_path, _bump("query_tokens")) == (False, 3)


def test_a_downstream_weight_change_keeps_the_component_key(tmp_path):
    """Only the ViT is calibrated; an LLM weight changed cannot change it: reused."""
    spec = QuantSpec.from_args({"method": "gptq", "vit_bits": 3, "calib_samples": 8})
    assert _cached_and_entries(spec, tmp_path) == (False, 1)
    assert _cached_and_entries(spec, tmp_path, _bump(LLM_WEIGHT)) == (True, 1)


def test_whole_model_key_sees_every_weight(tmp_path):
    """RTN keys hash every byte: a change below the old 4,096-value sampling misses."""
    assert _cached_and_entries(RTN, tmp_path) == (False, 1)
    assert _cached_and_entries(RTN, tmp_path, _bump("vision_model.embeddings.patch_embedding.weight")) == (False, 2)
    assert _cached_and_entries(RTN, tmp_path, _bump(LLM_WEIGHT)) == (False, 3)


def test_concurrent_writers_leave_one_whole_entry(tmp_path):
    model, _ = tiny()
    report = quantize_model(model, RTN, progress=False)
    changed = [f"{r.name}.weight" for r in report.layers]
    barrier = threading.Barrier(4)
    errors = []

    def write():
        try:
            barrier.wait()
            QuantCache(tmp_path, "key").save(model, changed, report.to_dict(), report.qweights)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary or half-written folder left
    ident = os.stat(tmp_path / "key").st_ino
    QuantCache(tmp_path, "key").save(model, changed, report.to_dict(), report.qweights)
    assert os.stat(tmp_path / "key").st_ino == ident  # a whole entry is kept, never replaced
    fresh, _ = tiny()
    record, qweights = QuantCache(tmp_path, "key").load(fresh)
    assert record == json.loads(json.dumps(report.to_dict())) and set(qweights) == set(report.qweights)
    assert_same_state(fresh.state_dict(), model.state_dict())


# ---- checkpoint fingerprints -------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path, tiny_blip2_dir):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_blip2_dir, folder)
    return folder


def _nudge_first_value(file: Path) -> None:
    """Change one float32 weight in place (same size): add 1 to the last tensor's first value."""
    with open(file, "r+b") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        name = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])
        assert header[name]["dtype"] == "F32"
        f.seek(8 + header_len + header[name]["data_offsets"][0])
        value = struct.unpack("<f", f.read(4))[0]
        f.seek(-4, os.SEEK_CUR)
        f.write(struct.pack("<f", value + 1.0))


def _digest(folder, memo_path):
    return fp.checkpoint_digest(str(folder), {"model_type": "tiny"}, fp.DigestMemo(memo_path))


def _count_reads(monkeypatch) -> list:
    reads = []
    real = fp.file_digest
    monkeypatch.setattr(fp, "file_digest", lambda path: reads.append(Path(path).name) or real(path))
    return reads


def _hashed_long_after_writing(monkeypatch):
    monkeypatch.setattr(fp, "_now_ns", lambda: time.time_ns() + 60 * 10**9)


def test_memoised_fingerprint_does_not_read_the_files_again(checkpoint, tmp_path, monkeypatch):
    _hashed_long_after_writing(monkeypatch)
    reads = _count_reads(monkeypatch)
    memo = tmp_path / "cache" / "fingerprints.json"
    first = _digest(checkpoint, memo)
    assert sorted(reads) == ["config.json", "model.safetensors"]
    assert str((checkpoint / "model.safetensors").resolve()) in json.loads(memo.read_text())
    reads.clear()
    assert _digest(checkpoint, memo) == first and reads == []


def test_a_file_hashed_right_after_writing_is_not_memoised(checkpoint, tmp_path, monkeypatch):
    """Its timestamps could stay the same through a second write within one tick."""
    reads = _count_reads(monkeypatch)
    memo = tmp_path / "fingerprints.json"
    _digest(checkpoint, memo)
    _digest(checkpoint, memo)
    assert sorted(reads) == ["config.json", "config.json", "model.safetensors", "model.safetensors"]


def test_one_weight_changed_in_place_changes_the_fingerprint(checkpoint, tmp_path, monkeypatch):
    _hashed_long_after_writing(monkeypatch)
    memo = tmp_path / "fingerprints.json"
    weights = checkpoint / "model.safetensors"
    before, st = _digest(checkpoint, memo), weights.stat()
    _nudge_first_value(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime (as rsync -t leaves it)
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert _digest(checkpoint, memo) != before


def test_an_in_place_checkpoint_change_misses_the_quantization_cache(checkpoint, tmp_path):
    from mmq_eval.models.blip2 import MMQBlip2

    def run():
        lm = MMQBlip2(pretrained=str(checkpoint), device="cpu", method="rtn", bits=4,
                      quant_cache=str(tmp_path / "cache"))
        return lm.quant_report

    first = run()
    assert not first.cached and first.model_id.startswith(f"{checkpoint}@")
    assert run().cached
    _nudge_first_value(checkpoint / "model.safetensors")
    changed = run()
    assert not changed.cached and changed.model_id != first.model_id


def test_hub_snapshots_are_fingerprinted_by_blob_names_without_reading(tmp_path, monkeypatch):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    blobs = {"config.json": "1" * 40, "model.safetensors": "a" * 64}

    def snapshot(commit, weight_blob):
        folder = repo / "snapshots" / commit
        folder.mkdir(parents=True)
        for name, blob in {**blobs, "model.safetensors": weight_blob}.items():
            (repo / "blobs").mkdir(exist_ok=True)
            (repo / "blobs" / blob).write_text(name)
            (folder / name).symlink_to(Path("../../blobs") / blob)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    reads = _count_reads(monkeypatch)
    snapshot("c" * 40, "a" * 64)
    first = _digest("org/tiny", tmp_path / "memo.json")
    assert reads == []
    snapshot("d" * 40, "b" * 64)  # a new commit with another weight blob
    assert _digest("org/tiny", tmp_path / "memo.json") != first and reads == []
    assert fp.blob_name(repo / "snapshots" / ("d" * 40) / "model.safetensors") == "b" * 64
