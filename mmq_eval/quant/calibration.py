"""Layer-sequential calibration plumbing: capture a stack's first-block inputs, run blocks, gather stats.

One forward of the (already partly quantized) model per stack records the arguments its first
block receives — stopped early by raising from a pre-hook when the block runs once per forward.
Afterwards each block runs on the recorded arguments alone, and its output becomes the next
block's input (`advance`), so calibration never repeats full-model passes.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.arch import Stack
from mmq_eval.quant.finite import check_inputs
from mmq_eval.quant.shared_inputs import version_of


class _StopForward(Exception):
    """Raised from a hook to end a forward once the wanted inputs are captured."""


@dataclass
class Sample:
    """Arguments of one block call (bound by name) and the padding mask of its tokens.

    per_block: for stacks whose loop passes some arguments differently to each block
    (``Stack.per_block``), those arguments of every block, in order. added: for stacks whose loop
    adds to the hidden state between blocks (``Stack.added_between``), what it added before each
    block (None where nothing).
    """

    kwargs: dict
    mask: Tensor | None
    first_arg: str
    per_block: list[dict] = field(default_factory=list)
    added: list = field(default_factory=list)


@contextmanager
def caching_disabled(model: nn.Module):
    """Turn off KV caches in every sub-config for the duration (captured kwargs must not hold caches)."""
    saved = []
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        configs = [cfg] + [getattr(cfg, k, None) for k in getattr(cfg, "sub_configs", None) or ()]
        for c in configs:
            if c is not None and getattr(c, "use_cache", None) is True and all(c is not s[0] for s in saved):
                saved.append((c, True))
                c.use_cache = False
    try:
        yield
    finally:
        for c, v in saved:
            c.use_cache = v


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> tuple[dict, str]:
    sig = inspect.signature(module.forward)
    bound = sig.bind(*args, **kwargs)
    out = {}
    for name, value in bound.arguments.items():
        if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif sig.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"{type(module).__name__}.forward takes *args; cannot replay its inputs")
        else:
            out[name] = value
    first = next(iter(sig.parameters))
    return out, first


def _token_mask(batch: dict, key: str | None, hidden: Tensor) -> Tensor | None:
    if key is None or key not in batch or not isinstance(hidden, Tensor) or hidden.dim() < 3:
        return None
    mask = batch[key]
    if tuple(mask.shape) != tuple(hidden.shape[:2]):
        return None
    return mask.to(device=hidden.device).bool()


@torch.no_grad()
def capture_stack_inputs(model: nn.Module, stack: Stack, batches: list[dict]) -> list[Sample]:
    """Run the model on each batch and record every call of the stack's first block (and, for a
    stack with ``per_block`` arguments or ``added_between``, what every later block receives)."""
    blocks = [model.get_submodule(b) for b in stack.blocks]
    every_block = bool(stack.per_block) or stack.added_between
    samples: list[Sample] = []
    current: dict = {}

    def first_hook(module, args, kwargs):
        bound, first_arg = _bind(module, args, kwargs)
        mask = _token_mask(current["batch"], stack.mask_key, bound[first_arg])
        own = [{k: bound[k] for k in stack.per_block}] if stack.per_block else []
        samples.append(Sample(bound, mask, first_arg, own, [None] if stack.added_between else []))
        if stack.single_call and (not every_block or len(blocks) == 1):
            raise _StopForward

    def later_hook(module, args, kwargs):
        bound, first_arg = _bind(module, args, kwargs)
        sample = samples[-1]
        if stack.per_block:
            sample.per_block.append({k: bound[k] for k in stack.per_block})
        if stack.added_between:
            added = bound[first_arg] - current["output"]
            sample.added.append(added if bool(added.any()) else None)
        if stack.single_call and module is blocks[-1]:
            raise _StopForward

    def output_hook(module, args, output):
        current["output"] = block_output(output)

    handles = [blocks[0].register_forward_pre_hook(first_hook, with_kwargs=True)]
    if every_block:
        handles += [b.register_forward_pre_hook(later_hook, with_kwargs=True) for b in blocks[1:]]
    if stack.added_between:
        handles += [b.register_forward_hook(output_hook) for b in blocks[:-1]]
    try:
        with caching_disabled(model):
            for batch in batches:
                current["batch"] = batch
                try:
                    model(**batch)
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    if not samples:
        raise _never_run(stack, "")
    return samples


@torch.no_grad()
def check_reached(model: nn.Module, stacks: list[Stack], batch: dict) -> None:
    """Before any quantization: one forward on `batch` must run the first block of every stack
    (stopped as soon as all have run: the rest of the model, its logits included, is not needed)."""
    reached: set[str] = set()
    wanted = {s.blocks[0] for s in stacks}

    def reached_block(path):
        reached.add(path)
        if reached >= wanted:
            raise _StopForward

    handles = [model.get_submodule(s.blocks[0]).register_forward_pre_hook(
        lambda m, a, path=s.blocks[0]: reached_block(path)) for s in stacks]
    failure = ""
    try:
        with caching_disabled(model):
            model(**batch)
    except _StopForward:
        pass
    except Exception as err:  # noqa: BLE001 - reported below with the stack it kept from running
        failure = f" (the forward failed first: {type(err).__name__}: {err})"
    finally:
        for h in handles:
            h.remove()
    for s in stacks:
        if s.blocks[0] not in reached:
            raise _never_run(s, failure)


def _never_run(stack: Stack, why: str) -> MMQConfigError:
    hint = f" ({stack.reach_hint})" if stack.reach_hint else ""
    return MMQConfigError(
        f"the calibration batches never run {stack.blocks[0]}{why}: give calibration inputs that use it"
        f"{hint} or leave it unquantized"
    )


def block_output(output) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def advance(sample: Sample, output, carry: str, next_block: int | None = None) -> Sample:
    """The arguments of block `next_block` (an index in the stack): this block's output (plus what
    the loop adds between the blocks, where it does) in place of the first argument, and that
    block's own ``per_block`` arguments where the stack has them."""
    kwargs = dict(sample.kwargs)
    hidden = block_output(output)
    if sample.added and next_block is not None and sample.added[next_block] is not None:
        hidden = hidden + sample.added[next_block]
    kwargs[sample.first_arg] = hidden
    if sample.per_block and next_block is not None:
        kwargs.update(sample.per_block[next_block])
    if carry == "t5":
        kwargs["position_bias"] = output[1]
        if output[2] is not None:
            kwargs["encoder_decoder_position_bias"] = output[2]
    return Sample(kwargs, sample.mask, sample.first_arg, sample.per_block, sample.added)


class InputStats:
    """Forward hooks on Linears that hand each call's (masked, flattened) input rows to a callback.

    Linears called one after the other on the same, unchanged tensor (q, k and v) are handed one
    and the same rows object, masked and checked once (what ``SharedInputs`` recognises); only the
    last input is remembered, so no activation outlives the forward's own use of it for long.
    `start(mask)` begins each sample with its token mask.
    """

    def __init__(self, modules: dict[str, nn.Linear], on_input):
        self.mask: Tensor | None = None
        self._last: tuple[Tensor, int | None, Tensor] | None = None  # (input, its version, its rows)
        self._handles = [m.register_forward_hook(self._hook(name), with_kwargs=True) for name, m in modules.items()]
        self._on_input = on_input

    def start(self, mask: Tensor | None) -> None:
        """A new sample: its token mask; rows of the last sample are let go."""
        self.mask, self._last = mask, None

    def _rows(self, name: str, x: Tensor) -> Tensor:
        if self._last is not None:
            given, version, rows = self._last
            if given is x and version == version_of(x):  # not written in place since
                return rows
        if self.mask is not None and tuple(x.shape[:-1]) == tuple(self.mask.shape):
            rows = x[self.mask]
        else:
            rows = x.reshape(-1, x.shape[-1])
        check_inputs(name, rows)
        self._last = (x, version_of(x), rows)
        return rows

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            x = args[0] if args else next(iter(kwargs.values()))
            self._on_input(name, self._rows(name, x))
        return hook

    def remove(self):
        for h in self._handles:
            h.remove()


@torch.no_grad()
def run_block(block: nn.Module, samples: list[Sample], stats: InputStats | None = None) -> list:
    """Run `block` on every sample (setting the stats' token mask per sample); return the outputs."""
    outputs = []
    for s in samples:
        if stats is not None:
            stats.start(s.mask)
        outputs.append(block(**s.kwargs))
    return outputs
