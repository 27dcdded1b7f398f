"""Exact bits per weight of a whole model, and the coverage of a quantization plan.

Convention (``bpw``), over every parameter of the model, tied parameters counted once:

- a quantized Linear weight of ``n`` elements costs ``bits · n`` plus its format's metadata:
  grouped / per-channel formats store one 16-bit scale per (row, group) and, when asymmetric, one
  ``bits``-bit zero point per (row, group) (symmetric formats use a fixed zero point); the
  per-tensor uniform format stores its min and range as two 16-bit numbers (32 bits per tensor);
- every other parameter (embeddings, norms, biases, unquantized Linears, heads) costs 16 bits,
  whatever dtype it is held in.

Weights of blocks that do not affect outputs (LLaVA's ViT blocks after ``vision_feature_layer``)
count like any other: the checkpoint stores them and the model runs them, and the published
parameter counts include them. The coverage rows and the report's ``unused_params`` say how many
there are, so they can be left out by whoever prunes them.

``bpw_seed`` is the seed repo's convention, for comparison with published numbers: the same sum
without the scale/zero metadata.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from torch import nn

from mmq_eval.quant.arch import block_group
from mmq_eval.quant.formats import LayerFormat
from mmq_eval.quant.offload import parameter_shapes
from mmq_eval.quant.plan import QuantPlan

FULL_BITS = 16


def metadata_bits(fmt: LayerFormat, out_features: int, in_features: int) -> int:
    """Scale/zero storage of one quantized weight matrix, in bits."""
    if fmt.per_tensor:
        return 2 * FULL_BITS
    groups = out_features * (in_features // fmt.group_size)
    return groups * (FULL_BITS + (0 if fmt.sym else fmt.bits))


@dataclass
class BpwSummary:
    bpw: float
    bpw_seed: float
    total_params: int
    quantized_params: int
    metadata_bits: int


def bits_per_weight(model: nn.Module, targets: dict[str, LayerFormat]) -> BpwSummary:
    """Exact bits per weight of `model` when the Linears in `targets` are stored in their formats."""
    weights = {f"{name}.weight": fmt for name, fmt in targets.items()}
    total_params = quant_params = total_bits = meta = 0
    shapes = parameter_shapes(model)  # tied duplicates once; offloaded weights are not read
    for pname, shape in shapes.items():
        n = shape.numel()
        total_params += n
        fmt = weights.get(pname)
        if fmt is None:
            total_bits += FULL_BITS * n
            continue
        out_f, in_f = shape
        quant_params += n
        total_bits += fmt.bits * n
        meta += metadata_bits(fmt, out_f, in_f)
    missing = set(weights) - set(shapes)
    if missing:
        raise ValueError(f"quantized weights not among the model's parameters: {sorted(missing)[:3]}")
    return BpwSummary(
        bpw=(total_bits + meta) / total_params,
        bpw_seed=total_bits / total_params,
        total_params=total_params,
        quantized_params=quant_params,
        metadata_bits=meta,
    )


@dataclass
class CoverageRow:
    component: str
    block_group: str  # first / middle / last, or "-" for the projector
    role: str  # attn / mlp / proj
    linears: int
    linears_quantized: int
    params: int
    params_quantized: int
    bits: str  # e.g. "4" or "-" when nothing is quantized
    linears_unused: int  # Linears in blocks that do not affect outputs (quantized or not)
    params_unused: int


def coverage(plan: QuantPlan) -> list[CoverageRow]:
    """Linears and weight parameters (quantized, unused) per component × block third × role."""
    rows: dict[tuple, dict] = defaultdict(lambda: {"n": 0, "nq": 0, "p": 0, "pq": 0, "nu": 0, "pu": 0, "bits": set()})
    for comp in plan.arch.components:
        n_blocks = len(comp.blocks)
        for li in plan.arch.linears:
            if li.component != comp.name:
                continue
            group = "-" if li.block is None else block_group(li.block, n_blocks)
            r = rows[(comp.name, group, li.role)]
            size = li.in_features * li.out_features
            r["n"] += 1
            r["p"] += size
            if plan.arch.is_unused(li):
                r["nu"] += 1
                r["pu"] += size
            fmt = plan.targets.get(li.name)
            if fmt is not None:
                r["nq"] += 1
                r["pq"] += size
                r["bits"].add(fmt.bits)
    return [
        CoverageRow(c, g, role, r["n"], r["nq"], r["p"], r["pq"],
                    "/".join(str(b) for b in sorted(r["bits"])) or "-", r["nu"], r["pu"])
        for (c, g, role), r in rows.items()
    ]


def coverage_dicts(rows: list[CoverageRow]) -> list[dict]:
    return [asdict(r) for r in rows]
