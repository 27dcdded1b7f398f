"""Document helpers of the embedded ``mmq_shapes_*`` tasks."""

from __future__ import annotations

from mmq_eval.data.images import decode_image


def doc_to_visual(doc: dict) -> list:
    """The document's image, as RGB."""
    return [decode_image(doc["image"], f"shapes image {doc.get('image_id')!r}",
                         "the shipped test file is damaged: reinstall mmq-eval, or rewrite the files with "
                         "python -m mmq_eval.shapes.export")]


def caption_prompt(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """Captioning prompt: the model family's ``prompt`` (empty for BLIP-2)."""
    return (lmms_eval_specific_kwargs or {}).get("prompt", "")


def vqa_prompt(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """``{pre_prompt}{question}{post_prompt}``; BLIP-2's default is ``Question: {q} Answer:``."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', 'Question: ')}{doc['question']}{kwargs.get('post_prompt', ' Answer:')}"
