"""Which quantization plans a ``pack-quantized`` checkpoint can hold, and its compressed-tensors config.

compressed-tensors' ``pack-quantized`` format stores integer weights of 1–8 bits densely packed
into int32 words (every width, 3/5/6/7 included, since compressed-tensors 0.20), with one scale
(and, when asymmetric, one zero point) per output channel or group of input columns, so every
width of our specs (2–8) packs. Our grouped and per-channel RTN / GPTQ / AWQ grids map onto it
exactly. The per-tensor uniform format does not: its grid is offset by the tensor's minimum,
which is not an integer number of steps, so no integer zero point reproduces it.

Loading (transformers 5.24 with compressed-tensors 0.20). Left packed (``dequantize: false``),
a reloaded model is decompressed by a forward pre-hook on the top-level module, which
``Blip2ForConditionalGeneration.generate`` never calls (it runs the vision model, Q-Former and
language model's ``generate`` directly): generation fails with "'Linear' object has no attribute
'weight'". Dequantized while loading (``dequantize: true`` in the config), ``from_pretrained``
returns a dense model that generates; but that path decompresses every layer with the first
config group's scheme (silently wrong for other bit widths). So an export with one storage
format writes ``dequantize: true``; one with several stays packed and needs
``model.hf_quantizer.compressor.decompress_model(model)`` (or one forward) before ``generate``.
Asymmetric checkpoints load only dequantized (transformers builds their zero points unpacked:
a shape mismatch otherwise), so asymmetric exports must use a single format.
"""

from __future__ import annotations

import re

from mmq_eval.errors import MMQConfigError
from mmq_eval.models.packed_checkpoint import FORMAT
from mmq_eval.quant.formats import LayerFormat
from mmq_eval.quant.plan import QuantPlan
from mmq_eval.quant.spec import COMPONENTS, QuantSpec



def check_spec(spec: QuantSpec) -> None:
    """Refuse, before any model is loaded, specs that no pack-quantized checkpoint can hold."""
    if spec.is_noop:
        raise MMQConfigError(
            "nothing to export: the spec quantizes no component (method=none or every *_bits=16); "
            "set method and bits, e.g. method=rtn,bits=4,sym=true"
        )
    if spec.method == "uniform":
        raise MMQConfigError(
            "method=uniform cannot be exported as pack-quantized: its per-tensor min–max grid is "
            "offset by the tensor's minimum, which no integer zero point reproduces; use "
            "method=rtn (or gptq / awq) with sym=true"
        )
    if spec.method == "gptq" and spec.act_order and not spec.static_groups and spec.group_size != -1:
        raise MMQConfigError(
            "act_order=true without static_groups=true orders each group's columns by activation, "
            "so groups are not runs of consecutive columns, which pack-quantized needs; add "
            "static_groups=true (or group_size=-1)"
        )
    bits = {spec.component_bits(c) for c in COMPONENTS} - {16}
    if not spec.sym and len(bits) > 1:
        raise _mixed_asymmetric([f"int{b}" for b in sorted(bits)])


def _mixed_asymmetric(formats: list[str]) -> MMQConfigError:
    return MMQConfigError(
        f"asymmetric export needs a single format, but this spec stores {len(formats)} "
        f"({', '.join(formats)}): transformers can reload asymmetric pack-quantized checkpoints "
        "only by dequantizing every layer with one scheme. Use sym=true, or one bit width and a "
        "group size that divides every quantized layer (or group_size=-1)"
    )


def format_key(fmt: LayerFormat, in_features: int) -> tuple[int, bool, int]:
    """(bits, sym, group size or −1 for per channel) of one quantized Linear."""
    return fmt.bits, fmt.sym, -1 if fmt.group_size == in_features else fmt.group_size


def scheme_name(key: tuple[int, bool, int]) -> str:
    bits, sym, gs = key
    return f"int{bits}_{'sym' if sym else 'asym'}_{'channel' if gs == -1 else f'g{gs}'}"


def group_targets(plan: QuantPlan) -> dict[tuple[int, bool, int], list[str]]:
    """Quantized Linear names by storage format, in pipeline order."""
    groups: dict[tuple[int, bool, int], list[str]] = {}
    for name, fmt in plan.targets.items():
        groups.setdefault(format_key(fmt, plan.info(name).in_features), []).append(name)
    return groups


def check_plan(plan: QuantPlan) -> None:
    """Refuse plans that quantize a component the registry marks unexportable, or whose
    checkpoint transformers could not reload (see the module docstring)."""
    for comp in plan.arch.components:
        if comp.unexportable and any(plan.info(n).component == comp.name for n in plan.targets):
            raise MMQConfigError(
                f"{plan.arch.arch}: a quantized {comp.name} cannot be exported as pack-quantized "
                f"({comp.unexportable}); set {comp.name}_bits=16 to export the other components"
            )
    groups = group_targets(plan)
    if any(not sym for _, sym, _ in groups) and len(groups) > 1:
        raise _mixed_asymmetric([scheme_name(k) for k in groups])


DECOMPRESS_CALL = "model.hf_quantizer.compressor.decompress_model(model)"


def loading_note(plan: QuantPlan) -> str:
    """How plain transformers loads this plan's export (see the module docstring)."""
    groups = group_targets(plan)
    if len(groups) == 1:
        return ("from_pretrained(OUT) dequantizes it while loading (dense, ready for generate; "
                "the checkpoint's config says dequantize: true)")
    return (f"it stores {len(groups)} formats ({', '.join(scheme_name(k) for k in groups)}), which transformers "
            f"loads only packed: call {DECOMPRESS_CALL} after from_pretrained(OUT) and before generate "
            "(mmq_* models do this themselves)")


def quantization_config(plan: QuantPlan):
    """The compressed-tensors QuantizationConfig: one config group per storage format.

    Targets name the Linears exactly (``re:^name$``); compressed-tensors lists every other
    Linear (heads, 16-bit components) in ``ignore`` when it writes the checkpoint.
    """
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    config_groups = {}
    for key, names in group_targets(plan).items():
        bits, sym, gs = key
        args = QuantizationArgs(num_bits=bits, type="int", symmetric=sym,
                                strategy="channel" if gs == -1 else "group",
                                group_size=None if gs == -1 else gs)
        targets = [f"re:^{re.escape(n)}$" for n in names]
        config_groups[scheme_name(key)] = QuantizationScheme(targets=targets, weights=args, format=FORMAT)
    return QuantizationConfig(config_groups=config_groups, format=FORMAT, quantization_status="frozen")
