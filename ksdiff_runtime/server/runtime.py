"""The runtime server: audio in (microphone, file, SDK pushes), frames out over ZeroMQ, wire protocol v1.

Three kinds of thread, so that no socket is shared and nothing waits on a client:

    io        owns both sockets. Answers requests on the ROUTER and publishes frames, stream
              events, hello and stats on the PUB. A PUB drops messages for a subscriber that
              does not keep up (per-subscriber high-water mark), so a slow client never
              blocks the runtime or the other clients.
    engine    runs StreamingEngine.step() and hands its frames to io through a bounded outbox.
              When io falls that far behind, new frames are dropped and counted (stats), and
              subscribers see the gap in the frames' ``seq``.
    sources   a microphone or file source delivers audio on its own thread or callback,
              converted (InputStream) and pushed straight into the engine.

Every request is answered or refused with an ``error`` reply to the client that sent it; a
bad request never affects another client or stream (protocol/SPEC.md section 4).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
import numpy as np
import zmq

from ksdiff_runtime import __version__, motion
from ksdiff_runtime.engine.engine import StepResult, StreamingEngine
from ksdiff_runtime.engine.stream import Frame
from ksdiff_runtime.inputs.stream import AudioFormat, BadAudioError, InputStream
from ksdiff_sdk import Frame as SdkFrame
from ksdiff_sdk import protocol

if TYPE_CHECKING:
    from ksdiff_runtime.sources import Source


class FrameOutput(Protocol):
    """Another destination for every published frame (Live Link Face UDP, VMC/OSC, ...).

    ``send`` is called on the io thread right after the frame is published, so it must not
    block: send without waiting (UDP) or hand the frame to a thread of its own. An exception
    is logged and counted; the runtime goes on."""

    name: str

    def send(self, frame: SdkFrame) -> None: ...

    def close(self) -> None: ...

log = logging.getLogger("ksdiff_runtime.server")

PUBLISH_QUEUE_FRAMES = 4096  # frames waiting for the io thread before new ones are dropped
PUB_SNDHWM = 10_000  # per subscriber: ~20 s of 8 streams at 60 fps before ZeroMQ drops for it
ENGINE_POLL_S = 0.05  # the engine thread wakes this often without audio (stream timeouts)
LATENCY_WINDOW_S = 5.0  # stats latency percentiles over this much recent publishing
MAX_REQUESTS_PER_WAKE = 256  # then publish what is ready before reading more requests
SHUTDOWN_LINGER_MS = 500  # how long closing sockets may take to deliver the last messages


class RuntimeStartError(RuntimeError):
    """The runtime cannot start (an endpoint cannot be bound); the message says why."""


def build_engine(
    backend: str = "auto",
    preset: str = "low-latency",
    checkpoint: str | Path | None = None,
    fps: int = motion.FPS,
    idle_timeout_s: float = 10.0,
    threads: int = 1,
) -> StreamingEngine:
    """A StreamingEngine on the named backend (auto: the fastest available, with fallback), warmed up.

    ``threads``: ONNX Runtime's intra-op threads on the CPU. One by default: a hop's batch is
    small, and a second spinning worker fights the front-end and io threads for the cores
    (docs/SERVE.md: with one of 2 cores busy, p95 126 ms capture-to-publish with 1 thread, 287 ms with 2)."""
    from ksdiff_runtime.backends import load_backend
    from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

    loaded = load_backend(backend, checkpoint or DEFAULT_CHECKPOINT, fallback=True, threads=threads)
    engine = StreamingEngine(loaded, preset, fps=fps, stream_timeout_s=idle_timeout_s)
    engine.warm_up()
    return engine


@dataclass
class StreamInfo:
    """The runtime's bookkeeping for one stream (the engine holds its audio and motion)."""

    id: str
    source: str  # protocol.SOURCES: mic, file, sdk
    input: InputStream
    source_obj: Source | None = None
    seq: int = 0  # seq of the stream's next frame, assigned as frames leave the engine
    frames: int = 0  # frames published
    drops: int = 0  # frames dropped before publishing
    audio_seq: int = -1  # the last `audio` message's seq
    ending: bool = False  # no more audio: the engine is finishing its frames
    end_reason: str = "ended"
    end_waiters: list[tuple[bytes, int | None]] = field(default_factory=list)  # end_stream requests to answer
    owner: bytes | None = None  # the SDK client that opened it
    latencies: collections.deque[tuple[int, float]] = field(default_factory=collections.deque)
    publish_times: collections.deque[int] = field(default_factory=collections.deque)


class Runtime:
    """Serves one StreamingEngine over ZeroMQ. ``start()`` binds (or raises RuntimeStartError);
    ``stop()`` ends every stream with ``stream_end`` reason ``shutdown`` and closes the sockets."""

    def __init__(
        self,
        engine: StreamingEngine,
        *,
        pub: str = protocol.DEFAULT_PUB_ENDPOINT,
        router: str = protocol.DEFAULT_ROUTER_ENDPOINT,
        max_streams: int = 64,
        publish_queue: int = PUBLISH_QUEUE_FRAMES,
        stats_period_s: float = protocol.STATS_PERIOD_S,
        hello_period_s: float = protocol.HELLO_PERIOD_S,
        on_stats: Callable[[dict[str, Any]], None] | None = None,
        outputs: Sequence[FrameOutput] = (),
    ) -> None:
        self.engine = engine
        self.outputs = list(outputs)
        self.output_errors = {out.name: 0 for out in self.outputs}
        self.fps = engine.fps
        self.pub_requested, self.router_requested = _tcp_port_zero_to_star(pub), _tcp_port_zero_to_star(router)
        self.max_streams = max_streams
        self.publish_queue = publish_queue
        self.stats_period_s = stats_period_s
        self.hello_period_s = hello_period_s
        self.on_stats = on_stats
        self.instance = uuid.uuid4().hex[:16]
        self.lookahead_ms = engine.preset.lookahead_ms()
        self.pub_endpoint = ""
        self.router_endpoint = ""
        self.drops = 0
        self._streams: dict[str, StreamInfo] = {}
        self._lock = threading.Lock()  # guards _streams, the StreamInfo counters and the outbox
        self._stream_ended = threading.Condition(self._lock)
        self._outbox: collections.deque[tuple] = collections.deque()
        self._outbox_frames = 0
        self._sdk_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ctx: zmq.Context | None = None
        self._started_ns = time.monotonic_ns()
        self._last_stats: dict[str, Any] = {}

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Runtime:
        self._stopping.clear()  # a stopped Runtime can start again
        self._ctx = zmq.Context()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
        self._pub.setsockopt(zmq.LINGER, SHUTDOWN_LINGER_MS)
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.MAXMSGSIZE, protocol.ZMQ_MAXMSGSIZE)
        self._router.setsockopt(zmq.LINGER, SHUTDOWN_LINGER_MS)
        try:
            self.pub_endpoint = _bind(self._pub, self.pub_requested, "--pub")
            self.router_endpoint = _bind(self._router, self.router_requested, "--router")
        except RuntimeStartError:
            self._ctx.destroy(linger=0)
            raise
        # Other threads wake the io thread through a local socket pair: ZeroMQ's poller watches
        # it next to the ROUTER, and writing to it is safe from any thread.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._started_ns = time.monotonic_ns()
        self._threads = [threading.Thread(target=self._io_loop, name="ksdiff-io", daemon=True),
                         threading.Thread(target=self._engine_loop, name="ksdiff-engine", daemon=True)]
        for t in self._threads:
            t.start()
        log.info("serving: frames on %s, requests on %s (instance %s)", self.pub_endpoint, self.router_endpoint,
                 self.instance)
        return self

    def stop(self) -> None:
        """Stop sources, publish ``stream_end`` (shutdown) for every open stream, close the sockets."""
        if not self._threads:
            return
        with self._lock:
            sources = [s.source_obj for s in self._streams.values() if s.source_obj is not None]
        for src in sources:
            src.stop()
        self._stopping.set()
        self._wake()
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        self._wake_r.close()
        self._wake_w.close()
        self._pub.close(linger=SHUTDOWN_LINGER_MS)
        self._router.close(linger=0)
        for out in self.outputs:
            out.close()
        assert self._ctx is not None
        self._ctx.term()
        log.info("stopped")

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sources (mic, file) ---------------------------------------------------------------------
    def add_source(self, source: Source, seed: int = 0) -> str:
        """Open a stream fed by ``source`` and start it; returns the stream id."""
        fmt = AudioFormat(source.sample_rate, source.channels, "f32le")
        info = self._open(source.stream_id, source.kind, fmt, seed=seed, text=None, owner=None)
        info.source_obj = source

        def on_audio(pcm: np.ndarray, captured_ns: int | None) -> None:
            try:
                self.engine.push(info.id, info.input.feed(pcm), captured_ns=captured_ns)
            except (KeyError, ValueError) as exc:  # the stream ended or failed meanwhile
                log.debug("stream %s: audio not taken: %s", info.id, exc)

        def on_end(error: str | None) -> None:
            if error:
                log.error("stream %s: source failed: %s", info.id, error)
                info.end_reason = "error"
            self._finish_input(info)

        try:
            source.start(on_audio, on_end)
        except Exception:  # e.g. the device refused to open: end the stream (reason error), say so
            info.end_reason = "error"
            self.engine.abort_stream(info.id)
            self._post(("end", info, None))
            raise
        return info.id

    @property
    def stream_ids(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Block until no stream is open (True) or the timeout passes (False)."""
        with self._stream_ended:
            return self._stream_ended.wait_for(lambda: not self._streams, timeout)

    # --- stats -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The figures of the last ``stats`` message (uptime_s, drops, streams)."""
        return self._last_stats

    # --- shared by all threads ---------------------------------------------------------------
    def _open(self, stream_id: str | None, source: str, fmt: AudioFormat, seed: int, text: str | None,
              owner: bytes | None) -> StreamInfo:
        with self._lock:
            if stream_id is None:
                stream_id = next(f"sdk-{n}" for n in self._sdk_ids if f"sdk-{n}" not in self._streams)
            if stream_id in self._streams:
                raise _RefusedError("busy", f"stream {stream_id!r} is already open", stream_id)
            if len(self._streams) >= self.max_streams:
                raise _RefusedError("busy", f"the runtime serves at most {self.max_streams} streams; retry later",
                               stream_id)
            info = StreamInfo(stream_id, source, InputStream(fmt), owner=owner)
            self._streams[stream_id] = info
        try:
            # the engine takes a uint64 seed; the protocol's is int64
            self.engine.open_stream(stream_id, seed=seed & 0xFFFF_FFFF_FFFF_FFFF, text=text)
        except Exception:
            with self._lock:
                self._streams.pop(stream_id, None)
            raise
        self._post(("start", info))
        log.info("stream %s opened (%s, %d Hz, %d ch, %s)", stream_id, source, fmt.sample_rate, fmt.channels,
                 fmt.encoding)
        return info

    def _finish_input(self, info: StreamInfo) -> None:
        """No more audio for a stream: push the resampler's tail and let the engine finish it."""
        if info.ending:
            return
        info.ending = True
        try:
            tail = info.input.flush()
            if tail.size:
                self.engine.push(info.id, tail)
            self.engine.end_stream(info.id)
        except (KeyError, ValueError):  # already gone from the engine (timed out, failed)
            pass

    def _post(self, item: tuple) -> None:
        with self._lock:
            self._outbox.append(item)
        self._wake()

    def _wake(self) -> None:
        # a full buffer means the io thread has wake-ups pending anyway
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # --- the engine thread -------------------------------------------------------------------
    def _engine_loop(self) -> None:
        while not self._stopping.is_set():
            self.engine.wait_for_audio(timeout=ENGINE_POLL_S)
            if self._stopping.is_set():
                break
            started = time.perf_counter()
            try:
                result = self.engine.step()
            except Exception:  # a backend failure: log it and keep serving (streams fail one by one)
                log.exception("engine step failed")
                continue
            self._hand_over(result, 1000.0 * (time.perf_counter() - started))

    def _hand_over(self, result: StepResult, compute_ms: float) -> None:
        with self._lock:
            for frame in result.frames:
                info = self._streams.get(frame.stream_id)
                if info is None:
                    continue  # shut down meanwhile
                seq, info.seq = info.seq, info.seq + 1
                if self._outbox_frames >= self.publish_queue:
                    info.drops += 1
                    self.drops += 1
                    continue
                self._outbox.append(("frame", info, frame, seq, compute_ms))
                self._outbox_frames += 1
            ends = [(sid, None) for sid in result.finished] + [(sid, "timeout") for sid in result.timed_out]
            ends += [(sid, msg) for sid, msg in result.failed.items()]
            for sid, why in ends:
                info = self._streams.get(sid)
                if info is None:
                    continue
                if sid in result.failed:
                    info.end_reason = "error"
                    self._outbox.append(("end", info, f"stream {sid} failed: {why}"))
                else:
                    info.end_reason = why or info.end_reason
                    self._outbox.append(("end", info, None))
        if result.frames or result.finished or result.timed_out or result.failed:
            self._wake()

    # --- the io thread -------------------------------------------------------------------------
    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_hello = time.monotonic()
        next_stats = time.monotonic() + self.stats_period_s
        while True:
            now = time.monotonic()
            timeout_ms = max(0.0, 1000.0 * (min(next_hello, next_stats) - now))
            if self._stopping.is_set():
                timeout_ms = min(timeout_ms, 20.0)  # check soon whether the engine thread has stopped
            events = dict(poller.poll(timeout_ms))
            if self._wake_r.fileno() in events or self._wake_r in events:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
            if self._router in events:
                for _ in range(MAX_REQUESTS_PER_WAKE):
                    try:
                        parts = self._router.recv_multipart(zmq.NOBLOCK, copy=True)
                    except zmq.Again:
                        break
                    self._handle(parts)
            self._publish_outbox()
            now = time.monotonic()
            if now >= next_hello:
                self._send_pub(protocol.encode_hello(__version__, self.fps, instance=self.instance))
                next_hello = now + self.hello_period_s
            if now >= next_stats:
                self._publish_stats()
                next_stats = now + self.stats_period_s
            if self._stopping.is_set() and not self._threads[1].is_alive():
                self._shutdown_streams()
                return

    def _send_pub(self, message: tuple[bytes, bytes]) -> None:
        # A PUB never blocks: at a subscriber's high-water mark ZeroMQ drops for that subscriber.
        self._pub.send_multipart(message, flags=zmq.NOBLOCK)

    def _reply(self, identity: bytes, payload: bytes) -> None:
        try:
            self._router.send_multipart([identity, payload], flags=zmq.NOBLOCK)
        except zmq.Again:  # that client stopped reading; it must not hold up the others
            log.warning("reply to a client that does not read was dropped")

    def _publish_outbox(self) -> None:
        with self._lock:
            items = list(self._outbox)
            self._outbox.clear()
            self._outbox_frames = 0
        for item in items:
            kind, info = item[0], item[1]
            now = time.monotonic_ns()
            if kind == "frame":
                try:
                    self._publish_frame(info, item[2], item[3], item[4], now)
                except (ValueError, protocol.ProtocolError) as e:  # e.g. a non-finite value from a broken model
                    with self._lock:
                        info.drops += 1
                        self.drops += 1
                    log.error("stream %s: frame %d not published (dropped, counted): %s", info.id, item[2].index, e)
            elif kind == "start":
                self._send_pub(protocol.encode_stream_start(info.id, info.source, now))
            elif kind == "end":
                self._end(info, item[2], now)

    def _publish_frame(self, info: StreamInfo, frame: Frame, seq: int, compute_ms: float, now: int) -> None:
        bs = np.clip(frame.blendshapes, 0.0, 1.0).astype(np.float32)
        gaze = motion.gaze_from_blendshapes(bs)
        message = protocol.encode_frame(
            info.id, seq, frame.index, self.fps, frame.t_audio, bs, frame.head, gaze,
            frame.captured_ns, now, self.lookahead_ms, compute_ms, frame.last,
        )
        self._send_pub(message)
        if self.outputs:
            out_frame = SdkFrame(info.id, seq, frame.index, self.fps, frame.t_audio, bs,
                                 np.asarray(frame.head, np.float32), gaze, frame.captured_ns, now,
                                 self.lookahead_ms, compute_ms, frame.last)
            for out in self.outputs:
                try:
                    out.send(out_frame)
                except Exception as e:  # an output must never cost the runtime or the other outputs
                    self.output_errors[out.name] += 1
                    if self.output_errors[out.name] == 1:
                        log.error("output %s failed (counted; logged once): %s", out.name, e)
        with self._lock:
            info.frames += 1
            info.publish_times.append(now)
            if frame.captured_ns is not None:
                info.latencies.append((now, (now - frame.captured_ns) / 1e6))

    def _end(self, info: StreamInfo, error: str | None, now: int) -> None:
        """Publish a stream's end, answer its end_stream requests, forget it."""
        with self._lock:
            if self._streams.get(info.id) is not info:
                return
            del self._streams[info.id]
            self._stream_ended.notify_all()
        self._send_pub(protocol.encode_stream_end(info.id, info.source, info.end_reason, info.frames, now))
        for identity, req in info.end_waiters:
            self._reply(identity, protocol.encode_reply("stream_ended", stream=info.id, frames=info.frames,
                                                        **_req(req)))
        if error and info.owner is not None:
            self._reply(info.owner, protocol.encode_error("internal", error, None, stream=info.id))
        log.info("stream %s ended (%s): %d frames, %d dropped", info.id, info.end_reason, info.frames, info.drops)

    def _shutdown_streams(self) -> None:
        self._publish_outbox()
        with self._lock:
            infos = list(self._streams.values())
        for info in infos:
            self.engine.abort_stream(info.id)
            info.end_reason = "shutdown"
            self._end(info, None, time.monotonic_ns())

    def _publish_stats(self) -> None:
        now = time.monotonic_ns()
        streams: dict[str, dict[str, Any]] = {}
        with self._lock:
            for info in self._streams.values():
                while info.publish_times and now - info.publish_times[0] > 1e9:
                    info.publish_times.popleft()
                while info.latencies and now - info.latencies[0][0] > LATENCY_WINDOW_S * 1e9:
                    info.latencies.popleft()
                lat = np.array([ms for _, ms in info.latencies]) if info.latencies else np.zeros(1)
                streams[info.id] = {
                    "fps": float(len(info.publish_times)),
                    "latency_p50_ms": float(np.percentile(lat, 50)),
                    "latency_p95_ms": float(np.percentile(lat, 95)),
                    "frames": info.frames, "drops": info.drops,
                    "source": info.source, "sanitized": info.input.sanitized,
                }
            drops = self.drops
        uptime = (now - self._started_ns) / 1e9
        self._send_pub(protocol.encode_stats(uptime, streams, drops, now))
        self._last_stats = {"uptime_s": uptime, "drops": drops, "streams": streams}
        if self.on_stats is not None:
            try:
                self.on_stats(self._last_stats)
            except Exception:  # a caller's callback must not stop the io thread
                log.exception("on_stats callback failed")

    # --- requests --------------------------------------------------------------------------------
    def _handle(self, parts: list[bytes]) -> None:
        identity, frames = parts[0], parts[1:]
        if len(frames) != 1:
            hint = " (an empty delimiter frame: use a DEALER socket, not REQ)" if frames[:1] == [b""] else ""
            self._reply(identity, protocol.encode_error(
                "malformed", f"a request is exactly one ZeroMQ frame, got {len(frames)}{hint}", None))
            return
        payload = frames[0]
        try:
            msg = protocol.decode(payload)
            mtype = msg["type"]
            if mtype not in protocol.REQUEST_TYPES:
                raise protocol.ProtocolError("unknown_type", f"{mtype!r} is not a request; requests: "
                                             f"{', '.join(protocol.REQUEST_TYPES)}", mtype)
            getattr(self, f"_on_{mtype}")(identity, msg)
        except protocol.ProtocolError as e:
            _, stream, req = _echo_fields(payload)
            log.warning("request refused (%s): %s", e.code, e.message)
            self._reply(identity, protocol.encode_error(e.code, e.message, e.message_type, stream=stream, req=req))
        except _RefusedError as e:
            mtype, _, req = _echo_fields(payload)
            log.warning("request refused (%s): %s", e.code, e.message)
            self._reply(identity, protocol.encode_error(e.code, e.message, mtype, stream=e.stream, req=req))
        except Exception as e:  # a bug must cost one request, not the runtime
            log.exception("request failed")
            mtype, _, req = _echo_fields(payload)
            self._reply(identity, protocol.encode_error("internal", f"{type(e).__name__}: {e}", mtype, req=req))

    def _on_hello(self, identity: bytes, msg: dict) -> None:
        _, payload = protocol.encode_hello(__version__, self.fps, req=msg.get("req"), instance=self.instance)
        self._reply(identity, payload)

    def _on_open_stream(self, identity: bytes, msg: dict) -> None:
        try:
            fmt = AudioFormat(msg["sample_rate"], msg["channels"], msg["format"])
        except BadAudioError as e:
            raise _RefusedError("bad_audio", str(e), msg.get("stream")) from None
        info = self._open(msg.get("stream"), "sdk", fmt, seed=int(msg.get("seed", 0)), text=msg.get("transcript"),
                          owner=identity)
        self._reply(identity, protocol.encode_reply("stream_opened", stream=info.id, fps=self.fps,
                                                    **_req(msg.get("req"))))

    def _sdk_stream(self, sid: str) -> StreamInfo:
        with self._lock:
            info = self._streams.get(sid)
        if info is None or info.ending:
            raise _RefusedError("unknown_stream", f"no open stream {sid!r}", sid)
        if info.source != "sdk":
            raise _RefusedError("unknown_stream", f"stream {sid!r} is fed by the runtime's {info.source}, not by "
                           "clients", sid)
        return info

    def _on_audio(self, identity: bytes, msg: dict) -> None:
        info = self._sdk_stream(msg["stream"])
        if msg["seq"] != info.audio_seq + 1:
            log.warning("stream %s: audio seq %d after %d (lost or reordered messages)", info.id, msg["seq"],
                        info.audio_seq)
        info.audio_seq = msg["seq"]
        try:
            chunk = info.input.feed(msg["pcm"], msg.get("at_sample"))
        except BadAudioError as e:
            raise _RefusedError("bad_audio", str(e), info.id) from None
        try:
            self.engine.push(info.id, chunk, captured_ns=time.monotonic_ns())
        except (KeyError, ValueError):  # timed out or failed in the engine a moment ago
            raise _RefusedError("unknown_stream", f"stream {info.id!r} has ended", info.id) from None

    def _on_end_stream(self, identity: bytes, msg: dict) -> None:
        sid = msg["stream"]
        with self._lock:
            info = self._streams.get(sid)
            if info is not None and info.source == "sdk":
                info.end_waiters.append((identity, msg.get("req")))
        if info is None or info.source != "sdk":
            raise _RefusedError("unknown_stream", f"no open stream {sid!r} fed by clients", sid)
        self._finish_input(info)


class _RefusedError(Exception):
    """A request the runtime refuses with an error code (not a protocol violation)."""

    def __init__(self, code: str, message: str, stream: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.stream = code, message, stream


def _req(req: int | None) -> dict[str, int]:
    return {} if req is None else {"req": req}


def _echo_fields(payload: bytes) -> tuple[str | None, str | None, int | None]:
    """(type, stream, req) of a refused request, where they can be read, to echo in the error."""
    if len(payload) > protocol.MAX_MESSAGE_BYTES:
        return None, None, None  # not worth unpacking
    try:
        msg = msgpack.unpackb(payload, raw=False)
    except Exception:
        return None, None, None
    if not isinstance(msg, dict):
        return None, None, None
    mtype, stream, req = msg.get("type"), msg.get("stream"), msg.get("req")
    return (mtype if isinstance(mtype, str) else None,
            stream if isinstance(stream, str) and protocol.STREAM_ID_RE.fullmatch(stream) else None,
            req if isinstance(req, int) and not isinstance(req, bool) and 0 <= req < 1 << 64 else None)


def _tcp_port_zero_to_star(endpoint: str) -> str:
    """``tcp://host:0`` means an ephemeral port (ZeroMQ spells it ``tcp://host:*``)."""
    return endpoint[:-2] + ":*" if endpoint.startswith("tcp://") and endpoint.endswith(":0") else endpoint


def _bind(sock: zmq.Socket, endpoint: str, flag: str) -> str:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        if e.errno == zmq.EADDRINUSE:
            raise RuntimeStartError(f"cannot listen on {endpoint}: the address is already in use (another "
                                    f"ksdiff-runtime running?); choose another with {flag}") from None
        raise RuntimeStartError(f"cannot listen on {endpoint}: {e.strerror} (check {flag})") from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
