"""Hostile clients against the real runtime, with a good stream running beside them.

    python -m benchmarks.fuzz --requests 1000000          # ~2-4 min on 2 cores

`ksdiff-runtime serve` runs in its own process on loopback. A good client (the Python SDK) streams
the bundled speech in real time as stream `good` and counts every frame it receives. Meanwhile
fuzzer processes (niced: they stand for clients on other machines, whose CPU is not the runtime's)
send requests as fast as the runtime takes them, drawn at random from:

    random bytes           noise of any length, empty payloads
    random msgpack         any value, nested up to 200 levels, maps with any keys
    bad fields             each request type with every field in turn of the wrong type, out of range,
                           absent, or a stream id of any shape ("." and ".." included)
    multipart              2-5 ZeroMQ frames, an empty delimiter frame (a REQ socket's)
    other clients' streams audio and end_stream for `good`
    floods                 open_stream until refused, audio with gaps up to minutes, audio far ahead of
                           real time, messages over the 1 MiB limit, hello over and over

Reported: requests sent, replies by error code (an `internal` is a bug), whether serve was alive
at the end, the good stream's frames and seq gaps, its p95 latency, and serve's RSS before and after.
Results go to benchmarks/fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_sdk import Client, protocol

from .live import ServeProcess, Subscriber, machine, pcts, rss_mib

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("hello", "open_stream", "audio", "end_stream", "frame", "stats", "stream_start", "dance", "")
FIELDS = {"open_stream": ("stream", "sample_rate", "channels", "format", "transcript", "seed", "req"),
          "audio": ("stream", "seq", "at_sample", "pcm"), "end_stream": ("stream", "req"), "hello": ("req",)}
MAX_BYTES = protocol.MAX_MESSAGE_BYTES


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 8 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return rng.randint(-(2**63), 2**64 - 1)
    if kind == 3:
        return rng.choice((0.0, -1.5, 1e308, float("nan"), float("inf"), rng.random()))
    if kind == 4:
        return "".join(rng.choice("ab.-_ \u00e9\x00/") for _ in range(rng.randrange(0, 80)))
    if kind == 5:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 6:
        return rng.choice((".", "..", "good", "a" * 65, "a b", "", "sdk-1", "mic"))
    if kind == 7:
        return rng.randint(0, 300)
    if kind in (8, 9):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    return {random_value(rng, 8) if rng.random() < 0.2 else rng.choice(("v", "type", "stream", "pcm", "x")):
            random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))}


def deep(rng: random.Random) -> bytes:
    value: Any = 1
    for _ in range(rng.randrange(50, 200)):
        value = [value] if rng.random() < 0.5 else {"v": value}
    return msgpack.packb(value)


def bad_request(rng: random.Random) -> bytes:
    mtype = rng.choice(list(FIELDS))
    fields: dict[str, Any] = {"v": [1, 1], "type": mtype}
    for name in FIELDS[mtype]:
        fields[name] = {"stream": "good", "sample_rate": 16000, "channels": 1, "format": "f32le", "seq": 0,
                        "pcm": b"\0" * 8, "req": 1, "at_sample": 0, "transcript": "hi", "seed": 1}[name]
    victim = rng.choice(list(fields))
    action = rng.randrange(4)
    if action == 0:
        del fields[victim]
    elif action == 1:
        fields[victim] = random_value(rng)
    elif action == 2:
        fields[victim] = rng.choice((-1, 2**64 - 1, -(2**63), 0, 7, 10**9, ".", "..", "mp3", b"f32le", 16000.0))
    else:
        fields["v"] = rng.choice(([1], [2, 0], [1, -1], "1.1", None, [1, 1, 1]))
    return msgpack.packb(fields, use_bin_type=rng.random() < 0.8)


def flood(rng: random.Random, n: int) -> list[bytes] | bytes:
    kind = rng.randrange(6)
    sid = f"fz{rng.randrange(4)}"
    if kind == 0:
        return protocol.encode_request("open_stream", stream=sid, sample_rate=rng.choice((8000, 48000, 192000)),
                                       channels=rng.randint(1, 8), format="s16le")
    if kind == 1:  # a gap of up to minutes on a 192 kHz x 8 stream: never allocated, refused beyond 10 s
        return protocol.encode_request("audio", stream=sid, seq=n, at_sample=rng.randrange(0, 192_000 * 300),
                                       pcm=b"\0" * 16 * rng.randrange(0, 100))
    if kind == 2:  # far ahead of real time
        return protocol.encode_request("audio", stream=sid, seq=n, pcm=b"\0" * (2 * rng.randrange(1, 400_000)))
    if kind == 3:  # over the limit
        return msgpack.packb({"v": [1, 1], "type": "audio", "stream": sid, "seq": n,
                              "pcm": b"\0" * (MAX_BYTES + rng.randrange(1, 1000))})
    if kind == 4:
        return protocol.encode_request("end_stream", stream=sid, req=n % 1000)
    return protocol.encode_request("hello", req=n % 1000)


def one_request(rng: random.Random, n: int) -> bytes | list[bytes]:
    r = rng.random()
    if r < 0.15:
        return rng.randbytes(rng.randrange(0, 2000))
    if r < 0.30:
        return msgpack.packb(random_value(rng), use_bin_type=True)
    if r < 0.33:
        return deep(rng)
    if r < 0.63:
        return bad_request(rng)
    if r < 0.68:
        return [rng.randbytes(rng.randrange(0, 50)) for _ in range(rng.randint(2, 5))] if rng.random() < 0.7 else \
            [b"", protocol.encode_request("hello")]
    if r < 0.75:  # another client's stream
        if rng.random() < 0.5:
            return protocol.encode_request("audio", stream="good", seq=n, pcm=b"\0" * 320)
        return protocol.encode_request("end_stream", stream="good")
    return flood(rng, n)


def fuzzer(router: str, count: int, seed: int, results: mp.Queue) -> None:
    """Send ``count`` hostile requests, reading replies as they come; report the codes seen. Niced: these
    processes stand for clients on other machines, whose CPU is not the runtime's to lose."""
    os.nice(19)
    rng = random.Random(seed)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.SNDTIMEO, 5000)  # the runtime reads as fast as it can; never hang forever
    dealer.connect(router)
    codes: dict[str, int] = {}
    sent = timeouts = 0

    def drain() -> None:
        while dealer.poll(0):
            try:
                msg = protocol.decode(dealer.recv())
                key = msg.get("code", msg["type"])
            except protocol.ProtocolError as e:
                key = f"undecodable reply ({e.code})"
            codes[key] = codes.get(key, 0) + 1

    for n in range(count):
        payload = one_request(rng, n)
        try:
            if isinstance(payload, list):
                dealer.send_multipart(payload)
            else:
                dealer.send(payload)
            sent += 1
        except zmq.Again:
            timeouts += 1
        if n % 64 == 0:
            drain()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if dealer.poll(200):
            drain()
        else:
            break
    dealer.close()
    ctx.term()
    results.put({"sent": sent, "send_timeouts": timeouts, "replies": codes})


def good_stream(client: Client, audio: np.ndarray, stop: threading.Event, out: dict[str, Any]) -> None:
    """Stream `good` in real time (20 ms pushes) until ``stop``; every frame counted into ``out``."""
    handle = client.open_stream("good", sample_rate=motion.SAMPLE_RATE)
    step = motion.SAMPLE_RATE // 50
    t0 = time.monotonic()
    k = 0
    while not stop.is_set():
        due = t0 + k * step / motion.SAMPLE_RATE
        if due > time.monotonic():
            time.sleep(due - time.monotonic())  # pacing like a microphone, not synchronisation
        start = (k * step) % (audio.size - step)
        handle.push(audio[start : start + step])
        k += 1
    total = handle.end(timeout=60)
    frames = list(handle.frames(timeout=60))
    handle.close()
    lat = [f.latency_ms for f in frames if f.latency_ms is not None]
    out.update({"frames_expected": total, "frames_received": len(frames), "latency_ms": pcts(lat),
                "audio_s": round(k * step / motion.SAMPLE_RATE, 1)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1_000_000, help="hostile requests in all (default 1,000,000)")
    p.add_argument("--processes", type=int, default=2, help="fuzzer processes (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "fuzz.json", help="results file")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "fuzz", help="serve's log")
    args = p.parse_args(argv)

    audio, _ = load_audio(SAMPLE_SPEECH)
    sub = Subscriber()
    serve = ServeProcess(["--backend", "onnxruntime", "--idle-timeout-s", "2"], args.work / "serve.log").start(sub)
    rss_before = rss_mib(serve.pid)
    results: mp.Queue = mp.Queue()
    per = args.requests // args.processes
    procs = [mp.Process(target=fuzzer, args=(serve.router, per, args.seed + i, results), daemon=True)
             for i in range(args.processes)]
    t0 = time.monotonic()
    good: dict[str, Any] = {}
    with Client(serve.pub, serve.router, streams="good", timeout=30) as client:
        client.wait_for_runtime(timeout=60)
        stop = threading.Event()
        streamer = threading.Thread(target=good_stream, args=(client, audio, stop, good), daemon=True)
        streamer.start()
        for proc in procs:
            proc.start()
        fuzz = [results.get(timeout=3600) for _ in procs]  # each fuzzer's report, once it has sent everything
        elapsed = time.monotonic() - t0
        stop.set()
        streamer.join(timeout=120)
        gaps = client.missed
    for proc in procs:
        proc.join(timeout=30)
    alive = serve.proc is not None and serve.proc.poll() is None
    rss_after = rss_mib(serve.pid) if alive else float("nan")
    stop_s = serve.stop()
    sub.close()
    replies: dict[str, int] = {}
    for f in fuzz:
        for code, n in f["replies"].items():
            replies[code] = replies.get(code, 0) + n
    sent = sum(f["sent"] for f in fuzz)
    log = serve.log()
    doc = {
        "machine": machine(),
        "requests_sent": sent, "send_timeouts": sum(f["send_timeouts"] for f in fuzz),
        "seconds": round(elapsed, 1), "requests_per_s": round(sent / elapsed),
        "replies_by_code": dict(sorted(replies.items())),
        "internal_errors": replies.get("internal", 0),
        "serve_alive_at_end": alive, "serve_tracebacks": log.count("Traceback"),
        "serve_log_lines": log.count("\n"),
        "shutdown_s": round(stop_s, 2),
        "rss_mib": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        "good_stream": good | {"seq_gaps": gaps},
        "targets": {"no_crash": alive, "no_internal": replies.get("internal", 0) == 0,
                    "good_stream_no_gaps": gaps == 0 and good["frames_received"] == good["frames_expected"],
                    "a_million_requests": sent >= 1_000_000},
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("requests_sent", "seconds", "requests_per_s", "replies_by_code",
                                          "serve_alive_at_end", "serve_tracebacks", "good_stream", "targets")},
                     indent=1))
    return 0 if all(doc["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
