"""Tiny randomly initialised models built from configs, for tests (no download, no network)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessorPil,
    PreTrainedTokenizerFast,
)

TINY_WORDS = (
    "a an the red green blue yellow circle square triangle big small left right of above below "
    "and one two three what color shape is are there how many question answer yes no photo"
).split()
NUM_QUERY_TOKENS = 4
IMAGE_SIZE = 32


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over TINY_WORDS with OPT-style special tokens and an <image> token."""
    specials = ["<pad>", "<unk>", "</s>", "<image>"]
    vocab = {tok: i for i, tok in enumerate(specials + TINY_WORDS + [":", "?", ".", ","])}
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
    return fast


def tiny_blip2_config(vocab_size: int, image_token_index: int, llm: str = "opt") -> Blip2Config:
    """A 2-layer ViT / Q-Former / LLM BLIP-2 config small enough for unit tests."""
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.02,
    )
    qformer = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        encoder_hidden_size=32, cross_attention_frequency=2,
    )
    if llm == "opt":
        text = dict(
            model_type="opt", hidden_size=48, ffn_dim=96, num_hidden_layers=3, num_attention_heads=2,
            vocab_size=vocab_size, max_position_embeddings=128, word_embed_proj_dim=48,
            pad_token_id=0, bos_token_id=2, eos_token_id=2,
        )
    elif llm == "t5":
        text = dict(
            model_type="t5", d_model=48, d_ff=96, d_kv=24, num_layers=2, num_decoder_layers=2,
            num_heads=2, vocab_size=vocab_size, feed_forward_proj="gated-gelu",
            pad_token_id=0, eos_token_id=2, decoder_start_token_id=0, tie_word_embeddings=False,
        )
    else:
        raise ValueError(llm)
    return Blip2Config(
        vision_config=vision, qformer_config=qformer, text_config=text,
        num_query_tokens=NUM_QUERY_TOKENS, image_token_index=image_token_index,
    )


def tiny_blip_image_processor() -> BlipImageProcessorPil:
    """BLIP-2's image processor at the tiny models' image size."""
    return BlipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )


def make_tiny_blip2(seed: int = 0, llm: str = "opt"):
    """Return (model, processor) for a tiny random BLIP-2 with non-degenerate weights."""
    tokenizer = tiny_tokenizer()
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    config = tiny_blip2_config(len(tokenizer), image_token_index, llm=llm)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.5)
        if llm == "t5":  # keep a random T5 from ending (or padding) at once, so tests see text
            model.language_model.lm_head.weight[:4] = 0.0
    processor = Blip2Processor(tiny_blip_image_processor(), tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    return model, processor


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def make_tiny_llava(seed: int = 0):
    """Return (model, processor) for a tiny random LLaVA-1.5 (CLIP ViT + MLP projector + Llama)."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["USER", "ASSISTANT", "\n"])
    image_token_index = tokenizer.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8, projection_dim=32,
        ),
        text_config=dict(
            model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tokenizer),
            max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=2,
        ),
        image_token_index=image_token_index, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor


def make_tiny_blip2_itm(seed: int = 0):
    """Return (model, processor) for a tiny random BLIP-2 retrieval model (ITC + ITM heads).

    The model is ``quant_tiny.make_tiny_itm``'s; its Q-Former text stream reads the tiny tokenizer.
    """
    from quant_tiny import ITM_VOCAB, make_tiny_itm

    tokenizer = tiny_tokenizer()
    assert len(tokenizer) <= ITM_VOCAB
    return make_tiny_itm(seed), Blip2Processor(tiny_blip_image_processor(), tokenizer)
