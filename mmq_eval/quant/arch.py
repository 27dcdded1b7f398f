"""Resolve a loaded model against the architecture registry: its components, blocks and Linears.

A model resolves to an `ArchMap`: components in pipeline order (vit → qformer → projector → llm),
each an ordered list of blocks grouped into *stacks* (runs of blocks one module's loop executes
one after another — T5 has an encoder and a decoder stack), and every quantizable Linear with its
component, block index and role (``attn``: self/cross-attention incl. fused qkv and output
projection; ``mlp``: feed-forward; ``proj``: the projector's Linears, which have no blocks).
Output heads (``lm_head``, ``itm_head``) are never quantized. What each family looks like is
data in ``mmq_eval.quant.families``; nothing here names a family.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant import families  # noqa: F401 - registers the built-in families
from mmq_eval.quant.registry import BLOCK_KINDS, BlockKind, ByConfig, ComponentDef, Family, StackDef, family

#: The block kind of a projector module run as a single "block" during calibration: no roles, no AWQ folds.
PROJECTOR = BlockKind("projector", attn=(), mlp=())


@dataclass(frozen=True)
class Stack:
    """Blocks that one loop runs in order; the output of block i is the input of block i+1."""

    blocks: tuple[str, ...]
    kind: BlockKind
    single_call: bool = True
    mask_key: str | None = None
    reach_hint: str = ""
    per_block: tuple[str, ...] = ()
    added_between: bool = False

    @property
    def carry(self) -> str:
        return self.kind.carry


@dataclass(frozen=True)
class Component:
    name: str
    stacks: tuple[Stack, ...]
    has_blocks: bool = True
    unexportable: str = ""  # why a pack-quantized checkpoint cannot hold it (empty: it can)

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
    family: Family | None = None

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


def _get(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _config_value(model: nn.Module, key: str):
    value = model.config
    for part in key.split("."):
        value = getattr(value, part, None)
    return value


def _choose(model: nn.Module, fam: Family, comp: ComponentDef | ByConfig) -> ComponentDef:
    if isinstance(comp, ComponentDef):
        return comp
    value = _config_value(model, comp.key)
    if value not in comp.options:
        raise MMQConfigError(
            f"{fam.arch} with a {value!r} {comp.what} ({comp.key}) is not supported; supported: "
            f"{', '.join(comp.options)} (add an option to its registry entry)"
        )
    return comp.options[value]


def _stack(model: nn.Module, fam: Family, sd: StackDef) -> Stack:
    path = next((p for p in sd.paths if isinstance(_get(model, p), nn.ModuleList)), None)
    if path is None:
        raise MMQConfigError(
            f"{fam.arch}: none of the registry's block lists {list(sd.paths)} exists in the loaded model "
            "(transformers layout changed? fix the family's entry in mmq_eval/quant/families.py)"
        )
    n = len(model.get_submodule(path))
    return Stack(tuple(f"{path}.{i}" for i in range(n)), BLOCK_KINDS[sd.kind], sd.single_call, sd.mask_key,
                 sd.reach_hint, sd.per_block, sd.added_between)


def _component(model: nn.Module, fam: Family, cd: ComponentDef) -> Component:
    if cd.stacks:
        return Component(cd.name, tuple(_stack(model, fam, sd) for sd in cd.stacks), unexportable=cd.unexportable)
    missing = [p for p in cd.modules if _get(model, p) is None]
    if missing:
        raise MMQConfigError(f"{fam.arch}: {cd.name} module {missing[0]} named by the registry is not in the "
                             "loaded model (fix the family's entry in mmq_eval/quant/families.py)")
    paths = []
    for p in cd.modules:  # a ModuleList stands for each of its members
        mod = model.get_submodule(p)
        paths += [f"{p}.{i}" for i in range(len(mod))] if isinstance(mod, nn.ModuleList) else [p]
    return Component(cd.name, tuple(Stack((p,), PROJECTOR) for p in paths), has_blocks=False,
                     unexportable=cd.unexportable)


def _unused_blocks(feature_layer: int | list[int], n_blocks: int) -> tuple[int, ...]:
    """Blocks after the deepest hidden state read (hidden state k = output of block k-1)."""
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    deepest = max(k if k >= 0 else n_blocks + 1 + k for k in layers)
    return tuple(range(deepest, n_blocks))


def _linears(model: nn.Module, fam: Family, comp: Component, stack: Stack) -> list[LinearInfo]:
    out = []
    offset = comp.blocks.index(stack.blocks[0])
    for bi, block_path in enumerate(stack.blocks, start=offset):
        block = model.get_submodule(block_path)
        if isinstance(block, nn.Linear):
            out.append(LinearInfo(block_path, comp.name, None, block_path, "proj",
                                  block.in_features, block.out_features))
            continue
        for rel, mod in block.named_modules():
            if not isinstance(mod, nn.Linear):
                continue
            name = f"{block_path}.{rel}"
            if not comp.has_blocks:
                out.append(LinearInfo(name, comp.name, None, block_path, "proj", mod.in_features, mod.out_features))
                continue
            role = stack.kind.role(rel)
            if role is None:
                raise MMQConfigError(
                    f"{fam.arch}: {name} is neither attention nor MLP in block kind {stack.kind.name!r} "
                    f"(attn prefixes {list(stack.kind.attn)}, mlp prefixes {list(stack.kind.mlp)}): "
                    "add its path to the block kind in mmq_eval/quant/families.py"
                )
            out.append(LinearInfo(name, comp.name, bi, block_path, role, mod.in_features, mod.out_features))
    return out


def resolve_arch(model: nn.Module) -> ArchMap:
    """Map a registered model to its components, blocks and Linears; MMQConfigError otherwise."""
    fam = family(type(model).__name__)
    comps = [_component(model, fam, _choose(model, fam, c)) for c in fam.components]
    linears = [li for comp in comps for stack in comp.stacks for li in _linears(model, fam, comp, stack)]
    unused, notes = {}, []
    if fam.feature_layer is not None:
        comp_name, key = fam.feature_layer
        n = len(next(c for c in comps if c.name == comp_name).blocks)
        feature_layer = _config_value(model, key)
        idle = _unused_blocks(feature_layer, n)
        if idle:
            unused[comp_name] = idle
            notes.append(f"{key}={feature_layer}: {fam.arch} reads image features before {comp_name} "
                         f"block(s) {list(idle)} of {n}: they are unused and do not affect outputs; "
                         "quantizing them changes nothing (still counted in bits per weight)")
    mapped = {li.name for li in linears} | set(fam.excluded)
    unmapped = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in mapped]
    notes += [f"{n}: outside every component, never quantized" for n in unmapped]
    return ArchMap(fam.arch, tuple(comps), tuple(linears), fam.excluded, unused, tuple(notes), fam)
