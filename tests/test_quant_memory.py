"""Memory of calibrated quantization: no extra full-size copies, and the time split by stage."""

import weakref

import pytest
import torch
from quant_tiny import blip2_batches, make_tiny_blip2
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mmq_eval.quant import QuantSpec, finite, quantize_model
from mmq_eval.quant.awq import AWQStats
from mmq_eval.quant.gptq import gptq_quantize
from mmq_eval.quant.report import STAGES, stage_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages that torch ops allocate while active (an output whose storage is
    already counted, as a view's or an in-place result's, is not new memory; a storage counts until
    the tensor that brought it is freed)."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.storages = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        known = self.storages | {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs))
                                 if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() and t.untyped_storage().data_ptr() not in known:
                ptr, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                self.storages.add(ptr)
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, ptr, size)
        return out

    def _free(self, ptr, size):
        self.storages.discard(ptr)
        self.live -= size


def test_gptq_factors_the_hessian_in_its_own_memory(monkeypatch):
    n = 384
    monkeypatch.setattr(finite, "CHECK_ELEMENTS", 16 * n)  # as a full-size Hessian: checked in chunks
    X = torch.randn(2048, n)
    X[:, 7] = 0  # a dead input: its Hessian row and column are zero
    H = X.t() @ X * (2 / 2048)
    W = torch.randn(32, n)
    with LiveBytes() as mem:
        res = gptq_quantize(W, H, 4, 128, sym=False)
    assert res.retries == 0
    # LAPACK works in place (a copy would raise); what torch allocates besides is W-sized or a
    # chunk of the finiteness check: before, H's copy and two work matrices lived at once (3 × H)
    hessian = n * n * 4
    assert mem.peak < 0.5 * hessian
    assert torch.equal(H, H.triu()) and bool((H.diagonal() > 0).all())  # H became the factor U


def test_awq_statistics_hand_their_rows_over():
    lin = torch.nn.Linear(8, 4)
    stats = AWQStats({"a": lin}, n_samples=2)
    stats.add("a", torch.ones(3, 8))
    stats.add("a", torch.ones(2, 8))
    assert stats.inputs()["a"].shape == (5, 8)
    assert stats.inputs() == {}  # a second call has nothing: no copy stayed behind
    assert torch.equal(stats.x_mean("a"), torch.ones(8))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_timings_split_each_component_by_stage(method):
    model, processor = make_tiny_blip2(0, "opt")
    report = quantize_model(model, QuantSpec.from_args({"method": method, "bits": 4, "calib_samples": 8}),
                            blip2_batches(processor, "opt"), progress=False)
    split = report.stage_timings()
    components = {r.component for r in report.layers}
    assert set(split) == components
    for comp in components:
        assert list(split[comp]) == list(STAGES)
        assert report.timings[stage_key(comp, "solve")] == split[comp]["solve"] > 0
        assert split[comp]["capture"] > 0 and split[comp]["statistics"] > 0
        assert sum(split[comp].values()) <= report.timings[comp]
    blocks = {c: len({r.block for r in report.layers if r.component == c}) for c in components}
    assert [c for c in components if split[c]["propagate"] > 0] == [c for c in components if blocks[c] > 1]
    assert "(capture " in report.format_table()


def test_sweeps_keep_only_what_a_spec_may_change_and_restore_it_exactly():
    from mmq_eval.models.blip2 import MMQBlip2

    lm = MMQBlip2(pretrained="mmq:shapes-blip2", device="cpu", batch_size=8, quant_cache="none")
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    awq = lm.apply_quant(QuantSpec.from_args({"method": "awq", "llm_bits": 4, "calib_samples": 8}))
    kept = set(lm._full_precision_state)
    targets = {f"{r.name}.weight" for r in awq.layers}
    assert awq.folded and set(awq.folded) <= kept and targets <= kept  # what AWQ changed is kept ...
    assert all(k.startswith("language_model.model.decoder.layers.") for k in kept)  # ... and only the LLM's blocks
    changed = {k for k, v in lm.model.state_dict().items() if not torch.equal(v, original[k])}
    assert changed <= kept
    lm.apply_quant(QuantSpec.from_args({"method": "rtn", "vit_bits": 3}))  # adds the ViT's weights
    assert kept < set(lm._full_precision_state)
    lm.apply_quant(QuantSpec.from_args({"method": "none"}))
    assert all(torch.equal(v, original[k]) for k, v in lm.model.state_dict().items())
