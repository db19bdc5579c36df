"""How many CPU threads a probe's solver uses (one for small probes, the libraries' default above)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import torch

ONE_THREAD_MACS = 1e9
"""Multiply-adds per pass over a probe's training data (n · d · classes) below which its solver runs on one
thread. A probe's GEMMs are small (M3/M4/M7 on 512 images: 4e5–1e7 per pass); splitting them over the BLAS
thread pool costs more in synchronisation than it saves, and on a busy machine a preempted worker stalls
every call (measured on 2 cores at load 3: one thread was 4–16× faster than two up to 4e8 multiply-adds;
two threads won only at 1e10, a 1000-class probe on 40k images: README, Performance)."""


@lru_cache(maxsize=1)
def _thread_controller() -> Any:
    """threadpoolctl's view of the BLAS/OpenMP libraries loaded once scikit-learn's solvers are imported."""
    import sklearn.linear_model  # noqa: F401  (loads the OpenMP runtime of sklearn's loss kernels)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def solver_thread_count(work_macs: float, threads: int | None) -> int | None:
    """Threads for a solve of ``work_macs`` multiply-adds per pass: ``threads`` if set, else 1 below
    :data:`ONE_THREAD_MACS`, else None (the libraries' default)."""
    if threads is not None:
        return threads
    return 1 if work_macs < ONE_THREAD_MACS else None


@contextmanager
def solver_threads(work_macs: float, threads: int | None = None) -> Iterator[None]:
    """Run the block with :func:`solver_thread_count` BLAS/OpenMP and torch intra-op threads (restored
    after)."""
    count = solver_thread_count(work_macs, threads)
    if count is None:
        yield
        return
    torch_before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with _thread_controller().limit(limits=count):
            yield
    finally:
        torch.set_num_threads(torch_before)
