"""Quantizing a disk-offloaded model: blocks are onloaded one at a time, each read once, and the
result equals quantizing the model in memory."""

from pathlib import Path

import pytest
import torch
from compressed_tensors.offload.cache.disk import DiskCache
from quant_tiny import blip2_batches, llava_batches, make_tiny_blip2, make_tiny_llava
from transformers import Blip2ForConditionalGeneration, LlavaForConditionalGeneration

from mmq_eval.quant import QuantSpec, quantize_model
from mmq_eval.quant.offload import is_offloaded, load_disk_offloaded

LLM_LAYERS = "model.language_model.layers."


@pytest.fixture
def onloads(monkeypatch):
    """The offload caches (one per module) tensors were read from, in order of reading."""
    caches = []
    original = DiskCache.onload

    def onload(self, offloaded):
        if offloaded is not None:
            caches.append(id(self))
        return original(self, offloaded)

    monkeypatch.setattr(DiskCache, "onload", onload)
    return caches


def _read_modules(model, caches: list[int]) -> list[str]:
    """The modules whose offloaded tensors `caches` read, in order."""
    owner = {id(m._parameters): name for name, m in model.named_modules() if is_offloaded(m)}
    return [owner[c] for c in caches if c in owner]


def _offloaded_copy(model, model_class, tmp_path):
    model.save_pretrained(tmp_path / "checkpoint")
    return load_disk_offloaded(model_class, tmp_path / "checkpoint", tmp_path / "offload")


def _llm_block(module: str) -> int | None:
    return int(module[len(LLM_LAYERS):].split(".")[0]) if module.startswith(LLM_LAYERS) else None


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_offloaded_llava_quantizes_block_by_block_to_the_in_memory_result(method, tmp_path, onloads):
    model, _ = make_tiny_llava(0)
    batches = llava_batches(model.config)
    offloaded = _offloaded_copy(model, LlavaForConditionalGeneration, tmp_path)
    assert is_offloaded(offloaded.get_submodule(LLM_LAYERS + "0.mlp.down_proj"))
    spec = QuantSpec.from_args({"method": method, "llm_bits": 4})

    expected = quantize_model(model, spec, batches, progress=False)
    onloads.clear()
    report = quantize_model(offloaded, spec, batches, progress=False)
    modules = [n for n in _read_modules(offloaded, onloads) if _llm_block(n) is not None]

    assert report.bpw == expected.bpw
    assert [r.output_rel_err for r in report.layers] == [r.output_rel_err for r in expected.layers]
    for name, param in model.named_parameters():
        assert torch.equal(offloaded.get_parameter(name), param), name  # read back from the offload folder
    # the whole call read the LLM's blocks once, in order, each tensor once (held while its block
    # was worked on, for all calibration samples), not once per calibration sample (8 here): nothing
    # runs the model past the stacks' first blocks before calibration reaches them
    n_blocks = model.config.text_config.num_hidden_layers
    blocks = [_llm_block(n) for n in modules]
    assert blocks == sorted(blocks)
    assert len(modules) == len(set(modules)) == 9 * n_blocks  # 7 Linears + 2 norms per block


def test_offloaded_blip2_gptq_equals_in_memory(tmp_path):
    model, processor = make_tiny_blip2(seed=0, llm="opt")
    batches = blip2_batches(processor)
    offloaded = _offloaded_copy(model, Blip2ForConditionalGeneration, tmp_path)
    spec = QuantSpec.from_args({"method": "gptq", "bits": 4})
    expected = quantize_model(model, spec, batches, progress=False)
    report = quantize_model(offloaded, spec, batches, progress=False)
    assert report.bpw == expected.bpw
    for name, param in model.named_parameters():
        assert torch.equal(offloaded.get_parameter(name), param), name


def test_a_wrapper_with_offload_folder_quantizes_the_disk_offloaded_model(tmp_path):
    from mmq_eval.models.blip2 import MMQBlip2

    args = {"pretrained": "mmq:shapes-blip2", "device": "cpu", "method": "gptq", "llm_bits": 4,
            "calib_samples": 16, "quant_cache": "none"}
    in_memory = MMQBlip2(**args)
    offloaded = MMQBlip2(**args, offload_folder=str(tmp_path / "offload"))
    assert is_offloaded(offloaded.model.get_submodule("language_model.model.decoder.layers.0.fc1"))
    assert any((tmp_path / "offload").iterdir())
    assert offloaded.quant_report.bpw == in_memory.quant_report.bpw
    assert [r.output_rel_err for r in offloaded.quant_report.layers] == \
        [r.output_rel_err for r in in_memory.quant_report.layers]
    for name, param in in_memory.model.named_parameters():
        assert torch.equal(offloaded.model.get_parameter(name), param), name
    # the codes kept for export and the cache are memory-mapped from files under the offload folder
    (folder,) = (tmp_path / "offload" / "codes").iterdir()
    maps = Path("/proc/self/maps").read_text()
    for name, q in offloaded.quant_report.qweights.items():
        path = folder / f"{name}.codes"
        assert path.stat().st_size == q.codes.numel() and str(path) in maps, name
        assert torch.equal(q.codes, in_memory.quant_report.qweights[name].codes), name
    codes = offloaded.quant_report.qweights[name].codes
    offloaded.quant_report = None  # the files go with the report; codes still held stay readable
    assert not folder.exists() and torch.equal(codes, in_memory.quant_report.qweights[name].codes)



def test_a_cache_hit_is_written_through_the_offload(tmp_path):
    from mmq_eval.models.blip2 import MMQBlip2

    args = {"pretrained": "mmq:shapes-blip2", "device": "cpu", "method": "gptq", "llm_bits": 4,
            "calib_samples": 16, "quant_cache": str(tmp_path / "cache")}
    first = MMQBlip2(**args, offload_folder=str(tmp_path / "offload-1"))
    second = MMQBlip2(**args, offload_folder=str(tmp_path / "offload-2"))
    assert not first.quant_report.cached and second.quant_report.cached
    for name, param in first.model.named_parameters():
        assert torch.equal(second.model.get_parameter(name), param), name
    (folder,) = (tmp_path / "offload-2" / "codes").iterdir()  # codes from the cache go to disk too
    maps = Path("/proc/self/maps").read_text()
    assert all(str(folder / f"{n}.codes") in maps for n in second.quant_report.qweights)
    assert all(torch.equal(q.codes, first.quant_report.qweights[n].codes)
               for n, q in second.quant_report.qweights.items())
