"""prepare-data for VQAv2 and GQA, their mmq_* tasks end to end, and GQA exact match."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_fakes import evaluate, gqa_raw, prepare_data, prepared_root, vqav2_raw
from mmq_eval.data import gqa, vqav2
from mmq_eval.data.images import open_store
from mmq_eval.errors import MMQDataError
from mmq_eval.tasks.gqa import exact_match, process_results

TASKS = ["mmq_vqav2_val", "mmq_vqav2_val_lite", "mmq_gqa_testdev"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with prepared_root(tmp_path_factory, ("vqav2", vqav2_raw), ("gqa", gqa_raw)) as root_and_raw:
        yield root_and_raw


def test_questions_and_image_store(prepared):
    root, raw = prepared
    questions = pd.read_parquet(root / "vqav2" / "val.parquet")
    assert len(questions) == 6 and "image" not in questions.columns
    first = questions.iloc[0]
    assert (first.question_id, first.image_id, first.answer) == (300000, 300, "red")
    assert list(first.answers) == ["red"] * 7 + ["blue"] * 3
    store = open_store(root / "vqav2" / "val_images.arrow")
    assert len(store) == 3  # each image once, though two questions share it
    image = vqav2.doc_to_visual(first.to_dict())[0]
    with Image.open(raw / "vqav2" / "val2014" / "COCO_val2014_000000000300.jpg") as original:
        assert np.array_equal(np.asarray(image), np.asarray(original.convert("RGB")))
    testdev = pd.read_parquet(root / "gqa" / "testdev_balanced.parquet")
    assert list(testdev.columns) == ["question_id", "image_id", "question", "answer"]
    assert testdev.iloc[0].to_dict()["image_id"] == "n4000"


def test_tasks_on_a_tiny_blip2(prepared, tiny_blip2_dir):
    from mmq_eval.models.blip2 import MMQBlip2

    lm = MMQBlip2(pretrained=str(tiny_blip2_dir), device="cpu", batch_size=8)
    out = evaluate(lm, TASKS, gen_kwargs="max_new_tokens=3")
    assert out["docs"] == {"mmq_vqav2_val": 6, "mmq_vqav2_val_lite": 6, "mmq_gqa_testdev": 4}
    assert 0.0 <= out["metrics"]["mmq_vqav2_val"]["accuracy"] <= 1.0
    assert 0.0 <= out["metrics"]["mmq_gqa_testdev"]["exact_match"] <= 1.0


@pytest.mark.parametrize(("response", "vqa", "gqa_score"), [("Red.", 1.0, 0.0), ("Yes", 0.0, 1.0)])
def test_stock_lmms_eval_model_gets_the_scores_by_hand(prepared, response, vqa, gqa_score):
    # lmms-eval's own "dummy" model fetches every doc's visuals through doc_to_visual as stock
    # models do, and answers `response`: 7 of 10 humans said "red" (accuracy 1), GQA says "yes".
    out = evaluate("dummy", ["mmq_vqav2_val", "mmq_gqa_testdev"], model_args=f"response={response},read_bytes=1")
    assert out["metrics"]["mmq_vqav2_val"]["accuracy"] == vqa
    assert out["metrics"]["mmq_gqa_testdev"]["exact_match"] == gqa_score


def test_lite_is_a_fixed_seeded_subset(prepared, monkeypatch):
    monkeypatch.setattr(vqav2, "LITE_SIZE", 4)
    full = vqav2.load_docs(None)["question_id"]
    lite = vqav2.load_docs_lite(None)["question_id"]
    assert len(lite) == 4 and set(lite) < set(full)
    assert vqav2.load_docs_lite(None)["question_id"] == lite


@pytest.mark.parametrize(("prediction", "answer", "score"), [
    ("Yes.", "yes", 1.0),  # case and punctuation
    ("the table", "table", 1.0),  # articles
    ("two", "2", 1.0),  # number words
    ("  On the LEFT ", "left", 0.0),  # exact match, not containment
    ("red car", "car", 0.0),
    ("", "no", 0.0),
])
def test_gqa_exact_match_by_hand(prediction, answer, score):
    assert exact_match(prediction, answer) == score
    assert process_results({"answer": answer}, [prediction]) == {"exact_match": score}


def test_missing_annotations_file_is_named(tmp_path, capsys):
    raw = vqav2_raw(tmp_path / "raw", n_images=1)
    (raw / vqav2.ANNOTATIONS).unlink()
    assert prepare_data("vqav2", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    assert f"expected {raw / vqav2.ANNOTATIONS}" in capsys.readouterr().err


def test_missing_gqa_image_is_named(tmp_path, capsys):
    raw = gqa_raw(tmp_path / "raw")
    (raw / "images" / "n4001.jpg").unlink()
    assert prepare_data("gqa", "--from", str(raw), "--data-dir", str(tmp_path / "d")) == 2
    assert str(raw / "images" / "n4001.jpg") in capsys.readouterr().err


def test_calibration_options_are_for_karpathy_only(tmp_path, capsys):
    assert prepare_data("gqa", "--from", str(tmp_path), "--calib-size", "5") == 2
    assert "--calib-size and --seed apply to coco_karpathy" in capsys.readouterr().err


def test_unprepared_task_names_the_file_and_the_command(tmp_path, monkeypatch):
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    monkeypatch.setenv("MMQ_DATA_DIR", str(tmp_path))
    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False)
    expected = tmp_path / gqa.TESTDEV_FILE
    with pytest.raises(MMQDataError, match=f"(?s){expected} is missing.*mmq-eval prepare-data gqa"):
        get_task_dict(["mmq_gqa_testdev"], manager)


@pytest.mark.parametrize(("model_name", "prompt"), [
    ("mmq_blip2", "Question: what color is square 0? Short answer:"),
    ("mmq_llava", "what color is square 0?\nAnswer the question using a single word or phrase."),
])
def test_prompt_per_model_family(prepared, model_name, prompt):
    from lmms_eval.tasks import TaskManager, get_task_dict

    from mmq_eval.tasks import tasks_path

    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False,
                          model_name=model_name)
    task = get_task_dict(["mmq_vqav2_val"], manager)["mmq_vqav2_val"]
    assert task.doc_to_text(task.test_docs()[0]) == prompt
