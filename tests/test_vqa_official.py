"""VQA accuracy equals the evaluation server's case by case: its documented processing of the
machine answer, then the official code (GT-Vision-Lab/VQA vqaEval.py, a013f00).

Each case's expected score is worked out by hand (comment beside it) and, independently, by
`official_accuracy` below: the server's processing of the prediction, then a line-by-line
transcription of vqaEval.py's ``evaluate`` loop, ``processPunctuation`` and
``processDigitArticle`` on answer dicts with distinct ``answer_id`` (as in the annotation files).
"""

import re

import pytest
from lmms_eval.tasks._task_utils.vqa_eval_metric import EvalAIAnswerProcessor

from mmq_eval.errors import MMQDataError
from mmq_eval.tasks import vqa

# ---- the transcription -------------------------------------------------------------------------
# Tables as in vqaEval.py (the 120-entry contraction table is lmms-eval's copy: checked equal to
# the official one entry by entry when this test was written).
CONTRACTIONS = EvalAIAnswerProcessor.CONTRACTIONS
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ["a", "an", "the"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _process_punctuation(in_text):
    out_text = in_text
    for p in PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return PERIOD_STRIP.sub("", out_text, re.UNICODE)  # sic: the flag lands in `count`


def _process_digit_article(in_text):
    out_text = []
    for word in in_text.lower().split():
        word = MANUAL_MAP.get(word, word)
        if word not in ARTICLES:
            out_text.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in out_text)


def official_accuracy(res_answer: str, gt_answers: list[str]) -> float:
    answers = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(gt_answers)]
    for ans in answers:
        ans["answer"] = ans["answer"].replace("\n", " ").replace("\t", " ").strip()
    res_ans = res_answer.replace("\n", " ").replace("\t", " ").strip()
    res_ans = _process_digit_article(_process_punctuation(res_ans))  # the server's processing of machine answers
    if len({ans["answer"] for ans in answers}) > 1:
        for ans in answers:
            ans["answer"] = _process_digit_article(_process_punctuation(ans["answer"]))
        res_ans = _process_digit_article(_process_punctuation(res_ans))
    gt_acc = []
    for datum in answers:
        others = [item for item in answers if item != datum]
        matching = [item for item in others if item["answer"] == res_ans]
        gt_acc.append(min(1, float(len(matching)) / 3))
    return float(sum(gt_acc)) / len(gt_acc)


# ---- the cases ---------------------------------------------------------------------------------
# (prediction, human answers, expected by hand)
CASES = [
    # contractions: disagreeing answers are normalised, "hes" -> "he's"; 4 matches -> every subset >= 3
    ("hes", ["he's"] * 4 + ["no"] * 6, 1.0),
    ("hes", ["he's"] * 10, 1.0),  # the prediction is always normalised
    ("he's", ["he's"] * 10, 1.0),
    # "dont" -> "don't", 3 matches: 3 subsets keep 2 (2/3), 7 keep 3 (1): (2 + 7) / 10
    ("dont", ["don't"] * 3 + ["no"] * 7, 0.9),
    # case
    ("Yes", ["yes"] * 10, 1.0),
    ("Yes", ["yes"] * 9 + ["no"], 1.0),
    # number words
    ("two", ["2"] * 10, 1.0),
    ("two", ["2"] * 6 + ["3"] * 4, 1.0),
    ("2", ["two"] * 5 + ["three"] * 5, 1.0),  # the answers are normalised too: five "2"
    # trailing period
    ("yes.", ["yes"] * 10, 1.0),
    ("yes.", ["yes"] * 8 + ["no"] * 2, 1.0),
    ("3.5", ["3.5"] * 4 + ["3"] * 6, 1.0),  # a decimal point stays
    # articles: 2 matches -> 2 subsets keep 1 (1/3), 8 keep 2 (2/3): (2/3 + 16/3) / 10
    ("a dog", ["dog"] * 2 + ["cat"] * 8, 0.6),
    ("the cat", ["cat"] * 10, 1.0),
    # punctuation: "-" between letters becomes a space; "?" is dropped next to a space
    ("t-shirt", ["t shirt"] * 4 + ["shirt"] * 6, 1.0),
    ("t-shirt", ["t-shirt"] * 10, 0.0),  # agreeing answers stay verbatim; the prediction became "t shirt"
    ("yes ?", ["yes"] * 5 + ["no"] * 5, 1.0),
    # commas in numbers: a digit-comma-digit drops every punctuation mark without a space
    ("1,000", ["1000"] * 3 + ["1,000"] * 7, 1.0),
    ("1,000", ["1,000"] * 10, 0.0),  # verbatim "1,000" against the processed "1000"
    ("1,,000", ["1000"] * 5 + ["1"] * 5, 0.0),  # no digit-comma-digit: "1  000" -> "1 000" (lmms-eval: 1.0)
    # whitespace and newlines: always stripped; inner runs of the prediction collapsed
    ("  yes\n", ["yes"] * 10, 1.0),
    ("red\tcar", ["red car"] * 10, 1.0),
    ("red  car", ["red car"] * 10, 1.0),
    ("red  car", ["red car"] * 9 + ["car"], 1.0),
    ("yes", [" yes", "yes\n"] + ["yes"] * 8, 1.0),  # the answers are stripped before the agreement test
    # fewer than ten answers
    ("blue", ["blue"] * 3, 2 / 3),  # each subset keeps 2 of 2
    ("blue", ["blue"] * 4, 1.0),
    ("blue", ["blue", "red", "blue"], 4 / 9),  # subsets keep 1, 2, 1 matches: (1/3 + 2/3 + 1/3) / 3
    ("blue", ["red", "green"], 0.0),
    # no match
    ("blue", ["red"] * 10, 0.0),
]


@pytest.mark.parametrize("prediction,answers,expected", CASES, ids=[f"{p!r}-{i}" for i, (p, _, _) in enumerate(CASES)])
def test_vqa_accuracy_equals_the_official_code(prediction, answers, expected):
    assert official_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)
    assert vqa.vqa_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_the_per_document_scores_are_the_official_ones():
    for i, (prediction, answers, expected) in enumerate(CASES):
        doc = {"question_id": i, "answers": answers}
        assert vqa.process_results(doc, [prediction]) == {"accuracy": pytest.approx(expected, abs=1e-12)}


def test_lmms_eval_processor_alone_differs_on_contractions():
    # why our scoring does not call EvalAIAnswerProcessor(): it splits "'s" off the human answers
    assert EvalAIAnswerProcessor()("he's") == "he 's"
    assert vqa.normalise_answer("he's") == "he's"


@pytest.mark.parametrize("answers", [[], ["red"]])
def test_fewer_than_two_answers_are_refused_naming_the_question(answers):
    with pytest.raises(MMQDataError, match=rf"^VQA question 7 has {len(answers)} human answer\(s\); the official "):
        vqa.process_results({"question_id": 7, "answers": answers}, ["red"])
    with pytest.raises(ValueError, match="at least 2 human answers"):
        vqa.vqa_accuracy("red", answers)
