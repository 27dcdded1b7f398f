"""Captioning and VQA metrics against reference scorers and hand-computed values."""

import pytest
from lmms_eval.tasks.coco_cap import utils as coco_utils

from mmq_eval.tasks import captioning, vqa

PREDICTIONS = {
    1: "a large red circle left of a small blue square",
    2: "a small green triangle",
    3: "two shapes a blue circle and a yellow square",
    4: "a red square",
}
REFERENCES = {
    1: ["a large red circle left of a small blue square", "a small blue square and a large red circle",
        "a big red circle next to a little blue square"],
    2: ["a small green triangle", "one small green triangle", "a green triangle that is small"],
    3: ["a blue circle and a yellow square", "a yellow square right of a blue circle",
        "two shapes a blue circle and a yellow square"],
    4: ["a large purple circle", "one large purple circle", "a purple circle"],
}


@pytest.fixture(scope="module")
def our_scores():
    docs = [{"image_id": i, "captions": REFERENCES[i]} for i in PREDICTIONS]
    records = [captioning.process_results(d, [PREDICTIONS[d["image_id"]]]) for d in docs]
    return {m: getattr(captioning, m)([r[m] for r in records]) for m in captioning.METRICS}


def test_caption_metrics_equal_lmms_eval_coco_scorer(our_scores, tmp_path, monkeypatch):
    monkeypatch.setattr(coco_utils, "generate_submission_file", lambda name, args: str(tmp_path / name))
    results = [{"image_id": i, "pred": PREDICTIONS[i], "answer": REFERENCES[i]} for i in PREDICTIONS]
    names = {"bleu1": "Bleu_1", "bleu4": "Bleu_4", "meteor": "METEOR", "rouge_l": "ROUGE_L", "cider": "CIDEr"}
    for ours, theirs in names.items():
        reference = coco_utils.coco_aggregation_result(results, theirs, None)
        assert our_scores[ours] == pytest.approx(reference, abs=1e-9), ours


def test_caption_metrics_perfect_match():
    perfect = captioning.caption_scores({"1": ["a red circle"]}, {"1": ["a red circle"]})
    assert perfect["bleu1"] == pytest.approx(1.0)
    assert perfect["rouge_l"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "prediction, answers, expected",
    [
        ("red", ["red"] * 10, 1.0),
        ("Red.", ["red"] * 10, 1.0),  # case and punctuation are normalised
        ("two", ["2"] * 10, 1.0),  # number words become digits
        ("a circle", ["circle"] * 10, 1.0),  # articles are dropped
        ("blue", ["red"] * 10, 0.0),
        # 2 of 10 humans said "blue": leave-one-out gives 8 subsets with 2 matches (2/3) and
        # 2 subsets with 1 match (1/3): (8 * 2/3 + 2 * 1/3) / 10 = 0.6
        ("blue", ["blue"] * 2 + ["red"] * 8, 0.6),
        # 3 matches: 7 subsets keep 3 (1.0), 3 subsets keep 2 (2/3): (7 + 2) / 10 = 0.9
        ("blue", ["blue"] * 3 + ["red"] * 7, 0.9),
    ],
)
def test_vqa_accuracy_hand_computed(prediction, answers, expected):
    assert vqa.vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_vqa_process_results():
    doc = {"answers": ["three"] * 9 + ["four"]}  # disagreeing answers are normalised: nine "3"
    assert vqa.process_results(doc, ["3"]) == {"accuracy": 1.0}
    assert vqa.process_results(doc, ["one"]) == {"accuracy": 0.0}
