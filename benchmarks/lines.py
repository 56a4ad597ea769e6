"""NPC lines at throughput speed: whole clips through the SDK against the real `ksdiff-runtime serve`.

    python -m benchmarks.lines [--repeats 5] [--lines 8] [--seconds 3]

1. one 3 s line at a time, `Client.animate` (mode "line": pushed whole, animated in whole windows), and
   the same line opened in mode "live" and pushed whole (how every line ran before modes existed):
   seconds from the call to the last frame, and x real time;
2. 8 such lines at once: from one client (a game opening its NPCs' lines on its one connection: opened,
   then pushed and ended together) and from 8 clients started together (8 games, each subscribed to its
   own streams only, ``streams=()``): each line's time and x real time;
3. a line played locally with `LineSync`: the first frame after the first push, and how many frames
   came after their instant.

serve runs in its own process (ONNX Runtime, low-latency preset, no sources); the clients in this one.
Results go to benchmarks/lines.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_sdk import Client, LineSync

from .live import ServeProcess, machine

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120.0


def line_audio(seconds: float) -> np.ndarray:
    audio, _ = load_audio(SAMPLE_SPEECH)
    return np.resize(audio, round(seconds * motion.SAMPLE_RATE)).astype(np.float32)


def live_mode_line(client: Client, audio: np.ndarray) -> float:
    """A whole line as a live stream: pushed at once, animated at the live hop's pace."""
    t0 = time.monotonic()
    with client.open_stream(sample_rate=motion.SAMPLE_RATE, mode="live", max_frames=None) as handle:
        handle.push(audio)
        handle.end(TIMEOUT_S)
    return time.monotonic() - t0


def figures(times: list[float], seconds: float) -> dict[str, Any]:
    return {"s": [round(t, 3) for t in times], "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3), "x_real_time_median": round(seconds / statistics.median(times), 1),
            "x_real_time_worst": round(seconds / max(times), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lines", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="lines timed one at a time")
    p.add_argument("--lines", type=int, default=8, help="lines animated at once")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each line")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "lines.json", help="results (JSON)")
    p.add_argument("--serve-args", default="", metavar="FLAGS",
                   help="more flags for `serve`, e.g. --serve-args=--float32")
    args = p.parse_args(argv)
    audio = line_audio(args.seconds)
    extra = args.serve_args.split()
    serve = ServeProcess(["--backend", "onnxruntime", "--preset", "low-latency", *extra],
                         ROOT / "out" / "bench_lines" / "serve.log").start()
    result: dict[str, Any] = {"machine": machine(), "line_s": args.seconds, "serve_args": extra}
    try:
        with Client(serve.pub, serve.router, timeout=TIMEOUT_S) as client:
            client.wait_for_runtime(TIMEOUT_S)
            client.animate(audio[: motion.SAMPLE_RATE])  # the first line also starts the runtime's threads
            one = []
            for i in range(args.repeats):
                t0 = time.monotonic()
                anim = client.animate(audio, seed=i)
                one.append(time.monotonic() - t0)
                assert anim.missing == 0
                print(f"line {i + 1}/{args.repeats}: {one[-1]:.3f} s", flush=True)
            result["one_line"] = figures(one, args.seconds)
            live = [live_mode_line(client, audio) for _ in range(2)]
            result["one_line_in_live_mode"] = figures(live, args.seconds)
            print(f"one line: median {result['one_line']['median_s']} s "
                  f"({result['one_line']['x_real_time_median']}x real time); in live mode "
                  f"{result['one_line_in_live_mode']['median_s']} s", flush=True)

            handle = client.open_stream(sample_rate=motion.SAMPLE_RATE, mode="line", max_frames=None)
            with handle:
                sync = LineSync(handle)
                handle.push(audio)
                handle.end(wait=False)
                handle.end(TIMEOUT_S)
                sync.pose()  # takes every frame received
                slack = sync.arrival_slack_s()
            result["line_sync"] = {"stated_latency_ms": handle.latency_ms,
                                   "first_frame_ms": round((sync.delay_s - slack[0]) * 1e3, 1),
                                   "median_ahead_ms": round(statistics.median(slack) * 1e3, 1),
                                   "late_frames": sync.late, "frames": len(slack)}
            print(f"LineSync: {result['line_sync']}", flush=True)

            handles = [client.open_stream(sample_rate=motion.SAMPLE_RATE, mode="line", max_frames=None)
                       for _ in range(args.lines)]
            t0 = time.monotonic()
            for h in handles:
                h.push(audio)
                h.end(wait=False)
            done = []
            for h in handles:
                h.end(TIMEOUT_S)
                done.append(time.monotonic() - t0)
                h.close()
            result["lines_at_once_one_client"] = {"lines": args.lines, **figures(done, args.seconds)}
            print(f"{args.lines} lines at once from one client: done after {min(done):.2f}-{max(done):.2f} s "
                  f"({args.seconds / max(done):.1f}-{args.seconds / min(done):.1f}x real time)", flush=True)

        clients = [Client(serve.pub, serve.router, streams=(), timeout=TIMEOUT_S) for _ in range(args.lines)]
        try:
            for c in clients:
                c.wait_for_runtime(TIMEOUT_S)
            times: list[float] = [0.0] * args.lines
            start = threading.Barrier(args.lines)

            def run(k: int) -> None:
                start.wait()
                t0 = time.monotonic()
                anim = clients[k].animate(audio, seed=k)
                times[k] = time.monotonic() - t0
                assert anim.missing == 0

            t0 = time.monotonic()
            threads = [threading.Thread(target=run, args=(k,)) for k in range(args.lines)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
        finally:
            for c in clients:
                c.close()
        result["lines_at_once_clients"] = {"lines": args.lines, "wall_s": round(wall, 3),
                                           **figures(times, args.seconds)}
        print(f"{args.lines} lines at once from {args.lines} clients: each {min(times):.2f}-{max(times):.2f} s "
              f"({args.seconds / max(times):.1f}-{args.seconds / min(times):.1f}x real time), all in {wall:.2f} s")
    finally:
        serve.stop()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
