"""`python -m benchmarks.round_split`: where an engine round's time goes with B live streams, on one thread.

The streams are as in benchmarks/rounds.py (the bundled speech from other places, `low-latency`, the int8
denoiser, the bilabial closure, voice gate and liveliness on, as `serve` runs them), stepped on one front-end
thread so the parts add up to the round. Every ONNX Runtime call is timed (a wrapper around
``InferenceSession.run``) and told to the engine step it was made in; the rest of each step is Python and numpy.
Prints milliseconds per round; writes nothing.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.rounds import HOP_SAMPLES
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.engine import engine as engine_module
from ksdiff_runtime.engine import stream as stream_module
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE
from ksdiff_runtime.engine.gate import GateConfig
from ksdiff_runtime.engine.liveliness import LivelinessConfig
from ksdiff_runtime.inputs.guards import load_audio

# the engine steps timed: where ONNX Runtime's calls are told apart, and the Python work around them
STEPS = [(engine_module.StreamingEngine, ("_listen", "_features", "_sample")),
         (stream_module.StreamState, ("apply_hop", "hop_window"))]


def timed(totals: dict[str, float], stack: list[str], name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = f"ONNX Runtime in {stack[-1]}" if name == "ort" and stack else name
        stack.append(name)
        t = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            totals[key] += time.perf_counter() - t
            stack.pop()
    return wrapper


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.round_split", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=12, help="live streams (default 12)")
    p.add_argument("--rounds", type=int, default=300, help="rounds measured (default 300, after 40)")
    args = p.parse_args(argv)
    totals: dict[str, float] = defaultdict(float)
    stack: list[str] = []
    ort.InferenceSession.run = timed(totals, stack, "ort", ort.InferenceSession.run)
    for cls, names in STEPS:
        for name in names:
            setattr(cls, name, timed(totals, stack, name, getattr(cls, name)))
    backend = load_backend("onnxruntime-cpu", threads=1, int8=True)
    audio, _ = load_audio(SAMPLE_SPEECH)
    audio = np.tile(audio, -(-(args.rounds + 40) * HOP_SAMPLES // audio.size) + 2)
    engine = engine_module.StreamingEngine(backend, "low-latency", voice_gate=GateConfig(),
                                           liveliness=LivelinessConfig(), closure=DEFAULT_CLOSURE,
                                           front_end_threads=1)
    engine.warm_up()
    ids = [engine.open_stream(seed=i) for i in range(args.streams)]
    starts = [(i * 7919) % (audio.size // 3) for i in range(args.streams)]
    walls = []
    for r in range(40 + args.rounds):
        if r == 40:
            totals.clear()
        for sid, s0 in zip(ids, starts, strict=True):
            engine.push(sid, audio[s0 + r * HOP_SAMPLES : s0 + (r + 1) * HOP_SAMPLES])
        t = time.perf_counter()
        while engine.has_work():
            engine.step()
        if r >= 40:
            walls.append(time.perf_counter() - t)
    engine.close()
    per_round = {k: 1e3 * v / args.rounds for k, v in totals.items()}
    ort_ms = sum(v for k, v in per_round.items() if k.startswith("ONNX Runtime"))
    round_ms = 1e3 * float(np.mean(walls))
    print(f"{args.streams} streams, one thread: a round {round_ms:.1f} ms (median {1e3 * np.median(walls):.1f}); "
          f"ONNX Runtime {ort_ms:.1f} ms, the rest (Python, numpy) {round_ms - ort_ms:.1f} ms")
    for key, ms in sorted(per_round.items(), key=lambda kv: -kv[1]):
        inner = sum(v for k, v in per_round.items() if k == f"ONNX Runtime in {key}")
        own = f" (of which ONNX Runtime {inner:.1f}, the rest {ms - inner:.1f})" if inner else ""
        print(f"  {key:<30} {ms:6.2f} ms a round{own}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
