"""Finite checks around every quantizer: a NaN or Inf stops the run with the layer's name.

Three places a non-finite value can enter, each with its own cause and fix:

- a targeted Linear's weight as loaded (`check_weight`): the checkpoint is corrupt (bad input,
  `MMQDataError`);
- the calibration inputs a Linear receives (`check_inputs`): the model overflows in half
  precision (`MMQConfigError`: run in float32) or the calibration data or an earlier weight is
  non-finite (`MMQDataError`);
- what a quantizer returns (`check_result`): scales, zero points or dequantized weight that are
  not finite although the weight was — the method failed (`NonFiniteResult`, a failed run).

Each check is ``torch.isfinite(...).all()`` over a few rows at a time; the count is taken only on failure.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmq_eval.errors import MMQConfigError, MMQDataError
from mmq_eval.quant.formats import QuantizedWeight

HALF = (torch.float16, torch.bfloat16)


class NonFiniteResult(RuntimeError):
    """A quantizer produced NaN/Inf from finite inputs: the run failed (not the user's input)."""


CHECK_ELEMENTS = 1 << 22  # per chunk: torch.isfinite allocates a float and two bool copies of what it checks


def all_finite(t: Tensor) -> bool:
    """Whether every entry of `t` is finite, checked a few rows at a time (bounded temporaries)."""
    if t.dim() < 2 or t.numel() <= CHECK_ELEMENTS:
        return bool(torch.isfinite(t).all())
    rows = max(1, CHECK_ELEMENTS // t[0].numel())
    return all(bool(torch.isfinite(c).all()) for c in t.split(rows))


def _bad(t: Tensor) -> int:
    """How many entries of `t` are NaN or ±Inf (0 when all are finite)."""
    if all_finite(t):
        return 0
    return int((~torch.isfinite(t)).sum())


def check_weight(name: str, weight: Tensor) -> None:
    """Refuse a targeted Linear whose weight (as loaded) holds NaN/Inf: the checkpoint is corrupt."""
    n = _bad(weight)
    if n:
        raise MMQDataError(f"{name}.weight holds {n} NaN/Inf values; the checkpoint is corrupt — "
                           "re-download or re-export it")


def check_inputs(name: str, x: Tensor) -> None:
    """Refuse calibration inputs of the Linear `name` that hold NaN/Inf, with the likely fix."""
    n = _bad(x)
    if not n:
        return
    where = f"the calibration inputs of {name} hold {n} NaN/Inf values"
    if x.dtype in HALF:
        raise MMQConfigError(f"{where} (the model runs in {str(x.dtype).removeprefix('torch.')}, "
                             "which overflows here): quantize with dtype=float32")
    raise MMQDataError(f"{where} although the model runs in {str(x.dtype).removeprefix('torch.')}: check "
                       "the calibration data and the checkpoint's weights before this layer")


def check_result(name: str, method: str, q: QuantizedWeight) -> None:
    """Fail the run when a quantizer's scales, zero points or dequantized weight are not finite."""
    parts = {"scale": q.scale, "zero point": q.zero, "dequantized weight": q.weight}
    bad = [f"{n} {what}" for what, t in parts.items() if t is not None and (n := _bad(t))]
    if bad:
        raise NonFiniteResult(f"{method} quantization of {name} produced NaN/Inf ({', '.join(bad)} values) "
                              "from a finite weight; this is a bug in the method — please report it with "
                              "the model and quantization settings")
