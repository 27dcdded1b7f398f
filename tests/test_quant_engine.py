"""quantize_model on tiny BLIP-2 (OPT, T5), BLIP-2 ITM and LLaVA: selections, calibration, AWQ folding."""

import copy
import json

import pytest
import torch
from quant_tiny import (
    blip2_batches,
    itm_batches,
    llava_batches,
    make_tiny_blip2,
    make_tiny_itm,
    make_tiny_llava,
)

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant import awq as awq_mod
from mmq_eval.quant import gptq as gptq_mod
from mmq_eval.quant.arch import resolve_arch
from mmq_eval.quant.calibration import capture_stack_inputs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(kind):
    if kind in ("opt", "t5"):
        model, processor = make_tiny_blip2(0, kind)
        return model, blip2_batches(processor, kind)
    if kind == "itm":
        return make_tiny_itm(0), itm_batches()
    model, _ = make_tiny_llava(0)
    return model, llava_batches(model.config)


_MODELS: dict = {}


def tiny(kind):
    """A fresh copy of a tiny model of `kind` (opt, t5, itm, llava) and its calibration batches."""
    if kind not in _MODELS:
        _MODELS[kind] = _build(kind)
    model, batches = _MODELS[kind]
    return copy.deepcopy(model), batches


OPT_LLM = "language_model.model.decoder.layers."
T5_ENC, T5_DEC = "language_model.encoder.block.", "language_model.decoder.block."
VIT = {"opt": "vision_model.encoder.layers.", "t5": "vision_model.encoder.layers.",
       "itm": "vision_model.encoder.layers.", "llava": "model.vision_tower.encoder.layers."}
QF = "qformer.encoder.layer."
LLAVA_LLM = "model.language_model.layers."
ATTN_WORDS = ("self_attn", "attention", "crossattention", "SelfAttention", "EncDecAttention")


def is_attn(name):
    return any(f".{w}." in name for w in ATTN_WORDS)


def _first_last_attn(n):
    """Attention Linears of blocks 0 and 2 (first and last thirds of 3) of ViT, Q-Former and OPT."""
    for prefix in (VIT["opt"], QF, OPT_LLM):
        if n.startswith(prefix):
            return n[len(prefix)] in "02" and is_attn(n)
    return False


# (model kind, args, predicate on Linear names that must be quantized)
SELECTIONS = [
    ("opt", {"vit_bits": 4}, lambda n: n.startswith(VIT["opt"])),
    ("opt", {"qformer_bits": 3}, lambda n: n.startswith(QF)),
    ("opt", {"projector_bits": 4}, lambda n: n == "language_projection"),
    ("opt", {"llm_bits": 4}, lambda n: n.startswith(OPT_LLM)),
    ("opt", {"bits": 4, "layer_group": "first+last", "layer_type": "attn", "projector_bits": 16}, _first_last_attn),
    ("opt", {"llm_bits": 3, "llm_layer_group": "middle", "llm_layer_type": "mlp"},
     lambda n: n in (OPT_LLM + "1.fc1", OPT_LLM + "1.fc2")),
    ("opt", {"qformer_bits": 4, "qformer_layer_type": "mlp"},
     lambda n: n.startswith(QF) and ("intermediate_query" in n or "output_query" in n)),
    ("t5", {"llm_bits": 4}, lambda n: n.startswith((T5_ENC, T5_DEC))),
    # T5: encoder then decoder blocks (4 in all); thirds of 4 are [0] [1] [2, 3]
    ("t5", {"llm_bits": 4, "llm_layer_group": "last", "llm_layer_type": "attn"},
     lambda n: n.startswith(T5_DEC) and is_attn(n)),
    ("t5", {"llm_bits": 4, "llm_layer_group": "first", "llm_layer_type": "mlp"},
     lambda n: n.startswith(T5_ENC + "0.") and "DenseReluDense" in n),
    ("itm", {"vit_bits": 4}, lambda n: n.startswith(VIT["itm"])),
    ("itm", {"qformer_bits": 4, "qformer_layer_group": "middle"}, lambda n: n.startswith(QF + "1.")),
    ("itm", {"projector_bits": 4}, lambda n: n in ("vision_projection", "text_projection")),
    ("itm", {"bits": 3, "layer_type": "mlp", "projector_bits": 16},
     lambda n: n.startswith((VIT["itm"], QF)) and not is_attn(n)),
    ("llava", {"vit_bits": 4}, lambda n: n.startswith(VIT["llava"])),
    ("llava", {"projector_bits": 4}, lambda n: n.startswith("model.multi_modal_projector.")),
    ("llava", {"llm_bits": 4, "llm_layer_group": "first+middle", "llm_layer_type": "attn"},
     lambda n: n.startswith((LLAVA_LLM + "0.", LLAVA_LLM + "1.")) and is_attn(n)),
    ("llava", {"bits": 4}, lambda n: n.startswith((VIT["llava"], "model.multi_modal_projector.", LLAVA_LLM))),
]



def _check_selection(kind, args, expected, method):
    model, batches = tiny(kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    want = {n for n in linears if expected(n)}
    assert want, "test selection must match something"
    report = quantize_model(model, QuantSpec.from_args({"method": method, **args}), batches, progress=False)
    assert {r.name for r in report.layers} == want
    for name, p in model.named_parameters():
        if name[: -len(".weight")] in want and name.endswith(".weight"):
            assert not torch.equal(p, before[name]), f"{name} was targeted but did not change"
        else:
            assert torch.equal(p, before[name]), f"{name} was not targeted but changed"
    return report


@pytest.mark.parametrize("kind,args,expected", SELECTIONS, ids=[f"{k}-{a}" for k, a, _ in SELECTIONS])
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_selection_changes_exactly_the_targets(kind, args, expected, method):
    report = _check_selection(kind, args, expected, method)
    if method == "gptq":
        assert all(r.output_rel_err is not None and r.output_rel_err < 0.5 for r in report.layers)
        assert report.calibration == {"batches": 2, "samples": 8}


@pytest.mark.parametrize("kind", ["opt", "t5", "itm", "llava"])
def test_awq_changes_targets_and_only_folded_norms_besides(kind):
    model, batches = tiny(kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = quantize_model(model, QuantSpec.from_args({"method": "awq", "bits": 4}), batches, progress=False)
    targets = {f"{r.name}.weight" for r in report.layers}
    for name, p in model.named_parameters():
        if name in targets:
            assert not torch.equal(p, before[name])
        elif name not in report.folded:
            assert torch.equal(p, before[name]), name
    assert all(".bias" in f or "norm" in f or "layer_norm" in f or "v_proj" in f or ".value." in f
               or "qkv" in f or "wi" in f or "fc1" in f or "up_proj" in f for f in report.folded)
    assert any(r.awq_scaled for r in report.layers) and any(r.awq_clipped for r in report.layers)


def _groups(kind, component):
    model = tiny(kind)[0]
    stack = resolve_arch(model).component(component).stacks[-1]
    block = model.get_submodule(stack.blocks[0])
    return {(m.prev, m.via, m.linears) for m in awq_mod.applicable_mappings(block, stack.kind)}


def test_awq_fold_policy():
    vit = _groups("opt", "vit")  # BLIP-2 ViT: pre-LN, fused qkv, GELU MLP
    assert ("self_attn.qkv", "attention", ("self_attn.projection",)) in vit
    assert ("layer_norm2", "norm", ("mlp.fc1",)) in vit
    assert not any("mlp.fc2" in g[2] for g in vit)  # never across GELU
    qformer = _groups("opt", "qformer")  # post-LN BERT blocks: only v → output
    assert {g[1] for g in qformer} == {"attention"}
    assert ("crossattention.attention.value", "attention", ("crossattention.output.dense",)) in qformer
    opt = _groups("opt", "llm")  # pre-LN OPT with ReLU: fc1 → fc2 is exact
    assert ("fc1", "activation", ("fc2",)) in opt
    assert ("self_attn_layer_norm", "norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")) in opt
    t5_dec = _groups("t5", "llm")  # gated-GELU T5 decoder: wi_1 (linear branch) → wo, no EncDec k/v
    ff = "layer.2.DenseReluDense"
    assert (f"{ff}.wi_1", "gate", (f"{ff}.wo",)) in t5_dec
    assert not any("EncDecAttention.k" in name for g in t5_dec for name in g[2])
    clip = _groups("llava", "vit")
    assert not any("mlp.fc2" in g[2] for g in clip)
    llama = _groups("llava", "llm")
    assert ("mlp.up_proj", "gate", ("mlp.down_proj",)) in llama
    assert _groups("llava", "projector") == set()


def test_awq_and_gptq_beat_rtn_on_the_calibration_set():
    base, batches = tiny("opt")
    with torch.no_grad():
        ref = [base(**b).logits for b in batches]
    errors = {}
    for method in ("rtn", "awq", "gptq"):
        model = copy.deepcopy(base)
        args = {"method": method, "bits": 3, "group_size": 16}
        if method != "rtn":
            args["calib_samples"] = 8
        quantize_model(model, QuantSpec.from_args(args), batches, progress=False)
        with torch.no_grad():
            out = [model(**b).logits for b in batches]
        errors[method] = sum(((o - f) ** 2).sum() for o, f in zip(out, ref)) / sum((f**2).sum() for f in ref)
    assert errors["gptq"] < errors["awq"] < errors["rtn"]


def test_bpw_hand_count_tiny_blip2():
    # tiny BLIP-2 OPT: 133,664 parameters, of which Linear weights in components:
    #   ViT 3 × (96·32 + 32·32 + 64·32 + 32·64) = 24,576
    #   Q-Former (cross-attention in blocks 0 and 2): 12,288 + 8,192 + 12,288 = 32,768
    #   projector 48·32 = 1,536; OPT 3 × (4·48·48 + 96·48 + 48·96) = 55,296   → 114,176
    # Rows: ViT 3·224 = 672, Q-Former 352 + 224 + 352 = 928, projector 48, OPT 3·336 = 1,008 → 2,656
    total, quant, rows = 133_664, 114_176, 2_656
    rest = 16 * (total - quant)
    model, _ = tiny("opt")
    cases = [
        ({"method": "rtn", "bits": 4, "group_size": -1, "sym": True}, 4 * quant + 16 * rows),
        ({"method": "rtn", "bits": 4, "group_size": -1}, 4 * quant + (16 + 4) * rows),
        ({"method": "rtn", "bits": 3, "group_size": 16, "sym": True}, 3 * quant + 16 * (quant // 16)),
        ({"method": "rtn", "bits": 3, "group_size": 16}, 3 * quant + (16 + 3) * (quant // 16)),
        ({"method": "uniform", "bits": 2}, 2 * quant + 32 * 57),
    ]
    for args, quant_bits in cases:
        report = quantize_model(copy.deepcopy(model), QuantSpec.from_args(args), progress=False)
        assert report.total_params == total and report.quantized_params == quant
        assert report.bpw == pytest.approx((quant_bits + rest) / total, rel=1e-12), args
    report = quantize_model(copy.deepcopy(model), QuantSpec.from_args({"method": "rtn", "llm_bits": 4}), progress=False)
    assert report.bpw_seed == pytest.approx((4 * 55_296 + 16 * (total - 55_296)) / total, rel=1e-12)
    noop = quantize_model(copy.deepcopy(model), QuantSpec.from_args({}), progress=False)
    assert noop.bpw == 16.0 and noop.layers == []


def test_bpw_counts_tied_embeddings_once():
    model, _ = tiny("opt")
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.decoder.embed_tokens.weight.data_ptr()
    naive = sum(p.numel() for p in model.state_dict().values())
    report = quantize_model(model, QuantSpec.from_args({"method": "rtn", "llm_bits": 4}), progress=False)
    assert report.total_params == 133_664 == naive - lm.lm_head.weight.numel()


def test_report_table_and_json():
    model, batches = tiny("llava")
    report = quantize_model(model, QuantSpec.from_args({"method": "gptq", "bits": 4, "calib_samples": 8}),
                            batches, progress=False)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["spec"]["method"] == "gptq" and d["bpw"] == report.bpw and "llm" in d["errors"]
    table = report.format_table()
    assert "bits per weight" in table and "do not affect outputs" in table and "projector" in table
    assert any(r["component"] == "vit" and r["block_group"] == "last" for r in d["coverage"])


def test_t5_calibration_without_decoder_inputs_is_a_clear_error():
    model, batches = tiny("t5")
    batches = [{k: v for k, v in b.items() if k != "decoder_input_ids"} for b in batches]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = QuantSpec.from_args({"method": "gptq", "bits": 4, "calib_samples": 8})
    with pytest.raises(MMQConfigError, match=r"never run language_model\.decoder\.block\.0.*decoder_input_ids"):
        quantize_model(model, spec, batches, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # failed before any work


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibration_never_runs_the_model_past_the_last_stack_it_needs(method):
    """The up-front check and every capture stop once the stacks' first blocks have run: the
    language model's later blocks and its logits over the vocabulary are never computed."""
    model, batches = _build("opt")
    calls = []
    later = [model.language_model.model.decoder.layers[1], model.language_model.lm_head]
    handles = [m.register_forward_hook(lambda mod, a, out, i=i: calls.append(i)) for i, m in enumerate(later)]
    spec = QuantSpec.from_args({"method": method, "llm_bits": 4, "llm_layer_group": "first", "calib_samples": 8})
    quantize_model(model, spec, batches, progress=False)
    assert calls == []
    model(**batches[0])  # the hooks do fire when the model runs
    for h in handles:
        h.remove()
    assert calls == [0, 1]


def test_padding_is_masked_in_llm_statistics():
    model, batches = tiny("opt")
    stack = resolve_arch(model).component("llm").stacks[0]
    samples = capture_stack_inputs(model, stack, batches)
    for s, b in zip(samples, batches):
        assert torch.equal(s.mask, b["attention_mask"].bool()) and not s.mask.all()


def test_cache_loads_instead_of_requantizing(tmp_path, monkeypatch):
    spec = QuantSpec.from_args({"method": "gptq", "bits": 3, "llm_bits": 4, "calib_samples": 8})
    model, batches = tiny("opt")
    first = quantize_model(model, spec, batches, progress=False, cache_dir=tmp_path, model_id="tiny-opt")
    assert not first.cached

    def boom(*a, **k):
        raise AssertionError("GPTQ ran although the cache holds this spec")

    monkeypatch.setattr(gptq_mod, "gptq_quantize", boom)
    again, _ = tiny("opt")
    second = quantize_model(again, spec, batches, progress=False, cache_dir=tmp_path, model_id="tiny-opt")
    assert second.cached and second.bpw == first.bpw
    assert [r.output_rel_err for r in second.layers] == [r.output_rel_err for r in first.layers]
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    # another spec, seed or calibration set is another entry
    with pytest.raises(AssertionError, match="GPTQ ran"):
        quantize_model(tiny("opt")[0], QuantSpec.from_args({**spec.to_dict(), "calib_seed": 1}), batches,
                       progress=False, cache_dir=tmp_path, model_id="tiny-opt")
    with pytest.raises(AssertionError, match="GPTQ ran"):
        quantize_model(tiny("opt")[0], spec, batches[:1], progress=False, cache_dir=tmp_path, model_id="tiny-opt")
    entries = list((tmp_path / "components").iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["components"] and len(entries) == 4  # vit, qformer, projector, llm
    assert all({p.name for p in d.iterdir()} == {"weights.safetensors", "codes.safetensors", "report.json"}
               for d in entries)
    # the codes come back with the cached weights, equal to the computed ones
    assert set(second.qweights) == set(first.qweights) == {r.name for r in first.layers}
    for name, q in first.qweights.items():
        assert torch.equal(second.qweights[name].codes, q.codes) and torch.equal(second.qweights[name].scale, q.scale)


def test_a_component_shared_with_an_earlier_spec_is_reused(tmp_path, monkeypatch):
    """GPTQ on ViT + LLM, then the same ViT with another LLM width: the ViT is not calibrated
    again, and the result equals a run without the cache."""
    first = QuantSpec.from_args({"method": "gptq", "vit_bits": 3, "llm_bits": 4, "calib_samples": 8})
    second = QuantSpec.from_args({"method": "gptq", "vit_bits": 3, "llm_bits": 2, "calib_samples": 8})
    model, batches = tiny("opt")
    quantize_model(model, first, batches, progress=False, cache_dir=tmp_path, model_id="tiny-opt")
    fresh, _ = tiny("opt")
    want = quantize_model(fresh, second, batches, progress=False)

    quantized = []
    real = gptq_mod.gptq_quantize
    monkeypatch.setattr(gptq_mod, "gptq_quantize", lambda *a, name, **k: quantized.append(name) or real(*a, name=name, **k))
    again, _ = tiny("opt")
    got = quantize_model(again, second, batches, progress=False, cache_dir=tmp_path, model_id="tiny-opt")
    assert quantized and all(n.startswith("language_model.") for n in quantized)  # only the LLM was calibrated
    assert not got.cached and any(n.startswith("vit: gptq weights reused") for n in got.notes)
    assert [(r.name, r.output_rel_err) for r in got.layers] == [(r.name, r.output_rel_err) for r in want.layers]
    for (n, a), (_, b) in zip(fresh.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    # a different ViT width misses: the LLM entry depends on the ViT before it
    quantized.clear()
    third = QuantSpec.from_args({"method": "gptq", "vit_bits": 4, "llm_bits": 2, "calib_samples": 8})
    quantize_model(tiny("opt")[0], third, batches, progress=False, cache_dir=tmp_path, model_id="tiny-opt")
    assert {n.split(".")[0] for n in quantized} == {"vision_model", "language_model"}


def test_cache_keeps_awq_folded_parameters(tmp_path):
    spec = QuantSpec.from_args({"method": "awq", "llm_bits": 4, "calib_samples": 8})
    model, batches = tiny("opt")
    quantize_model(model, spec, batches, progress=False, cache_dir=tmp_path, model_id="tiny-opt")
    again, _ = tiny("opt")
    assert quantize_model(again, spec, batches, progress=False, cache_dir=tmp_path, model_id="tiny-opt").cached
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
