"""``mmq_blip2``: BLIP-2 (ViT + Q-Former + OPT/Flan-T5) with component-wise weight quantization."""

from __future__ import annotations

from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

from mmq_eval.errors import MMQConfigError
from mmq_eval.models.base import MMQModel
from mmq_eval.models.loading import load_model, load_processor

BLIP2_CLASSES = {
    "Blip2ForConditionalGeneration": Blip2ForConditionalGeneration,
    "Blip2ForImageTextRetrieval": Blip2ForImageTextRetrieval,
}


class MMQBlip2(MMQModel):
    """lmms-eval model ``mmq_blip2``.

    ``pretrained`` is a hub id, a local directory or ``mmq:shapes-blip2``; the checkpoint's
    architecture picks the class: ``Blip2ForConditionalGeneration`` (captioning, VQA) or
    ``Blip2ForImageTextRetrieval`` (the ``mmq_*_retrieval`` tasks). Quantization is set by model
    args such as ``method=gptq,vit_bits=4,llm_bits=3`` (see ``mmq_eval.quant``).
    """

    default_pretrained = "Salesforce/blip2-opt-2.7b"

    def _load(self, source: str) -> None:
        architecture = self._served_architecture(source)
        self._architecture = architecture
        self._processor = load_processor(source)
        self._model = load_model(
            BLIP2_CLASSES[architecture], source, self.args.torch_dtype(), self._device, self.args.offload_folder
        )
        self._processor.tokenizer.padding_side = self._padding_side

    @property
    def _padding_side(self) -> str:
        """Where the tokenizer pads. A decoder-only LLM continues on the right, so on the left;
        T5's encoder uses relative positions between query tokens and text, and the retrieval
        Q-Former's BERT-style text encoder reads the first token as [CLS] at absolute positions
        (and LAVIS pads it on the right), so on the right for both."""
        if self._architecture == "Blip2ForImageTextRetrieval" or not self._decoder_only:
            return "right"
        return "left"

    def _require_language_model(self, requests) -> None:
        if requests and self._architecture == "Blip2ForImageTextRetrieval":
            tasks = ", ".join(sorted({req.args[4] for req in requests}))
            raise MMQConfigError(
                f"task(s) {tasks} need a language model, but pretrained={self.args.pretrained!r} is an "
                "image-text retrieval checkpoint (Blip2ForImageTextRetrieval) without one: it cannot "
                "caption or answer questions. Use it with the mmq_*_retrieval tasks, or pick a "
                "captioning checkpoint such as Salesforce/blip2-opt-2.7b."
            )

    @property
    def _decoder_only(self) -> bool:
        return bool(self._model.config.use_decoder_only_language_model)

    def _generate_requests(self, requests):
        self._require_language_model(requests)
        return super()._generate_requests(requests)

    def loglikelihood(self, requests):
        self._require_language_model(requests)
        return super().loglikelihood(requests)
