"""Shared lmms-eval plumbing of the ``mmq_*`` models: arg checks, quantization, batching."""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from loguru import logger
from tqdm import tqdm

from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from mmq_eval.errors import MMQConfigError
from mmq_eval.models.args import WRAPPER_KEYS, parse_wrapper_args, unknown_key_error
from mmq_eval.models.calibration_data import load_calibration_examples
from mmq_eval.models.loading import EMBEDDED_PREFIX, architecture_of, resolve_pretrained
from mmq_eval.quant import QUANT_ARG_KEYS, QuantSpec, quantize_model
from mmq_eval.quant.plan import build_plan
from mmq_eval.quant.registry import FAMILIES, family
from mmq_eval.shapes.llava_model import CAPTION_INSTRUCTION  # LLaVA-1.5's, which the shapes models learned

#: Every quantization report produced in this process, newest last (read by ``mmq-eval run``).
QUANT_REPORTS: list[dict] = []

CALIB_BATCH_SIZE = 16
DEFAULT_MAX_NEW_TOKENS = 32
FALLBACK_CHAT = "USER: <image>\n{prompt} ASSISTANT:"


def default_cache_dir() -> Path:
    """Where quantized weights are cached unless ``quant_cache=`` says otherwise."""
    import os

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


class MMQModel(lmms):
    """Base of the quantizable lmms-eval models; subclasses load a family and format prompts."""

    default_pretrained: str = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        for key in kwargs:
            if key not in WRAPPER_KEYS and key not in QUANT_ARG_KEYS:
                raise unknown_key_error(key, set(WRAPPER_KEYS) | set(QUANT_ARG_KEYS))
        self.args = parse_wrapper_args(
            {k: v for k, v in kwargs.items() if k in WRAPPER_KEYS}, self.default_pretrained
        )
        spec = QuantSpec.from_args({k: v for k, v in kwargs.items() if k in QUANT_ARG_KEYS})
        if spec.needs_calibration and self._calib_source() is None:
            raise MMQConfigError(
                f"method={spec.to_dict().get('method')} needs calibration data: pass "
                "calib_data=<folder of images | parquet/JSONL file with 'image' and 'text' columns>"
            )

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._device = torch.device(f"cuda:{accelerator.local_process_index}")
            self._rank, self._world_size = accelerator.local_process_index, accelerator.num_processes
        else:
            self._device = self.args.torch_device()
        self._source = resolve_pretrained(self.args.pretrained)
        self._load(self._source)
        self._family = family(type(self._model).__name__)
        self._fingerprint = checkpoint_fingerprint(self._source, self._model)
        self._full_precision_state: dict[str, torch.Tensor] | None = None
        self.quant_report = None
        plan = build_plan(self._model, spec)
        if not spec.is_noop:
            self.apply_quant(spec, keep_full_precision=False, plan=plan)

    # ---- hooks for model families -------------------------------------------------------
    def _load(self, source: str) -> None:
        """Load ``self._model`` and ``self._processor`` from ``source``."""
        raise NotImplementedError

    def _served_architecture(self, source: str) -> str:
        """The checkpoint's transformers class if the registry names this wrapper for it; otherwise
        MMQConfigError naming the ``mmq_*`` model that serves it."""
        architecture = architecture_of(source)
        paths = {f"{cls.__module__}.{cls.__name__}" for cls in type(self).__mro__}
        served = [fam.arch for fam in FAMILIES.values() if fam.wrapper in paths]
        if architecture in served:
            return architecture
        other = FAMILIES.get(architecture)
        fix = (f"use --model {other.lmms_model} for it" if other else
               f"no mmq_* model serves it (registered: {', '.join(sorted(FAMILIES))})")
        raise MMQConfigError(f"pretrained={self.args.pretrained!r} is a {architecture}, not a checkpoint this "
                             f"model serves ({', '.join(served)}); {fix}")

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

    @property
    def _decoder_only(self) -> bool:
        """True when ``generate`` echoes the prompt tokens before the new ones."""
        raise NotImplementedError

    # ---- lmms-eval properties ------------------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def config(self):
        return self._model.config

    @property
    def tokenizer(self):
        return self._processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.args.batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def clean(self) -> None:
        """Free the GPU's cached memory after an evaluation but keep the model: sweeps evaluate one
        loaded model many times. On a CPU there is nothing to free (a full ``gc.collect()`` would
        cost ~0.4 s per evaluation and reclaim only what Python's collector frees anyway)."""
        if self._device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    # ---- quantization --------------------------------------------------------------------
    def _calib_source(self) -> str | None:
        if self.args.calib_data is not None:
            return self.args.calib_data
        if self.args.pretrained.startswith(EMBEDDED_PREFIX + "shapes"):
            return "shapes"
        return None

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
        plan = plan or build_plan(self._model, spec)
        if self._full_precision_state is not None:
            self._model.load_state_dict(self._full_precision_state)
        elif keep_full_precision:
            self._full_precision_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self._model.state_dict().items()
            }
        elif self.quant_report is not None:
            raise MMQConfigError("this model was quantized without keeping its full-precision weights")
        calib = self.calibration_batches(spec) if spec.needs_calibration else None
        cache_dir = None
        if self.args.quant_cache is not None:
            cache_dir = default_cache_dir() if self.args.quant_cache == "default" else Path(self.args.quant_cache)
        report = quantize_model(
            self._model, spec, calib, progress=self.rank == 0, cache_dir=cache_dir,
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

    # ---- inputs ------------------------------------------------------------------------------
    def _encode(self, images, texts) -> dict[str, torch.Tensor]:
        inputs = self._processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self._device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        return inputs

    def _image_for(self, doc_to_visual, doc_id, task: str, split: str):
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        if not visuals:
            raise MMQConfigError(f"task {task!r} doc {doc_id} has no image; {type(self).__name__} needs one")
        if len(visuals) > 1 and not getattr(self, "_warned_multi_image", False):
            logger.warning(f"task {task!r} gives {len(visuals)} images per doc; using the first one")
            self._warned_multi_image = True
        return visuals[0].convert("RGB")

    # ---- lmms-eval requests ------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Batched greedy/beam/sampled generation honouring ``gen_kwargs``.

        Requests whose ``gen_kwargs`` carry ``mmq_retrieval`` are image-text retrieval docs:
        they are scored together (every image against every caption) instead.
        """
        retrieval = [i for i, req in enumerate(requests) if "mmq_retrieval" in req.args[1]]
        if retrieval:
            from mmq_eval.models.retrieval import retrieval_outputs

            outputs = retrieval_outputs(self, [requests[i] for i in retrieval])
            others = [req for i, req in enumerate(requests) if i not in set(retrieval)]
            generated = iter(self._generate_requests(others) if others else [])
            answers = dict(zip(retrieval, outputs))
            return [answers[i] if i in answers else next(generated) for i in range(len(requests))]
        return self._generate_requests(requests)

    def _generate_requests(self, requests: list[Instance]) -> list[str]:
        collator = lmms_utils.Collator(
            [req.args for req in requests], lambda a: (-len(a[0]), a[0]), grouping=True
        )
        outputs: list[str] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="mmq generate")
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            images = [self._image_for(*args) for args in zip(doc_to_visuals, doc_ids, tasks, splits)]
            outputs.extend(self._generate([self._format_prompt(c) for c in contexts], images, dict(gen_kwargs[0])))
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(outputs)

    def _generate(self, prompts: list[str], images, gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(gen_kwargs.pop("temperature", 0) or 0)
        do_sample = bool(gen_kwargs.pop("do_sample", False)) or temperature > 0
        options = {
            "max_new_tokens": int(gen_kwargs.pop("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            "num_beams": int(gen_kwargs.pop("num_beams", 1) or 1),
            "do_sample": do_sample,
        }
        top_p = gen_kwargs.pop("top_p", None)
        if do_sample:
            options["temperature"] = temperature if temperature > 0 else 1.0
            if top_p is not None:
                options["top_p"] = float(top_p)
        inputs = self._encode(images, prompts)
        with torch.inference_mode():
            generated = self._model.generate(**inputs, **options)
        if self._decoder_only:
            generated = generated[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [self._cut(text, until) for text in texts]

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for stop in until:
            if stop and stop in text:
                text = text.split(stop, 1)[0]
        return text.strip()

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """Log-probability of each continuation given image and context, and whether it is greedy.

        Results are wrapped in GenerationResult so that lmms-eval keeps the (logprob, is_greedy)
        tuple instead of stringifying it.
        """
        collator = lmms_utils.Collator(
            [req.args for req in requests], lambda a: (-len(a[0] + a[1]), a[0])
        )
        scores: list[GenerationResult] = []
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="mmq loglikelihood")
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, continuations, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            images = [self._image_for(*args) for args in zip(doc_to_visuals, doc_ids, tasks, splits)]
            for logprob, greedy in self._score(list(contexts), list(continuations), images):
                scores.append(GenerationResult(text=(logprob, greedy)))
            progress.update(len(chunk))
        progress.close()
        return collator.get_original(scores)

    def _score(self, contexts, continuations, images) -> list[tuple[float, bool]]:
        prompts = [self._format_prompt(c) for c in contexts]
        if self._decoder_only:
            full = [p + c for p, c in zip(prompts, continuations)]
            inputs = self._encode(images, full)
            n_cont = [
                len(self.tokenizer(f).input_ids) - len(self.tokenizer(p).input_ids)
                for p, f in zip(prompts, full)
            ]
            with torch.inference_mode():
                logits = self._model(**inputs).logits.float()
            targets = inputs["input_ids"]
        else:
            inputs = self._encode(images, prompts)
            labels = self.tokenizer(
                [c.strip() for c in continuations], return_tensors="pt", padding=True,
                padding_side="right", add_special_tokens=False,
            ).to(self._device)
            with torch.inference_mode():
                logits = self._model(**inputs, labels=labels.input_ids).logits.float()
            n_cont = labels.attention_mask.sum(dim=1).tolist()
            targets = labels.input_ids
        results = []
        for row, n in enumerate(n_cont):
            if self._decoder_only:
                tokens = targets[row, -n:]
                row_logits = logits[row, -n - 1:-1]
            else:
                tokens = targets[row, :n]
                row_logits = logits[row, :n]
            logprobs = torch.log_softmax(row_logits, dim=-1)
            total = logprobs.gather(1, tokens[:, None]).sum().item()
            greedy = bool((row_logits.argmax(dim=-1) == tokens).all().item())
            results.append((total, greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not support multi-round generation")
