"""prepare-data writes only complete, decodable entries, and a damaged prepared file stops the
evaluation by name: the bad-input table of docs/data.md ("What prepare-data refuses")."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import ImageFile

from data_fakes import coco2017_raw, flickr30k_raw, gqa_raw, karpathy_raw, prepare_data, vqav2_raw
from mmq_eval.data import checks, gqa, vqav2
from mmq_eval.data.images import ImageStore, decode_image, read_image
from mmq_eval.data.preflight import TASK_FILES, check_prepared_tasks
from mmq_eval.errors import MMQDataError

RAW = {"coco2017": coco2017_raw, "coco_karpathy": karpathy_raw, "flickr30k": flickr30k_raw,
       "vqav2": vqav2_raw, "gqa": gqa_raw}
PREPARED = {"coco2017": "coco/val2017_cap.parquet", "coco_karpathy": "coco/karpathy_test.parquet",
            "flickr30k": "flickr30k/test.parquet", "vqav2": "vqav2/val.parquet",
            "gqa": "gqa/testdev_balanced.parquet"}
COCO_JSON = "annotations/captions_val2017.json"
VQA_ANNOTATIONS = "v2_mscoco_val2014_annotations.json"
VQA_QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
GQA_JSON = "testdev_balanced_questions.json"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def edit_json(relative: str, change):
    def edit(raw: Path) -> None:
        data = json.loads((raw / relative).read_text())
        change(data)
        (raw / relative).write_text(json.dumps(data))
    return edit


def on_file(relative: str, damage):
    return lambda raw: damage(raw / relative)


def empty_answers(data):
    data["annotations"][1]["answers"] = []


def blank_answers(data):
    for answer in data["annotations"][2]["answers"]:
        answer["answer"] = "  "


def gqa_repeated_id(raw: Path) -> None:
    text = (raw / GQA_JSON).read_text()
    first = text.index('"2000000"')
    entry = text[first:text.index(', "2000001"')]
    (raw / GQA_JSON).write_text(text[:-1] + ", " + entry + "}")


CASES = {
    # id: (data set, breakage, fragments of the message: the entry and the file)
    "coco2017-truncated-jpeg": ("coco2017", on_file("val2017/000000000201.jpg", truncate),
                                ["image 201 (captions_val2017.json)", "000000000201.jpg does not decode",
                                 "truncated"]),
    "coco2017-zero-byte-image": ("coco2017", on_file("val2017/000000000200.jpg", lambda p: p.write_bytes(b"")),
                                 ["image 200 (captions_val2017.json)", "000000000200.jpg is empty (0 bytes)"]),
    "coco2017-not-an-image": ("coco2017", on_file("val2017/000000000202.jpg",
                                                  lambda p: p.write_text("<html>404 Not Found</html>")),
                              ["image 202 (captions_val2017.json)", "000000000202.jpg does not decode",
                               "cannot identify image file"]),
    "coco2017-image-without-captions": ("coco2017", edit_json(COCO_JSON, lambda d: d.update(
        annotations=[a for a in d["annotations"] if a["image_id"] != 201])),
        ["image 201 (captions_val2017.json): no captions"]),
    "coco2017-blank-caption": ("coco2017", edit_json(COCO_JSON, lambda d: d["annotations"][7].update(caption=" \n")),
                               ["image 201 (captions_val2017.json): caption 2 of 5 is empty"]),
    "coco2017-repeated-image-id": ("coco2017", edit_json(COCO_JSON, lambda d: d["images"][2].update(id=200)),
                                   ["image 200 (captions_val2017.json): image id occurs more than once"]),
    "karpathy-test-without-captions": ("coco_karpathy", edit_json("dataset_coco.json", lambda d: d["images"][1].update(
        sentences=[])), ["image 101 (dataset_coco.json): no captions"]),
    "karpathy-test-truncated-jpeg": ("coco_karpathy", on_file("val2014/COCO_val2014_000000000100.jpg", truncate),
                                     ["image 100 (dataset_coco.json)", "COCO_val2014_000000000100.jpg does not decode"]),
    "karpathy-repeated-cocoid": ("coco_karpathy", edit_json("dataset_coco.json", lambda d: d["images"][2].update(
        cocoid=100)), ["image 100 (dataset_coco.json): image id occurs more than once"]),
    "karpathy-calibration-truncated-jpeg": ("coco_karpathy", on_file("train2014/COCO_train2014_000000000107.jpg",
                                                                      truncate),
                                            ["image 107 (dataset_coco.json)", "karpathy_train_calib.parquet",
                                             "COCO_train2014_000000000107.jpg does not decode"]),
    "flickr30k-empty-caption": ("flickr30k", edit_json("dataset_flickr30k.json", lambda d: d["images"][3][
        "sentences"][4].update(raw="")), ["image 3 (dataset_flickr30k.json): caption 4 of 5 is empty"]),
    "flickr30k-truncated-jpeg": ("flickr30k", on_file("flickr30k-images/1000092796.jpg", truncate),
                                 ["image 1 (dataset_flickr30k.json)", "1000092796.jpg does not decode"]),
    "vqav2-empty-answer-list": ("vqav2", edit_json(VQA_ANNOTATIONS, empty_answers),
                                [f"question 300001: no answers in {VQA_ANNOTATIONS}"]),
    "vqav2-blank-answers": ("vqav2", edit_json(VQA_ANNOTATIONS, blank_answers),
                            [f"question 301000: no answers in {VQA_ANNOTATIONS}"]),
    "vqav2-blank-question": ("vqav2", edit_json(VQA_QUESTIONS, lambda d: d["questions"][3].update(question="\t")),
                             ["question 301001: the question is empty"]),
    "vqav2-repeated-question-id": ("vqav2", edit_json(VQA_QUESTIONS, lambda d: d["questions"][1].update(
        question_id=300000)), ["question 300000: question id occurs more than once"]),
    "vqav2-question-without-annotation": ("vqav2", edit_json(VQA_ANNOTATIONS, lambda d: d["annotations"].pop(4)),
                                          [f"question 302000: not in {VQA_ANNOTATIONS}"]),
    "vqav2-missing-image": ("vqav2", on_file("val2014/COCO_val2014_000000000301.jpg", Path.unlink),
                            ["1 of 3 VQAv2 val images are missing, the first: ", "COCO_val2014_000000000301.jpg",
                             "(image 301)"]),
    "vqav2-truncated-jpeg": ("vqav2", on_file("val2014/COCO_val2014_000000000302.jpg", truncate),
                             ["image 302: image ", "COCO_val2014_000000000302.jpg does not decode"]),
    "gqa-blank-answer": ("gqa", edit_json(GQA_JSON, lambda d: d["2000011"].update(answer="")),
                         [f"question 2000011: no answer in {GQA_JSON}"]),
    "gqa-repeated-question-id": ("gqa", gqa_repeated_id,
                                 [f"question 2000000: question id occurs more than once in {GQA_JSON}"]),
    "gqa-truncated-jpeg": ("gqa", on_file("images/n4001.jpg", truncate), ["image n4001: image ", "n4001.jpg does not decode"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_prepare_refuses_the_bad_entry_by_name(case, tmp_path, capsys):
    dataset, breakage, fragments = CASES[case]
    raw = RAW[dataset](tmp_path / "raw")
    breakage(raw)
    root = tmp_path / "data"
    assert prepare_data(dataset, "--from", str(raw), "--data-dir", str(root)) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert f"mmq-eval prepare-data {dataset} --from <raw folder> --skip-bad" in err
    assert not list(root.rglob("*.part")), "a refused set leaves no half-written file"
    assert not (root / PREPARED[dataset]).exists() or "calibration" in case


def test_karpathy_calibration_refusal_comes_from_the_sample(tmp_path, capsys):
    raw = karpathy_raw(tmp_path / "raw")
    truncate(raw / "train2014" / "COCO_train2014_000000000107.jpg")
    root = tmp_path / "data"
    assert prepare_data("coco_karpathy", "--from", str(raw), "--data-dir", str(root), "--calib-size", "4") == 2
    assert "image 107 (dataset_coco.json): image " in capsys.readouterr().err
    assert not (root / "coco" / "karpathy_train_calib.parquet").exists()
    assert prepare_data("coco_karpathy", "--from", str(raw), "--data-dir", str(root), "--calib-size", "0") == 0


def test_bad_entries_are_named_up_to_a_cap(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checks, "MAX_NAMED", 2)
    raw = vqav2_raw(tmp_path / "raw", n_images=4)
    for image_id in (300, 301, 302):
        truncate(raw / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    assert prepare_data("vqav2", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert "vqav2: at least 2 entries are incomplete or unreadable for val.parquet" in err
    assert "image 300: " in err and "image 301: " in err and "image 302" not in err  # stopped at the cap


def test_skip_bad_leaves_the_entries_out_and_lists_them(tmp_path, capsys):
    raw = vqav2_raw(tmp_path / "raw")
    truncate(raw / "val2014" / "COCO_val2014_000000000301.jpg")
    edit_json(VQA_ANNOTATIONS, empty_answers)(raw)
    root = tmp_path / "data"
    assert prepare_data("vqav2", "--from", str(raw), "--data-dir", str(root), "--skip-bad") == 0
    manifest = root / "vqav2" / "val_skipped.json"
    assert f"vqav2: left 4 entries out of {root / 'vqav2' / 'val.parquet'} (--skip-bad), listed in {manifest}" \
        in capsys.readouterr().err
    listed = json.loads(manifest.read_text())
    assert [e["entry"] for e in listed["skipped"]] == ["question 300001", "image 301", "question 301000",
                                                       "question 301001"]
    assert listed["skipped"][0]["reason"] == f"no answers in {VQA_ANNOTATIONS}"
    assert listed["skipped"][2]["reason"] == "its image 301 was refused"
    assert list(pd.read_parquet(root / "vqav2" / "val.parquet")["question_id"]) == [300000, 302000, 302001]
    assert len(ImageStore(root / "vqav2" / "val_images.arrow")) == 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMQ_DATA_DIR", str(root))
        with pytest.warns(UserWarning, match=f"prepared with --skip-bad: the entries listed in {manifest}"):
            assert len(vqav2.load_docs(None)) == 3
    # the raw files repaired, a new prepare-data removes the stale list
    vqav2_raw(raw)
    assert prepare_data("vqav2", "--from", str(raw), "--data-dir", str(root), "--skip-bad") == 0
    assert not manifest.exists() and len(pd.read_parquet(root / "vqav2" / "val.parquet")) == 6


def test_skip_bad_with_nothing_left_is_refused(tmp_path, capsys):
    raw = gqa_raw(tmp_path / "raw", n_images=1)
    truncate(raw / "images" / "n4000.jpg")
    assert prepare_data("gqa", "--from", str(raw), "--data-dir", str(tmp_path / "d"), "--skip-bad") == 2
    assert "nothing left to write" in capsys.readouterr().err
    assert not (tmp_path / "d" / gqa.TESTDEV_FILE).exists()


@pytest.mark.parametrize("dataset", list(RAW))
def test_a_good_set_prepares_the_same_bytes_with_or_without_skip_bad(dataset, tmp_path):
    raw = RAW[dataset](tmp_path / "raw")
    written = {}
    for run, extra in (("plain", ()), ("skip", ("--skip-bad",))):
        root = tmp_path / run
        assert prepare_data(dataset, "--from", str(raw), "--data-dir", str(root), *extra) == 0
        written[run] = {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert written["plain"] == written["skip"]
    assert Path(PREPARED[dataset]) in written["plain"] and not any("skipped" in str(p) for p in written["plain"])


def test_truncated_image_is_refused_even_where_lmms_eval_allows_them(tmp_path, monkeypatch):
    """lmms-eval sets LOAD_TRUNCATED_IMAGES, which decodes a cut JPEG with its rest grey."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    raw = coco2017_raw(tmp_path / "raw", n=1)
    image = raw / "val2017" / "000000000200.jpg"
    truncate(image)
    with pytest.raises(MMQDataError, match=f"image {image} does not decode .*truncated"):
        read_image(image)
    cell = {"bytes": image.read_bytes(), "path": image.name}
    with pytest.raises(MMQDataError, match=r"image 200 \(000000000200.jpg\): the image cannot be read .*truncated"):
        decode_image(cell, "image 200 (000000000200.jpg)")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


# --- prepared files damaged after prepare-data -------------------------------------------------

def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite_first_page(path: Path) -> None:
    """Garbage over the first data page; the footer (metadata) stays readable."""
    data = bytearray(path.read_bytes())
    data[4:68] = b"\xab" * 64
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def prepared_gqa(tmp_path_factory):
    raw = gqa_raw(tmp_path_factory.mktemp("raw"))
    root = tmp_path_factory.mktemp("data")
    assert prepare_data("gqa", "--from", str(raw), "--data-dir", str(root)) == 0
    return root


def damaged_root(prepared: Path, tmp_path: Path, relative: str, damage) -> Path:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(prepared, root)
    damage(root / relative)
    return root


DAMAGE = {
    "parquet-truncated": (gqa.TESTDEV_FILE, cut_in_half, "is damaged or truncated"),
    "parquet-zero-bytes": (gqa.TESTDEV_FILE, lambda p: p.write_bytes(b""), "is damaged or truncated"),
    "parquet-missing": (gqa.TESTDEV_FILE, Path.unlink, "is missing"),
    "image-store-truncated": ("gqa/testdev_balanced_images.arrow", cut_in_half, "is damaged or truncated"),
    "image-store-missing": ("gqa/testdev_balanced_images.arrow", Path.unlink, "is missing"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_prepared_file_is_named_before_the_run(case, prepared_gqa, tmp_path, monkeypatch):
    relative, damage, what = DAMAGE[case]
    root = damaged_root(prepared_gqa, tmp_path, relative, damage)
    monkeypatch.setenv("MMQ_DATA_DIR", str(root))
    check_prepared_tasks(["--tasks", "mmq_vqav2_val_lite_typo,some_other_task"])  # not ours: left to lmms-eval
    with pytest.raises(MMQDataError, match=f"(?s)mmq_gqa_testdev: {root / relative} {what}.*prepare-data gqa"):
        check_prepared_tasks(["--model", "dummy", "--tasks=mmq_gqa_testdev"])
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False)
    with pytest.raises(MMQDataError, match=f"(?s){root / relative} {what}.*prepare-data gqa"):
        get_task_dict(["mmq_gqa_testdev"], manager)


def test_mmq_eval_run_exits_2_naming_a_truncated_prepared_file(prepared_gqa, tmp_path, monkeypatch, capsys):
    from mmq_eval.cli import main

    root = damaged_root(prepared_gqa, tmp_path, gqa.TESTDEV_FILE, cut_in_half)
    monkeypatch.setenv("MMQ_DATA_DIR", str(root))
    assert main(["run", "--model", "dummy", "--tasks", "mmq_gqa_testdev", "--output_path", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"mmq-eval: error: mmq_gqa_testdev: {root / gqa.TESTDEV_FILE} is damaged or truncated" in err
    assert "mmq-eval prepare-data gqa --from <raw folder>" in err


def test_mmq_eval_run_exits_2_naming_a_parquet_with_a_corrupt_page(prepared_gqa, tmp_path, monkeypatch, capsys):
    """The footer reads fine, so the run starts; reading the rows fails inside the evaluation."""
    from mmq_eval.cli import main

    root = damaged_root(prepared_gqa, tmp_path, gqa.TESTDEV_FILE, overwrite_first_page)
    monkeypatch.setenv("MMQ_DATA_DIR", str(root))
    check_prepared_tasks(["--tasks", "mmq_gqa_testdev"])  # metadata only: passes
    assert main(["run", "--model", "dummy", "--tasks", "mmq_gqa_testdev", "--output_path", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"mmq-eval: error: {root / gqa.TESTDEV_FILE} cannot be read (" in err
    assert "mmq-eval prepare-data gqa --from <raw folder>" in err and "RetryError" not in err


def test_image_store_with_a_truncated_image_is_named_at_lookup(prepared_gqa, tmp_path, monkeypatch):
    import pyarrow as pa

    from mmq_eval.data.writer import write_image_store

    store = tmp_path / "testdev_balanced_images.arrow"
    good = ImageStore(prepared_gqa / "gqa" / "testdev_balanced_images.arrow")
    cut = good.table.column("image")[0].as_py()[:-40]
    write_image_store(store, [("n4000", cut)], 1, "images")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(MMQDataError, match=f"image 'n4000' of {store}: the image cannot be read .*truncated"):
        ImageStore(store, "prepare gqa again").image("n4000")
    store.write_bytes(b"ARROW1" + b"\0" * 40)
    with pytest.raises(MMQDataError, match=f"image store {store} is damaged or not an image store .*: prepare gqa"):
        ImageStore(store, "prepare gqa again")
    assert isinstance(good.table, pa.Table)


def test_every_data_task_is_checked_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MMQ_DATA_DIR", str(tmp_path))
    with pytest.raises(MMQDataError) as error:
        check_prepared_tasks(["--tasks", ",".join(TASK_FILES)])
    message = str(error.value)
    for task, (module, files) in TASK_FILES.items():
        assert task in message and f"mmq-eval prepare-data {module.NAME}" in message
        for relative in files:
            assert f"{tmp_path / relative} is missing" in message


@pytest.mark.parametrize(("dataset", "column", "message"), [
    ("vqav2", "answers", "1 docs have no answers (the first: row 1, question_id 300001)"),
    ("coco2017", "captions", "1 docs have no captions (the first: row 2, image_id 202)"),
])
def test_set_prepared_without_references_is_refused_at_load(dataset, column, message, tmp_path, monkeypatch):
    """A set written before empty answer/caption lists were refused stops when the task loads,
    not when the scoring divides by zero at the end."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    root = tmp_path / "data"
    assert prepare_data(dataset, "--from", str(RAW[dataset](tmp_path / "raw")), "--data-dir", str(root)) == 0
    path = root / PREPARED[dataset]
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[1 if dataset == "vqav2" else 2] = []
    index = table.column_names.index(column)
    pq.write_table(table.set_column(index, column, pa.array(values, type=table.schema.field(column).type)), path)
    monkeypatch.setenv("MMQ_DATA_DIR", str(root))
    task = {"vqav2": "mmq_vqav2_val", "coco2017": "mmq_coco2017_cap_val"}[dataset]
    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False)
    with pytest.raises(MMQDataError, match=f"{path}: {re.escape(message)}.*prepare-data {dataset}"):
        get_task_dict([task], manager)
