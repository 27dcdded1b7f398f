"""Sweep spec: expansion counts, dedup, determinism, sharding, malformed specs."""

import argparse

import pytest
import yaml

from mmq_eval.errors import MMQConfigError
from mmq_eval.sweep import cli as sweep_cli
from mmq_eval.sweep.spec import build_sweep, parse_shard, shard_configs

MODEL = {"pretrained": "mmq:shapes-blip2", "batch_size": 8, "device": "cpu"}
TASKS = ["mmq_shapes_cap", "mmq_shapes_vqa"]


def spec(**extra):
    return {"model": dict(MODEL), "tasks": list(TASKS), **extra}


def test_grid_counts_and_full_precision_dedup():
    sweep = build_sweep(spec(grid={"method": ["uniform", "rtn", "gptq"], "vit_bits": [16, 4], "llm_bits": [16, 4, 2]}))
    # 3 methods x 2 x 3 = 18 points; the (16, 16) point of each method is one FP baseline.
    assert len(sweep.configs) == 16
    fp = [c for c in sweep.configs if c.features["method"] == "none"]
    assert len(fp) == 1 and fp[0].quant.to_dict() == {"method": "none"}
    assert len({c.config_id for c in sweep.configs}) == 16


def test_features_name_only_the_models_components():
    blip2 = build_sweep(spec(fixed={"method": "rtn"}, grid={"bits": [4]})).configs[0].features
    llava = build_sweep({**spec(fixed={"method": "rtn"}, grid={"bits": [4]}), "model": {"name": "mmq_llava", "pretrained": "mmq:shapes-llava"}})
    assert [k for k in blip2 if k.endswith("_bits")] == ["vit_bits", "qformer_bits", "projector_bits", "llm_bits"]
    assert [k for k in llava.configs[0].features if k.endswith("_bits")] == ["vit_bits", "projector_bits", "llm_bits"]


def test_equivalent_specs_collapse():
    # Block group / layer type of a component left at 16 bits change nothing.
    sweep = build_sweep(spec(fixed={"method": "uniform", "llm_bits": 4},
                             grid={"vit_layer_group": ["first", "last"], "vit_layer_type": ["attn", "mlp"]}))
    assert len(sweep.configs) == 1


def test_fixed_exclude_method_args_and_explicit_configs():
    sweep = build_sweep(spec(
        fixed={"bits": 4},
        grid={"method": ["rtn", "gptq"], "layer_group": ["first", "middle", "last", "all"]},
        method_args={"gptq": {"damp": 0.05}},
        exclude=[{"method": "rtn", "layer_group": ["first", "middle"]}],
        configs=[{"method": "awq", "llm_bits": 3}],
    ))
    assert len(sweep.configs) == 2 * 4 - 2 + 1
    gptq = [c for c in sweep.configs if c.features["method"] == "gptq"]
    assert all(c.quant.damp == 0.05 for c in gptq)
    assert sweep.configs[-1].features == {"method": "awq", "vit_bits": 4, "qformer_bits": 4, "projector_bits": 4,
                                          "llm_bits": 3, "layer_group": "all", "layer_type": "both"}


def test_order_and_ids_are_deterministic():
    s = spec(grid={"method": ["uniform", "gptq"], "vit_bits": [8, 4, 2], "llm_bits": [4, 2]})
    a, b = build_sweep(s), build_sweep(yaml.safe_load(yaml.safe_dump(s, sort_keys=False)))
    assert [c.config_id for c in a.configs] == [c.config_id for c in b.configs]
    assert [c.features["vit_bits"] for c in a.configs[:6]] == [8, 8, 4, 4, 2, 2]
    # Runtime-only wrapper args do not change ids; the document limit does.
    other = dict(s, model={"pretrained": "mmq:shapes-blip2", "batch_size": 64})
    assert [c.config_id for c in build_sweep(other).configs] == [c.config_id for c in a.configs]
    assert build_sweep(s, limit=5).configs[0].config_id != a.configs[0].config_id


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_shards_partition_exactly(count):
    configs = build_sweep(spec(grid={"method": ["uniform"], "vit_bits": [8, 4, 3, 2], "llm_bits": [8, 4, 3, 2]})).configs
    shards = [shard_configs(configs, i, count) for i in range(count)]
    ids = [c.config_id for shard in shards for c in shard]
    assert sorted(ids) == sorted(c.config_id for c in configs) and len(ids) == len(set(ids))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "-1/2", "a/b"):
        with pytest.raises(MMQConfigError, match="--shard"):
            parse_shard(bad)


def exploding_factory(model, tasks, limit):
    raise AssertionError("evaluation started for a malformed spec")


@pytest.mark.parametrize("bad, field", [
    ({"modle": {}}, "modle"),
    ({"fixed": {"method": "uniform", "lm_bits": 4}, "grid": {"bits": [4]}}, "fixed.lm_bits"),
    ({"grid": {"llm_bits": []}}, "grid.llm_bits"),
    ({"grid": {}}, "grid"),
    ({"fixed": {"method": "uniform"}, "grid": {"llm_bits": [4, 9]}}, "llm_bits"),
    ({"grid": {"method": ["uniform", "int4"], "bits": [4]}}, "method"),
    ({"fixed": {"method": "uniform"}, "grid": {"bits": [4]}, "exclude": [{"bitz": 4}]}, "exclude[0].bitz"),
    ({"model": {"pretrained": "x", "llm_bits": 4}}, "model.llm_bits"),
    ({"model": {"pretrained": "x", "batchsize": 4}}, "model.batchsize"),
    ({"model": {"pretrained": "x", "name": "llava_hf"}}, "model.name"),
    ({"tasks": ["mmq_shapes_cap", "no_such_task"]}, "tasks[1]"),
])
def test_malformed_spec_names_field_and_evaluates_nothing(bad, field, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMQ_SWEEP_EVALUATOR", "test_sweep_spec:exploding_factory")
    # The full lmms-eval task index takes ~20 s to build; a stand-in keeps this test fast.
    monkeypatch.setattr("mmq_eval.sweep.spec._indexed_task_names", lambda folder: {"mme", "gqa"})
    body = {**spec(grid={"method": ["uniform"], "bits": [4]}), **bad}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body))
    parser = argparse.ArgumentParser()
    sweep_cli.register(parser.add_subparsers())
    args = parser.parse_args(["sweep", str(path), "--out", str(tmp_path / "out")])
    assert args.func(args) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_spec_file_is_named(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sweep_cli.register(parser.add_subparsers())
    args = parser.parse_args(["sweep", str(tmp_path / "absent.yaml")])
    assert args.func(args) == 2
    assert "absent.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("path, count", [("examples/sweep_components.yaml", 27),
                                         ("examples/sweep_methods.yaml", 13),
                                         (".ci/regression_sweep.yaml", 5)])
def test_shipped_specs_are_valid(path, count):
    from pathlib import Path

    from mmq_eval.sweep.spec import load_spec

    sweep = build_sweep(load_spec(Path(__file__).parent.parent / path))
    assert len(sweep.configs) == count
    assert sum(c.quant.is_noop for c in sweep.configs) == 1  # the full-precision point, once
