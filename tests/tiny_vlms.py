"""Tiny random chat VLMs built from configs, with processors built in code (no download):
Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, LLaVA-NeXT and InternVL (-hf)."""

from __future__ import annotations

import torch
import transformers as T
from PIL import Image
from tiny_models import IMAGE_SIZE, tiny_tokenizer

from mmq_eval.models.image_only import ImageOnlyVideoProcessor, allow_processors_without_torchvision

PATCH = 8
_TEXT = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=2)
_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def chat_template(image: str) -> str:
    """A ChatML-like template whose image placeholder is `image`; the answer ends with </s>."""
    return (
        "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}" + image + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
        "{% if m['role'] == 'assistant' %}</s>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )


def _tokenizer(*specials: str, **extra):
    tok = tiny_tokenizer()
    tok.add_tokens(["user", "assistant", "\n"])
    tok.add_special_tokens({"additional_special_tokens": ["<image>", *specials]}, replace_extra_special_tokens=False)
    for name, value in extra.items():
        setattr(tok, name, value)
    return tok


def _qwen_tokenizer():
    return _tokenizer("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen_ids(tok) -> dict:
    ids = tok.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])
    return dict(zip(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"), ids))


def _qwen_processor(cls, tok):
    allow_processors_without_torchvision()
    image_processor = T.Qwen2VLImageProcessorPil(min_pixels=IMAGE_SIZE**2, max_pixels=IMAGE_SIZE**2, patch_size=PATCH,
                                                 temporal_patch_size=2, merge_size=2,
                                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return cls(image_processor=image_processor, tokenizer=tok, video_processor=ImageOnlyVideoProcessor(),
               chat_template=chat_template(_QWEN_IMAGE))


def _rope(section):
    return {"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0}


def qwen2_vl():
    tok = _qwen_tokenizer()
    config = T.Qwen2VLConfig(
        vision_config=dict(depth=3, embed_dim=32, hidden_size=48, num_heads=2, mlp_ratio=2, patch_size=PATCH,
                           spatial_merge_size=2, temporal_patch_size=2),
        text_config=dict(_TEXT, vocab_size=len(tok), rope_parameters=_rope([4, 4, 4])), **_qwen_ids(tok))
    return T.Qwen2VLForConditionalGeneration(config), _qwen_processor(T.Qwen2VLProcessor, tok)


def qwen2_5_vl():
    """Depth 3 with full attention only in block 1: blocks 0 and 2 attend within windows of one
    merged 2×2 patch group (4 windows per 32×32 image)."""
    tok = _qwen_tokenizer()
    config = T.Qwen2_5_VLConfig(
        vision_config=dict(depth=3, hidden_size=32, out_hidden_size=48, intermediate_size=40, num_heads=2,
                           patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2,
                           fullatt_block_indexes=[1], window_size=2 * PATCH),
        text_config=dict(_TEXT, vocab_size=len(tok), rope_parameters=_rope([4, 4, 4])), **_qwen_ids(tok))
    return T.Qwen2_5_VLForConditionalGeneration(config), _qwen_processor(T.Qwen2_5_VLProcessor, tok)


def qwen3_vl():
    tok = _qwen_tokenizer()
    config = T.Qwen3VLConfig(
        vision_config=dict(depth=3, hidden_size=32, out_hidden_size=48, intermediate_size=64, num_heads=2,
                           patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2,
                           deepstack_visual_indexes=[0, 1], num_position_embeddings=(IMAGE_SIZE // PATCH) ** 2),
        text_config=dict(_TEXT, vocab_size=len(tok), head_dim=24, rope_parameters=_rope([4, 4, 4])),
        **_qwen_ids(tok))
    return T.Qwen3VLForConditionalGeneration(config), _qwen_processor(T.Qwen3VLProcessor, tok)


def _clip_like(model_type: str) -> dict:
    vision = dict(model_type=model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH)
    return vision | ({"vision_use_head": False} if model_type == "siglip_vision_model" else {"projection_dim": 32})


def llava_onevision():
    tok = _tokenizer("<video>")
    config = T.LlavaOnevisionConfig(
        vision_config=_clip_like("siglip_vision_model"), text_config=dict(_TEXT, model_type="qwen2", vocab_size=len(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]])
    image_processor = T.LlavaOnevisionImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    allow_processors_without_torchvision()
    processor = T.LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=ImageOnlyVideoProcessor(),
        num_image_tokens=(IMAGE_SIZE // PATCH) ** 2, vision_feature_select_strategy="full",
        chat_template=chat_template("<image>"))
    return T.LlavaOnevisionForConditionalGeneration(config), processor


def llava_next():
    tok = _tokenizer()
    config = T.LlavaNextConfig(
        vision_config=_clip_like("clip_vision_model"), text_config=dict(_TEXT, model_type="llama", vocab_size=len(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]])
    image_processor = T.LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]], image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = T.LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat_template("<image>"))
    return T.LlavaNextForConditionalGeneration(config), processor


def internvl():
    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    base = _tokenizer(*named.values())  # named image tokens as InternVL-hf tokenizers declare them
    tok = T.PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, pad_token="<pad>", unk_token="<unk>",
                                    bos_token="</s>", eos_token="</s>", padding_side="left",
                                    extra_special_tokens=named)
    config = T.InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=[IMAGE_SIZE, IMAGE_SIZE], patch_size=[PATCH, PATCH]),
        text_config=dict(_TEXT, model_type="qwen2", vocab_size=len(tok)),
        image_token_id=tok.context_image_token_id, vision_feature_layer=-1)
    image_processor = T.GotOcr2ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, crop_to_patches=False,
                                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
    allow_processors_without_torchvision()
    processor = T.InternVLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=ImageOnlyVideoProcessor(),
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2 // 4, chat_template=chat_template("<IMG_CONTEXT>"))
    return T.InternVLForConditionalGeneration(config), processor


BUILDERS = {"Qwen2VLForConditionalGeneration": qwen2_vl, "Qwen2_5_VLForConditionalGeneration": qwen2_5_vl,
            "Qwen3VLForConditionalGeneration": qwen3_vl, "LlavaOnevisionForConditionalGeneration": llava_onevision,
            "LlavaNextForConditionalGeneration": llava_next, "InternVLForConditionalGeneration": internvl}


def make_tiny_vlm(arch: str, seed: int = 0):
    """(model, processor) of a tiny random `arch` with non-degenerate weights."""
    torch.manual_seed(seed)
    model, processor = BUILDERS[arch]()
    return model.eval(), processor


def chat_batches(processor, n_batches: int = 2, batch_size: int = 4, seed: int = 0) -> list[dict]:
    """Calibration-like batches: one random-colour image each, a question in the chat template and
    an answer of different lengths (so the left padding varies)."""
    gen = torch.Generator().manual_seed(seed)
    words = ["red", "green", "blue", "circle", "square", "a", "big", "small"]
    batches = []
    for _ in range(n_batches):
        images, texts = [], []
        for _ in range(batch_size):
            rgb = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=gen))
            images.append(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), rgb))
            answer = " ".join(words[int(i)] for i in torch.randint(0, len(words), (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen))
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color"}]}]
            texts.append(processor.apply_chat_template(messages, add_generation_prompt=True) + " " + answer)
        batches.append(dict(processor(images=images, text=texts, return_tensors="pt", padding=True)))
    return batches
