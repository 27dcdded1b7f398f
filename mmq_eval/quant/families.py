"""The registered model families and block kinds (transformers 5.x module paths).

Adding a family: its block kinds (if new) and one `Family` entry here, plus its lmms-eval
wrapper under ``mmq_eval/models/`` (see ``docs/architecture.md``). AWQ mappings are listed in
the order the scale searches run (a later search reads weights an earlier fold changed).
"""

from __future__ import annotations

from mmq_eval.quant.registry import (
    ACTIVATION,
    ATTENTION,
    CARRY_T5,
    GATE,
    NORM,
    BlockKind,
    ByConfig,
    ComponentDef,
    Family,
    ScaleMapping,
    StackDef,
    register_block_kind,
    register_family,
)

M = ScaleMapping

# ---- block kinds ------------------------------------------------------------------------------

register_block_kind(BlockKind(  # Blip2EncoderLayer: fused qkv, GELU MLP
    "blip2_vit", attn=("self_attn",), mlp=("mlp",), qk=("self_attn.qkv",),
    awq=(M("layer_norm1", ("self_attn.qkv",), NORM),
         M("self_attn.qkv", ("self_attn.projection",), ATTENTION, rows="v_of_qkv"),
         M("layer_norm2", ("mlp.fc1",), NORM)),
))

register_block_kind(BlockKind(  # Blip2QFormerLayer: post-norm (no norm folds), GELU MLPs
    "qformer", attn=("attention", "crossattention"),
    mlp=("intermediate_query", "output_query", "intermediate", "output"),
    qk=("attention.attention.query", "attention.attention.key",
        "crossattention.attention.query", "crossattention.attention.key"),
    awq=(M("attention.attention.value", ("attention.output.dense",), ATTENTION),
         M("crossattention.attention.value", ("crossattention.output.dense",), ATTENTION, optional=True)),
))

register_block_kind(BlockKind(  # OPTDecoderLayer: pre-norm only when do_layer_norm_before; ReLU MLP
    "opt", attn=("self_attn",), mlp=("fc1", "fc2"), qk=("self_attn.q_proj", "self_attn.k_proj"),
    awq=(M("self_attn.v_proj", ("self_attn.out_proj",), ATTENTION),
         M("self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), NORM,
           requires="do_layer_norm_before"),
         M("final_layer_norm", ("fc1",), NORM, requires="do_layer_norm_before"),
         M("fc1", ("fc2",), ACTIVATION, activation="activation_fn")),
))


def _t5_kind(name: str, cross: bool) -> BlockKind:
    """T5Block: self-attention, (decoder) cross-attention, then a gated or plain MLP."""
    a, c = "layer.0.SelfAttention", "layer.1.EncDecAttention"
    ff = f"layer.{2 if cross else 1}"
    d = f"{ff}.DenseReluDense"
    attn_maps = (M("layer.0.layer_norm", (f"{a}.q", f"{a}.k", f"{a}.v"), NORM), M(f"{a}.v", (f"{a}.o",), ATTENTION))
    if cross:
        attn_maps += (M("layer.1.layer_norm", (f"{c}.q",), NORM), M(f"{c}.v", (f"{c}.o",), ATTENTION))
    mlp_maps = (M(f"{ff}.layer_norm", (f"{d}.wi_0", f"{d}.wi_1"), NORM, optional=True),
                M(f"{d}.wi_1", (f"{d}.wo",), GATE, optional=True),
                M(f"{ff}.layer_norm", (f"{d}.wi",), NORM, optional=True),
                M(f"{d}.wi", (f"{d}.wo",), ACTIVATION, activation=f"{d}.act", optional=True))
    return BlockKind(
        name, attn=(a, c) if cross else (a,), mlp=(d,),
        qk=(f"{a}.q", f"{a}.k") + ((f"{c}.q", f"{c}.k") if cross else ()),
        awq=attn_maps + mlp_maps, carry=CARRY_T5,
    )


register_block_kind(_t5_kind("t5_encoder", cross=False))
register_block_kind(_t5_kind("t5_decoder", cross=True))

register_block_kind(BlockKind(  # CLIPEncoderLayer, SiglipEncoderLayer: pre-norm, GELU MLP
    "clip", attn=("self_attn",), mlp=("mlp",), qk=("self_attn.q_proj", "self_attn.k_proj"),
    awq=(M("layer_norm1", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), NORM),
         M("self_attn.v_proj", ("self_attn.out_proj",), ATTENTION),
         M("layer_norm2", ("mlp.fc1",), NORM)),
))

register_block_kind(BlockKind(  # LlamaDecoderLayer (also Mistral, Qwen2, Qwen3): RMSNorm, gated MLP
    "llama", attn=("self_attn",), mlp=("mlp",), qk=("self_attn.q_proj", "self_attn.k_proj"),
    awq=(M("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), NORM),
         M("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), NORM),
         M("mlp.up_proj", ("mlp.down_proj",), GATE),
         M("self_attn.v_proj", ("self_attn.o_proj",), ATTENTION)),  # skipped under GQA (widths differ)
))

def _qwen_vision_kind(name: str, mlp: tuple[str, ...], norm2_feeds: tuple[str, ...], gated: bool) -> BlockKind:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision block: pre-norm, fused qkv (v = last third), MLP."""
    maps = (M("norm1", ("attn.qkv",), NORM),
            M("attn.qkv", ("attn.proj",), ATTENTION, rows="v_of_qkv"),
            M("norm2", norm2_feeds, NORM))
    if gated:
        maps += (M("mlp.up_proj", ("mlp.down_proj",), GATE),)
    return BlockKind(name, attn=("attn",), mlp=mlp, qk=("attn.qkv",), awq=maps)


register_block_kind(_qwen_vision_kind("qwen2_vl_vision", ("mlp",), ("mlp.fc1",), gated=False))  # QuickGELU MLP
register_block_kind(_qwen_vision_kind("qwen2_5_vl_vision", ("mlp",), ("mlp.gate_proj", "mlp.up_proj"), gated=True))
register_block_kind(_qwen_vision_kind("qwen3_vl_vision", ("mlp",), ("mlp.linear_fc1",), gated=False))  # GELU MLP

register_block_kind(BlockKind(  # InternVLVisionLayer: pre-norm, layer scale on both branches, GELU MLP
    "internvl_vision", attn=("attention",), mlp=("mlp",), qk=("attention.q_proj", "attention.k_proj"),
    awq=(M("layernorm_before", ("attention.q_proj", "attention.k_proj", "attention.v_proj"), NORM),
         M("attention.v_proj", ("attention.projection_layer",), ATTENTION),
         M("layernorm_after", ("mlp.fc1",), NORM)),
))

# ---- families ---------------------------------------------------------------------------------

_BLIP2_VIT = ComponentDef("vit", stacks=(StackDef(("vision_model.encoder.layers",), "blip2_vit"),))
_T5_DECODER_HINT = "a T5 decoder runs only when the batch has decoder_input_ids or labels"
_T5_RELOAD = ("transformers 5.24 re-initialises T5's tied embeddings on load and reads the packed "
              "attention weights, which a pack-quantized Linear no longer has")
_BLIP2_LLM = ByConfig("text_config.model_type", {
    "opt": ComponentDef("llm", stacks=(StackDef(("language_model.model.decoder.layers",), "opt",
                                                mask_key="attention_mask"),)),
    "t5": ComponentDef("llm", stacks=(
        StackDef(("language_model.encoder.block",), "t5_encoder", mask_key="attention_mask"),
        StackDef(("language_model.decoder.block",), "t5_decoder", mask_key="decoder_attention_mask",
                 reach_hint=_T5_DECODER_HINT),
    ), unexportable=_T5_RELOAD),
})

register_family(Family(
    "Blip2ForConditionalGeneration", lmms_model="mmq_blip2", wrapper="mmq_eval.models.blip2.MMQBlip2",
    components=(_BLIP2_VIT,
                ComponentDef("qformer", stacks=(StackDef(("qformer.encoder.layer",), "qformer"),)),
                ComponentDef("projector", modules=("language_projection",)),
                _BLIP2_LLM),
    excluded=("language_model.lm_head",),
))

register_family(Family(
    "Blip2ForImageTextRetrieval", lmms_model="mmq_blip2", wrapper="mmq_eval.models.blip2.MMQBlip2",
    components=(_BLIP2_VIT,
                # ITC runs the Q-Former twice per forward (image queries, then text)
                ComponentDef("qformer", stacks=(StackDef(("qformer.encoder.layer",), "qformer", single_call=False),)),
                ComponentDef("projector", modules=("vision_projection", "text_projection"))),
    excluded=("itm_head",),
))

_LLAMA_LLM = ComponentDef("llm", stacks=(StackDef(("model.language_model.layers",), "llama",
                                                  mask_key="attention_mask"),))
_DECODER_LLM = ByConfig("text_config.model_type", {"llama": _LLAMA_LLM, "mistral": _LLAMA_LLM, "qwen2": _LLAMA_LLM})

register_family(Family(
    "LlavaForConditionalGeneration", lmms_model="mmq_llava", wrapper="mmq_eval.models.llava.MMQLlava",
    components=(ComponentDef("vit", stacks=(StackDef(("model.vision_tower.encoder.layers",
                                                      "model.vision_tower.vision_model.encoder.layers"), "clip"),)),
                ComponentDef("projector", modules=("model.multi_modal_projector",)),
                _DECODER_LLM),
    excluded=("lm_head",),
    feature_layer=("vit", "vision_feature_layer"),
    prompt="chat", calibration="caption_answer",
))

# ---- chat VLMs evaluated through lmms-eval's own chat models -----------------------------------

def _qwen_vl(arch: str, vision_kind: str, lmms_model: str, wrapper: str, projector: tuple[str, ...],
             vision_per_block: tuple[str, ...] = (), deepstack: bool = False, chat: bool = True) -> Family:
    llm = ComponentDef("llm", stacks=(StackDef(("model.language_model.layers",), "llama", mask_key="attention_mask",
                                               added_between=deepstack),))
    return Family(
        arch, lmms_model=lmms_model, wrapper=wrapper, chat=chat,
        components=(ComponentDef("vit", stacks=(StackDef(("model.visual.blocks",), vision_kind,
                                                         per_block=vision_per_block),)),
                    ComponentDef("projector", modules=projector),
                    llm),
        excluded=("lm_head",), prompt="chat", calibration="caption_answer",
    )


register_family(_qwen_vl("Qwen2VLForConditionalGeneration", "qwen2_vl_vision", "mmq_qwen2_vl",
                         "mmq_eval.models.chat.MMQQwen2VL", ("model.visual.merger",), chat=False))
# window attention: blocks outside fullatt_block_indexes get other cu_seqlens than the first block
register_family(_qwen_vl("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl_vision", "mmq_qwen2_5_vl",
                         "mmq_eval.models.chat.MMQQwen2_5VL", ("model.visual.merger",), vision_per_block=("cu_seqlens",)))
# deepstack: features of early ViT blocks, merged, are added to the hidden state after the first LLM layers
register_family(_qwen_vl("Qwen3VLForConditionalGeneration", "qwen3_vl_vision", "mmq_qwen3_vl",
                         "mmq_eval.models.chat.MMQQwen3VL",
                         ("model.visual.merger", "model.visual.deepstack_merger_list"), deepstack=True))


_SIGLIP_RELOAD = ("transformers 5.24 re-initialises SigLIP's Linears on load and reads their weights, which a "
                  "pack-quantized Linear no longer has")
for _arch, _unexportable in (("LlavaOnevisionForConditionalGeneration", _SIGLIP_RELOAD),
                             ("LlavaNextForConditionalGeneration", "")):
    register_family(Family(  # SigLIP (OneVision) or CLIP (NeXT) tower, 2-layer projector, Qwen2 / Llama / Mistral
        _arch, lmms_model="mmq_llava_hf", wrapper="mmq_eval.models.chat.MMQLlavaHf", chat=True,
        components=(ComponentDef("vit", stacks=(StackDef(("model.vision_tower.encoder.layers",
                                                          "model.vision_tower.vision_model.encoder.layers"), "clip"),),
                                 unexportable=_unexportable),
                    ComponentDef("projector", modules=("model.multi_modal_projector",)),
                    _DECODER_LLM),
        excluded=("lm_head",), feature_layer=("vit", "vision_feature_layer"),
        prompt="chat", calibration="caption_answer",
    ))

register_family(Family(  # the -hf InternVL checkpoints (InternViT, pixel-shuffle MLP projector, Qwen2 / Llama)
    "InternVLForConditionalGeneration", lmms_model="mmq_internvl_hf", wrapper="mmq_eval.models.chat.MMQInternVLHf",
    chat=True,
    components=(ComponentDef("vit", stacks=(StackDef(("model.vision_tower.encoder.layer",), "internvl_vision"),)),
                ComponentDef("projector", modules=("model.multi_modal_projector",)),
                ByConfig("text_config.model_type", {"qwen2": _LLAMA_LLM, "qwen3": _LLAMA_LLM, "llama": _LLAMA_LLM})),
    excluded=("lm_head",), feature_layer=("vit", "vision_feature_layer"),
    prompt="chat", calibration="caption_answer",
))
