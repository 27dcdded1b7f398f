"""Validation of the wrapper's lmms-eval ``--model_args`` (everything that is not quantization)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from mmq_eval.errors import MMQConfigError
from mmq_eval.outputs import check_output_dir, check_output_file
from mmq_eval.tasks.prompts import PROMPT_STYLES

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class WrapperArgs:
    """Loading and running settings of an ``mmq_*`` lmms-eval model."""

    pretrained: str
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 1
    calib_data: str = "auto"  # see mmq_eval.models.calibration_data
    quant_cache: str | None = "default"
    report_path: str | None = None
    prompt_style: str = "auto"  # see mmq_eval.tasks.prompts.uninstructed_prompt
    offload_folder: str | None = None  # weights kept on disk there, read a block at a time

    def torch_device(self) -> torch.device:
        """The device to run on; ``auto`` picks CUDA when present, else the CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        """The weight dtype; ``auto`` is float16 on CUDA and float32 on the CPU."""
        if self.dtype == "auto":
            return torch.float16 if self.torch_device().type == "cuda" else torch.float32
        return DTYPES[self.dtype]


WRAPPER_KEYS = ("pretrained", "device", "dtype", "batch_size", "max_batch_size", "calib_data",
                "quant_cache", "report_path", "prompt_style", "offload_folder")


def unknown_key_error(key: str, accepted: Iterable[str]) -> MMQConfigError:
    """An error for a model arg nobody accepts, with the closest accepted names."""
    accepted = sorted(accepted)
    close = difflib.get_close_matches(key, accepted, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return MMQConfigError(
        f"unknown model arg '{key}'.{hint} Accepted model args: {', '.join(accepted)}."
    )


def _parse_batch_size(value: Any) -> int:
    text = str(value).strip()
    if text.startswith("auto"):
        raise MMQConfigError(
            f"batch_size={value!r} is not supported: automatic batch sizing is not implemented; "
            "pass a positive integer, e.g. --batch_size 8"
        )
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer() or number < 1:
        raise MMQConfigError(f"batch_size={value!r} must be a positive integer, e.g. batch_size=8")
    return int(number)


def _parse_device(value: Any) -> str:
    text = str(value).strip()
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise MMQConfigError(
            f"device={value!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMQConfigError(
            f"device={value!r} asks for CUDA but torch sees no CUDA device; use device=cpu "
            "(or device=auto)"
        )
    if device.type not in {"cpu", "cuda", "mps"}:
        raise MMQConfigError(f"device={value!r} is not supported; use auto, cpu, cuda or cuda:N")
    return text


def parse_wrapper_args(kwargs: dict[str, Any], default_pretrained: str) -> WrapperArgs:
    """Validate the wrapper's own model args (``kwargs`` holds only wrapper keys).

    Raises MMQConfigError naming the key and the accepted values.
    """
    pretrained = kwargs.get("pretrained") or default_pretrained
    if not isinstance(pretrained, str):
        raise MMQConfigError(f"pretrained={pretrained!r} must be a hub id, a local directory or mmq:NAME")
    dtype = str(kwargs.get("dtype") or "auto")
    if dtype != "auto" and dtype not in DTYPES:
        raise MMQConfigError(
            f"dtype={dtype!r} is not supported; use one of auto, {', '.join(DTYPES)}"
        )
    batch_size = _parse_batch_size(kwargs["batch_size"]) if kwargs.get("batch_size") is not None else 1
    device = _parse_device(kwargs["device"]) if kwargs.get("device") is not None else "auto"
    quant_cache = kwargs.get("quant_cache", "default")
    if isinstance(quant_cache, str) and quant_cache.lower() in {"none", "off", "false"}:
        quant_cache = None
    if quant_cache is False:
        quant_cache = None
    calib_data = kwargs.get("calib_data")
    report_path = kwargs.get("report_path")
    offload_folder = kwargs.get("offload_folder")
    if report_path is not None:  # written after quantizing: refused before, not after the work
        check_output_file(report_path, "report_path")
    if offload_folder is not None:  # the weights and the codes are written there
        check_output_dir(offload_folder, "offload_folder")
    prompt_style = str(kwargs.get("prompt_style") or "auto")
    if prompt_style not in PROMPT_STYLES:
        raise MMQConfigError(
            f"prompt_style={prompt_style!r} is not supported; use one of {', '.join(PROMPT_STYLES)} "
            "(auto: BLIP-2 reads lmms-eval's stock instructions in its own prompt format; raw: every "
            "task's text unchanged)"
        )
    return WrapperArgs(
        pretrained=pretrained,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        calib_data="auto" if calib_data is None else str(calib_data),
        quant_cache=None if quant_cache is None else str(quant_cache),
        report_path=None if report_path is None else str(report_path),
        prompt_style=prompt_style,
        offload_folder=None if offload_folder is None else str(offload_folder),
    )
