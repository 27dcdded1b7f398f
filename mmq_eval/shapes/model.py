"""The tiny BLIP-2 (ViT + Q-Former + OPT) trained on the shapes world."""

from __future__ import annotations

import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, PreTrainedTokenizerFast

from mmq_eval.shapes.tokenizer import NUM_QUERY_TOKENS
from mmq_eval.shapes.world import IMAGE_SIZE

VISION = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.02,
)
QFORMER = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    encoder_hidden_size=64, cross_attention_frequency=1,
)
TEXT = dict(
    model_type="opt", hidden_size=96, ffn_dim=192, num_hidden_layers=3, num_attention_heads=4,
    max_position_embeddings=256, word_embed_proj_dim=96,
)


def shapes_blip2_config(tokenizer: PreTrainedTokenizerFast, **overrides: dict) -> Blip2Config:
    """BLIP-2 config sized for the shapes world; `overrides` replace whole sub-config entries."""
    sub = {"vision": dict(VISION), "qformer": dict(QFORMER), "text": dict(TEXT)}
    for name, values in overrides.items():
        sub[name].update(values)
    sub["text"].update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return Blip2Config(
        vision_config=sub["vision"],
        qformer_config=sub["qformer"],
        text_config=sub["text"],
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )


def build_shapes_blip2(
    tokenizer: PreTrainedTokenizerFast, seed: int, **overrides: dict
) -> Blip2ForConditionalGeneration:
    """A freshly initialised shapes BLIP-2 (non-zero ViT init, random query tokens)."""
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(shapes_blip2_config(tokenizer, **overrides))
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.1)
    return model
