"""A scripted stand-in for ksdiff-runtime on real ZeroMQ sockets (PUB + ROUTER on loopback).

It speaks the wire protocol through ``ksdiff_sdk.protocol`` (the reference codec): answers hello,
open_stream, audio and end_stream like the runtime (frames are published on end_stream, as many
as the pushed audio covers), publishes hello every ``hello_period`` seconds, and lets a test
publish anything (valid or not) and override replies (``on_request``; ``answer`` gives a request its
default replies, e.g. late, with another's). One thread owns both sockets.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from ksdiff_sdk import protocol, schema

Replies = list[bytes]


def frame_message(
    stream: str, seq: int, index: int | None = None, fps: int = 30, last: bool = False, jaw: float | None = None
) -> tuple[bytes, bytes]:
    """(topic, payload) of a valid frame; jawOpen follows the index so tests can tell frames apart."""
    index = seq if index is None else index
    bs = np.zeros(schema.NUM_BLENDSHAPES, np.float32)
    bs[schema.BLENDSHAPE_INDEX["jawOpen"]] = (index % 10) / 10 if jaw is None else jaw
    return protocol.encode_frame(
        stream, seq, index, fps, index / fps, bs, np.zeros(3), np.zeros(4),
        captured_ns=1_000_000_000 + index * 1_000_000, published_ns=1_100_000_000 + index * 1_000_000,
        lookahead_ms=100.0, compute_ms=5.0, last=last,
    )


class FakeRuntime:
    def __init__(
        self,
        pub: str = "tcp://127.0.0.1:*",
        router: str = "tcp://127.0.0.1:*",
        instance: str | None = "instance-A",
        hello_period: float = 0.02,
        fps: int = 30,
    ) -> None:
        self.instance = instance
        self.hello_period = hello_period
        self.fps = fps
        self.pub_endpoint = pub
        self.router_endpoint = router
        # request -> replies to send instead of the default behaviour (None: default)
        self.on_request: Callable[[dict[str, Any]], Replies | None] | None = None
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # every decoded request, in arrival order
        self.open_streams: dict[str, dict[str, Any]] = {}  # stream -> {"open": request, "samples": n}
        self.audio: dict[str, list[dict[str, Any]]] = {}  # stream -> its audio messages (kept after the end)
        self._out: queue.SimpleQueue[list[bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.paused = threading.Event()  # set: the ROUTER is not read (a runtime that stalls); clear it to go on
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fake-runtime", daemon=True)
        self._n_auto = 0
        self._pub: zmq.Socket | None = None  # the fake's thread's PUB, for answer()

    # --- test API ---
    def start(self) -> FakeRuntime:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake runtime did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive(), "fake runtime thread did not stop"

    def shutdown(self) -> None:
        """Like the runtime's stop(): stream_end reason shutdown for every open stream, then stop."""
        with self.lock:
            streams = list(self.open_streams)
        for sid in streams:
            self.publish(*protocol.encode_stream_end(sid, "sdk", "shutdown", 0, time.monotonic_ns()))
        self.stop()

    def publish(self, *parts: bytes) -> None:
        """Send one PUB message (any frames, valid or not), from the fake's own thread."""
        self._out.put(list(parts))

    def answer(self, msg: dict[str, Any]) -> Replies:
        """The default replies to a request (opening, ending its stream as ``_handle`` does); for an ``on_request``
        script (the fake's thread) that answers a request it held back late."""
        assert self._pub is not None and threading.current_thread() is self._thread, "call it from on_request"
        return self._default(msg, self._pub)

    def requests_of(self, mtype: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["type"] == mtype]

    def __enter__(self) -> FakeRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()

    # --- the fake's thread ---
    def _hello(self, req: int | None = None) -> bytes:
        fields = protocol.hello_fields("fake-0.1", self.fps)
        if self.instance is not None:
            fields["instance"] = self.instance
        if req is not None:
            fields["req"] = req
        return protocol.encode_message("hello", **fields)

    def _bind(self, sock: zmq.Socket, endpoint: str) -> str:
        # A port just released by a stopped fake can take a moment to be free again.
        deadline = time.monotonic() + 5
        while True:
            try:
                sock.bind(endpoint)
                return sock.getsockopt_string(zmq.LAST_ENDPOINT)
            except zmq.ZMQError as e:
                if e.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # retrying a bind, not synchronising with the client

    def _run(self) -> None:
        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        router = ctx.socket(zmq.ROUTER)
        for s in (pub, router):
            s.setsockopt(zmq.LINGER, 0)
        try:
            self.pub_endpoint = self._bind(pub, self.pub_endpoint)
            self.router_endpoint = self._bind(router, self.router_endpoint)
        except BaseException as e:
            self._error = e
            pub.close()
            router.close()
            ctx.term()
            self._ready.set()
            return
        self._pub = pub
        self._ready.set()
        next_hello = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if self.hello_period and now >= next_hello:
                    pub.send_multipart([protocol.HELLO_TOPIC, self._hello()])
                    next_hello = now + self.hello_period
                while True:
                    try:
                        pub.send_multipart(self._out.get_nowait())
                    except queue.Empty:
                        break
                if self.paused.is_set():
                    self._stop.wait(0.005)  # not reading, as a stalled runtime would not
                elif router.poll(5):
                    ident, *frames = router.recv_multipart()
                    for reply in self._handle(frames[-1] if frames else b"", pub):
                        router.send_multipart([ident, reply])
            while True:  # what was published before stop() still goes out (shutdown's stream_end)
                try:
                    pub.send_multipart(self._out.get_nowait())
                except queue.Empty:
                    break
        finally:
            pub.close(linger=1000)  # let those last messages leave (bounded)
            router.close()
            ctx.term()

    def _handle(self, payload: bytes, pub: zmq.Socket) -> Replies:
        try:
            msg = protocol.decode(payload, protocol.REQUEST_LIMITS)  # as the runtime reads them
        except protocol.ProtocolError as e:
            return [protocol.encode_error(e.code, e.message, e.message_type)]
        with self.lock:
            self.requests.append(msg)
        if self.on_request is not None:
            scripted = self.on_request(msg)
            if scripted is not None:
                return scripted
        return self._default(msg, pub)

    def _default(self, msg: dict[str, Any], pub: zmq.Socket) -> Replies:
        mtype, req = msg["type"], msg.get("req")
        if mtype == "hello":
            return [self._hello(req)]
        if mtype == "open_stream":
            self._n_auto += 1
            sid = msg.get("stream") or f"sdk-{self._n_auto}"
            with self.lock:
                if sid in self.open_streams:
                    busy = protocol.encode_error("busy", f"stream {sid!r} is open", "open_stream", stream=sid, req=req)
                    return [busy]
                self.open_streams[sid] = {"open": msg, "samples": 0}
                self.audio[sid] = []
            pub.send_multipart(list(protocol.encode_stream_start(sid, "sdk", time.monotonic_ns())))
            extra = {} if req is None else {"req": req}
            return [protocol.encode_reply("stream_opened", stream=sid, fps=self.fps, **extra)]
        sid = msg["stream"]
        with self.lock:
            state = self.open_streams.get(sid)
        if state is None:
            return [protocol.encode_error("unknown_stream", f"no open stream {sid!r}", mtype, stream=sid, req=req)]
        if mtype == "audio":
            o = state["open"]
            state["samples"] += len(msg["pcm"]) // (o["channels"] * protocol.AUDIO_FORMATS[o["format"]])
            with self.lock:
                self.audio[sid].append(msg)
            return []
        extra = {} if req is None else {"req": req}
        if mtype == "set_controls":  # taken as they are (the runtime checks them and answers the controls in force)
            return [protocol.encode_reply("controls_set", stream=sid, controls=msg["controls"], **extra)]
        # end_stream: the remaining frames, the final one last, then stream_end, then the reply
        n = state["samples"] * self.fps // state["open"]["sample_rate"]
        for i in range(n):
            pub.send_multipart(list(frame_message(sid, i, fps=self.fps, last=i == n - 1)))
        pub.send_multipart(list(protocol.encode_stream_end(sid, "sdk", "ended", n, time.monotonic_ns())))
        with self.lock:
            del self.open_streams[sid]
        return [protocol.encode_reply("stream_ended", stream=sid, frames=n, **extra)]


def wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.002)  # polling a condition with a deadline
