"""How much of the io thread one client may take, so a flood cannot starve the streams of others.

Every request costs the io thread time (decoding, resampling pushed audio, answering). A client's
requests are charged the time they took on the wall clock, waits for the GIL included: that is the io
thread's time no other client gets (charged its CPU time alone, one client sending 779,400 malformed
requests in 30 s never reached its share). Over a second that starts with the client's first request
(and again with its first request after that second), a client past ``CLIENT_SHARE`` of it has its
further requests dropped unread until the second ends (one ``busy`` reply tells it why). A request is
charged once it has run, so a client overruns its share by at most one request's cost, and that is bounded:
reading a request keeps within the structure limits of protocol/SPEC.md 3.5 (a payload of a million empty
arrays took ~0.5 s to decode and echo, twice a client's share, before they were checked; now well under a
millisecond), and the costliest request, 1 MiB of audio to sanitise and resample, takes ~2 ms (48 kHz stereo; 4.5 ms
before the downmix was summed a channel at a time), more while the engine holds the GIL.

A client's share grows with the streams it holds (``STREAM_SHARE`` each, up to ``MAX_CLIENT_SHARE``): it is the
streams that are fair to serve alike, not the connections. A game server feeding 16 NPCs' live streams through one
connection, in 10 ms chunks of 48 kHz stereo, spent 27 % of the io thread on a 2-core machine: with one share per
client, its audio and its end_streams were dropped (``python -m benchmarks.many_streams``). A flooder gets no more
than its streams earn, streams are bounded (max_streams, max_streams_per_client, admission), and however many it
holds, the other clients' requests keep a fifth of the io thread's time for requests.

The io thread as a whole spends at most ``IO_SHARE`` of its time on requests:
past that it stops reading requests for a moment and publishes frames, so ZeroMQ's queues push back
on the senders instead of the engine losing the CPU. A well-behaved client (an SDK pushing 10-100 ms
chunks for a few streams) uses a few percent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ksdiff_sdk import protocol

CLIENT_SHARE = 0.25  # of each second of the io thread, for one client's requests
STREAM_SHARE = 0.03  # of each second, for each stream the client holds (when that comes to more than CLIENT_SHARE)
MAX_CLIENT_SHARE = 0.4  # of each second at most, whatever the client holds (IO_SHARE less a fifth of it for others)
IO_SHARE = 0.5  # of each slice of the io thread, for requests (the rest: publishing)
SLICE_S = 0.010  # the io thread reads requests for at most IO_SHARE of this, then publishes
WINDOW_S = protocol.BUSY_WINDOW_S  # what clients are told: a busy reply's drops end within this
MAX_CLIENTS = 4096  # clients remembered; the least recently seen are forgotten beyond this
FORGET_S = 10.0


@dataclass
class _Client:
    window_start: float
    budget: float  # seconds of io time the client may spend in the current window
    spent: float = 0.0  # seconds of io time in the current window
    dropped: int = 0  # requests dropped in the current window
    last_seen: float = 0.0
    warned: bool = False  # a busy reply went out in this window


class FloodGuard:
    def __init__(self, client_share: float = CLIENT_SHARE, streams_of: Callable[[bytes], int] = lambda _: 0) -> None:
        """``streams_of(identity)``: how many streams that client holds now (the runtime's registry)."""
        self.client_budget_s = client_share * WINDOW_S
        self.streams_of = streams_of
        self.dropped = 0  # requests dropped unread since start
        self._clients: dict[bytes, _Client] = {}

    def budget_s(self, identity: bytes) -> float:
        """The io time the client may spend per window: its share, or its streams' up to MAX_CLIENT_SHARE."""
        streams = self.streams_of(identity)
        return max(self.client_budget_s, min(MAX_CLIENT_SHARE, STREAM_SHARE * streams) * WINDOW_S)

    def admit(self, identity: bytes, now: float) -> bool | None:
        """True: handle the request. None: drop it unread. False: drop it, but tell the client (busy)."""
        c = self._clients.get(identity)
        if c is None:
            if len(self._clients) >= MAX_CLIENTS:
                self._forget(now)
            c = self._clients[identity] = _Client(window_start=now, budget=self.budget_s(identity))
        c.last_seen = now
        if now - c.window_start >= WINDOW_S:
            c.window_start, c.spent, c.dropped, c.warned = now, 0.0, 0, False
            c.budget = self.budget_s(identity)
        if c.spent < c.budget:
            return True
        if not c.warned:  # over, once a window: it may have opened streams since the window began
            c.budget = self.budget_s(identity)
            if c.spent < c.budget:
                return True
        c.dropped += 1
        self.dropped += 1
        if c.warned:
            return None
        c.warned = True
        return False

    def share(self, identity: bytes) -> float:
        """The client's share of the io thread in its current window (what a busy reply tells it)."""
        c = self._clients.get(identity)
        return (c.budget if c is not None else self.client_budget_s) / WINDOW_S

    def charge(self, identity: bytes, seconds: float) -> None:
        c = self._clients.get(identity)
        if c is not None:
            c.spent += seconds

    def _forget(self, now: float) -> None:
        """Forget clients not seen for FORGET_S (or, if none, the least recently seen half)."""
        stale = [k for k, c in self._clients.items() if now - c.last_seen > FORGET_S]
        if not stale:
            by_age = sorted(self._clients, key=lambda k: self._clients[k].last_seen)
            stale = by_age[: len(by_age) // 2]
        for k in stale:
            del self._clients[k]
