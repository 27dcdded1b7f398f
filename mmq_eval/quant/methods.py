"""The method table: every quantization method, one line each.

A data-free method maps one weight and its format to a `QuantizedWeight` (``quantize_weight``).
A calibrated method is a pair the engine drives block by block: ``statistics(modules,
n_samples)`` builds an accumulator whose ``add(name, x)`` receives each targeted Linear's input
rows, and ``quantize_block(block, block_path, kind, targets, stats, spec)`` returns a
`BlockResult`. Adding a method: its module, and one line here (with the model args it accepts
besides bits and the block/layer selection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mmq_eval.quant import awq, gptq
from mmq_eval.quant.formats import quantize_weight

_GROUPED = frozenset({"group_size", "sym"})
_CALIBRATION = frozenset({"calib_samples", "calib_seed", "calib_split"})


@dataclass(frozen=True)
class Method:
    """One method: the model args it accepts and how it quantizes."""

    name: str
    settings: frozenset[str] = frozenset()
    per_tensor: bool = False  # one (min, range) per weight matrix instead of groups
    quantize_weight: Callable | None = None
    statistics: Callable | None = None
    quantize_block: Callable | None = None

    @property
    def calibrated(self) -> bool:
        return self.quantize_block is not None


METHOD_TABLE: dict[str, Method] = {m.name: m for m in (
    Method("none"),
    Method("uniform", per_tensor=True, quantize_weight=quantize_weight),
    Method("rtn", _GROUPED, quantize_weight=quantize_weight),
    Method("gptq", _GROUPED | _CALIBRATION | {"act_order", "static_groups", "damp"},
           statistics=gptq.HessianStats, quantize_block=gptq.quantize_block),
    Method("awq", _GROUPED | _CALIBRATION, statistics=awq.AWQStats, quantize_block=awq.quantize_block),
)}
