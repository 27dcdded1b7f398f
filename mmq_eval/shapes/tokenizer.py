"""Offline word-level tokenizer and BLIP-2 processor for the shapes world."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import Blip2Processor, BlipImageProcessorPil, PreTrainedTokenizerFast

from mmq_eval.shapes.world import IMAGE_SIZE, vocabulary

SPECIAL_TOKENS = ("<pad>", "<unk>", "</s>", "<image>")  # ids 0, 1, 2, 3
PUNCTUATION = (":", "?", ".", ",")
NUM_QUERY_TOKENS = 8


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the world's vocabulary; bos = eos = "</s>", left padding."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(vocabulary()) + PUNCTUATION)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="</s>",
        eos_token="</s>",
        additional_special_tokens=["<image>"],
        padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Blip2Processor:
    """Blip2Processor: 64x64 images normalised with mean/std 0.5, 8 image tokens per prompt."""
    image_processor = BlipImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Blip2Processor(
        image_processor, tokenizer or build_tokenizer(), num_query_tokens=NUM_QUERY_TOKENS
    )
