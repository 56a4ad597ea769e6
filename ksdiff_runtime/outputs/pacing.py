"""Pacing for the outputs that show a frame the moment it arrives: Live Link Face, VMC, VTube Studio, the preview.

The runtime publishes a frame as soon as it is computed: one a round for a `low-latency` stream, a hop's 15
at once twice a second with `quality`, and a line pushed whole at the machine's speed (a 6.84 s line's 210
frames within 0.3 s). ZeroMQ clients show each frame at its ``t_audio`` on their own audio clock (SPEC 6); the
apps behind these outputs have no such clock and show what arrives, so a line flashed past in a blink.
The pacer holds each frame until its time on its stream's clock, ``anchor + t_audio``:

- a live stream's anchor is the earliest its frames have come: frames come in batches (what one pass of the io
  thread hands over, ``next_batch``), and the first of a stream's frames in a batch came when it was computed,
  the others with it. So the first frame of each batch goes at once, and the rest of a burst (a `quality` hop)
  at their times; a late batch moves nothing (the anchor only moves earlier), and a stream whose first frames
  came late (a stall at its start) or whose audio clock runs fast is not held back. (Audio pushed ahead of real
  time in live mode is made as it comes, and goes so: a line is what holds frames for their time);
- a line's anchor is the contract a game keeps with its own audio (SPEC 4.6, ``latency_ms``): its first audio's
  arrival plus the latency stated for it, so an app shows the line in sync with audio the game starts playing
  that long after its first push. Its frames come early by design;
- a frame that is due, or late, goes at once: lateness never holds back the frames after it;
- frames on no real-time clock (no ``captured_ns``: ``serve --file --fast``) go at once, as they are made;
- a stream's other events (its audio level, its end) go once the frames before them went; an event of no stream
  goes at once;
- a stream id opened again while the last stream of that id still has frames held: those are cut to the last one.

It runs on the runtime's io thread, as the outputs do: ``put`` an event, ``due`` the events whose time has come,
and ``next_due`` says when to look again. Nothing here sleeps or sends.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ksdiff_runtime.events import Event, Frame, StreamEnded, StreamStarted


@dataclass
class _Stream:
    line: bool
    latency_s: float | None = None  # the latency stated for the stream (StreamStarted.latency_ms)
    anchor: float | None = None  # frames are due at anchor + t_audio (time.monotonic() seconds)
    paced: bool = True  # False: its frames are on no real-time clock, and go at once
    held: deque[Event] = field(default_factory=deque)
    batch: int = -1  # the batch of its last frame


def _cut(held: deque[Event]) -> list[Event]:
    """A stream's held events but its frames before the last one."""
    frames = [e for e in held if isinstance(e, Frame)]
    keep = frames[-1] if frames else None
    return [e for e in held if not isinstance(e, Frame) or e is keep]


class Pacer:
    """Holds frames for the outputs that show them as they arrive, until their time on their stream's clock."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._ready: list[Event] = []  # released by put(), handed out by the next due()
        self._batch = 0
        # events held now, all streams together: an int other threads may read (Runtime.wait_until_idle)
        self.held = 0

    def put(self, event: Event, now: float) -> None:
        stream_id = getattr(event, "stream", None)
        if stream_id is None:  # hello, stats: no stream's clock
            self._ready.append(event)
            return
        s = self._streams.get(stream_id)
        if isinstance(event, StreamStarted) and s is not None:  # its id reused before the last one's frames played
            self.held -= len(s.held)
            self._ready.extend(_cut(s.held))
            s = None
        if s is None:
            started = event if isinstance(event, StreamStarted) else None
            s = self._streams[stream_id] = _Stream(
                line=started is not None and started.mode == "line",
                latency_s=None if started is None or started.latency_ms is None else started.latency_ms / 1000.0)
        if isinstance(event, Frame):
            if s.anchor is None:
                s.anchor = now - event.t_audio
                s.paced = event.captured_ns is not None
                if s.line and s.latency_s is not None and event.captured_ns is not None:
                    s.anchor = event.captured_ns / 1e9 + s.latency_s - event.t_audio
            elif not s.line and s.batch != self._batch:
                s.anchor = min(s.anchor, now - event.t_audio)
            s.batch = self._batch
        s.held.append(event)
        self.held += 1

    def next_batch(self) -> None:
        """What is put from now on was handed over together, after what was put before."""
        self._batch += 1

    def due(self, now: float, stream: str | None = None) -> list[Event]:
        """The events whose time has come, in order (each stream's in its own order); ``stream``: look at that
        stream's only (what was just put: the others' times have not changed)."""
        out, self._ready = self._ready, []
        for stream_id in list(self._streams) if stream is None else [stream]:
            s = self._streams.get(stream_id)
            while s is not None and s.held and self._time_of(s, s.held[0]) <= now:
                event = s.held.popleft()
                self.held -= 1
                out.append(event)
                if isinstance(event, StreamEnded):
                    del self._streams[stream_id]
                    break
        return out

    def next_due(self) -> float | None:
        """When the next held event is due (time.monotonic() seconds), or None if none is held."""
        if self._ready:
            return -math.inf
        times = [self._time_of(s, s.held[0]) for s in self._streams.values() if s.held]
        return min(times, default=None)

    def drain(self) -> list[Event]:
        """Everything still held, for a runtime that stops: each stream's held frames but its last are dropped (its
        face goes to where it ends rather than racing through the rest), the other events are kept, in order."""
        out, self._ready = self._ready, []
        for s in self._streams.values():
            out.extend(_cut(s.held))
        self._streams.clear()
        self.held = 0
        return out

    @staticmethod
    def _time_of(s: _Stream, event: Event) -> float:
        if isinstance(event, Frame) and s.anchor is not None and s.paced:
            return s.anchor + event.t_audio
        return -math.inf  # its start, level and end: as soon as it is at the front
