"""Shared lmms-eval plumbing of the simple ``mmq_*`` models (BLIP-2, LLaVA-1.5): arg checks,
loading, batching, generation and scoring; quantization comes from ``QuantizingModel``."""

from __future__ import annotations

import gc
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
from mmq_eval.models.loading import resolve_pretrained
from mmq_eval.models.quantizing import QuantizingModel, served_architecture
from mmq_eval.quant import QUANT_ARG_KEYS, QuantSpec

DEFAULT_MAX_NEW_TOKENS = 32

class MMQModel(QuantizingModel, lmms):
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
        self._source = resolve_pretrained(self.args.pretrained)
        self._packed_folder = self._packed_checkpoint(self._source, spec)  # an export: evaluated as stored
        self._require_calibration_data(spec)

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            self._device = torch.device(f"cuda:{accelerator.local_process_index}")
            self._rank, self._world_size = accelerator.local_process_index, accelerator.num_processes
        else:
            self._device = self.args.torch_device()
        self._load(self._source)
        self._quantize_loaded(self._source, spec)

    # ---- hooks for model families -------------------------------------------------------
    def _load(self, source: str) -> None:
        """Load ``self._model`` and ``self._processor`` from ``source``."""
        raise NotImplementedError

    def _served_architecture(self, source: str) -> str:
        return served_architecture(type(self), self.args.pretrained, source)

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

    # ---- inputs ------------------------------------------------------------------------------
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
