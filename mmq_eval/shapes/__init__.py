"""The embedded "shapes" world and its tiny trained BLIP-2, the offline default of mmq-eval."""

from mmq_eval.shapes.world import (
    CAPTION_PROMPT,
    SPLIT_SEEDS,
    VQA_PROMPT,
    Scene,
    Shape,
    VQAItem,
    calibration_examples,
    canonical_caption,
    captions,
    make_scene,
    make_scenes,
    render,
    vqa_items,
)

__all__ = [
    "CAPTION_PROMPT",
    "SPLIT_SEEDS",
    "VQA_PROMPT",
    "Scene",
    "Shape",
    "VQAItem",
    "calibration_examples",
    "canonical_caption",
    "captions",
    "make_scene",
    "make_scenes",
    "render",
    "vqa_items",
]
