"""Timing one ONNX Runtime graph's calls beside another export of it: what the `*_step` benchmarks share."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def time_calls(run: Callable[[], object], calls: int) -> list[float]:
    """``run()`` once to warm it, then ``calls`` times: each call's milliseconds."""
    run()
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run()
        ms.append(1e3 * (time.perf_counter() - t0))
    return ms


def report(graphs: dict[str, Path], rounds: int, ms: dict[str, dict[str, list[float]]], differ: dict[str, float],
           differ_key: str, differ_what: str, out: Path) -> dict[str, Any]:
    """Each case's medians by graph and round, printed a line each and written to ``out`` with the graphs'
    sha256 and how far the other graph's outputs are from the shipped one's (``differ``, under ``differ_key``);
    returns what was written."""
    result: dict[str, Any] = {"graphs": {g: {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                         for g, p in graphs.items()}, "rounds": rounds,
                              "median_ms_by_round": ms, differ_key: differ}
    for name in ms:
        line = "; ".join(f"{g} {' / '.join(f'{v:.2f}' for v in ms[name][g])} ms" for g in graphs)
        extra = f" ({differ_what} differ by {differ[name]:.1e} at most)" if name in differ else ""
        print(f"{name}: {line}{extra}")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")
    return result
