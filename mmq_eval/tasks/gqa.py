"""Single-answer VQA scoring (GQA): exact match after VQA answer normalisation."""

from __future__ import annotations

from mmq_eval.tasks.vqa import normalise_answer


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when both normalise (EvalAI rules: case, punctuation, articles, number words) alike."""
    return float(normalise_answer(prediction) == normalise_answer(answer))


def process_results(doc: dict, results: list[str]) -> dict:
    """lmms-eval ``process_results`` of tasks whose docs carry one ``answer``."""
    return {"exact_match": exact_match(results[0] if results else "", doc["answer"])}
