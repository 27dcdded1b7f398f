"""Exported models are usable: a fresh ``from_pretrained`` generates what the fake-quantized model
generates (plain transformers, ``pipeline``), ``mmq_*`` models evaluate an export as stored with
its bits per weight, and ``export`` says what vLLM could not load (``--servable vllm``)."""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoProcessor, Blip2ForConditionalGeneration, LlavaForConditionalGeneration, pipeline

from mmq_eval.cli import main
from mmq_eval.errors import MMQConfigError
from mmq_eval.export.packed import write_packed
from mmq_eval.export.schemes import DECOMPRESS_CALL
from mmq_eval.export.servable import servability_note, servable_plan
from mmq_eval.models.blip2 import MMQBlip2
from mmq_eval.models.loading import load_model, resolve_pretrained
from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant.bpw import bits_per_weight
from mmq_eval.quant.plan import build_plan
from mmq_eval.shapes.world import make_scene, render

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLIP2, LLAVA = resolve_pretrained("mmq:shapes-blip2"), resolve_pretrained("mmq:shapes-llava")
IMAGES = [render(make_scene("test", i)) for i in range(3)]
LLAVA_PROMPT = "USER: <image>\nDescribe the image. ASSISTANT:"


def _export(model_class, source, args: dict, out):
    """The fake-quantized model (a copy: export packs the model in place) after exporting it to ``out``."""
    model = model_class.from_pretrained(source, dtype=torch.float32).eval()
    spec = QuantSpec.from_args(args)
    report = quantize_model(model, spec, None, progress=False)
    reference = copy.deepcopy(model)
    write_packed(model, AutoProcessor.from_pretrained(source), build_plan(model, spec), report.qweights, out)
    return reference


def _blip2_inputs(source):
    return AutoProcessor.from_pretrained(source)(images=IMAGES, text=["a"] * len(IMAGES), return_tensors="pt")


def _greedy(model, inputs):
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=10, do_sample=False)


# ---- a fresh from_pretrained generates ---------------------------------------------------------

def test_single_format_blip2_export_generates_on_a_fresh_load(tmp_path):
    reference = _export(Blip2ForConditionalGeneration, BLIP2, {"method": "rtn", "bits": 4, "sym": True}, tmp_path)
    expected = _greedy(reference, _blip2_inputs(BLIP2))
    fresh = Blip2ForConditionalGeneration.from_pretrained(tmp_path).eval()  # plain transformers, nothing else
    assert torch.equal(_greedy(fresh, _blip2_inputs(tmp_path)), expected)
    full_precision = Blip2ForConditionalGeneration.from_pretrained(BLIP2).eval()
    assert not torch.equal(_greedy(full_precision, _blip2_inputs(BLIP2)), expected)  # the tokens are the 4-bit model's

    captioner = pipeline("image-text-to-text", model=str(tmp_path), dtype=torch.float32)
    text = captioner(images=IMAGES[0], text="a", max_new_tokens=10)[0]["generated_text"]
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert text == processor.decode(expected[0], skip_special_tokens=True).strip()


def test_single_format_llava_export_generates_on_a_fresh_load(tmp_path):
    args = {"method": "rtn", "bits": 4, "sym": True, "group_size": -1}  # one format: per channel everywhere
    reference = _export(LlavaForConditionalGeneration, LLAVA, args, tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    inputs = processor(images=IMAGES, text=[LLAVA_PROMPT] * len(IMAGES), return_tensors="pt")
    fresh = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(_greedy(fresh, inputs), _greedy(reference, inputs))


def test_several_formats_load_packed_and_generate_after_the_documented_call(tmp_path):
    args = {"method": "rtn", "vit_bits": 8, "llm_bits": 4, "sym": True}
    reference = _export(Blip2ForConditionalGeneration, BLIP2, args, tmp_path)
    assert "dequantize" not in json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    expected = _greedy(reference, _blip2_inputs(BLIP2))
    model = Blip2ForConditionalGeneration.from_pretrained(tmp_path).eval()
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'weight'"):
        _greedy(model, _blip2_inputs(tmp_path))  # BLIP-2's generate never runs the decompressing forward
    assert DECOMPRESS_CALL == "model.hf_quantizer.compressor.decompress_model(model)"
    model.hf_quantizer.compressor.decompress_model(model)
    assert torch.equal(_greedy(model, _blip2_inputs(tmp_path)), expected)

    ours = load_model(Blip2ForConditionalGeneration, str(tmp_path), torch.float32, torch.device("cpu"))
    assert torch.equal(_greedy(ours, _blip2_inputs(tmp_path)), expected)
    assert sorted(n for n, _ in ours.named_parameters()) == sorted(n for n, _ in reference.named_parameters())


# ---- mmq_* models evaluate an export as stored -------------------------------------------------

def _run(model: str, model_args: str, out, capsys) -> tuple[dict, list]:
    """(results JSON, per-sample responses) of a short VQA run."""
    code = main(["run", "--model", model, "--model_args", model_args, "--tasks", "mmq_shapes_vqa",
                 "--limit", "6", "--batch_size", "6", "--log_samples", "--output_path", str(out)])
    assert code == 0, capsys.readouterr().err[-3000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("*_samples_mmq_shapes_vqa.jsonl")).read_text().splitlines()]
    return results, sorted((s["doc_id"], s["filtered_resps"]) for s in samples)


@pytest.mark.parametrize("model,pretrained", [("mmq_blip2", "mmq:shapes-blip2"), ("mmq_llava", "mmq:shapes-llava"),
                                              ("mmq_qwen2_vl", "mmq:shapes-qwen2vl")])  # the last: a chat family
def test_run_on_an_export_scores_like_the_fake_quantized_run(model, pretrained, tmp_path, capsys):
    spec = "method=rtn,bits=4,sym=true,quant_cache=none"
    assert main(["export", "--model", model, "--model_args", f"pretrained={pretrained},{spec}",
                 "--out", str(tmp_path / "export"), "--no-memory", "--json", str(tmp_path / "figures.json")]) == 0
    fake, fake_samples = _run(model, f"pretrained={pretrained},{spec}", tmp_path / "fake", capsys)
    packed, packed_samples = _run(model, f"pretrained={tmp_path / 'export'}", tmp_path / "packed", capsys)
    assert packed_samples == fake_samples
    assert packed["results"]["mmq_shapes_vqa"] == fake["results"]["mmq_shapes_vqa"]
    assert packed["mmq_quant"]["bpw"] == pytest.approx(fake["mmq_quant"]["bpw"], abs=1e-12)
    assert packed["mmq_quant"]["bpw"] == pytest.approx(json.loads((tmp_path / "figures.json").read_text())["bpw"])
    assert packed["mmq_quant"]["spec"]["method"] == "rtn"  # the export's own record
    assert packed["mmq_quant"]["coverage"] == fake["mmq_quant"]["coverage"]


def test_quantization_args_on_an_export_are_refused(tmp_path):
    _export(Blip2ForConditionalGeneration, BLIP2, {"method": "rtn", "bits": 4, "sym": True}, tmp_path)
    with pytest.raises(MMQConfigError, match=r"is already quantized \(a compressed-tensors pack-quantized "
                                             r"checkpoint\).*method=gptq does not apply: drop the quantization args"):
        MMQBlip2(pretrained=str(tmp_path), method="gptq", llm_bits=4)  # before any calibration-data check
    lm = MMQBlip2(pretrained=str(tmp_path))
    with pytest.raises(MMQConfigError, match="quantizing it again does not apply"):  # what a sweep would do
        lm.apply_quant(QuantSpec.from_args({"method": "rtn", "bits": 8}))


# ---- what vLLM could not load ----------------------------------------------------------------

def _plan(model_class, source, args):
    return build_plan(model_class.from_pretrained(source), QuantSpec.from_args(args))


def test_vllm_note_names_the_blip2_qformer_and_projector():
    note = servability_note(_plan(Blip2ForConditionalGeneration, BLIP2, {"method": "rtn", "bits": 4}))
    # shapes-blip2: 3 Q-Former layers x (4 self-attention + 4 cross-attention + 2 MLP) Linears
    assert ("vllm could not load these quantized parts of Blip2ForConditionalGeneration: qformer (30 quantized "
            "Linears: vLLM's Blip2QFormerModel builds every Q-Former Linear as a plain nn.Linear); projector "
            "(1 quantized Linear: vLLM builds language_projection as a plain nn.Linear). Export with "
            "--servable vllm to keep them full precision.") == note
    llm_only = servability_note(_plan(Blip2ForConditionalGeneration, BLIP2, {"method": "rtn", "llm_bits": 4}))
    assert llm_only == ("vllm: builds every quantized part of this Blip2ForConditionalGeneration export as a "
                        "quantized layer (per its sources; not checked against an install)")


def test_vllm_note_names_llava_vision_blocks_after_the_feature_layer():
    plan = _plan(LlavaForConditionalGeneration, LLAVA, {"method": "rtn", "bits": 4})
    # vision_feature_layer=-2: the last ViT block (q, k, v, out, fc1, fc2) is not built by vLLM
    assert "vit (6 quantized Linears: vLLM builds the vision tower only up to vision_feature_layer" in servability_note(plan)
    servable = servable_plan(plan, "vllm")
    assert set(plan.targets) - set(servable.targets) == set(plan.unused_targets) and len(plan.unused_targets) == 6


def test_vllm_note_says_when_an_architecture_is_unknown():
    from transformers import Blip2ForImageTextRetrieval

    plan = _plan(Blip2ForImageTextRetrieval, resolve_pretrained("mmq:shapes-blip2-itm"), {"method": "rtn", "bits": 4})
    assert servability_note(plan) == ("vllm: whether it can load the quantized parts of Blip2ForImageTextRetrieval "
                                      "is unknown to mmq-eval (no entry in mmq_eval/export/servable.py)")


def test_servable_vllm_export_keeps_the_qformer_and_projector_full_precision(tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", "--model", "mmq_blip2", "--servable", "vllm", "--no-memory", "--out", str(out),
                 "--json", str(tmp_path / "figures.json"), "--model_args",
                 "pretrained=mmq:shapes-blip2,method=rtn,bits=4,sym=true,quant_cache=none"]) == 0
    printed = capsys.readouterr().out
    assert "--servable vllm: qformer_bits=16, projector_bits=16" in printed
    assert "vllm: builds every quantized part of this Blip2ForConditionalGeneration export" in printed
    source = Blip2ForConditionalGeneration.from_pretrained(BLIP2)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        for name in ("qformer.encoder.layer.0.crossattention.attention.key", "language_projection"):
            assert torch.equal(f.get_tensor(f"{name}.weight"), source.get_submodule(name).weight.data)  # untouched
        assert "vision_model.encoder.layers.0.mlp.fc1.weight_packed" in keys
    assert not any(k.startswith("qformer.") and k.endswith("weight_packed") for k in keys)
    expected = bits_per_weight(source, build_plan(source, QuantSpec.from_args(
        {"method": "rtn", "bits": 4, "sym": True, "qformer_bits": 16, "projector_bits": 16})).targets).bpw
    assert json.loads((tmp_path / "figures.json").read_text())["bpw"] == pytest.approx(expected)
