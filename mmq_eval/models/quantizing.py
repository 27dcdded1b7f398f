"""The quantization side shared by every ``mmq_*`` lmms-eval model: calibration batches in the
family's text format, quantizing the loaded model (keeping its full-precision weights for sweeps),
and the report.

`QuantizingModel` is a mixin. Its host sets ``self.args`` (``WrapperArgs``: pretrained,
calib_data, quant_cache, report_path), ``self._processor``, ``self._device`` and
``self._packed_folder`` (``_packed_checkpoint``: a checkpoint that is already quantized, an
``mmq-eval export``, is evaluated as stored), has ``model``, ``tokenizer`` and ``rank``, and
calls ``_quantize_loaded`` once the model is loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from loguru import logger

from mmq_eval.errors import MMQConfigError
from mmq_eval.models.calibration_data import check_calib_data, load_calibration_examples, resolve_calib_data
from mmq_eval.models.loading import architecture_of, local_checkpoint
from mmq_eval.quant import quantize_model
from mmq_eval.quant.awq import foldable_parameters
from mmq_eval.quant.engine import CalibrationBatches
from mmq_eval.quant.fingerprint import DigestMemo, checkpoint_digest
from mmq_eval.quant.offload import write_parameter
from mmq_eval.quant.plan import build_plan
from mmq_eval.quant.registry import FAMILIES, family
from mmq_eval.shapes.llava_model import CAPTION_INSTRUCTION  # LLaVA-1.5's, which the shapes models learned
from mmq_eval.tasks.prompts import uninstructed_prompt

#: Every quantization report produced in this process, newest last (read by ``mmq-eval run``).
QUANT_REPORTS: list[dict] = []

CALIB_BATCH_SIZE = 16
FALLBACK_CHAT = "USER: <image>\n{prompt} ASSISTANT:"


def default_cache_dir() -> Path:
    """Where quantized weights are cached unless ``quant_cache=`` says otherwise."""
    return Path(os.environ.get("MMQ_CACHE_DIR", Path.home() / ".cache" / "mmq-eval" / "quant"))


def checkpoint_fingerprint(source: str, model, memo_path: Path) -> str:
    """Exact id of the checkpoint `source` as loaded into `model`: its config and the content of
    every weight file (``fingerprint.checkpoint_digest``); file digests memoised in `memo_path`."""
    return checkpoint_digest(source, model.config.to_dict(), DigestMemo(memo_path))


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


def changeable_parameters(model, plan) -> list[str]:
    """Parameters that quantizing `model` under `plan` may change: targeted weights, and for AWQ
    the parameters its scales may fold into."""
    names = [f"{n}.weight" for n in plan.targets]
    return names + (foldable_parameters(model, plan) if plan.spec.method == "awq" else [])


class QuantizingModel:
    """Calibration and quantization of an lmms-eval model's loaded model (see the module docstring)."""

    @property
    def _decoder_only(self) -> bool:
        """True when the language model is decoder-only (no decoder inputs to calibrate with)."""
        return True

    def _format_prompt(self, context: str) -> str:
        """Turn an lmms-eval context into the text the processor receives, in the family's prompt
        style: ``plain`` drops lmms-eval's ``<image>`` markers (the model places the image itself)
        and, with ``prompt_style=auto``, puts lmms-eval's stock instructions, which a model that is
        not instruction-tuned does not follow, in its own format (``uninstructed_prompt``, logged
        once per instruction); ``chat`` is the user turn of the processor's chat template with one
        image, then the assistant cue (``FALLBACK_CHAT`` when the processor has no template)."""
        text = context.replace("<image>", "").strip()
        if self._family.prompt == "plain":
            if self.args.prompt_style == "raw":
                return text
            prompt, replaced = uninstructed_prompt(text)
            logged = self.__dict__.setdefault("_logged_instructions", set())
            if replaced is not None and replaced not in logged:
                logged.add(replaced)
                logger.info(f"{self._family.lmms_model} (prompt_style=auto): the stock instruction {replaced!r} "
                            f"is not followed by this model; it reads {prompt!r} instead of {text!r} "
                            "(prompt_style=raw keeps the task's text)")
            return prompt
        if getattr(self._processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self._processor.apply_chat_template(messages, add_generation_prompt=True)
        return FALLBACK_CHAT.format(prompt=text)

    def _quantize_loaded(self, source: str, spec) -> None:
        """Once the host has loaded ``model`` from ``source``: its family entry, the state this side
        keeps, the report of a packed checkpoint, then ``spec`` applied (nothing kept for sweeps,
        which call ``apply_quant`` themselves)."""
        self._family = family(type(self.model).__name__)
        self._checkpoint_source, self._fingerprint = source, None  # hashed when a cache needs it
        self._full_precision_state: dict[str, torch.Tensor] | None = None
        self.quant_report = None
        if self._packed_folder is not None:
            self._report_packed()
        plan = build_plan(self.model, spec)
        if not spec.is_noop:
            self.apply_quant(spec, keep_full_precision=False, plan=plan)

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

    def _calib_source(self, spec) -> str:
        """``calib_data`` resolved (``auto``: see ``calibration_data``); MMQConfigError when none."""
        return resolve_calib_data(self.args.calib_data, self.args.pretrained, f"method={spec.method}")

    def _require_calibration_data(self, spec) -> None:
        """Fail before loading the model when ``spec`` needs calibration data and none is found, or
        ``calib_data`` names a path that cannot give any (``check_calib_data``)."""
        if spec.needs_calibration:
            check_calib_data(self._calib_source(spec))

    def calibration_batches(self, spec) -> CalibrationBatches:
        """Processor batches of ``spec.calib_samples`` seeded calibration examples, with their
        source, count and ids hash (for the report)."""
        examples = load_calibration_examples(
            self._calib_source(spec), spec.calib_samples, spec.calib_seed, split=spec.calib_split
        )
        batches = CalibrationBatches([], examples.info())
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

    def _model_id(self, cache_dir: Path) -> str:
        """``pretrained@<checkpoint fingerprint>``, the id the cache keys hold; the checkpoint is
        hashed the first time a cache needs it (file digests memoised in
        ``<cache_dir>/fingerprints.json``, so a sweep or a rerun hashes each file once)."""
        if self._fingerprint is None:
            self._fingerprint = checkpoint_fingerprint(self._checkpoint_source, self.model,
                                                       cache_dir / "fingerprints.json")
        return f"{self.args.pretrained}@{self._fingerprint}"

    def apply_quant(self, spec, keep_full_precision: bool = True, plan=None):
        """Quantize the loaded model with ``spec`` and return the QuantReport.

        With ``keep_full_precision`` the full-precision values of the parameters this spec may
        change (targeted weights; for AWQ also the norms and Linears its scales fold into) are
        kept on the CPU, so that the next call starts again from them: sweeps evaluate many specs
        on one loaded model. Once kept, each later call adds what it may change, so a parameter
        outside the kept set has never been changed. ``plan``: ``build_plan(self.model, spec)``
        when the caller has it.
        """
        if getattr(self, "_packed_folder", None) is not None:
            raise MMQConfigError(_packed_refusal(self.args.pretrained, "quantizing it again"))
        model = self.model
        plan = plan or build_plan(model, spec)
        kept = self._full_precision_state
        if kept is not None:
            for name, value in kept.items():
                owner, _, pname = name.rpartition(".")
                write_parameter(model.get_submodule(owner), pname, value)
        elif self.quant_report is not None and not keep_full_precision:
            raise MMQConfigError("this model was quantized without keeping its full-precision weights")
        if kept is not None or keep_full_precision:
            kept = {} if kept is None else kept
            for name in changeable_parameters(model, plan):
                if name not in kept:
                    kept[name] = model.get_parameter(name).detach().to("cpu", copy=True)
            self._full_precision_state = kept
        calib = self.calibration_batches(spec) if spec.needs_calibration else None
        cache_dir = None
        if self.args.quant_cache is not None:
            cache_dir = default_cache_dir() if self.args.quant_cache == "default" else Path(self.args.quant_cache)
        offload = self.args.offload_folder
        report = quantize_model(
            model, spec, calib, progress=self.rank == 0, cache_dir=cache_dir,
            model_id=self._model_id(cache_dir) if cache_dir else self.args.pretrained, plan=plan,
            codes_dir=None if offload is None else Path(offload) / "codes",  # a model larger than memory
        )
        self._publish(report)
        return report

    def _publish(self, report) -> None:
        """Keep ``report`` as the model's, record it for ``mmq-eval run``, log it, write ``report_path``."""
        self.quant_report = report
        record = {"pretrained": self.args.pretrained, **report.to_dict()}
        QUANT_REPORTS.append(record)
        if self.rank == 0:
            logger.info("Quantization report\n" + report.format_table())
            if self.args.report_path:
                path = Path(self.args.report_path)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=2))

    def _packed_checkpoint(self, source: str, spec) -> Path | None:
        """The local folder of ``source`` when it is already quantized (an ``mmq-eval export``):
        it is evaluated as stored, so a spec that quantizes is refused."""
        from mmq_eval.models.packed_checkpoint import quantization_config

        folder = local_checkpoint(source)
        if folder is None or quantization_config(folder) is None:
            return None
        if not spec.is_noop:
            raise MMQConfigError(_packed_refusal(self.args.pretrained, f"method={spec.method}"))
        return folder

    def _report_packed(self) -> None:
        """Publish the report of the loaded packed checkpoint: its formats and bits per weight as stored."""
        from mmq_eval.models.packed_checkpoint import packed_report

        self._publish(packed_report(self.model, self._packed_folder, self.args.pretrained))


def _packed_refusal(pretrained: str, what: str) -> str:
    return (f"pretrained={pretrained!r} is already quantized (a compressed-tensors pack-quantized checkpoint) and "
            f"is evaluated as stored, so {what} does not apply: drop the quantization args (method, bits, "
            "*_bits, ...), or pass the full-precision checkpoint to quantize it")
