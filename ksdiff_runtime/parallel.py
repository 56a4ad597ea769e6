"""Batches cut into parts that run at once, one part per core.

ONNX Runtime on the CPU runs a live round's small graphs fastest on one intra-op thread: measured on
2 cores at 12 streams, a second intra-op thread made the stream conditioner 9.4 ms instead of 8.3 (and
12.7 ms of CPU instead of 8.3), because each of the graph's hundreds of small operators is split and
joined again. Cutting the batch's rows into one part per core and running the parts' calls at once
(sessions take concurrent calls; a call releases the GIL) uses the second core without that cost.
A part must have a few rows: each call has a fixed cost (about 0.3-0.7 ms per graph), which a
small batch would pay twice for nothing.
"""

from __future__ import annotations

import itertools

import numpy as np

# rows a part must have at least: a batch of fewer than 2 x this rows is one call
MIN_PART_ROWS = 2


def row_parts(rows: int, threads: int, min_rows: int = MIN_PART_ROWS) -> list[tuple[int, int]]:
    """Consecutive row ranges [a, b) that cut ``rows`` into at most ``threads`` parts of at least
    ``min_rows`` rows each, as even as they can be (one range when the batch is too small to cut; none
    for no rows)."""
    k = max(1, min(threads, rows // max(1, min_rows)))
    bounds = np.linspace(0, rows, k + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a] if rows else []
