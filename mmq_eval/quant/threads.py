"""CPU threading for quantization: thousands of tiny ops run faster on one thread."""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache

import torch
from threadpoolctl import ThreadpoolController


@contextmanager
def one_cpu_thread(device: torch.device | str, when: bool = True):
    """Run the body on one torch thread when `device` is the CPU and `when` holds.

    Small per-column or per-layer steps touch one short vector each: on a CPU every op with
    several threads pays a hand-off that costs more than it saves (GPTQ on a tiny BLIP-2 was 25x
    slower on a loaded 2-core machine). The thread count is restored afterwards.
    """
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n == 1 or not when:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@cache
def _blas_pools() -> ThreadpoolController:
    import scipy.linalg  # noqa: F401 - loads scipy's BLAS, so the controller sees it

    return ThreadpoolController()


@contextmanager
def blas_threads_like_torch():
    """Run scipy's BLAS/LAPACK calls in the body on as many threads as torch uses (separate pools)."""
    with _blas_pools().limit(limits=torch.get_num_threads(), user_api="blas"):
        yield
