"""Recover the integer grid (codes, scale, zero point) behind fake-quantized weights.

The engine replaces each quantized Linear weight by its dequantized values ``s · (q − z)`` (see
``mmq_eval.quant.formats``) whatever the method (RTN, GPTQ, AWQ), so the integers are implicit.
Per (row, group) this finds a scale ``s`` and integers ``k = q − z`` that reproduce every value
to within a few units of the weight dtype's precision, then states them in compressed-tensors'
signed convention: codes and zero points in ``[−2^(b−1), 2^(b−1) − 1]``, dequantized as
``(code − zero) · scale``. Symmetric grids have ``zero = 0`` (our ``z = 2^(b−1)``).

Any (s, k) that reproduces the values is as good as the one the engine used (the weights, not
the factorisation, decide the model's outputs); weights not on such a grid raise MMQConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.plan import LayerFormat

#: Reconstruction tolerance, in units of the weight dtype's epsilon times the group's max |w|.
TOLERANCE_EPS = 8


@dataclass
class IntGrid:
    """One weight matrix as integers on a per-(row, group) grid, compressed-tensors convention."""

    codes: Tensor  # int8 (out, in), in [−2^(b−1), 2^(b−1) − 1]
    scale: Tensor  # (out, groups), the weight's dtype
    zero: Tensor | None  # int8 (out, groups); None for symmetric grids
    group_size: int

    def dequantize(self) -> Tensor:
        """``(code − zero) · scale`` in the scale's dtype, as compressed-tensors computes it."""
        k = self.codes.to(self.scale.dtype)
        if self.zero is not None:
            k = k - self.zero.to(self.scale.dtype).repeat_interleave(self.group_size, dim=1)
        return k * self.scale.repeat_interleave(self.group_size, dim=1)


def _fit(G: Tensor, candidates, fmt: LayerFormat, tol: Tensor, dtype: torch.dtype):
    """First candidate scale per group whose integer multiples reproduce the group within tol.

    Returns (scale in `dtype`, k as float32, found mask) for groups G (n, group_size) in float32.
    """
    maxq, half = 2**fmt.bits - 1, 2 ** (fmt.bits - 1)
    n = G.shape[0]
    scale = torch.ones(n, dtype=G.dtype, device=G.device)
    k_out = torch.zeros_like(G)
    found = torch.zeros(n, dtype=torch.bool, device=G.device)
    for cand in candidates:
        todo = (~found).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        s = cand[todo].to(dtype).float()
        Gt = G[todo]
        k = torch.round(Gt / s[:, None])
        kmin, kmax = k.amin(1), k.amax(1)
        if fmt.sym:
            in_range = (kmin >= -half) & (kmax <= half - 1)
        else:
            in_range = (kmax - kmin <= maxq) & (kmax <= maxq) & (kmin >= -maxq)
        close = ((k * s[:, None]).to(dtype).float() - Gt).abs().amax(1) <= tol[todo]
        ok = in_range & close & (s > 0)
        idx = todo[ok]
        scale[idx], k_out[idx], found[idx] = s[ok], k[ok], True
    return scale, k_out, found


def recover_grid(W: Tensor, fmt: LayerFormat, name: str = "weight") -> IntGrid:
    """The integer grid of fake-quantized weights ``W`` (out, in) in format ``fmt``.

    Raises MMQConfigError when some group is not on a ``fmt.bits``-bit grid (the weights were
    not quantized in this format).
    """
    if fmt.per_tensor:
        raise MMQConfigError(f"{name}: the per-tensor uniform format has no integer zero point to recover")
    rows, cols = W.shape
    gs = fmt.group_size
    maxq, half = 2**fmt.bits - 1, 2 ** (fmt.bits - 1)
    G = W.detach().float().reshape(rows * (cols // gs), gs)
    lo, hi = G.amin(1), G.amax(1)
    m = torch.maximum(lo.abs(), hi.abs())
    tol = TOLERANCE_EPS * torch.finfo(W.dtype).eps * m
    unit = torch.ones_like(m)
    if fmt.sym:  # the largest |k| is one of 1 … 2^(b−1)
        candidates = (torch.where(m > 0, m / K, unit) for K in range(half, 0, -1))
    else:  # k_max − k_min is one of 1 … 2^b − 1; a constant group is k = ±1 (or 0)
        span = hi - lo
        const = torch.where(m > 0, m, unit)
        candidates = (torch.where(span > 0, span / D, const) for D in range(maxq, 0, -1))
    scale, k, found = _fit(G, candidates, fmt, tol, W.dtype)
    if not bool(found.all()):
        bad = int((~found).sum())
        raise MMQConfigError(
            f"{name}: {bad} of {found.numel()} groups are not on a {fmt.bits}-bit "
            f"{'symmetric' if fmt.sym else 'asymmetric'} grid of group size {gs}; export the model "
            "right after quantizing it with the same spec"
        )
    if fmt.sym:
        codes, zero = k, None
    else:  # our zero point z ∈ [0, 2^b − 1] keeps q = k + z in range; shift both by 2^(b−1)
        z = torch.clamp(-k.amin(1), min=0)
        codes = k + z[:, None] - half
        zero = (z - half).to(torch.int8).reshape(rows, cols // gs)
    return IntGrid(codes.to(torch.int8).reshape(rows, cols), scale.to(W.dtype).reshape(rows, cols // gs), zero, gs)
