"""Batches cut into parts that run at once, one part per core.

ONNX Runtime on the CPU runs a live round's small graphs fastest on one intra-op thread: measured on
2 cores at 12 streams, a second intra-op thread made the stream conditioner 9.4 ms instead of 8.3 (and
12.7 ms of CPU instead of 8.3), because each of the graph's hundreds of small operators is split and
joined again. Cutting the batch's rows into one part per core and running the parts' calls at once
(sessions take concurrent calls; a call releases the GIL) uses the second core without that cost.
A live round's part must have a few rows: each call has a fixed cost (about 0.3-0.7 ms per graph), which a
small batch would pay twice for nothing (a bake's clips, each many windows long, are cut one a part).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import numpy as np

T = TypeVar("T")
_BLAS_LOCK = threading.Lock()
_BLAS_SET = False  # one_blas_thread has run
_PART = threading.local()  # .on: this thread runs one of several parts at once

# rows a part must have at least: a batch of fewer than 2 x this rows is one call
MIN_PART_ROWS = 2


def row_parts(rows: int, threads: int, min_rows: int = MIN_PART_ROWS) -> list[tuple[int, int]]:
    """Consecutive row ranges [a, b) that cut ``rows`` into at most ``threads`` parts of at least
    ``min_rows`` rows each, as even as they can be (one range when the batch is too small to cut; none
    for no rows)."""
    k = max(1, min(threads, rows // max(1, min_rows)))
    bounds = np.linspace(0, rows, k + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a] if rows else []


def single_thread_cpu(backend) -> bool:
    """Whether a backend's calls may be cut into parts run at once: a CPU backend whose calls use one
    intra-op thread each (as `serve` and `bake` load ONNX Runtime). A GPU runs one call at a time anyway
    (and the TensorRT backend's buffers are not for concurrent calls); a CPU backend with more threads
    per call would oversubscribe the cores."""
    return backend.name.endswith("-cpu") and getattr(backend, "intra_op_threads", None) == 1


def run_parts(fn: Callable[[int, int], T], parts: Sequence[tuple[int, int]]) -> list[T]:
    """``fn(a, b)`` for every part, the first on the calling thread and the others at once on threads of
    their own; results in the parts' order. Returns only once every part is done (or raises the first
    part's error, in order)."""
    if len(parts) < 2:
        return [fn(a, b) for a, b in parts]
    with ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="ksdiff-part") as pool:
        later = [pool.submit(as_part(fn), a, b) for a, b in parts[1:]]
        try:
            first = as_part(fn)(*parts[0])
        finally:
            wait(later)
        return [first] + [f.result() for f in later]


def as_part(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` marked, while it runs, as one of several parts run at once on the cores (``in_part``)."""
    def run(*args):
        before = getattr(_PART, "on", False)
        _PART.on = True
        try:
            return fn(*args)
        finally:
            _PART.on = before
    return run


def in_part() -> bool:
    """Whether this thread runs one of several parts at once: the cores are taken, so a call made here should not
    split itself further (the ONNX Runtime backend's denoiser paths). Decided by the work's shape, never by
    timing, so the same work gives the same numbers."""
    return getattr(_PART, "on", False)


def one_blas_thread() -> None:
    """Keep numpy's BLAS on one thread, for the whole process, from now on (the first call sets it; later ones
    do nothing). The runtime runs its work in parts on the cores itself, and OpenBLAS's worker threads spin for
    a while after a call they shared, taking a core from the parts that run next: after a whole clip's log-mel
    (a 342 x 201 x 80 product, which OpenBLAS cuts across the cores) a bake's model took 93 ms instead of 62
    with its denoiser's paths at once (2-core AMD EPYC); the product itself is as fast on one thread (0.85 ms
    against 0.78). OpenBLAS has one thread count for the process, which threadpoolctl lets one thread set, so
    this is a setting and not a context. An embedding program that wants BLAS's threads back for its own work
    can set them with threadpoolctl after creating its engines and bakes."""
    global _BLAS_SET
    with _BLAS_LOCK:
        if not _BLAS_SET:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1, user_api="blas")
            _BLAS_SET = True
