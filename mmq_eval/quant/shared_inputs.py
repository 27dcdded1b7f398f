"""One accumulator for the Linears of a block that read the very same input tensor.

q, k and v (or gate and up) are called on one tensor: their calibration statistics are equal, and
accumulating them once saves that work and memory. Which Linears share is seen, not declared: the
calibration hooks hand each distinct input to the statistics as one tensor object
(``InputStats``), and `SharedInputs` keeps Linears of the same input width on one accumulator
while they receive the same objects in the same order. A Linear that receives something the
others did not (or misses something they received) leaves with its own copy of the accumulator,
taken before the input where they part. So every Linear's statistics are exactly what it would
have accumulated alone, with the same additions in the same order.

An input is added as soon as every member got it (else at the next different input, where the
group splits), so it must not change in between: one written in place meanwhile (its version
moved) stops the run. (Tensors made under ``torch.inference_mode`` keep no version: for them
identity alone counts.)

An accumulator has ``add(x)`` and ``copy()``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any


def version_of(t) -> int | None:
    """How many times `t` was written in place; None for an inference tensor, which keeps no count."""
    return None if t.is_inference() else t._version


class _Group:
    """Linears on one accumulator; `pending`: the last input, added once every member got it."""

    def __init__(self, acc: Any, members: list[str]):
        self.acc, self.members = acc, members
        self.pending = None
        self.version: int | None = None  # the pending input's version when it came
        self.got: set[str] = set()


class SharedInputs:
    """Per-Linear accumulators, shared while Linears receive identical input tensors.

    keys: for each Linear, what must be equal to share (e.g. input width and device);
    make(key): a new, empty accumulator for that key.
    """

    def __init__(self, keys: dict[str, Hashable], make: Callable[[Hashable], Any]):
        by_key: dict[Hashable, list[str]] = {}
        for name, key in keys.items():
            by_key.setdefault(key, []).append(name)
        self._group: dict[str, _Group] = {}
        for key, names in by_key.items():
            group = _Group(make(key), names)
            self._group.update(dict.fromkeys(names, group))

    def add(self, name: str, x) -> None:
        """`name` received input `x` (the same object as other Linears' when it is the same tensor)."""
        group = self._group[name]
        if group.pending is x and name not in group.got:
            group.got.add(name)
        else:
            self._flush(group)
            group = self._group[name]
            group.pending, group.version, group.got = x, version_of(x), {name}
        if len(group.got) == len(group.members):
            self._flush(group)  # let go of the input now

    def accumulators(self) -> dict[str, Any]:
        """Each Linear's accumulator (one object for Linears that shared every input); ends the pass."""
        for group in {id(g): g for g in self._group.values()}.values():
            self._flush(group)
        return {name: group.acc for name, group in self._group.items()}

    def _flush(self, group: _Group) -> None:
        """Add the pending input for the members that got it; the others leave with a copy from before it."""
        if group.pending is None:
            return
        if version_of(group.pending) != group.version:
            raise RuntimeError(f"the input of {', '.join(sorted(group.got))} was written in place after they read "
                               "it; their calibration statistics cannot be gathered (please report the model)")
        missing = [n for n in group.members if n not in group.got]
        if missing:
            left = _Group(group.acc.copy(), missing)
            for n in missing:
                self._group[n] = left
            group.members = [n for n in group.members if n in group.got]
        group.acc.add(group.pending)
        group.pending, group.got = None, set()
