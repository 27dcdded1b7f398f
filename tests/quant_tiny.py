"""Tiny models and calibration batches for the quantization tests (random weights, no processor)."""

from __future__ import annotations

import torch
from tiny_models import IMAGE_SIZE, make_tiny_blip2, make_tiny_llava
from transformers import Blip2Config, Blip2ForImageTextRetrieval

LLAVA_IMAGE_TOKENS = (IMAGE_SIZE // 8) ** 2  # patches; the CLS token is dropped ("default" strategy)
ITM_VOCAB = 50


def make_tiny_itm(seed: int = 0) -> Blip2ForImageTextRetrieval:
    """3-block ViT + 3-block Q-Former with its text stream, ITC/ITM heads."""
    config = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                       "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 8,
                       "initializer_range": 0.02},
        qformer_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                        "num_attention_heads": 2, "encoder_hidden_size": 32, "cross_attention_frequency": 2,
                        "use_qformer_text_input": True, "vocab_size": ITM_VOCAB, "max_position_embeddings": 64},
        num_query_tokens=4, image_text_hidden_size=16,
    )
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.5)
    return model


def _pixels(gen: torch.Generator, n: int) -> torch.Tensor:
    return torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)


def _left_padded(gen: torch.Generator, n: int, length: int, vocab: tuple[int, int]) -> tuple:
    ids = torch.randint(vocab[0], vocab[1], (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    for i in range(n):
        pad = int(torch.randint(0, length // 2, (1,), generator=gen))
        ids[i, :pad], mask[i, :pad] = 0, 0
    return ids, mask


def llava_batches(config, n_batches: int = 2, batch_size: int = 4, seed: int = 0) -> list[dict]:
    """Left-padded random prompts around the image tokens of a tiny LLaVA `config`."""
    gen = torch.Generator().manual_seed(seed)
    image_token = config.image_token_index
    out = []
    for _ in range(n_batches):
        ids, mask = _left_padded(gen, batch_size, 8, (image_token + 1, config.text_config.vocab_size))
        image = torch.full((batch_size, LLAVA_IMAGE_TOKENS), image_token)
        out.append({"pixel_values": _pixels(gen, batch_size),
                    "input_ids": torch.cat([ids[:, :2], image, ids[:, 2:]], 1),
                    "attention_mask": torch.cat([mask[:, :2], torch.ones_like(image), mask[:, 2:]], 1)})
    return out


def itm_batches(n_batches: int = 2, batch_size: int = 4, seed: int = 0, itm_head: bool = False) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(3, ITM_VOCAB, (batch_size, 7), generator=gen)
        batch = {"pixel_values": _pixels(gen, batch_size), "input_ids": ids,
                 "attention_mask": torch.ones_like(ids)}
        if itm_head:
            batch["use_image_text_matching_head"] = True
        out.append(batch)
    return out


def blip2_batches(processor, llm: str = "opt", n_batches: int = 2, batch_size: int = 4, seed: int = 0) -> list[dict]:
    """Processor-made batches (images + prompts); T5 also gets decoder_input_ids."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    texts = ["a red circle", "what color is the big square ?", "two blue squares above a triangle",
             "how many shapes are there ?", "a small green triangle", "question : what shape is left ?"]
    out = []
    for b in range(n_batches):
        images = [Image.fromarray((torch.rand(IMAGE_SIZE, IMAGE_SIZE, 3, generator=gen) * 255).byte().numpy())
                  for _ in range(batch_size)]
        prompts = [texts[(b * batch_size + i) % len(texts)] for i in range(batch_size)]
        batch = dict(processor(images=images, text=prompts, return_tensors="pt", padding=True))
        if llm == "t5":
            batch["decoder_input_ids"] = batch["input_ids"][:, -4:].contiguous()
        out.append(batch)
    return out


__all__ = ["blip2_batches", "itm_batches", "llava_batches", "make_tiny_blip2", "make_tiny_itm", "make_tiny_llava"]
