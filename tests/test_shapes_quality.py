"""The embedded default gives meaningful numbers through lmms-eval, and quantization shows.

One full-precision model is loaded for the module; each spec is applied to its kept
full-precision weights (as sweeps do) and scored on the whole shapes test splits.
"""

import functools

import pytest
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager

from mmq_eval.models.blip2 import MMQBlip2
from mmq_eval.quant import QuantSpec
from mmq_eval.tasks import tasks_path

TASKS = ("mmq_shapes_cap", "mmq_shapes_vqa")


def evaluate(lm, tasks):
    out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=TaskManager(include_path=tasks_path()),
                          batch_size=lm.batch_size, bootstrap_iters=0)
    return {task: {k.split(",")[0]: v for k, v in metrics.items()} for task, metrics in out["results"].items()}


@pytest.fixture(scope="module")
def score():
    """``score(tasks, **quant_args)`` -> {task: {metric: value}}, memoised per spec."""
    lm = MMQBlip2(pretrained="mmq:shapes-blip2", device="cpu", batch_size=32, quant_cache="none")

    @functools.cache
    def run(tasks, **quant_args):
        if quant_args:
            lm.apply_quant(QuantSpec.from_args(quant_args))
        elif lm.quant_report is not None:
            lm.apply_quant(QuantSpec.from_args({"method": "none"}))
        return evaluate(lm, tasks)

    return run


def cider(score, **quant_args):
    return score(("mmq_shapes_cap",), **quant_args)["mmq_shapes_cap"]["cider"]


def test_full_precision_reaches_the_documented_quality(score):
    fp = score(TASKS)
    assert fp["mmq_shapes_cap"]["cider"] >= 2.5
    assert fp["mmq_shapes_vqa"]["accuracy"] >= 0.55


def test_two_bit_uniform_is_clearly_worse(score):
    fp, low = score(TASKS), score(TASKS, method="uniform", vit_bits=2, qformer_bits=2, llm_bits=2)
    assert low["mmq_shapes_cap"]["cider"] < 0.6 * fp["mmq_shapes_cap"]["cider"]
    assert low["mmq_shapes_vqa"]["accuracy"] < fp["mmq_shapes_vqa"]["accuracy"] - 0.1


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_four_bit_calibrated_methods_keep_ninety_percent_of_cider(score, method):
    fp = score(TASKS)["mmq_shapes_cap"]["cider"]
    assert cider(score, method=method, bits=4) >= 0.9 * fp


def test_three_bit_gptq_beats_the_papers_uniform_scheme(score):
    assert cider(score, method="gptq", bits=3) > cider(score, method="uniform", bits=3)
