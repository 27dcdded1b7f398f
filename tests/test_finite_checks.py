"""NaN/Inf never passes through a quantizer silently: the error names the layer (and method)."""

import copy
import os
import shutil
import subprocess
import sys

import pytest
import torch
from quant_tiny import blip2_batches, make_tiny_blip2
from safetensors.torch import load_file, save_file

from mmq_eval.errors import MMQConfigError, MMQDataError
from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant.calibration import InputStats
from mmq_eval.quant.finite import NonFiniteResult
from mmq_eval.quant.gptq import inverse_hessian_factor

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FC1 = "language_model.model.decoder.layers.1.fc1"
LLM0_Q = "language_model.model.decoder.layers.0.self_attn.q_proj"
METHODS = ["uniform", "rtn", "gptq", "awq"]


@pytest.fixture(scope="module")
def tiny_opt():
    model, processor = make_tiny_blip2(0, "opt")
    return model, blip2_batches(processor, "opt")


def _poisoned(tiny_opt, param: str, value: float, index=(3, 5)):
    model = copy.deepcopy(tiny_opt[0])
    with torch.no_grad():
        model.get_parameter(param)[index] = value
    return model


@pytest.mark.parametrize("value,label", [(float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf")])
@pytest.mark.parametrize("method", METHODS)
def test_a_non_finite_weight_is_refused_naming_the_linear(tiny_opt, method, value, label):
    model = _poisoned(tiny_opt, f"{FC1}.weight", value)
    with pytest.raises(MMQDataError) as err:
        quantize_model(model, QuantSpec.from_args({"method": method, "llm_bits": 4}), tiny_opt[1], progress=False)
    assert str(err.value) == (f"{FC1}.weight holds 1 NaN/Inf values; the checkpoint is corrupt — "
                              "re-download or re-export it")


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_non_finite_weight_upstream_names_the_first_linear_whose_input_it_reaches(tiny_opt, method):
    # an untargeted Linear of the ViT holds a NaN: every LLM input is NaN from there on
    model = _poisoned(tiny_opt, "vision_model.encoder.layers.2.mlp.fc2.weight", float("nan"))
    with pytest.raises(MMQDataError) as err:
        quantize_model(model, QuantSpec.from_args({"method": method, "llm_bits": 4}), tiny_opt[1], progress=False)
    message = str(err.value)
    assert message.startswith(f"the calibration inputs of {LLM0_Q} hold ")
    assert "NaN/Inf values although the model runs in float32: check the calibration data" in message


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_nan_calibration_input_is_named(tiny_opt, method):
    batches = [dict(b) for b in tiny_opt[1]]
    batches[1]["pixel_values"] = batches[1]["pixel_values"].clone()
    batches[1]["pixel_values"][0, 0, 0, 0] = float("nan")
    model = copy.deepcopy(tiny_opt[0])
    with pytest.raises(MMQDataError, match=r"^the calibration inputs of vision_model\.encoder\.layers\.0\."
                                           r"self_attn\.qkv hold \d+ NaN/Inf values although the model runs in "
                                           r"float32"):
        quantize_model(model, QuantSpec.from_args({"method": method, "vit_bits": 4}), batches, progress=False)


@pytest.mark.parametrize("dtype,name", [(torch.float16, "float16"), (torch.bfloat16, "bfloat16")])
def test_half_precision_overflow_suggests_float32(dtype, name):
    layer = torch.nn.Linear(4, 2).to(dtype)
    seen = []
    hooks = InputStats({"proj": layer}, lambda n, x: seen.append(n))
    x = torch.ones(3, 4, dtype=dtype)
    layer(x)
    x[1, 2] = float("inf")
    x[2, 0] = float("nan")
    with pytest.raises(MMQConfigError) as err:
        layer(x)
    hooks.remove()
    assert seen == ["proj"]  # the finite call went through, the bad one never reached the statistics
    assert str(err.value) == (f"the calibration inputs of proj hold 2 NaN/Inf values (the model runs in {name}, "
                              "which overflows here): quantize with dtype=float32")


@pytest.mark.parametrize("method", ["uniform", "rtn"])
def test_a_quantizer_overflowing_on_a_finite_weight_is_a_failed_run(tiny_opt, method):
    # ±3e38 are finite float32, but max - min overflows: the grid is inf and the result NaN
    model = _poisoned(tiny_opt, f"{FC1}.weight", 3e38, (0, 0))
    with torch.no_grad():
        model.get_parameter(f"{FC1}.weight")[0, 1] = -3e38
    with pytest.raises(NonFiniteResult) as err:
        quantize_model(model, QuantSpec.from_args({"method": method, "llm_bits": 4}), progress=False)
    assert str(err.value).startswith(f"{method} quantization of {FC1} produced NaN/Inf (")
    assert "dequantized weight" in str(err.value)
    assert isinstance(err.value, RuntimeError) and not isinstance(err.value, (MMQDataError, MMQConfigError))


def test_a_non_finite_hessian_is_blamed_on_its_own_layer():
    H = torch.eye(4)
    H[2, 2] = float("inf")
    with pytest.raises(NonFiniteResult, match=r"^GPTQ llm\.fc1: the Hessian of its calibration inputs holds NaN/Inf"):
        inverse_hessian_factor(H, 0.01, "llm.fc1")


def test_mmq_eval_run_with_a_corrupt_checkpoint_exits_2_naming_the_weight(tiny_blip2_dir, tmp_path):
    ckpt = tmp_path / "corrupt"
    shutil.copytree(tiny_blip2_dir, ckpt)
    weights = load_file(ckpt / "model.safetensors")
    weights[f"{FC1}.weight"][1, :3] = float("nan")
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    proc = subprocess.run(
        [sys.executable, "-m", "mmq_eval.cli", "run", "--model", "mmq_blip2", "--model_args",
         f"pretrained={ckpt},method=rtn,llm_bits=4,quant_cache=none", "--tasks", "mmq_shapes_vqa",
         "--limit", "1", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (f"mmq-eval: error: {FC1}.weight holds 3 NaN/Inf values; the checkpoint is corrupt — "
            "re-download or re-export it") in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
