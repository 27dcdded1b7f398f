"""AWQ (Lin et al., 2023): activation-aware per-input-channel scales, then a weight-clip search.

For a group of Linears that read the same input, a scale s per input channel multiplies their
weight columns and divides the input; the division is folded into the op that produces the input,
so the model computes the same function before rounding. Where scales may fold is declared per
block kind in the architecture registry (``ScaleMapping``), and only exact folds can be declared:

- a pre-norm LayerNorm/RMSNorm → the Linears it feeds (norm weight *and bias* divided by s);
- v → output projection (v's rows and bias divided by s; for a fused qkv only the v rows);
- fc1 → fc2 only through ReLU (positively homogeneous), and up → down in gated MLPs (the up
  projection enters linearly).

Never across GELU/SiLU activations or post-norm residual streams; those Linears get only the clip
search, and the report says so. s = x_meanᵅ / w_meanᵅ⁻¹ (normalised), α on a 20-point grid in [0, 1)
plus the identity, chosen by the group's output MSE on calibration inputs.

Shaped like ``gptq``: `AWQStats` gathers a block's statistics, `quantize_block` searches and folds
the scales (`search_scale` returns the scale, `fold_scale` applies it), then searches clip values
and rounds each Linear, returning its codes, scales and zero points.

Cost: the scale search runs on SCALE_SEARCH_TOKENS evenly spaced stored input rows (as llm-awq
subsamples), the whole grid in batched matmuls chunked to stay within SEARCH_BYTES of temporaries.
The clip search scores every clip value of a (row, group) through that group's Gram matrix XᵀX
(gs × gs) of all stored rows, so its cost does not grow with the token count; the reported output
error uses all stored rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.block import BlockResult, relative
from mmq_eval.quant.formats import (
    LayerFormat,
    QuantizedWeight,
    fake_quantize,
    qparams_from_range,
    rtn_quantize,
)
from mmq_eval.quant.gptq import relative_output_error
from mmq_eval.quant.registry import ACTIVATION, NORM, BlockKind, ScaleMapping
from mmq_eval.quant.shared_inputs import SharedInputs

SCALE_GRID = 20
CLIP_GRID = 20
CLIP_MAX_SHRINK = 0.5
SCALE_TOKENS = 4096  # input rows stored per Linear (the output error is measured on them)
SCALE_SEARCH_TOKENS = 1024  # of those, evenly spaced, for the scale search
SEARCH_BYTES = 1 << 29  # temporaries of one batched grid step
#: Activations through which a scale folds exactly (positively homogeneous: f(x/s) = f(x)/s for s > 0).
HOMOGENEOUS = (nn.ReLU, nn.Identity)


class InputRows:
    """What AWQ keeps of one Linear's inputs: the sum of |x| per input channel over all tokens,
    their count, and up to `cap` rows per call (evenly subsampled)."""

    def __init__(self, cap: int):
        self.cap, self.abs_sum, self.count, self.rows = cap, 0, 0, []

    def add(self, x: Tensor) -> None:
        x = x.float()
        self.abs_sum = self.abs_sum + x.abs().sum(0)
        self.count += x.shape[0]
        if x.shape[0] > self.cap:
            x = x[torch.linspace(0, x.shape[0] - 1, self.cap, device=x.device).long()]
        self.rows.append(x)

    def copy(self) -> InputRows:
        twin = InputRows(self.cap)
        twin.abs_sum, twin.count, twin.rows = self.abs_sum, self.count, list(self.rows)
        return twin


class AWQStats:
    """The statistics AWQ gathers for one block: `InputRows` per targeted Linear, one for Linears
    that read the same input (``SharedInputs``)."""

    def __init__(self, modules: dict[str, nn.Linear], n_samples: int):
        cap = rows_per_call(SCALE_TOKENS, n_samples)
        self.shared = SharedInputs({n: m.in_features for n, m in modules.items()}, lambda key: InputRows(cap))
        self._accs: dict[str, InputRows] | None = None

    def add(self, name: str, x: Tensor) -> None:
        self.shared.add(name, x)

    def _accumulators(self) -> dict[str, InputRows]:
        if self._accs is None:
            self._accs = self.shared.accumulators()
        return self._accs

    def inputs(self) -> dict[str, Tensor]:
        """Recorded input rows of each Linear the calibration reached, one tensor for Linears that
        shared their inputs (handed over: not kept here)."""
        joined: dict[int, Tensor] = {}
        out = {}
        for name, acc in self._accumulators().items():
            if acc.rows:
                if id(acc) not in joined:
                    joined[id(acc)] = torch.cat(acc.rows)[:SCALE_TOKENS]
                out[name] = joined[id(acc)]
        for acc in self._accs.values():
            acc.rows = []
        return out

    def x_mean(self, name: str) -> Tensor:
        acc = self._accumulators()[name]
        return acc.abs_sum / acc.count


def _module(block: nn.Module, path: str) -> nn.Module | None:
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def _out_rows(prev: nn.Module, mapping: ScaleMapping) -> int:
    if mapping.via == NORM:
        return prev.weight.numel()
    return prev.out_features // 3 if mapping.rows == "v_of_qkv" else prev.out_features


def applicable_mappings(block: nn.Module, kind: BlockKind) -> list[ScaleMapping]:
    """The block kind's mappings that fold exactly in this block, in search order.

    Skipped: optional mappings whose modules this block lacks, mappings whose `requires`
    attribute is false, activations that are not positively homogeneous, and widths that do not
    match (grouped-query attention's value heads). A required module that is missing means the
    registry entry does not describe the model: MMQConfigError.
    """
    out = []
    for m in kind.awq:
        paths = (m.prev, *m.linears) + ((m.activation,) if m.activation else ())
        missing = [p for p in paths if _module(block, p) is None]
        if missing:
            if m.optional:
                continue
            raise MMQConfigError(f"block kind {kind.name}: AWQ mapping module {missing[0]!r} is not in "
                                 f"{type(block).__name__} (fix the block kind in mmq_eval/quant/families.py)")
        if m.requires and not getattr(block, m.requires, False):
            continue
        if m.via == ACTIVATION and not isinstance(block.get_submodule(m.activation), HOMOGENEOUS):
            continue
        width = _out_rows(block.get_submodule(m.prev), m)
        if any(block.get_submodule(r).in_features != width for r in m.linears):
            continue
        out.append(m)
    return out


def foldable_parameters(model: nn.Module, plan) -> list[str]:
    """Full names of the parameters (besides targeted weights) AWQ may fold scales into under
    `plan` (a ``QuantPlan``): those of each applicable mapping's preceding norm or Linear, in the
    blocks with targets."""
    out = []
    for comp in plan.arch.components:
        for stack in comp.stacks:
            for path in stack.blocks:
                if not plan.targets_in_block(path):
                    continue
                block = model.get_submodule(path)
                for m in applicable_mappings(block, stack.kind):
                    prev = block.get_submodule(m.prev)
                    out += [f"{path}.{m.prev}.{n}" for n, _ in prev.named_parameters(recurse=False)]
    return list(dict.fromkeys(out))


def _w_mean(W: Tensor, group_size: int) -> Tensor:
    """Mean over rows of |W| normalised by each (row, group)'s max: the weight side of the AWQ scale."""
    rows, cols = W.shape
    gs = group_size or cols
    wg = W.abs().reshape(rows, cols // gs, gs)
    wg = wg / wg.amax(-1, keepdim=True).clamp(min=1e-12)
    return wg.reshape(rows, cols).mean(0)


def _quant(W: Tensor, fmt: LayerFormat) -> Tensor:
    """Quantize–dequantize the last two dims (out, in) of W, batched over any leading dims; grouped
    formats give exactly `fake_quantize`'s values."""
    if fmt.per_tensor:
        return torch.stack([fake_quantize(w, fmt.bits, 0, fmt.sym) for w in W.reshape(-1, *W.shape[-2:])]
                           ).reshape(W.shape)
    Wg = W.reshape(*W.shape[:-1], W.shape[-1] // fmt.group_size, fmt.group_size)
    scale, zero = qparams_from_range(Wg.amin(-1).clamp(max=0), Wg.amax(-1).clamp(min=0), fmt.bits, fmt.sym)
    scale, zero = scale.unsqueeze(-1), zero.unsqueeze(-1)
    Q = torch.div(Wg, scale)  # then in place (one buffer): quantize_codes' and rtn's arithmetic
    Q.round_().add_(zero).clamp_(0, 2**fmt.bits - 1).sub_(zero).mul_(scale)
    return Q.reshape(W.shape)


def evenly(X: Tensor, n: int) -> Tensor:
    """At most `n` rows of X, evenly spaced over all of them."""
    if X.shape[0] <= n:
        return X
    return X[torch.linspace(0, X.shape[0] - 1, n, device=X.device).long()]


def grid_scales(x_mean: Tensor, w_mean: Tensor) -> Tensor:
    """The scale of every grid ratio α = k / SCALE_GRID: s = x_meanᵅ / w_meanᵅ⁻¹, normalised; (SCALE_GRID, in)."""
    out = []
    for k in range(SCALE_GRID):
        alpha = k / SCALE_GRID
        s = (x_mean.pow(alpha) / w_mean.pow(1 - alpha).clamp(min=1e-4)).clamp(min=1e-4)
        out.append(s / torch.sqrt(s.max() * s.min()))
    return torch.stack(out)


def scale_losses(W: Tensor, X: Tensor, ref: Tensor, scales: Tensor, fmt: LayerFormat) -> Tensor:
    """Output MSE of W quantized under each scale (rows of `scales`): batched over the grid, in
    chunks of grid points whose quantized weights and outputs fit SEARCH_BYTES."""
    per_point = 12 * (W.numel() + ref.numel())  # float32: ~3 live temporaries of each size
    chunk = max(1, SEARCH_BYTES // per_point)
    losses = []
    for k0 in range(0, scales.shape[0], chunk):
        s = scales[k0:k0 + chunk, None, :]  # (k, 1, in)
        Q = _quant(W * s, fmt).div_(s)  # (k, out, in)
        losses.append(torch.matmul(X, Q.transpose(1, 2)).sub_(ref).pow_(2).mean((1, 2)))
    return torch.cat(losses)


@torch.no_grad()
def search_scale(weights: list[Tensor], X: Tensor, x_mean: Tensor, fmt: LayerFormat) -> Tensor | None:
    """Best per-input-channel scale for Linears sharing input X (searched on SCALE_SEARCH_TOKENS of
    its rows), or None when no scaling beats none."""
    W = torch.cat([w.float() for w in weights], 0)
    X = evenly(X.float(), SCALE_SEARCH_TOKENS)
    ref = X @ W.t()
    scales = grid_scales(x_mean, _w_mean(W, fmt.group_size))
    losses = scale_losses(W, X, ref, scales, fmt)
    unscaled = torch.mean((X @ _quant(W, fmt).t() - ref) ** 2)
    k = int(torch.argmin(losses))  # the first of equal minima, as a strict-improvement loop picks
    return scales[k] if losses[k] < unscaled else None


@torch.no_grad()
def fold_scale(block: nn.Module, mapping: ScaleMapping, s: Tensor) -> list[str]:
    """Fold s into the mapping (exact before rounding); returns the relative names of changed parameters."""
    prev = block.get_submodule(mapping.prev)
    changed = []
    sv = s.to(prev.weight.dtype)
    if mapping.via == NORM:
        prev.weight.div_(sv)
        changed.append(f"{mapping.prev}.weight")
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(sv)
            changed.append(f"{mapping.prev}.bias")
    else:
        rows = slice(None) if mapping.rows == "all" else slice(2 * s.numel(), 3 * s.numel())
        prev.weight[rows].div_(sv[:, None])
        changed.append(f"{mapping.prev}.weight")
        if prev.bias is not None:
            prev.bias[rows].div_(sv)
            changed.append(f"{mapping.prev}.bias")
    for name in mapping.linears:
        lin = block.get_submodule(name)
        lin.weight.mul_(s.to(lin.weight.dtype)[None, :])
        changed.append(f"{name}.weight")
    return changed


def clip_shrinks() -> Tensor:
    """The clip grid: 1 − i / CLIP_GRID for i < CLIP_MAX_SHRINK · CLIP_GRID (1 first)."""
    return torch.tensor([1 - i / CLIP_GRID for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID))])


@torch.no_grad()
def search_clip(W: Tensor, X: Tensor, fmt: LayerFormat) -> Tensor:
    """Per (row, group) clip value max|w|·(1 − i/20), i < 10, minimising that group's output squared
    error on the rows of X, (q − w)ᵀ X_gᵀX_g (q − w): every clip value of a chunk of rows in one
    batched matmul against the groups' Gram matrices."""
    W = W.float()
    rows, cols = W.shape
    gs = fmt.group_size or cols
    G = cols // gs
    Xg = X.float().reshape(-1, G, gs).transpose(0, 1)  # (G, n, gs)
    gram = torch.bmm(Xg.transpose(1, 2), Xg)  # (G, gs, gs)
    shrinks = clip_shrinks().to(W.device)
    k = shrinks.numel()
    chunk = max(1, SEARCH_BYTES // (16 * k * cols))  # rows whose k quantized copies (and temporaries) fit
    best_max = torch.empty(rows, G, device=W.device)
    for r0 in range(0, rows, chunk):
        Wg = W[r0:r0 + chunk].reshape(-1, G, gs)  # (r, G, gs)
        r = Wg.shape[0]
        m = Wg.abs().amax(-1) * shrinks[:, None, None]  # (k, r, G)
        D = _clipped_quant(Wg.expand(k, -1, -1, -1), m, fmt).sub_(Wg)  # (k, r, G, gs)
        D = D.permute(2, 0, 1, 3).reshape(G, k * r, gs)
        err = torch.bmm(D, gram).mul_(D).sum(-1).reshape(G, k, r)
        best_max[r0:r0 + chunk] = m.gather(0, err.argmin(1).t()[None])[0]  # the first minimum, as a loop keeps
    return best_max


def _clipped_codes(Wg: Tensor, max_val: Tensor, fmt: LayerFormat) -> tuple[Tensor, Tensor, Tensor]:
    """(codes, scale, zero) of grouped weights (r, G, gs) — or any leading dims — after clamping each
    group to ±max_val; scale and zero are (r, G, 1). One buffer, worked in place: the values of
    ``quantize_codes`` on the clamped weights."""
    m = max_val.unsqueeze(-1)
    Wc = torch.minimum(Wg, m)
    torch.maximum(Wc, -m, out=Wc)
    scale, zero = qparams_from_range(Wc.amin(-1).clamp(max=0), Wc.amax(-1).clamp(min=0), fmt.bits, fmt.sym)
    scale, zero = scale.unsqueeze(-1), zero.unsqueeze(-1)
    return Wc.div_(scale).round_().add_(zero).clamp_(0, 2**fmt.bits - 1), scale, zero


def _clipped_quant(Wg: Tensor, max_val: Tensor, fmt: LayerFormat) -> Tensor:
    """Quantize–dequantize grouped weights (r, G, gs) after clamping each group to ±max_val."""
    codes, scale, zero = _clipped_codes(Wg, max_val, fmt)
    return codes.sub_(zero).mul_(scale)


def quantize_with_clip(W: Tensor, max_val: Tensor | None, fmt: LayerFormat) -> QuantizedWeight:
    """Final AWQ weights (float32): clamp each group to its clip value (if any), then min–max RTN."""
    rows, cols = W.shape
    gs = fmt.group_size or cols
    if max_val is None:
        return rtn_quantize(W.float(), fmt.bits, gs, fmt.sym)
    codes, scale, zero = _clipped_codes(W.float().reshape(rows, cols // gs, gs), max_val, fmt)
    q = QuantizedWeight(codes.reshape(rows, cols).to(torch.uint8), scale.squeeze(-1), zero.squeeze(-1), gs,
                        fmt.bits, fmt.sym)
    q.weight = (scale * (codes - zero)).reshape(rows, cols)
    return q


def output_error(W: Tensor, Q: Tensor, X: Tensor) -> float:
    """‖X(Q − W)ᵀ‖² / ‖X Wᵀ‖² over the rows of X (as gptq's `relative_output_error` from XᵀX), by
    whichever route costs fewer operations: through XᵀX (n·in² + 2·out·in²) or X directly (2·n·in·out)."""
    n, (rows, cols) = X.shape[0], W.shape
    if n * cols + 2 * rows * cols < 2 * n * rows:
        return relative_output_error(W, Q, X.t() @ X)
    W, Q, X = W.float(), Q.float(), X.float()
    num = torch.sum((X @ (Q - W).t()) ** 2)
    den = torch.sum((X @ W.t()) ** 2)
    return float(num / den) if den > 0 else 0.0


def rows_per_call(total_tokens: int, calls: int) -> int:
    return max(1, math.ceil(total_tokens / max(1, calls)))


def quantize_block(block: nn.Module, block_path: str, kind: BlockKind, targets: dict[str, LayerFormat],
                   stats: AWQStats, spec=None) -> BlockResult:
    """AWQ one block: per applicable mapping whose Linears (and preceding Linear) are all targeted,
    search a scale and fold it; then per targeted Linear, search clip values (not for query/key
    projections) and round to nearest."""
    result = BlockResult()
    X = stats.inputs()
    rel = {n: relative(n, block_path) for n in targets}
    full = {r: n for n, r in rel.items()}
    scaled: set[str] = set()
    for m in applicable_mappings(block, kind):
        members = set(m.linears) | ({m.prev} if m.via != NORM else set())
        first = full.get(m.linears[0])
        if not members <= set(full) or first not in X:
            continue
        s = search_scale([block.get_submodule(r).weight for r in m.linears], X[first], stats.x_mean(first),
                         targets[first])
        if s is None:
            continue
        result.changed += [f"{block_path}.{c}" for c in fold_scale(block, m, s)]
        shared, divided = X[first], X[first] / s  # the mapping's Linears read one input: divided once
        for r in m.linears:
            X[full[r]] = divided if X[full[r]] is shared else X[full[r]] / s
            scaled.add(r)
    for name, fmt in targets.items():
        if name not in X:
            result.unseen.append(name)
            continue
        r = rel[name]
        if r not in scaled:
            result.unscaled.append(name)
        W = block.get_submodule(r).weight.detach()
        clip = search_clip(W, X[name], fmt) if r not in kind.qk else None
        q = quantize_with_clip(W, clip, fmt)
        err = output_error(W, q.weight, X[name])
        q.weight = None  # dequantized again when set: a block's float copies are never all held
        result.quantized[name] = (q, {"output_rel_err": err,
                                      "awq_scaled": r in scaled, "awq_clipped": clip is not None})
    return result
