"""A protocol client for the runtime tests: a DEALER for requests and a SUB for what is published,
written against protocol/SPEC.md with the reference codec, on real sockets."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from ksdiff_sdk import protocol as P

TIMEOUT_S = 30.0


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
