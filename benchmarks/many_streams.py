"""One client feeding many live streams: a game server pushing its NPCs' audio as the game plays it.

    python -m benchmarks.many_streams [--streams 16] [--chunk-ms 10] [--rate 48000] [--channels 2] [--seconds 10]

`ksdiff-runtime serve` (its own process, ONNX Runtime, `low-latency`, no admission) takes N live streams from
one SDK `Client`, each pushed the bundled speech in real time as the game's audio callback would: chunks of
``--chunk-ms`` at ``--rate`` Hz, s16, ``--channels``. Then every stream is ended and waited for. Counted: frames
received per stream against those its audio makes, the requests the runtime refused `busy` (its flood guard:
ksdiff_runtime/server/floods.py drops a client's requests unread past its share of the io thread), how each
`end()` went and how long it took. Until 5 December 2026 a client's share did not count its streams: 16 streams in
10 ms chunks of 48 kHz stereo (1,600 requests a second) spent 27 % of the io thread, past the 25 % one client got;
their audio was dropped in part and their end_streams too, so each stream ended by the 10 s idle timeout and `end()`
raised StreamLost. Prints a table; writes nothing, asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import soxr

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.engine.controls import stream_frames
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_sdk import Client

from .live import ServeProcess, Subscriber

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.many_streams", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=16, help="live streams one client feeds (default 16)")
    p.add_argument("--chunk-ms", type=float, default=10.0, help="audio per push, in ms (default 10)")
    p.add_argument("--rate", type=int, default=48000, help="the streams' sample rate in Hz (default 48000)")
    p.add_argument("--channels", type=int, default=2, help="the streams' channels (default 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio pushed to each stream (default 10)")
    args = p.parse_args(argv)
    audio, _ = load_audio(SAMPLE_SPEECH)
    x = np.resize(soxr.resample(audio, motion.SAMPLE_RATE, args.rate), round(args.seconds * args.rate))
    pcm = (np.repeat(x[:, None], args.channels, axis=1) * 20000).astype(np.int16)
    block = max(1, round(args.chunk_ms * args.rate / 1000))
    sub = Subscriber()
    serve = ServeProcess(["--no-admission"], ROOT / "runs" / "bench" / "many_streams_serve.log").start(sub)
    try:
        with Client(serve.pub, serve.router, timeout=30) as client:
            handles = [client.open_stream(f"npc{k}", sample_rate=args.rate, channels=args.channels, format="s16le")
                       for k in range(args.streams)]
            t0 = time.monotonic()
            late = 0.0
            for i in range(0, len(pcm), block):
                wait = t0 + i / args.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late = max(late, -wait)
                for h in handles:
                    h.push(pcm[i : i + block])
            ends = []
            for h in handles:
                t = time.monotonic()
                try:
                    h.end()
                    outcome = "ended"
                except Exception as e:  # what the benchmark measures: how a stream's end went
                    outcome = f"{type(e).__name__}: {e}"[:60]
                ends.append((outcome, time.monotonic() - t))
            client_errors = [str(e)[:100] for e in client.errors]
        seen, deadline = len(sub.stats), time.monotonic() + 5
        while len(sub.stats) == seen and time.monotonic() < deadline:  # the stats published after the ends
            time.sleep(0.05)
        expected = stream_frames(round(args.seconds * motion.SAMPLE_RATE), motion.FPS)
        refused = sub.stats[-1].get("refused", {}) if sub.stats else {}
    finally:
        serve.stop()
        sub.close()
    print(f"{args.streams} streams x {args.chunk_ms:g} ms chunks of {args.rate} Hz x {args.channels} ch s16 "
          f"({args.streams * 1000 / args.chunk_ms:.0f} requests/s) for {args.seconds:g} s; pushes at most "
          f"{1000 * late:.0f} ms late")
    print(f"{'stream':>8} {'frames':>7} {'of':>5} {'shed':>5}  end")
    for h, (outcome, took) in zip(handles, ends, strict=True):
        seq = np.asarray(sub.streams[h.stream].seq if h.stream in sub.streams else [], dtype=np.int64)
        shed = int(np.sum(np.diff(seq) - 1)) if seq.size > 1 else 0  # skipped to stay current (a busy round)
        print(f"{h.stream:>8} {seq.size:>7} {expected:>5} {shed:>5}  {outcome} in {took:.2f} s")
    print(f"refused by the runtime: {refused or 'nothing'}; client-level errors: {len(client_errors)} "
          f"{client_errors[:1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
