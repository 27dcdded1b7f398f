"""The tiny Qwen2-VL (ViT with 2D RoPE + 2x2 patch merger + Qwen2 LLM with M-RoPE) for the shapes world.

It is a real ``Qwen2VLForConditionalGeneration`` with Qwen2-VL's wiring: the image processor cuts
a 64x64 image into 8x8 patches (each repeated over ``temporal_patch_size=2`` frames, as Qwen2-VL
does for still images), the ViT sees the 8x8 = 64 patches, the merger joins each 2x2 block into
one LLM token (16 image tokens per image, ``<|image_pad|>`` in the prompt), and the LLM places them
with 3D (temporal, height, width) rotary positions. Prompts follow Qwen2-VL's ChatML format,
``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{text}<|im_end|>\\n<|im_start|>assistant\\n``
(without the default system turn), with LLaVA-1.5's captioning / short-answer instructions, so
the shapes tasks' LLaVA prompts fit; every answer ends with ``<|im_end|>``.

The tokenizer is word-level over the world's vocabulary (no network, no hub tokenizer) and
carries Qwen2-VL's special tokens; ``<|endoftext|>`` pads, ``<|im_end|>`` ends a turn.

The processor is transformers' own ``Qwen2VLProcessor``; without torchvision it stands up
image-only (``mmq_eval.models.image_only``), and a saved checkpoint reloads with
``AutoProcessor.from_pretrained`` after ``allow_processors_without_torchvision()`` (which
``mmq_eval.models.loading.load_processor`` and the lmms-eval models call).
"""

from __future__ import annotations

import torch
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from mmq_eval.models.image_only import ImageOnlyVideoProcessor, allow_processors_without_torchvision
from mmq_eval.shapes.llava_model import (
    CAPTION_INSTRUCTION,
    CHAT_WORDS,
    NEWLINE,
    VQA_INSTRUCTION,
    user_prompt,  # the same one-image user turn, through this processor's template
)
from mmq_eval.shapes.tokenizer import PUNCTUATION
from mmq_eval.shapes.world import IMAGE_SIZE, vocabulary

__all__ = [
    "CAPTION_INSTRUCTION",
    "IMAGE_TOKEN",
    "NUM_IMAGE_TOKENS",
    "QWEN2VL_CHAT_TEMPLATE",
    "VQA_INSTRUCTION",
    "build_qwen2vl_processor",
    "build_qwen2vl_tokenizer",
    "build_shapes_qwen2vl",
    "shapes_qwen2vl_config",
    "user_prompt",
]

PATCH_SIZE = 8
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
# min_pixels = max_pixels = 64*64: smart_resize keeps 64x64 images at 64x64 (a multiple of
# patch * merge = 16) and brings any other image to about 4,096 pixels
IMAGE_PIXELS = IMAGE_SIZE * IMAGE_SIZE
GRID = IMAGE_SIZE // PATCH_SIZE  # 8x8 patches enter the ViT
NUM_IMAGE_TOKENS = (GRID // MERGE_SIZE) ** 2  # 16 merged tokens reach the LLM

# Qwen2-VL's special tokens (same strings; ids are this tokenizer's own)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_TOKEN, VIDEO_TOKEN)
UNK = "<unk>"  # a word-level tokenizer needs one (Qwen's byte-level BPE does not)

# Qwen2-VL's template, minus the default "You are a helpful assistant." system turn
QWEN2VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VISION = dict(
    depth=3, embed_dim=64, num_heads=4, mlp_ratio=4, hidden_act="quick_gelu", in_channels=3,
    patch_size=PATCH_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE, spatial_merge_size=MERGE_SIZE,
    initializer_range=0.02,
)
# LLM rope_theta 10 and mrope_section [2, 5, 5] of head_dim/2 = 12 (Qwen2-VL: 1e6, [16, 24, 24] of
# 64). M-RoPE gives the height and width sections the lowest frequencies, and at theta 1e6 those
# barely turn across the 4x4 grid of merged image tokens. Trained the same way (10 CPU minutes,
# seed 0): theta 1e6 with [4, 4, 4] reached CIDEr 4.44 / VQA 0.646, theta 10 with [2, 5, 5]
# CIDEr 5.48 / VQA 0.738. Text positions stay below ~50, within the slowest frequency's period.
TEXT = dict(
    hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.02,
    rms_norm_eps=1e-6, use_sliding_window=False, hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 10.0, "mrope_section": [2, 5, 5]},
)


def build_qwen2vl_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer: world words, punctuation, "-", chat words, ``<unk>``, then Qwen2-VL's
    special tokens and the newline; no bos (as Qwen2), eos ``<|im_end|>``, pad ``<|endoftext|>``,
    left padding.
    """
    words = sorted(set(CHAT_WORDS + ["system"]) - set(vocabulary()))
    tokens = tuple(vocabulary()) + PUNCTUATION + ("-",) + tuple(words) + (UNK,) + SPECIAL_TOKENS
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=ENDOFTEXT,
        unk_token=UNK,
        eos_token=IM_END,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (ENDOFTEXT, IM_END)],
        padding_side="left",
    )
    # the newlines of the ChatML format and of "{question}\n" (whitespace would be dropped)
    fast.add_tokens([AddedToken(NEWLINE, normalized=False, special=False)])
    return fast


def build_qwen2vl_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen2VLProcessor:
    """64x64 images (mean/std 0.5) as 64 patches of 8x8x2 frames, 16 image tokens, ChatML template."""
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=IMAGE_PIXELS,
        max_pixels=IMAGE_PIXELS,
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    allow_processors_without_torchvision()
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or build_qwen2vl_tokenizer(),
        video_processor=ImageOnlyVideoProcessor(),
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )


def shapes_qwen2vl_config(tokenizer: PreTrainedTokenizerFast, **overrides: dict) -> Qwen2VLConfig:
    """Qwen2-VL config sized for the shapes world; `overrides` update "vision" / "text"."""
    sub = {"vision": dict(VISION), "text": dict(TEXT)}
    for name, values in overrides.items():
        sub[name].update(values)
    ids = tokenizer.convert_tokens_to_ids
    sub["vision"]["hidden_size"] = sub["text"]["hidden_size"]  # the merger's output width
    sub["text"].update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=ids(ENDOFTEXT),  # as Qwen2-VL's config (the tokenizer adds no bos)
        eos_token_id=tokenizer.eos_token_id,
    )
    return Qwen2VLConfig(
        vision_config=sub["vision"],
        text_config=sub["text"],
        image_token_id=ids(IMAGE_TOKEN),
        video_token_id=ids(VIDEO_TOKEN),
        vision_start_token_id=ids(VISION_START),
        vision_end_token_id=ids(VISION_END),
        tie_word_embeddings=False,
    )


def build_shapes_qwen2vl(
    tokenizer: PreTrainedTokenizerFast, seed: int, **overrides: dict
) -> Qwen2VLForConditionalGeneration:
    """A freshly initialised shapes Qwen2-VL; greedy generation that stops at ``<|im_end|>``
    (or ``<|endoftext|>``), as Qwen2-VL-Instruct's generation config."""
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(shapes_qwen2vl_config(tokenizer, **overrides))
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    gen.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    gen.do_sample = False
    return model
