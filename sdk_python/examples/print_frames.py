"""Print, once a second, each stream's frame rate and latency as this client receives them.

    python print_frames.py                      # every stream of the runtime on this machine
    python print_frames.py --stream mic         # one stream (repeat --stream for more)
    python print_frames.py --pub tcp://192.168.1.20:5555

Latency is the runtime's own (published - captured, SPEC section 6); "-" for streams whose
capture time is unknown (files played with --fast, lines pushed faster than real time). "missed" counts
frames lost on the way (seq gaps).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

from ksdiff_sdk import DEFAULT_PUB_ENDPOINT, DEFAULT_ROUTER_ENDPOINT, Client


@dataclass
class Window:
    frames: int = 0
    latencies: list[float] = field(default_factory=list)
    jaw: float = 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pub", default=DEFAULT_PUB_ENDPOINT, help="the runtime's PUB endpoint (default %(default)s)")
    ap.add_argument("--router", default=DEFAULT_ROUTER_ENDPOINT,
                    help="the runtime's ROUTER endpoint, for the hello request (default %(default)s)")
    ap.add_argument("--stream", action="append", help="only this stream id (repeatable; default: all streams)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between reports (default %(default)s)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    args = ap.parse_args(argv)

    with Client(args.pub, args.router, streams=args.stream) as client:
        try:
            hello = client.wait_for_runtime(timeout=10)
            print(f"runtime {hello.get('runtime')} (instance {hello.get('instance', '?')}), {hello.get('fps')} fps")
        except TimeoutError as e:
            print(f"waiting for the runtime: {e}")
        windows: dict[str, Window] = {}
        start = last_report = time.monotonic()
        try:
            while args.duration is None or time.monotonic() - start < args.duration:
                try:
                    frame = client.recv(timeout=0.1)
                    w = windows.setdefault(frame.stream, Window())
                    w.frames += 1
                    w.jaw = frame["jawOpen"]
                    if frame.latency_ms is not None:
                        w.latencies.append(frame.latency_ms)
                except TimeoutError:
                    pass
                now = time.monotonic()
                if now - last_report >= args.interval:
                    elapsed = now - last_report
                    for sid, w in sorted(windows.items()):
                        lat = f"{np.median(w.latencies):6.1f} ms" if w.latencies else "     - ms"
                        missed = client.missed_per_stream.get(sid, 0)
                        print(f"{sid:>16}: {w.frames / elapsed:5.1f} frames/s  latency p50 {lat}  "
                              f"jawOpen {w.jaw:.2f}  missed {missed}")
                    windows.clear()
                    last_report = now
        except KeyboardInterrupt:
            pass
        print(f"received {client.received}, missed {client.missed}, dropped {client.dropped}, invalid {client.invalid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
