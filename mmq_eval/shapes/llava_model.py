"""The tiny LLaVA-1.5 (CLIP ViT + GELU MLP projector + Llama) for the shapes world.

It is a real ``LlavaForConditionalGeneration`` with LLaVA-1.5's wiring: image features come
from the second-to-last ViT layer (``vision_feature_layer=-2``) with the CLS token dropped
(``vision_feature_select_strategy="default"``), so the last ViT layer never affects outputs,
exactly as in ``llava-hf/llava-1.5-7b-hf``. Prompts follow LLaVA-1.5's chat format
``USER: <image>\\n{text} ASSISTANT:`` and its captioning / short-answer instructions.
"""

from __future__ import annotations

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from mmq_eval.shapes.tokenizer import PUNCTUATION, SPECIAL_TOKENS
from mmq_eval.shapes.world import IMAGE_SIZE, vocabulary

PATCH_SIZE = 8
# 8x8 patches + CLS, minus the CLS that the "default" strategy drops
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2

# LLaVA-1.5's own instructions (the lmms-eval task YAMLs for mmq_llava use the same text)
CAPTION_INSTRUCTION = "Provide a one-sentence caption for the provided image."
VQA_INSTRUCTION = "{question}\nAnswer the question using a single word or phrase."

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# words of the chat format and of the two instructions that the world's vocabulary lacks
CHAT_WORDS = ["user", "assistant", "provide", "one", "sentence", "caption", "for", "the", "provided", "image", "answer", "question", "using", "a", "single", "word", "or", "phrase"]
NEWLINE = "\n"

VISION = dict(
    model_type="clip_vision_model", hidden_size=64, intermediate_size=256, num_hidden_layers=3,
    num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=64,
    hidden_act="quick_gelu", initializer_range=0.02, initializer_factor=1.0,
)
TEXT = dict(
    model_type="llama", hidden_size=96, intermediate_size=256, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
    initializer_range=0.02, rms_norm_eps=1e-5, tie_word_embeddings=False,
)


def build_llava_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer: the BLIP-2 one's ids (pad 0, unk 1, eos 2, <image> 3, world words,
    punctuation) plus the chat words and "-", and a newline token; bos = eos = "</s>", left padding.
    """
    words = sorted(set(CHAT_WORDS) - set(vocabulary()))
    tokens = SPECIAL_TOKENS + tuple(vocabulary()) + PUNCTUATION + ("-",) + tuple(words)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", vocab["</s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="</s>",
        eos_token="</s>",
        additional_special_tokens=["<image>"],
        padding_side="left",
    )
    # the newline of "<image>\n" and "{question}\n" (whitespace would otherwise be dropped)
    fast.add_tokens([AddedToken(NEWLINE, normalized=False, special=False)])
    return fast


def build_llava_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaProcessor:
    """LlavaProcessor: CLIP-style 64x64 images (mean/std 0.5), 64 image tokens, chat template."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer or build_llava_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def user_prompt(processor: LlavaProcessor, text: str) -> str:
    """The chat-template prompt for one user turn (one image, then `text`) and the assistant cue."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def shapes_llava_config(tokenizer: PreTrainedTokenizerFast, **overrides: dict) -> LlavaConfig:
    """LLaVA-1.5-style config sized for the shapes world; `overrides` update "vision" / "text"."""
    sub = {"vision": dict(VISION), "text": dict(TEXT)}
    for name, values in overrides.items():
        sub[name].update(values)
    sub["text"].update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlavaConfig(
        vision_config=sub["vision"],
        text_config=sub["text"],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=NUM_IMAGE_TOKENS,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


def build_shapes_llava(
    tokenizer: PreTrainedTokenizerFast, seed: int, **overrides: dict
) -> LlavaForConditionalGeneration:
    """A freshly initialised shapes LLaVA (CLIP / Llama initialisers, greedy generation config)."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(shapes_llava_config(tokenizer, **overrides))
    gen = model.generation_config
    gen.pad_token_id = tokenizer.pad_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.do_sample = False
    return model
