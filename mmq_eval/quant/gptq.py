"""GPTQ (Frantar et al., 2022): quantize a Linear column by column, correcting later columns for
each column's rounding error through the inverse Hessian of the layer-wise squared error.

Vectorised float32 implementation with lazy batch updates (columns processed in blocks of 128,
the rest of the matrix updated once per block with a matmul), Cholesky factor of the inverse
Hessian, groups (dynamic or static), activation order, and dead-column handling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmq_eval.quant.block import BlockResult, relative
from mmq_eval.quant.finite import NonFiniteResult
from mmq_eval.quant.formats import LayerFormat, QuantizedWeight, group_qparams, quantize_codes
from mmq_eval.quant.threads import one_cpu_thread

MAX_DAMP_RETRIES = 4


class HessianAccumulator:
    """Accumulates H = 2/n · Σ x xᵀ over calibration tokens (rows of x)."""

    def __init__(self, n_features: int, device: torch.device):
        self.sum = torch.zeros(n_features, n_features, dtype=torch.float32, device=device)
        self.count = 0

    def add(self, x: Tensor) -> None:
        x = x.float()
        self.sum.addmm_(x.t(), x)
        self.count += x.shape[0]

    def hessian(self) -> Tensor:
        """H, scaled in place (no second (in, in) matrix): the accumulator is spent."""
        return self.sum.mul_(2.0 / max(self.count, 1))


class HessianStats:
    """The statistics GPTQ gathers for one block: a HessianAccumulator per targeted Linear."""

    def __init__(self, modules: dict[str, nn.Linear], n_samples: int):
        self.acc = {n: HessianAccumulator(m.in_features, m.weight.device) for n, m in modules.items()}

    def add(self, name: str, x: Tensor) -> None:
        self.acc[name].add(x)


@dataclass
class GPTQResult:
    qweight: QuantizedWeight  # codes, per-group scale / zero (and g_idx under act_order), dequantized weight
    damp: float  # relative damping finally used
    retries: int  # how many times the damping was raised 10x


def inverse_hessian_factor(H: Tensor, damp: float, name: str = "layer") -> tuple[Tensor, float, int]:
    """Upper Cholesky factor U of (H + λI)⁻¹ (Uᵀ U = H⁻¹), λ = damp · mean(diag H).

    A non-positive-definite H is retried with 10× the damping, with a warning, up to
    MAX_DAMP_RETRIES times. A non-finite H (its inputs overflowed float32) is a failed run, blamed on `name`.
    """
    if not bool(torch.isfinite(H).all()):
        raise NonFiniteResult(f"GPTQ {name}: the Hessian of its calibration inputs holds NaN/Inf "
                              "(inputs too large to accumulate in float32)")
    mean_diag = torch.mean(torch.diag(H))
    idx = torch.arange(H.shape[0], device=H.device)
    for retry in range(MAX_DAMP_RETRIES + 1):
        Hd = H.clone()
        Hd[idx, idx] += damp * mean_diag
        L, info = torch.linalg.cholesky_ex(Hd)
        del Hd  # at most two (in, in) work matrices besides H at any time
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            del L
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            del Hinv
            if info == 0:
                return U, damp, retry
        if retry < MAX_DAMP_RETRIES:
            warnings.warn(f"GPTQ {name}: Hessian not positive definite at damp={damp:g}; retrying with {damp * 10:g}")
            damp *= 10
    raise RuntimeError(f"GPTQ {name}: Hessian not positive definite even at damp={damp:g}")


@torch.no_grad()
def gptq_quantize(
    W: Tensor,
    H: Tensor,
    bits: int,
    group_size: int,
    sym: bool,
    *,
    act_order: bool = False,
    static_groups: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    name: str = "layer",
) -> GPTQResult:
    """GPTQ-quantize weight W (out, in) given the Hessian H (in, in) of its inputs.

    group_size = in_features means per channel. Computes in float32 (float64 if W is float64).
    Returns the integer codes with their per-group scales and zero points, and the dequantized
    weights (original column order).
    """
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    W = W.detach().to(dtype, copy=True)
    H = H.detach().to(dtype)  # copied below only where changed: the caller's H stays as given
    rows, cols = W.shape
    maxq = 2**bits - 1
    grouped = group_size < cols

    dead = torch.diag(H) == 0
    if bool(dead.any()):
        H = H.clone()
        H[dead, dead] = 1
        W[:, dead] = 0

    if not grouped:
        scale, zero = group_qparams(W, bits, cols, sym)  # (rows, 1)
    elif static_groups:
        g_scale, g_zero = group_qparams(W, bits, group_size, sym)  # (rows, groups)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm[:, None], perm]
    order = perm.tolist() if perm is not None else range(cols)  # original index of each column

    U, damp_used, retries = inverse_hessian_factor(H, damp, name)
    del H

    # Work on Wᵀ so that a column of W is a contiguous row: the per-column updates stay in cache.
    WT = W.t().contiguous()
    del W
    codes = torch.empty(WT.shape, dtype=torch.uint8, device=WT.device)  # integers in [0, maxq]
    group_scales, group_zeros = [], []  # dynamic groups, in processing order
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = WT[i1:i2]  # view: updates land in WT
        U1 = U[i1:i2, i1:i2]
        err = torch.empty(i2 - i1, rows, device=WT.device, dtype=dtype)
        with one_cpu_thread(WT.device):
            for i in range(i2 - i1):
                col = i1 + i
                if grouped:
                    if static_groups:
                        g = order[col] // group_size
                        scale, zero = g_scale[:, g:g + 1], g_zero[:, g:g + 1]
                    elif col % group_size == 0:
                        scale, zero = group_qparams(WT[col:col + group_size].t(), bits, group_size, sym)
                        group_scales.append(scale)
                        group_zeros.append(zero)
                s, z = scale[:, 0], zero[:, 0]
                w = W1[i]
                q = quantize_codes(w, s, z, maxq)
                codes[col] = q
                e = err[i]
                torch.sub(w, s * (q - z), out=e)
                e.div_(U1[i, i])
                W1[i + 1:].addr_(U1[i, i + 1:], e, alpha=-1)
        WT[i2:].addmm_(U[i1:i2, i2:].t(), err, alpha=-1)

    codes, g_idx = codes.t(), None
    if not grouped:
        group_size = cols
    elif static_groups:
        scale, zero = g_scale, g_zero
    else:
        scale, zero = torch.cat(group_scales, 1), torch.cat(group_zeros, 1)
    if perm is not None:
        inv = torch.argsort(perm)
        codes = codes[:, inv]
        if grouped and not static_groups:  # groups are runs of the permuted order
            g_idx = inv // group_size
    qweight = QuantizedWeight(codes, scale, zero, group_size, bits, sym, g_idx)
    qweight.weight = qweight.dequantize()
    return GPTQResult(qweight, damp_used, retries)


def relative_output_error(W: Tensor, Q: Tensor, H: Tensor) -> float:
    """‖X(Q − W)ᵀ‖² / ‖X Wᵀ‖² on the calibration tokens, from H ∝ XᵀX."""
    W, Q, H = W.float(), Q.float(), H.float()
    D = Q - W
    num = torch.sum((D @ H) * D)
    den = torch.sum((W @ H) * W)
    return float(num / den) if den > 0 else 0.0


def quantize_block(block: nn.Module, block_path: str, kind, targets: dict[str, LayerFormat],
                   stats: HessianStats, spec) -> BlockResult:
    """GPTQ every targeted Linear of one block from its accumulated Hessian (spec: damp, act_order, static_groups)."""
    result = BlockResult()
    for name, fmt in targets.items():
        acc = stats.acc.pop(name)
        if acc.count == 0:
            result.unseen.append(name)
            continue
        H = acc.hessian()
        W = block.get_submodule(relative(name, block_path)).weight.detach().float()
        res = gptq_quantize(W, H, fmt.bits, fmt.group_size, fmt.sym, act_order=spec.act_order,
                            static_groups=spec.static_groups, damp=spec.damp, name=name)
        if res.retries:
            result.notes.append(f"{name}: Hessian not positive definite; damping raised to {res.damp:g}")
        err = relative_output_error(W, res.qweight.weight, H)
        res.qweight.weight = None  # dequantized again when set: a block's float copies are never all held
        result.quantized[name] = (res.qweight, {"output_rel_err": err, "damp": res.damp})
    return result
