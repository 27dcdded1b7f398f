"""What the shapes training scripts share: the step loop with its schedule and budget, saving.

Budgets: ``steps`` gives a bit-reproducible run; otherwise ``minutes`` of CPU time of this
process drive the cosine schedule (so a busy machine slows a run but does not shorten it).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers


def pixel_values(images) -> torch.Tensor:
    """Images to normalised tensors, identical to the processor's output for 64x64 inputs."""
    arr = np.stack([np.asarray(img, dtype=np.float32) for img in images]) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2.0 - 1.0


def learning_rate(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay (over progress 0..1) to 5% of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass(frozen=True)
class Budget:
    """How long to train and how the learning rate moves."""

    peak_lr: float
    warmup: int
    steps: int | None = None  # fixed step count; else `minutes`
    minutes: float = 10.0  # CPU minutes of this process
    log_every: int = 100


@dataclass(frozen=True)
class TrainingRun:
    """What a finished loop did."""

    steps: int
    wall_s: float
    cpu_s: float


def fit(params, opt: torch.optim.Optimizer, step_loss: Callable[[int], tuple[torch.Tensor, str]],
        budget: Budget, after_step: Callable[[], None] | None = None) -> TrainingRun:
    """Run optimiser steps until the budget is spent.

    ``step_loss(step)`` returns the loss of that step's batch and a short text for the log;
    gradients of ``params`` are clipped to norm 1; ``after_step`` runs after each update.
    """
    params = list(params)  # clipped every step: a generator would be spent after the first
    start, cpu_start = time.time(), time.process_time()
    step, progress = 0, 0.0
    while progress < 1.0:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, progress, budget.peak_lr, budget.warmup)
        loss, log = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        step += 1
        cpu_s = time.process_time() - cpu_start
        progress = step / budget.steps if budget.steps else cpu_s / (budget.minutes * 60)
        if step % budget.log_every == 0 or progress >= 1.0:
            print(f"step {step} {log} cpu {cpu_s:.0f}s wall {time.time() - start:.0f}s", flush=True)
    return TrainingRun(step, round(time.time() - start, 1), round(time.process_time() - cpu_start, 1))


def save_trained(out: Path, model, processor, run: TrainingRun, budget: Budget, record: dict) -> dict:
    """Save model, processor and ``training.json`` (``record`` plus the run's facts) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    full = {
        **record, "steps": run.steps, "budget_cpu_minutes": None if budget.steps else budget.minutes,
        "peak_lr": budget.peak_lr, "warmup_steps": budget.warmup,
        "train_wall_s": run.wall_s, "train_cpu_s": run.cpu_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    (out / "training.json").write_text(json.dumps(full, indent=2) + "\n")
    return full


def vqa_accuracy(question_types: list[str], correct: list[bool]) -> dict:
    """Exact-match VQA accuracy overall and per question type (types in first-seen order)."""
    hits: dict[str, list[bool]] = {}
    for qtype, ok in zip(question_types, correct):
        hits.setdefault(qtype, []).append(ok)
    return {
        "vqa_accuracy": round(sum(correct) / len(correct), 4),
        "vqa_accuracy_by_type": {t: round(sum(v) / len(v), 4) for t, v in hits.items()},
    }
