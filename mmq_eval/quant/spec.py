"""What to quantize and how: the quantization spec parsed from lmms-eval model args.

Flat keys, one per model arg (see `QUANT_ARG_KEYS`):

- ``method``: ``none`` | ``uniform`` | ``rtn`` | ``gptq`` | ``awq``.
- ``bits``: bit width for every component; ``vit_bits``, ``qformer_bits``, ``projector_bits``,
  ``llm_bits`` override it. 2–8, or 16 for "leave untouched".
- ``layer_group`` (``first`` / ``middle`` / ``last`` third of a component's blocks, ``all``, or a
  ``+`` combination such as ``first+last``) and ``layer_type`` (``attn`` / ``mlp`` / ``both``),
  with per-component overrides ``vit_layer_group``, ``llm_layer_type``, ... They select blocks and
  Linear roles inside the transformer components (vit, qformer, llm); the projector has no blocks
  and is quantized whole whenever its bits are below 16.
- ``group_size`` (−1 = per output channel; default 128 where it divides the layer's input width,
  per channel elsewhere), ``sym``: rtn, gptq, awq.
- ``act_order``, ``static_groups``, ``damp``: gptq only.
- ``calib_samples`` (default 128), ``calib_seed`` (default 0), ``calib_split`` (default ``calib``):
  gptq and awq.

A key that does not apply to the chosen method is an error, so a typo or a forgotten ``method``
never silently changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.methods import METHOD_TABLE
from mmq_eval.quant.registry import BLOCK_COMPONENTS, COMPONENTS

METHODS = tuple(METHOD_TABLE)
LAYER_GROUPS = ("first", "middle", "last")
LAYER_TYPES = ("attn", "mlp")
#: Settings that select what is quantized (per component: ``vit_bits``, ``llm_layer_type``, ...);
#: their effect on each Linear is its LayerFormat.
SELECTION_SETTINGS = ("bits", "layer_group", "layer_type")
VALID_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
DEFAULT_GROUP_SIZE = 128

_BITS_KEYS = {f"{c}_bits": c for c in COMPONENTS}
_GROUP_KEYS = {f"{c}_layer_group": c for c in BLOCK_COMPONENTS}
_TYPE_KEYS = {f"{c}_layer_type": c for c in BLOCK_COMPONENTS}
_METHOD_KEYS = {name: m.settings for name, m in METHOD_TABLE.items()}
_ALL_METHOD_KEYS = frozenset().union(*_METHOD_KEYS.values())
_SELECTION_KEYS = frozenset({"layer_group", "layer_type", *_GROUP_KEYS, *_TYPE_KEYS})

QUANT_ARG_KEYS = frozenset({"method", "bits", *_BITS_KEYS, *_SELECTION_KEYS, *_ALL_METHOD_KEYS})


def _parse_int(key: str, value: Any, accepted: str) -> int:
    if isinstance(value, bool):
        raise MMQConfigError(f"{key}={value!r} is not valid; accepted: {accepted}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise MMQConfigError(f"{key}={value!r} is not valid; accepted: {accepted}")


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise MMQConfigError(f"{key}={value!r} is not valid; accepted: true or false")


def _parse_bits(key: str, value: Any) -> int:
    accepted = "2–8 or 16 (16 = not quantized)"
    bits = _parse_int(key, value, accepted)
    if bits not in VALID_BITS:
        raise MMQConfigError(f"{key}={value!r} is not valid; accepted: {accepted}")
    return bits


def _parse_layer_group(key: str, value: Any) -> str:
    accepted = "first, middle, last, all, or a '+' combination such as first+last"
    if not isinstance(value, str) or not value.strip():
        raise MMQConfigError(f"{key}={value!r} is not valid; accepted: {accepted}")
    parts = {p.strip().lower() for p in value.split("+")}
    if "all" in parts:
        parts = set(LAYER_GROUPS) | (parts - {"all"})
    unknown = parts - set(LAYER_GROUPS)
    if unknown:
        raise MMQConfigError(f"{key}={value!r} is not valid; accepted: {accepted}")
    if parts == set(LAYER_GROUPS):
        return "all"
    return "+".join(g for g in LAYER_GROUPS if g in parts)


def _parse_layer_type(key: str, value: Any) -> str:
    v = value.strip().lower() if isinstance(value, str) else value
    if v not in ("attn", "mlp", "both"):
        raise MMQConfigError(f"{key}={value!r} is not valid; accepted: attn, mlp, both")
    return v


@dataclass(frozen=True)
class QuantSpec:
    """A parsed, validated quantization spec (model-independent part).

    Build with `from_args` (lmms-eval model args) or `from_dict` (the `to_dict` JSON form).
    Per-component settings resolve through `component_bits`, `component_groups`,
    `component_types`; ``mmq_eval.quant.plan.build_plan(model, spec)`` adds the checks that
    need the model.
    """

    method: str = "none"
    bits: int | None = None
    component_bits_override: dict = field(default_factory=dict)
    layer_group: str = "all"
    group_override: dict = field(default_factory=dict)
    layer_type: str = "both"
    type_override: dict = field(default_factory=dict)
    group_size: int | None = None  # None: default 128, per-channel where 128 does not divide
    sym: bool = False
    act_order: bool = False
    static_groups: bool = False
    damp: float = 0.01
    calib_samples: int = 128
    calib_seed: int = 0
    calib_split: str = "calib"

    @classmethod
    def from_args(cls, args: dict) -> QuantSpec:
        """Parse model args (values int/float/str/bool); raise MMQConfigError naming the key."""
        unknown = sorted(set(args) - QUANT_ARG_KEYS)
        if unknown:
            raise MMQConfigError(
                f"unknown quantization argument {unknown[0]!r}; accepted: {', '.join(sorted(QUANT_ARG_KEYS))}"
            )
        args = {k: v for k, v in args.items() if v is not None}
        method = str(args.get("method", "none")).strip().lower()
        if method not in METHODS:
            raise MMQConfigError(
                f"method={args.get('method')!r} is not valid; accepted: {', '.join(METHODS)}"
            )
        allowed = _METHOD_KEYS[method]
        for key in sorted(set(args) & _ALL_METHOD_KEYS):
            if key not in allowed:
                users = [m for m in METHODS if key in _METHOD_KEYS[m]]
                raise MMQConfigError(
                    f"{key} applies only to method={'/'.join(users)} (got method={method})"
                )

        kw: dict[str, Any] = {"method": method}
        if "bits" in args:
            kw["bits"] = _parse_bits("bits", args["bits"])
        kw["component_bits_override"] = {
            c: _parse_bits(k, args[k]) for k, c in _BITS_KEYS.items() if k in args
        }
        if "layer_group" in args:
            kw["layer_group"] = _parse_layer_group("layer_group", args["layer_group"])
        kw["group_override"] = {
            c: _parse_layer_group(k, args[k]) for k, c in _GROUP_KEYS.items() if k in args
        }
        if "layer_type" in args:
            kw["layer_type"] = _parse_layer_type("layer_type", args["layer_type"])
        kw["type_override"] = {
            c: _parse_layer_type(k, args[k]) for k, c in _TYPE_KEYS.items() if k in args
        }
        if "group_size" in args:
            gs = _parse_int("group_size", args["group_size"], "-1 (per channel) or a positive integer")
            if gs == 0 or gs < -1:
                raise MMQConfigError(
                    f"group_size={args['group_size']!r} is not valid; accepted: -1 (per channel) or a positive integer"
                )
            kw["group_size"] = gs
        for key in ("sym", "act_order", "static_groups"):
            if key in args:
                kw[key] = _parse_bool(key, args[key])
        if "damp" in args:
            try:
                damp = float(args["damp"])
            except (TypeError, ValueError):
                damp = -1.0
            if isinstance(args["damp"], bool) or not 0.0 < damp <= 1.0:
                raise MMQConfigError(f"damp={args['damp']!r} is not valid; accepted: a number in (0, 1]")
            kw["damp"] = damp
        if "calib_samples" in args:
            n = _parse_int("calib_samples", args["calib_samples"], "a positive integer")
            if n < 1:
                raise MMQConfigError(
                    f"calib_samples={args['calib_samples']!r} is not valid: method={method} needs at least 1 calibration sample"
                )
            kw["calib_samples"] = n
        if "calib_seed" in args:
            seed = _parse_int("calib_seed", args["calib_seed"], "a non-negative integer")
            if seed < 0:
                raise MMQConfigError(f"calib_seed={args['calib_seed']!r} is not valid; accepted: a non-negative integer")
            kw["calib_seed"] = seed
        if "calib_split" in args:
            split = args["calib_split"]
            if not isinstance(split, str) or not split.strip():
                raise MMQConfigError(f"calib_split={split!r} is not valid; accepted: a split name such as calib")
            kw["calib_split"] = split.strip()
        spec = cls(**kw)
        spec._check_consistency(args)
        return spec

    @classmethod
    def from_dict(cls, d: dict) -> QuantSpec:
        """Inverse of `to_dict`."""
        return cls.from_args(d)

    def _check_consistency(self, args: dict) -> None:
        given_bits = [k for k in ("bits", *_BITS_KEYS) if k in args]
        if self.method == "none":
            low = [k for k in given_bits if _parse_bits(k, args[k]) < 16]
            if low:
                raise MMQConfigError(
                    f"{low[0]}={args[low[0]]} given but method=none; set method to one of uniform, rtn, gptq, awq"
                )
            selection = sorted(set(args) & _SELECTION_KEYS)
            if selection:
                raise MMQConfigError(f"{selection[0]} given but method=none quantizes nothing")
            return
        if not given_bits:
            raise MMQConfigError(
                f"method={self.method} needs a bit width: set bits (all components) or "
                "vit_bits / qformer_bits / projector_bits / llm_bits"
            )
        if self.static_groups and self.group_size == -1:
            raise MMQConfigError("static_groups=true needs groups: set group_size to a positive integer")

    # ---- resolution -------------------------------------------------------------------------

    def component_bits(self, component: str) -> int:
        """Bits for a component (16 = untouched)."""
        if self.method == "none":
            return 16
        return self.component_bits_override.get(component, self.bits if self.bits is not None else 16)

    def component_groups(self, component: str) -> frozenset[str]:
        """Selected block thirds of a component."""
        g = self.group_override.get(component, self.layer_group)
        return frozenset(LAYER_GROUPS) if g == "all" else frozenset(g.split("+"))

    def component_types(self, component: str) -> frozenset[str]:
        """Selected Linear roles (attn / mlp) inside a component's blocks."""
        t = self.type_override.get(component, self.layer_type)
        return frozenset(LAYER_TYPES) if t == "both" else frozenset({t})

    def setting_key(self, component: str, what: str) -> str:
        """The model-arg name that decided `what` (bits / layer_group / layer_type) for a component."""
        overrides = {"bits": self.component_bits_override, "layer_group": self.group_override,
                     "layer_type": self.type_override}[what]
        return f"{component}_{what}" if component in overrides else what

    @property
    def is_noop(self) -> bool:
        return self.method == "none" or all(self.component_bits(c) == 16 for c in COMPONENTS)

    @property
    def needs_calibration(self) -> bool:
        return METHOD_TABLE[self.method].calibrated and not self.is_noop

    @property
    def effective_group_size(self) -> int:
        """Group size used where it divides (−1 = per channel); 0 for per-tensor uniform."""
        if METHOD_TABLE[self.method].per_tensor:
            return 0
        return DEFAULT_GROUP_SIZE if self.group_size is None else self.group_size

    # ---- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Canonical JSON-able dict (flat model-arg keys) that `from_dict` reads back."""
        d: dict[str, Any] = {"method": self.method}
        if self.method == "none":
            return d
        if self.bits is not None:
            d["bits"] = self.bits
        for c in COMPONENTS:
            if c in self.component_bits_override:
                d[f"{c}_bits"] = self.component_bits_override[c]
        d["layer_group"] = self.layer_group
        for c in BLOCK_COMPONENTS:
            if c in self.group_override:
                d[f"{c}_layer_group"] = self.group_override[c]
        d["layer_type"] = self.layer_type
        for c in BLOCK_COMPONENTS:
            if c in self.type_override:
                d[f"{c}_layer_type"] = self.type_override[c]
        for key in sorted(_METHOD_KEYS[self.method]):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def __hash__(self) -> int:
        return hash(self.canonical_json())
