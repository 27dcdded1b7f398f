"""The chat VLMs through lmms-eval's own model classes: at 16 bits exactly lmms-eval's outputs,
quantized as asked, calibrated on chat-template exchanges through the real processor."""

import json

import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.models import get_model
from lmms_requests import make_docs, make_image
from tiny_vlms import make_tiny_vlm

import mmq_eval.models.chat  # noqa: F401 - lets lmms-eval's Qwen classes import qwen_vl_utils without torchvision
from mmq_eval.errors import MMQConfigError
from mmq_eval.quant import QuantSpec
from mmq_eval.quant.arch import resolve_arch
from mmq_eval.shapes.llava_model import CAPTION_INSTRUCTION

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# family -> (lmms-eval's model, ours, request style, batch sizes lmms-eval's class accepts)
CASES = {
    "Qwen2VLForConditionalGeneration": ("qwen2_vl", "mmq_qwen2_vl", "simple", (1, 4)),
    "Qwen2_5_VLForConditionalGeneration": ("qwen2_5_vl", "mmq_qwen2_5_vl", "chat", (1, 4)),
    "Qwen3VLForConditionalGeneration": ("qwen3_vl", "mmq_qwen3_vl", "chat", (1, 4)),
    "LlavaOnevisionForConditionalGeneration": ("llava_hf", "mmq_llava_hf", "chat", (1,)),
    "LlavaNextForConditionalGeneration": ("llava_hf", "mmq_llava_hf", "chat", (1,)),
    "InternVLForConditionalGeneration": ("internvl_hf", "mmq_internvl_hf", "chat", (1,)),
}
DOCS = make_docs(4)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A saved tiny random checkpoint (model + processor) per family."""
    dirs = {}
    for arch in CASES:
        model, processor = make_tiny_vlm(arch)
        path = tmp_path_factory.mktemp(arch)
        model.save_pretrained(path)
        processor.save_pretrained(path)
        dirs[arch] = path
    return dirs


def _messages(doc):
    return [{"role": "user", "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["question"]}]}]


def _requests(style: str) -> list[Instance]:
    gen = {"max_new_tokens": 5, "until": []}
    second = _messages if style == "chat" else dict(gen)
    third = dict(gen) if style == "chat" else (lambda doc: [doc["image"]])
    return [Instance("generate_until", (doc["question"], second, third, i, "t", "test"), idx=0,
                     metadata={"task": "t", "doc_id": i, "repeats": 1}) for i, doc in enumerate(DOCS)]


def _answers(lm, style: str) -> list[str]:
    lm.task_dict = {"t": {"test": DOCS}}
    return [getattr(r, "text", r) for r in lm.generate_until(_requests(style))]


@pytest.mark.parametrize("arch", CASES)
def test_at_16_bits_outputs_equal_lmms_evals_own_model(arch, checkpoints):
    theirs, ours, style, batch_sizes = CASES[arch]
    for batch_size in batch_sizes:
        args = {"pretrained": str(checkpoints[arch]), "batch_size": batch_size, "device": "cpu", "device_map": "cpu"}
        theirs_lm = get_model(theirs)(**args)
        reference = _answers(theirs_lm, style)
        lm = get_model(ours)(**args)
        assert isinstance(lm, type(theirs_lm))  # lmms-eval's own class, extended
        assert _answers(lm, style) == reference, (arch, batch_size)
        assert lm.quant_report is None


@pytest.mark.parametrize("arch", CASES)
def test_a_quantized_vit_changes_only_the_vit(arch, checkpoints):
    _, ours, style, _ = CASES[arch]
    path = str(checkpoints[arch])
    full = get_model(ours)(pretrained=path)
    quantized = get_model(ours)(pretrained=path, method="rtn", vit_bits=2, quant_cache="none")
    vit = {li.name for li in resolve_arch(quantized.model).linears if li.component == "vit"}
    assert {r.name for r in quantized.quant_report.layers} == vit and quantized.quant_report.bpw < 16
    reference = dict(full.model.named_parameters())
    changed = {n[: -len(".weight")] for n, p in quantized.model.named_parameters() if not torch.equal(p, reference[n])}
    assert changed == vit
    assert len(_answers(quantized, style)) == len(DOCS)


@pytest.fixture(scope="module")
def calib_jsonl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    rows = []
    for i in range(8):
        make_image(i).save(folder / f"{i}.png")
        rows.append({"image": str(folder / f"{i}.png"), "text": f"a {['red', 'green', 'blue'][i % 3]} square"})
    path = folder / "calib.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("arch", ["Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration",
                                  "LlavaOnevisionForConditionalGeneration"])
def test_gptq_calibrates_on_chat_exchanges_through_the_real_processor(arch, checkpoints, calib_jsonl):
    _, ours, _, _ = CASES[arch]
    lm = get_model(ours)(pretrained=str(checkpoints[arch]), method="gptq", bits=4, calib_data=str(calib_jsonl),
                         calib_samples=8, quant_cache="none")
    report = lm.quant_report
    assert {k: report.calibration[k] for k in ("batches", "samples", "source")} == \
        {"batches": 1, "samples": 8, "source": str(calib_jsonl)}
    assert {r.component for r in report.layers} == {"vit", "projector", "llm"}
    assert all(r.output_rel_err is not None and r.output_rel_err < 0.5 for r in report.layers)
    batch = lm.calibration_batches(QuantSpec.from_args({"method": "gptq", "bits": 4, "calib_samples": 2}))[0]
    # the chat template's user turn (image + caption instruction), then the caption as the answer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_INSTRUCTION}]}]
    prompt = lm._processor.apply_chat_template(messages, add_generation_prompt=True)
    assert lm._calibration_text("a red square") == f"{prompt} a red square"
    text = lm._processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert text.rstrip().endswith(("assistant : a red square", "assistant : a green square"))
    assert "pixel_values" in batch  # the image went through the processor (resized to its pixel bounds)


def test_bad_model_args_are_named(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("MMQ_DATA_DIR", str(tmp_path))  # no prepared calibration set
    path = str(checkpoints["Qwen2_5_VLForConditionalGeneration"])
    with pytest.raises(MMQConfigError, match=r"unknown model arg 'vit_bit'.*Did you mean vit_bits"):
        get_model("mmq_qwen2_5_vl")(pretrained=path, vit_bit=4)
    with pytest.raises(MMQConfigError, match=r"is a Qwen2_5_VLForConditionalGeneration, not a checkpoint this model "
                                             r"serves \(Qwen3VLForConditionalGeneration\); use --model mmq_qwen2_5_vl"):
        get_model("mmq_qwen3_vl")(pretrained=path)
    with pytest.raises(MMQConfigError, match=r"method=gptq needs calibration data"):
        get_model("mmq_qwen2_5_vl")(pretrained=path, method="gptq", bits=4)


def test_sweeps_accept_the_chat_models_with_their_components():
    from mmq_eval.sweep.spec import build_sweep

    sweep = build_sweep({"model": {"name": "mmq_qwen2_5_vl", "pretrained": "Qwen/Qwen2.5-VL-3B-Instruct"},
                         "tasks": ["mmq_shapes_vqa"], "grid": {"method": ["rtn"], "vit_bits": [2, 16]}})
    assert [c.features["vit_bits"] for c in sweep.configs] == [2, 16]
    assert all("qformer_bits" not in c.features and "llm_bits" in c.features for c in sweep.configs)
