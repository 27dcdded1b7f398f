"""Prompts of the tasks on prepared data sets; an unprepared data set fails here, by name."""

from __future__ import annotations

from mmq_eval.data.layout import raise_if_unprepared


def caption_prompt(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The model family's captioning ``prompt`` (empty for BLIP-2)."""
    raise_if_unprepared(doc)
    return (lmms_eval_specific_kwargs or {}).get("prompt", "")


def vqa_prompt(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """``{pre_prompt}{question}{post_prompt}``; BLIP-2's default is ``Question: {q} Answer:``."""
    raise_if_unprepared(doc)
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', 'Question: ')}{doc['question']}{kwargs.get('post_prompt', ' Answer:')}"
