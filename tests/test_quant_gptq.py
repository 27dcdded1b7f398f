"""GPTQ against a plain reference implementation of the original algorithm, and against RTN."""

import pytest
import torch

from mmq_eval.quant.formats import fake_quantize
from mmq_eval.quant.gptq import HessianAccumulator, gptq_quantize, relative_output_error


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_gptq(W, H, bits, group_size, sym, damp=0.01, act_order=False, static_groups=False):
    """Frantar et al.'s algorithm as published, column by column, no lazy batching.

    Quantizer: per (row, group) min–max with the range widened to contain 0; asymmetric zero
    round(−min/scale), symmetric range ±max|w| with zero (maxq+1)/2. Returns integer codes.
    """
    W, H = W.clone().double(), H.clone().double()
    cols = W.shape[1]
    maxq = 2**bits - 1

    def params(w):
        xmin, xmax = w.min(1).values.clamp(max=0), w.max(1).values.clamp(min=0)
        if sym:
            xmax = torch.maximum(xmin.abs(), xmax)
            xmin = -xmax
        empty = (xmin == 0) & (xmax == 0)
        xmin[empty], xmax[empty] = -1.0, 1.0
        scale = (xmax - xmin) / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
        return scale, zero

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if group_size == cols:
        scale, zero = params(W)
    if static_groups:
        static = [params(W[:, g:g + group_size]) for g in range(0, cols, group_size)]
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for j in range(cols):
        if group_size < cols:
            if static_groups:
                scale, zero = static[int(perm[j]) // group_size]
            elif j % group_size == 0:
                scale, zero = params(W[:, j:j + group_size])
        w = W[:, j]
        q = torch.clamp(torch.round(w / scale) + zero, 0, maxq)
        Q[:, j] = q
        err = (w - scale * (q - zero)) / Hinv[j, j]
        W[:, j:] -= torch.outer(err, Hinv[j, j:])
    return Q[:, torch.argsort(perm)]


def _layer(out_f, in_f, tokens, seed):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g, dtype=torch.float64)
    # correlated, unevenly scaled inputs: what makes GPTQ differ from RTN
    mix = torch.randn(in_f, in_f, generator=g, dtype=torch.float64) / in_f**0.5 + torch.eye(in_f, dtype=torch.float64)
    X = torch.randn(tokens, in_f, generator=g, dtype=torch.float64) @ mix
    X = X * torch.rand(in_f, generator=g, dtype=torch.float64).mul(3).add(0.1)
    return W, X


@pytest.mark.parametrize("bits,group_size,sym,act_order,static_groups", [
    (4, 64, False, False, False),
    (3, 64, True, False, False),
    (4, 32, False, True, False),
    (4, 32, False, True, True),
    (2, 64, False, False, True),
])
def test_same_integer_codes_as_reference(bits, group_size, sym, act_order, static_groups):
    W, X = _layer(48, 64, 512, seed=bits + group_size)
    X[:, 5] = 0  # a dead input feature
    H = 2 * X.t() @ X / X.shape[0]
    ref = reference_gptq(W, H, bits, group_size, sym, act_order=act_order, static_groups=static_groups)
    ours = gptq_quantize(W.float(), H.float(), bits, group_size, sym, act_order=act_order,
                         static_groups=static_groups, block_size=16).qweight
    assert torch.equal(ours.codes.double(), ref)
    assert ours.codes.dtype == torch.uint8
    assert torch.all(ours.weight[:, 5] == 0)  # dead column: weight 0
    # the returned grid: one (scale, zero) per row and group, reproducing the weights exactly
    assert ours.scale.shape == ours.zero.shape == (48, 64 // group_size)
    assert torch.equal(ours.weight, ours.dequantize())
    if act_order and not static_groups:  # groups are runs of the activation order, not of columns
        assert ours.g_idx is not None and torch.bincount(ours.g_idx).tolist() == [group_size] * (64 // group_size)
    else:
        assert ours.g_idx is None


def test_per_channel_codes_and_values_per_row():
    W, X = _layer(32, 48, 256, seed=1)
    H = 2 * X.t() @ X / X.shape[0]
    ours = gptq_quantize(W.float(), H.float(), 3, 48, sym=False).qweight
    assert ours.scale.shape == (32, 1)
    assert torch.equal(ours.codes.double(), reference_gptq(W, H, 3, 48, False))
    for row in ours.weight:
        assert row.unique().numel() <= 8


@pytest.mark.parametrize("bits", [3, 4])
def test_calibration_error_below_rtn(bits):
    # more tokens than input features (with fewer GPTQ overfits the calibration set)
    W, X = _layer(96, 128, 1024, seed=bits)
    W, X = W.float(), X.float()
    acc = HessianAccumulator(128, W.device)
    for chunk in X.split(100):
        acc.add(chunk)
    H = acc.hessian()
    assert torch.allclose(H, 2 * X.t() @ X / X.shape[0], rtol=1e-4, atol=1e-3)
    res = gptq_quantize(W, H.clone(), bits, 128, sym=False)
    gptq = res.qweight.weight
    rtn = fake_quantize(W, bits, 128, sym=False)

    def err(Q):
        return ((X @ (Q - W).t()) ** 2).sum() / ((X @ W.t()) ** 2).sum()

    assert err(gptq) < 0.8 * err(rtn)
    assert relative_output_error(W, gptq, H) == pytest.approx(float(err(gptq)), rel=1e-3)
    assert res.output_rel_err == pytest.approx(float(err(gptq)), rel=1e-3)  # from GPTQ's own errors


def test_hessian_accumulates_one_triangle_and_returns_the_symmetric_matrix():
    X = torch.randn(300, 1100, dtype=torch.float64)  # wider than the 1024-row mirroring blocks
    acc = HessianAccumulator(1100, X.device)
    for chunk in (X[:120], X[120:120], X[120:]):  # an empty batch adds nothing
        acc.add(chunk)
    H = acc.hessian()
    assert acc.count == 300 and torch.equal(H, H.t())
    assert torch.allclose(H.double(), 2 * X.t() @ X / 300, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act_order,damp", [(False, 0.01), (True, 0.01), (False, 0.5)])
def test_output_error_from_the_scaled_errors_equals_the_direct_one(act_order, damp):
    """W − Q = E·U makes ‖E‖² the damped quadratic error; the damping's share comes off exactly,
    also with dead inputs (their weights are not part of the output) and a reordered H."""
    W, X = _layer(40, 96, 400, seed=7)
    X[:, [3, 50]] = 0
    H = 2 * X.t() @ X / X.shape[0]
    res = gptq_quantize(W, H.clone(), 3, 32, sym=False, act_order=act_order, damp=damp)
    direct = ((X @ (res.qweight.weight - W).t()) ** 2).sum() / ((X @ W.t()) ** 2).sum()
    assert res.output_rel_err == pytest.approx(float(direct), rel=1e-9)  # float64 throughout
    assert res.output_rel_err > 0.001


def test_the_hessian_is_consumed_as_the_inverse_factor():
    W, X = _layer(8, 24, 100, seed=3)
    H = (2 * X.t() @ X / X.shape[0]).float()
    damped = H + 0.01 * H.diagonal().mean() * torch.eye(24)
    gptq_quantize(W.float(), H, 4, 24, sym=True)
    assert torch.equal(H, H.triu())  # H's own memory now holds U, with Uᵀ U = (H + λI)⁻¹
    assert torch.allclose(H.t() @ H, torch.linalg.inv(damped.double()).float(), rtol=1e-4, atol=1e-6)


def test_non_positive_definite_hessian_retries_with_more_damping():
    H = torch.tensor([[1.0, 3.0], [3.0, 1.0]])  # eigenvalues −2 and 4: PD only from damp 10 on
    W = torch.tensor([[0.3, -0.7], [1.0, 0.2]])
    with pytest.warns(UserWarning, match="not positive definite"):
        res = gptq_quantize(W, H, 4, 2, sym=False, damp=0.01)
    assert res.retries == 3 and res.damp == pytest.approx(10.0)
    with pytest.raises(RuntimeError, match="not positive definite"), pytest.warns(UserWarning):
        gptq_quantize(W, -torch.eye(2) * 1e6 + H, 4, 2, sym=False, damp=0.01)
