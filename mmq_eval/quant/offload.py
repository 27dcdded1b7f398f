"""Models larger than memory: quantizing a model whose weights live on disk, one block at a time.

A model loaded with ``load_disk_offloaded`` keeps its parameters in compressed-tensors' offload
caches (meta tensors in memory, safetensors files in an offload folder): a module's weights are
read from disk when it runs and dropped afterwards, so a forward pass holds about one module's
weights. Calibrated quantization then needs two things, both here: each block is worked on with its
weights read once and held until it is done (``onloaded``: one read per block, not one per
calibration sample), and every new value is written back through the offload
(``write_parameter``): an in-place change of an onloaded copy would be lost. Peak memory is then
about one block plus its calibration activations, not the model's size. On a model without
offloading both are no-ops around the plain operations. The integer codes kept for export and
the cache (1 byte per quantized weight) can go to disk too (``codes_on_disk``; the wrappers do so
under ``<offload_folder>/codes``).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.formats import QuantizedWeight


def _offload_cache_type() -> type | None:
    try:
        from compressed_tensors.offload.cache import OffloadCache
    except ImportError:  # without compressed-tensors no model can be offloaded this way
        return None
    return OffloadCache


def is_offloaded(module: nn.Module) -> bool:
    """True when ``module``'s own parameters live in an offload cache (read on access)."""
    cache = _offload_cache_type()
    return cache is not None and isinstance(module._parameters, cache)


def parameter_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Every parameter's shape by name, tied duplicates once (as ``named_parameters()``), without
    reading offloaded weights: an offloaded module's onloaded copies differ on every access, so
    ties are recognised on the offloaded tensors, whose shapes are known without a read."""
    seen, shapes = set(), {}
    for prefix, module in model.named_modules():
        own = module._parameters.offloaded_values if is_offloaded(module) else module._parameters
        for name, tensor in own.items():
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                shapes[f"{prefix}.{name}" if prefix else name] = tensor.shape
    return shapes


def write_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``module``'s own parameter ``name`` to ``value`` (cast to its dtype), through the offload
    when the module is offloaded."""
    with torch.no_grad():
        if is_offloaded(module):
            from compressed_tensors.offload import update_offload_parameter

            update_offload_parameter(module, name, value.to(module._parameters[name].dtype))
        else:
            target = getattr(module, name)
            target.copy_(value.to(target.dtype))


def write_back(root: nn.Module, names: list[str]) -> None:
    """Persist in-place changes made to the onloaded parameters ``names`` (dotted, relative to
    ``root``) of an offloaded model; nothing to do without offloading."""
    for dotted in names:
        owner, _, pname = dotted.rpartition(".")
        module = root.get_submodule(owner) if owner else root
        if is_offloaded(module):
            write_parameter(module, pname, getattr(module, pname).detach().clone())


def onloaded(block: nn.Module):
    """Context holding ``block``'s offloaded weights in memory, read once, until it exits."""
    if not any(is_offloaded(m) for m in block.modules()):
        return nullcontext()
    from compressed_tensors.offload import disable_offloading

    return disable_offloading()


def codes_on_disk(q: QuantizedWeight, path: Path) -> QuantizedWeight:
    """`q` with its integer codes written to `path` and memory-mapped from there (read-only: the
    kernel pages them in when export or the cache reads them, and may drop them), so the codes of a
    model larger than memory are not held in it (1 byte per quantized weight)."""
    codes = q.codes.detach().cpu().contiguous()
    codes.numpy().tofile(path)
    mapped = torch.from_file(str(path), shared=False, size=codes.numel(), dtype=codes.dtype)
    return dataclasses.replace(q, codes=mapped.view(codes.shape))


def load_disk_offloaded(model_class: type, source: str | Path, offload_folder: str | Path,
                        onload_device: torch.device | str = "cpu", **kwargs) -> nn.Module:
    """``model_class.from_pretrained(source)`` with every parameter offloaded to ``offload_folder``
    (created if missing), each module's weights read onto ``onload_device`` when it runs."""
    try:
        from compressed_tensors.offload import load_offloaded_model, set_onload_device
    except ImportError:
        raise MMQConfigError("offloading a model to disk needs compressed-tensors>=0.20: "
                             "pip install 'mmq-eval[export]'") from None
    Path(offload_folder).mkdir(parents=True, exist_ok=True)
    with load_offloaded_model(model_class):
        model = model_class.from_pretrained(source, device_map="disk", offload_folder=str(offload_folder), **kwargs)
    if torch.device(onload_device).type != "cpu":
        set_onload_device(model, torch.device(onload_device))
    return model
