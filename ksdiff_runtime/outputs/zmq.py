"""The ZeroMQ PUB output: every event in wire protocol v1 (protocol/SPEC.md), for the SDKs and engine clients.

It owns the PUB socket from the moment the runtime's io thread starts (the ZeroMQ guide's rule: one
thread owns a socket), and closes it when that thread ends. A PUB never blocks: at a subscriber's
high-water mark ZeroMQ drops for that subscriber only, which sees the gap in ``seq``.
"""

from __future__ import annotations

import time

import zmq

from ksdiff_runtime import __version__
from ksdiff_runtime.events import AudioLevel, Event, Frame, Hello, Stats, StreamEnded, StreamStarted
from ksdiff_sdk import protocol

PUB_SNDHWM = 10_000  # per subscriber: ~20 s of 8 streams at 60 fps before ZeroMQ drops for it


class ZmqPublisher:
    name = "zmq"

    def __init__(self, socket: zmq.Socket, fps: int) -> None:
        self.socket = socket
        self.fps = fps
        self.sent = 0

    def send(self, event: Event) -> None:
        """Publish one event; a frame gets its ``published_ns`` here (raises ProtocolError/ValueError for a
        frame that cannot be encoded, e.g. a non-finite value: the runtime drops and counts it)."""
        now = time.monotonic_ns()
        if isinstance(event, Frame):
            event.published_ns = now
            message = event.encode()
        elif isinstance(event, StreamStarted):
            message = protocol.encode_stream_start(event.stream, event.source, now, mode=event.mode,
                                                   latency_ms=event.latency_ms)
        elif isinstance(event, StreamEnded):
            message = protocol.encode_stream_end(event.stream, event.source, event.reason, event.frames, now)
        elif isinstance(event, Stats):
            message = protocol.encode_stats(event.uptime_s, event.streams, event.drops, now, refused=event.refused,
                                            capacity=event.capacity)
        elif isinstance(event, Hello):
            message = protocol.encode_hello(__version__, self.fps, instance=event.instance)
        elif isinstance(event, AudioLevel):
            return  # for local meters (the preview page); not part of the protocol
        else:
            raise TypeError(f"not an event: {type(event).__name__}")
        self.socket.send_multipart(message, flags=zmq.NOBLOCK)
        self.sent += 1

    def close(self) -> None:
        """The last messages get ``linger`` to leave (a stream's end at shutdown), then the socket closes."""
        self.socket.close()
