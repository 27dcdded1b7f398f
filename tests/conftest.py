"""Shared fixtures: tiny random BLIP-2 checkpoints saved like real ones, and fake lmms-eval requests."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import make_tiny_blip2  # noqa: E402


@pytest.fixture(scope="session")
def tiny_blip2_dir(tmp_path_factory):
    """A tiny random BLIP-2 (OPT) saved with save_pretrained (model + processor)."""
    model, processor = make_tiny_blip2(seed=0, llm="opt")
    path = tmp_path_factory.mktemp("tiny-blip2-opt")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_blip2_t5_dir(tmp_path_factory):
    """A tiny random BLIP-2 with a T5 language model, saved like a real checkpoint."""
    model, processor = make_tiny_blip2(seed=0, llm="t5")
    path = tmp_path_factory.mktemp("tiny-blip2-t5")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny random LLaVA-1.5 saved like a real checkpoint."""
    from tiny_models import make_tiny_llava

    model, processor = make_tiny_llava(seed=0)
    path = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
