"""The client: receive frames from the runtime's PUB, open streams and push audio over its ROUTER.

Threading: ZeroMQ sockets are not thread-safe, so one background I/O thread owns the SUB and
DEALER sockets (and their monitors). User threads never touch them: they put commands on a
thread-safe queue and wake the I/O thread through an inproc PAIR socket (guarded by a lock);
the I/O thread hands results back through state guarded by one condition variable, which every
waiting call waits on with a timeout. The thread holds the client only while a pass runs (not while it
polls), so a client dropped without ``close()`` is collected (by the garbage collector if it opened
streams: they and the client hold each other), and its thread then closes the sockets and stops.

Slow joiner: a SUB that connected a moment ago misses what is published before its subscription
reaches the PUB. The runtime publishes ``hello`` and ``stats`` every second, so the first message
the SUB receives after (re)connecting proves the subscription is live; ``open_stream``,
``animate`` and ``wait_for_runtime`` wait for that once (up to ~1 s) before a stream starts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import queue
import secrets
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from ksdiff_sdk import protocol, schema
from ksdiff_sdk.animation import Animation
from ksdiff_sdk.audio import (
    LINE_CHUNK_MS,
    MAX_CHUNK_MS,
    PACED_CHUNK_MS,
    audio_messages,
    chunk_frames,
    frame_bytes,
    to_pcm,
)
from ksdiff_sdk.errors import (
    BadAudioError,
    ClientClosedError,
    ForbiddenError,
    KsdiffError,
    StreamLost,
    UnknownStreamError,
    UnsupportedVersionError,
)
from ksdiff_sdk.frame import Frame
from ksdiff_sdk.protocol import DEFAULT_PUB_ENDPOINT, DEFAULT_ROUTER_ENDPOINT, ProtocolError

log = logging.getLogger("ksdiff_sdk")

DEFAULT_MAX_QUEUE = 10_000  # frames kept for recv() in every-frame mode (~5.5 min of one 30 fps stream)
LATEST_STREAMS_KEPT = 1024  # streams whose latest frame is remembered (least recently updated evicted)
SUB_RCVHWM = 20_000  # SPEC 1: >= 1000; the I/O thread drains it into the Python queues at once
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000
HEARTBEAT_IVL_MS = 1000  # ZMTP pings notice a vanished remote host (loopback notices by itself)
HEARTBEAT_TIMEOUT_MS = 3000
JOIN_TIMEOUT_S = 2.0  # close() never waits longer than this for the I/O thread
AHEAD_MARGIN_S = 0.5  # push() stays this far inside the runtime's max_ahead_s (its clock starts a little later)
_POLL_MS = 1000  # the I/O thread is woken explicitly; this only bounds a lost wakeup
_MAX_BATCH = 1000  # messages read from one socket per pass, so a busy SUB cannot starve the DEALER
RESENT_KEPT = 1000  # resent requests remembered, so the answer to a second copy changes nothing
GAVE_UP_OPENS_KEPT = 1000  # open_streams whose call gave up, remembered so a late stream_opened's stream is ended
# The reply that answers each request (or an ``error``); another type is a broken reply: MalformedError
REPLY_TO = {"hello": "hello", "open_stream": "stream_opened", "end_stream": "stream_ended",
            "set_controls": "controls_set"}
# Requests the runtime answers as it reads them (end_stream is answered once its stream has ended): one still
# unanswered when a request sent after it was answered never reached the runtime or was dropped unread (a connection's
# messages are read, and answered, in order), so it goes again (SPEC 4.6, "A client past its share")
ANSWERED_AS_READ = ("hello", "open_stream", "set_controls")
# Messages wait in the I/O thread's outbox while the runtime cannot take them (it is away: the DEALER queues only
# on a connection that is up, ZMQ_IMMEDIATE; or it stalls, its queues full). Past this, while the DEALER takes none,
# the oldest audio is dropped (counted in Client.unsent): ~4 min of a 16 kHz float32 mic. A request whose call stopped
# waiting for its reply before it left is taken out unsent (Client.withdrawn).
OUTBOX_MAX_BYTES = 16 << 20
# The lines' audio sent is kept until the runtime is known to have read it (it answered a request sent after it), up to
# this many bytes (the oldest forgotten beyond), to be sent again if the runtime says it dropped this client's requests
# unread (SPEC 4.6): every audio message carries its at_sample, so a copy of audio the runtime has is dropped there,
# and one it dropped fills its place (if no later audio of the line came first: a line has one message at a time in
# flight, below).
SENT_AUDIO_MAX_BYTES = 256 << 20
# A line's next message (audio, end_stream) leaves only once the runtime has read the one before (it answered a request
# sent after it): otherwise one dropped unread could be overtaken by the next, read once the drops ended, which the
# runtime places past the gap (filled with silence; the copy then fills nothing), or which ends the stream first. A
# ``hello`` request follows a line's message to learn that (its answer, the runtime's hello, changes nothing else),
# and a request answered as read left unanswered this long (_probe_due); one not answered within this time is taken
# as lost (dropped unread, its answer lost with a connection): another goes.
PROBE_AGAIN_S = 1.0
PROBES_KEPT = 64  # hello probes awaiting their answer, remembered (the oldest forgotten beyond: lost ones)

StreamFilter = str | Iterable[str] | None


class _Request:
    """A request waiting for its reply (matched by ``req``); ``reply`` is set by the I/O thread. ``abandoned``: its
    call stopped waiting without the reply, so it is not sent if it is still in the outbox; ``timed_out``: because
    the call timed out (counted in ``Client.withdrawn`` then), not because it needed the reply no more."""

    __slots__ = ("abandoned", "failed", "line", "mtype", "payload", "reply", "req", "sent_at", "sent_no", "stream",
                 "timed_out")

    def __init__(self, req: int, mtype: str, payload: bytes, line: StreamHandle | None = None,
                 stream: str | None = None) -> None:
        self.req = req
        self.mtype = mtype
        self.payload = payload
        self.line = line  # the line it is of (end_stream, set_controls): it leaves after the line's audio is read
        self.stream = stream  # the stream it names, if any
        self.reply: dict[str, Any] | None = None
        self.failed: KsdiffError | None = None  # what its call raises, decided here (not answered by the runtime)
        self.abandoned = False
        self.timed_out = False
        self.sent_at = time.monotonic()  # when its call queued it, the I/O thread sent it, or last sent it again
        # the number of the DEALER message it first left as (the I/O thread's count): its answer proves the runtime
        # read every message up to that one (a connection's messages are read in order)
        self.sent_no: int | None = None


# Waiting for the DEALER to take them: (audio?, message, the request it is: None for audio and fire-and-forget ones,
# the line whose audio or end_stream it is: one at a time in flight; a line's audio is kept once sent, to go again after
# a busy; None for anything else)
Outbox = deque[tuple[bool, bytes, "_Request | None", "StreamHandle | None"]]
# for the I/O thread: ("send" | "audio" | "sub" | "unsub" | ..., argument); a line's audio: ("audio", (message, line))
Command = tuple[str, "bytes | _Request | tuple[bytes, StreamHandle]"]


def _forget_sent(io: _Io, read: int) -> None:
    """The lines' audio the runtime is known to have read (message numbers up to ``read``), and the oldest beyond
    SENT_AUDIO_MAX_BYTES, forgotten (on every pass)."""
    while io.sent_audio and (io.sent_audio[0][0] <= read or io.sent_audio_bytes > SENT_AUDIO_MAX_BYTES):
        io.sent_audio_bytes -= len(io.sent_audio.popleft()[2])


def _probe_due(io: _Io, read_no: int) -> float | None:
    """When (time.monotonic()) the next hello probe is due, whose answer says the runtime read every message before
    it (``read_no``: the last known read); None while none is wanted. One follows the lines' messages at once (a
    line's next one waits for it), and a request answered as read (ANSWERED_AS_READ) unanswered for PROBE_AGAIN_S:
    dropped unread in a busy's window (which ends BUSY_WINDOW_S after the busy came, so after the request left; no
    probe leaves before), or lost with a connection that dropped. A probe unanswered for PROBE_AGAIN_S is taken as
    lost too, and another follows."""
    due = math.inf
    for no, first in ((io.line_sent_no, 0.0), (io.request_sent_no, io.request_sent_at + PROBE_AGAIN_S)):
        if no > read_no:
            due = min(due, io.probe_at + PROBE_AGAIN_S if io.probe_no >= no else first)
    return None if due == math.inf else due


def _drop_audio(outbox: Outbox, size: int, limit: int) -> tuple[Outbox, int, int]:
    """The outbox less its oldest audio messages, down to ``limit`` bytes: live streams' first (a live stream wants the
    present; a mic pushing faster than the runtime takes it filled the outbox and took the lines' audio with it), the
    lines' only if that is not enough (every frame of a line is wanted, however late). Requests are kept: they are
    small, and a request whose call times out is withdrawn on its own. Its size then, and how many were dropped."""
    dropped = 0
    for lines_too in (False, True):
        kept: Outbox = deque()
        for entry in outbox:
            audio, payload, _, line = entry
            if audio and size > limit and (lines_too or line is None):
                size -= len(payload)
                dropped += 1
            else:
                kept.append(entry)
        outbox = kept
    return outbox, size, dropped


def curve_keys(server_key: str | bytes | os.PathLike | None,
               client_key: str | os.PathLike | tuple[bytes, bytes] | None) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) Z85 keys from keys or ZeroMQ certificate files."""
    if server_key is None and client_key is None:
        return None
    if server_key is None or client_key is None:
        raise ValueError("CurveZMQ needs both the runtime's public key (server_key) and this client's key pair "
                         "(client_key)")
    if isinstance(server_key, str | bytes) and len(server_key) == 40 and not os.path.exists(server_key):
        server_public = server_key.encode("ascii") if isinstance(server_key, str) else server_key
    else:
        server_public, _ = _certificate(server_key)
    if isinstance(client_key, tuple):
        public, secret = client_key
    else:
        public, secret = _certificate(client_key)
        if secret is None:
            raise ValueError(f"{client_key} holds no secret key: give this client's .key_secret file")
    if not zmq.has("curve"):
        raise ValueError("this libzmq was built without CURVE support")
    return server_public, public, secret


def _certificate(path: str | bytes | os.PathLike) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(os.fsdecode(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the ZeroMQ certificate {os.fsdecode(path)}: {e}") from None


def face_controls(controls: dict[str, Any] | None, mood: str | None = None, intensity: float | None = None,
                  style: str | None = None) -> dict[str, Any] | None:
    """``controls`` with the mood (protocol 1.3) and style (1.4) settings given; ValueError naming the moods or
    styles for one that is not (the runtime checks the intensity's range: bad_controls)."""
    if mood is None and intensity is None and style is None:
        return controls
    out = dict(controls or {})
    if mood is not None:
        if mood not in schema.MOODS:
            raise ValueError(f"mood must be one of {', '.join(schema.MOODS)}; got {mood!r}")
        out["mood"] = mood
    if intensity is not None:
        out["mood_intensity"] = float(intensity)
    if style is not None:
        if style not in schema.STYLES:
            raise ValueError(f"style must be one of {', '.join(schema.STYLES)}; got {style!r}")
        out["style"] = style
    return out


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)  # NaN stays NaN: _wait_for refuses it


def _wait_for(cv: threading.Condition, predicate: Callable[[], object], timeout: float | None) -> bool:
    """``cv.wait_for`` for a call's ``timeout``: None, ``math.inf`` or one longer than the platform can wait
    (``threading.TIMEOUT_MAX``, ~292 years: Condition.wait_for raised OverflowError) wait without limit; NaN is a
    ValueError. Every wait of a call goes through here."""
    if timeout is not None and math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds (or None), got nan")
    if timeout is not None and timeout >= threading.TIMEOUT_MAX:
        timeout = None
    return cv.wait_for(predicate, timeout)


def _open_fields(stream: str | None, sample_rate: int, channels: int, format: str, transcript: str | None,
                 seed: int | None, mode: str | None, controls: dict[str, Any] | None) -> dict[str, Any]:
    """An ``open_stream`` request's fields; ValueError for arguments the protocol refuses (here, not as a reply)."""
    fields: dict[str, Any] = {"sample_rate": int(sample_rate), "channels": int(channels), "format": format}
    for key, value in (("stream", stream), ("transcript", transcript), ("seed", seed), ("mode", mode),
                       ("controls", controls)):
        if value is not None:
            fields[key] = value
    try:
        protocol.encode_request("open_stream", **fields)
    except ProtocolError as e:
        raise ValueError(e.message) from None
    return fields


class StreamHandle:
    """A stream this client opened (``Client.open_stream``): push audio, end it, read its frames.

    Use it from one thread at a time. Errors the runtime reports for ``audio`` messages arrive
    asynchronously: they are kept in ``errors`` and raised by the next ``push``/``end``. If the
    runtime restarts or shuts down, every later call raises ``StreamLost``."""

    def __init__(
        self,
        client: Client,
        stream: str,
        fps: int,
        sample_rate: int,
        channels: int,
        format: str,
        instance: str | None,
        max_frames: int | None,
        max_ahead_s: float | None = None,
        mode: str = "live",
        latency_ms: float | None = None,
    ) -> None:
        self.stream = stream
        self.fps = fps
        self.sample_rate = sample_rate
        self.channels = channels
        self.format = format
        self.instance = instance  # the runtime instance that holds the stream (None: it sent none)
        # how far beyond real time the runtime buffers this stream's audio (None: a 1.0 runtime, no limit)
        self.max_ahead_s = max_ahead_s
        self.mode = mode  # "live" or "line" (protocol 1.2)
        # the latency the runtime states for this stream (1.2; None: an older runtime): start playing its
        # audio this long after you start pushing it and the frames are there in time (ksdiff_sdk.sync)
        self.latency_ms = latency_ms
        self._end_request: _Request | None = None  # the end_stream sent, once it was
        self.errors: list[KsdiffError] = []  # every error reported for this stream, raised or not
        self.dropped = 0  # frames discarded because frames() was not read (bounded queue)
        self.total_frames: int | None = None  # the runtime's count, once the stream ended
        self.end_reason: str | None = None  # the stream_end reason, once published
        self._client = client
        self._topic = protocol.frame_topic(stream)
        # guarded by client._cv (the I/O thread writes them)
        self._frames: deque[Frame] = deque(maxlen=max_frames)
        self._finished = False  # stream_end seen on the SUB: no more frames will come
        self._lost: StreamLost | None = None
        self._raised = 0  # errors[:_raised] were already raised
        self._ending = False  # end_stream sent: a stream_end "ended" is expected
        self._ended = False
        self._released = False
        # only the user's thread touches these
        self._seq = 0
        self._next_sample = 0
        self._t0: float | None = None  # when the first audio was sent: the stream's real-time clock
        # only the I/O thread touches this: the number of this line's last message that left (0: none yet)
        self._sent_no = 0

    # --- called by the I/O thread, under client._cv ---
    def _on_frame(self, frame: Frame) -> None:
        if self._frames.maxlen is not None and len(self._frames) == self._frames.maxlen:
            self.dropped += 1
        self._frames.append(frame)

    def _on_stream_end(self, msg: dict[str, Any]) -> None:
        self._finished = True
        self.end_reason = msg["reason"]
        if self.total_frames is None:
            self.total_frames = msg["frames"]
        if (msg["reason"] != "ended" or not self._ending) and self._lost is None:
            self._lost = StreamLost(self.stream, msg["reason"], f"the runtime ended stream {self.stream!r} "
                                    f"(reason {msg['reason']!r}); open a new stream to go on")

    def _on_restart(self, instance: str) -> None:
        if self.instance is not None and self.instance != instance and not (self._finished or self._ended):
            self._lost = StreamLost(self.stream, "restart", f"the runtime restarted (instance {self.instance!r} -> "
                                    f"{instance!r}) and lost stream {self.stream!r}; open a new stream to go on")

    def _on_error(self, err: KsdiffError) -> None:
        self.errors.append(err)
        if err.code == "forbidden":
            self._reconnected()

    def _reconnected(self) -> None:
        """This client's connection to the runtime dropped (ZeroMQ makes a new one, with another routing id), and
        the runtime keeps the stream for the old one: seen on the DEALER's monitor, or as a ``forbidden`` refusal
        of the stream's own audio or requests."""
        if self._lost is None and not (self._ended or self._finished):
            self._lost = StreamLost(self.stream, "reconnect", f"the connection to the runtime dropped; a runtime "
                                    f"still running keeps stream {self.stream!r} for that connection (it ends it after "
                                    "its idle timeout), one that restarted has lost it; open a new stream, with "
                                    "another id, to go on")

    # --- user API ---
    @property
    def lost(self) -> StreamLost | None:
        """The StreamLost error if the runtime lost this stream, else None."""
        with self._client._cv:
            return self._lost

    @property
    def ended(self) -> bool:
        with self._client._cv:
            return self._ended

    def _check(self) -> None:
        """Raise what the runtime reported since the last call: lost stream, or an async error."""
        with self._client._cv:
            if self._lost is not None:
                raise self._lost
            if len(self.errors) > self._raised:
                err = self.errors[self._raised]
                self._raised = len(self.errors)
                raise err

    def push(self, pcm: np.ndarray | bytes | bytearray | memoryview, at_sample: int | None = None) -> None:
        """Send audio: numpy float (-1..1) or int16 shaped [n] or [n, channels], or bytes already in
        the stream's format. Converted to the stream's format and sent in <= 100 ms messages (a line's:
        up to 10 s, under the message size limit; what has to wait for real time, 250 ms ones).

        ``at_sample``: where the first sample frame goes on the stream's clock (default: right after
        the previous push); a gap is filled with silence by the runtime. Never blocks on the runtime,
        but keeps within ``max_ahead_s`` of real time (the runtime refuses audio further ahead): a
        long clip pushed at once is sent as fast as that allows, so this call returns once the clip's
        end is at most ``max_ahead_s`` ahead of the stream's first push (its clock's start: a first push placed later
        than sample 0 sends an empty message at sample 0 first, which starts the runtime's clock with ours)."""
        self._check()
        with self._client._cv:
            ending = self._ended or self._ending
        if ending:  # the runtime takes no audio after end_stream: refused here, not dropped there unseen
            raise UnknownStreamError("unknown_stream", "the stream was ended (end() was called); open a new one",
                                     stream=self.stream)
        data = to_pcm(pcm, self.channels, self.format)
        n = len(data) // frame_bytes(self.channels, self.format)
        if n == 0:
            return
        start = self._next_sample if at_sample is None else int(at_sample)
        if start - self._next_sample > protocol.MAX_GAP_S * self.sample_rate:
            # the runtime refuses it (bad_audio); paced to real time, it waited that long first (hours for a far one)
            gap_s = (start - self._next_sample) / self.sample_rate
            raise BadAudioError("bad_audio", f"at_sample {start} is {gap_s:.1f} s past the audio pushed so far (at "
                                f"most {protocol.MAX_GAP_S} s is filled with silence); nothing was sent",
                                stream=self.stream)
        max_ms = LINE_CHUNK_MS if self.mode == "line" else MAX_CHUNK_MS
        fb = frame_bytes(self.channels, self.format)
        # how far ahead of real time the audio may go (max_ahead_s None: a 1.0 runtime, no limit)
        room = math.inf if self.max_ahead_s is None else max(0.1, self.max_ahead_s - AHEAD_MARGIN_S)
        t0 = time.monotonic() if self._t0 is None else self._t0
        seq = self._seq
        batch: list[bytes] = []
        try:  # every message is encoded before one is sent or the clock starts: a push refused here changes nothing
            if self._t0 is None and start > 0:
                # the runtime's clock starts with the stream's first message: start it now, as ours
                batch.append(protocol.encode_request("audio", stream=self.stream, seq=self._seq, at_sample=0, pcm=b""))
                self._seq += 1
            # what may go now goes at once; the rest, as real time makes room for it, in short messages
            now_n = n
            if self.max_ahead_s is not None:
                now_n = min(n, max(0, int((room + time.monotonic() - t0) * self.sample_rate) - start))
            messages, ends = self._messages(data[: now_n * fb], start, max_ms)
            later, later_ends = self._messages(data[now_n * fb :], start + now_n, min(max_ms, PACED_CHUNK_MS))
        except ProtocolError:
            self._seq = seq
            raise
        self._t0 = t0
        self._next_sample = max(self._next_sample, start + n)
        for message, end in zip(messages + later, ends + later_ends, strict=True):
            wait = end / self.sample_rate - room - (time.monotonic() - self._t0)
            if wait > 0:  # this chunk would be too far ahead: send what is allowed, let real time pass
                if batch:
                    self._client._send(batch, audio=True, line=self if self.mode == "line" else None)
                    batch = []
                time.sleep(wait)  # pacing audio to real time, as a live source would
                self._check()
            batch.append(message)
        self._client._send(batch, audio=True, line=self if self.mode == "line" else None)

    def _messages(self, data: bytes, start: int, max_ms: int) -> tuple[list[bytes], list[int]]:
        """``audio`` messages of ``data`` from sample ``start`` on (numbered on from the last sent), and where
        each one's audio ends on the stream's clock."""
        messages = audio_messages(self.stream, data, self.sample_rate, self.channels, self.format, self._seq, start,
                                  max_ms)
        self._seq += len(messages)
        step = chunk_frames(self.sample_rate, self.channels, self.format, max_ms)
        n = len(data) // frame_bytes(self.channels, self.format)
        return messages, [start + min((k + 1) * step, n) for k in range(len(messages))]

    def end(self, timeout: float | None = None, *, wait: bool = True) -> int | None:
        """Send end_stream and wait for ``stream_ended``; returns the stream's total frames.

        The runtime publishes the remaining frames (the final one with ``last``) before it replies.
        Audio errors not raised yet are raised after the stream ended (so it never stays open).
        ``wait=False``: send it and return None at once (a game that pushed a whole line ends it at once,
        so its tail is animated too, and goes on rendering); a later ``end()`` waits for the reply."""
        with self._client._cv:
            if self._ended:
                return int(self.total_frames or 0)
            if self._lost is not None:
                raise self._lost
            self._ending = True
            request = self._end_request
        if request is None:
            request = self._end_request = self._client._start_request(
                "end_stream", {"stream": self.stream}, line=self if self.mode == "line" else None)
        if not wait:
            return None
        timeout = self._client.timeout if timeout is None else timeout
        try:
            # the stream_end published before the reply ends the wait too: the reply can be lost with a connection
            reply = self._client._await(request, timeout, "end_stream",
                                        stop=lambda: self._lost is not None or self._finished, keep=True)
        except ForbiddenError:
            with self._client._cv:
                self._reconnected()
                raise self._lost from None
        with self._client._cv:
            if reply is None and self._lost is not None:
                raise self._lost
            self._ended = True
            if reply is not None:
                self.total_frames = int(reply["frames"])
        self._check()
        return int(self.total_frames or 0)

    @property
    def started_at(self) -> float | None:
        """When this stream's first audio was pushed (``time.monotonic()``): the start of its real-time clock."""
        return self._t0

    def take_frames(self) -> list[Frame]:
        """The frames that arrived and were not read yet, without waiting (a game loop's per-tick read)."""
        with self._client._cv:
            frames = list(self._frames)
            self._frames.clear()
        return frames

    def set_controls(self, controls: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Change this stream's artists' controls from its next hop on (protocol 1.2 ``set_controls``): e.g.
        ``{"strength": {"mouth": 1.2}, "shapes": {"jawOpen": {"gain": 1.1}}, "timing_offset_ms": -30}``;
        the settings given replace those, the rest stay. Returns the stream's controls now, in full.
        Raises BadControlsError (the message names the bad setting), TimeoutError."""
        self._check()
        try:
            return self._client.set_controls(self.stream, controls, timeout)
        except ForbiddenError:
            with self._client._cv:
                self._reconnected()
                raise self._lost from None

    def set_mood(self, mood: str, intensity: float | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Change this stream's mood (protocol 1.3): one of ``schema.MOODS`` (neutral, happy, sad, angry,
        surprised), and how much of it (0..1; None: as it was). Returns the stream's controls now, in full."""
        return self.set_controls(face_controls(None, mood, intensity), timeout)

    def set_style(self, style: str, timeout: float | None = None) -> dict[str, Any]:
        """Change this stream's style (protocol 1.4): one of ``schema.STYLES`` (none, still, calm, natural,
        lively, animated: a built-in take whose head, brow and mouth motion the face follows). Returns the
        stream's controls now, in full."""
        return self.set_controls(face_controls(None, style=style), timeout)

    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """This stream's frames in arrival order, until the ``last`` one (or its ``stream_end``).

        ``timeout``: the longest wait for the next frame (default: the client's timeout); then
        TimeoutError. Raises StreamLost after the frames that did arrive if the runtime lost it."""
        timeout = self._client.timeout if timeout is None else timeout
        cv = self._client._cv
        while True:
            with cv:
                _wait_for(
                    cv,
                    lambda: self._frames or self._finished or self._lost or self._released or self._client._closed,
                    timeout,
                )
                if self._frames:
                    frame = self._frames.popleft()
                elif self._lost is not None:
                    raise self._lost
                elif self._finished or self._released:
                    return
                elif self._client._closed:
                    raise ClientClosedError("the client was closed")
                else:
                    raise TimeoutError(f"no frame of stream {self.stream!r} within {timeout:g} s")
            yield frame
            if frame.last:
                return

    def close(self) -> None:
        """End the stream (if it was not ended or lost) and stop receiving its frames.

        Waits (up to the client's timeout) for the stream's ``stream_end`` so the final frames,
        published before it, are in ``frames()`` afterwards."""
        if self._released:
            return
        try:
            if not self.ended and self.lost is None:
                self.end()
            with self._client._cv:
                _wait_for(self._client._cv, lambda: self._finished or self._lost is not None or self._client._closed,
                          self._client.timeout)
        finally:
            self._client._release(self)

    def __enter__(self) -> StreamHandle:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(KsdiffError, TimeoutError, ClientClosedError):
            self.close()  # the body's exception matters more than a failure to end the stream

    def __repr__(self) -> str:
        audio = f"{self.sample_rate} Hz x{self.channels} {self.format}"
        return f"StreamHandle(stream={self.stream!r}, fps={self.fps}, {audio})"


class _Io:
    """What the I/O thread owns: its sockets, their poller, and the outbox (what waits for the DEALER). Nothing here
    holds the Client, so a Client dropped without ``close()`` is collected, and its thread then closes these."""

    def __init__(self, wake_rx: zmq.Socket, sub: zmq.Socket, dealer: zmq.Socket, monitor: zmq.Socket,
                 dealer_monitor: zmq.Socket) -> None:
        self.wake_rx, self.sub, self.dealer, self.monitor, self.dealer_monitor = \
            wake_rx, sub, dealer, monitor, dealer_monitor
        self.poller = zmq.Poller()
        for s in (wake_rx, sub, dealer, monitor, dealer_monitor):
            self.poller.register(s, zmq.POLLIN)
        self.outbox: Outbox = deque()
        self.outbox_bytes = 0
        # the lines' audio that left and the runtime may not have read yet: (its message number, when, the message,
        # its line), in the order sent
        self.sent_audio: deque[tuple[int, float, bytes, StreamHandle]] = deque()
        self.sent_audio_bytes = 0
        self.sent_no = 0  # the number of the last message the DEALER took (1, 2, ...)
        self.line_sent_no = 0  # the number of the last line's message that left
        # the number of the last request answered as the runtime reads it (ANSWERED_AS_READ) that left, and when
        self.request_sent_no = 0
        self.request_sent_at = 0.0
        self.probe_no = 0  # the number of the last hello probe that left (0: none since the last busy)
        self.probe_at = 0.0  # when it left
        # the outbox holds messages that may leave now (the DEALER took no more, or what waited may go): the next poll
        # wakes when the DEALER has room (POLLOUT); not while each one waits (for the drops' end, for a line's answer)
        self.sendable = False

    def close(self) -> None:
        for s in (self.sub, self.dealer):
            with contextlib.suppress(zmq.ZMQError):
                s.disable_monitor()
        for s in (self.dealer_monitor, self.monitor, self.dealer, self.sub, self.wake_rx):
            s.close(linger=0)


def _io_thread(ref: weakref.ReferenceType[Client], ctx: zmq.Context) -> None:
    """The I/O thread: polls and passes of ``Client._io_pass`` until ``close()`` stops it. It holds the client only
    while a pass runs, so a client nobody holds any more (dropped without ``close()``) is collected: its finalizer
    closes the wake socket, and this thread closes its own sockets and the client's context instead of polling for
    good."""
    client = ref()
    io = client._open_io() if client is not None else None
    if io is None:
        return
    try:
        while client is not None:
            timeout_ms = client._io_poll_ms(io)
            # not held while waiting (nor between passes): a client the user dropped, reference cycles and all, is
            # collected meanwhile (rebinding alone would hold it throughout)
            client = None
            events = dict(io.poller.poll(timeout_ms))
            client = ref()
            if client is None or not client._io_pass(io, events):
                break
    except zmq.ContextTerminated:
        pass
    except Exception:
        log.exception("ksdiff-sdk I/O thread failed")
    finally:
        io.close()
        if client is None:
            client = ref()  # a poll that failed leaves a client that may still be there
        if client is not None:
            client._io_stopped()  # close() joins this thread, then closes the context
        else:
            ctx.term()  # the client was collected (its wake socket closed): nothing else uses the context


def _close_wake(wake_tx: zmq.Socket, lock: threading.Lock) -> None:
    """The user threads' end of the wakeup pair: closed by ``close()``, or once a client dropped unclosed is
    collected (then the I/O thread sees the client gone on its next pass)."""
    with lock:
        wake_tx.close(linger=0)


class Client:
    """Connects to a ksdiff-runtime: frames from its PUB, requests and audio to its ROUTER.

    ``streams``: None = every stream's frames; a stream id or a list of ids = only those (streams
    opened through ``open_stream`` always reach their handle). ``latest_only``: keep just the
    newest frame of each stream (for a renderer that samples at its own rate); otherwise every
    frame is queued for ``recv`` (bounded by ``max_queue``: the oldest are dropped and counted
    in ``dropped``). ``timeout``: the default for calls that wait on the runtime.

    ``server_key`` and ``client_key``: for a runtime that listens beyond loopback with CurveZMQ
    (protocol/SPEC.md 1.1): the runtime's public key (Z85 text, or its ``.key`` certificate file)
    and this client's key pair (its ``.key_secret`` certificate file, or a (public, secret) pair of
    Z85 keys), made with ``ksdiff-runtime keys``. A runtime that does not know the key answers
    nothing at all: ``wait_for_runtime`` then times out.

    Counters: ``received`` (frames), ``dropped`` (queue overflow), ``invalid`` (messages that
    broke the protocol, dropped; a reply of the wrong type for its request too, which its call raises as
    MalformedError), ``ignored`` (unknown message types of a newer runtime),
    ``missed`` (frames lost on the way, from ``seq`` gaps; ``missed_per_stream``), ``restarts``
    (runtime instance changes seen), ``unsent`` (audio messages dropped before they were sent: of streams whose
    connection dropped, or beyond OUTBOX_MAX_BYTES for a runtime that takes none), ``withdrawn`` (requests never
    sent because their call stopped waiting for the reply, e.g. timed out, before they left this client), ``resent``
    (messages sent again once the runtime said it dropped this client's requests unread, ``busy`` in ``errors``, and
    the window of those drops passed: the audio of lines (``mode="line"``) sent after the last request the runtime
    had answered, each message placed by its at_sample so the runtime takes only what it lacks, then the
    ``end_stream`` requests left without an answer; and the ``open_stream``, ``set_controls`` and ``hello`` requests
    the answer to a later request shows it never read; SPEC 4.6 "A client past its share"). While those drops last, the
    client holds what it would send (but live streams' audio), and a line's next message (audio, end_stream) leaves
    only once the runtime has read the one before (a ``hello`` request follows the lines' messages to learn it), so
    no copy comes after later audio of its line.
    ``errors``: runtime errors no call was waiting for.

    A request that did leave and is answered after its call gave up changes nothing, but for ``stream_opened``:
    nobody holds that stream, so the client ends it (``end_stream``) instead of leaving it to the runtime's idle
    timeout. A ``stream_opened`` that answers no open_stream whose call gave up (a duplicate, one with no ``req``) is
    dropped (``invalid``): the stream may be one a handle holds.
    """

    def __init__(
        self,
        pub: str = DEFAULT_PUB_ENDPOINT,
        router: str = DEFAULT_ROUTER_ENDPOINT,
        streams: StreamFilter = None,
        latest_only: bool = False,
        timeout: float = 5.0,
        max_queue: int = DEFAULT_MAX_QUEUE,
        server_key: str | bytes | os.PathLike | None = None,
        client_key: str | os.PathLike | tuple[bytes, bytes] | None = None,
    ) -> None:
        self._curve = curve_keys(server_key, client_key)
        if isinstance(streams, str):
            streams = [streams]
        try:
            self.streams: frozenset[str] | None = (
                None if streams is None else frozenset(protocol.validate_stream_id(s) for s in streams)
            )
        except ProtocolError as e:
            raise ValueError(e.message) from None
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            # None or NaN failed later, inside open_stream (TypeError) or as "nothing arrived within 0.0 s"
            raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self.pub_endpoint = pub
        self.router_endpoint = router
        self.latest_only = latest_only
        self.timeout = timeout
        self.max_queue = max_queue

        self._cv = threading.Condition()
        # --- guarded by _cv ---
        self._queue: deque[Frame] = deque(maxlen=max_queue)
        self._latest: OrderedDict[str, Frame] = OrderedDict()  # stream -> newest frame, least recent first
        self._fresh: OrderedDict[str, None] = OrderedDict()  # latest-only: streams with an unread frame
        self._last_seq: dict[str, int] = {}
        # frames lost per stream, the LATEST_STREAMS_KEPT streams that lost some last (a runtime serving NPC lines for
        # hours opens a stream per line); the total stays exact
        self._missed: OrderedDict[str, int] = OrderedDict()
        self._missed_total = 0
        self._handles: dict[str, StreamHandle] = {}
        self._pending: dict[int, _Request] = {}
        self._hello: dict[str, Any] | None = None
        self._stats: dict[str, Any] | None = None
        self._instance: str | None = None
        self._seen_instances: set[str] = set()
        self._sub_live = False  # a message arrived on the SUB since it last (re)connected
        self._closing = False  # close() was called
        self._closed = False  # the I/O thread has stopped
        self.received = 0
        self.dropped = 0
        self.invalid = 0
        self.ignored = 0
        self.restarts = 0
        self.unsent = 0  # audio messages dropped unsent: their connection dropped, or OUTBOX_MAX_BYTES waited
        self.withdrawn = 0  # requests taken out of the outbox unsent: their call had timed out waiting for the reply
        self._orphan_ends: set[int] = set()  # req of each end_stream this client sent for a stream opened too late
        self._gave_up_opens: OrderedDict[int, None] = OrderedDict()  # req of open_streams whose call gave up
        self._version_error: ProtocolError | None = None  # the last message of another protocol major version
        self._resent: OrderedDict[int, None] = OrderedDict()  # req of the requests resent, the latest RESENT_KEPT
        self._busy_at: float | None = None  # when the runtime last said it dropped this client's requests unread
        self._audio_resent_for: float | None = None  # the _busy_at whose dropped audio was sent again
        # the number of the latest DEALER message the runtime is known to have read: it answered a request that left as
        # that message or after it (a connection's messages are read in order; the answer comes after the reading)
        self._read_no = 0
        # _read_no when that busy came: the runtime may have dropped every message after it (the busy was sent as the
        # first one was dropped; everything read before that was answered before it), until the drops ended
        self._busy_read_no: int | None = None
        self._probes: OrderedDict[int, int] = OrderedDict()  # req of each hello probe awaiting its answer -> its number
        self.resent = 0  # requests sent again after the runtime said it dropped some unread (SPEC 4.6)
        self.errors: deque[KsdiffError] = deque(maxlen=100)
        self._warned: set[str] = set()
        self._req_ids = itertools.count(1)

        # --- I/O thread plumbing ---
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._ctx = zmq.Context()
        self._wake_rx = self._ctx.socket(zmq.PAIR)  # the I/O thread's end
        self._wake_rx.bind("inproc://ksdiff-sdk-wake")  # the context is this client's own
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.setsockopt(zmq.LINGER, 0)
        self._wake_tx.connect("inproc://ksdiff-sdk-wake")
        self._wake_lock = threading.Lock()  # user threads share _wake_tx
        self._wake_closer = weakref.finalize(self, _close_wake, self._wake_tx, self._wake_lock)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._thread = threading.Thread(target=_io_thread, args=(weakref.ref(self), self._ctx), name="ksdiff-sdk-io",
                                        daemon=True)
        self._thread.start()
        # Socket setup only, no network wait (connect() is asynchronous); bounded all the same.
        if not self._started.wait(JOIN_TIMEOUT_S * 5):
            self._start_error = RuntimeError("the ksdiff-sdk I/O thread did not start")
        if self._start_error is not None:
            self.close()
            raise self._start_error

    # --- properties -------------------------------------------------------------------------
    @property
    def hello(self) -> dict[str, Any] | None:
        """The runtime's last hello (published or replied), or None before the first."""
        with self._cv:
            return self._hello

    @property
    def stats(self) -> dict[str, Any] | None:
        """The last ``stats`` message (SPEC 4.5), or None before the first."""
        with self._cv:
            return self._stats

    @property
    def instance(self) -> str | None:
        """The runtime's current instance id (from its hello), None if it sends none."""
        with self._cv:
            return self._instance

    @property
    def missed(self) -> int:
        """Frames lost between the runtime and this client, from ``seq`` gaps, all streams."""
        with self._cv:
            return self._missed_total

    @property
    def missed_per_stream(self) -> dict[str, int]:
        """Frames lost per stream, for the LATEST_STREAMS_KEPT streams that lost frames most recently."""
        with self._cv:
            return dict(self._missed)

    @property
    def closed(self) -> bool:
        with self._cv:
            return self._closing or self._closed

    # --- receiving ----------------------------------------------------------------------------
    def _has_frame(self) -> bool:
        return bool(self._fresh) if self.latest_only else bool(self._queue)

    def recv(self, timeout: float | None = None) -> Frame:
        """The next frame (latest-only mode: the newest frame of the stream updated longest ago).

        ``timeout``: seconds to wait (None: until a frame comes or the client closes); then
        TimeoutError. Raises ClientClosedError once the client is closed."""
        with self._cv:
            _wait_for(self._cv, lambda: self._has_frame() or self._closed or self._closing, timeout)
            if self._has_frame():
                if self.latest_only:
                    stream, _ = self._fresh.popitem(last=False)
                    return self._latest[stream]
                return self._queue.popleft()
            if self._closed or self._closing:
                raise ClientClosedError("the client was closed")
            raise TimeoutError(f"no frame within {timeout:g} s")

    def frames(self, timeout: float | None = None) -> Iterator[Frame]:
        """Frames as they come. Ends when none came for ``timeout`` seconds (None: never) or the
        client closes."""
        while True:
            try:
                yield self.recv(timeout)
            except (TimeoutError, ClientClosedError):
                return

    def latest(self, stream: str | None = None) -> Frame | None:
        """The newest frame received of ``stream`` (None: of any stream), or None. Does not consume."""
        with self._cv:
            if stream is None:
                return next(reversed(self._latest.values()), None)
            return self._latest.get(stream)

    # --- requests -----------------------------------------------------------------------------
    def _send(self, payloads: list[bytes], audio: bool = False, line: StreamHandle | None = None) -> None:
        """Queue DEALER messages; ``audio``: the oldest of these are dropped while the runtime cannot take them;
        ``line``: the line whose audio they are (sent again if the runtime says it dropped them unread)."""
        if line is not None:
            self._command(*(("audio", (p, line)) for p in payloads))
        else:
            self._command(*(("audio" if audio else "send", p) for p in payloads))

    def _command(self, *commands: Command) -> None:
        with self._cv:
            if self._closing or self._closed:
                raise ClientClosedError("the client is closed")
        for c in commands:
            self._commands.put(c)
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_tx.closed:
                return
            # Again: wakeups are already queued, and the I/O thread drains every command when it wakes
            with contextlib.suppress(zmq.Again):
                self._wake_tx.send(b"", zmq.NOBLOCK)

    def _start_request(self, mtype: str, fields: dict[str, Any], line: StreamHandle | None = None) -> _Request:
        """A request queued for the I/O thread, registered for its reply; ``line``: the line it is of (it keeps the
        line's order: end_stream, set_controls)."""
        req = next(self._req_ids)
        payload = protocol.encode_request(mtype, req=req, **fields)
        try:  # what the runtime cannot read it answers without req: the call would wait, the request go again
            protocol.unpack(payload, protocol.REQUEST_LIMITS)
        except ProtocolError as e:
            raise ValueError(f"the runtime would refuse this {mtype}: {e.message}") from None
        r = _Request(req, mtype, payload, line, fields.get("stream"))
        with self._cv:
            self._pending[r.req] = r
        try:
            self._command(("request", r))
        except ClientClosedError:
            self._forget(r)
            raise
        return r

    def _forget(self, r: _Request, timed_out: bool = True) -> None:
        """No call waits for ``r``'s reply any more. Without the reply (its call timed out, or stopped waiting), the
        request is abandoned: if it is still in the outbox it is withdrawn, never sent. ``timed_out``: False for a
        call that got what it wanted elsewhere (``wait_for_runtime`` on a published hello). May be called holding
        _cv."""
        with self._cv:
            self._pending.pop(r.req, None)
            if r.reply is not None or r.abandoned:
                return
            r.abandoned, r.timed_out = True, timed_out
            if r.mtype == "open_stream":  # the runtime may open it all the same: that stream is then ended
                self._gave_up_opens[r.req] = None
                while len(self._gave_up_opens) > GAVE_UP_OPENS_KEPT:
                    self._gave_up_opens.popitem(last=False)
        with contextlib.suppress(ClientClosedError):  # closed: nothing will be sent anyway
            self._command(("withdraw", b""))

    def _await(
        self, r: _Request, timeout: float | None, what: str, stop: Callable[[], bool] | None = None,
        keep: bool = False,
    ) -> dict | None:
        """The reply to ``r`` (an ``error`` reply raised as KsdiffError); None if ``stop()`` became true.
        ``keep``: a request whose wait ends without its reply (it timed out, or was interrupted: KeyboardInterrupt)
        stays registered, and is still sent if it had not left, so its reply, when it comes, waits for the next
        ``_await`` of it (``end_stream``'s: a later ``end()`` takes it)."""
        forget = not keep  # keep: forgotten only once the reply came, or never will (stopped, closed)
        with self._cv:
            try:
                _wait_for(
                    self._cv,
                    lambda: (r.reply is not None or r.failed is not None or self._closed or self._closing
                             or (stop is not None and stop())),
                    timeout,
                )
                reply = r.reply
                if reply is None and r.failed is not None:
                    forget = True
                    raise r.failed
                if reply is None:
                    if stop is not None and stop():
                        forget = True
                        return None
                    if self._closed or self._closing:
                        forget = True
                        raise ClientClosedError("the client was closed")
                    raise TimeoutError(
                        f"{what}: no reply from the runtime at {self.router_endpoint} within {timeout:g} s"
                    )
                forget = True
            finally:
                # under the same hold of the lock as the decision: a reply that comes once the call gave up finds
                # the request gone, a late reply (a stream_opened's stream is then ended), never one taken by nobody
                if forget:
                    self._forget(r)
        if reply["type"] == "error":
            raise KsdiffError.from_reply(reply)
        return reply

    def _call(
        self, mtype: str, timeout: float | None, fields: dict[str, Any], stop: Callable[[], bool] | None = None
    ) -> dict | None:
        return self._await(self._start_request(mtype, fields), timeout, mtype, stop)

    def _wait_sub_live(self, timeout: float) -> None:
        with self._cv:
            ok = _wait_for(self._cv, lambda: self._sub_live or self._closed or self._closing, timeout)
            if self._closed or self._closing:
                raise ClientClosedError("the client was closed")
            if not ok:
                raise TimeoutError(
                    f"nothing arrived from the runtime's PUB at {self.pub_endpoint} within {timeout:g} s "
                    f"(is the runtime running? it publishes hello every {protocol.HELLO_PERIOD_S:g} s)"
                )

    def wait_for_runtime(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the runtime answered a hello and its PUB reaches this client; returns the hello.

        Sends a ``hello`` request on the ROUTER, then waits for a hello (replied or published) and
        for the first published message (hello/stats, every second) so no frame is missed after
        this returns. TimeoutError if the runtime is not there; UnsupportedVersionError if what came
        is of another protocol major version (and no hello this client reads)."""
        timeout = self.timeout if timeout is None else timeout
        r = self._start_request("hello", {})
        ready = False
        try:
            with self._cv:
                ok = _wait_for(
                    self._cv,
                    lambda: (self._hello is not None and self._sub_live) or self._closed or self._closing
                    or (self._hello is None and self._version_error is not None),
                    timeout,
                )
                if self._closed or self._closing:
                    raise ClientClosedError("the client was closed")
                if self._hello is None and self._version_error is not None:
                    raise UnsupportedVersionError(
                        "unsupported_version", f"the runtime (PUB {self.pub_endpoint}, ROUTER {self.router_endpoint}) "
                        f"speaks another protocol: {self._version_error.message}; use a ksdiff-sdk that speaks it")
                if not ok:
                    # a hello known (answered, or published before: a runtime that has since died) but the SUB
                    # has heard nothing since it last connected
                    got = "a hello came before, but nothing has arrived on the PUB since" if self._hello else "no hello"
                    raise TimeoutError(
                        f"runtime not ready within {timeout:g} s ({got}; PUB {self.pub_endpoint}, "
                        f"ROUTER {self.router_endpoint})"
                    )
                assert self._hello is not None
                ready = True
                return self._hello
        finally:
            self._forget(r, timed_out=not ready)  # ready: a published hello said it; its own is not needed

    def open_stream(
        self,
        stream: str | None = None,
        sample_rate: int = schema.SAMPLE_RATE,
        channels: int = 1,
        format: str = "f32le",
        transcript: str | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        *,
        max_frames: int | None = DEFAULT_MAX_QUEUE,
        mode: str | None = None,
        controls: dict[str, Any] | None = None,
        mood: str | None = None,
        mood_intensity: float | None = None,
        style: str | None = None,
    ) -> StreamHandle:
        """Open a stream fed by this client's audio; returns its handle once ``stream_opened`` came.

        ``stream``: the id you want (None: the runtime picks one). ``seed``: the motion's noise (None: the
        runtime hashes the stream's id, protocol 1.4). ``format``: "f32le" or "s16le",
        the format sent on the wire (push() converts). ``max_frames``: frames the handle keeps
        unread (None: unbounded). ``mode`` (protocol 1.2): "live" (default: audio at the pace it is
        spoken, frames within the runtime's deadline) or "line" (audio already there, e.g. a TTS line:
        animated as fast as the runtime can). ``controls``: the stream's artists' controls (as
        ``StreamHandle.set_controls``). ``mood`` (protocol 1.3): one of ``schema.MOODS`` (None: the
        runtime's configured mood, neutral by default), ``mood_intensity`` 0..1; ``style`` (protocol 1.4):
        one of ``schema.STYLES`` (None: the runtime's configured style, none by default); they go in
        ``controls``. Raises the runtime's error (``BusyError``, ``BadAudioError``, ``BadControlsError``,
        ...), ValueError for arguments the protocol refuses, TimeoutError."""
        timeout = self.timeout if timeout is None else timeout
        controls = face_controls(controls, mood, mood_intensity, style)
        deadline = time.monotonic() + timeout
        fields = _open_fields(stream, sample_rate, channels, format, transcript, seed, mode, controls)
        # The handle's frames must not fall into the slow-joiner gap (see the module docstring).
        self._wait_sub_live(_remaining(deadline))
        if stream is not None:
            # Subscribed before the stream exists, so its first frame cannot be missed.
            self._command(("sub", protocol.frame_topic(stream)))
        try:
            # A hello sent just before: its reply (replies come in order) names the runtime
            # instance that opens the stream, which is how a later restart is recognised.
            hello = self._start_request("hello", {})
            try:
                reply = self._call("open_stream", _remaining(deadline), fields)
            finally:
                self._forget(hello)
            assert reply is not None
        except BaseException:
            if stream is not None:
                with contextlib.suppress(ClientClosedError):
                    self._command(("unsub", protocol.frame_topic(stream)))
            raise
        sid = reply["stream"]
        if sid != stream:
            self._command(("sub", protocol.frame_topic(sid)))
            if stream is not None:
                self._command(("unsub", protocol.frame_topic(stream)))
        with self._cv:
            answered = hello.reply is not None and hello.reply["type"] == "hello"
            instance = hello.reply.get("instance") if answered else self._instance
        max_ahead, latency = reply.get("max_ahead_s"), reply.get("latency_ms")
        handle = StreamHandle(
            self, sid, int(reply["fps"]), int(sample_rate), int(channels), format,
            instance if isinstance(instance, str) else None, max_frames,
            float(max_ahead) if isinstance(max_ahead, int | float) else None,
            reply.get("mode", mode or "live"), float(latency) if isinstance(latency, int | float) else None,
        )
        with self._cv:
            self._handles[sid] = handle
        return handle

    def set_controls(self, stream: str, controls: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Change a stream's artists' controls (protocol 1.2): a stream this client opened, or one the runtime
        plays itself (its ``mic``: a VTuber's control panel). Returns the stream's controls now, in full.
        Raises BadControlsError, ForbiddenError (another client's stream), UnknownStreamError, TimeoutError."""
        timeout = self.timeout if timeout is None else timeout
        try:
            protocol.encode_request("set_controls", stream=stream, controls=controls)
        except ProtocolError as e:
            raise ValueError(e.message) from None
        with self._cv:
            handle = self._handles.get(stream)
        # a line's: after the audio pushed before it, which may wait in the client (_send_outbox)
        line = handle if handle is not None and handle.mode == "line" else None
        reply = self._await(self._start_request("set_controls", {"stream": stream, "controls": controls}, line),
                            timeout, "set_controls")
        assert reply is not None
        return dict(reply["controls"])

    def _release(self, handle: StreamHandle) -> None:
        with self._cv:
            if handle._released:
                return
            handle._released = True
            if self._handles.get(handle.stream) is handle:
                del self._handles[handle.stream]
            if handle._end_request is not None:  # an end that timed out and was never taken again
                self._pending.pop(handle._end_request.req, None)
            self._cv.notify_all()
        with contextlib.suppress(ClientClosedError):  # closed: the sockets are gone with their subscriptions
            self._command(("unsub", handle._topic))

    def animate(
        self,
        audio: np.ndarray,
        sample_rate: int = schema.SAMPLE_RATE,
        transcript: str | None = None,
        seed: int | None = None,
        realtime: bool = False,
        timeout: float | None = None,
        *,
        controls: dict[str, Any] | None = None,
        mood: str | None = None,
        mood_intensity: float | None = None,
        style: str | None = None,
    ) -> Animation:
        """Animate a whole clip: open a stream, push the clip, end it, return every frame by index.

        ``audio``: float (-1..1) or int16, shaped [n] or [n, channels]; sent as f32le or s16le. ``seed``: None
        gives each call a fresh take (a new stream id, hashed by the runtime); the same seed, the same frames.
        ``realtime``: push at the clip's own pace (like a live source, mode "live") instead of all at once
        (mode "line": the runtime animates it as fast as the machine allows, in whole model windows).
        ``timeout``: for the whole call (default: client timeout + 2x the clip's duration,
        + the duration when realtime). ``controls``, ``mood``, ``mood_intensity``, ``style``: as
        ``open_stream``."""
        a = np.asarray(audio)
        if a.ndim not in (1, 2):
            raise ValueError(f"audio must be [n] or [n, channels], got shape {a.shape}")
        if a.dtype == np.int16:
            fmt = "s16le"
        elif np.issubdtype(a.dtype, np.floating):
            fmt = "f32le"
        else:
            raise TypeError(f"audio dtype {a.dtype} not supported: pass float32/float64 (-1..1) or int16")
        channels = 1 if a.ndim == 1 else int(a.shape[1])
        mode = "live" if realtime else "line"
        controls = face_controls(controls, mood, mood_intensity, style)
        # Our own unique id: the frames' topic is subscribed before the stream exists.
        stream = f"anim-{secrets.token_hex(6)}"
        _open_fields(stream, sample_rate, channels, fmt, transcript, seed, mode, controls)  # refused before dividing
        duration = a.shape[0] / sample_rate
        if timeout is None:
            timeout = self.timeout + 2 * duration + (duration if realtime else 0.0)
        deadline = time.monotonic() + timeout
        handle = self.open_stream(stream, sample_rate, channels, fmt, transcript, seed, _remaining(deadline),
                                  max_frames=None, mode=mode, controls=controls)
        with handle:
            if realtime:
                step = chunk_frames(sample_rate, channels, fmt)
                t0 = time.monotonic()
                for start in range(0, a.shape[0], step):
                    lag = t0 + start / sample_rate - time.monotonic()
                    if lag > 0:
                        time.sleep(lag)  # pacing the audio like a live source, not synchronisation
                    handle.push(a[start : start + step])
            else:
                handle.push(a)
            total = handle.end(_remaining(deadline))
            frames = list(handle.frames(_remaining(deadline)))
        anim = Animation.from_frames(handle.stream, handle.fps, frames, total)
        if anim.missing:
            log.warning("stream %s: %d of %d frames did not arrive", stream, anim.missing, total)
        return anim

    # --- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the I/O thread and close the sockets (LINGER 0: unsent messages are dropped).

        Never hangs: the I/O thread is joined with a timeout. Waiting calls raise ClientClosedError."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify_all()
        self._commands.put(("stop", b""))
        self._wake()
        self._thread.join(JOIN_TIMEOUT_S)
        self._wake_closer()
        if self._thread.is_alive():
            # term() would block on the I/O thread's sockets; leave the context to the process exit
            log.warning("ksdiff-sdk I/O thread did not stop within %.1f s", JOIN_TIMEOUT_S)
        else:
            self._ctx.term()
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(pub={self.pub_endpoint!r}, router={self.router_endpoint!r}, streams={self.streams})"

    # --- the I/O thread -----------------------------------------------------------------------
    def _initial_topics(self) -> list[bytes]:
        topics = [protocol.HELLO_TOPIC, protocol.STATS_TOPIC, protocol.STREAM_TOPIC_PREFIX]
        if self.streams is None:
            topics.append(protocol.FRAME_TOPIC_PREFIX)
        else:
            topics += [protocol.frame_topic(s) for s in sorted(self.streams)]
        return topics

    def _open_io(self) -> _Io | None:
        """The I/O thread's sockets, set up and connected (on that thread); None if that failed (``_start_error``)."""
        sockets: list[zmq.Socket] = [self._wake_rx]
        try:
            sub = self._ctx.socket(zmq.SUB)
            sockets.append(sub)
            dealer = self._ctx.socket(zmq.DEALER)
            sockets.append(dealer)
            for s in (sub, dealer):
                if self._curve is not None:  # before connecting: the handshake uses them
                    s.curve_serverkey, s.curve_publickey, s.curve_secretkey = self._curve
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
                s.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
                s.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
                s.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            for s, endpoint in ((sub, self.pub_endpoint), (dealer, self.router_endpoint)):
                # an IPv6 address (tcp://[::1]:5555) is reached only with ZMQ_IPV6; not set for others, as a name
                # such as localhost could then resolve to ::1 while the runtime listens on 127.0.0.1
                s.setsockopt(zmq.IPV6, int(endpoint.startswith("tcp://[")))
            sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
            dealer.setsockopt(zmq.IMMEDIATE, 1)  # queue on a live connection only; the rest waits in the outbox
            for topic in self._initial_topics():  # SPEC 1: subscribe before connecting
                sub.setsockopt(zmq.SUBSCRIBE, topic)
            # A disconnect means the subscription must be proven live again (slow joiner).
            monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            sockets.append(monitor)
            # A dropped DEALER connection loses this client's streams: the next one has a new routing id (SPEC 1).
            dealer_monitor = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            sockets.append(dealer_monitor)
            sub.connect(self.pub_endpoint)
            dealer.connect(self.router_endpoint)
        except BaseException as e:
            self._start_error = e
            for s in reversed(sockets):
                s.close(linger=0)
            with self._cv:
                self._closed = True
            self._started.set()
            return None
        self._started.set()
        return _Io(self._wake_rx, sub, dealer, monitor, dealer_monitor)

    def _io_stopped(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _io_poll_ms(self, io: _Io) -> int:
        """Before the I/O thread's poll: what it waits for (the DEALER's room too while the outbox holds messages that
        may leave now) and how long: until the runtime's drops end, if it said it dropped this client's requests; until
        a hello probe is due (``_probe_due``); else ``_POLL_MS``."""
        io.poller.modify(io.dealer, zmq.POLLIN | (zmq.POLLOUT if io.outbox and io.sendable else 0))
        now = time.monotonic()
        with self._cv:
            if self._busy_at is not None and now < self._busy_at + protocol.BUSY_WINDOW_S:
                due = self._busy_at + protocol.BUSY_WINDOW_S  # nothing but live audio leaves until then
            elif self._busy_at is not None:
                due = now  # the drops are over: what waited goes now
            elif (probe := _probe_due(io, self._read_no)) is not None and not io.sendable:  # (sendable: POLLOUT)
                due = probe
            else:
                return _POLL_MS
        return max(0, min(_POLL_MS, math.ceil(1000 * (due - now))))

    def _io_pass(self, io: _Io, events: dict[zmq.Socket, int]) -> bool:
        """One pass of the I/O thread, after its poll: take the commands, send what the DEALER takes, read what came,
        queue the end_streams to send again. False once ``close()`` asked it to stop."""
        sub, dealer, monitor, dealer_monitor = io.sub, io.dealer, io.monitor, io.dealer_monitor
        outbox, outbox_bytes = io.outbox, io.outbox_bytes
        try:
            if io.wake_rx in events:
                while True:
                    try:
                        io.wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            withdraw = False
            while True:
                try:
                    cmd, arg = self._commands.get_nowait()
                except queue.Empty:
                    break
                if cmd == "stop":
                    return False
                if isinstance(arg, _Request):  # "request": one a call waits for (a line's: in that line's order)
                    outbox.append((False, arg.payload, arg, arg.line))
                    outbox_bytes += len(arg.payload)
                elif isinstance(arg, tuple):  # a line's audio
                    outbox.append((True, arg[0], None, arg[1]))
                    outbox_bytes += len(arg[0])
                elif cmd in ("send", "audio"):
                    outbox.append((cmd == "audio", arg, None, None))
                    outbox_bytes += len(arg)
                elif cmd == "withdraw":
                    withdraw = True
                elif cmd == "sub":
                    sub.setsockopt(zmq.SUBSCRIBE, arg)
                elif cmd == "unsub":
                    sub.setsockopt(zmq.UNSUBSCRIBE, arg)
            if withdraw:
                outbox, outbox_bytes = self._withdraw(outbox, outbox_bytes)
            # before anything queued since: audio the runtime dropped unread goes again, in its order, ahead of audio
            # pushed after it (which would otherwise reach the runtime first, its gap then filled with silence)
            for payload, line in reversed(self._dropped_audio(io)):
                outbox.appendleft((True, payload, None, line))
                outbox_bytes += len(payload)
            outbox_bytes = self._send_outbox(io, outbox, outbox_bytes)
            # only while the DEALER takes nothing: lines' audio waiting for the runtime to read what went before (or
            # for the drops' end) is no sign of a runtime that is away (NPC lines pushed whole at once lost it)
            if outbox_bytes > OUTBOX_MAX_BYTES and io.sendable:
                outbox, outbox_bytes, dropped = _drop_audio(outbox, outbox_bytes, OUTBOX_MAX_BYTES)
                with self._cv:
                    self.unsent += dropped
                self._warn_once("unsent", "ksdiff-sdk: the runtime at %s has taken no message for a while: the oldest "
                                "unsent audio is being dropped (client.unsent counts it)", self.router_endpoint)
            if sub in events:
                for _ in range(_MAX_BATCH):
                    try:
                        parts = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._guarded(self._on_published, parts)
            if dealer in events:
                with self._cv:
                    read_before = self._read_no
                for _ in range(_MAX_BATCH):
                    try:
                        parts = dealer.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._guarded(self._on_reply, parts)
                with self._cv:
                    if self._read_no > read_before:  # a line's next message may leave now: on the next pass
                        io.sendable = True
            if monitor in events:
                while True:
                    try:
                        event = recv_monitor_message(monitor, zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if event["event"] == zmq.EVENT_DISCONNECTED:
                        with self._cv:
                            self._sub_live = False
            if dealer_monitor in events:
                dropped = False
                while True:
                    try:
                        dropped |= recv_monitor_message(dealer_monitor, zmq.NOBLOCK)["event"] == zmq.EVENT_DISCONNECTED
                    except zmq.Again:
                        break
                if dropped:
                    outbox, outbox_bytes = self._connection_dropped(outbox, outbox_bytes)
            # ahead of what waits, in their order (a line's: after the audio its line sent before them)
            for r in reversed(self._dropped_requests()):
                outbox.appendleft((False, r.payload, r, r.line))
                outbox_bytes += len(r.payload)
                io.sendable = True
            # after the replies were read (an answer that came is no reason to send it again); sent on the next pass,
            # each after the audio its line sends again (the line's messages leave one at a time, in order)
            for payload, line in self._dropped_ends(outbox):
                outbox.append((False, payload, None, line))
                outbox_bytes += len(payload)
                io.sendable = True
        finally:
            io.outbox, io.outbox_bytes = outbox, outbox_bytes
        return True

    def _send_outbox(self, io: _Io, outbox: Outbox, size: int) -> int:
        """Hand the DEALER what may leave of the outbox, in its order, until it takes no more (changed in place);
        returns the outbox's size then. While the runtime drops this client's requests (a ``busy`` came less than
        BUSY_WINDOW_S ago) only live streams' audio leaves: the rest would be dropped too, and a line's audio must
        not reach the runtime before the copies of what it dropped (``_dropped_audio``). A line's message waits while
        the line's previous one is not known to be read (``_read_no``), the line's later ones behind it (other
        streams' messages go on: each line's first message leaves at once): a hello probe then follows the lines'
        messages that left, its answer telling the runtime read them, within a round trip."""
        now = time.monotonic()
        with self._cv:
            # until the copies are queued (_dropped_audio, at the start of the pass after the window: one that ends
            # during this pass must not let a line's later audio go first)
            holding = self._busy_at is not None and (now < self._busy_at + protocol.BUSY_WINDOW_S
                                                     or self._audio_resent_for != self._busy_at)
            read_no = self._read_no
        held: Outbox = deque()
        waiting: set[int] = set()  # id() of the lines with a message held on this pass: their later ones stay behind
        io.sendable = False
        while outbox:
            audio, payload, request, line = outbox[0]
            # read without the lock: a line's _lost and _finished are only ever set; a line that is gone waits for none
            if (holding and not (audio and line is None)) or (line is not None and (
                    id(line) in waiting or (line._sent_no > read_no and line._lost is None and not line._finished))):
                held.append(outbox.popleft())
                if line is not None:
                    waiting.add(id(line))
                continue
            try:
                io.dealer.send(payload, zmq.NOBLOCK)
            except zmq.Again:
                io.sendable = True  # the runtime is away or slow: retried on POLLOUT
                break
            outbox.popleft()
            size -= len(payload)
            io.sent_no += 1
            now = time.monotonic()
            if request is not None:
                request.sent_at = now
                if request.sent_no is None:
                    request.sent_no = io.sent_no
                if request.mtype in ANSWERED_AS_READ:
                    io.request_sent_no, io.request_sent_at = io.sent_no, now
            if line is not None:
                line._sent_no = io.line_sent_no = io.sent_no
                if audio:  # kept until known read: the runtime may yet say it dropped it unread (_dropped_audio)
                    io.sent_audio.append((io.sent_no, now, payload, line))
                    io.sent_audio_bytes += len(payload)
        outbox.extendleft(reversed(held))
        due = _probe_due(io, read_no)
        if not holding and not io.sendable and due is not None and now >= due:
            self._send_probe(io, now)
        return size

    def _send_probe(self, io: _Io, now: float) -> None:
        """A ``hello`` request after the messages that left: its answer says the runtime read (or dropped) them."""
        req = next(self._req_ids)
        try:
            io.dealer.send(protocol.encode_request("hello", req=req), zmq.NOBLOCK)
        except zmq.Again:
            io.sendable = True
            return
        io.sent_no += 1
        io.probe_no, io.probe_at = io.sent_no, now
        with self._cv:
            self._probes[req] = io.sent_no
            while len(self._probes) > PROBES_KEPT:
                self._probes.popitem(last=False)

    def _withdraw(self, outbox: Outbox, size: int) -> tuple[Outbox, int]:
        """The outbox less the requests abandoned by their calls: they are never sent, and those whose calls timed out
        are counted in ``withdrawn`` (a late open_stream would open a stream nobody uses, a late set_controls change
        what its caller was told failed)."""
        kept: Outbox = deque()
        withdrawn = 0
        with self._cv:
            for entry in outbox:
                if entry[2] is not None and entry[2].abandoned:
                    size -= len(entry[1])
                    withdrawn += int(entry[2].timed_out)
                else:
                    kept.append(entry)
            self.withdrawn += withdrawn
        if withdrawn:
            log.debug("ksdiff-sdk: %d request(s) whose call stopped waiting were withdrawn unsent", withdrawn)
        return kept, size

    def _connection_dropped(self, outbox: Outbox, size: int) -> tuple[Outbox, int]:
        """The DEALER's connection dropped: every open stream of this client is lost (the next connection has another
        routing id, and the runtime keeps a stream for the one that opened it), and so is the audio waiting for them.
        An open_stream, or a set_controls of a stream this client holds, unanswered that left fails too: the runtime
        may have carried it out for the old connection, so it is not sent again (a second stream opened, or "already
        open" for an open that worked); a hello goes again (``_dropped_requests``), and a set_controls of another
        stream. (One that left on the new connection, which ZeroMQ makes
        RECONNECT_IVL_MS later, before this thread saw the drop, fails with them: this thread held up that long.)"""
        with self._cv:
            for handle in self._handles.values():
                handle._reconnected()
            for r in self._pending.values():
                # (a set_controls of a stream this client does not hold, the runtime's mic, goes again: it lost
                # nothing with the connection, and a second copy sets the same controls)
                if ((r.mtype == "open_stream" or (r.mtype == "set_controls" and r.stream in self._handles))
                        and r.reply is None and r.failed is None and r.sent_no is not None):
                    what = f"stream {r.stream!r}" if r.stream is not None else "the stream"
                    r.failed = StreamLost(r.stream or "", "reconnect", f"the connection to the runtime dropped while "
                                          f"{r.mtype} was on its way: a runtime still running may have carried it "
                                          f"out for that connection (it ends {what} after its idle timeout), one that "
                                          "restarted has not; open a new stream, with another id, to go on")
            self._cv.notify_all()
        kept, size, dropped = _drop_audio(outbox, size, 0)
        if dropped:
            with self._cv:
                self.unsent += dropped
        return kept, size

    def _guarded(self, handler: Callable[[list[bytes]], None], parts: list[bytes]) -> None:
        """Run a message handler; a message that breaks it is counted and dropped, never fatal."""
        try:
            handler(parts)
        except ProtocolError as e:
            self._count_bad(e)
        except Exception:
            log.exception("ksdiff-sdk: dropped a message that could not be handled")
            with self._cv:
                self.invalid += 1

    def _count_bad(self, e: ProtocolError) -> None:
        with self._cv:
            if e.code == "unknown_type":
                self.ignored += 1  # a newer runtime's message type: ignored by design (SPEC 3.2)
                return
            self.invalid += 1
            if e.code == "unsupported_version":
                self._version_error = e  # wait_for_runtime says so rather than waiting for a hello it can read
                self._cv.notify_all()
        if e.code == "unsupported_version":
            self._warn_once("version", "the runtime speaks another protocol major version: upgrade ksdiff-sdk (%s)", e)
        else:
            log.debug("ksdiff-sdk: dropped an invalid message: %s", e)

    def _warn_once(self, key: str, fmt: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(fmt, *args)

    def _on_published(self, parts: list[bytes]) -> None:
        with self._cv:
            # Any message at all proves the subscription reached the PUB.
            if not self._sub_live:
                self._sub_live = True
                self._cv.notify_all()
        if len(parts) != 2:
            raise ProtocolError("malformed", f"a PUB message has 2 frames [topic, payload], got {len(parts)}")
        kind, topic_stream = protocol.parse_topic(parts[0])
        msg = protocol.decode(parts[1])
        mtype = msg["type"]
        expected = {"frame": ("frame",), "stream": ("stream_start", "stream_end"), "hello": ("hello",),
                    "stats": ("stats",)}[kind]
        if mtype not in expected:
            raise ProtocolError("malformed", f"a {mtype} message on topic {parts[0]!r}")
        if topic_stream is not None and msg["stream"] != topic_stream:
            raise ProtocolError("malformed", f"stream {msg['stream']!r} on topic {parts[0]!r}")
        if mtype == "frame":
            self._on_frame(Frame.from_message(msg))
        elif mtype == "hello":
            self._on_hello(msg)
        elif mtype == "stats":
            with self._cv:
                self._stats = msg
                self._cv.notify_all()
        else:
            self._on_stream_event(msg)

    def _on_frame(self, frame: Frame) -> None:
        s = frame.stream
        with self._cv:
            self.received += 1
            last = self._last_seq.get(s)
            if last is not None and frame.seq > last + 1:
                self._missed[s] = self._missed.get(s, 0) + frame.seq - last - 1
                self._missed.move_to_end(s)
                self._missed_total += frame.seq - last - 1
                while len(self._missed) > LATEST_STREAMS_KEPT:
                    self._missed.popitem(last=False)
            # seq <= last: a new stream that reuses the id (or a new runtime); counting restarts
            self._last_seq[s] = frame.seq
            self._latest[s] = frame
            self._latest.move_to_end(s)
            while len(self._latest) > LATEST_STREAMS_KEPT:
                old, _ = self._latest.popitem(last=False)
                self._fresh.pop(old, None)
                self._last_seq.pop(old, None)
            if self.streams is None or s in self.streams:
                if self.latest_only:
                    self._fresh.setdefault(s, None)  # keeps its place in line until read
                else:
                    if len(self._queue) == self.max_queue:
                        self.dropped += 1
                    self._queue.append(frame)
            handle = self._handles.get(s)
            if handle is not None:
                handle._on_frame(frame)
            self._cv.notify_all()

    def _on_stream_event(self, msg: dict[str, Any]) -> None:
        with self._cv:
            self._last_seq.pop(msg["stream"], None)  # the next stream with this id counts seq from 0
            if msg["type"] == "stream_end":
                handle = self._handles.get(msg["stream"])
                if handle is not None:
                    handle._on_stream_end(msg)
            self._cv.notify_all()

    def _on_hello(self, msg: dict[str, Any]) -> None:
        if "blendshapes" in msg and tuple(msg["blendshapes"]) != schema.BLENDSHAPES:
            self._warn_once("schema", "the runtime's blendshape order differs from ksdiff_sdk.schema: "
                            "frame['name'] would read the wrong weights; upgrade ksdiff-sdk")
        instance = msg.get("instance")
        with self._cv:
            self._hello = {k: v for k, v in msg.items() if k != "req"}
            self._version_error = None
            # A never-seen instance id means a new runtime process: its streams are not ours. An
            # id seen before is a late message of an older one and changes nothing.
            if isinstance(instance, str) and instance not in self._seen_instances:
                if self._instance is not None:
                    self.restarts += 1
                    self._last_seq.clear()
                    for handle in self._handles.values():
                        handle._on_restart(instance)
                    log.info("ksdiff-sdk: the runtime restarted (instance %s -> %s)", self._instance, instance)
                self._seen_instances.add(instance)
                self._instance = instance
            self._cv.notify_all()

    def _on_reply(self, parts: list[bytes]) -> None:
        if len(parts) != 1:
            raise ProtocolError("malformed", f"a DEALER message has 1 frame, got {len(parts)}")
        msg = protocol.decode(parts[0])
        mtype = msg["type"]
        if mtype not in protocol.REPLY_TYPES:
            raise ProtocolError("malformed", f"{mtype} is not a reply")
        if mtype == "hello":
            self._on_hello(msg)
        orphan: str | None = None
        with self._cv:
            req = msg.get("req", -1)
            probe = self._probes.pop(req, None)
            if probe is not None:  # a hello probe's answer: the runtime read every message up to the probe
                self._read_no = max(self._read_no, probe)
                for older in [k for k, n in self._probes.items() if n < probe]:
                    del self._probes[older]  # hellos are answered as read, in order: those were dropped unread
                return
            if req in self._orphan_ends:  # the answer to an end_stream of a stream opened too late: nothing to do
                self._orphan_ends.discard(req)
                return
            r = self._pending.get(req)
            if r is not None and r.sent_no is not None:  # answered: the runtime read everything up to it
                self._read_no = max(self._read_no, r.sent_no)
            if mtype == "error" and msg["code"] == "busy" and "req" not in msg and "stream" not in msg:
                self._busy_at = time.monotonic()  # past its share: requests dropped unread for up to BUSY_WINDOW_S
                if self._busy_read_no is None:  # (a busy whose drops are not over yet keeps its own, lower)
                    # what it read before was answered before this reply: all sent after may have been dropped
                    self._busy_read_no = self._read_no
            if req in self._resent and (r is None or (mtype == "error" and msg["code"] == "unknown_stream")):
                # a copy's answer: the request was answered already, or its other copy is ending the stream
                log.debug("ksdiff-sdk: the answer to a resent request's other copy: %s", mtype)
            elif r is not None:
                if mtype not in ("error", REPLY_TO[r.mtype]):  # the call raises MalformedError, not a KeyError
                    self.invalid += 1
                    log.debug("ksdiff-sdk: %s answered with %s", r.mtype, mtype)
                    msg = {"type": "error", "code": "malformed", "request_type": r.mtype, "req": req,
                           "message": f"the runtime answered {r.mtype} with {mtype}, not {REPLY_TO[r.mtype]}"}
                r.reply = msg
            elif mtype == "stream_opened":
                if req in self._gave_up_opens and msg["stream"] not in self._handles:
                    del self._gave_up_opens[req]
                    orphan = msg["stream"]  # its open_stream's call gave up: nobody will use the stream
                else:  # a duplicate, or no open_stream's: the stream (maybe one a handle holds) is left alone
                    self.invalid += 1
                    log.debug("ksdiff-sdk: dropped a stream_opened no open_stream waits for: %r", msg["stream"])
            elif mtype == "error":
                err = KsdiffError.from_reply(msg)
                handle = self._handles.get(msg.get("stream", ""))
                if handle is not None:
                    handle._on_error(err)
                else:
                    self.errors.append(err)
                    log.warning("ksdiff-sdk: runtime error: %s", err)
            self._cv.notify_all()
        if orphan is not None:
            self._end_orphan(orphan)

    def _dropped_audio(self, io: _Io) -> list[tuple[bytes, StreamHandle]]:
        """The lines' audio messages to send again (the I/O thread's), once the window of drops the runtime told of
        (``busy`` with neither ``req`` nor ``stream``) has passed: every one sent after the last message the runtime
        was known to have read when that busy came (it answered a request sent as or after it: a connection's
        messages are read in order, and what was read before the first one dropped was answered before the busy; a
        message sent long before can have waited in ZeroMQ's and TCP's queues and been read in the window) and before
        the drops ended, of lines still open here (the same handle: not an id opened again since). Nothing of lines
        left while the drops lasted (``_send_outbox``), and a line's next message leaves only once its previous one is
        known read, so no later audio of a line reached the runtime before these copies. Each carries its at_sample:
        the runtime takes only what it lacks of a copy (SPEC 4.6 ``audio``). Their end_streams, if dropped too, follow
        (``_dropped_ends``). Lines only: every frame of a line is wanted, however late; a live stream wants the
        present, and the gap of the drops is silence to it (the runtime fills it when the next audio comes)."""
        now = time.monotonic()
        with self._cv:
            busy_at = self._busy_at
            read_no = self._read_no if self._busy_read_no is None else self._busy_read_no
            _forget_sent(io, read_no)
            if busy_at is None or now < busy_at + protocol.BUSY_WINDOW_S or self._audio_resent_for == busy_at:
                return []
            self._audio_resent_for = busy_at
            self._busy_read_no = None
            io.probe_no = 0  # a probe sent before may have been dropped unread: one follows the copies
            drops_end = busy_at + protocol.BUSY_WINDOW_S
            again: list[tuple[bytes, StreamHandle]] = []
            kept: deque[tuple[int, float, bytes, StreamHandle]] = deque()
            for sent_no, sent_at, payload, line in io.sent_audio:  # each one sent after read_no (_forget_sent)
                if (sent_at <= drops_end and self._handles.get(line.stream) is line and line._lost is None
                        and not line._finished):
                    again.append((payload, line))
                    io.sent_audio_bytes -= len(payload)  # kept again once sent again
                else:
                    kept.append((sent_no, sent_at, payload, line))
            io.sent_audio = kept
            self.resent += len(again)
        if again:
            log.info("ksdiff-sdk: the runtime dropped requests of this client unread (busy): sending %d audio "
                     "message(s) of lines again", len(again))
        return again

    def _dropped_requests(self) -> list[_Request]:
        """The requests to send again (the I/O thread's, after reading the replies): those the runtime answers as it
        reads them (ANSWERED_AS_READ) left unanswered behind one it answered since (``_read_no``): they were dropped
        unread (a ``busy``), or a hello lost with a connection that dropped (an open_stream or set_controls that left
        on it fails instead: ``_connection_dropped``). Each is numbered again when it leaves. One limit: an answer
        the runtime could not deliver (the client read nothing for long) is taken for a drop too."""
        with self._cv:
            again = [r for r in self._pending.values() if r.mtype in ANSWERED_AS_READ and r.reply is None
                     and r.failed is None and not r.abandoned and r.sent_no is not None and r.sent_no < self._read_no]
            for r in again:
                r.sent_no = None
            again.sort(key=lambda r: r.req)
            self.resent += len(again)
        if again:
            log.info("ksdiff-sdk: the runtime did not read %d request(s) of this client (%s): sending them again",
                     len(again), ", ".join(r.mtype for r in again))
        return again

    def _dropped_ends(self, outbox: Outbox) -> list[tuple[bytes, StreamHandle | None]]:
        """The ``end_stream`` requests to send again (the I/O thread's): the runtime said (``busy`` with neither
        ``req`` nor ``stream``) that it dropped this client's requests unread, for at most BUSY_WINDOW_S from then,
        and those sent before that ended are still unanswered (and not still waiting in the ``outbox``). Carried out
        twice, an end_stream does no harm (SPEC 4.6 "A client past its share"); the others go again only once known
        unread (``_dropped_requests``).
        The answer to the other copy is dropped (one limit: if the stream is gone and its stream_end was missed, the
        first copy's unknown_stream is dropped too, and end() times out)."""
        now = time.monotonic()
        with self._cv:
            # ... and only once the lines' audio went again (_dropped_audio, at the start of a pass): a window that
            # ended during this pass, between the two, left that audio unsent for good (the lines ended without it)
            if (self._busy_at is None or now < self._busy_at + protocol.BUSY_WINDOW_S
                    or self._audio_resent_for != self._busy_at):
                return []
            drops_end, self._busy_at = self._busy_at + protocol.BUSY_WINDOW_S, None
            waiting = {id(entry[2]) for entry in outbox if entry[2] is not None}
            # sent_no: it left (one still among the commands, not yet in the outbox, did not)
            again = [r for r in self._pending.values() if r.mtype == "end_stream" and r.reply is None and
                     not r.abandoned and r.sent_no is not None and r.sent_at < drops_end and id(r) not in waiting]
            for r in again:
                r.sent_at = now
                self._resent[r.req] = None
                while len(self._resent) > RESENT_KEPT:
                    self._resent.popitem(last=False)
            self.resent += len(again)
        if again:
            log.info("ksdiff-sdk: the runtime dropped requests of this client unread (busy): sending %d end_stream(s) "
                     "again", len(again))
        return [(r.payload, r.line) for r in again]

    def _end_orphan(self, stream: str) -> None:
        """The runtime opened ``stream`` for an open_stream whose call had given up (it timed out, the request having
        left already): end it, so the runtime frees it now rather than after its idle timeout. The reply is dropped."""
        req = next(self._req_ids)
        with self._cv:
            self._orphan_ends.add(req)
        log.info("ksdiff-sdk: stream %r was opened after its open_stream call had timed out: ending it", stream)
        self._commands.put(("send", protocol.encode_request("end_stream", stream=stream, req=req)))
        self._wake()  # this (I/O) thread takes it on its next pass
