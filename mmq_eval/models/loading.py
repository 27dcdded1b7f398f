"""Resolving ``pretrained=`` (hub id, local directory or embedded ``mmq:NAME``) and loading it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor

from mmq_eval.errors import MMQConfigError
from mmq_eval.models.image_only import allow_processors_without_torchvision
from mmq_eval.quant.offload import load_disk_offloaded

EMBEDDED_PREFIX = "mmq:"


def embedded_models() -> dict[str, Path]:
    """Embedded checkpoints shipped inside the package, by ``mmq:`` name."""
    root = Path(str(resources.files("mmq_eval.assets")))
    return {
        f"{EMBEDDED_PREFIX}{path.name}": path
        for path in sorted(root.iterdir())
        if path.is_dir() and (path / "config.json").is_file()
    }


def resolve_pretrained(pretrained: str) -> str:
    """Turn ``pretrained`` into something ``from_pretrained`` accepts (a path or a hub id)."""
    if pretrained.startswith(EMBEDDED_PREFIX):
        known = embedded_models()
        if pretrained not in known:
            raise MMQConfigError(
                f"pretrained={pretrained!r} is not an embedded model; embedded models: "
                f"{', '.join(known) or 'none installed'}"
            )
        return str(known[pretrained])
    path = Path(pretrained).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MMQConfigError(
                f"pretrained={pretrained!r} is a local path without config.json; point it at a "
                "directory written by save_pretrained (config.json, weights, processor files)"
            )
        return str(path)
    return pretrained


def architecture_of(source: str) -> str:
    """The ``architectures[0]`` class name recorded in a checkpoint's config."""
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise MMQConfigError(
            f"pretrained={source!r}: could not read its config ({exc}). Use a hub id that is "
            "downloadable or already in the Hugging Face cache (HF_HUB_OFFLINE=1 forbids "
            "downloads), a local directory, or an embedded model (mmq:shapes-blip2)."
        ) from None
    archs = getattr(config, "architectures", None) or []
    return archs[0] if archs else type(config).__name__


def load_processor(source: str):
    """Load the checkpoint's processor (image processor + tokenizer; image-only where torchvision is missing)."""
    allow_processors_without_torchvision()
    try:
        return AutoProcessor.from_pretrained(source)
    except OSError as exc:
        raise MMQConfigError(f"pretrained={source!r}: could not load its processor ({exc})") from None


def local_checkpoint(source: str) -> Path | None:
    """The folder holding ``source``'s files: itself, or its Hugging Face cache snapshot (None
    when it is not on this machine)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except (OSError, ValueError):
        return None


#: Parameters compressed-tensors leaves on a Linear after decompressing it
QUANTIZATION_PARAMS = ("weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx", "weight_global_scale")


def dense_after_load(model) -> None:
    """Make a model that ``from_pretrained`` left packed (a compressed-tensors checkpoint with
    several storage formats) dense now, as its first forward would, and drop the quantization
    parameters decompression leaves behind: ``generate`` of some classes (BLIP-2) never runs the
    forward that would decompress it, and the model then has exactly a dense model's parameters."""
    if not hasattr(model, "ct_decompress_hook"):
        return
    model.hf_quantizer.compressor.decompress_model(model)
    for module in model.modules():
        if hasattr(module, "quantization_scheme"):
            for name in QUANTIZATION_PARAMS:
                if hasattr(module, name):
                    delattr(module, name)
            del module.quantization_scheme, module.quantization_status


def load_model(model_class, source: str, dtype: torch.dtype, device: torch.device,
               offload_folder: str | None = None):
    """Load ``model_class`` from ``source`` in eval mode on ``device``, dense (``dense_after_load``).

    With ``offload_folder`` the weights stay on disk there and each module's are read onto
    ``device`` when it runs (``mmq_eval.quant.offload``): for models larger than memory.
    """
    if offload_folder is not None:
        return load_disk_offloaded(model_class, source, offload_folder, device, dtype=dtype).eval()
    try:
        model = model_class.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        raise MMQConfigError(f"pretrained={source!r}: could not load the weights ({exc})") from None
    except ImportError as exc:  # a quantized checkpoint without its library
        raise MMQConfigError(f"pretrained={source!r}: {exc}; for mmq-eval exports: pip install "
                             "'mmq-eval[export]'") from None
    dense_after_load(model)
    return model.to(device).eval()

