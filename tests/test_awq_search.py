"""AWQ's batched scale and clip searches: equal to their loop forms, and no worse than the old searches."""

import pytest
import torch

from mmq_eval.quant import awq
from mmq_eval.quant.formats import LayerFormat, fake_quantize, qparams_from_range, quantize_codes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FMT = LayerFormat(4, 32, sym=False)
OLD_CLIP_TOKENS = 512  # the first rows of X, which the clip search used before


def _layer(seed: int, n: int = 4096, cols: int = 128, rows: int = 96):
    """Inputs with a few large channels (what AWQ protects) and a weight that reads them."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, cols, generator=g)
    X[:, torch.randperm(cols, generator=g)[:6]] *= 12.0
    W = torch.randn(rows, cols, generator=g) * 0.05
    return W, X


# ---- the searches as written before batching (grid point by grid point, outputs on X's rows) ----

def loop_search_scale(W, X, x_mean, fmt):
    ref = X @ W.t()
    w_mean = awq._w_mean(W, fmt.group_size)
    best_loss = torch.mean((X @ fake_quantize(W, fmt.bits, fmt.group_size, fmt.sym).t() - ref) ** 2).item()
    best = None
    for k in range(awq.SCALE_GRID):
        alpha = k / awq.SCALE_GRID
        s = (x_mean.pow(alpha) / w_mean.pow(1 - alpha).clamp(min=1e-4)).clamp(min=1e-4)
        s = s / torch.sqrt(s.max() * s.min())
        Q = fake_quantize(W * s, fmt.bits, fmt.group_size, fmt.sym) / s
        loss = torch.mean((X @ Q.t() - ref) ** 2).item()
        if loss < best_loss:
            best_loss, best = loss, s
    return best


def reference_clipped_quant(Wg, max_val, fmt):
    m = max_val.unsqueeze(-1)
    Wc = torch.maximum(torch.minimum(Wg, m), -m)
    scale, zero = qparams_from_range(Wc.amin(-1).clamp(max=0), Wc.amax(-1).clamp(min=0), fmt.bits, fmt.sym)
    scale, zero = scale.unsqueeze(-1), zero.unsqueeze(-1)
    return scale * (quantize_codes(Wc, scale, zero, 2**fmt.bits - 1) - zero)


def loop_search_clip(W, X, fmt):
    rows, cols = W.shape
    G = cols // fmt.group_size
    Xg = X.reshape(-1, G, fmt.group_size).permute(1, 0, 2)
    Wg = W.reshape(rows, G, fmt.group_size)
    ref = torch.bmm(Xg, Wg.permute(1, 2, 0))
    org = Wg.abs().amax(-1)
    best_err, best = torch.full_like(org, float("inf")), org.clone()
    for i in range(int(awq.CLIP_MAX_SHRINK * awq.CLIP_GRID)):
        m = org * (1 - i / awq.CLIP_GRID)
        Q = reference_clipped_quant(Wg, m, fmt)
        err = ((torch.bmm(Xg, Q.permute(1, 2, 0)) - ref) ** 2).mean(1).t()
        better = err < best_err
        best_err[better], best[better] = err[better], m[better]
    return best


def _final_error(W, X, s, clip_rows, fmt, search_clip):
    """Output error on all rows of X of W quantized under scale s with clips searched on `clip_rows`."""
    Ws = W * s if s is not None else W
    Xs = X / s if s is not None else X
    clip = search_clip(Ws, clip_rows / s if s is not None else clip_rows, fmt)
    Q = awq.quantize_with_clip(Ws, clip, fmt).weight
    return awq.output_error(Ws, Q, Xs)


@pytest.mark.parametrize("sym", [False, True])
def test_batched_quant_equals_fake_quantize_per_matrix(sym):
    fmt = LayerFormat(3, 16, sym)
    W = torch.randn(5, 24, 64)
    W[1, 3, :16] = 0  # an all-zero group
    ours = awq._quant(W, fmt)
    assert torch.equal(ours, torch.stack([fake_quantize(w, 3, 16, sym) for w in W]))


@pytest.mark.parametrize("fmt", [FMT, LayerFormat(3, 16, sym=True)])
def test_in_place_clipped_quantization_equals_the_plain_formula(fmt):
    W = torch.randn(4, 6, 2, 16)
    m = W.abs().amax(-1) * torch.rand(4, 6, 2)
    assert torch.equal(awq._clipped_quant(W, m, fmt), reference_clipped_quant(W, m, fmt))
    assert torch.equal(awq._clipped_quant(W[0].expand(4, -1, -1, -1), m, fmt),
                       reference_clipped_quant(W[0].expand(4, -1, -1, -1), m, fmt))


def test_scale_losses_equal_the_loop_and_pick_the_same_scale():
    W, X = _layer(0, n=512)
    x_mean = X.abs().mean(0)
    ref = X @ W.t()
    scales = awq.grid_scales(x_mean, awq._w_mean(W, FMT.group_size))
    loop = torch.stack([torch.mean((X @ (fake_quantize(W * s, 4, 32, False) / s).t() - ref) ** 2) for s in scales])
    batched = awq.scale_losses(W, X, ref, scales, FMT)
    assert torch.allclose(batched, loop, rtol=1e-6, atol=0)
    assert int(batched.argmin()) == int(loop.argmin())
    s_loop = loop_search_scale(W, X, x_mean, FMT)
    assert s_loop is not None and torch.equal(awq.search_scale([W], X, x_mean, FMT), s_loop)


def test_scale_search_in_chunks_equals_one_batch(monkeypatch):
    W, X = _layer(1, n=256)
    ref = X @ W.t()
    scales = awq.grid_scales(X.abs().mean(0), awq._w_mean(W, FMT.group_size))
    whole = awq.scale_losses(W, X, ref, scales, FMT)
    monkeypatch.setattr(awq, "SEARCH_BYTES", 1)  # one grid point per chunk
    assert torch.allclose(awq.scale_losses(W, X, ref, scales, FMT), whole, rtol=1e-6, atol=0)


@pytest.mark.parametrize("search_bytes", [1, 1 << 29])  # one row per chunk; all rows at once
@pytest.mark.parametrize("fmt", [FMT, LayerFormat(3, 128, sym=True)])
def test_clip_search_through_gram_matrices_picks_what_the_output_loop_picks(monkeypatch, search_bytes, fmt):
    monkeypatch.setattr(awq, "SEARCH_BYTES", search_bytes)
    W, X = _layer(2, n=700)
    assert torch.equal(awq.search_clip(W, X, fmt), loop_search_clip(W, X, fmt))


def test_scale_search_uses_evenly_spaced_rows():
    X = torch.arange(10.0)[:, None].expand(10, 4)
    assert awq.evenly(X, 4)[:, 0].tolist() == [0.0, 3.0, 6.0, 9.0]
    assert awq.evenly(X, 20) is X


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subsampled_search_is_no_worse_than_the_full_loop(seed):
    """Scale on SCALE_SEARCH_TOKENS evenly spaced rows, clip on all: output error on all 4,096 rows
    within 1% of the old loop searches (scale on all rows, clip on the first OLD_CLIP_TOKENS)."""
    W, X = _layer(seed)
    x_mean = X.abs().mean(0)
    s_old = loop_search_scale(W, X, x_mean, FMT)
    old = _final_error(W, X, s_old, X[:OLD_CLIP_TOKENS], FMT, loop_search_clip)
    s_new = awq.search_scale([W], X, x_mean, FMT)
    new = _final_error(W, X, s_new, X, FMT, awq.search_clip)
    assert s_old is not None and s_new is not None
    assert new <= old * 1.01, (new, old)
    rtn = awq.output_error(W, fake_quantize(W, 4, 32, False), X)
    assert new < 0.8 * rtn  # the search does something


def test_output_error_routes_agree():
    W, X = _layer(3, n=300)
    Q = fake_quantize(W, 4, 32, False)
    D = X @ (Q - W).t()
    expected = float((D ** 2).sum() / ((X @ W.t()) ** 2).sum())
    assert awq.output_error(W, Q, X) == pytest.approx(expected, rel=1e-5)  # many rows: through X
    assert awq.output_error(W, Q, X[:20]) == pytest.approx(  # few rows: through XᵀX
        float(((X[:20] @ (Q - W).t()) ** 2).sum() / ((X[:20] @ W.t()) ** 2).sum()), rel=1e-5)
    wide = torch.randn(512, 16)  # out ≫ in: through XᵀX
    Xw = torch.randn(64, 16)
    Qw = fake_quantize(wide, 4, 16, False)
    assert awq.output_error(wide, Qw, Xw) == pytest.approx(
        float(((Xw @ (Qw - wide).t()) ** 2).sum() / ((Xw @ wide.t()) ** 2).sum()), rel=1e-5)
