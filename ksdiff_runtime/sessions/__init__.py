"""Stream sessions: the one registry of open streams, with one lock.

A ``Session`` is one stream from open to end: who owns it, its input stage (``InputStream``),
the 16 kHz audio waiting for the engine, its real-time budget, and its counters. Every thread
finds streams here and nowhere else:

    io thread     opens sessions for SDK clients, feeds their audio, ends them, removes them
                  once their end is published
    sources       feed the sessions of the microphone and files
    engine        takes the waiting audio, keeps its own per-stream state on ``session.state``
                  (only the engine thread touches it), and reports sessions it has finished

Bounded buffering: a session never holds more than ``max_ahead_s`` of audio beyond real time (a
client pushing faster is refused with ``busy`` until real time catches up), a fast file source
waits while the engine is behind instead of decoding the whole file into memory, and a gap on
the stream's clock is never materialised at the input rate (``InputStream``).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ksdiff_runtime.inputs.stream import AudioFormat, InputChunk, InputStream
from ksdiff_sdk import protocol

# a client may push this much audio beyond real time (an NPC line rendered faster than it plays)
DEFAULT_MAX_AHEAD_S = 20.0
# a source that reads faster than real time (a file with --fast) waits while this much is queued
SOURCE_QUEUE_S = 2.0
SOURCE_WAIT_S = 0.05


class RefusedError(Exception):
    """A request refused with a protocol error code (``busy``, ``unknown_stream``, ``forbidden``, ...)."""

    def __init__(self, code: str, message: str, stream: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.stream = code, message, stream


@dataclass
class PendingAudio:
    """16 kHz audio fed to a session, not yet taken by the engine."""

    audio: np.ndarray
    clock_end: int  # where the input received so far ends on the 16 kHz clock
    arrival_ns: int | None  # when it reached the runtime (monotonic); None: not real time (a fast file)


@dataclass(eq=False)
class Session:
    id: str
    source: str  # protocol.SOURCES: mic, file, sdk
    input: InputStream
    owner: bytes | None = None  # the SDK client (ZeroMQ routing id) that opened it; None: the runtime's own
    seed: int = 0
    text: str | None = None  # transcript, when known
    style: np.ndarray | None = None
    max_ahead_s: float = DEFAULT_MAX_AHEAD_S
    mode: str = "live"  # protocol.MODES: live (paced by real time) or line (audio already there, at speed)
    opened_ns: int = field(default_factory=time.monotonic_ns)
    # the stream's artists' controls (engine/controls.py ``Controls``; None: the engine's default). Replaced
    # whole (never mutated) by set_controls on the io thread; the engine reads it each hop.
    controls: Any = None
    # --- guarded by Sessions.lock -------------------------------------------------------------
    pending: list[PendingAudio] = field(default_factory=list)
    pending_samples: int = 0
    # real time of the stream's sample 0: its first audio's arrival (for a device's stream, the earliest any of its
    # audio implies: ``device_clock``)
    anchor_ns: int | None = None
    last_audio_ns: int = field(default_factory=time.monotonic_ns)  # for the idle timeout
    ending: bool = False  # no more audio will come (end_stream, end of file, timeout)
    end_taken: bool = False  # the engine has seen the end
    end_reason: str = "ended"  # protocol.END_REASONS
    finished: bool = False  # the engine is done with it; its end is being published
    # --- the engine thread's ----------------------------------------------------------------
    state: Any = None  # the engine's per-stream state (engine/stream.py)
    stage: Any = None  # its controls and ease to rest (engine/controls.py ControlStage)
    backlog_samples: int = 0  # audio the engine holds but has not animated yet (written each round)
    # --- the io thread's ----------------------------------------------------------------------
    frames: int = 0  # frames published
    drops: int = 0  # frames dropped before publishing (shed by the engine or cut by a full outbox)
    shed: int = 0  # of those, frames the engine skipped to stay current
    audio_seq: int = -1  # the last `audio` message's seq
    end_waiters: list[tuple[bytes, int | None]] = field(default_factory=list)  # end_stream requests to answer
    latencies: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)
    publish_times: collections.deque[int] = field(default_factory=collections.deque)
    source_obj: Any = None  # the runtime's own source (mic, file) feeding it
    source_reopen: Any = None  # () -> a new source like it, for when it is lost (a mic unplugged); None: never
    source_failed: bool = False  # its source ended it with an error (not the engine)
    source_rounds: int = 0  # reopened streams in a row before it that delivered nothing

    @property
    def format(self) -> AudioFormat:
        return self.input.format

    @property
    def device_clock(self) -> bool:
        """Its audio comes from a device (a microphone, a file played in real time) as it is captured: it is never
        ahead of real time, but the device's clock runs a little fast or slow (a cheap USB microphone's by up to
        0.1 %: 3.6 s an hour). Its sample 0 is then due at the earliest instant its audio implies, so that the drift
        never counts as audio sent ahead (which is not shed and is not refused until ``max_ahead_s``). An SDK
        stream's audio may be pushed ahead of real time: its sample 0 is due when its first audio came."""
        return self.source != "sdk"

    def ahead_s(self, now_ns: int) -> float:
        """How far the audio received runs ahead of real time (0 before any audio)."""
        if self.anchor_ns is None:
            return 0.0
        return self.input.received / self.format.sample_rate - (now_ns - self.anchor_ns) / 1e9

    def quiet_ns(self, now_ns: int) -> int:
        """How long the stream has owed audio and sent none (what the idle timeout counts): since its last
        ``audio`` message, or since real time caught up with the audio it sent ahead, whichever is later. A client
        that sent a line 20 s ahead of real time owes nothing for those 20 s."""
        owed_from = self.last_audio_ns
        if self.anchor_ns is not None:  # real time: the audio sent covers until its end
            owed_from = max(owed_from, self.anchor_ns + round(self.input.received / self.format.sample_rate * 1e9))
        return max(0, now_ns - owed_from)


# admission: (sessions open now) -> None to admit, or the reason to refuse
Admission = Callable[[int], str | None]
# streams a registry holds at most unless told otherwise (serve's max_streams default)
DEFAULT_MAX_STREAMS = 64


def stream_seed(stream_id: str) -> int:
    """The seed of a stream opened without one: a stable hash of its id (CRC-32, the same on every machine and
    run). Streams share their motion's noise only when they share a seed; with one seed for every stream, NPC
    lines spoken at once nodded their heads together (head-angle correlation 0.89 between different lines, 0.05
    with these seeds: ``python -m benchmarks.crowd``)."""
    return zlib.crc32(stream_id.encode("utf-8"))


class Sessions:
    """The registry. ``lock`` guards the id map and every session's fields marked above."""

    def __init__(self, max_streams: int = DEFAULT_MAX_STREAMS, admission: Admission | None = None) -> None:
        self.max_streams = max_streams
        self.max_streams_per_client: int | None = None  # streams one client connection may hold (None: max_streams)
        self.admission = admission
        self.lock = threading.Lock()
        self._work = threading.Condition(self.lock)  # the engine waits on it for audio or ends
        self._by_id: dict[str, Session] = {}
        self._sdk_ids = itertools.count(1)

    # --- open / find / remove ----------------------------------------------------------------
    def open(self, stream_id: str | None, source: str, fmt: AudioFormat, *, owner: bytes | None = None,
             seed: int | None = None, text: str | None = None, style: np.ndarray | None = None,
             max_ahead_s: float = DEFAULT_MAX_AHEAD_S, admit: bool = True, mode: str = "live",
             controls: Any = None) -> Session:
        """Register a new stream (``seed`` None: ``stream_seed`` of its id). Raises RefusedError: ``malformed`` (a
        reserved id), ``busy`` (the id is
        taken, the stream ceiling is reached, or, for a live stream, the measured capacity; the message says
        which)."""
        if stream_id is not None and not protocol.is_stream_id(stream_id):
            raise RefusedError("malformed", f"bad stream id {stream_id[:80]!r}: need 1..64 chars of [A-Za-z0-9_.-], "
                          "not '.' or '..'", None)
        with self.lock:
            if stream_id is None:
                stream_id = next(f"sdk-{n}" for n in self._sdk_ids if f"sdk-{n}" not in self._by_id)
            if stream_id in self._by_id:
                raise RefusedError("busy", f"stream {stream_id!r} is already open", stream_id)
            if len(self._by_id) >= self.max_streams:
                raise RefusedError("busy", f"the runtime serves at most {self.max_streams} streams (max_streams); "
                              "retry later", stream_id)
            per_client = self.max_streams_per_client
            if owner is not None and per_client is not None and self._held_by(owner) >= per_client:
                raise RefusedError("busy", f"this connection holds {per_client} streams already, as many as one client "
                                   "may (max_streams_per_client); end one first", stream_id)
            # a line is not real time: it runs in the machine's spare rounds for the short time its animation
            # takes, so measured capacity does not refuse it; while it runs it counts against live streams (a line
            # opened ahead of its audio does not: it costs nothing yet, and NPCs' lines opened early refused a mic)
            if admit and self.admission is not None and mode == "live":
                reason = self.admission(sum(not s.finished and (s.mode == "live" or s.input.received > 0)
                                            for s in self._by_id.values()))
                if reason is not None:
                    raise RefusedError("busy", f"stream {stream_id!r} refused: {reason}; retry later", stream_id)
            seed = stream_seed(stream_id) if seed is None else seed
            session = Session(stream_id, source, InputStream(fmt), owner=owner, seed=seed, text=text, style=style,
                              max_ahead_s=max_ahead_s, mode=mode, controls=controls)
            self._by_id[stream_id] = session
        return session

    def held_by(self, owner: bytes) -> int:
        """How many streams the client ``owner`` holds (ending ones included: their requests are still its)."""
        with self.lock:
            return self._held_by(owner)

    def _held_by(self, owner: bytes) -> int:
        return sum(s.owner == owner for s in self._by_id.values())

    def get(self, stream_id: str) -> Session | None:
        with self.lock:
            return self._by_id.get(stream_id)

    def owned(self, stream_id: str, client: bytes) -> Session:
        """The open stream ``stream_id`` if ``client`` may feed or end it; RefusedError otherwise."""
        session = self.get(stream_id)
        if session is None or session.ending or session.finished:
            raise RefusedError("unknown_stream", f"no open stream {stream_id!r}", stream_id)
        if session.owner is None:
            raise RefusedError("forbidden", f"stream {stream_id!r} is fed by the runtime's {session.source}, not by "
                          "clients", stream_id)
        if session.owner != client:
            raise RefusedError("forbidden", f"stream {stream_id!r} belongs to the client that opened it", stream_id)
        return session

    def remove(self, session: Session) -> None:
        with self.lock:
            if self._by_id.get(session.id) is session:
                del self._by_id[session.id]
            self._work.notify_all()

    def __iter__(self) -> Iterator[Session]:
        with self.lock:
            return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        with self.lock:
            return len(self._by_id)

    # --- audio in ------------------------------------------------------------------------------
    def feed(self, session: Session, pcm: bytes | np.ndarray, at_sample: int | None = None,
             arrival_ns: int | None = None) -> None:
        """Convert a chunk and queue it for the engine. ``arrival_ns``: when it reached the runtime
        (None for audio that is not real time). Raises BadAudioError (the stream goes on) or
        RefusedError(busy) when the chunk would put the stream more than ``max_ahead_s`` ahead of real
        time (nothing is taken: resend it later)."""
        now = time.monotonic_ns()
        session.input.check_gap(at_sample)  # a gap no resend fills is bad audio, never "busy, resend it later"
        if arrival_ns is not None:
            nbytes = len(pcm) if isinstance(pcm, bytes | bytearray | memoryview) else \
                len(pcm) * session.format.frame_bytes
            end_s = session.input.seconds_after(nbytes, at_sample)
            with self.lock:
                anchor = session.anchor_ns if session.anchor_ns is not None else now
            ahead = end_s - (now - anchor) / 1e9
            if ahead > session.max_ahead_s:
                raise RefusedError("busy", f"stream {session.id!r}: this chunk would put it {ahead:.1f} s ahead of "
                                   f"real time (at most {session.max_ahead_s:g} s); nothing was taken, resend it "
                                   "later", session.id)
        chunk = session.input.feed(pcm, at_sample)  # BadAudioError leaves the stream as it was
        self._queue(session, chunk, arrival_ns, now)

    def feed_from_source(self, session: Session, pcm: np.ndarray, captured_ns: int | None,
                         stopping: threading.Event) -> None:
        """A source's chunk (its own thread, so it may wait): a source faster than real time waits while
        SOURCE_QUEUE_S of audio waits for the engine, so a long file is never decoded into memory at once."""
        limit = int(SOURCE_QUEUE_S * 16_000)
        with self._work:
            while (captured_ns is None and session.pending_samples + session.backlog_samples > limit
                   and not session.finished and not stopping.is_set()):
                self._work.wait(SOURCE_WAIT_S)
        self.feed(session, pcm, arrival_ns=captured_ns)

    def _queue(self, session: Session, chunk: InputChunk, arrival_ns: int | None, now: int) -> None:
        with self.lock:
            if session.finished or session.ending:
                raise RefusedError("unknown_stream", f"stream {session.id!r} has ended", session.id)
            if session.anchor_ns is None and arrival_ns is not None:
                session.anchor_ns = arrival_ns
            if session.device_clock and arrival_ns is not None:  # its audio so far ended at its arrival
                ended_ns = arrival_ns - round(session.input.received / session.format.sample_rate * 1e9)
                session.anchor_ns = min(session.anchor_ns, ended_ns)
            session.last_audio_ns = now  # even empty audio: the client is there (the idle timeout restarts)
            if chunk.audio.size:
                session.pending.append(PendingAudio(chunk.audio, chunk.clock_end, arrival_ns))
                session.pending_samples += chunk.audio.size
            self._work.notify_all()

    def end(self, session: Session, reason: str = "ended", flush: bool = True) -> bool:
        """No more audio: the resampler's tail (``flush``: only from the thread that feeds the session) goes
        to the engine, which finishes the stream's frames. False when it was already ending.

        The tail is queued in the same step that marks the end, so the engine never takes the end before the
        tail (it did: a resampled stream's tail then reached a stream already ended, which failed it)."""
        with self.lock:
            if session.ending or session.finished:
                return False
        tail = session.input.flush() if flush else None  # outside the lock: it resamples
        with self.lock:
            if session.ending or session.finished:  # ended meanwhile by another thread (a timeout, a shutdown)
                return False
            session.ending, session.end_reason = True, reason
            if tail is not None:
                session.pending.append(PendingAudio(tail.audio, tail.clock_end, None))
                session.pending_samples += tail.audio.size
            self._work.notify_all()
        return True

    # --- the engine's side -----------------------------------------------------------------------
    def take(self) -> list[tuple[Session, list[PendingAudio], bool]]:
        """Every open session with the audio queued for it (now taken) and whether its end is new."""
        with self.lock:
            out = []
            for s in self._by_id.values():
                if s.finished:
                    continue
                end_now = s.ending and not s.end_taken
                s.end_taken = s.end_taken or end_now
                out.append((s, s.pending, end_now))
                # the audio moves to the engine: still waiting for it until the round says otherwise
                s.backlog_samples += s.pending_samples
                s.pending, s.pending_samples = [], 0
            self._work.notify_all()  # sources waiting for room
            return out

    def finish(self, session: Session) -> None:
        """The engine is done with a session (its end is published next); audio for it is refused."""
        with self.lock:
            session.finished = True
            self._work.notify_all()

    def wait_for_work(self, timeout: float) -> None:
        """Block until some session has audio or an end queued, or the timeout passes."""
        with self._work:
            self._work.wait_for(lambda: any((s.pending or (s.ending and not s.end_taken)) and not s.finished
                                            for s in self._by_id.values()), timeout)

    def notify(self) -> None:
        with self.lock:
            self._work.notify_all()


