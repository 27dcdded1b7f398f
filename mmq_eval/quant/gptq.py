"""GPTQ (Frantar et al., 2022): quantize a Linear column by column, correcting later columns for
each column's rounding error through the inverse Hessian of the layer-wise squared error.

Vectorised float32 implementation with lazy batch updates (columns processed in blocks of 128,
the rest of the matrix updated once per block with a matmul), Cholesky factor of the inverse
Hessian, groups (dynamic or static), activation order, and dead-column handling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import lapack
from torch import Tensor, nn

from mmq_eval.quant.block import BlockResult, relative
from mmq_eval.quant.finite import NonFiniteResult, all_finite
from mmq_eval.quant.formats import LayerFormat, QuantizedWeight, group_qparams, quantize_codes
from mmq_eval.quant.shared_inputs import SharedInputs
from mmq_eval.quant.threads import blas_threads_like_torch, one_cpu_thread

MAX_DAMP_RETRIES = 4
TRIANGLE_BLOCKS = 8  # Hessian accumulation: at most this many column blocks ...
MIN_TRIANGLE_BLOCK = 384  # ... of at least this many features


class HessianAccumulator:
    """Accumulates H = 2/n · Σ x xᵀ over calibration tokens (rows of x).

    H is symmetric, so each batch adds only the blocks on and above the diagonal of a grid of up
    to TRIANGLE_BLOCKS × TRIANGLE_BLOCKS (0.6× a full matmul's time at 8); `hessian()` mirrors
    them into the lower triangle. (BLAS syrk would do the same, but scipy's BLAS threads contend
    with torch's between calls.)
    """

    def __init__(self, n_features: int, device: torch.device):
        self.sum = torch.zeros(n_features, n_features, dtype=torch.float32, device=device)
        self.count = 0
        blocks = min(TRIANGLE_BLOCKS, max(1, n_features // MIN_TRIANGLE_BLOCK))
        self._edges = [round(i * n_features / blocks) for i in range(blocks + 1)]
        self._spent = False

    def add(self, x: Tensor) -> None:
        x = x.float()
        self.count += x.shape[0]
        for i1, i2 in zip(self._edges, self._edges[1:]):
            self.sum[i1:i2, i1:].addmm_(x[:, i1:i2].t(), x[:, i1:])

    def copy(self) -> HessianAccumulator:
        twin = HessianAccumulator.__new__(HessianAccumulator)
        twin.sum, twin.count, twin._edges, twin._spent = self.sum.clone(), self.count, self._edges, self._spent
        return twin

    def hessian(self) -> Tensor:
        """H, made symmetric and scaled in place the first time (no second (in, in) matrix): the
        accumulator is spent."""
        if not self._spent:
            _mirror(self.sum, from_lower=False)
            self.sum.mul_(2.0 / max(self.count, 1))
            self._spent = True
        return self.sum


class HessianStats:
    """The statistics GPTQ gathers for one block: a HessianAccumulator per targeted Linear, one
    for Linears that read the same input (``SharedInputs``)."""

    def __init__(self, modules: dict[str, nn.Linear], n_samples: int):
        self.shared = SharedInputs({n: (m.in_features, m.weight.device) for n, m in modules.items()},
                                   lambda key: HessianAccumulator(*key))
        self._accs: dict[str, HessianAccumulator] | None = None

    def add(self, name: str, x: Tensor) -> None:
        self.shared.add(name, x)

    def _accumulators(self) -> dict[str, HessianAccumulator]:
        if self._accs is None:
            self._accs = self.shared.accumulators()
        return self._accs

    def reached(self, name: str) -> bool:
        """Whether any calibration input reached `name`."""
        return self._accumulators()[name].count > 0

    def take(self, name: str) -> Tensor:
        """The Hessian of `name`'s inputs for GPTQ to consume: a copy while other Linears still need
        the shared matrix, else the matrix itself, let go of here (the caller holds the only reference)."""
        acc = self._accumulators().pop(name)
        H = acc.hessian()
        if any(a is acc for a in self._accs.values()):
            return H.clone()
        acc.sum = None
        return H


@dataclass
class GPTQResult:
    qweight: QuantizedWeight  # codes, per-group scale / zero (and g_idx under act_order), dequantized weight
    damp: float  # relative damping finally used
    retries: int  # how many times the damping was raised 10x
    output_rel_err: float  # ‖X(Q − W)ᵀ‖² / ‖X Wᵀ‖² on the calibration tokens (H ∝ XᵀX)


def inverse_hessian_factor(H: Tensor, damp: float, name: str = "layer") -> tuple[Tensor, float, int]:
    """Upper Cholesky factor U of (H + λI)⁻¹ (Uᵀ U = (H + λI)⁻¹), λ = damp · mean(diag H).

    H is consumed: on the CPU, U is computed in H's own memory (LAPACK in place: no second
    (in, in) matrix), and the result is H's storage with its lower triangle zeroed. A
    non-positive-definite H is restored and retried with 10× the damping, with a warning, up to
    MAX_DAMP_RETRIES times. A non-finite H (its inputs overflowed float32) is a failed run,
    blamed on `name`.
    """
    if not all_finite(H):
        raise NonFiniteResult(f"GPTQ {name}: the Hessian of its calibration inputs holds NaN/Inf "
                              "(inputs too large to accumulate in float32)")
    diag = H.diagonal().clone()
    mean_diag = torch.mean(diag)
    for retry in range(MAX_DAMP_RETRIES + 1):
        H.diagonal().copy_(diag + damp * mean_diag)
        U = _factor_in_place(H) if H.device.type == "cpu" else _factor(H)
        if U is not None:
            return U, damp, retry
        _mirror(H, from_lower=True)
        H.diagonal().copy_(diag)
        if retry < MAX_DAMP_RETRIES:
            warnings.warn(f"GPTQ {name}: Hessian not positive definite at damp={damp:g}; retrying with {damp * 10:g}")
            damp *= 10
    raise RuntimeError(f"GPTQ {name}: Hessian not positive definite even at damp={damp:g}")


def _factor_in_place(H: Tensor) -> Tensor | None:
    """LAPACK potrf, potri, potrf on H's memory; None if H is not positive definite.

    H (C order) read as a Fortran array is Hᵀ, so LAPACK's lower triangle is H's upper one:
    potrf gives L (H = L Lᵀ) there as Lᵀ, potri turns it into (H⁻¹)'s triangle, and potrf again
    gives L₂ (H⁻¹ = L₂ L₂ᵀ) as L₂ᵀ = U. H's strict lower triangle is never written: it still holds
    the matrix for a retry until U is returned.
    """
    H = H if H.is_contiguous() else H.contiguous()
    a = H.numpy().T
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (a,))
    with blas_threads_like_torch():
        for step in (lambda m: potrf(m, lower=1, clean=0, overwrite_a=1),
                     lambda m: potri(m, lower=1, overwrite_c=1),
                     lambda m: potrf(m, lower=1, clean=0, overwrite_a=1)):
            out, info = step(a)
            if not np.shares_memory(out, a):
                raise RuntimeError("LAPACK copied the Hessian instead of factoring it in place")
            if info != 0:
                return None
    return H.triu_()


def _factor(H: Tensor) -> Tensor | None:
    """The same with torch's out-of-place factorisations (accelerators); H itself is not written."""
    L, info = torch.linalg.cholesky_ex(H)
    if info != 0:
        return None
    Hinv = torch.cholesky_inverse(L)
    del L  # at most two (in, in) work matrices besides H at any time
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    return U if info == 0 else None


def _mirror(H: Tensor, from_lower: bool, block: int = 1024) -> None:
    """Make H symmetric from its strict lower (or upper) triangle, block by block in place."""
    n = H.shape[0]
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        if from_lower:
            H[i1:i2, i2:] = H[i2:, i1:i2].t()
        else:
            H[i2:, i1:i2] = H[i1:i2, i2:].t()
        d = H[i1:i2, i1:i2]
        half = d.tril(-1) if from_lower else d.triu(1)
        d.copy_(half + half.t() + torch.diag(d.diagonal()))


def _quadratic_sum(W: Tensor, H: Tensor, rows: int = 1024) -> float:
    """Σ_r w_r H w_rᵀ over the rows of W (‖X Wᵀ‖² up to H's scale), a few rows at a time."""
    return sum(float(torch.sum((w @ H) * w, dtype=torch.float64)) for w in W.split(rows))


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
    H is consumed (its memory becomes the inverse Hessian's factor, let go of before the
    dequantized weight is made when the caller holds no reference): pass a copy to keep it.
    Everything is computed on detached tensors (no autograd; no decorator holding the arguments).
    Returns the integer codes with their per-group scales and zero points, the dequantized
    weights (original column order) and the output error, which costs no extra pass: GPTQ's
    updates make W − Q = E·U for the scaled errors E it computes column by column, so
    (W − Q)(H + λI)(W − Q)ᵀ sums to ‖E‖², and the damping's share λ‖W − Q‖² is taken off.
    """
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    W_given = W.detach().to(dtype)
    H = H.detach().to(dtype)
    rows, cols = W_given.shape
    maxq = 2**bits - 1
    grouped = group_size < cols
    signal = _quadratic_sum(W_given, H)  # ‖X Wᵀ‖², before H is changed

    # Work on Wᵀ so that a column of W is a contiguous row: the per-column updates stay in cache.
    WT = W_given.t().clone(memory_format=torch.contiguous_format)
    dead = torch.diag(H) == 0
    if bool(dead.any()):
        H[dead, dead] = 1
        WT[dead] = 0

    if not grouped:
        scale, zero = group_qparams(WT.t(), bits, cols, sym)  # (rows, 1)
    elif static_groups:
        g_scale, g_zero = group_qparams(WT.t(), bits, group_size, sym)  # (rows, groups)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        WT = WT[perm]
        H = H[perm[:, None], perm]
    order = perm.tolist() if perm is not None else range(cols)  # original index of each column

    damping = float(torch.mean(torch.diag(H)))  # λ / damp
    U, damp_used, retries = inverse_hessian_factor(H, damp, name)
    del H
    damping *= damp_used

    codes = torch.empty(WT.shape, dtype=torch.uint8, device=WT.device)  # integers in [0, maxq]
    group_scales, group_zeros = [], []  # dynamic groups, in processing order
    err_sq = torch.zeros((), dtype=torch.float64, device=WT.device)  # ‖E‖² (no sync per block on a GPU)
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
        err_sq += torch.sum(err * err, dtype=torch.float64)
    del WT, U, W1, U1, w, e, err  # the factor (H's memory) and the work copy: free before dequantizing

    codes, g_idx = codes.t().contiguous(), None
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
    change_sq = sum(float(torch.sum((q - w)[:, ~dead] ** 2, dtype=torch.float64))  # dead columns: 0 − 0
                    for q, w in zip(qweight.weight.split(1024), W_given.split(1024)))
    noise = max(float(err_sq) - damping * change_sq, 0.0)
    return GPTQResult(qweight, damp_used, retries, noise / signal if signal > 0 else 0.0)


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
        if not stats.reached(name):
            result.unseen.append(name)
            continue
        W = block.get_submodule(relative(name, block_path)).weight.detach().float()
        # the Hessian is passed on, not kept here: gptq_quantize frees it before dequantizing
        res = gptq_quantize(W, stats.take(name), fmt.bits, fmt.group_size, fmt.sym, act_order=spec.act_order,
                            static_groups=spec.static_groups, damp=spec.damp, name=name)
        if res.retries:
            result.notes.append(f"{name}: Hessian not positive definite; damping raised to {res.damp:g}")
        res.qweight.weight = None  # dequantized again when set: a block's float copies are never all held
        result.quantized[name] = (res.qweight, {"output_rel_err": res.output_rel_err, "damp": res.damp})
    return result
