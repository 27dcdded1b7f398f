"""``mmq_blip2``: BLIP-2 (ViT + Q-Former + OPT/Flan-T5) with component-wise weight quantization."""

from __future__ import annotations

from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

from mmq_eval.errors import MMQConfigError
from mmq_eval.models.base import MMQModel
from mmq_eval.models.loading import architecture_of, load_model, load_processor

BLIP2_CLASSES = {
    "Blip2ForConditionalGeneration": Blip2ForConditionalGeneration,
    "Blip2ForImageTextRetrieval": Blip2ForImageTextRetrieval,
}


class MMQBlip2(MMQModel):
    """lmms-eval model ``mmq_blip2``.

    ``pretrained`` is a hub id, a local directory or ``mmq:shapes-blip2``; quantization is set
    by model args such as ``method=gptq,vit_bits=4,llm_bits=3`` (see ``mmq_eval.quant``).
    """

    default_pretrained = "Salesforce/blip2-opt-2.7b"

    def _load(self, source: str) -> None:
        architecture = architecture_of(source)
        if architecture not in BLIP2_CLASSES:
            raise MMQConfigError(
                f"pretrained={self.args.pretrained!r} is a {architecture}, not a BLIP-2 checkpoint "
                f"({', '.join(BLIP2_CLASSES)}); use mmq_llava for LLaVA checkpoints"
            )
        self._architecture = architecture
        self._processor = load_processor(source)
        self._model = load_model(
            BLIP2_CLASSES[architecture], source, self.args.torch_dtype(), self._device
        )
        # A decoder-only LLM continues on the right, so pad on the left; T5's encoder uses
        # relative positions between query tokens and text, so its padding must stay on the right.
        self._processor.tokenizer.padding_side = "left" if self._decoder_only else "right"

    def _require_language_model(self) -> None:
        if self._architecture == "Blip2ForImageTextRetrieval":
            raise MMQConfigError(
                f"pretrained={self.args.pretrained!r} is an image-text retrieval checkpoint "
                "(Blip2ForImageTextRetrieval) without a language model: it cannot caption or "
                "answer questions. Use it with retrieval tasks, or pick a captioning checkpoint "
                "such as Salesforce/blip2-opt-2.7b."
            )

    @property
    def _decoder_only(self) -> bool:
        return bool(self._model.config.use_decoder_only_language_model)

    def _format_prompt(self, context: str) -> str:
        """BLIP-2 places the image itself; lmms-eval ``<image>`` markers are dropped."""
        return context.replace("<image>", "").strip()

    def _generate_requests(self, requests):
        self._require_language_model()
        return super()._generate_requests(requests)

    def loglikelihood(self, requests):
        self._require_language_model()
        return super().loglikelihood(requests)
