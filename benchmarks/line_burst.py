"""A burst of NPC lines beside a live stream: does the live stream keep its frames, and come back after?

    python -m benchmarks.line_burst [--lines 16] [--seconds 10]

`ksdiff-runtime serve` (its own process, ONNX Runtime, `low-latency`) plays the bundled speech as a looping
real-time file: the live stream. After 5 s, one client opens N lines of S seconds at once (`Client.animate` on N
threads: pushed whole, mode "line"). The live stream's frames are counted second by second from a subscriber:
frames received, frames missing (seq gaps: shed), latency p95 (published - captured). Until 5 December 2026 the
lines' rounds ran inside the live ones and left the engine's round estimate past the deadline: with 16 lines of
10 s the live stream got no frame again. Prints a table; writes nothing, asserts nothing.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_sdk import Client

from .live import ServeProcess, Subscriber

ROOT = Path(__file__).resolve().parent.parent
LIVE = SAMPLE_SPEECH.stem  # the stream id serve gives the looping file


def per_second(sub: Subscriber, t0_ns: int, seconds: int) -> list[tuple[int, int, int, float]]:
    """(second, frames, frames missing, latency p95 ms) of the live stream, for each second from t0."""
    r = sub.streams[LIVE]
    recv, seq = np.asarray(r.recv_ns), np.asarray(r.seq)
    lat = (np.asarray(r.published_ns) - np.asarray(r.captured_ns)) / 1e6
    rows = []
    for k in range(seconds):
        m = (recv >= t0_ns + k * 1_000_000_000) & (recv < t0_ns + (k + 1) * 1_000_000_000)
        s = seq[m]
        missing = int(np.sum(np.diff(s) - 1)) if s.size > 1 else 0
        rows.append((k, int(m.sum()), missing, float(np.percentile(lat[m], 95)) if m.any() else float("nan")))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.line_burst", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=16, help="lines opened at once (default 16)")
    p.add_argument("--seconds", type=float, default=10.0, help="each line's length in seconds (default 10)")
    p.add_argument("--watch", type=int, default=25, help="seconds watched from 5 s before the burst (default 25)")
    args = p.parse_args(argv)
    audio, _ = load_audio(SAMPLE_SPEECH)
    line = np.resize(audio, round(args.seconds * motion.SAMPLE_RATE)).astype(np.float32)
    sub = Subscriber()
    serve = ServeProcess(["--file", str(SAMPLE_SPEECH), "--loop", "--no-admission"],
                         ROOT / "runs" / "bench" / "line_burst_serve.log").start(sub)
    try:
        while LIVE not in sub.streams or len(sub.streams[LIVE].seq) < 90:  # warm: 3 s of the live stream
            time.sleep(0.1)
        t0 = time.monotonic_ns()
        time.sleep(5.0)
        took: list[float] = []
        with Client(pub=serve.pub, router=serve.router, streams=()) as client:
            def one(k: int) -> None:
                start = time.monotonic()
                client.animate(line, seed=k, timeout=300)
                took.append(time.monotonic() - start)

            threads = [threading.Thread(target=one, args=(k,)) for k in range(args.lines)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        time.sleep(max(0.0, args.watch - (time.monotonic_ns() - t0) / 1e9))
        rows = per_second(sub, t0, args.watch)
    finally:
        serve.stop()
        sub.close()
    print(f"{args.lines} lines of {args.seconds:g} s opened at 5 s; all done {max(took):.1f} s later "
          f"(the first {min(took):.1f} s)")
    print("second  live frames  missing (shed)  latency p95 ms")
    for k, n, missing, p95 in rows:
        print(f"{k:6d}  {n:11d}  {missing:14d}  {p95:14.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
