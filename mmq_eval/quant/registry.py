"""The architecture registry: everything family-specific, as declarative data.

A model family is one `Family` entry keyed by its transformers class name; the engine, AWQ,
calibration, sweeps, export and the lmms-eval plugin read entries and never name a family.
Entries are built from three kinds of parts:

- `BlockKind`: one kind of transformer block (OPT decoder layer, CLIP encoder layer, ...): which
  of its Linears are attention and which MLP, which are query/key projections, how its output
  becomes the next block's input during calibration, and its AWQ `ScaleMapping`s;
- `StackDef`: a ModuleList of blocks of one kind that one loop runs in order;
- `ComponentDef`: a component (``vit``, ``qformer``, ``projector``, ``llm``) made of stacks, or
  of single modules (a projector has no blocks); `ByConfig` picks one by a config value (a
  BLIP-2's language model is OPT or T5).

A class with no entry, a config value with no option, or an entry whose paths are not in the
loaded model is an error naming what is missing (``mmq_eval.quant.arch.resolve_arch``).
`register_family` / `register_block_kind` add entries from outside the package.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmq_eval.errors import MMQConfigError

# What lies between a ScaleMapping's `prev` and its Linears; each makes the fold exact:
NORM = "norm"  # prev is a LayerNorm/RMSNorm (y = x̂·w + b): divide its weight and bias by s
ATTENTION = "attention"  # prev is a value projection: attention mixes value rows linearly
GATE = "gate"  # prev is the up projection of a gated MLP: act(gate·x) ⊙ (up·x) is linear in up
ACTIVATION = "activation"  # an activation module: exact only if positively homogeneous (ReLU)
VIAS = (NORM, ATTENTION, GATE, ACTIVATION)

# How a block's output becomes the next block's input during calibration:
CARRY_HIDDEN = "hidden"  # the output replaces the first argument
CARRY_T5 = "t5"  # also carries the position biases T5's first block computes
CARRIES = (CARRY_HIDDEN, CARRY_T5)

#: Component names in pipeline order; every family's components are among them.
COMPONENTS = ("vit", "qformer", "projector", "llm")
BLOCK_COMPONENTS = ("vit", "qformer", "llm")  # the ones made of blocks

PROMPT_STYLES = ("plain", "chat")  # plain: the text as is; chat: the processor's chat template


@dataclass(frozen=True)
class ScaleMapping:
    """AWQ: `prev` produces the common input of `linears` (paths relative to the block).

    via: what lies between (see `VIAS`). activation: for ``via=activation``, the path of the
    activation module, which must be positively homogeneous (checked on the loaded model: a
    GELU there means no fold). rows: ``v_of_qkv`` when prev is a fused qkv Linear whose last
    third feeds `linears`. requires: a block attribute that must be true (OPT's norms precede
    the residual only when ``do_layer_norm_before``). optional: some blocks lack these modules
    (Q-Former cross-attention every n-th layer, T5's gated or plain MLP): skipped there.
    """

    prev: str
    linears: tuple[str, ...]
    via: str
    activation: str | None = None
    rows: str = "all"
    requires: str | None = None
    optional: bool = False

    def __post_init__(self):
        if self.via not in VIAS:
            raise MMQConfigError(f"ScaleMapping {self.prev}: via={self.via!r}; accepted: {', '.join(VIAS)}")
        if (self.via == ACTIVATION) != (self.activation is not None):
            raise MMQConfigError(f"ScaleMapping {self.prev}: give activation= exactly when via={ACTIVATION!r}")
        if self.rows not in ("all", "v_of_qkv"):
            raise MMQConfigError(f"ScaleMapping {self.prev}: rows={self.rows!r}; accepted: all, v_of_qkv")


@dataclass(frozen=True)
class BlockKind:
    """One kind of transformer block.

    attn / mlp: module-path prefixes (relative to the block) of its attention (incl.
    cross-attention) and MLP Linears; every Linear in the block must match one. qk: query/key
    projections (AWQ's clip search skips them: their error shows only through qᵀk).
    """

    name: str
    attn: tuple[str, ...]
    mlp: tuple[str, ...]
    qk: tuple[str, ...] = ()
    awq: tuple[ScaleMapping, ...] = ()
    carry: str = CARRY_HIDDEN

    def __post_init__(self):
        if self.carry not in CARRIES:
            raise MMQConfigError(f"block kind {self.name}: carry={self.carry!r}; accepted: {', '.join(CARRIES)}")

    def role(self, relative_name: str) -> str | None:
        """``attn`` / ``mlp`` for a Linear's path inside the block; None when neither matches."""
        for role, prefixes in (("attn", self.attn), ("mlp", self.mlp)):
            if any(relative_name == p or relative_name.startswith(p + ".") for p in prefixes):
                return role
        return None


@dataclass(frozen=True)
class StackDef:
    """A ModuleList of blocks of one kind (first existing path of `paths`).

    single_call: its first block runs once per model forward (input capture may stop there).
    mask_key: calibration-batch key of a (batch, tokens) padding mask aligned with its hidden
    states (padded tokens are left out of statistics). reach_hint: what a calibration batch
    needs for this stack to run at all (said when it does not). per_block: keyword arguments
    the loop passes differently to different blocks (Qwen2.5-VL's window vs full attention
    ``cu_seqlens``): recorded for every block, not only the first. added_between: the loop adds
    something to the hidden state between blocks (Qwen3-VL's deepstack visual features after the
    first LLM layers): what it adds is recorded during capture (a block's input minus the previous
    block's output) and added again when the blocks are replayed.
    """

    paths: tuple[str, ...]
    kind: str
    single_call: bool = True
    mask_key: str | None = None
    reach_hint: str = ""
    per_block: tuple[str, ...] = ()
    added_between: bool = False


@dataclass(frozen=True)
class ComponentDef:
    """A component: blocks in `stacks`, or (block-less, e.g. a projector) the Linears inside `modules`
    (a ModuleList there stands for each of its modules, each run on its own inputs).

    unexportable: why a pack-quantized checkpoint cannot hold this component's quantized Linears
    (empty: it can).
    """

    name: str
    stacks: tuple[StackDef, ...] = ()
    modules: tuple[str, ...] = ()
    unexportable: str = ""

    def __post_init__(self):
        if self.name not in COMPONENTS:
            raise MMQConfigError(f"component {self.name!r}: accepted names: {', '.join(COMPONENTS)}")
        if bool(self.stacks) == bool(self.modules):
            raise MMQConfigError(f"component {self.name}: give stacks or modules (exactly one)")


@dataclass(frozen=True)
class ByConfig:
    """One of several ComponentDefs, chosen by a config value (dotted path from ``model.config``)."""

    key: str
    options: dict[str, ComponentDef]
    what: str = "language model"


@dataclass(frozen=True)
class Family:
    """Everything family-specific about one transformers class.

    lmms_model / wrapper: the lmms-eval model id and its class path; chat: the wrapper is an
    lmms-eval chat model (its requests carry chat messages). excluded: output heads,
    never quantized. feature_layer: (component, config attribute) when outputs are read at a
    hidden-state index of that component, so the blocks after it are unused (LLaVA).
    prompt: ``plain`` or ``chat`` (the processor's chat template with one image);
    calibration: ``caption`` (the caption as the text) or ``caption_answer`` (a caption
    instruction as the user turn and the caption as the answer).
    """

    arch: str
    lmms_model: str
    wrapper: str
    components: tuple[ComponentDef | ByConfig, ...]
    chat: bool = False
    excluded: tuple[str, ...] = ()
    feature_layer: tuple[str, str] | None = None
    prompt: str = "plain"
    calibration: str = "caption"

    def __post_init__(self):
        if self.prompt not in PROMPT_STYLES:
            raise MMQConfigError(f"family {self.arch}: prompt={self.prompt!r}; accepted: {', '.join(PROMPT_STYLES)}")
        if self.calibration not in ("caption", "caption_answer"):
            raise MMQConfigError(f"family {self.arch}: calibration={self.calibration!r}; "
                                 "accepted: caption, caption_answer")


FAMILIES: dict[str, Family] = {}
BLOCK_KINDS: dict[str, BlockKind] = {}


def register_block_kind(kind: BlockKind) -> BlockKind:
    """Add (or replace) a block kind; returns it."""
    BLOCK_KINDS[kind.name] = kind
    return kind


def register_family(family: Family) -> Family:
    """Add (or replace) a family entry; every block kind it names must be registered first."""
    for comp in family.components:
        options = comp.options.values() if isinstance(comp, ByConfig) else (comp,)
        for option in options:
            for stack in option.stacks:
                if stack.kind not in BLOCK_KINDS:
                    raise MMQConfigError(f"family {family.arch}: block kind {stack.kind!r} is not registered "
                                         f"(known: {', '.join(sorted(BLOCK_KINDS))})")
    FAMILIES[family.arch] = family
    return family


def family(arch: str) -> Family:
    """The entry of a transformers class name; MMQConfigError listing the supported ones otherwise."""
    try:
        return FAMILIES[arch]
    except KeyError:
        raise MMQConfigError(
            f"quantization does not support {arch}: no architecture-registry entry; supported: "
            f"{', '.join(sorted(FAMILIES))} (add one with mmq_eval.quant.registry.register_family)"
        ) from None


def components_of(lmms_model: str) -> tuple[str, ...]:
    """Components any family served by an lmms-eval model id can have, in pipeline order."""
    names = set()
    for fam in FAMILIES.values():
        if fam.lmms_model == lmms_model:
            names |= {c.name if isinstance(c, ComponentDef) else next(iter(c.options.values())).name
                      for c in fam.components}
    return tuple(c for c in COMPONENTS if c in names)


def lmms_models() -> dict[str, str]:
    """lmms-eval model id -> wrapper class path, over every registered family."""
    return {fam.lmms_model: fam.wrapper for fam in FAMILIES.values()}


def chat_models() -> set[str]:
    """The lmms-eval model ids whose wrapper is a chat model."""
    return {fam.lmms_model for fam in FAMILIES.values() if fam.chat}
