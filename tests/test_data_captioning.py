"""prepare-data for the COCO caption sets, and their mmq_* tasks end to end on a tiny BLIP-2."""

from __future__ import annotations

import pandas as pd
import pytest

from data_fakes import coco2017_raw, evaluate, karpathy_raw, prepare_data, prepared_root
from mmq_eval.errors import MMQDataError
from mmq_eval.models.calibration_data import load_calibration_examples

TASKS = ["mmq_coco_cap_karpathy", "mmq_coco2017_cap_val"]
CAPTION_METRICS = {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    with prepared_root(tmp_path_factory, ("coco_karpathy", karpathy_raw, "--calib-size", "2"),
                       ("coco2017", coco2017_raw)) as (root, _):
        yield root


@pytest.fixture(scope="module")
def results(data_root, tiny_blip2_dir):
    from mmq_eval.models.blip2 import MMQBlip2

    lm = MMQBlip2(pretrained=str(tiny_blip2_dir), device="cpu", batch_size=4)
    return evaluate(lm, TASKS, gen_kwargs="max_new_tokens=4")


def test_karpathy_test_set_embeds_images_and_references(data_root):
    test = pd.read_parquet(data_root / "coco" / "karpathy_test.parquet")
    assert list(test["image_id"]) == [100, 101, 102]
    assert all(len(c) == 5 and c[0] == "a red square number 0" for c in test["captions"][:1])
    assert all(isinstance(cell["bytes"], bytes) and cell["bytes"][:2] == b"\xff\xd8" for cell in test["image"])


def test_calibration_sample_is_seeded_train_images_with_one_caption(data_root):
    path = data_root / "coco" / "karpathy_train_calib.parquet"
    calib = pd.read_parquet(path)
    assert len(calib) == 2 and set(calib["image_id"]) <= {105, 106, 107, 108}  # the "train" entries
    assert all(text.startswith("a red square number") for text in calib["text"])
    examples = load_calibration_examples(str(path), 2, seed=0)
    assert [image.size for image, _ in examples] == [(40, 40)] * 2


def test_caption_tasks_score_every_prepared_image(results):
    for task in TASKS:
        metrics = results["metrics"][task]
        assert set(metrics) == CAPTION_METRICS
        assert all(0.0 <= metrics[m] <= 1.0 for m in CAPTION_METRICS - {"cider"})
        assert 0.0 <= metrics["cider"] <= 10.0
        assert results["docs"][task] == 3


def test_missing_split_file_is_named(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    assert prepare_data("coco_karpathy", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    assert f"expected {raw / 'dataset_coco.json'}" in capsys.readouterr().err


def test_missing_image_is_named(tmp_path, capsys):
    raw = coco2017_raw(tmp_path / "raw")
    (raw / "val2017" / "000000000201.jpg").unlink()
    assert prepare_data("coco2017", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert "1 of 3 images" in err and str(raw / "val2017" / "000000000201.jpg") in err
    assert not (tmp_path / "d" / "coco" / "val2017_cap.parquet").exists()


def test_unprepared_task_names_the_file_and_the_command(tmp_path, monkeypatch):
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    monkeypatch.setenv("MMQ_DATA_DIR", str(tmp_path))
    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False)
    expected = tmp_path / "coco" / "val2017_cap.parquet"
    with pytest.raises(MMQDataError, match=f"(?s){expected} is missing.*mmq-eval prepare-data coco2017"):
        get_task_dict(["mmq_coco2017_cap_val"], manager)


def test_calibration_needs_train2014_unless_skipped(tmp_path, capsys):
    import shutil

    raw = karpathy_raw(tmp_path / "raw")
    shutil.rmtree(raw / "train2014")
    root = tmp_path / "d"
    assert prepare_data("coco_karpathy", "--from", str(raw), "--data-dir", str(root), "--calib-size", "2") == 2
    assert f"2 of 2 calibration images (Karpathy train, in train2014/) are missing, the first: {raw / 'train2014'}" \
        in capsys.readouterr().err
    assert not (root / "coco" / "karpathy_test.parquet").exists()
    assert prepare_data("coco_karpathy", "--from", str(raw), "--data-dir", str(root), "--calib-size", "0") == 0
    assert sorted(p.name for p in (root / "coco").iterdir()) == ["karpathy_test.parquet"]


@pytest.mark.parametrize(("model_name", "prompt"), [
    ("mmq_blip2", ""), ("mmq_llava", "Provide a one-sentence caption for the provided image."),
])
def test_prompt_per_model_family(data_root, model_name, prompt):
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False,
                          model_name=model_name)
    task = get_task_dict(["mmq_coco2017_cap_val"], manager)["mmq_coco2017_cap_val"]
    assert task.doc_to_text(task.test_docs()[0]) == prompt
