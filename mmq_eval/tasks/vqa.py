"""VQA accuracy: the official VQAv2 soft accuracy with EvalAI answer normalisation."""

from __future__ import annotations

from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

_normalise = EvalAIAnswerProcessor()


def normalise_answer(answer: str) -> str:
    """Lower-case, strip punctuation and articles, map number words to digits (EvalAI rules)."""
    return _normalise(answer)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy: mean over the leave-one-out subsets of min(1, #matches / 3).

    With ten human answers this is the official metric; a single reference answer makes it
    exact match after normalisation.
    """
    pred = normalise_answer(prediction)
    gts = [normalise_answer(a) for a in answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    accs = []
    for left_out in range(len(gts)):
        matches = sum(1 for i, gt in enumerate(gts) if i != left_out and gt == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


def process_results(doc: dict, results: list[str]) -> dict:
    """lmms-eval ``process_results`` of VQA tasks whose docs carry an ``answers`` list."""
    prediction = results[0] if results else ""
    return {"accuracy": vqa_accuracy(prediction, list(doc["answers"]))}

