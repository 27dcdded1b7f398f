"""Architecture maps: where each component's blocks and Linears live (transformers 5.x paths).

A model resolves to an `ArchMap`: components in pipeline order (vit → qformer → projector → llm),
each an ordered list of blocks grouped into *stacks* (runs of blocks one module's loop executes
one after another — T5 has an encoder and a decoder stack), and every quantizable Linear with its
component, block index and role (``attn``: self/cross-attention incl. fused qkv and output
projection; ``mlp``: feed-forward; ``proj``: the projector's Linears, which have no blocks).
Output heads (``lm_head``, ``itm_head``) are never quantized.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from mmq_eval.errors import MMQConfigError

SUPPORTED_ARCHS = (
    "Blip2ForConditionalGeneration",
    "Blip2ForImageTextRetrieval",
    "LlavaForConditionalGeneration",
)

_ATTN = re.compile(r"(^|\.)(self_attn|attention|crossattention|SelfAttention|EncDecAttention)\.")
_MLP = re.compile(r"(^|\.)(mlp|fc1|fc2|intermediate|output|intermediate_query|output_query|DenseReluDense)(\.|$)")


@dataclass(frozen=True)
class Stack:
    """Blocks that one loop runs in order; the output of block i is the input of block i+1.

    carry: how a block's output becomes the next block's inputs ("hidden": the output replaces the
      first argument; "t5": also carries the position biases T5's first block computes).
    single_call: the first block runs once per model forward (so input capture may stop there).
    mask_key: calibration-batch key of a (batch, tokens) padding mask aligned with the stack's
      hidden states; padded tokens are left out of calibration statistics.
    """

    blocks: tuple[str, ...]
    kind: str
    carry: str = "hidden"
    single_call: bool = True
    mask_key: str | None = None


@dataclass(frozen=True)
class Component:
    name: str
    stacks: tuple[Stack, ...]
    has_blocks: bool = True

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(b for s in self.stacks for b in s.blocks)


@dataclass(frozen=True)
class LinearInfo:
    name: str
    component: str
    block: int | None  # index within the component's blocks; None for projector Linears
    block_path: str
    role: str  # attn | mlp | proj
    in_features: int
    out_features: int

    @property
    def relative_name(self) -> str:
        """Name inside its block (e.g. ``mlp.fc1``); the full name for a block that is the Linear."""
        return self.name[len(self.block_path) + 1:] if self.name != self.block_path else self.name


@dataclass(frozen=True)
class ArchMap:
    arch: str
    components: tuple[Component, ...]
    linears: tuple[LinearInfo, ...]
    excluded: tuple[str, ...]
    unused_blocks: dict = field(default_factory=dict)  # component -> block indices that cannot affect outputs
    notes: tuple[str, ...] = ()

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def is_unused(self, li: LinearInfo) -> bool:
        """True for a Linear in a block whose output never reaches the model's outputs."""
        return li.block is not None and li.block in self.unused_blocks.get(li.component, ())

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)


def block_group(index: int, n_blocks: int) -> str:
    """The seed repo's thirds: first = [0, n//3), middle = [n//3, 2n//3), last = [2n//3, n)."""
    if index < n_blocks // 3:
        return "first"
    if index < 2 * n_blocks // 3:
        return "middle"
    return "last"


def linear_role(relative_name: str) -> str | None:
    """attn / mlp from a Linear's name relative to its block; None if unrecognised."""
    if _ATTN.search(relative_name):
        return "attn"
    if _MLP.search(relative_name):
        return "mlp"
    return None


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _list_path(model: nn.Module, candidates: tuple[str, ...]) -> str:
    for path in candidates:
        if isinstance(_get(model, path), nn.ModuleList):
            return path
    raise MMQConfigError(
        f"{type(model).__name__}: none of the expected block lists {candidates} exists "
        "(transformers layout changed?)"
    )


def _stack(model: nn.Module, candidates: tuple[str, ...], kind: str, **kw) -> Stack:
    path = _list_path(model, candidates)
    n = len(model.get_submodule(path))
    return Stack(blocks=tuple(f"{path}.{i}" for i in range(n)), kind=kind, **kw)


def _blip2_components(model: nn.Module) -> list[Component]:
    vit = Component("vit", (_stack(model, ("vision_model.encoder.layers",), "blip2_vit"),))
    single = type(model).__name__ != "Blip2ForImageTextRetrieval"  # ITC runs the Q-Former twice
    qformer = Component(
        "qformer", (_stack(model, ("qformer.encoder.layer",), "qformer", single_call=single),)
    )
    return [vit, qformer]


def _blip2_llm(model: nn.Module) -> Component:
    lm = model.language_model
    if lm.config.model_type == "opt":
        return Component("llm", (_stack(model, ("language_model.model.decoder.layers",), "opt",
                                        mask_key="attention_mask"),))
    if lm.config.model_type == "t5":
        enc = _stack(model, ("language_model.encoder.block",), "t5", carry="t5", mask_key="attention_mask")
        dec = _stack(model, ("language_model.decoder.block",), "t5", carry="t5",
                     mask_key="decoder_attention_mask")
        return Component("llm", (enc, dec))
    raise MMQConfigError(
        f"{type(model).__name__} with a {lm.config.model_type!r} language model is not supported; "
        "supported BLIP-2 language models: opt, t5"
    )


def _single(path: str, kind: str = "projector") -> Stack:
    return Stack(blocks=(path,), kind=kind)


def _build_blip2(model: nn.Module) -> tuple[list[Component], tuple[str, ...], dict, tuple[str, ...]]:
    comps = _blip2_components(model)
    if type(model).__name__ == "Blip2ForImageTextRetrieval":
        comps.append(Component("projector", (_single("vision_projection"), _single("text_projection")),
                               has_blocks=False))
        return comps, ("itm_head",), {}, ()
    comps.append(Component("projector", (_single("language_projection"),), has_blocks=False))
    comps.append(_blip2_llm(model))
    return comps, ("language_model.lm_head",), {}, ()


def _build_llava(model: nn.Module):
    cfg = model.config
    vit = _stack(model, ("model.vision_tower.encoder.layers", "model.vision_tower.vision_model.encoder.layers",
                         "vision_tower.vision_model.encoder.layers"), "clip")
    llm = _stack(model, ("model.language_model.layers", "language_model.model.layers"), "llama",
                 mask_key="attention_mask")
    proj_path = "model.multi_modal_projector" if _get(model, "model.multi_modal_projector") else "multi_modal_projector"
    comps = [
        Component("vit", (vit,)),
        Component("projector", (_single(proj_path),), has_blocks=False),
        Component("llm", (llm,)),
    ]
    unused = _unused_vit_blocks(cfg.vision_feature_layer, len(vit.blocks))
    note = (f"vision_feature_layer={cfg.vision_feature_layer}: LLaVA reads image features before "
            f"ViT block(s) {list(unused)} of {len(vit.blocks)}: they are unused and do not affect "
            "outputs; quantizing them changes nothing (still counted in bits per weight)")
    notes = (note,) if unused else ()
    return comps, ("lm_head",), {"vit": unused} if unused else {}, notes


def _unused_vit_blocks(feature_layer: int | list[int], n_blocks: int) -> tuple[int, ...]:
    """ViT blocks after the deepest hidden state LLaVA takes (hidden state k = output of block k-1)."""
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    deepest = max(k if k >= 0 else n_blocks + 1 + k for k in layers)
    return tuple(range(deepest, n_blocks))


def resolve_arch(model: nn.Module) -> ArchMap:
    """Map a supported model to its components, blocks and Linears; MMQConfigError otherwise."""
    arch = type(model).__name__
    if arch in ("Blip2ForConditionalGeneration", "Blip2ForImageTextRetrieval"):
        comps, excluded, unused, notes = _build_blip2(model)
    elif arch == "LlavaForConditionalGeneration":
        comps, excluded, unused, notes = _build_llava(model)
    else:
        raise MMQConfigError(
            f"quantization does not support {arch}; supported architectures: {', '.join(SUPPORTED_ARCHS)}"
        )
    linears = []
    for comp in comps:
        for bi, block_path in enumerate(comp.blocks):
            block = model.get_submodule(block_path)
            if isinstance(block, nn.Linear):
                linears.append(LinearInfo(block_path, comp.name, None, block_path, "proj",
                                          block.in_features, block.out_features))
                continue
            for rel, mod in block.named_modules():
                if not isinstance(mod, nn.Linear):
                    continue
                name = f"{block_path}.{rel}"
                if comp.has_blocks:
                    role = linear_role(rel)
                    if role is None:
                        raise MMQConfigError(f"{arch}: cannot tell whether {name} is attention or MLP")
                    linears.append(LinearInfo(name, comp.name, bi, block_path, role,
                                              mod.in_features, mod.out_features))
                else:
                    linears.append(LinearInfo(name, comp.name, None, block_path, "proj",
                                              mod.in_features, mod.out_features))
    mapped = {li.name for li in linears} | set(excluded)
    unmapped = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in mapped]
    notes = tuple(notes) + tuple(f"{n}: outside every component, never quantized" for n in unmapped)
    return ArchMap(arch, tuple(comps), tuple(linears), tuple(excluded), unused, notes)
