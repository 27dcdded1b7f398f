"""What a calibrated method returns for one block: its Linears' quantized weights and side effects."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmq_eval.quant.formats import QuantizedWeight


@dataclass
class BlockResult:
    """One block's outcome.

    quantized: full Linear name -> (its QuantizedWeight, extra LayerRecord fields such as
    ``output_rel_err``); ``weight`` may be None (the engine dequantizes the codes when it sets
    the Linear), so that a block's dequantized float copies are not all held at once. unseen:
    targeted Linears the calibration inputs never reached (the engine rounds them to nearest and
    says so). changed: other parameters the method changed (AWQ's folds into norms and preceding
    Linears). unscaled: AWQ, Linears (paths relative to the block) that got no input scale.
    """

    quantized: dict[str, tuple[QuantizedWeight, dict]] = field(default_factory=dict)
    unseen: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unscaled: list[str] = field(default_factory=list)


def relative(name: str, block_path: str) -> str:
    """A module's path inside its block ("" for a block that is the module itself)."""
    return "" if name == block_path else name[len(block_path) + 1:]
