"""Resolve a QuantSpec against a model: which Linears get which format, or why the spec is invalid."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.arch import ArchMap, LinearInfo, block_group, resolve_arch
from mmq_eval.quant.formats import LayerFormat
from mmq_eval.quant.registry import COMPONENTS
from mmq_eval.quant.spec import QuantSpec

NO_EFFECT = ("NO EFFECT: every quantized Linear lies in a block that does not affect outputs, so this "
             "configuration computes exactly what full precision does; select other blocks to measure quantization")


@dataclass
class QuantPlan:
    arch: ArchMap
    spec: QuantSpec
    targets: dict[str, LayerFormat]  # Linear name -> format, in pipeline order
    notes: list[str] = field(default_factory=list)

    def info(self, name: str) -> LinearInfo:
        return self._by_name[name]

    def __post_init__(self):
        self._by_name = {li.name: li for li in self.arch.linears}

    def targets_in_block(self, block_path: str) -> list[str]:
        return [n for n in self.targets if self._by_name[n].block_path == block_path]

    @property
    def unused_targets(self) -> list[str]:
        """Targeted Linears in blocks that do not affect outputs (LLaVA's ViT blocks after the feature layer)."""
        return [n for n in self.targets if self.arch.is_unused(self._by_name[n])]

    @property
    def effective(self) -> bool:
        """False when the spec quantizes Linears but none that can affect the model's outputs."""
        return not self.targets or len(self.unused_targets) < len(self.targets)


def _selected(spec: QuantSpec, li: LinearInfo, n_blocks: int) -> bool:
    if li.block is None:  # projector: no blocks, no roles
        return True
    return (block_group(li.block, n_blocks) in spec.component_groups(li.component)
            and li.role in spec.component_types(li.component))


def _format_for(spec: QuantSpec, li: LinearInfo, bits: int) -> LayerFormat:
    gs = spec.effective_group_size
    if gs == 0:
        return LayerFormat(bits, 0, sym=False)
    if gs == -1:
        return LayerFormat(bits, li.in_features, spec.sym)
    if li.in_features % gs == 0:
        return LayerFormat(bits, gs, spec.sym)
    if spec.group_size is not None:
        raise MMQConfigError(
            f"group_size={gs} does not divide the input width {li.in_features} of {li.name}; "
            "choose a divisor of every targeted layer's input width or -1 (per channel)"
        )
    return LayerFormat(bits, li.in_features, spec.sym, fallback=True)


def build_plan(model: nn.Module, spec: QuantSpec, arch: ArchMap | None = None) -> QuantPlan:
    """Check `spec` against `model` and list the targeted Linears; MMQConfigError names the argument.

    `arch`: the model's already resolved ArchMap (resolved here when None).
    """
    arch = arch or resolve_arch(model)
    present = set(arch.component_names)
    for c in COMPONENTS:
        keys = [k for k, d in (("bits", spec.component_bits_override), ("layer_group", spec.group_override),
                               ("layer_type", spec.type_override)) if c in d]
        if keys and c not in present:
            raise MMQConfigError(
                f"{c}_{keys[0]}: {arch.arch} has no {c} component "
                f"(components: {', '.join(arch.component_names)})"
            )
    targets: dict[str, LayerFormat] = {}
    fallbacks: dict[tuple, int] = {}
    notes = list(arch.notes)
    if spec.is_noop:
        return QuantPlan(arch, spec, targets, notes)
    for comp in arch.components:
        bits = spec.component_bits(comp.name)
        if bits >= 16:
            continue
        n_blocks = len(comp.blocks)
        chosen = [li for li in arch.linears if li.component == comp.name and _selected(spec, li, n_blocks)]
        if not chosen:
            gkey, tkey = spec.setting_key(comp.name, "layer_group"), spec.setting_key(comp.name, "layer_type")
            thirds = {g: [i for i in range(n_blocks) if block_group(i, n_blocks) == g]
                      for g in ("first", "middle", "last")}
            raise MMQConfigError(
                f"{gkey}={spec.group_override.get(comp.name, spec.layer_group)} with "
                f"{tkey}={spec.type_override.get(comp.name, spec.layer_type)} selects no Linear of "
                f"{comp.name} ({n_blocks} blocks; thirds first/middle/last = "
                f"{thirds['first']}/{thirds['middle']}/{thirds['last']})"
            )
        for li in chosen:
            fmt = _format_for(spec, li, bits)
            targets[li.name] = fmt
            if fmt.fallback:
                key = (li.component, li.relative_name, li.in_features)
                fallbacks[key] = fallbacks.get(key, 0) + 1
    for (comp, rel, width), count in fallbacks.items():
        notes.append(f"{comp}: default group size {spec.effective_group_size} does not divide in_features={width} "
                     f"of {rel} ({count} Linear{'s' * (count > 1)}); per channel instead")
    plan = QuantPlan(arch, spec, targets, notes)
    if not plan.effective:
        plan.notes.insert(0, NO_EFFECT)
    return plan
