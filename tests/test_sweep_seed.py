"""Seed-repo import: uniform lists and GPTQ per-part dicts become sweep configurations."""

import argparse
import json

import pytest

from mmq_eval.errors import MMQConfigError
from mmq_eval.quant import QuantSpec
from mmq_eval.sweep import cli as sweep_cli
from mmq_eval.sweep.seed_import import seed_configs, spec_from_seed
from mmq_eval.sweep.spec import build_sweep

# Verbatim shape of gautomdas/mmq configs/1000.json.
UNIFORM_1000 = [
    {"model_part": "LLM", "layer_group": "MIDDLE", "layer_type": "ATTENTION", "num_bits": 5},
    {"model_part": "VIT", "layer_group": "ALL", "layer_type": "ATTENTION", "num_bits": 5},
]
UNIFORM_FIRST_LAST = [
    {"model_part": "QFORMER", "layer_group": "FIRST", "layer_type": "MLP", "num_bits": 3},
    {"model_part": "QFORMER", "layer_group": "LAST", "layer_type": "MLP", "num_bits": 3},
]
SHARED = {"percent_dampening": 0.01, "group_size": -1, "use_symmetric": True,
          "use_act_order": False, "use_static_groups": False}
GPTQ = {"vision": {"bits": 4, **SHARED}, "qformer": {"bits": 16, **SHARED}, "language": {"bits": 2, **SHARED}}


@pytest.fixture
def seed_dir(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    for name, body in [("1000.json", UNIFORM_1000), ("2.json", UNIFORM_FIRST_LAST),
                       ("gptq_10.json", GPTQ), ("0.json", [])]:
        (folder / name).write_text(json.dumps(body))
    return folder


def same_spec(args: dict, expected: dict) -> bool:
    return QuantSpec.from_dict(args) == QuantSpec.from_args(expected)


def test_seed_formats_map_to_quant_args(seed_dir):
    configs = seed_configs(seed_dir)
    assert QuantSpec.from_dict(configs[0]).is_noop  # 0.json: nothing quantized
    assert same_spec(configs[1], {"method": "uniform", "bits": 16, "projector_bits": 16, "qformer_bits": 3,
                                  "qformer_layer_group": "first+last", "qformer_layer_type": "mlp"})
    assert same_spec(configs[2], {"method": "gptq", "bits": 16, "projector_bits": 16, "vit_bits": 4, "qformer_bits": 16, "llm_bits": 2, "damp": 0.01,
                                  "group_size": -1, "sym": True, "act_order": False})
    assert same_spec(configs[3], {"method": "uniform", "bits": 16, "projector_bits": 16, "llm_bits": 5, "vit_bits": 5,
                                  "llm_layer_group": "middle", "vit_layer_group": "all", "vit_layer_type": "attn", "llm_layer_type": "attn"})


def test_seed_awq_files_are_read_too(seed_dir):
    (seed_dir / "5.json").write_text(json.dumps({"vit_layers": {"fc1": 4, "fc2": 4}}))
    assert same_spec(seed_configs(seed_dir)[2], {"method": "awq", "bits": 16, "projector_bits": 16, "vit_bits": 4, "vit_layer_type": "mlp"})


def test_seed_spec_builds_a_sweep(seed_dir):
    sweep = build_sweep(spec_from_seed(seed_dir))
    assert [c.features["method"] for c in sweep.configs] == ["none", "uniform", "gptq", "uniform"]
    assert sweep.configs[3].features["llm_layer_group"] == "middle"


def test_unreadable_seed_file_is_named(seed_dir):
    (seed_dir / "5.json").write_text(json.dumps({"vision_tower": {"bits": 4}}))
    with pytest.raises(MMQConfigError, match="5.json.*not a seed quantization config"):
        seed_configs(seed_dir)


def test_cli_from_seed_writes_spec_and_dry_runs(seed_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sweep_cli.register(parser.add_subparsers())
    args = parser.parse_args(["sweep", "--from-seed", str(seed_dir), "--write-spec", str(tmp_path / "s.yaml")])
    assert args.func(args) == 0
    args = parser.parse_args(["sweep", str(tmp_path / "s.yaml"), "--dry-run"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert len([l for l in captured.out.splitlines() if l.startswith("{")]) == 4
    assert "4 configurations" in captured.err
