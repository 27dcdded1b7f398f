"""Linears that read the same input share one accumulator, and the results do not change."""

import pytest
import torch
from quant_tiny import llava_batches, make_tiny_llava

from mmq_eval.quant import QuantSpec, calibration, quantize_model
from mmq_eval.quant.gptq import HessianAccumulator
from mmq_eval.quant.shared_inputs import SharedInputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Record:
    """An accumulator that remembers what it was given (by object)."""

    def __init__(self, width):
        self.width, self.seen = width, []

    def add(self, x):
        self.seen.append(x)

    def copy(self):
        twin = Record(self.width)
        twin.seen = list(self.seen)
        return twin


def _seen(accs: dict) -> dict:
    return {name: [id(x) for x in acc.seen] for name, acc in accs.items()}


def test_linears_fed_the_same_tensors_share_and_the_others_get_exactly_their_own():
    shared = SharedInputs({"q": 4, "k": 4, "v": 4, "o": 4, "up": 8}, Record)
    a, b, c, d, e = (torch.ones(2, 4) for _ in range(5))
    big = torch.ones(2, 8)
    calls = [("q", a), ("k", a), ("v", a), ("o", b), ("up", big),  # sample 1
             ("q", c), ("k", c), ("v", d), ("o", e), ("up", big)]  # sample 2: v parts from q and k
    for name, x in calls:
        shared.add(name, x)
    accs = shared.accumulators()
    assert accs["q"] is accs["k"] and accs["k"] is not accs["v"] and accs["o"] is not accs["q"]
    want = {n: [id(x) for m, x in calls if m == n] for n in ("q", "k", "v", "o", "up")}
    assert _seen(accs) == want  # each Linear's own sequence, nothing more, nothing less


def test_a_linear_called_twice_on_one_tensor_counts_it_twice():
    shared = SharedInputs({"q": 4, "k": 4}, Record)
    x = torch.ones(2, 4)
    for name in ("q", "q", "k", "k"):
        shared.add(name, x)
    accs = shared.accumulators()
    assert _seen(accs) == {"q": [id(x)] * 2, "k": [id(x)] * 2}


def test_an_input_written_in_place_before_it_is_added_stops_the_run():
    shared = SharedInputs({"q": 4, "k": 4}, Record)
    x = torch.ones(2, 4)
    shared.add("q", x)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="^the input of q was written in place after they read it"):
        shared.accumulators()


def test_hessians_shared_by_q_k_v_equal_separately_accumulated_ones():
    shared = SharedInputs({"q": 8, "k": 8, "o": 8}, lambda width: HessianAccumulator(width, torch.device("cpu")))
    xs = [torch.randn(5, 8) for _ in range(3)]
    for x in xs:
        shared.add("q", x)
        shared.add("k", x)
        shared.add("o", x * 2)
    accs = shared.accumulators()
    assert accs["q"] is accs["k"]
    alone = HessianAccumulator(8, torch.device("cpu"))
    for x in xs:
        alone.add(x)
    assert torch.equal(accs["q"].hessian(), alone.hessian())
    assert torch.allclose(accs["o"].hessian(), 4 * alone.hessian())


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_sharing_changes_nothing_in_the_quantized_model(method, monkeypatch):
    """The same model quantized with shared statistics and with every Linear's inputs copied apart."""
    passes = []  # per block's statistics pass: (its Linears, how many accumulators they used)
    real = SharedInputs.accumulators

    def counted(self):
        accs = real(self)
        passes.append((len(accs), len({id(a) for a in accs.values()})))
        return accs

    monkeypatch.setattr(SharedInputs, "accumulators", counted)
    spec = QuantSpec.from_args({"method": method, "llm_bits": 4, "vit_bits": 4})
    shared_model, _ = make_tiny_llava(0)
    batches = llava_batches(shared_model.config)
    shared_report = quantize_model(shared_model, spec, batches, progress=False)
    shared_passes, passes[:] = list(passes), []

    apart_model, _ = make_tiny_llava(0)
    real_rows = calibration.InputStats._rows
    monkeypatch.setattr(calibration.InputStats, "_rows", lambda self, name, x: real_rows(self, name, x).clone())
    apart_report = quantize_model(apart_model, spec, batches, progress=False)

    for (name, p), q in zip(shared_model.named_parameters(), apart_model.parameters()):
        assert torch.equal(p, q), name
    assert [r.output_rel_err for r in shared_report.layers] == [r.output_rel_err for r in apart_report.layers]
    # CLIP blocks: q, k, v read one input (6 Linears, 4 inputs); LLaMA blocks: q, k, v one, gate and
    # up another (7 Linears, 4 inputs); copied apart, every Linear has its own
    assert {p for p in shared_passes} == {(6, 4), (7, 4)}
    assert {p for p in passes} == {(6, 6), (7, 7)}


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_quantizing_under_inference_mode_gives_the_same_model(method):
    """Inference tensors keep no version counter: identity alone decides sharing there."""
    spec = QuantSpec.from_args({"method": method, "llm_bits": 4, "vit_bits": 4})
    plain, _ = make_tiny_llava(0)
    batches = llava_batches(plain.config)
    quantize_model(plain, spec, batches, progress=False)
    inference, _ = make_tiny_llava(0)
    with torch.inference_mode():
        quantize_model(inference, spec, batches, progress=False)
    for (name, p), q in zip(plain.named_parameters(), inference.parameters()):
        assert torch.equal(p, q), name
