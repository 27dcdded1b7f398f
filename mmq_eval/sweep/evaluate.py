"""Evaluators: load the full-precision model once, then score one quantization spec per call.

An evaluator is a callable ``evaluator(spec) -> (bpw, {task: {metric: value}})``, or
``(bpw, results, {task: per-document payload})`` (``mmq_eval.sweep.per_doc``), built by a
factory ``factory(model: dict, tasks: list, limit: int | None)``; it may also have
``check(spec)``, the model-dependent validation run on every configuration before the first
evaluation.
``MMQ_SWEEP_EVALUATOR=package.module:factory`` swaps in another factory (tests use a fake).
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable
from typing import Any

from mmq_eval.errors import MMQConfigError
from mmq_eval.tasks import tasks_path

Evaluator = Callable[[Any], "tuple[float, dict]"]
ENV_HOOK = "MMQ_SWEEP_EVALUATOR"


def metrics_of(results: dict) -> dict:
    """lmms-eval ``results`` -> ``{task: {metric: float}}`` (stderr and non-numbers dropped).

    Keys look like ``"cider,none"``; a filter other than ``none`` is kept as a suffix.
    """
    out = {}
    for task, values in results.items():
        metrics = {}
        for key, val in values.items():
            name, _, filt = key.partition(",")
            if not filt or "_stderr" in name or isinstance(val, bool) or not isinstance(val, (int, float)):
                continue
            metrics[name if filt == "none" else f"{name}_{filt}"] = float(val)
        out[task] = metrics
    return out


class LmmsEvaluator:
    """An ``mmq_*`` model loaded once at full precision, scored with lmms-eval in-process."""

    def __init__(self, model: dict, tasks: list, limit: int | None):
        from lmms_eval.models import get_model
        from lmms_eval.tasks import TaskManager

        from mmq_eval.sweep.spec import DEFAULT_MODEL, our_task_names

        args = dict(model)
        name = args.pop("name", DEFAULT_MODEL)
        self.lm = get_model(name)(**args)
        self.tasks, self.limit = list(tasks), limit
        ours = our_task_names(tasks_path())
        # model_name picks each task's lmms_eval_specific_kwargs (the prompts) for this model
        self.task_manager = TaskManager(
            verbosity="WARNING", include_path=str(tasks_path()),
            include_defaults=not all(t in ours for t in tasks), model_name=name,
        )

    def check(self, spec) -> bool:
        """The checks ``mmq-eval run`` makes of ``spec`` when it builds the model (calibration data,
        then the plan; raises MMQConfigError naming the setting); False when it quantizes only
        blocks that cannot affect the outputs (``QuantPlan.effective``)."""
        from mmq_eval.quant.plan import build_plan

        self.lm._require_calibration_data(spec)
        return build_plan(self.lm.model, spec).effective

    def __call__(self, spec) -> tuple[float, dict, dict]:
        """Quantize, evaluate; bits per weight, corpus scores and per-document scores (from the
        logged samples, which hold each document's ``process_results`` output)."""
        from lmms_eval.evaluator import simple_evaluate

        from mmq_eval.sweep.per_doc import per_doc_of

        report = self.lm.apply_quant(spec)
        out = simple_evaluate(
            model=self.lm, tasks=self.tasks, task_manager=self.task_manager, limit=self.limit,
            bootstrap_iters=0, log_samples=True, verbosity="WARNING",
        )
        results = metrics_of(out["results"])
        try:
            per_doc = per_doc_of(out.get("samples") or {}, results)
        except Exception as err:  # noqa: BLE001 - per-document scores must never cost an evaluation
            warnings.warn(f"no per-document scores for this configuration: {type(err).__name__}: {err}", stacklevel=2)
            per_doc = {}
        return float(report.bpw), results, per_doc


def make_evaluator(model: dict, tasks: list, limit: int | None) -> Evaluator:
    """The evaluator for a sweep: :class:`LmmsEvaluator` unless ``$MMQ_SWEEP_EVALUATOR`` is set."""
    hook = os.environ.get(ENV_HOOK)
    if not hook:
        return LmmsEvaluator(model, tasks, limit)
    module, _, name = hook.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise MMQConfigError(f"${ENV_HOOK}={hook!r}: cannot import factory ({err}); expected package.module:callable") from err
    return factory(model, tasks, limit)
