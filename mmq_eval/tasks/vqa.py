"""VQA accuracy as the VQA evaluation server computes it: its documented processing of the
machine answer, then the official per-question scoring.

1. The prediction always gets the processing the EvalAI server documents for machine answers
   (visualqa.org/evaluation.html): newlines/tabs to spaces and stripped, punctuation
   (``processPunctuation``: periods dropped except decimal points, other marks removed or turned
   into spaces), then lower case, number words to digits, articles dropped, missing contraction
   apostrophes added (``processDigitArticle``). So "Yes.", "two" and "the cat" match "yes", "2"
   and "cat".
2. The human answers and the rest follow ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of
   GT-Vision-Lab/VQA at its latest revision (a013f00, 2021): answers are stripped; only when they
   are not all the same are they (and the prediction, again) normalised as in 1. — agreeing
   answers stay verbatim (OCR answers such as "t-shirt" or "1,000" must be matched as written);
   accuracy = mean over the n leave-one-out subsets of the n answers of min(1, matches / 3).

The two normalisation steps are lmms-eval's ``EvalAIAnswerProcessor`` methods, whose tables
equal the official ones; only its digit-comma pattern differs (it also matches "1,,000"), so it
is replaced by the official ``(\\d)(\\,)(\\d)``. Its ``__call__`` is not used: it lower-cases
and splits "'s" off before the official steps, which is how "hes" lost against "he's".
"""

from __future__ import annotations

import re

from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

from mmq_eval.errors import MMQDataError


class _OfficialProcessor(EvalAIAnswerProcessor):
    COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")  # vqaEval.py's commaStrip


_processor = _OfficialProcessor()


def _stripped(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def normalise_answer(answer: str) -> str:
    """The official normalisation (whitespace, punctuation, then digits/articles/contractions)."""
    return _processor.process_digit_article(_processor.process_punctuation(_stripped(answer)))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA accuracy of `prediction` against the human `answers`, as the evaluation server computes
    it (see the module doc).

    With fewer than 4 answers it cannot reach 1 (the official formula, e.g. 2/3 for three
    agreeing answers); fewer than 2 answers raise ValueError (the official code scores every
    prediction 0 with one answer).
    """
    if len(answers) < 2:
        raise ValueError(f"VQA accuracy needs at least 2 human answers, got {len(answers)}")
    pred, refs = normalise_answer(prediction), [_stripped(a) for a in answers]  # the server's step
    if len(set(refs)) > 1:  # vqaEval.py
        pred, refs = normalise_answer(pred), [normalise_answer(a) for a in refs]
    matches = sum(ref == pred for ref in refs)
    # leaving out answer i leaves matches - [answer i matches] matching answers
    return sum(min(1.0, (matches - (ref == pred)) / 3.0) for ref in refs) / len(refs)


def process_results(doc: dict, results: list[str]) -> dict:
    """lmms-eval ``process_results`` of VQA tasks whose docs carry an ``answers`` list: the
    per-document official accuracy (the task's score is their mean)."""
    prediction = results[0] if results else ""
    answers = list(doc["answers"])
    if len(answers) < 2:
        raise MMQDataError(f"VQA question {doc.get('question_id', '?')} has {len(answers)} human answer(s); "
                           "the official VQA accuracy needs several (ten in VQAv2) — prepare the data again "
                           "with all its answers")
    return {"accuracy": vqa_accuracy(prediction, answers)}
