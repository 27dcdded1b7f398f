"""The VLMs users run today, through lmms-eval's own model classes, quantized component-wise.

Each model here *is* an lmms-eval model class (its chat template, image handling, batching and
generation), with one step added after it loads: the loaded model is quantized as the
quantization args say. With no quantization args (or every ``*_bits=16``) it computes exactly
what lmms-eval's class computes.

| model | lmms-eval class | families |
| --- | --- | --- |
| ``mmq_qwen2_vl`` | ``qwen2_vl`` (simple) | Qwen2-VL |
| ``mmq_qwen2_5_vl`` | ``qwen2_5_vl`` (chat) | Qwen2.5-VL |
| ``mmq_qwen3_vl`` | ``qwen3_vl`` (chat) | Qwen3-VL |
| ``mmq_llava_hf`` | ``llava_hf`` (chat) | LLaVA-OneVision, LLaVA-NeXT |
| ``mmq_internvl_hf`` | ``internvl_hf`` (chat) | InternVL (-hf checkpoints) |

lmms-eval's generic ``huggingface`` chat model is not among them: in 0.7.3 it loads
``AutoModel`` (no ``generate``) for these configs and passes ``audios=`` to the processor, which
transformers 5 refuses, so it cannot run any of them.

Besides the lmms-eval class's own model args they take the quantization args (``method``,
``bits``, ``vit_bits``, ...) and ``calib_data``, ``quant_cache``, ``report_path``, ``prompt_style``
(validated; these instruction-tuned families read every task's text as it is). On a machine
without CUDA, ``device`` and ``device_map`` default to ``cpu`` (lmms-eval's classes default to
CUDA).
"""

from __future__ import annotations

import inspect

import torch

from mmq_eval.models.image_only import allow_processors_without_torchvision, import_qwen_vl_utils

import_qwen_vl_utils()  # before lmms-eval's Qwen classes look for process_vision_info

from lmms_eval.models.chat.internvl_hf import InternVLHf  # noqa: E402
from lmms_eval.models.chat.llava_hf import LlavaHf  # noqa: E402
from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL  # noqa: E402
from lmms_eval.models.chat.qwen3_vl import Qwen3_VL  # noqa: E402
from lmms_eval.models.simple.qwen2_vl import Qwen2_VL  # noqa: E402

from mmq_eval.models.args import parse_wrapper_args, unknown_key_error  # noqa: E402
from mmq_eval.models.loading import dense_after_load, resolve_pretrained  # noqa: E402
from mmq_eval.models.quantizing import QuantizingModel, served_architecture  # noqa: E402
from mmq_eval.quant import QUANT_ARG_KEYS, QuantSpec  # noqa: E402

#: Model args of ours that the lmms-eval classes do not take.
OWN_KEYS = ("calib_data", "quant_cache", "report_path", "prompt_style")


class QuantizedLmmsModel(QuantizingModel):
    """Mixin placed before an lmms-eval model class: takes our args out, lets the lmms-eval class
    load the checkpoint, then quantizes what it loaded."""

    def __init__(self, **kwargs) -> None:
        allow_processors_without_torchvision()
        lmms_class = self._lmms_class()
        params = inspect.signature(lmms_class.__init__).parameters
        accepted = {n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
        for key in kwargs:
            if key not in accepted | QUANT_ARG_KEYS | set(OWN_KEYS):
                raise unknown_key_error(key, accepted | QUANT_ARG_KEYS | set(OWN_KEYS))
        spec = QuantSpec.from_args({k: kwargs.pop(k) for k in list(kwargs) if k in QUANT_ARG_KEYS})
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in OWN_KEYS}
        pretrained = kwargs.get("pretrained") or params["pretrained"].default
        self.args = parse_wrapper_args({"pretrained": pretrained, **own}, pretrained)
        source = resolve_pretrained(pretrained)
        self._packed_folder = self._packed_checkpoint(source, spec)  # an export: evaluated as stored
        self._require_calibration_data(spec)
        served_architecture(type(self), pretrained, source)
        kwargs["pretrained"] = source
        if not torch.cuda.is_available():
            for key in ("device", "device_map"):
                if key in accepted:
                    kwargs.setdefault(key, "cpu")
        super().__init__(**kwargs)
        dense_after_load(self.model)
        self._processor = self._loaded_processor()
        self._quantize_loaded(source, spec)

    def _loaded_processor(self):
        """The processor the lmms-eval class loaded (``processor``; ``_image_processor`` in llava_hf)."""
        from transformers import ProcessorMixin

        for name in ("processor", "_image_processor", "_processor"):
            if isinstance(getattr(self, name, None), ProcessorMixin):
                return getattr(self, name)
        raise TypeError(f"{self._lmms_class().__name__}: no processor attribute found")

    @classmethod
    def _lmms_class(cls) -> type:
        """The lmms-eval class this model extends (the first base after the mixins)."""
        return next(c for c in cls.__mro__ if c.__module__.startswith("lmms_eval."))

    def clean(self) -> None:
        """Keep the model between evaluations (sweeps evaluate one loaded model many times)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class MMQQwen2VL(QuantizedLmmsModel, Qwen2_VL):
    """``mmq_qwen2_vl``: lmms-eval's ``qwen2_vl`` with the loaded Qwen2-VL quantized."""


class MMQQwen2_5VL(QuantizedLmmsModel, Qwen2_5_VL):
    """``mmq_qwen2_5_vl``: lmms-eval's ``qwen2_5_vl`` chat model with the loaded Qwen2.5-VL quantized."""


class MMQQwen3VL(QuantizedLmmsModel, Qwen3_VL):
    """``mmq_qwen3_vl``: lmms-eval's ``qwen3_vl`` chat model with the loaded Qwen3-VL quantized."""


class MMQLlavaHf(QuantizedLmmsModel, LlavaHf):
    """``mmq_llava_hf``: lmms-eval's ``llava_hf`` chat model (LLaVA, LLaVA-NeXT, LLaVA-OneVision in
    their transformers classes) with the loaded model quantized."""


class MMQInternVLHf(QuantizedLmmsModel, InternVLHf):
    """``mmq_internvl_hf``: lmms-eval's ``internvl_hf`` chat model (the -hf InternVL checkpoints) with
    the loaded model quantized."""
