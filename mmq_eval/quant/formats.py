"""Integer weight formats: the paper's per-tensor uniform formula and grouped min–max (RTN) quantizers.

Grouped convention (the GPTQ reference code's, also used by our GPTQ and AWQ): a weight matrix
(out, in) is split along its input dimension into groups of ``group_size`` columns (per channel:
one group = a whole row). For each group, with ``maxq = 2**bits - 1``:

- asymmetric: ``xmin = min(w.min(), 0)``, ``xmax = max(w.max(), 0)``,
  ``scale = (xmax - xmin) / maxq``, ``zero = round(-xmin / scale)`` (an integer in [0, maxq]);
- symmetric: ``xmax = max(|w|)``, ``xmin = -xmax``, ``scale = 2·xmax / maxq``,
  ``zero = (maxq + 1) / 2`` (a constant, so not stored);
- an all-zero group uses ``xmin, xmax = -1, 1``.

Codes ``q = clamp(round(w / scale) + zero, 0, maxq)``; dequantized ``scale · (q − zero)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _compute_dtype(w: Tensor) -> Tensor:
    """w in float32, or float64 when it already is."""
    return w if w.dtype == torch.float64 else w.float()


def uniform_codes(w: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-tensor min–max codes of the paper: (codes, min, range)."""
    x = _compute_dtype(w)
    lo, hi = x.min(), x.max()
    alpha = hi - lo
    levels = 2**bits - 1
    if alpha == 0:
        return torch.zeros_like(x), lo, alpha
    return torch.round((x - lo) / alpha * levels), lo, alpha


def uniform_quantize(w: Tensor, bits: int) -> Tensor:
    """The paper's formula: normalise by the tensor's min/max to [0, 1], round to 2^bits − 1 steps, rescale."""
    codes, lo, alpha = uniform_codes(w, bits)
    if alpha == 0:
        return w.clone()
    return (codes / (2**bits - 1) * alpha + lo).to(w.dtype)


def qparams_from_range(xmin: Tensor, xmax: Tensor, bits: int, sym: bool) -> tuple[Tensor, Tensor]:
    """(scale, zero) for ranges xmin ≤ 0 ≤ xmax, per the module convention."""
    maxq = 2**bits - 1
    xmin, xmax = xmin.clone(), xmax.clone()
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)
    xmin[empty], xmax[empty] = -1.0, 1.0
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def group_qparams(w: Tensor, bits: int, group_size: int, sym: bool) -> tuple[Tensor, Tensor]:
    """Min–max (scale, zero) per (row, group), each of shape (out, in // group_size)."""
    rows, cols = w.shape
    wg = _compute_dtype(w).reshape(rows, cols // group_size, group_size)
    xmin = wg.amin(-1).clamp(max=0)
    xmax = wg.amax(-1).clamp(min=0)
    return qparams_from_range(xmin, xmax, bits, sym)


def quantize_codes(w: Tensor, scale: Tensor, zero: Tensor, maxq: int) -> Tensor:
    """Integer codes (as float) for weights and broadcastable scale/zero."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def expand_groups(p: Tensor, group_size: int) -> Tensor:
    """Per-group parameters (out, groups) → per-column (out, in)."""
    return p.repeat_interleave(group_size, dim=1)


@dataclass
class QuantizedWeight:
    """Integer codes with their per-group scale and zero point (float32, or float64 for float64 weights)."""

    codes: Tensor
    scale: Tensor
    zero: Tensor
    group_size: int

    def dequantize(self) -> Tensor:
        s, z = expand_groups(self.scale, self.group_size), expand_groups(self.zero, self.group_size)
        return s * (self.codes - z)


def rtn_quantize(w: Tensor, bits: int, group_size: int, sym: bool,
                 scale: Tensor | None = None, zero: Tensor | None = None) -> QuantizedWeight:
    """Round-to-nearest with min–max (or given) per-group parameters; group_size = in_features is per channel."""
    if scale is None:
        scale, zero = group_qparams(w, bits, group_size, sym)
    wf = _compute_dtype(w)
    codes = quantize_codes(wf, expand_groups(scale, group_size), expand_groups(zero, group_size), 2**bits - 1)
    return QuantizedWeight(codes, scale, zero, group_size)


def fake_quantize(w: Tensor, bits: int, group_size: int, sym: bool) -> Tensor:
    """Quantize–dequantize in the weight's dtype; group_size 0 = the per-tensor uniform formula."""
    if group_size == 0:
        return uniform_quantize(w, bits)
    return rtn_quantize(w, bits, group_size, sym).dequantize().to(w.dtype)
