"""calib_data=auto: the design-card command on a real checkpoint id, prepare-data calib, the online
fallback without the evaluation images, and the sample-id hash in the quantization report."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest

from data_fakes import _jpeg, _json, flickr30k_raw, karpathy_raw, prepare_data
from lmms_requests import make_image
from mmq_eval.errors import MMQConfigError
from mmq_eval.models.blip2 import MMQBlip2
from mmq_eval.models.calibration_data import ONLINE, check_calib_data, load_calibration_examples, resolve_calib_data
from tiny_models import make_tiny_blip2

BIN = Path(sys.executable).parent
HUB_ID = MMQBlip2.default_pretrained  # what --model mmq_blip2 loads without pretrained=
DESIGN_CARD = ["--model", "mmq_blip2", "--model_args", "llm_bits=4,method=gptq"]
WORDS = "a red green blue circle square triangle big small".split()


def sha256_of(ids) -> str:
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode()).hexdigest()


def caption_folder(raw: Path, n: int) -> Path:
    """``n`` JPEGs, each with a caption in a .txt file of the same name."""
    for i in range(n):
        _jpeg(raw / f"img{i:02d}.jpg", i)
        (raw / f"img{i:02d}.txt").write_text(f"a {WORDS[1 + i % 3]} {WORDS[4 + i % 3]} {i}\n")
    return raw


@pytest.fixture
def fake_hub(tmp_path):
    """A Hugging Face cache holding a tiny BLIP-2 under the hub id mmq_blip2 defaults to, an empty
    data root and a quantization cache, all offline: the environment of a subprocess."""
    snapshot = tmp_path / "hf" / "hub" / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    model, processor = make_tiny_blip2(seed=0, llm="opt")
    model.save_pretrained(snapshot)
    processor.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MMQ_DATA_DIR": str(tmp_path / "data"),
            "MMQ_CACHE_DIR": str(tmp_path / "quant"), "PYTHONUNBUFFERED": "1"}


def mmq_eval(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mmq-eval"), *argv], capture_output=True, text=True, env=env, timeout=600)


def test_design_card_command_runs_once_a_calibration_set_is_prepared(fake_hub, tmp_path):
    run = ["run", *DESIGN_CARD, "--tasks", "mmq_shapes_cap", "--limit", "2", "--output_path", str(tmp_path / "out")]
    refused = mmq_eval(fake_hub, *run)
    assert refused.returncode == 2, refused.stderr[-3000:]
    message = refused.stderr
    assert "method=gptq needs calibration data" in message and HUB_ID in message
    assert "mmq-eval prepare-data calib --from" in message  # way 1
    assert "unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE" in message and "calib_data=" in message  # way 2
    assert "Traceback" not in refused.stdout + refused.stderr

    assert prepare_data("calib", "--from", str(caption_folder(tmp_path / "raw", 5)),
                        "--data-dir", fake_hub["MMQ_DATA_DIR"], "--calib-size", "3") == 0
    calib_file = Path(fake_hub["MMQ_DATA_DIR"]) / "calib" / "captions.parquet"
    ids = list(pd.read_parquet(calib_file)["image_id"])
    assert len(ids) == 3 and all(i.startswith("folder:img") and i.endswith(".jpg") for i in ids)

    done = mmq_eval(fake_hub, *run)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("*_results.json")).read_text())
    report = results["mmq_quant"]
    assert report["pretrained"] == HUB_ID and report["spec"]["method"] == "gptq"
    assert report["calibration"] == {"source": str(calib_file), "samples": 3, "ids_sha256": sha256_of(ids),
                                     "batches": 1}
    assert f"calibration: 3 samples in 1 batches from {calib_file}" in done.stdout + done.stderr


@pytest.fixture
def flickr_root(tmp_path, monkeypatch):
    """A data root with the (fake) Flickr30k 1K test prepared: photo ids 1000092795..1000092798."""
    root = tmp_path / "data"
    monkeypatch.setenv("MMQ_DATA_DIR", str(root))
    assert prepare_data("flickr30k", "--from", str(flickr30k_raw(tmp_path / "raw")), "--data-dir", str(root)) == 0
    return root


def test_online_fallback_streams_flickr30k_without_the_evaluation_images(flickr_root, monkeypatch):
    test_ids = {f"flickr30k:{1000092795 + i}" for i in range(4)}  # flickr30k_raw's test entries
    rows = [(1000092795 + i, f"a red circle {i}") for i in range(10)]  # 4 test images, 6 others
    rows.append((2000000000, "   "))  # no usable caption
    hub = datasets.Dataset.from_dict({
        "image": [make_image(i) for i in range(len(rows))],
        "caption": [[text, ""] for _, text in rows],
        "img_id": [str(i) for i in range(len(rows))],
        "filename": [f"{photo}.jpg" for photo, _ in rows],
    })
    calls = []

    def load_dataset(name, split=None, streaming=False, **kwargs):
        calls.append((name, split, streaming))
        return hub.to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert resolve_calib_data("auto", HUB_ID, "method=gptq") == ONLINE == "lmms-lab/flickr30k:test"

    examples = load_calibration_examples(ONLINE, 20, seed=0)
    assert calls == [("lmms-lab/flickr30k", "test", True)]
    assert sorted(examples.ids) == [f"flickr30k:{1000092795 + i}" for i in range(4, 10)]
    assert not test_ids & set(examples.ids)
    assert {text for _, text in examples} == {f"a red circle {i}" for i in range(4, 10)}
    assert examples.info() == {"source": ONLINE, "samples": 6, "ids_sha256": sha256_of(examples.ids)}
    assert len(load_calibration_examples(ONLINE, 2, seed=0)) == 2

    # without the Flickr30k 1K test prepared, nothing can be left out: the report says so
    (flickr_root / "flickr30k" / "test.parquet").unlink()
    unguarded = load_calibration_examples(ONLINE, 20, seed=0).info()
    assert unguarded["samples"] == 10
    assert "were not left out of the calibration sample: do not score Flickr30k" in unguarded["warning"]

    # a prepared calibration set wins over the hub
    caption_folder(flickr_root.parent / "own", 2)
    assert prepare_data("calib", "--from", str(flickr_root.parent / "own")) == 0
    assert resolve_calib_data("auto", HUB_ID, "method=awq") == str(flickr_root / "calib" / "captions.parquet")


def test_auto_keeps_shapes_and_explicit_paths_and_refuses_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("MMQ_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_calib_data("auto", "mmq:shapes-blip2", "method=gptq") == "shapes"
    assert resolve_calib_data(str(tmp_path), HUB_ID, "method=gptq") == str(tmp_path)
    with pytest.raises(MMQConfigError, match=r"method=awq needs calibration data(.|\n)*prepare-data calib"):
        resolve_calib_data("auto", HUB_ID, "method=awq")
    shapes = load_calibration_examples("shapes", 4, seed=0)
    assert shapes.info()["source"] == "shapes:calib" and shapes.info()["samples"] == 4


def test_sample_id_hash_is_stable_for_a_seed_and_changes_with_it(tmp_path):
    raw = caption_folder(tmp_path / "raw", 12)
    sampled = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        root = tmp_path / name
        assert prepare_data("calib", "--from", str(raw), "--data-dir", str(root), "--calib-size", "6",
                            "--seed", seed) == 0
        sampled[name] = list(pd.read_parquet(root / "calib" / "captions.parquet")["image_id"])
    assert sampled["a"] == sampled["b"] and set(sampled["a"]) != set(sampled["c"])

    path = str(tmp_path / "a" / "calib" / "captions.parquet")
    first, again, other = (load_calibration_examples(path, 4, seed=s) for s in (0, 0, 1))
    assert first.ids == again.ids and first.info() == again.info()
    assert first.info()["ids_sha256"] == sha256_of(first.ids) and set(first.ids) <= set(sampled["a"])
    assert other.info()["ids_sha256"] != first.info()["ids_sha256"]


def test_prepare_calib_refuses_an_empty_caption_set(tmp_path, capsys):
    raw = tmp_path / "raw"
    for i in range(3):
        _jpeg(raw / f"img{i}.jpg", i)
    (raw / "img0.txt").write_text("  \n")
    assert prepare_data("calib", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert f"--from {raw} (images with .txt captions) holds no image with a non-empty caption" in err
    assert not (tmp_path / "d" / "calib" / "captions.parquet").exists()

    (raw / "metadata.jsonl").write_text(json.dumps({"file_name": "img1.jpg", "text": ""}) + "\n")
    assert prepare_data("calib", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    assert "(metadata.jsonl) holds no image with a non-empty caption" in capsys.readouterr().err


def test_coco_train2017_drops_val2014_images(tmp_path, capsys):
    raw = karpathy_raw(tmp_path / "raw", n_test=3, n_train=4)  # cocoids 100-104 val2014, 105-108 train2014
    images = [{"id": 100 + i, "file_name": f"{100 + i:012d}.jpg"} for i in range(9)]
    for i in range(9):
        _jpeg(raw / "train2017" / f"{100 + i:012d}.jpg", i)
    _json(raw / "annotations" / "captions_train2017.json", {
        "images": images, "annotations": [{"image_id": 100 + i, "id": i, "caption": f"a red square {i}"}
                                          for i in range(9)]})
    root = tmp_path / "d"
    assert prepare_data("calib", "--from", str(raw), "--data-dir", str(root), "--calib-size", "50") == 0
    calib = pd.read_parquet(root / "calib" / "captions.parquet")
    assert sorted(calib["image_id"]) == [f"coco:{i}" for i in range(105, 109)]
    assert all(text.startswith("a red square") for text in calib["text"])

    (raw / "dataset_coco.json").unlink()
    assert prepare_data("calib", "--from", str(raw), "--data-dir", str(root)) == 2
    assert "train2017 holds most COCO val2014 images" in capsys.readouterr().err


def test_each_explicit_calib_data_form_passes_the_check_and_loads(tmp_path):
    folder = caption_folder(tmp_path / "imgs", 3)
    captions = [f"a caption {i}" for i in range(3)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"image": f"imgs/img{i:02d}.jpg", "text": captions[i]}) + "\n"
                                              for i in range(3)))  # image paths relative to the file
    pd.DataFrame({"image": [(folder / f"img{i:02d}.jpg").read_bytes() for i in range(3)],
                  "text": captions}).to_parquet(tmp_path / "c.parquet")
    for value, texts in ((folder, {""}), (tmp_path / "c.jsonl", set(captions)), (tmp_path / "c.parquet", set(captions))):
        check_calib_data(str(value))
        examples = load_calibration_examples(str(value), 2, seed=0)
        assert len(examples) == 2 and examples.info()["samples"] == 2
        assert all(image.size == (40, 40) and image.mode == "RGB" and text in texts for image, text in examples)
    check_calib_data("shapes")
    check_calib_data(ONLINE)  # streamed later; nothing to check offline


def test_a_bad_calib_data_path_is_refused_before_the_model_loads(tiny_blip2_dir, tmp_path, monkeypatch):
    def load(self, source):
        raise AssertionError("the model was loaded before calib_data was checked")

    monkeypatch.setattr(MMQBlip2, "_load", load)
    with pytest.raises(MMQConfigError, match=r"calib_data='.*nope': no such file or folder; pass a folder of images"):
        MMQBlip2(pretrained=str(tiny_blip2_dir), method="gptq", llm_bits=4, calib_data=str(tmp_path / "nope"))
    with pytest.raises(AssertionError, match="the model was loaded"):  # method=rtn needs no calibration data
        MMQBlip2(pretrained=str(tiny_blip2_dir), method="rtn", llm_bits=4, calib_data=str(tmp_path / "nope"))
