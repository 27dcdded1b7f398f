"""Shared fixtures: tiny random checkpoints saved like real ones (model + processor)."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_models import make_tiny_blip2, make_tiny_blip2_itm, make_tiny_llava  # noqa: E402


def _save(tmp_path_factory, name, model_and_processor):
    model, processor = model_and_processor
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_blip2_dir(tmp_path_factory):
    """A tiny random BLIP-2 with an OPT language model."""
    return _save(tmp_path_factory, "tiny-blip2-opt", make_tiny_blip2(seed=0, llm="opt"))


@pytest.fixture(scope="session")
def tiny_blip2_t5_dir(tmp_path_factory):
    """A tiny random BLIP-2 with a T5 language model."""
    return _save(tmp_path_factory, "tiny-blip2-t5", make_tiny_blip2(seed=0, llm="t5"))


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A tiny random LLaVA-1.5."""
    return _save(tmp_path_factory, "tiny-llava", make_tiny_llava(seed=0))


@pytest.fixture(scope="session")
def tiny_itm_dir(tmp_path_factory):
    """A tiny random BLIP-2 image-text retrieval model (Blip2ForImageTextRetrieval)."""
    return _save(tmp_path_factory, "tiny-blip2-itm", make_tiny_blip2_itm(seed=0))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: tiny models run fastest so, and two threads
    spin-wait badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
