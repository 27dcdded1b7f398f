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


@dataclass(frozen=True)
class LayerFormat:
    """Storage format of one quantized Linear weight.

    group_size: columns per (scale, zero) group; equals in_features for per-channel and is 0 for the
    per-tensor uniform format.
    """

    bits: int
    group_size: int
    sym: bool
    fallback: bool = False  # the default group size did not divide in_features: per channel instead

    @property
    def per_tensor(self) -> bool:
        return self.group_size == 0


@dataclass
class QuantizedWeight:
    """What a quantizer computed for one weight matrix (out, in): the integers and their grid.

    codes: q ∈ [0, 2^bits − 1] as uint8. scale, zero: per (row, group), float32 (float64 for
    float64 weights); zero holds integers (the symmetric formats' constant 2^(bits−1)), except
    for the per-tensor uniform format (group_size 0, shape (1, 1)), whose zero is the real
    offset −min / scale. g_idx: the group of each input column when groups are not runs of
    `group_size` consecutive columns (GPTQ's activation order), else None. weight: the
    dequantized values the model receives, as the quantizer computed them; `compact()` drops it
    for storage.
    """

    codes: Tensor
    scale: Tensor
    zero: Tensor
    group_size: int
    bits: int
    sym: bool
    g_idx: Tensor | None = None
    weight: Tensor | None = None

    def column_params(self) -> tuple[Tensor, Tensor]:
        """(scale, zero) per column, each (out, in)."""
        if self.group_size == 0:
            return self.scale.expand(self.codes.shape), self.zero.expand(self.codes.shape)
        if self.g_idx is None:
            return expand_groups(self.scale, self.group_size), expand_groups(self.zero, self.group_size)
        return self.scale[:, self.g_idx], self.zero[:, self.g_idx]

    def dequantize(self) -> Tensor:
        """``scale · (q − zero)`` per column (for per-tensor uniform, up to float rounding of `weight`),
        in one weight-sized tensor: the grid broadcasts over each group instead of being expanded."""
        rows, cols = self.codes.shape
        if self.g_idx is not None:
            s, z = self.scale[:, self.g_idx], self.zero[:, self.g_idx]
            return self.codes.to(s.dtype, memory_format=torch.contiguous_format).sub_(z).mul_(s)
        gs = self.group_size or cols  # per tensor: one (1, 1) grid
        q = self.codes.to(self.scale.dtype, memory_format=torch.contiguous_format).reshape(rows, cols // gs, gs)
        return q.sub_(self.zero[..., None]).mul_(self.scale[..., None]).reshape(rows, cols)

    def compact(self) -> QuantizedWeight:
        """The same without `weight`, on the host (what a report or cache keeps: an accelerator's
        memory is for the model)."""
        def host(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.cpu()

        return QuantizedWeight(host(self.codes), host(self.scale), host(self.zero), self.group_size, self.bits,
                               self.sym, host(self.g_idx))


def _packed(codes: Tensor) -> Tensor:
    return codes.to(torch.uint8)


def uniform_quantize_weight(w: Tensor, bits: int) -> QuantizedWeight:
    """The paper's per-tensor uniform format: `weight` exactly as `uniform_quantize` computes it."""
    codes, lo, alpha = uniform_codes(w, bits)
    levels = 2**bits - 1
    scale = (alpha / levels if alpha != 0 else torch.ones_like(alpha)).reshape(1, 1)
    zero = (-lo / scale).reshape(1, 1)
    weight = w.clone() if alpha == 0 else (codes / levels * alpha + lo).to(w.dtype)
    return QuantizedWeight(_packed(codes), scale, zero, 0, bits, False, weight=weight)


def rtn_quantize(w: Tensor, bits: int, group_size: int, sym: bool,
                 scale: Tensor | None = None, zero: Tensor | None = None) -> QuantizedWeight:
    """Round-to-nearest with min–max (or given) per-group parameters; group_size = in_features is per channel."""
    if scale is None:
        scale, zero = group_qparams(w, bits, group_size, sym)
    wf = _compute_dtype(w)
    codes = quantize_codes(wf, expand_groups(scale, group_size), expand_groups(zero, group_size), 2**bits - 1)
    q = QuantizedWeight(_packed(codes), scale, zero, group_size, bits, sym)
    q.weight = expand_groups(scale, group_size) * (codes - expand_groups(zero, group_size))
    return q


def quantize_weight(w: Tensor, fmt: LayerFormat) -> QuantizedWeight:
    """Data-free quantization in `fmt`: per-tensor uniform (group size 0) or grouped RTN; `weight` in w's dtype."""
    q = uniform_quantize_weight(w, fmt.bits) if fmt.per_tensor else rtn_quantize(w, fmt.bits, fmt.group_size, fmt.sym)
    q.weight = q.weight.to(w.dtype)
    return q


def fake_quantize(w: Tensor, bits: int, group_size: int, sym: bool) -> Tensor:
    """Quantize–dequantize in the weight's dtype; group_size 0 = the per-tensor uniform formula."""
    return quantize_weight(w, LayerFormat(bits, group_size, sym)).weight
