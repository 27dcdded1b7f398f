"""Prompts: those of the tasks on prepared data sets (an unprepared data set fails here, by name),
and what a model that follows no instructions (BLIP-2) reads for lmms-eval's stock tasks."""

from __future__ import annotations

from mmq_eval.data.layout import raise_if_unprepared

#: BLIP-2's VQA prompt in the seed code and LAVIS (``prompt="Question: {} Short answer:"``).
BLIP2_VQA_PROMPT = "Question: {} Short answer:"

#: Captioning instructions of lmms-eval's stock tasks (the ``coco_cap`` members, ``flickr30k_test``).
STOCK_CAPTION_INSTRUCTIONS = ("Provide a one-sentence caption for the provided image.",)

#: Answer-format instructions lmms-eval's stock VQA tasks append to the question (``vqav2_val``,
#: ``gqa``, ``textvqa_val``, ``pope``, ``mme``; ``ok_vqa_val2014``'s longer one first).
STOCK_VQA_INSTRUCTIONS = (
    "When the provided information is insufficient, respond with 'Unanswerable'.\n"
    "Answer the question using a single word or phrase.",
    "Answer the question using a single word or phrase.",
    "Answer the question with Yes or No.",
)

#: ``prompt_style`` model arg: ``auto`` maps stock instructions for models that follow none;
#: ``raw`` passes every task's text unchanged.
PROMPT_STYLES = ("auto", "raw")


def caption_prompt(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The model family's captioning ``prompt`` (empty for BLIP-2)."""
    raise_if_unprepared(doc)
    return (lmms_eval_specific_kwargs or {}).get("prompt", "")


def vqa_prompt(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """``{pre_prompt}{question}{post_prompt}``; BLIP-2's default is ``Question: {q} Short answer:``."""
    raise_if_unprepared(doc)
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', 'Question: ')}{doc['question']}{kwargs.get('post_prompt', ' Short answer:')}"


def uninstructed_prompt(text: str) -> tuple[str, str | None]:
    """What a model that follows no instructions (BLIP-2) reads for the task text `text`, and the
    stock instruction that was replaced (None when `text` is kept).

    A stock captioning instruction becomes BLIP-2's captioning input, the image alone (empty text,
    as the seed code and the mmq captioning tasks); a question followed by a stock answer-format
    instruction becomes ``Question: {question} Short answer:`` (``BLIP2_VQA_PROMPT``).
    """
    text = text.strip()
    if text in STOCK_CAPTION_INSTRUCTIONS:
        return "", text
    for instruction in STOCK_VQA_INSTRUCTIONS:
        if text.endswith(instruction) and len(text) > len(instruction):
            return BLIP2_VQA_PROMPT.format(text[: -len(instruction)].strip()), instruction
    return text, None
