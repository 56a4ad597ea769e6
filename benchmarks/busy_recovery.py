"""`python -m benchmarks.busy_recovery`: how long a request the runtime dropped unread takes to be carried out.

A client past its share of the runtime's io thread has its requests dropped unread for up to a second, and is told
so by one `busy` (protocol/SPEC.md 4.6, "A client past its share"). A request that left before the client knew, and
that the runtime answers as it reads it (`open_stream`, `set_controls`), goes again once the answer to a `hello`
sent after it shows it unread. Each round puts the client past its share (as a burst of NPC lines would), then
times an `open_stream` and a `set_controls` that the runtime drops unread, from the call to its return, through the
Python SDK against a real Runtime on loopback (the bundled model on ONNX Runtime). Before the resend, each waited for
its call's timeout (5 s by default in the SDK) and failed.

Prints each round's times and their median; returns them (``main``).
"""

from __future__ import annotations

import argparse
import statistics
import time

from ksdiff_runtime.server.floods import CLIENT_SHARE, WINDOW_S, _Client
from ksdiff_runtime.server.runtime import Runtime, build_engine
from ksdiff_sdk import Client


def past_its_share(runtime: Runtime, stream: str) -> None:
    """As if the owner of ``stream`` had spent its share of the io thread in a window that starts now: the next
    request it sends is dropped unread, with a busy."""
    owner = runtime.sessions.get(stream).owner
    runtime.floods._clients[owner] = _Client(window_start=time.monotonic(), budget=CLIENT_SHARE, spent=10.0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each request (default 5)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds a call waits before it fails (default 120; the SDK's own default is 5)")
    args = parser.parse_args(argv)
    engine = build_engine("onnxruntime", "low-latency")
    opened: list[float] = []
    controlled: list[float] = []
    try:
        with Runtime(engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False) as runtime, \
                Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=args.timeout) as client:
            for n in range(args.rounds):
                first = client.open_stream(f"first{n}", mode="line")
                first.set_controls({})  # answered: everything before it was read
                past_its_share(runtime, f"first{n}")
                t = time.monotonic()
                second = client.open_stream(f"second{n}", mode="line")  # dropped unread: busy
                opened.append(time.monotonic() - t)
                past_its_share(runtime, f"first{n}")
                t = time.monotonic()
                second.set_controls({"mood": "happy"})  # dropped unread: busy
                controlled.append(time.monotonic() - t)
                first.close()
                second.close()
            resent, busy = client.resent, sum(e.code == "busy" for e in client.errors)
    finally:
        engine.close()
    print(f"busy window {WINDOW_S:g} s; {args.rounds} rounds; {busy} busy; {resent} requests sent again")
    for what, took in (("open_stream", opened), ("set_controls", controlled)):
        print(f"{what} dropped unread, call to return (s): " + " ".join(f"{x:.2f}" for x in took)
              + f"; median {statistics.median(took):.2f}")
    return {"busy": busy, "resent": resent, "open_stream_s": opened, "set_controls_s": controlled}


if __name__ == "__main__":
    main()
