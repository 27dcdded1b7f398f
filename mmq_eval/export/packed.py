"""Write a fake-quantized model as a compressed-tensors ``pack-quantized`` checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mmq_eval.errors import MMQConfigError
from mmq_eval.export.grid import IntGrid, recover_grid
from mmq_eval.export.schemes import FORMAT, check_plan, quantization_config
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


@torch.no_grad()
def _check_packed(model: nn.Module, grids: dict[str, IntGrid], bits: dict[str, int]) -> None:
    """The packed codes must be our codes: compressed-tensors re-derives them from weight and scale."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    for name, grid in grids.items():
        module = model.get_submodule(name)
        codes = unpack_from_int32(module.weight_packed.data, bits[name], tuple(grid.codes.shape))
        if not torch.equal(codes, grid.codes.to(codes.device)):
            raise RuntimeError(f"{name}: packed codes differ from the recovered grid")


def write_packed(model: nn.Module, processor, plan: QuantPlan, out_dir: str | Path) -> Path:
    """Save ``model`` (quantized per ``plan``) and ``processor`` to ``out_dir`` as pack-quantized.

    The model is compressed in place (compressed-tensors decompresses it again on its next
    forward). Asymmetric exports record ``dequantize: true`` in the config so that plain
    ``from_pretrained`` can load them (see ``mmq_eval.export.schemes``). Returns ``out_dir``.
    """
    _require_compressed_tensors()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import apply_quantization_config

    check_plan(plan)
    grids = {name: recover_grid(model.get_submodule(name).weight, fmt, name)
             for name, fmt in plan.targets.items()}
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
    if not all(f.sym for f in plan.targets.values()):
        config_file = out / "config.json"
        saved = json.loads(config_file.read_text())
        saved["quantization_config"]["dequantize"] = True
        config_file.write_text(json.dumps(saved, indent=2, sort_keys=True))
    return out
