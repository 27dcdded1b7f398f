"""The quantization side shared by every ``mmq_*`` lmms-eval model: calibration batches in the
family's text format, quantizing the loaded model (keeping its full-precision weights for sweeps),
and the report.

`QuantizingModel` is a mixin. Its host sets ``self.args`` (``WrapperArgs``: pretrained,
calib_data, quant_cache, report_path), ``self._processor``, ``self._family`` (registry entry),
``self._device``, ``self._fingerprint``, ``self._full_precision_state = None`` and
``self.quant_report = None``, and has ``model``, ``tokenizer`` and ``rank``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from loguru import logger

from mmq_eval.errors import MMQConfigError
from mmq_eval.models.calibration_data import load_calibration_examples
from mmq_eval.models.loading import EMBEDDED_PREFIX, architecture_of
from mmq_eval.quant import quantize_model
from mmq_eval.quant.plan import build_plan
from mmq_eval.quant.registry import FAMILIES
from mmq_eval.shapes.llava_model import CAPTION_INSTRUCTION  # LLaVA-1.5's, which the shapes models learned

#: Every quantization report produced in this process, newest last (read by ``mmq-eval run``).
QUANT_REPORTS: list[dict] = []

CALIB_BATCH_SIZE = 16
FALLBACK_CHAT = "USER: <image>\n{prompt} ASSISTANT:"


def default_cache_dir() -> Path:
    """Where quantized weights are cached unless ``quant_cache=`` says otherwise."""
    return Path(os.environ.get("MMQ_CACHE_DIR", Path.home() / ".cache" / "mmq-eval" / "quant"))


def checkpoint_fingerprint(source: str, model) -> str:
    """A short id of the exact checkpoint: config plus weight-file sizes, or the hub commit."""
    digest = hashlib.sha1(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    path = Path(source)
    if path.is_dir():
        for file in sorted(path.glob("*.safetensors")):
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    else:
        digest.update(str(getattr(model.config, "_commit_hash", "")).encode())
    return digest.hexdigest()[:12]


def served_architecture(wrapper: type, pretrained: str, source: str) -> str:
    """The checkpoint's transformers class if the registry names `wrapper` (or a base of it) for
    it; otherwise MMQConfigError naming the ``mmq_*`` model that serves it."""
    architecture = architecture_of(source)
    paths = {f"{cls.__module__}.{cls.__name__}" for cls in wrapper.__mro__}
    served = [fam.arch for fam in FAMILIES.values() if fam.wrapper in paths]
    if architecture in served:
        return architecture
    other = FAMILIES.get(architecture)
    fix = (f"use --model {other.lmms_model} for it" if other else
           f"no mmq_* model serves it (registered: {', '.join(sorted(FAMILIES))})")
    raise MMQConfigError(f"pretrained={pretrained!r} is a {architecture}, not a checkpoint this "
                         f"model serves ({', '.join(served)}); {fix}")


class QuantizingModel:
    """Calibration and quantization of an lmms-eval model's loaded model (see the module docstring)."""

    @property
    def _decoder_only(self) -> bool:
        """True when the language model is decoder-only (no decoder inputs to calibrate with)."""
        return True

    def _format_prompt(self, context: str) -> str:
        """Turn an lmms-eval context into the text the processor receives, in the family's prompt
        style: ``plain`` drops lmms-eval's ``<image>`` markers (the model places the image itself);
        ``chat`` is the user turn of the processor's chat template with one image, then the
        assistant cue (``FALLBACK_CHAT`` when the processor has no template)."""
        text = context.replace("<image>", "").strip()
        if self._family.prompt == "plain":
            return text
        if getattr(self._processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self._processor.apply_chat_template(messages, add_generation_prompt=True)
        return FALLBACK_CHAT.format(prompt=text)

    def _calibration_text(self, caption: str) -> str:
        """The text of one calibration example (image + caption) as the model reads it: the caption
        itself (``caption``), or a captioning exchange (``caption_answer``: a caption instruction in
        the prompt style, then the caption as the answer, so an LLM is calibrated on the tokens it
        reads and writes)."""
        if self._family.calibration == "caption":
            return self._format_prompt(caption)
        return f"{self._format_prompt(CAPTION_INSTRUCTION)} {caption}".rstrip()

    def _encode(self, images, texts) -> dict[str, torch.Tensor]:
        inputs = self._processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def _calib_source(self) -> str | None:
        if self.args.calib_data is not None:
            return self.args.calib_data
        if self.args.pretrained.startswith(EMBEDDED_PREFIX + "shapes"):
            return "shapes"
        return None

    def _require_calibration_data(self, spec) -> None:
        if spec.needs_calibration and self._calib_source() is None:
            raise MMQConfigError(
                f"method={spec.method} needs calibration data: pass "
                "calib_data=<folder of images | parquet/JSONL file with 'image' and 'text' columns>"
            )

    def calibration_batches(self, spec) -> list[dict[str, torch.Tensor]]:
        """Processor batches of ``spec.calib_samples`` seeded calibration examples."""
        examples = load_calibration_examples(
            self._calib_source(), spec.calib_samples, spec.calib_seed, split=spec.calib_split
        )
        batches = []
        for start in range(0, len(examples), CALIB_BATCH_SIZE):
            chunk = examples[start:start + CALIB_BATCH_SIZE]
            images = [image for image, _ in chunk]
            texts = [self._calibration_text(text) for _, text in chunk]
            batch = self._encode(images, texts)
            if not self._decoder_only:  # an encoder-decoder LLM needs decoder inputs too
                labels = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="right")
                batch["labels"] = labels.input_ids.masked_fill(labels.attention_mask == 0, -100).to(self._device)
            batches.append(batch)
        return batches

    def apply_quant(self, spec, keep_full_precision: bool = True, plan=None):
        """Quantize the loaded model with ``spec`` and return the QuantReport.

        With ``keep_full_precision`` the full-precision weights are kept (on the CPU) so that
        the next call starts again from them: sweeps evaluate many specs on one loaded model.
        ``plan``: ``build_plan(self.model, spec)`` when the caller has it.
        """
        model = self.model
        plan = plan or build_plan(model, spec)
        if self._full_precision_state is not None:
            model.load_state_dict(self._full_precision_state)
        elif keep_full_precision:
            self._full_precision_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        elif self.quant_report is not None:
            raise MMQConfigError("this model was quantized without keeping its full-precision weights")
        calib = self.calibration_batches(spec) if spec.needs_calibration else None
        cache_dir = None
        if self.args.quant_cache is not None:
            cache_dir = default_cache_dir() if self.args.quant_cache == "default" else Path(self.args.quant_cache)
        report = quantize_model(
            model, spec, calib, progress=self.rank == 0, cache_dir=cache_dir,
            model_id=f"{self.args.pretrained}@{self._fingerprint}", plan=plan,
        )
        self.quant_report = report
        record = {"pretrained": self.args.pretrained, **report.to_dict()}
        QUANT_REPORTS.append(record)
        if self.rank == 0:
            logger.info("Quantization report\n" + report.format_table())
            if self.args.report_path:
                path = Path(self.args.report_path)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2))
        return report
