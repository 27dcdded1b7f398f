"""Which quantized parts of an export a serving engine can load, as data per architecture.

vLLM builds each multimodal model from its own module classes; a Linear built as a plain
``torch.nn.Linear`` (no ``quant_config``) cannot take a pack-quantized weight, and blocks it
does not build are never loaded. Read from vLLM's sources (``vllm/model_executor/models/``):

- ``blip2.py``: ``Blip2QFormerModel`` (every Q-Former Linear) and ``language_projection`` are
  plain ``nn.Linear``; the ViT (``BlipVisionModel``) and the OPT language model take
  ``quant_config``.
- ``llava.py``: ``init_vision_tower_for_llava`` builds the vision tower only up to
  ``vision_feature_layer``; the projector (``ColumnParallelLinear`` / ``RowParallelLinear``) and
  the language model take ``quant_config``.
- ``qwen2_vl.py`` / ``qwen2_5_vl.py``: the vision tower and its merger take ``quant_config``
  (ignored only for GPTQ configs, not compressed-tensors), as does the language model.

An architecture without an entry is unknown: the note says so instead of guessing. What this
does not check: that vLLM's module names match the checkpoint's targets (the export names them by
transformers' module names, e.g. ``model.language_model.layers.N...`` for LLaVA, where vLLM's
LLaVA has ``language_model.model.layers.N...``; vLLM's BLIP-2 builds its ViT without a module
prefix). No vLLM install was at hand to try one.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.plan import QuantPlan

ENGINES = ("vllm",)


@dataclass(frozen=True)
class Unservable:
    """Quantized Linears of ``component`` the engine cannot load: all of them, or (``unused_only``)
    those in blocks after the feature layer, which the engine does not build."""

    component: str
    reason: str
    unused_only: bool = False


#: engine -> architecture -> the parts it cannot load (an empty tuple: everything loads)
UNSERVABLE: dict[str, dict[str, tuple[Unservable, ...]]] = {
    "vllm": {
        "Blip2ForConditionalGeneration": (
            Unservable("qformer", "vLLM's Blip2QFormerModel builds every Q-Former Linear as a plain nn.Linear"),
            Unservable("projector", "vLLM builds language_projection as a plain nn.Linear"),
        ),
        "LlavaForConditionalGeneration": (
            Unservable("vit", "vLLM builds the vision tower only up to vision_feature_layer, so these "
                       "blocks are never loaded", unused_only=True),
        ),
        "Qwen2VLForConditionalGeneration": (),
        "Qwen2_5_VLForConditionalGeneration": (),
    },
}


def unservable_targets(plan: QuantPlan, engine: str) -> dict[Unservable, list[str]] | None:
    """The plan's quantized Linears that ``engine`` cannot load, by rule; None when the
    architecture has no entry for the engine (unknown)."""
    rules = UNSERVABLE[engine].get(plan.arch.arch)
    if rules is None:
        return None
    found = {}
    for rule in rules:
        names = [n for n in plan.targets if plan.info(n).component == rule.component
                 and (not rule.unused_only or plan.arch.is_unused(plan.info(n)))]
        if names:
            found[rule] = names
    return found


def servability_note(plan: QuantPlan, engine: str = "vllm") -> str:
    """One paragraph saying which quantized parts ``engine`` could not load, and the fix."""
    found = unservable_targets(plan, engine)
    if found is None:
        return (f"{engine}: whether it can load the quantized parts of {plan.arch.arch} is unknown to "
                f"mmq-eval (no entry in mmq_eval/export/servable.py)")
    if not found:
        return (f"{engine}: builds every quantized part of this {plan.arch.arch} export as a quantized layer "
                "(per its sources; not checked against an install)")
    parts = [f"{rule.component} ({len(names)} quantized Linear{'s' * (len(names) > 1)}: {rule.reason})"
             for rule, names in found.items()]
    return (f"{engine} could not load these quantized parts of {plan.arch.arch}: " + "; ".join(parts)
            + f". Export with --servable {engine} to keep them full precision.")


def servable_overrides(arch: str, engine: str) -> dict[str, int]:
    """Model args that keep what ``engine`` cannot load of ``arch`` at full precision: ``<component>_bits=16``
    for every whole component it cannot load. MMQConfigError when the architecture has no entry."""
    rules = UNSERVABLE[engine].get(arch)
    if rules is None:
        known = ", ".join(sorted(UNSERVABLE[engine]))
        raise MMQConfigError(f"--servable {engine}: mmq-eval does not know which parts of {arch} {engine} can "
                             f"load (known: {known}); export without --servable, or add an entry to "
                             "mmq_eval/export/servable.py")
    return {f"{rule.component}_bits": 16 for rule in rules if not rule.unused_only}


def servable_plan(plan: QuantPlan, engine: str) -> QuantPlan:
    """``plan`` without the quantized Linears ``engine`` does not build (blocks after the feature
    layer: they do not affect outputs, so their stored values do not matter and count as 16-bit)."""
    drop = {n for rule, names in (unservable_targets(plan, engine) or {}).items() if rule.unused_only for n in names}
    return QuantPlan(plan.arch, plan.spec, {n: f for n, f in plan.targets.items() if n not in drop},
                     list(plan.notes))
