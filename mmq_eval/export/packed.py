"""Write a fake-quantized model as a compressed-tensors ``pack-quantized`` checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmq_eval.errors import MMQConfigError
from mmq_eval.export.schemes import FORMAT, check_plan, quantization_config
from mmq_eval.models.packed_checkpoint import EXPORT_RECORD
from mmq_eval.quant.formats import QuantizedWeight
from mmq_eval.quant.plan import QuantPlan

MIN_COMPRESSED_TENSORS = "0.20"  # dense packing of every width 1–8


def _require_compressed_tensors() -> None:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        found = version("compressed-tensors")
    except PackageNotFoundError:
        found = None
    if found is None or Version(found) < Version(MIN_COMPRESSED_TENSORS):
        raise MMQConfigError(
            f"export needs compressed-tensors>={MIN_COMPRESSED_TENSORS} (found {found or 'none'}): "
            "pip install 'mmq-eval[export]'"
        )


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    getattr(module, name).data = value.to(getattr(module, name).device)


@dataclass
class SignedGrid:
    """One weight matrix in compressed-tensors' signed convention: codes and zero points in
    [−2^(b−1), 2^(b−1) − 1], dequantized as ``(code − zero) · scale``; symmetric grids have no zero."""

    codes: torch.Tensor  # int8 (out, in)
    scale: torch.Tensor  # (out, groups), the weight's dtype
    zero: torch.Tensor | None  # int8 (out, groups)
    group_size: int

    def dequantize(self) -> torch.Tensor:
        k = self.codes.to(self.scale.dtype)
        if self.zero is not None:
            k = k - self.zero.to(self.scale.dtype).repeat_interleave(self.group_size, dim=1)
        return k * self.scale.repeat_interleave(self.group_size, dim=1)


def signed_grid(q: QuantizedWeight, dtype: torch.dtype, name: str) -> SignedGrid:
    """Our codes q ∈ [0, 2^b − 1] with zero points z as compressed-tensors stores them: both shifted
    by 2^(b−1) (q − z unchanged); a symmetric grid's z is that constant, so it has no zero."""
    if q.group_size == 0 or q.g_idx is not None:
        raise MMQConfigError(f"{name}: its groups are not runs of consecutive columns (per-tensor uniform, "
                             "or GPTQ act_order without static_groups); pack-quantized cannot hold it")
    half = 2 ** (q.bits - 1)
    codes = (q.codes.to(torch.int16) - half).to(torch.int8)
    zero = None if q.sym else (q.zero.round() - half).to(torch.int8)
    return SignedGrid(codes, q.scale.to(dtype), zero, q.group_size)


@torch.no_grad()
def _check_packed(model: nn.Module, grids: dict[str, SignedGrid], bits: dict[str, int]) -> None:
    """The packed codes must be our codes: compressed-tensors re-derives them from weight and scale."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    for name, grid in grids.items():
        module = model.get_submodule(name)
        codes = unpack_from_int32(module.weight_packed.data, bits[name], tuple(grid.codes.shape))
        if not torch.equal(codes, grid.codes.to(codes.device)):
            raise RuntimeError(f"{name}: packed codes differ from the quantizer's codes")


def write_packed(model: nn.Module, processor, plan: QuantPlan, qweights: dict[str, QuantizedWeight],
                 out_dir: str | Path) -> Path:
    """Save ``model`` (quantized per ``plan``; ``qweights``: the quantizers' codes, scales and zero
    points, ``QuantReport.qweights``) and ``processor`` to ``out_dir`` as pack-quantized.

    The model is compressed in place (compressed-tensors decompresses it again on its next
    forward). An export with one storage format records ``dequantize: true`` in its config, so
    that plain ``from_pretrained`` returns a dense model that ``generate`` can run (see
    ``mmq_eval.export.schemes``); the spec goes to ``EXPORT_RECORD``. Returns ``out_dir``.
    """
    _require_compressed_tensors()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    check_plan(plan)
    missing = [n for n in plan.targets if n not in qweights]
    if missing:
        raise MMQConfigError(f"no codes for {missing[0]} (and {len(missing) - 1} more): export the model "
                             "right after quantizing it with the same spec")
    grids = {name: signed_grid(qweights[name], model.get_submodule(name).weight.dtype, name)
             for name in plan.targets}
    config = quantization_config(plan)
    apply_quantization_config(model, config, show_progress=False)
    for name, grid in grids.items():
        module = model.get_submodule(name)
        _set(module, "weight", grid.dequantize().to(module.weight.dtype))
        _set(module, "weight_scale", grid.scale)
        _set(module, "weight_zero_point", grid.zero if grid.zero is not None
             else torch.zeros_like(module.weight_zero_point))
    compressor = ModelCompressor.from_pretrained_model(model, FORMAT)  # fills in the ignore list
    compressor.quantization_config.config_groups = config.config_groups  # keeps our group names
    compressor.compress_model(model)
    _check_packed(model, grids, {n: f.bits for n, f in plan.targets.items()})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    compressor.update_config(str(out))
    if len(config.config_groups) == 1:
        config_file = out / "config.json"
        saved = json.loads(config_file.read_text())
        saved["quantization_config"]["dequantize"] = True
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True))
    (out / EXPORT_RECORD).write_text(json.dumps({"spec": plan.spec.to_dict()}, indent=2) + "\n")
    return out
