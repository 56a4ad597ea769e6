"""A protocol client for the runtime tests: a DEALER for requests and a SUB for what is published,
written against protocol/SPEC.md with the reference codec, on real sockets."""

from __future__ import annotations

import contextlib
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import zmq
from scipy.signal import resample_poly

from ksdiff_runtime.server.floods import CLIENT_SHARE, WINDOW_S, _Client
from ksdiff_sdk import protocol as P

TIMEOUT_S = 30.0
SAMPLE_SPEECH = Path(__file__).resolve().parent.parent / "ksdiff_runtime" / "assets" / "sample_speech.wav"


class Peer:
    """A client with a DEALER and a SUB that has received at least one message (the subscription is live).

    ``rt``: anything with ``pub_endpoint`` and ``router_endpoint``; ``curve``: (server public key,
    client public key, client secret key) for a runtime that requires CurveZMQ."""

    def __init__(self, rt: Any, *subscribe: bytes, curve: tuple[bytes, bytes, bytes] | None = None,
                 wait_hello: bool = True, routing_id: bytes | None = None) -> None:
        self.ctx = zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        self.dealer = self.ctx.socket(zmq.DEALER)
        for sock in (self.sub, self.dealer):
            sock.setsockopt(zmq.LINGER, 0)
            if curve is not None:
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
        for topic in subscribe or (P.TOPIC_ROOT,):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.setsockopt(zmq.SUBSCRIBE, P.HELLO_TOPIC)
        self.sub.connect(rt.pub_endpoint)
        if routing_id is not None:  # what the runtime's ROUTER knows this client by (ZeroMQ makes one up otherwise)
            self.dealer.setsockopt(zmq.ROUTING_ID, routing_id)
        self.dealer.connect(rt.router_endpoint)
        self.seen: list[dict] = []
        if wait_hello:  # the runtime publishes hello every second: the first one proves the subscription
            self.wait_pub(lambda m: m["type"] == "hello")

    def close(self) -> None:
        self.sub.close()
        self.dealer.close()

    def send(self, payload: bytes | list[bytes]) -> None:
        if isinstance(payload, list):
            self.dealer.send_multipart(payload)
        else:
            self.dealer.send(payload)

    def reply(self, timeout: float = TIMEOUT_S) -> dict:
        assert self.dealer.poll(int(timeout * 1000)), "no reply"
        return P.decode(self.dealer.recv())

    def request(self, mtype: str, **fields: Any) -> dict:
        self.send(P.encode_request(mtype, **fields))
        return self.reply()

    def wait_pub(self, done: Callable[[dict], bool], timeout: float = TIMEOUT_S) -> list[dict]:
        """Collect published messages until ``done(message)``; returns those collected."""
        deadline = time.monotonic() + timeout
        got: list[dict] = []
        while time.monotonic() < deadline:
            if not self.sub.poll(100):
                continue
            _, payload = self.sub.recv_multipart()
            msg = P.decode(payload)
            got.append(msg)
            self.seen.append(msg)
            if done(msg):
                return got
        raise AssertionError(f"timed out; last messages: {[m['type'] for m in got[-5:]]}")


def speech(seconds: float, speech_16k: np.ndarray) -> np.ndarray:
    return np.resize(speech_16k, int(seconds * 16000)).astype(np.float32)


def push_clip(peer: Peer, stream: str, pcm: bytes, frame_bytes: int, chunk_frames: int, first_seq: int = 0) -> int:
    """Push pcm in chunks; returns the next audio seq."""
    step = chunk_frames * frame_bytes
    seq = first_seq
    for start in range(0, len(pcm), step):
        peer.send(P.encode_request("audio", stream=stream, seq=seq, pcm=pcm[start : start + step]))
        seq += 1
    return seq


def frames_of(messages: list[dict], stream: str) -> list[dict]:
    return [m for m in messages if m["type"] == "frame" and m["stream"] == stream]


def is_end(stream: str) -> Callable[[dict], bool]:
    return lambda m: m["type"] == "stream_end" and m["stream"] == stream


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``ksdiff-runtime ARGS`` as a user runs it, in its own process; its output captured as text."""
    return subprocess.run([sys.executable, "-m", "ksdiff_runtime.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


class TcpRelay:
    """A TCP relay on loopback in front of an endpoint (the runtime's ROUTER). ``hold_requests()`` keeps what the
    client sends from the runtime (a runtime that reads nothing for a while, or a deep queue), ``hold_replies()``
    what the runtime answers from the client (a reply still on its way); the connection stays up either way.
    ``cut()`` drops every connection through it, and what they held (a network that fails for a moment): ZeroMQ
    then connects again through it, a new connection for the runtime. Until it is entered it accepts nothing (the
    endpoint is out of reach: ZeroMQ's handshake waits)."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()  # _open: the accepting thread adds, cut() closes
        self._open: list[socket.socket] = []
        self.connections = 0
        self._requests = threading.Event()  # cleared: what the client sends is held
        self._replies = threading.Event()  # cleared: what the runtime sends is held
        self._requests.set()
        self._replies.set()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> TcpRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close() alone does not)
        self._listener.close()
        self.release_requests()
        self.release_replies()
        self.cut()
        self._thread.join(5)

    def hold_requests(self) -> None:
        self._requests.clear()

    def release_requests(self) -> None:
        self._requests.set()

    def hold_replies(self) -> None:
        self._replies.clear()

    def release_replies(self) -> None:
        self._replies.set()

    def cut(self) -> None:
        with self._lock:
            cut, self._open = self._open, []
        for s in cut:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return  # closed
            up = socket.create_connection(self._upstream)
            with self._lock:
                self._open += [down, up]
                self.connections += 1
            for src, dst, gate in ((down, up, self._requests), (up, down, self._replies)):
                threading.Thread(target=self._pump, args=(src, dst, gate), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, gate: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                gate.wait()
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)


def spend_share(runtime: Any, stream: str, ends_in: float = WINDOW_S) -> float:
    """As if the owner of ``stream`` had spent its share of the io thread in a window that ends in ``ends_in`` s
    (one assignment: the io thread's own charges could otherwise undo it); returns when (time.monotonic()) the
    runtime's drops end. The next request it reads is dropped, with a busy."""
    owner = runtime.sessions.get(stream).owner
    start = time.monotonic() - (WINDOW_S - ends_in)
    runtime.floods._clients[owner] = _Client(window_start=start, budget=CLIENT_SHARE, spent=10.0)
    return start + WINDOW_S


def sample_speech(seconds: float, rate: int = 16_000) -> np.ndarray:
    """``seconds`` of the bundled sample speech from its first voiced sample, float32 mono at ``rate``."""
    audio, sr = sf.read(str(SAMPLE_SPEECH), dtype="float32", always_2d=True)
    x = audio[:, 0]
    start = max(0, int(np.flatnonzero(np.abs(x) > 0.05)[0]) - sr // 20)
    n = round(seconds * sr)
    x = x[start : start + n]
    assert len(x) == n, "the sample speech is too short"
    if rate != sr:
        g = math.gcd(rate, sr)
        x = resample_poly(x, rate // g, sr // g).astype(np.float32)
    return x
