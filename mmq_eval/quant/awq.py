"""AWQ (Lin et al., 2023): activation-aware per-input-channel scales, then a weight-clip search.

For a group of Linears that read the same input, a scale s per input channel multiplies their
weight columns and divides the input; the division is folded into the op that produces the input,
so the model computes the same function before rounding. We fold only where that is exact:

- a pre-norm LayerNorm/RMSNorm → the Linears it feeds (norm weight *and bias* divided by s);
- v → output projection (v's rows and bias divided by s; for a fused qkv only the v rows);
- fc1 → fc2 only through ReLU (positively homogeneous), and up → down in gated MLPs (the up
  projection enters linearly).

Never across GELU/SiLU activations or post-norm residual streams; those Linears get only the clip
search, and the report says so. s = x_meanᵅ / w_meanᵅ⁻¹ (normalised), α on a 20-point grid in [0, 1)
plus the identity, chosen by the group's output MSE on calibration inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmq_eval.quant.formats import fake_quantize, qparams_from_range, quantize_codes
from mmq_eval.quant.plan import LayerFormat

SCALE_GRID = 20
CLIP_GRID = 20
CLIP_MAX_SHRINK = 0.5
SCALE_TOKENS = 4096
CLIP_TOKENS = 512
_QK_NAMES = {"q_proj", "k_proj", "q", "k", "query", "key", "qkv"}


@dataclass(frozen=True)
class ScaleGroup:
    """Linears (paths relative to the block) whose common input is produced by `prev`."""

    prev: str
    prev_kind: str  # norm | linear | qkv_v
    linears: tuple[str, ...]


def _has(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
        return True
    except AttributeError:
        return False


def scale_groups(kind: str, block: nn.Module) -> list[ScaleGroup]:
    """The exactly foldable scale groups of one block of the given kind (see module docstring)."""
    G = ScaleGroup
    if kind == "blip2_vit":
        return [G("layer_norm1", "norm", ("self_attn.qkv",)),
                G("self_attn.qkv", "qkv_v", ("self_attn.projection",)),
                G("layer_norm2", "norm", ("mlp.fc1",))]
    if kind == "qformer":
        groups = [G("attention.attention.value", "linear", ("attention.output.dense",))]
        if _has(block, "crossattention"):
            groups.append(G("crossattention.attention.value", "linear", ("crossattention.output.dense",)))
        return groups
    if kind == "opt":
        groups = [G("self_attn.v_proj", "linear", ("self_attn.out_proj",))]
        if block.do_layer_norm_before:
            groups += [G("self_attn_layer_norm", "norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                       G("final_layer_norm", "norm", ("fc1",))]
        if isinstance(block.activation_fn, nn.ReLU):
            groups.append(G("fc1", "linear", ("fc2",)))
        return groups
    if kind == "t5":
        a = "layer.0.SelfAttention"
        groups = [G("layer.0.layer_norm", "norm", (f"{a}.q", f"{a}.k", f"{a}.v")), G(f"{a}.v", "linear", (f"{a}.o",))]
        if block.is_decoder:
            c = "layer.1.EncDecAttention"
            groups += [G("layer.1.layer_norm", "norm", (f"{c}.q",)), G(f"{c}.v", "linear", (f"{c}.o",))]
        ff = f"layer.{len(block.layer) - 1}"
        d = f"{ff}.DenseReluDense"
        if _has(block, f"{d}.wi_0"):
            groups += [G(f"{ff}.layer_norm", "norm", (f"{d}.wi_0", f"{d}.wi_1")), G(f"{d}.wi_1", "linear", (f"{d}.wo",))]
        else:
            groups.append(G(f"{ff}.layer_norm", "norm", (f"{d}.wi",)))
            if isinstance(block.get_submodule(d).act, nn.ReLU):
                groups.append(G(f"{d}.wi", "linear", (f"{d}.wo",)))
        return groups
    if kind == "clip":
        a = "self_attn"
        return [G("layer_norm1", "norm", (f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj")),
                G(f"{a}.v_proj", "linear", (f"{a}.out_proj",)),
                G("layer_norm2", "norm", ("mlp.fc1",))]
    if kind == "llama":
        a, m = "self_attn", "mlp"
        groups = [G("input_layernorm", "norm", (f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj")),
                  G("post_attention_layernorm", "norm", (f"{m}.gate_proj", f"{m}.up_proj")),
                  G(f"{m}.up_proj", "linear", (f"{m}.down_proj",))]
        if block.get_submodule(f"{a}.v_proj").out_features == block.get_submodule(f"{a}.o_proj").in_features:
            groups.append(G(f"{a}.v_proj", "linear", (f"{a}.o_proj",)))
        return groups
    return []  # projector: no exact fold


def _w_mean(W: Tensor, group_size: int) -> Tensor:
    """Mean over rows of |W| normalised by each (row, group)'s max: the weight side of the AWQ scale."""
    rows, cols = W.shape
    gs = group_size or cols
    wg = W.abs().reshape(rows, cols // gs, gs)
    wg = wg / wg.amax(-1, keepdim=True).clamp(min=1e-12)
    return wg.reshape(rows, cols).mean(0)


def _quant(W: Tensor, fmt: LayerFormat) -> Tensor:
    return fake_quantize(W, fmt.bits, fmt.group_size, fmt.sym)


@torch.no_grad()
def search_scale(weights: list[Tensor], X: Tensor, x_mean: Tensor, fmt: LayerFormat) -> Tensor | None:
    """Best per-input-channel scale for Linears sharing input X, or None when no scaling is best."""
    W = torch.cat([w.float() for w in weights], 0)
    X = X.float()
    ref = X @ W.t()
    w_mean = _w_mean(W, fmt.group_size)
    best_loss = torch.mean((X @ _quant(W, fmt).t() - ref) ** 2).item()
    best = None
    for k in range(SCALE_GRID):
        alpha = k / SCALE_GRID
        s = (x_mean.pow(alpha) / w_mean.pow(1 - alpha).clamp(min=1e-4)).clamp(min=1e-4)
        s = s / torch.sqrt(s.max() * s.min())
        Q = _quant(W * s, fmt) / s
        loss = torch.mean((X @ Q.t() - ref) ** 2).item()
        if loss < best_loss:
            best_loss, best = loss, s
    return best


def fold_scale(block: nn.Module, group: ScaleGroup, s: Tensor) -> list[str]:
    """Fold s into the group (exact before rounding); returns the relative names of changed parameters."""
    prev = block.get_submodule(group.prev)
    changed = []
    sv = s.to(prev.weight.dtype)
    if group.prev_kind == "norm":
        prev.weight.div_(sv)
        changed.append(f"{group.prev}.weight")
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(sv)
            changed.append(f"{group.prev}.bias")
    else:
        rows = slice(None) if group.prev_kind == "linear" else slice(2 * s.numel(), 3 * s.numel())
        prev.weight[rows].div_(sv[:, None])
        changed.append(f"{group.prev}.weight")
        if prev.bias is not None:
            prev.bias[rows].div_(sv)
            changed.append(f"{group.prev}.bias")
    for name in group.linears:
        lin = block.get_submodule(name)
        lin.weight.mul_(s.to(lin.weight.dtype)[None, :])
        changed.append(f"{name}.weight")
    return changed


def clip_eligible(relative_name: str) -> bool:
    """AWQ skips the clip search for query/key projections (their error is seen only through qᵀk)."""
    return relative_name.rsplit(".", 1)[-1] not in _QK_NAMES


@torch.no_grad()
def search_clip(W: Tensor, X: Tensor, fmt: LayerFormat) -> Tensor:
    """Per (row, group) clip value max|w|·(1 − i/20), i < 10, minimising that group's output MSE."""
    W = W.float()
    rows, cols = W.shape
    gs = fmt.group_size or cols
    G = cols // gs
    X = X.float()[: CLIP_TOKENS]
    Xg = X.reshape(-1, G, gs).permute(1, 0, 2)  # (G, n, gs)
    chunk = max(1, (1 << 25) // max(1, G * X.shape[0]))
    best_max = torch.empty(rows, G, device=W.device)
    for r0 in range(0, rows, chunk):
        Wg = W[r0:r0 + chunk].reshape(-1, G, gs)  # (r, G, gs)
        ref = torch.bmm(Xg, Wg.permute(1, 2, 0))  # (G, n, r)
        org = Wg.abs().amax(-1)  # (r, G)
        best_err = torch.full_like(org, float("inf"))
        best = org.clone()
        for i in range(int(CLIP_MAX_SHRINK * CLIP_GRID)):
            m = org * (1 - i / CLIP_GRID)
            Q = _clipped_quant(Wg, m, fmt)
            err = ((torch.bmm(Xg, Q.permute(1, 2, 0)) - ref) ** 2).mean(1).t()  # (r, G)
            better = err < best_err
            best_err[better], best[better] = err[better], m[better]
        best_max[r0:r0 + chunk] = best
    return best_max


def _clipped_quant(Wg: Tensor, max_val: Tensor, fmt: LayerFormat) -> Tensor:
    """Quantize–dequantize grouped weights (r, G, gs) after clamping each group to ±max_val."""
    m = max_val.unsqueeze(-1)
    Wc = torch.maximum(torch.minimum(Wg, m), -m)
    scale, zero = qparams_from_range(Wc.amin(-1).clamp(max=0), Wc.amax(-1).clamp(min=0), fmt.bits, fmt.sym)
    scale, zero = scale.unsqueeze(-1), zero.unsqueeze(-1)
    return scale * (quantize_codes(Wc, scale, zero, 2**fmt.bits - 1) - zero)


def quantize_with_clip(W: Tensor, max_val: Tensor | None, fmt: LayerFormat) -> Tensor:
    """Final AWQ weights (float32): clamp each group to its clip value, then min–max RTN."""
    if max_val is None:
        return _quant(W.float(), fmt)
    rows, cols = W.shape
    gs = fmt.group_size or cols
    return _clipped_quant(W.float().reshape(rows, cols // gs, gs), max_val, fmt).reshape(rows, cols)


def rows_per_call(total_tokens: int, calls: int) -> int:
    return max(1, math.ceil(total_tokens / max(1, calls)))
