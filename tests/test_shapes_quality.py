"""The embedded default gives meaningful numbers through lmms-eval, and quantization shows."""

import pytest
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager

from mmq_eval.cli import tasks_path
from mmq_eval.models.blip2 import MMQBlip2


def evaluate(lm, tasks):
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=tasks_path()),
                          batch_size=lm.batch_size, bootstrap_iters=0)
    return {task: {k.split(",")[0]: v for k, v in metrics.items()} for task, metrics in out["results"].items()}


@pytest.fixture(scope="module")
def full_precision():
    lm = MMQBlip2(pretrained="mmq:shapes-blip2", device="cpu", batch_size=32)
    return evaluate(lm, ["mmq_shapes_cap", "mmq_shapes_vqa"])


@pytest.fixture(scope="module")
def all_two_bit():
    lm = MMQBlip2(pretrained="mmq:shapes-blip2", device="cpu", batch_size=32, method="uniform",
                  vit_bits=2, qformer_bits=2, llm_bits=2, quant_cache="none")
    return evaluate(lm, ["mmq_shapes_cap", "mmq_shapes_vqa"])


def test_full_precision_reaches_the_documented_quality(full_precision):
    assert full_precision["mmq_shapes_cap"]["cider"] >= 2.5
    assert full_precision["mmq_shapes_vqa"]["accuracy"] >= 0.55


def test_two_bit_uniform_is_clearly_worse(full_precision, all_two_bit):
    assert all_two_bit["mmq_shapes_cap"]["cider"] < 0.6 * full_precision["mmq_shapes_cap"]["cider"]
    assert all_two_bit["mmq_shapes_vqa"]["accuracy"] < full_precision["mmq_shapes_vqa"]["accuracy"] - 0.1
