"""Seed-repo (gautomdas/mmq) configs read into QuantSpecs."""

import json

import pytest
from quant_tiny import make_tiny_blip2

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant.plan import build_plan
from mmq_eval.quant.seed_configs import (
    load_seed_config,
    spec_from_seed_awq,
    spec_from_seed_gptq,
    spec_from_seed_uniform,
)

# configs/1000.json of the seed repo
SEED_UNIFORM_1000 = [
    {"model_part": "LLM", "layer_group": "MIDDLE", "layer_type": "ATTENTION", "num_bits": 5},
    {"model_part": "VIT", "layer_group": "ALL", "layer_type": "ATTENTION", "num_bits": 5},
]
# as written by create_gptq_configs.py
SEED_GPTQ = {
    "vision": {"bits": 4, "percent_dampening": 0.01, "group_size": -1, "use_symmetric": True,
               "use_act_order": False, "use_static_groups": False},
    "qformer": {"bits": 16, "percent_dampening": 0.01, "group_size": -1, "use_symmetric": True,
                "use_act_order": False, "use_static_groups": False},
    "language": {"bits": 3, "percent_dampening": 0.01, "group_size": -1, "use_symmetric": True,
                 "use_act_order": False, "use_static_groups": False},
}
# the seed's awq.json, trailing commas included
SEED_AWQ_TEXT = """{
    "vit_layers": {"self_attn": 8, "self_attn_output": 8, "fc1": 8, "fc2": 8},
    "qformer_layers": {
        "self_attn": 8,
        "self_attn_output": 8,
        "intermediate_query": 8,
        "output_query": 8,
        "cross_attn": 8,
        "cross_attn_output": 8,
    },
    "llm_layers": {"self_attn": 8, "self_attn_output": 8, "fc1": 8, "fc2": 8},
}
"""


def test_uniform_entries():
    spec = spec_from_seed_uniform(SEED_UNIFORM_1000)
    assert spec.method == "uniform"
    assert [spec.component_bits(c) for c in ("vit", "qformer", "projector", "llm")] == [5, 16, 16, 5]
    assert spec.component_groups("llm") == {"middle"} and spec.component_types("llm") == {"attn"}
    assert spec.component_groups("vit") == {"first", "middle", "last"}
    plan = build_plan(make_tiny_blip2(0, "opt")[0], spec)
    assert sorted(plan.targets)[:4] == [f"language_model.model.decoder.layers.1.self_attn.{p}"
                                        for p in ("k_proj", "out_proj", "q_proj", "v_proj")]


def test_uniform_multiple_groups_of_one_part_are_a_union():
    entries = [{"model_part": "QFORMER", "layer_group": g, "layer_type": "BOTH", "num_bits": 4} for g in ("FIRST", "LAST")]
    assert spec_from_seed_uniform(entries).component_groups("qformer") == {"first", "last"}
    with pytest.raises(MMQConfigError, match="two settings"):
        spec_from_seed_uniform(entries + [{"model_part": "QFORMER", "layer_group": "MIDDLE",
                                           "layer_type": "MLP", "num_bits": 4}])


def test_gptq_dict():
    spec = spec_from_seed_gptq(SEED_GPTQ)
    assert spec.method == "gptq" and spec.sym and spec.group_size == -1 and spec.damp == 0.01
    assert [spec.component_bits(c) for c in ("vit", "qformer", "projector", "llm")] == [4, 16, 16, 3]
    bad = json.loads(json.dumps(SEED_GPTQ))
    bad["language"]["use_act_order"] = True
    with pytest.raises(MMQConfigError, match="differ"):
        spec_from_seed_gptq(bad)


def test_awq_file_with_trailing_commas(tmp_path):
    path = tmp_path / "awq.json"
    path.write_text(SEED_AWQ_TEXT)
    spec = load_seed_config(path)
    assert spec.method == "awq" and spec.effective_group_size == 128 and not spec.sym
    assert [spec.component_bits(c) for c in ("vit", "qformer", "projector", "llm")] == [8, 8, 16, 8]
    assert spec.component_types("qformer") == {"attn", "mlp"}


def test_awq_role_selection_and_inexpressible_mixes():
    spec = spec_from_seed_awq({"vit_layers": {"self_attn": 4, "self_attn_output": 4, "fc1": 16, "fc2": 16}})
    assert spec.component_bits("vit") == 4 and spec.component_types("vit") == {"attn"}
    with pytest.raises(MMQConfigError, match="mixes bit widths"):
        spec_from_seed_awq({"vit_layers": {"self_attn": 4, "self_attn_output": 4, "fc1": 2, "fc2": 2}})
    with pytest.raises(MMQConfigError, match="only part"):
        spec_from_seed_awq({"qformer_layers": {"self_attn": 4, "self_attn_output": 4, "cross_attn": 16,
                                               "cross_attn_output": 16}})


def test_load_detects_format(tmp_path):
    for name, data in (("u.json", SEED_UNIFORM_1000), ("g.json", SEED_GPTQ)):
        (tmp_path / name).write_text(json.dumps(data))
    assert load_seed_config(tmp_path / "u.json").method == "uniform"
    assert load_seed_config(tmp_path / "g.json").method == "gptq"
    (tmp_path / "x.json").write_text('{"foo": 1}')
    with pytest.raises(MMQConfigError, match="not a seed quantization config"):
        load_seed_config(tmp_path / "x.json")
