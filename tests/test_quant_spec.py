"""QuantSpec parsing and model-dependent validation: bad specs fail before any work, naming the argument."""

import json

import pytest
import torch
from quant_tiny import make_tiny_blip2, make_tiny_itm, make_tiny_llava

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant import QUANT_ARG_KEYS, QuantSpec, quantize_model
from mmq_eval.quant.arch import resolve_arch
from mmq_eval.quant.plan import build_plan


@pytest.fixture(scope="module")
def blip2():
    return make_tiny_blip2(0, "opt")[0]


@pytest.fixture(scope="module")
def llava():
    return make_tiny_llava(0)[0]


def test_lmms_eval_style_values_parse():
    spec = QuantSpec.from_args({"method": "gptq", "bits": "4", "llm_bits": 3, "group_size": "-1",
                                "sym": "true", "act_order": True, "damp": "0.05", "calib_samples": 16,
                                "layer_group": "LAST+first", "vit_layer_type": "attn"})
    assert spec.component_bits("vit") == 4 and spec.component_bits("llm") == 3
    assert spec.group_size == -1 and spec.sym and spec.act_order and spec.damp == 0.05
    assert spec.layer_group == "first+last"
    assert spec.component_groups("qformer") == {"first", "last"}
    assert spec.component_types("vit") == {"attn"} and spec.component_types("llm") == {"attn", "mlp"}
    assert spec.needs_calibration and not spec.is_noop and spec.calib_samples == 16 and spec.calib_seed == 0


def test_json_round_trip():
    for args in [{"method": "gptq", "llm_bits": 4, "vit_layer_group": "middle", "static_groups": True,
                  "group_size": 64},
                 {"method": "uniform", "bits": 3, "layer_type": "mlp"},
                 {"method": "awq", "bits": 4, "calib_seed": 3},
                 {"method": "none"}]:
        spec = QuantSpec.from_args(args)
        again = QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec and again.canonical_json() == spec.canonical_json()


def test_noop_and_defaults():
    assert QuantSpec.from_args({}).is_noop
    assert QuantSpec.from_args({"method": "rtn", "bits": 16}).is_noop
    spec = QuantSpec.from_args({"method": "rtn", "vit_bits": 4})
    assert not spec.is_noop and not spec.needs_calibration
    assert spec.component_bits("llm") == 16 and spec.effective_group_size == 128 and spec.sym is False
    assert QuantSpec.from_args({"method": "uniform", "bits": 4}).effective_group_size == 0
    assert QUANT_ARG_KEYS >= {"method", "bits", "vit_bits", "llm_layer_type", "calib_split", "damp"}


@pytest.mark.parametrize("args,named", [
    ({"method": "rtn", "bits": 1}, "bits=1"),
    ({"method": "rtn", "bits": 9}, "bits=9"),
    ({"method": "rtn", "llm_bits": 12}, "llm_bits=12"),
    ({"method": "rtn", "bits": True}, "bits=True"),
    ({"method": "rtn", "bits": 4, "layer_type": "foo"}, "layer_type='foo'"),
    ({"method": "rtn", "bits": 4, "vit_layer_group": "top"}, "vit_layer_group='top'"),
    ({"method": "gptq", "bits": 4, "calib_samples": 0}, "calib_samples=0"),
    ({"method": "awq", "bits": 4, "calib_samples": "0"}, "calib_samples='0'"),
    ({"method": "rtn", "bits": 4, "foo": 1}, "'foo'"),
    ({"method": "quantum", "bits": 4}, "method='quantum'"),
    ({"method": "rtn", "bits": 4, "damp": 0.1}, "damp applies only to method=gptq"),
    ({"method": "uniform", "bits": 4, "group_size": 64}, "group_size applies only"),
    ({"method": "rtn", "bits": 4, "group_size": 0}, "group_size=0"),
    ({"method": "gptq", "bits": 4, "damp": 0}, "damp=0"),
    ({"method": "gptq"}, "method=gptq needs a bit width"),
    ({"bits": 4}, "bits=4 given but method=none"),
    ({"method": "gptq", "bits": 4, "group_size": -1, "static_groups": True}, "static_groups"),
])
def test_bad_args_name_the_key(args, named):
    with pytest.raises(MMQConfigError) as err:
        QuantSpec.from_args(args)
    assert named in str(err.value)


def test_bits_error_lists_accepted_values():
    with pytest.raises(MMQConfigError, match="2–8 or 16"):
        QuantSpec.from_args({"method": "rtn", "vit_bits": 9})


def test_component_the_architecture_lacks(blip2, llava):
    with pytest.raises(MMQConfigError, match=r"qformer_bits: LlavaForConditionalGeneration has no qformer"):
        build_plan(llava, QuantSpec.from_args({"method": "rtn", "qformer_bits": 4}))
    with pytest.raises(MMQConfigError, match="qformer_layer_type"):
        build_plan(llava, QuantSpec.from_args({"method": "rtn", "bits": 4, "qformer_layer_type": "mlp"}))
    # BLIP-2's language_projection is its projector; a global bits covers whatever exists
    plan = build_plan(blip2, QuantSpec.from_args({"method": "rtn", "projector_bits": 4}))
    assert list(plan.targets) == ["language_projection"]
    assert build_plan(llava, QuantSpec.from_args({"method": "rtn", "bits": 4})).targets


def test_group_size_must_divide_when_explicit(blip2):
    with pytest.raises(MMQConfigError) as err:
        build_plan(blip2, QuantSpec.from_args({"method": "rtn", "bits": 4, "group_size": 64}))
    assert "group_size=64" in str(err.value) and "vision_model.encoder.layers.0.self_attn.qkv" in str(err.value)
    assert "32" in str(err.value)
    # the default 128 falls back to per channel, recorded per layer
    plan = build_plan(blip2, QuantSpec.from_args({"method": "rtn", "bits": 4}))
    fmt = plan.targets["language_model.model.decoder.layers.0.fc2"]
    assert fmt.fallback and fmt.group_size == 96
    assert "llm: default group size 128 does not divide in_features=96 of fc2 (3 Linears); per channel instead" in plan.notes
    plan = build_plan(blip2, QuantSpec.from_args({"method": "rtn", "bits": 4, "group_size": 16}))
    assert {f.group_size for f in plan.targets.values()} == {16}


def test_selection_matching_nothing_names_the_argument():
    model = make_tiny_blip2(0, "t5")[0]  # T5 encoder and decoder have 2 blocks each: 4 LLM blocks
    arch = resolve_arch(model)
    assert len(arch.component("llm").blocks) == 4
    tiny_vit = make_tiny_blip2(0, "opt")[0]
    tiny_vit.vision_model.encoder.layers = tiny_vit.vision_model.encoder.layers[:2]  # thirds of 2: first is empty
    with pytest.raises(MMQConfigError) as err:
        build_plan(tiny_vit, QuantSpec.from_args({"method": "rtn", "vit_bits": 4, "vit_layer_group": "first"}))
    assert "vit_layer_group=first" in str(err.value) and "selects no Linear of vit" in str(err.value)


def test_unknown_architecture():
    with pytest.raises(MMQConfigError) as err:
        build_plan(torch.nn.Linear(4, 4), QuantSpec.from_args({"method": "rtn", "bits": 4}))
    assert "Linear" in str(err.value) and "Blip2ForConditionalGeneration" in str(err.value)


def test_validation_happens_before_any_work(blip2):
    before = {k: v.clone() for k, v in blip2.state_dict().items()}
    with pytest.raises(MMQConfigError, match="group_size=32"):
        quantize_model(blip2, QuantSpec.from_args({"method": "gptq", "bits": 4, "group_size": 32}), [{}])
    with pytest.raises(MMQConfigError, match="needs calibration batches"):
        quantize_model(blip2, QuantSpec.from_args({"method": "gptq", "bits": 4}), None)
    assert all(torch.equal(v, before[k]) for k, v in blip2.state_dict().items())


def test_itm_architecture_map():
    arch = resolve_arch(make_tiny_itm())
    assert arch.component_names == ("vit", "qformer", "projector")
    roles = {li.name.split("layer.0.")[-1]: li.role for li in arch.linears if ".layer.0." in li.name}
    assert roles["intermediate.dense"] == "mlp" and roles["output.dense"] == "mlp"
    assert roles["crossattention.output.dense"] == "attn" and roles["attention.attention.query"] == "attn"
    assert arch.excluded == ("itm_head",)
    assert {li.name for li in arch.linears if li.component == "projector"} == {"vision_projection", "text_projection"}
