"""Packed export (compressed-tensors pack-quantized): the quantizers' codes in compressed-tensors'
convention, round trips through plain transformers, refusals, the ``mmq-eval export`` command and
the memory measurement."""

import json

import pytest
import torch
from quant_tiny import blip2_batches, llava_batches
from safetensors import safe_open
from transformers import (AutoProcessor, Blip2ForConditionalGeneration, CompressedTensorsConfig,
                          LlavaForConditionalGeneration)

from mmq_eval.cli import main
from mmq_eval.errors import MMQConfigError
from mmq_eval.export.memory import checkpoint_bytes, measure
from mmq_eval.export.packed import signed_grid, write_packed
from mmq_eval.export.schemes import check_plan, check_spec
from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant.formats import rtn_quantize
from mmq_eval.quant.gptq import gptq_quantize
from mmq_eval.quant.plan import build_plan


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _quantize_and_export(model_class, source, args: dict, batches, out):
    """(reference logits of the fake-quantized model, plan) after exporting it to `out`."""
    model = model_class.from_pretrained(source, dtype=torch.float32).eval()
    spec = QuantSpec.from_args(args)
    report = quantize_model(model, spec, batches if spec.needs_calibration else None, progress=False)
    with torch.no_grad():
        reference = model(**batches[0]).logits
    plan = build_plan(model, spec)
    write_packed(model, AutoProcessor.from_pretrained(source), plan, report.qweights, out)
    return reference, plan


def _reload_logits(model_class, out, batch):
    model = model_class.from_pretrained(out, dtype=torch.float32).eval()  # plain transformers
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def gptq_export(tiny_blip2_dir, tmp_path_factory):
    """Tiny BLIP-2 quantized with GPTQ 4-bit symmetric and exported: (out, reference, batches)."""
    batches = blip2_batches(AutoProcessor.from_pretrained(tiny_blip2_dir))
    out = tmp_path_factory.mktemp("packed-gptq4")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference, _ = _quantize_and_export(Blip2ForConditionalGeneration, tiny_blip2_dir,
                                            {"method": "gptq", "bits": 4, "sym": True, "calib_samples": 8},
                                            batches, out)
    finally:
        torch.set_num_threads(n)
    return out, reference, batches


# ---- the quantizers' codes in compressed-tensors' convention --------------------------------------

def test_signed_grid_hand_computed_symmetric_codes():
    # 4-bit symmetric per channel: scale = 2·0.8/15; codes round(w/scale) + 8 clamp to [0, 15]
    w = torch.tensor([[-0.8, -0.4, 0.0, 0.7]])
    q = rtn_quantize(w, 4, 4, sym=True)
    grid = signed_grid(q, torch.float32, "w")
    assert grid.codes.tolist() == [[-8, -4, 0, 7]]  # compressed-tensors' signed codes (ours − 8)
    assert grid.scale.item() == pytest.approx(1.6 / 15, rel=1e-6)
    assert grid.zero is None
    assert torch.equal(grid.dequantize(), q.weight)


@pytest.mark.parametrize("bits,sym", [(2, True), (3, False), (4, False), (8, True)])
def test_signed_grid_keeps_the_rtn_integers(bits, sym):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(bits))
    ours = rtn_quantize(w, bits, 16, sym)
    grid = signed_grid(ours, torch.float32, "w")
    assert torch.equal(grid.dequantize(), ours.weight)  # bit for bit: no float-to-grid recovery
    half = 2 ** (bits - 1)
    assert grid.codes.min() >= -half and grid.codes.max() <= half - 1
    k_ours = ours.codes.float() - ours.zero.repeat_interleave(16, dim=1)
    zero = 0 if sym else grid.zero.float().repeat_interleave(16, dim=1)
    assert torch.equal(grid.codes.float() - zero, k_ours)  # the same integers q − z


def test_groups_in_activation_order_are_refused():
    W = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    H = torch.eye(32) + torch.diag(torch.arange(32.0))
    q = gptq_quantize(W, H, 4, 16, sym=True, act_order=True).qweight
    assert q.g_idx is not None
    with pytest.raises(MMQConfigError, match=r"layer\.x: its groups are not runs of consecutive columns"):
        signed_grid(q, torch.float32, "layer.x")


# ---- round trips through plain transformers ----------------------------------------------------

def test_gptq_symmetric_export_reloads_to_the_same_logits(gptq_export, tiny_blip2_dir):
    out, reference, batches = gptq_export
    packed = Blip2ForConditionalGeneration.from_pretrained(
        out, dtype=torch.float32, quantization_config=CompressedTensorsConfig(dequantize=False)).eval()
    assert packed.language_projection.weight_packed.dtype == torch.int32  # packed at rest when asked
    reloaded = Blip2ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert not hasattr(reloaded.language_projection, "weight_packed")  # one format: dequantized on load
    with torch.no_grad():
        logits = reloaded(**batches[0]).logits
        packed_logits = packed(**batches[0]).logits
    assert (logits - reference).abs().max().item() < 1e-4
    assert (packed_logits - reference).abs().max().item() < 1e-4

    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["quant_method"] == "compressed-tensors"
    assert qc["dequantize"] is True
    assert list(qc["config_groups"]) == ["int4_sym_channel"]  # tiny widths: per channel
    assert "language_model.lm_head" in qc["ignore"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        packed = f.get_tensor("vision_model.encoder.layers.0.mlp.fc1.weight_packed")
    assert packed.dtype == torch.int32 and tuple(packed.shape) == (64, 32 * 4 // 32)  # 8 codes per int32
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" not in keys
    assert "language_model.lm_head.weight" not in keys  # tied to the (dense) embeddings
    assert AutoProcessor.from_pretrained(out).tokenizer("a red circle").input_ids  # usable model folder
    assert checkpoint_bytes(out) < 0.5 * checkpoint_bytes(tiny_blip2_dir)


def test_mixed_bits_llava_keeps_16_bit_components_dense(tiny_llava_dir, tmp_path):
    model_config = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).config
    batches = llava_batches(model_config)
    args = {"method": "rtn", "vit_bits": 8, "llm_bits": 3, "sym": True, "group_size": 16}
    reference, plan = _quantize_and_export(LlavaForConditionalGeneration, tiny_llava_dir, args, batches, tmp_path)
    logits = _reload_logits(LlavaForConditionalGeneration, tmp_path, batches[0])
    assert (logits - reference).abs().max().item() < 1e-4
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert sorted(qc["config_groups"]) == ["int3_sym_g16", "int8_sym_g16"]
    assert "dequantize" not in qc  # two formats: the dequantize-on-load path would decode both as the first
    for layer in ("multi_modal_projector.linear_1", "multi_modal_projector.linear_2", "lm_head"):  # left dense
        assert any(name.endswith(layer) for name in qc["ignore"])
    assert sum(len(g["targets"]) for g in qc["config_groups"].values()) == len(plan.targets)


def test_asymmetric_single_format_reloads_dequantized(tiny_blip2_dir, tmp_path):
    batches = blip2_batches(AutoProcessor.from_pretrained(tiny_blip2_dir))
    args = {"method": "rtn", "bits": 3, "sym": False, "group_size": -1}
    reference, _ = _quantize_and_export(Blip2ForConditionalGeneration, tiny_blip2_dir, args, batches, tmp_path)
    logits = _reload_logits(Blip2ForConditionalGeneration, tmp_path, batches[0])
    assert (logits - reference).abs().max().item() < 1e-4
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["dequantize"] is True and list(qc["config_groups"]) == ["int3_asym_channel"]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("language_projection.weight_zero_point").dtype == torch.int32  # packed


# ---- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    ({"method": "uniform", "bits": 4},
     r"method=uniform cannot be exported.*use method=rtn \(or gptq / awq\) with sym=true"),
    ({"method": "none"}, r"nothing to export"),
    ({"method": "rtn", "bits": 16}, r"nothing to export"),
    ({"method": "rtn", "vit_bits": 8, "llm_bits": 4},
     r"asymmetric export needs a single format.*\(int4, int8\).*Use sym=true"),
    ({"method": "gptq", "bits": 4, "sym": True, "act_order": True},
     r"act_order=true without static_groups=true.*add static_groups=true \(or group_size=-1\)"),
])
def test_unexportable_specs_are_refused_before_loading(args, message):
    with pytest.raises(MMQConfigError, match=message):
        check_spec(QuantSpec.from_args(args))


def test_mixed_asymmetric_plan_is_refused(tiny_blip2_dir):
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2_dir)
    plan = build_plan(model, QuantSpec.from_args({"method": "rtn", "vit_bits": 8, "llm_bits": 3}))
    with pytest.raises(MMQConfigError, match=r"\(int8_asym_channel, int3_asym_channel\)"):
        check_plan(plan)


def test_missing_compressed_tensors_names_the_extra(monkeypatch, tiny_blip2_dir, tmp_path):
    import importlib.metadata

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    model = Blip2ForConditionalGeneration.from_pretrained(tiny_blip2_dir)
    plan = build_plan(model, QuantSpec.from_args({"method": "rtn", "bits": 4, "sym": True}))
    with pytest.raises(MMQConfigError, match=r"compressed-tensors>=0\.20 \(found none\).*mmq-eval\[export\]"):
        write_packed(model, None, plan, {}, tmp_path)


# ---- command line and memory ---------------------------------------------------------------------

def test_cli_exports_and_reports_sizes(tiny_blip2_dir, tmp_path, capsys):
    out, figures = tmp_path / "packed", tmp_path / "figures.json"
    rc = main(["export", "--model", "mmq_blip2", "--model_args",
               f"pretrained={tiny_blip2_dir},method=rtn,bits=4,sym=true,quant_cache=none",
               "--out", str(out), "--no-memory", "--json", str(figures)])
    assert rc == 0
    assert "pack-quantized" in capsys.readouterr().out
    f = json.loads(figures.read_text())
    assert f["packed_bytes"] == checkpoint_bytes(out) and f["source_bytes"] == checkpoint_bytes(tiny_blip2_dir)
    assert f["packed_bytes"] < 0.5 * f["source_bytes"]
    assert f["dense_bytes"]["float32"] == 4 * f["params"] and f["memory"] is None

    rc = main(["export", "--model_args", f"pretrained={tiny_blip2_dir},method=rtn,bits=4,sym=true", "--out", str(out)])
    assert rc == 2 and "exists and is not an empty folder" in capsys.readouterr().err


def test_cli_refuses_uniform_with_the_fix(tmp_path, capsys):
    rc = main(["export", "--model_args", "pretrained=mmq:shapes-blip2,method=uniform,bits=4",
               "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "method=uniform cannot be exported" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_memory_of_a_packed_checkpoint_is_measured_at_rest_and_decompressed(gptq_export):
    out, _, _ = gptq_export
    m = measure(out)
    assert m["load_rss"] >= 0 and m["load_peak_rss"] >= m["load_rss"]
    assert m["decompressed_rss"] is not None and m["decompressed_peak_rss"] >= m["decompressed_rss"]
