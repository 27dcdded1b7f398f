"""``mmq_llava``: LLaVA-1.5 (CLIP ViT + MLP projector + Llama) with component-wise quantization."""

from __future__ import annotations

from transformers import LlavaForConditionalGeneration

from mmq_eval.models.base import MMQModel
from mmq_eval.models.loading import load_model, load_processor


class MMQLlava(MMQModel):
    """lmms-eval model ``mmq_llava``.

    ``pretrained`` is a hub id (default ``llava-hf/llava-1.5-7b-hf``), a local directory or
    ``mmq:shapes-llava``; quantization args as for ``mmq_blip2`` with components ``vit``,
    ``projector`` and ``llm``.
    """

    default_pretrained = "llava-hf/llava-1.5-7b-hf"

    def _load(self, source: str) -> None:
        self._served_architecture(source)
        self._processor = load_processor(source)
        self._processor.tokenizer.padding_side = "left"
        self._model = load_model(LlavaForConditionalGeneration, source, self.args.torch_dtype(), self._device,
                                 self.args.offload_folder)

    @property
    def _decoder_only(self) -> bool:
        return True
