"""mmq_shapes_retrieval through lmms-eval with the embedded retrieval model, and its clear errors."""

from __future__ import annotations

import json

import pytest
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager
from lmms_requests import generate_requests, make_image

from mmq_eval.errors import MMQConfigError
from mmq_eval.models.blip2 import MMQBlip2
from mmq_eval.tasks import tasks_path

TASK = "mmq_shapes_retrieval"
N_IMAGES = 100  # chance R@1 is about 1% in both directions


def evaluate(lm) -> dict:
    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False)
    out = simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, bootstrap_iters=0)
    return {k.split(",")[0]: v for k, v in out["results"][TASK].items()}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def itm_model():
    return MMQBlip2(pretrained="mmq:shapes-blip2-itm", device="cpu", batch_size=100)


@pytest.fixture(scope="module")
def full_precision(itm_model):
    return evaluate(itm_model)


def test_full_precision_recall_is_far_above_chance(full_precision):
    assert full_precision["i2t_r1"] >= 40 and full_precision["t2i_r1"] >= 25
    for direction in ("i2t", "t2i"):
        assert full_precision[f"{direction}_r1"] <= full_precision[f"{direction}_r5"] <= full_precision[f"{direction}_r10"]
    six = [full_precision[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert full_precision["mean_recall"] == pytest.approx(sum(six) / 6)


def test_two_bit_vit_and_qformer_lower_recall(itm_model, full_precision):
    from mmq_eval.quant import QuantSpec

    itm_model.apply_quant(QuantSpec.from_args({"method": "uniform", "vit_bits": 2, "qformer_bits": 2}))
    two_bit = evaluate(itm_model)
    assert two_bit["i2t_r1"] < full_precision["i2t_r1"] - 10
    assert two_bit["t2i_r1"] < full_precision["t2i_r1"] - 10


def retrieval_requests(lm, n: int = 3) -> list:
    lm.task_dict = {"t": {"test": [{"image": make_image(i), "captions": [f"a red circle {i}"]} for i in range(n)]}}
    return generate_requests([""] * n, {"mmq_retrieval": {"k_test": 2}})


def test_gallery_of_three_answers_one_json_per_doc(itm_model):
    out = itm_model.generate_until(retrieval_requests(itm_model))
    assert [sorted(json.loads(o)) for o in out] == [["i2t", "t2i"]] * 3


def test_itm_probability_scoring_and_a_bad_choice(itm_model):
    requests = retrieval_requests(itm_model)
    for req in requests:
        req.args[1]["mmq_retrieval"]["itm_score"] = "prob"
    assert len(itm_model.generate_until(requests)) == 3
    requests[0].args[1]["mmq_retrieval"]["itm_score"] = "softmax"
    with pytest.raises(MMQConfigError, match="itm_score"):
        itm_model.generate_until(requests)


def test_unknown_setting_is_refused(itm_model):
    requests = retrieval_requests(itm_model)
    requests[0].args[1]["mmq_retrieval"]["k_tset"] = 3
    with pytest.raises(MMQConfigError, match="k_tset"):
        itm_model.generate_until(requests)
