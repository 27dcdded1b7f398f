"""A packed (compressed-tensors ``pack-quantized``) checkpoint, such as ``mmq-eval export``
writes, read back for evaluation: is a checkpoint one, which Linears it stores in which format
(read from its packed tensors), and the quantization report of the model as stored.

``mmq_*`` models load such a checkpoint dense (``mmq_eval.models.loading.dense_after_load``), so
it computes what the exported fake-quantized model computes; the report's bits per weight follow
the convention of ``mmq_eval.quant.bpw`` with the formats the checkpoint holds.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from torch import nn

from mmq_eval.errors import MMQConfigError, MMQDataError
from mmq_eval.quant.arch import resolve_arch
from mmq_eval.quant.bpw import bits_per_weight, coverage, coverage_dicts
from mmq_eval.quant.formats import LayerFormat
from mmq_eval.quant.plan import QuantPlan
from mmq_eval.quant.report import QuantReport
from mmq_eval.quant.spec import QuantSpec

QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"
EXPORT_RECORD = "mmq_export.json"  # written beside an export: the spec it was quantized with

#: (bits, group size, symmetric, out_features, in_features) of one stored Linear
Stored = tuple[int, int, bool, int, int]


def quantization_config(folder: Path) -> dict | None:
    """The ``quantization_config`` of the checkpoint in ``folder`` (None: full precision); a
    quantization we cannot evaluate as stored raises MMQConfigError naming it."""
    config = json.loads((folder / "config.json").read_text())
    qc = config.get("quantization_config")
    if qc is None:
        return None
    method, fmt = qc.get("quant_method"), qc.get("format")
    if method != QUANT_METHOD or fmt != FORMAT:
        raise MMQConfigError(
            f"pretrained={folder} is already quantized ({method}, format {fmt}); mmq_* models evaluate "
            f"full-precision checkpoints and {QUANT_METHOD} {FORMAT} ones (what mmq-eval export writes). "
            "Use the full-precision checkpoint and quantize it with the model args"
        )
    return qc


def _bits_for(words: int, in_features: int, name: str) -> int:
    """The bit width whose dense packing of ``in_features`` codes takes ``words`` int32 words."""
    for bits in range(1, 9):
        if math.ceil(in_features * bits / 32) == words:
            return bits
    raise MMQDataError(f"{name}.weight_packed: {words} int32 words per row hold no 1–8-bit packing of "
                       f"{in_features} columns; the checkpoint is corrupt")


def stored_layers(folder: Path) -> dict[str, Stored]:
    """Per packed Linear of the checkpoint files (their own key names), its format, from the
    tensors alone: shape from ``weight_shape``, bits from the packed width, group size from the
    scales, asymmetric when it stores zero points."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise MMQDataError(f"{folder}: a quantized checkpoint without *.safetensors files")
    shapes: dict[str, tuple[int, ...]] = {}
    weight_shapes: dict[str, list[int]] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                if key.endswith(".weight_shape"):
                    weight_shapes[key.removesuffix(".weight_shape")] = f.get_tensor(key).tolist()
                elif key.endswith((".weight_packed", ".weight_scale", ".weight_zero_point")):
                    shapes[key] = tuple(f.get_slice(key).get_shape())
    layers = {}
    for name, (out_f, in_f) in weight_shapes.items():
        packed, scale = shapes.get(f"{name}.weight_packed"), shapes.get(f"{name}.weight_scale")
        if packed is None or scale is None or packed[0] != out_f or scale[0] != out_f or in_f % scale[1]:
            raise MMQDataError(f"{name}: weight_packed {packed} / weight_scale {scale} do not fit its weight_shape "
                               f"({out_f}, {in_f}); the checkpoint is corrupt")
        bits = _bits_for(packed[1], in_f, name)
        layers[name] = (bits, in_f // scale[1], f"{name}.weight_zero_point" not in shapes, out_f, in_f)
    return layers


def _matches(name: str, module: nn.Module, patterns: list[str]) -> bool:
    return any(re.match(p[3:], name) if p.startswith("re:") else p in (name, type(module).__name__)
               for p in patterns)


def configured_targets(model: nn.Module, qc: dict) -> dict[str, LayerFormat]:
    """Per Linear of ``model`` (its module names) that the config's groups target, its format."""
    targets = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or _matches(name, module, qc.get("ignore") or []):
            continue
        for group in qc["config_groups"].values():
            if _matches(name, module, group["targets"]):
                w = group["weights"]
                gs = module.in_features if w.get("strategy") == "channel" else w["group_size"]
                targets[name] = LayerFormat(w["num_bits"], gs, bool(w["symmetric"]))
                break
    return targets


def packed_report(model: nn.Module, folder: Path, pretrained: str) -> QuantReport:
    """The quantization report of the checkpoint in ``folder`` as loaded into ``model``: its
    formats read from the packed tensors and checked against what its config targets."""
    qc = quantization_config(folder)
    stored = stored_layers(folder)
    targets = configured_targets(model, qc)
    configured = Counter((f.bits, f.group_size, f.sym, model.get_submodule(n).out_features,
                          model.get_submodule(n).in_features) for n, f in targets.items())
    if configured != Counter(stored.values()):
        raise MMQDataError(f"{folder}: its config targets {len(targets)} Linears, but its files pack "
                           f"{len(stored)} with other formats or shapes; the checkpoint is inconsistent")
    record_file = folder / EXPORT_RECORD
    spec = json.loads(record_file.read_text())["spec"] if record_file.is_file() else {"method": "unknown"}
    arch = resolve_arch(model)
    plan = QuantPlan(arch, QuantSpec.from_args({}), {n: f for n, f in targets.items()
                                                      if n in {li.name for li in arch.linears}})
    summary = bits_per_weight(model, targets)
    return QuantReport(
        spec=spec, arch=arch.arch, model_id=pretrained, bpw=summary.bpw, bpw_seed=summary.bpw_seed,
        total_params=summary.total_params, quantized_params=summary.quantized_params,
        metadata_bits=summary.metadata_bits, coverage=coverage_dicts(coverage(plan)), layers=[],
        notes=[f"{FORMAT} checkpoint evaluated as stored: {len(stored)} packed Linears, bits per weight "
               "from their packed tensors"],
        unused_params=sum(plan.info(n).in_features * plan.info(n).out_features for n in plan.unused_targets),
        effective=plan.effective,
    )
