"""mmq_llava on a tiny random LLaVA-1.5: component-wise quantization through the wrapper, the
unused last ViT block, AWQ fold maps of CLIP and Llama blocks, and the real-data VQA tasks."""

import logging

import pytest
import torch
from data_fakes import gqa_raw, prepared_root, vqav2_raw
from lmms_requests import make_image
from quant_tiny import llava_batches
from tiny_models import make_tiny_llava
from torch import nn
from transformers import LlavaForConditionalGeneration

from mmq_eval.models.llava import MMQLlava
from mmq_eval.quant import awq as awq_mod
from mmq_eval.quant.arch import resolve_arch
from mmq_eval.quant.registry import BLOCK_KINDS

METHODS = ["uniform", "rtn", "gptq", "awq"]
COMPONENTS = ["vit", "projector", "llm"]


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for i in range(8):
        make_image(i).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def fp_params(tiny_llava_dir):
    lm = MMQLlava(pretrained=str(tiny_llava_dir), device="cpu", quant_cache="none")
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def load(path, calib_dir=None, **quant_args):
    if quant_args.get("method") in ("gptq", "awq"):
        quant_args.update(calib_data=str(calib_dir), calib_samples=8)
    return MMQLlava(pretrained=str(path), device="cpu", quant_cache="none", **quant_args)


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("method", METHODS)
def test_component_quantization_changes_exactly_its_linears(tiny_llava_dir, calib_dir, fp_params,
                                                            method, component):
    lm = load(tiny_llava_dir, calib_dir, method=method, **{f"{component}_bits": 4})
    report = lm.quant_report
    linears = {n: m for n, m in lm.model.named_modules() if isinstance(m, nn.Linear)}
    arch = resolve_arch(lm.model)
    targets = {li.name for li in arch.linears if li.component == component}
    assert {r.name for r in report.layers} == targets
    for name, module in linears.items():
        if name in targets:
            assert not torch.equal(module.weight, fp_params[f"{name}.weight"]), f"{name} did not change"
        else:
            for pname, p in module.named_parameters():
                assert torch.equal(p, fp_params[f"{name}.{pname}"]), f"untargeted {name}.{pname} changed"
    linear_params = {f"{n}.{p}" for n, m in linears.items() for p, _ in m.named_parameters()}
    for name, p in lm.model.named_parameters():
        if name not in linear_params and name not in report.folded:
            assert torch.equal(p, fp_params[name]), name
    # AWQ folds its scales only into the component's norms and the Linears it quantizes
    blocks = tuple(f"{b}." for b in arch.component(component).blocks)
    assert all(f.startswith(blocks) and ("norm" in f or f.rsplit(".", 1)[0] in targets)
               for f in report.folded), report.folded
    assert method == "awq" or not report.folded
    assert report.effective and report.bpw < 16


def test_last_vit_block_alone_is_reported_as_no_effect(tiny_llava_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="mmq_eval.quant.engine"):
        lm = load(tiny_llava_dir, method="rtn", vit_bits=4, vit_layer_group="last")
    report = lm.quant_report.to_dict()
    last = {li.name for li in resolve_arch(lm.model).linears if li.component == "vit" and li.block == 2}
    assert {r["name"] for r in report["layers"]} == last and len(last) == 6
    assert report["effective"] is False
    assert report["unused_params"] == report["quantized_params"] > 0
    assert report["bpw"] < 16  # the unused block is stored, so its bits count
    assert report["notes"][0].startswith("NO EFFECT")
    assert "vision_feature_layer=-2" in report["notes"][1] and "[2] of 3" in report["notes"][1]
    assert "NO EFFECT" in caplog.text
    assert "[NO EFFECT on outputs]" in lm.quant_report.format_table()
    rows = {(r["component"], r["block_group"], r["role"]): r for r in report["coverage"]}
    assert rows[("vit", "last", "mlp")]["linears_unused"] == rows[("vit", "last", "mlp")]["linears"] == 2
    assert all(r["linears_unused"] == 0 for key, r in rows.items() if key[:2] != ("vit", "last"))
    fp = load(tiny_llava_dir)
    batch = llava_batches(lm.model.config)[0]
    with torch.no_grad():
        assert torch.equal(lm.model(**batch).logits, fp.model(**batch).logits)


def test_a_spec_with_some_used_blocks_is_effective_and_counts_the_unused(tiny_llava_dir):
    report = load(tiny_llava_dir, method="rtn", vit_bits=4).quant_report
    assert report.effective and report.notes[0].startswith("vision_feature_layer=-2")
    assert report.unused_params == report.quantized_params // 3 > 0  # 1 of 3 equal ViT blocks
    table = report.format_table().splitlines()
    assert table[1].endswith("unused")
    vit_last_mlp = next(line for line in table if line.split()[:3] == ["vit", "last", "mlp"])
    assert vit_last_mlp.split()[-1] == "2"  # both Linears of the unused block's MLP
    assert "of them in unused blocks" in report.format_table()


def test_models_without_unused_blocks_show_no_unused_column(tiny_blip2_dir):
    from mmq_eval.models.blip2 import MMQBlip2

    lm = MMQBlip2(pretrained=str(tiny_blip2_dir), device="cpu", quant_cache="none", method="rtn", bits=4)
    assert "unused" not in lm.quant_report.format_table()


@pytest.mark.parametrize(("feature_layer", "unused"), [(-1, ()), (-2, (2,)), (-3, (1, 2)), ([-3, -2], (2,))])
def test_unused_blocks_follow_vision_feature_layer(feature_layer, unused):
    """The arch map reads vision_feature_layer from the config; the real forward agrees."""
    config = make_tiny_llava(0)[0].config
    config.vision_feature_layer = feature_layer
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    assert resolve_arch(model).unused_blocks.get("vit", ()) == unused
    batch = llava_batches(config)[0]
    layers = model.model.vision_tower.encoder.layers
    with torch.no_grad():
        before = model(**batch).logits
        for i in range(len(layers)):
            for p in layers[i].parameters():
                p.add_(torch.randn_like(p))
            assert torch.equal(model(**batch).logits, before) == (i in unused), i
            before = model(**batch).logits


def _groups(kind, block):
    return [(m.prev, m.via, m.linears) for m in awq_mod.applicable_mappings(block, BLOCK_KINDS[kind])]


def test_awq_maps_of_clip_and_llama_blocks():
    """q/k/v from the pre-attention norm, o from v, fc1 / gate+up from the second norm, down from up."""
    model, _ = make_tiny_llava(0)
    clip = model.model.vision_tower.encoder.layers[0]
    assert _groups("clip", clip) == [
        ("layer_norm1", "norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("self_attn.v_proj", "attention", ("self_attn.out_proj",)),
        ("layer_norm2", "norm", ("mlp.fc1",)),
    ]
    llama = model.model.language_model.layers[0]
    assert _groups("llama", llama) == [
        ("input_layernorm", "norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
        ("post_attention_layernorm", "norm", ("mlp.gate_proj", "mlp.up_proj")),
        ("mlp.up_proj", "gate", ("mlp.down_proj",)),
        ("self_attn.v_proj", "attention", ("self_attn.o_proj",)),
    ]
    # grouped-query attention: v has fewer rows than o has columns, so v -> o is not an exact fold
    config = model.config
    config.text_config.num_key_value_heads = 1
    gqa = LlavaForConditionalGeneration(config).model.language_model.layers[0]
    assert ("self_attn.v_proj", "attention", ("self_attn.o_proj",)) not in _groups("llama", gqa)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    with prepared_root(tmp_path_factory, ("vqav2", vqav2_raw), ("gqa", gqa_raw)) as (root, _):
        yield root


def test_real_data_vqa_tasks_with_llava_prompts(prepared, tiny_llava_dir, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from mmq_eval.tasks import tasks_path

    monkeypatch.setenv("MMQ_DATA_DIR", str(prepared))
    lm = load(tiny_llava_dir, method="rtn", llm_bits=4)
    lm.args = lm.args.__class__(**{**lm.args.__dict__, "batch_size": 4})
    prompts = []
    original = lm._format_prompt
    monkeypatch.setattr(lm, "_format_prompt", lambda c: prompts.append(original(c)) or prompts[-1])
    manager = TaskManager(verbosity="WARNING", include_path=tasks_path(), include_defaults=False,
                          model_name="mmq_llava")
    out = simple_evaluate(model=lm, tasks=["mmq_vqav2_val", "mmq_gqa_testdev"], task_manager=manager,
                          bootstrap_iters=0, gen_kwargs="max_new_tokens=3")
    assert {t: n["effective"] for t, n in out["n-samples"].items()} == {"mmq_vqav2_val": 6, "mmq_gqa_testdev": 4}
    assert 0 <= out["results"]["mmq_vqav2_val"]["accuracy,none"] <= 1
    assert 0 <= out["results"]["mmq_gqa_testdev"]["exact_match,none"] <= 1
    assert len(prompts) == 10
    assert all(p.startswith("USER: <image>\n") and p.endswith(
        "\nAnswer the question using a single word or phrase. ASSISTANT:") for p in prompts), prompts[0]
