"""`python -m benchmarks.rounds`: what one engine round costs with B live streams, in this process.

B low-latency streams (the bundled speech, each from another place), the bilabial closure, voice gate and
liveliness on as `serve` runs them (the committed curve was measured before the closure), fed one frame of
audio (533 samples) per stream per round and stepped until the round's work is done: the round's wall time (it
must stay under the 33 ms hop for the streams to be held in real time on the engine's thread) and the
process's CPU time per stream-hop (by CPU alone, cores x 0.7 / (CPU per stream-hop x 30 hops/s) streams fit;
admission in `serve` counts the rounds' fixed part once, engine/capacity.py). No ZeroMQ: benchmarks/load.py
measures the real `serve`.
Each count runs seven ways: with the stream conditioner and the streaming recogniser (as the engine
runs: a round of a few streams per core cut into parts run at once, ksdiff_runtime.parallel), rounds
back to back; the same paced, a round starting every 33 ms as the audio would come (the cores idle
between rounds, as in `serve`, and the next round starts with colder caches); both again with every graph
in float32 (as before the int8 denoiser, `serve --float32`; the other ways run the int8 denoiser, as
`serve` does on a CPU); on one thread (as before the parts); with the windowed recogniser (every hop
re-recognising 150 ms of context, as before the streaming recogniser); and window by window as well
(every hop re-encoding its context too, as before the stream conditioner).
A count is held when the round's median is within the admission's share of the hop (ROUND_TARGET) and
its CPU within the cores' (TARGET). Writes benchmarks/rounds.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.live import machine
from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.engine.capacity import ROUND_TARGET, TARGET
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.gate import GateConfig
from ksdiff_runtime.engine.liveliness import LivelinessConfig
from ksdiff_runtime.inputs.guards import load_audio

HOP_SAMPLES = motion.SAMPLE_RATE // motion.FPS + 1  # 533: a frame of audio per round (a little over)


# (stream conditioner, streaming recogniser, threads: None = the engine's default, one per core, paced, int8) of each
# way; int8: the export's int8 denoiser, as `serve` runs ONNX Runtime on a CPU
WAYS = {"stream": (True, True, None, False, True), "stream, paced": (True, True, None, True, True),
        "stream, float32": (True, True, None, False, False), "stream, paced, float32": (True, True, None, True, False),
        "stream, one thread": (True, True, 1, False, True), "windowed recogniser": (True, False, None, False, True),
        "window": (False, False, None, False, True)}


def measure(backends: dict[bool, Any], streams: int, rounds: int, warm: int, way: str) -> dict:
    """``backends``: the backend by int8 (True: with its int8 denoiser)."""
    audio, _ = load_audio(SAMPLE_SPEECH)
    audio = np.tile(audio, -(-(rounds + warm) * HOP_SAMPLES // audio.size) + 2)
    stream_conditioner, streaming_recogniser, threads, paced, int8 = WAYS[way]
    backend = backends[int8]
    engine = StreamingEngine(backend, "low-latency", voice_gate=GateConfig(), liveliness=LivelinessConfig(),
                             closure=DEFAULT_CLOSURE, stream_conditioner=stream_conditioner,
                             streaming_recogniser=streaming_recogniser, front_end_threads=threads)
    engine.warm_up()
    ids = [engine.open_stream(seed=i) for i in range(streams)]
    starts = [(i * 7919) % (audio.size // 3) for i in range(streams)]
    walls, cpus = [], []
    hop_s = 1.0 / motion.FPS
    next_round = time.perf_counter()
    for r in range(warm + rounds):
        if paced:  # a round starts when its audio would have come, as in `serve`, not right after the last
            next_round += hop_s
            time.sleep(max(0.0, next_round - time.perf_counter()))
        for sid, s0 in zip(ids, starts, strict=True):
            engine.push(sid, audio[s0 + r * HOP_SAMPLES : s0 + (r + 1) * HOP_SAMPLES])
        c0, w0 = time.process_time(), time.perf_counter()
        while engine.has_work():
            engine.step()
        if r >= warm:
            walls.append(1e3 * (time.perf_counter() - w0))
            cpus.append(1e3 * (time.process_time() - c0))
    engine.close()
    hop_ms = 1000 / motion.FPS
    cpu_per_hop = float(np.sum(cpus)) / (len(cpus) * streams)
    cpu_streams = int((os.cpu_count() or 1) * TARGET / (cpu_per_hop * motion.FPS / 1000))
    round_ok = bool(np.median(walls) <= ROUND_TARGET * hop_ms)
    return {
        "streams": streams,
        "round_wall_ms": {q: round(float(np.percentile(walls, int(q[1:]))), 2) for q in ("p50", "p95")},
        "cpu_ms_per_stream_hop": round(cpu_per_hop, 3),
        "round_p95_fits_hop": bool(np.percentile(walls, 95) < hop_ms),
        "admission_streams": cpu_streams,  # by CPU alone
        "round_within_target": round_ok,  # the median round within ROUND_TARGET of the hop
        "held": round_ok and streams <= cpu_streams,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rounds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,2,4,8,12,16", help="comma-separated stream counts (default 1,2,4,8,12,16)")
    p.add_argument("--rounds", type=int, default=200, help="rounds measured per count (default 200, after 40)")
    p.add_argument("--backend", default="onnxruntime-cpu", help="backend (default onnxruntime-cpu)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "rounds.json", help="results file")
    args = p.parse_args(argv)
    # one intra-op thread, as `serve` runs it; the int8 denoiser where the backend has it, as `serve` runs it
    backends = {int8: load_backend(args.backend, threads=1, int8=int8) for int8 in (True, False)}
    counts = [int(x) for x in args.streams.split(",") if x.strip()]
    rows: dict[str, list] = {way: [] for way in WAYS}
    for n, way in tqdm([(n, w) for n in counts for w in rows], desc="rounds", unit="run"):
        r = measure(backends, n, args.rounds, 40, way)
        rows[way].append(r)
        wall = r["round_wall_ms"]
        fits = "fits" if r["round_p95_fits_hop"] else "over"
        tqdm.write(f"{n:>3} streams, {way}: round p50 {wall['p50']:.1f} ms, p95 {wall['p95']:.1f} "
                   f"ms ({fits} the 33 ms hop); CPU per stream-hop {r['cpu_ms_per_stream_hop']:.2f} ms -> "
                   f"{r['admission_streams']} streams by CPU; {'held' if r['held'] else 'not held'}")
    for way, results in rows.items():
        held = [r["streams"] for r in results if r["held"]]
        print(f"{way}: most streams held {max(held) if held else 0} (of {', '.join(map(str, counts))})")
    doc = {"backend": backends[True].name, "int8": getattr(backends[True], "precision", "") == "int8",
           "machine": machine(), "preset": "low-latency",
           "rounds": args.rounds, "round_target": ROUND_TARGET, "cpu_target": TARGET,
           "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
