"""``mmq_llava``: LLaVA-1.5 (CLIP ViT + MLP projector + Llama) with component-wise quantization."""

from __future__ import annotations

from transformers import LlavaForConditionalGeneration

from mmq_eval.errors import MMQConfigError
from mmq_eval.models.base import MMQModel
from mmq_eval.models.loading import architecture_of, load_model, load_processor
from mmq_eval.shapes.llava_model import CAPTION_INSTRUCTION  # LLaVA-1.5's, which the shapes model learned

FALLBACK_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


class MMQLlava(MMQModel):
    """lmms-eval model ``mmq_llava``.

    ``pretrained`` is a hub id (default ``llava-hf/llava-1.5-7b-hf``), a local directory or
    ``mmq:shapes-llava``; quantization args as for ``mmq_blip2`` with components ``vit``,
    ``projector`` and ``llm``.
    """

    default_pretrained = "llava-hf/llava-1.5-7b-hf"

    def _load(self, source: str) -> None:
        architecture = architecture_of(source)
        if architecture != "LlavaForConditionalGeneration":
            raise MMQConfigError(
                f"pretrained={self.args.pretrained!r} is a {architecture}, not a LLaVA checkpoint "
                "(LlavaForConditionalGeneration); use mmq_blip2 for BLIP-2 checkpoints"
            )
        self._processor = load_processor(source)
        self._processor.tokenizer.padding_side = "left"
        self._model = load_model(LlavaForConditionalGeneration, source, self.args.torch_dtype(), self._device)

    @property
    def _decoder_only(self) -> bool:
        return True

    def _calibration_text(self, caption: str) -> str:
        """A captioning exchange: LLaVA-1.5's caption instruction in the chat template, then the
        caption as the answer (so the LLM is calibrated on the tokens it reads and writes)."""
        return f"{self._format_prompt(CAPTION_INSTRUCTION)} {caption}".rstrip()

    def _format_prompt(self, context: str) -> str:
        """The user turn of the model's chat template with one image, then the assistant cue."""
        text = context.replace("<image>", "").strip()
        if getattr(self._processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self._processor.apply_chat_template(messages, add_generation_prompt=True)
        return FALLBACK_TEMPLATE.format(prompt=text)
