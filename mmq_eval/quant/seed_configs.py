"""Read the seed repo's (gautomdas/mmq) quantization configs into QuantSpecs, to re-run published settings.

Three formats, as found in that repo:

- uniform (``configs/<n>.json``): a list of ``{"model_part": "VIT"|"QFORMER"|"LLM",
  "layer_group": "FIRST"|"MIDDLE"|"LAST"|"ALL", "layer_type": "MLP"|"ATTENTION"|"BOTH",
  "num_bits": k}`` entries (several entries for one part = the union of their groups);
- GPTQ (``create_gptq_configs.py``): ``{"vision"|"qformer"|"language": {"bits", "percent_dampening",
  "group_size", "use_symmetric", "use_act_order", "use_static_groups"}}``;
- AWQ (``awq.json``, ``awq/generate_awq_configs.ipynb``): ``{"vit_layers"|"qformer_layers"|"llm_layers":
  {sub-layer: bits}}`` with sub-layers self_attn, self_attn_output, cross_attn, cross_attn_output
  (attention) and fc1, fc2, intermediate_query, output_query, intermediate_txt, output_txt (MLP).
  The seed's AWQ used group size 128 with zero points — our awq defaults.

Differences kept on purpose: the seed's uniform path also quantized biases and (a bug) skipped OPT
attention and the Q-Former's MLP / cross-attention; we quantize the weights of every selected
Linear and no biases. The projector (language_projection) was never targeted: projector_bits=16.
A config that a single QuantSpec cannot express (two bit widths or layer types inside one
component, part of a role) raises MMQConfigError.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.spec import QuantSpec

_PARTS = {"VIT": "vit", "QFORMER": "qformer", "LLM": "llm"}
_TYPES = {"MLP": "mlp", "ATTENTION": "attn", "BOTH": "both"}
_GPTQ_PARTS = {"vision": "vit", "qformer": "qformer", "language": "llm"}
_AWQ_PARTS = {"vit_layers": "vit", "qformer_layers": "qformer", "llm_layers": "llm"}
_AWQ_ROLES = {
    "self_attn": "attn", "self_attn_output": "attn", "cross_attn": "attn", "cross_attn_output": "attn",
    "fc1": "mlp", "fc2": "mlp", "intermediate_query": "mlp", "output_query": "mlp",
    "intermediate_txt": "mlp", "output_txt": "mlp",
}


def spec_from_seed_uniform(entries: list[dict]) -> QuantSpec:
    """A seed uniform config (list of model_part/layer_group/layer_type/num_bits entries)."""
    per_part: dict[str, dict] = {}
    for e in entries:
        try:
            part, group = _PARTS[e["model_part"]], e["layer_group"].lower()
            ltype, bits = _TYPES[e["layer_type"]], int(e["num_bits"])
        except (KeyError, AttributeError, TypeError, ValueError) as err:
            raise MMQConfigError(f"seed uniform entry {e!r} is not valid ({err!r})") from err
        if bits >= 16:
            continue
        cur = per_part.setdefault(part, {"bits": bits, "type": ltype, "groups": set()})
        if (cur["bits"], cur["type"]) != (bits, ltype):
            raise MMQConfigError(
                f"seed config gives {part} two settings ({cur['bits']} bits {cur['type']} and {bits} bits {ltype}); "
                "one QuantSpec has one bit width and layer type per component"
            )
        cur["groups"].add(group)
    args: dict = {"method": "uniform", "bits": 16, "projector_bits": 16}
    for part, cur in per_part.items():
        args[f"{part}_bits"] = cur["bits"]
        args[f"{part}_layer_type"] = cur["type"]
        args[f"{part}_layer_group"] = "+".join(sorted(cur["groups"]))
    return QuantSpec.from_args(args)


def spec_from_seed_gptq(config: dict) -> QuantSpec:
    """A seed GPTQ config (per-component dicts of bits and GPTQ settings)."""
    args: dict = {"method": "gptq", "bits": 16, "projector_bits": 16}
    shared = None
    for key, part in _GPTQ_PARTS.items():
        if key not in config:
            continue
        c = config[key]
        bits = int(c["bits"])
        args[f"{part}_bits"] = bits
        if bits >= 16:
            continue
        settings = {"damp": c.get("percent_dampening", 0.01), "group_size": c.get("group_size", -1),
                    "sym": c.get("use_symmetric", True), "act_order": c.get("use_act_order", False),
                    "static_groups": c.get("use_static_groups", False)}
        if shared is not None and settings != shared:
            raise MMQConfigError(f"seed GPTQ config: {key} settings {settings} differ from {shared}; "
                                 "one QuantSpec has one set of GPTQ settings")
        shared = settings
    unknown = set(config) - set(_GPTQ_PARTS)
    if unknown:
        raise MMQConfigError(f"seed GPTQ config: unknown part {min(unknown)!r}; accepted: {sorted(_GPTQ_PARTS)}")
    if shared is not None:
        if not shared["static_groups"]:
            shared.pop("static_groups")
        args.update(shared)
    return QuantSpec.from_args(args)


def spec_from_seed_awq(config: dict) -> QuantSpec:
    """A seed AWQ config (per-component dicts of sub-layer bits)."""
    args: dict = {"method": "awq", "bits": 16, "projector_bits": 16}
    for key, layers in config.items():
        if key not in _AWQ_PARTS:
            raise MMQConfigError(f"seed AWQ config: unknown part {key!r}; accepted: {sorted(_AWQ_PARTS)}")
        part = _AWQ_PARTS[key]
        unknown = set(layers) - set(_AWQ_ROLES)
        if unknown:
            raise MMQConfigError(f"seed AWQ config: unknown {part} sub-layer {min(unknown)!r}")
        quantized = {name: int(b) for name, b in layers.items() if int(b) < 16}
        if not quantized:
            continue
        if len(set(quantized.values())) > 1:
            raise MMQConfigError(f"seed AWQ config: {part} mixes bit widths {sorted(set(quantized.values()))}; "
                                 "one QuantSpec has one bit width per component")
        roles = {_AWQ_ROLES[n] for n in quantized}
        for role in roles:
            members = [n for n in layers if _AWQ_ROLES[n] == role]
            if any(n not in quantized for n in members):
                raise MMQConfigError(f"seed AWQ config: {part} quantizes only part of its {role} sub-layers "
                                     f"({sorted(quantized)}); layer_type selects all of them")
        args[f"{part}_bits"] = next(iter(quantized.values()))
        args[f"{part}_layer_type"] = "both" if roles == {"attn", "mlp"} else roles.pop()
    return QuantSpec.from_args(args)


def _loads_lenient(text: str):
    """json.loads that tolerates trailing commas (the seed's awq.json has them)."""
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", text))


def load_seed_config(path: str | Path) -> QuantSpec:
    """Read a seed config file of any of the three formats."""
    data = _loads_lenient(Path(path).read_text())
    if isinstance(data, list):
        return spec_from_seed_uniform(data)
    if isinstance(data, dict) and set(data) & set(_GPTQ_PARTS):
        return spec_from_seed_gptq(data)
    if isinstance(data, dict) and set(data) & set(_AWQ_PARTS):
        return spec_from_seed_awq(data)
    raise MMQConfigError(f"{path}: not a seed quantization config (uniform list, GPTQ or AWQ dict)")
