"""The runtime server: audio in (microphone, file, SDK pushes), events out to every output, wire protocol v1.

Two threads of its own, so that no socket is shared and nothing waits on a client:

    io        owns the ROUTER (requests and pushed audio) and, through the ZeroMQ output, the PUB.
              Answers requests, feeds pushed audio into the sessions, and hands every event
              (frames, stream starts and ends, stats, hello) to the outputs in order.
    engine    runs StreamingEngine.step() round after round and hands its results to io through
              a bounded outbox (frames over its bound are dropped and counted: a gap in seq).

Sources (a microphone, files) feed their sessions from their own threads. The one registry of
streams is the engine's ``Sessions``. Every request is answered or refused with an ``error`` reply
to the client that sent it; a bad request never affects another client or stream
(protocol/SPEC.md section 4). ``stop()`` ends every stream (a closing frame with ``last``, then
``stream_end`` reason ``shutdown``) and returns within about a second from any state (a device that has stopped
delivering takes up to SOURCE_STOP_WAIT_S to close).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ksdiff_runtime import __version__, motion
from ksdiff_runtime.engine.capacity import OVER_ROOM_WARN_S, OverRoom, Probe
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE
from ksdiff_runtime.engine.controls import Controls, ControlsError
from ksdiff_runtime.engine.engine import DEFAULT_IDLE_TIMEOUT_S, Ended, StepResult, StreamingEngine
from ksdiff_runtime.engine.gate import gate_if_available
from ksdiff_runtime.engine.liveliness import LivelinessConfig
from ksdiff_runtime.engine.sampling import DEFAULT_MOOD_GUIDANCE
from ksdiff_runtime.events import Event, Frame, Hello, Stats, StreamEnded, StreamStarted
from ksdiff_runtime.inputs.stream import AudioFormat, BadAudioError
from ksdiff_runtime.outputs.base import FrameOutput
from ksdiff_runtime.outputs.pacing import Pacer
from ksdiff_runtime.outputs.zmq import PUB_SNDHWM, ZmqPublisher
from ksdiff_runtime.sessions import DEFAULT_MAX_AHEAD_S, RefusedError, Session
from ksdiff_runtime.sources import Source, SourceError
from ksdiff_sdk import protocol

from .floods import IO_SHARE, SLICE_S, FloodGuard
from .ratelimit import SUMMARY_PERIOD_S, RateLimitedLog
from .security import Authenticator, CurveKeys, SecurityError, check_endpoints, is_ipv6

log = logging.getLogger("ksdiff_runtime.server")

PUBLISH_QUEUE_FRAMES = 4096  # frames waiting for the io thread before new ones are dropped
ENGINE_POLL_S = 0.05  # the engine thread wakes this often without audio (stream timeouts)
LATENCY_WINDOW_S = 5.0  # stats latency percentiles over this much recent publishing
MAX_REQUESTS_PER_WAKE = 256  # then publish what is ready before reading more requests
STOP_ENGINE_WAIT_S = 1.0  # stop(): how long the engine thread may take to finish its round
SHUTDOWN_LINGER_MS = 300  # how long closing the PUB may take to deliver the last messages
STOP_PACED_S = 0.25  # stop(): how long the paced outputs (outputs/pacing.py) may take to send the streams' ease to rest
SOURCE_REOPEN_S = 2.0  # a lost source that can be reopened (a mic unplugged, its sound server gone): tried after this
SOURCE_REOPEN_MAX_S = 60.0  # ... then ever less often, up to this (a mic that cannot be opened, or delivers nothing)
SOURCE_STOP_WAIT_S = 5.0  # stop(): how long the sources of streams that ended earlier may take to close
# INFO lines of one kind that clients' ordinary requests cause (their streams opened and ended, controls set): logged
# one by one up to this many in each SUMMARY_PERIOD_S, the rest at DEBUG and summed up in one INFO line (_QuotaLog)
CLIENT_LOG_QUOTA = 20
LOGGED_CONTROLS_CHARS = 200  # a controls-set line shows the client's changes cut to this (the full map: ~6 KB)
# requests ZeroMQ queues for the io thread per client connection (ZMQ_RCVHWM; its default, 1000, let 4 connections
# pushing 1 MiB messages queue ~1 GB): past it ZeroMQ stops reading that connection, nothing is lost (the kernel's
# socket buffers, then the client's own queue, hold the rest), and what one client has queued here is at most this
# many messages of up to MAX_MESSAGE_BYTES. A line's audio comes in a few large messages; a live stream's 10-100 ms
# chunks are small enough for the socket buffers to hold hundreds while the io thread is busy.
ROUTER_RCVHWM = 16


class RuntimeStartError(RuntimeError):
    """The runtime cannot start (an endpoint cannot be bound, keys missing); the message says why."""


def build_engine(
    backend: str = "auto",
    preset: str = "low-latency",
    checkpoint: str | Path | None = None,
    fps: int = motion.FPS,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    threads: int = 1,
    controls: Controls | None = None,
    voice_gate: bool = True,
    closure: bool = True,
    liveliness: bool = True,
    streaming_recogniser: bool = True,
    mood_guidance: float = DEFAULT_MOOD_GUIDANCE,
    network_style: bool = False,
    int8: bool = True,
    probe: Probe | None = None,
) -> StreamingEngine:
    """A StreamingEngine on the named backend (auto: the fastest available, with fallback), warmed up.
    ``voice_gate``: rest the mouth where no voice is heard (engine/gate.py; off with a warning when
    Silero VAD is not installed). ``closure``: seal the lips where the recogniser hears /p b m/
    (engine/closure.py; a model without a posteriorgram has it off, with a warning). ``liveliness``: blinks,
    gaze micro-saccades and a centred head on top of the model (engine/liveliness.py).
    ``streaming_recogniser``: live streams keep a streaming recogniser (features/streaming_frontend.py);
    False: each hop re-recognises its window of audio. ``mood_guidance``: how strongly the network speaks in
    a stream's mood (engine/sampling.py). ``network_style``: a stream's style take reaches the network's style
    input too (engine/network_style.py). ``int8``: ONNX Runtime on the CPU runs the int8 denoiser
    (backends/select.py load_backend; other backends run float). ``probe``: the capacity probe of an engine built
    before with the same arguments on this machine (a restarted serve's), used instead of probing again.

    ``threads``: ONNX Runtime's intra-op threads on the CPU. One by default: a hop's batch is
    small, and a second spinning worker fights the front-end and io threads for the cores
    (docs/SERVE.md: with one of 2 cores busy, p95 126 ms capture-to-publish with 1 thread, 287 ms with 2)."""
    from ksdiff_runtime.backends import load_backend
    from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

    t0 = time.perf_counter()
    loaded = load_backend(backend, checkpoint or DEFAULT_CHECKPOINT, fallback=True, threads=threads, int8=int8)
    engine = StreamingEngine(loaded, preset, fps=fps, idle_timeout_s=idle_timeout_s, controls=controls,
                             voice_gate=gate_if_available(voice_gate), closure=DEFAULT_CLOSURE if closure else None,
                             liveliness=LivelinessConfig() if liveliness else None,
                             streaming_recogniser=streaming_recogniser, mood_guidance=mood_guidance,
                             network_style=network_style)
    loaded_s = time.perf_counter() - t0
    warm_s = engine.warm_up(probe=probe)
    r = engine.capacity.reading()
    rounds = f"; its round ~{r.rounds.per_stream_ms:.1f} ms a stream + {r.rounds.fixed_ms:.1f}" if r.rounds else ""
    if probe is not None and engine.probe is probe:
        rounds += f", as the process before measured {time.time() - probe.measured_at:.0f} s ago"
    on = loaded.name + (" (int8)" if getattr(loaded, "precision", "") == "int8" else "")
    log.info("model on %s in %.1f s, warmed up in %.1f s; a %s stream costs %.2f of a core here (and the rounds "
             "%.2f)%s (room for %d)", on, loaded_s, warm_s, engine.preset.name, r.stream_cores, r.fixed_cores,
             rounds, r.streams_that_fit())
    return engine


# --- what the engine thread hands the io thread ----------------------------------------------------
@dataclass
class _Started:
    session: Session


@dataclass
class _Round:
    result: StepResult


Outbox = _Started | _Round


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
        max_streams_per_client: int | None = None,
        max_ahead_s: float = DEFAULT_MAX_AHEAD_S,
        publish_queue: int = PUBLISH_QUEUE_FRAMES,
        stats_period_s: float = protocol.STATS_PERIOD_S,
        hello_period_s: float = protocol.HELLO_PERIOD_S,
        over_room_settle_s: float = OVER_ROOM_WARN_S,
        on_stats: Callable[[dict[str, Any]], None] | None = None,
        outputs: Sequence[FrameOutput] = (),
        curve: CurveKeys | None = None,
        insecure_lan: bool = False,
        admission: bool = True,
    ) -> None:
        self.engine = engine
        self.sessions = engine.sessions
        self.extra_outputs = list(outputs)
        self.fps = engine.fps
        self.pub_requested, self.router_requested = _tcp_port_zero_to_star(pub), _tcp_port_zero_to_star(router)
        self.max_streams = max_streams
        self.max_streams_per_client = max_streams_per_client  # None: one client may hold all of max_streams
        self.max_ahead_s = max_ahead_s
        self.publish_queue = publish_queue
        self.stats_period_s = stats_period_s
        self.hello_period_s = hello_period_s
        self.on_stats = on_stats
        self.curve = curve
        self.insecure_lan = insecure_lan
        self.admission = admission  # refuse streams beyond the measured capacity (engine/capacity.py)
        self.instance = uuid.uuid4().hex[:16]
        self.pub_endpoint = ""
        self.router_endpoint = ""
        self.drops = 0
        self.output_errors: dict[str, int] = {}
        self._paced: list[FrameOutput] = []
        self._pacer = Pacer()
        self.floods = FloodGuard(streams_of=self.sessions.held_by)
        self.refusals = RateLimitedLog(log, "request refused")  # by error code, counted in stats
        self._source_threads: list[threading.Thread] = []  # stopping (and reopening) ended streams' sources
        self._source_lock = threading.Lock()  # _source_threads, and stop() against a reopen
        self._tracebacks_logged: set[tuple] = set()  # (type, file, line) of exceptions whose traceback was logged
        self.warnings = RateLimitedLog(log, "client warning")  # what clients do that is not refused
        self.client_lines = _QuotaLog(log)  # what clients do that is neither (streams opened and ended, controls)
        # more live streams held than the machine has room for now: the log says so
        self.over_room = OverRoom(over_room_settle_s)
        self._outbox: collections.deque[Outbox] = collections.deque()
        self._outbox_frames = 0
        self._outbox_lock = threading.Lock()
        self._idle = threading.Condition()  # notified when a stream's end has been published, and sent when paced
        self._stopping = threading.Event()
        # why the runtime stopped on its own: a thread of it failed outside what it guards (None: it did not)
        self.failure: str | None = None
        # the streams whose source (mic, file) ended them with an error, each with its last error: a file that cannot
        # be decoded further in, a device unplugged (a mic's stream is reopened, and its error stays here)
        self.source_errors: dict[str, str] = {}
        self._io: threading.Thread | None = None
        self._engine_thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._auth: Authenticator | None = None
        self._started_ns = time.monotonic_ns()
        self._last_stats: dict[str, Any] = {}

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Runtime:
        try:
            check_endpoints([self.pub_requested, self.router_requested], self.curve, self.insecure_lan)
        except SecurityError as e:
            raise RuntimeStartError(str(e)) from None
        self._stopping.clear()  # a stopped Runtime can start again
        self.failure = None
        self.sessions.max_streams = self.max_streams
        self.sessions.max_streams_per_client = self.max_streams_per_client
        self.sessions.admission = self.engine.capacity.admit if self.admission else None
        self.engine.keep_ended = True  # a session leaves the registry once its end is published (_end)
        self._ctx = zmq.Context()
        if self.curve is not None:
            self._auth = Authenticator(self._ctx, self.curve)
        pub = self._ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
        pub.setsockopt(zmq.LINGER, SHUTDOWN_LINGER_MS)
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.MAXMSGSIZE, protocol.ZMQ_MAXMSGSIZE)
        router.setsockopt(zmq.RCVHWM, ROUTER_RCVHWM)
        router.setsockopt(zmq.LINGER, 0)
        # an answer it cannot queue (a client that reads nothing) or route (a client that has gone) is refused, not
        # dropped without a word: _reply says which
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            for sock, endpoint in ((pub, self.pub_requested), (router, self.router_requested)):
                sock.ipv6 = is_ipv6(endpoint)  # ZeroMQ binds no IPv6 address (tcp://[::1]:5555) without it
                if self.curve is not None:
                    self.curve.serve_on(sock)
        except (zmq.ZMQError, ValueError, TypeError) as e:
            pub.close(linger=0)
            router.close(linger=0)
            self._close_context()
            raise RuntimeStartError(f"cannot serve with these CurveZMQ keys: {e}") from None
        try:
            self.pub_endpoint = _bind(pub, self.pub_requested, "--pub")
            self.router_endpoint = _bind(router, self.router_requested, "--router")
        except RuntimeStartError:
            pub.close(linger=0)
            router.close(linger=0)
            self._close_context()
            raise
        # From here the io thread owns both sockets (handed over at its start) and closes them.
        self._router = router
        self._outputs: list[FrameOutput] = [ZmqPublisher(pub, self.fps), *self.extra_outputs]
        self.output_errors = {out.name: 0 for out in self._outputs}
        # outputs that show a frame when it arrives get each frame at its time on its stream's clock (pacing.py)
        self._paced = [out for out in self._outputs if getattr(out, "paced", False)]
        self._pacer = Pacer()
        # Other threads wake the io thread through a local socket pair: ZeroMQ's poller watches
        # it next to the ROUTER, and writing to it is safe from any thread.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._started_ns = time.monotonic_ns()
        self._engine_thread = threading.Thread(target=self._guarded, args=("engine", self._engine_loop),
                                               name="ksdiff-engine", daemon=True)
        self._io = threading.Thread(target=self._guarded, args=("io", self._io_loop), name="ksdiff-io", daemon=True)
        self._engine_thread.start()
        self._io.start()
        log.info("serving: frames on %s, requests on %s%s (instance %s)", self.pub_endpoint, self.router_endpoint,
                 " with CurveZMQ" if self.curve else "", self.instance)
        return self

    def stop(self) -> None:
        """Stop sources, end every open stream (a closing frame with ``last``, ``stream_end`` reason
        ``shutdown``), close the sockets. Safe from any state; takes about a second (up to SOURCE_STOP_WAIT_S
        more while a device that stopped delivering closes)."""
        if self._io is None:
            return
        with self._source_lock:  # from here no source is reopened (_after_source checks it under the lock)
            self._stopping.set()  # first: a source waiting for the engine to take its audio gives up at once
        self.sessions.notify()
        self._wake()
        for session in list(self.sessions):
            if session.source_obj is not None:
                session.source_obj.stop()
        deadline = time.monotonic() + SOURCE_STOP_WAIT_S
        self._join_source_threads(deadline)  # sources of streams that ended earlier, still closing or reopening
        assert self._engine_thread is not None
        self._engine_thread.join(timeout=STOP_ENGINE_WAIT_S + 1)
        self._io.join(timeout=STOP_ENGINE_WAIT_S + 2)
        if self._io.is_alive():
            log.error("the io thread did not stop in time")
        self._join_source_threads(deadline)  # any the io thread started while it ended the streams
        self._io = self._engine_thread = None
        self._wake_r.close()
        self._wake_w.close()
        for out in self.extra_outputs:
            out.close()
        self._close_context()
        log.info("stopped")

    def _close_context(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> Runtime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sources (mic, file) ---------------------------------------------------------------------
    def add_source(self, source: Source, seed: int | None = None,
                   reopen: Callable[[], Source] | None = None) -> str:
        """Open a stream fed by ``source`` and start it; returns the stream id. ``seed``: its motion's noise (None:
        a hash of its id, as for a client's stream, so files played at once do not nod together). ``reopen``: makes
        a source like it: when the stream ends with an error (the device was unplugged, the sound server went away)
        or times out (no audio came: the machine slept, the device stalled), a new one from it is started every
        SOURCE_REOPEN_S until one starts. Raises RefusedError (busy: the machine has no room for it) or SourceError
        (it failed to start; its stream ends with reason error). Whatever ends a stream stops its source."""
        session = self.sessions.open(source.stream_id, source.kind, AudioFormat(source.sample_rate, source.channels),
                                     seed=seed, mode=source.mode)
        session.source_obj = source
        session.source_reopen = reopen
        self._post(_Started(session))

        def on_audio(pcm: np.ndarray, captured_ns: int | None) -> None:
            try:
                self.sessions.feed_from_source(session, pcm, captured_ns, self._stopping)
            except RefusedError as exc:  # the stream ended or failed meanwhile
                log.debug("stream %s: audio not taken: %s", session.id, exc.message)

        def on_end(error: str | None) -> None:
            if error:
                log.error("stream %s: source failed: %s", session.id, error)
                session.source_failed = True  # the source's own error (reopened), not the engine's (not)
                self.source_errors[session.id] = error
            self.sessions.end(session, "error" if error else "ended")

        log.info("stream %s opened (%s, %d Hz, %d ch)", session.id, source.kind, source.sample_rate, source.channels)
        try:
            source.start(on_audio, on_end)
        except Exception as exc:  # e.g. the device refused to open: end the stream (reason error), say so
            session.source_obj = session.source_reopen = None  # the caller retries (a reopen loop) or gives up
            self.sessions.end(session, "error")
            raise SourceError(f"{source.kind} {source.stream_id}: {exc}") from exc
        return session.id

    @property
    def stream_ids(self) -> list[str]:
        """The open streams: not those the engine has finished (their end is published before they leave the
        registry, so a client that saw the end must not find them here)."""
        return [s.id for s in self.sessions if not s.finished]

    def wait_until_idle(self, timeout: float | None = None) -> bool:
        """Block until no stream is open and the paced outputs have sent every frame (True), or the timeout passes
        (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: len(self.sessions) == 0 and self._pacer.held == 0, timeout)

    def stats(self) -> dict[str, Any]:
        """The figures of the last ``stats`` message (uptime_s, drops, streams, refused, capacity) and ``room``: what
        bounds the capacity, in words (``Reading.describe``)."""
        return self._last_stats

    def _guarded(self, name: str, loop: Callable[[], None]) -> None:
        """Run a thread's loop; if it fails outside what it guards itself, the runtime stops and says why, in the
        log and in ``failure`` (the first failure's): a runtime whose engine or io thread is gone would otherwise
        look alive and serve nothing. The sources stop; the io thread ends the streams (reason error, its
        client told), or, when it is the one that failed, they are dropped unpublished (its socket is gone)."""
        try:
            loop()
        except BaseException as exc:
            if self.failure is None:
                self.failure = f"the {name} thread failed: {type(exc).__name__}: {exc}"
            log.critical("the %s thread failed: %s: %s; the runtime stops", name, type(exc).__name__, exc,
                         exc_info=exc)
            self._stopping.set()
            self.sessions.notify()
            self._wake()
            for session in list(self.sessions):
                if session.source_obj is not None:
                    session.source_obj.stop()
            if name == "io":
                assert self._engine_thread is not None
                self._engine_thread.join(timeout=STOP_ENGINE_WAIT_S)
                for session in list(self.sessions):
                    self.sessions.finish(session)
                    self.sessions.remove(session)
                self._pacer.drain()  # nothing of it goes out now (this thread is the one that sent it)
                with self._idle:
                    self._idle.notify_all()

    # --- the engine thread -------------------------------------------------------------------
    def _engine_loop(self) -> None:
        while not self._stopping.is_set():
            if not self.engine.has_work():
                self.sessions.wait_for_work(ENGINE_POLL_S)
            if self._stopping.is_set():
                break
            try:
                result = self.engine.step()
            except Exception:  # a backend failure: log it and keep serving (streams fail one by one)
                log.exception("engine step failed")
                self._stopping.wait(ENGINE_POLL_S)  # do not spin on a failure that repeats
                continue
            if result.frames or result.ended or result.shed:
                self._post(_Round(result))

    def _post(self, item: Outbox) -> None:
        with self._outbox_lock:
            if isinstance(item, _Round) and item.result.frames:
                room = self.publish_queue - self._outbox_frames
                if room < len(item.result.frames):  # the io thread is that far behind: drop (seq gaps)
                    dropped = item.result.frames[max(0, room) :]
                    item.result.frames = item.result.frames[: max(0, room)]
                    for f in dropped:
                        item.result.shed[f.stream] = item.result.shed.get(f.stream, 0) + 1
                    self.drops += len(dropped)
                self._outbox_frames += len(item.result.frames)
            self._outbox.append(item)
        self._wake()

    def _wake(self) -> None:
        # a full buffer means the io thread has wake-ups pending anyway
        with contextlib.suppress(BlockingIOError, OSError, AttributeError):
            self._wake_w.send(b"\0")

    # --- the io thread -------------------------------------------------------------------------
    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        wake_only = zmq.Poller()  # while request reading rests (floods.py), frames still go out
        wake_only.register(self._wake_r, zmq.POLLIN)
        next_hello = time.monotonic()
        next_stats = time.monotonic() + self.stats_period_s
        rest_until = 0.0  # requests are not read before this (the io thread's share for them is used up)
        try:
            while True:
                now = time.monotonic()
                wake_at = min(next_hello, next_stats)
                if (paced_due := self._pacer.next_due()) is not None:
                    wake_at = min(wake_at, max(paced_due, now))
                # whole ms, rounded up (the poller truncates): woken early, the loop would spin until a frame is due
                timeout_ms = max(0.0, math.ceil(1000.0 * (wake_at - now)))
                if self._stopping.is_set():
                    timeout_ms = min(timeout_ms, 20.0)  # check soon whether the engine thread has stopped
                resting = now < rest_until
                if resting:
                    timeout_ms = min(timeout_ms, 1000.0 * (rest_until - now))
                events = dict((wake_only if resting else poller).poll(timeout_ms))
                if self._wake_r.fileno() in events or self._wake_r in events:
                    with contextlib.suppress(BlockingIOError, OSError):
                        while self._wake_r.recv(4096):
                            pass
                if self._router in events:
                    started = time.monotonic()
                    budget = IO_SHARE * SLICE_S
                    for _ in range(MAX_REQUESTS_PER_WAKE):
                        try:
                            parts = self._router.recv_multipart(zmq.NOBLOCK, copy=True)
                        except zmq.Again:
                            break
                        self._handle_fairly(parts)
                        if time.monotonic() - started > budget:  # more may wait: publish, let others run
                            rest_until = time.monotonic() + (1.0 - IO_SHARE) * SLICE_S
                            break
                self._publish_outbox()
                now = time.monotonic()
                self._send_paced(self._pacer.due(now))
                if now >= next_hello:
                    self._emit(Hello(self.instance))
                    next_hello = now + self.hello_period_s
                if now >= next_stats:
                    self._publish_stats()
                    self.refusals.flush()
                    self.warnings.flush()
                    self.client_lines.flush()
                    next_stats = now + self.stats_period_s
                if self._stopping.is_set():
                    assert self._engine_thread is not None
                    self._engine_thread.join(timeout=STOP_ENGINE_WAIT_S)
                    self._shutdown_streams()
                    self._finish_paced()
                    self.client_lines.flush(final=True)
                    return
        finally:
            self._router.close(linger=0)
            for out in self._outputs[:1]:  # the PUB, which this thread owns
                out.close()

    def _emit(self, event: Event) -> None:
        """Hand an event to every output (to the paced ones when its time comes); one that fails is counted and
        logged once, never fatal."""
        for out in self._outputs:
            if out in self._paced:
                continue
            try:
                out.send(event)
            except Exception as e:
                if isinstance(event, Frame) and out is self._outputs[0]:
                    raise  # the frame cannot be encoded: the caller drops and counts it
                self._output_failed(out, e)
        if self._paced:
            now = time.monotonic()
            self._pacer.put(event, now)
            self._send_paced(self._pacer.due(now, getattr(event, "stream", None)))

    def _finish_paced(self) -> None:
        """At stop: what the paced outputs are due within STOP_PACED_S (each stream's ease to rest, 150 ms, which
        the shutdown just made) goes at its time; of the rest (a line's later frames) each stream's last frame
        and end go now."""
        until = time.monotonic() + STOP_PACED_S
        while (due := self._pacer.next_due()) is not None and due <= until:
            time.sleep(max(0.0, due - time.monotonic()))
            self._send_paced(self._pacer.due(time.monotonic()))
        self._send_paced(self._pacer.drain())

    def _send_paced(self, events: list[Event]) -> None:
        for event in events:
            for out in self._paced:
                try:
                    out.send(event)
                except Exception as e:
                    self._output_failed(out, e)
        if events and self._pacer.held == 0:
            with self._idle:
                self._idle.notify_all()

    def _output_failed(self, out: FrameOutput, e: Exception) -> None:
        self.output_errors[out.name] += 1
        if self.output_errors[out.name] == 1:
            log.error("output %s failed (counted; logged once): %s", out.name, e)

    def _reply(self, identity: bytes, payload: bytes) -> None:
        try:
            self._router.send_multipart([identity, payload], flags=zmq.NOBLOCK)
        except zmq.Again:  # that client stopped reading; it must not hold up the others
            self.warnings("unread_reply", "a reply to a client that does not read was dropped")
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            log.debug("a reply to a client that has gone was dropped")  # it closed before its answer: no fault

    def _publish_outbox(self) -> None:
        with self._outbox_lock:
            items = list(self._outbox)
            self._outbox.clear()
            self._outbox_frames = 0
        self._pacer.next_batch()  # what the engine computed since the last pass came together
        for item in items:
            if isinstance(item, _Started):
                self._emit(self._started(item.session))
                continue
            result = item.result
            for sid, n in result.shed.items():
                session = self.sessions.get(sid)
                if session is not None:
                    session.drops += n
                    session.shed += n
            for frame in result.frames:
                self._publish_frame(frame)
            for level in result.levels:
                if self.sessions.get(level.stream) is not None:
                    self._emit(level)
            for ended in result.ended:
                self._end(ended)

    def _publish_frame(self, frame: Frame, session: Session | None = None) -> None:
        session = session or self.sessions.get(frame.stream)
        if session is None:
            return  # ended meanwhile
        try:
            self._emit(frame)
        except (ValueError, protocol.ProtocolError) as e:  # e.g. a non-finite value from a broken model
            session.drops += 1
            self.drops += 1
            log.error("stream %s: frame %d not published (dropped, counted): %s", session.id, frame.index, e)
            return
        session.frames += 1
        session.publish_times.append(frame.published_ns)
        if frame.captured_ns is not None:
            session.latencies.append((frame.published_ns, (frame.published_ns - frame.captured_ns) / 1e6))

    def _end(self, ended: Ended, reason: str | None = None) -> None:
        """Publish a stream's closing frame (if any) and end, answer its end_stream requests, forget it."""
        session = ended.session
        if self.sessions.get(session.id) is not session:
            return
        for frame in ended.final:
            self._publish_frame(frame, session)
        reason = reason or ended.reason
        self._emit(StreamEnded(session.id, session.source, reason, session.frames))
        for identity, req in session.end_waiters:
            self._reply(identity, protocol.encode_reply("stream_ended", stream=session.id, frames=session.frames,
                                                        **_req(req)))
        if ended.error and session.owner is not None:
            self._reply(session.owner, protocol.encode_error("internal", f"stream {session.id} failed: {ended.error}",
                                                             None, stream=session.id))
        # logged before it leaves the registry: whoever waits for the runtime to be idle reads it first
        (self.client_lines if session.source == "sdk" else _log_info)(
            "streams ended", "stream %s ended (%s): %d frames, %d dropped (%d shed)", session.id, reason,
            session.frames, session.drops, session.shed)
        self.sessions.remove(session)
        self._release_source(session, reason)
        with self._idle:
            self._idle.notify_all()

    # --- a stream's own source, once the stream ended ------------------------------------------------
    def _release_source(self, session: Session, reason: str) -> None:
        """Stop the source of a stream that ended (by its own end, a timeout or an error), off the io thread (a
        device can take a second to close), and reopen it if it was lost and can be: its own error (unplugged, the
        sound server gone) or the idle timeout (the machine slept, the device stalled), not the engine's error."""
        source, reopen = session.source_obj, session.source_reopen
        if source is None:
            return
        session.source_obj = None
        again = reopen if reason == "timeout" or (reason == "error" and session.source_failed) else None
        # reopened rounds in a row that delivered nothing: the next one waits longer
        rounds = session.source_rounds + 1 if session.frames == 0 else 0
        with self._source_lock:
            stopping = self._stopping.is_set()  # stop() is under way, past the sessions it stops itself
            if not stopping:
                thread = threading.Thread(target=self._after_source, args=(source, reason, again, rounds),
                                          name=f"ksdiff-source-{session.id}", daemon=True)
                thread.start()
                self._source_threads = [t for t in self._source_threads if t.is_alive()] + [thread]
        if stopping:
            source.stop()

    def _after_source(self, source: Source, reason: str, reopen: Callable[[], Source] | None, rounds: int) -> None:
        try:
            source.stop()
        except Exception:
            log.exception("%s %s: stopping it failed", source.kind, source.stream_id)
        if reopen is None:
            return
        tries = rounds  # each failed try, and each reopened stream that delivered nothing, doubles the wait
        (log.warning if rounds == 0 else log.info)(
            "%s %s: its stream ended (%s); opening it again (after %g s, then ever less often up to %g s)",
            source.kind, source.stream_id, reason, SOURCE_REOPEN_S, SOURCE_REOPEN_MAX_S)
        while not self._stopping.wait(min(SOURCE_REOPEN_MAX_S, SOURCE_REOPEN_S * 2 ** min(tries, 16))):
            try:
                new = reopen()
                with self._source_lock:  # not once stop() began: it would miss this stream
                    if self._stopping.is_set():
                        new.stop()
                        return
                    sid = self.add_source(new, reopen=reopen)
                    if (session := self.sessions.get(sid)) is not None:
                        session.source_rounds = rounds
            except Exception as exc:  # the device is not back (SourceError), no room yet (busy), ...
                tries += 1
                (log.warning if tries == rounds + 1 else log.debug)("%s %s: not open again yet: %s", source.kind,
                                                                     source.stream_id, exc)
                continue
            log.info("%s %s: open again", source.kind, source.stream_id)
            return

    def _join_source_threads(self, deadline: float) -> None:
        with self._source_lock:
            threads = list(self._source_threads)
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _shutdown_streams(self) -> None:
        self._publish_outbox()
        engine_stopped = self._engine_thread is None or not self._engine_thread.is_alive()
        for session in list(self.sessions):
            self.sessions.finish(session)
            # the engine's state is the engine thread's: touch it only once that thread has stopped
            try:
                final = self.engine.closing_frames(session) if engine_stopped else []
            except Exception:  # an engine that failed may fail here too: the stream still ends
                log.exception("stream %s: no closing frames", session.id)
                final = []
            if self.failure is None:
                self._end(Ended(session, "shutdown", None, final), reason="shutdown")
            else:  # the runtime failed: each stream ends with the error (its client hears what happened)
                self._end(Ended(session, "error", self.failure, final))

    def _publish_stats(self) -> None:
        now = time.monotonic_ns()
        streams: dict[str, dict[str, Any]] = {}
        held = 0  # live streams: what the room is of (a line runs at speed in the rounds to spare, never late)
        for s in self.sessions:
            if s.mode == "live" and not s.finished:
                held += 1
            while s.publish_times and now - s.publish_times[0] > 1e9:
                s.publish_times.popleft()
            while s.latencies and now - s.latencies[0][0] > LATENCY_WINDOW_S * 1e9:
                s.latencies.popleft()
            lat = np.array([ms for _, ms in s.latencies]) if s.latencies else np.zeros(1)
            streams[s.id] = {
                "fps": float(len(s.publish_times)),
                "latency_p50_ms": float(np.percentile(lat, 50)),
                "latency_p95_ms": float(np.percentile(lat, 95)),
                "frames": s.frames, "drops": s.drops,
                "source": s.source, "sanitized": s.input.sanitized, "shed": s.shed,
            }
        uptime = (now - self._started_ns) / 1e9
        reading = self.engine.capacity.reading()
        capacity = reading.streams_that_fit(self.engine.capacity.target)
        said = self.over_room.update(held, reading, self.engine.capacity.target, now / 1e9)
        if said is not None:
            log.log(*said)
        refused = dict(self.refusals.counts)
        self._emit(Stats(uptime, streams, self.drops, refused, capacity))
        self._last_stats = {"uptime_s": uptime, "drops": self.drops, "streams": streams, "refused": refused,
                            "capacity": capacity, "room": reading.describe(self.engine.capacity.target)}
        if self.on_stats is not None:
            try:
                self.on_stats(self._last_stats)
            except Exception:  # a caller's callback must not stop the io thread
                log.exception("on_stats callback failed")

    # --- requests --------------------------------------------------------------------------------
    def _handle_fairly(self, parts: list[bytes]) -> None:
        """Handle a request within its client's share of the io thread (floods.py), charged what it took."""
        identity = parts[0]
        now = time.monotonic()
        verdict = self.floods.admit(identity, now)
        if verdict is None:
            self.refusals.count("busy")  # dropped unread: this client was told once this second
            return
        if verdict is False:
            self._refuse(identity, "busy", f"this client sent more requests than the runtime handles for it "
                         f"({100 * self.floods.share(identity):.0f} % of its time, for the streams it holds); the "
                         "excess is dropped unread, slow down", None, None, None)
            return
        self._handle(parts)
        self.floods.charge(identity, time.monotonic() - now)

    def _handle(self, parts: list[bytes]) -> None:
        identity, frames = parts[0], parts[1:]
        if len(frames) != 1:
            hint = " (an empty delimiter frame: use a DEALER socket, not REQ)" if frames[:1] == [b""] else ""
            self._refuse(identity, "malformed", f"a request is exactly one ZeroMQ frame, got {len(frames)}{hint}",
                         None, None, None)
            return
        raw: dict | None = None  # the request's map, once read: what an error echoes (it is read once)
        try:
            # within the request limits (SPEC 3.5): whatever a client sends, reading it costs well under a ms
            raw = protocol.unpack(frames[0], protocol.REQUEST_LIMITS)
            msg = protocol.validate(raw)
            mtype = msg["type"]
            if mtype not in protocol.REQUEST_TYPES:
                raise protocol.ProtocolError("unknown_type", f"{mtype!r} is not a request; requests: "
                                             f"{', '.join(protocol.REQUEST_TYPES)}", mtype)
            getattr(self, f"_on_{mtype}")(identity, msg)
        except protocol.ProtocolError as e:
            _, stream, req = _echo_fields(raw)
            self._refuse(identity, e.code, e.message, e.message_type, stream, req)
        except RefusedError as e:
            mtype, _, req = _echo_fields(raw)
            self._refuse(identity, e.code, e.message, mtype, e.stream, req)
        except Exception as e:  # a bug must cost one request, not the runtime
            self._log_once(e, "request failed")
            mtype, _, req = _echo_fields(raw)
            self._refuse(identity, "internal", f"{type(e).__name__}: {e}", mtype, None, req)

    def _refuse(self, identity: bytes, code: str, message: str, request_type: str | None, stream: str | None,
                req: int | None) -> None:
        message = message[: protocol.MAX_ERROR_MESSAGE_CHARS]  # what the reply carries, and the log
        self.refusals(code, message)
        try:
            payload = protocol.encode_error(code, message, request_type, stream=stream, req=req)
        except Exception as e:  # whatever a client sent, refusing it must not stop the io thread (and the runtime)
            self._log_once(e, "could not encode the error reply to a refused request")
            payload = protocol.encode_error(code, "the error could not be encoded (see the runtime's log)", None,
                                            req=req)
        self._reply(identity, payload)

    def _log_once(self, e: Exception, what: str) -> None:
        """Log an exception's traceback the first time one of its kind is raised where it was (a client can
        repeat the request that raised it; ``refusals`` counts and summarises every one)."""
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        key = (type(e), where.filename if where else "", where.lineno if where else 0)
        if key not in self._tracebacks_logged:
            self._tracebacks_logged.add(key)
            log.error(what, exc_info=e)

    def _on_hello(self, identity: bytes, msg: dict) -> None:
        _, payload = protocol.encode_hello(__version__, self.fps, req=msg.get("req"), instance=self.instance)
        self._reply(identity, payload)

    def _started(self, session: Session) -> StreamStarted:
        return StreamStarted(session.id, session.source, session.mode, self.engine.latency_ms(session.mode))

    def _on_open_stream(self, identity: bytes, msg: dict) -> None:
        try:
            fmt = AudioFormat(msg["sample_rate"], msg["channels"], msg["format"])
        except BadAudioError as e:
            raise RefusedError("bad_audio", str(e), msg.get("stream")) from None
        controls = self._controls(self.engine.controls, msg["controls"], msg.get("stream")) if "controls" in msg \
            else None
        mode = msg.get("mode", "live")
        session = self.sessions.open(msg.get("stream"), "sdk", fmt, owner=identity,
                                     seed=int(msg["seed"]) if "seed" in msg else None,
                                     text=msg.get("transcript"), max_ahead_s=self.max_ahead_s, mode=mode,
                                     controls=controls)
        started = self._started(session)
        self._reply(identity, protocol.encode_reply("stream_opened", stream=session.id, fps=self.fps,
                                                    max_ahead_s=float(self.max_ahead_s), mode=mode,
                                                    latency_ms=started.latency_ms, **_req(msg.get("req"))))
        self._emit(started)
        self.client_lines("streams opened", "stream %s opened (sdk, %s, %d Hz, %d ch, %s)", session.id, mode,
                          fmt.sample_rate, fmt.channels, fmt.encoding)

    def _on_set_controls(self, identity: bytes, msg: dict) -> None:
        """Change a stream's controls live: its owner may, and anyone may for the runtime's own streams (the mic
        a VTuber tunes from a control panel); another client's stream is ``forbidden``."""
        session = self.sessions.get(msg["stream"])
        if session is None or session.finished:
            raise RefusedError("unknown_stream", f"no open stream {msg['stream']!r}", msg["stream"])
        if session.owner is not None and session.owner != identity:
            raise RefusedError("forbidden", f"stream {session.id!r} belongs to the client that opened it", session.id)
        controls = self._controls(session.controls or self.engine.controls, msg["controls"], session.id)
        session.controls = controls  # replaced whole: the engine takes it from the stream's next hop
        self._reply(identity, protocol.encode_reply("controls_set", stream=session.id, controls=controls.to_dict(),
                                                    **_req(msg.get("req"))))
        changes = repr(msg["controls"])
        if len(changes) > LOGGED_CONTROLS_CHARS:
            changes = f"{changes[:LOGGED_CONTROLS_CHARS]}... ({len(changes)} chars)"
        self.client_lines("controls set", "stream %s: controls set: %s", session.id, changes)

    def _controls(self, base: Controls, changes: dict, stream: str | None) -> Controls:
        """``base`` with a client's changes: built-in styles only, or the server's configured one by its name (with
        the network style on, each ready for the network since the engine warmed up: no work on this thread)."""
        configured = () if self.engine.controls.style is None else (self.engine.controls.style,)
        try:
            return self.engine.with_network_style(base.merged(changes, known=configured))
        except ControlsError as e:
            raise RefusedError("bad_controls", str(e), stream) from None

    def _on_audio(self, identity: bytes, msg: dict) -> None:
        session = self.sessions.get(msg["stream"])
        if session is not None and session.owner == identity and _is_copy(session, msg):
            # audio the stream has whole: a client sending again what may have been dropped unread (SPEC 4.6, "A client
            # past its share"), also after its end_stream was taken; nothing to do, but its place in the client's
            # sequence is taken (the message after it follows it), and a message it skipped was lost all the same
            if msg["seq"] > session.audio_seq + 1:
                self._warn_audio_seq(session, msg["seq"])
            session.audio_seq = max(session.audio_seq, msg["seq"])
            return
        session = self.sessions.owned(msg["stream"], identity)
        if msg["seq"] != session.audio_seq + 1:
            self._warn_audio_seq(session, msg["seq"])
        session.audio_seq = msg["seq"]
        try:
            self.sessions.feed(session, msg["pcm"], msg.get("at_sample"), arrival_ns=time.monotonic_ns())
        except BadAudioError as e:
            raise RefusedError("bad_audio", str(e), session.id) from None

    def _warn_audio_seq(self, session: Session, seq: int) -> None:
        self.warnings("audio_seq", f"stream {session.id}: audio seq {seq} after {session.audio_seq} "
                      "(lost or reordered messages)")

    def _on_end_stream(self, identity: bytes, msg: dict) -> None:
        session = self.sessions.owned(msg["stream"], identity)
        session.end_waiters.append((identity, msg.get("req")))
        self.sessions.end(session)


def _is_copy(session: Session, msg: dict) -> bool:
    """Whether an audio message's samples are all ones the stream already has (placed by ``at_sample``)."""
    at = msg.get("at_sample")
    frames = len(msg["pcm"]) // session.format.frame_bytes
    return at is not None and frames > 0 and at + frames <= session.input.received


class _QuotaLog:
    """INFO lines that clients' ordinary requests cause (not refusals: those are ``RateLimitedLog``'s). A client may
    open and end streams, or set controls, hundreds of times a second within its share of the io thread: each kind
    is logged one by one up to ``quota`` times a period, the rest at DEBUG, and counted; when the period has passed,
    one INFO line says how many were not logged. So a person reading the log sees streams come and go as usual,
    and a client churning them cannot fill the disk."""

    def __init__(self, log: logging.Logger, quota: int = CLIENT_LOG_QUOTA, period_s: float = SUMMARY_PERIOD_S) -> None:
        self.log = log
        self.quota = quota
        self.period_s = period_s
        self._logged: dict[str, int] = {}  # kind -> lines logged at INFO in this period
        self._over: dict[str, int] = {}  # kind -> lines past the quota in this period (at DEBUG)
        self._period_end = 0.0

    def __call__(self, kind: str, fmt: str, *args: object) -> None:
        self.flush()
        n = self._logged.get(kind, 0)
        if n < self.quota:
            self._logged[kind] = n + 1
            self.log.info(fmt, *args)
        else:
            self._over[kind] = self._over.get(kind, 0) + 1
            self.log.debug(fmt, *args)

    def flush(self, final: bool = False) -> None:
        """Once the period has passed (or ``final``): the summary of each kind past its quota; a new period."""
        now = time.monotonic()
        if now < self._period_end and not final:
            return
        for kind, n in self._over.items():
            self.log.info("%s: %d more in the last %.0f s, not logged one by one (--verbose logs each)", kind, n,
                          self.period_s)
        self._logged.clear()
        self._over.clear()
        self._period_end = now + self.period_s


def _log_info(kind: str, fmt: str, *args: object) -> None:  # a line no client causes: always logged
    log.info(fmt, *args)


def _req(req: int | None) -> dict[str, int]:
    return {} if req is None else {"req": req}


def _echo_fields(msg: dict | None) -> tuple[str | None, str | None, int | None]:
    """(type, stream, req) of a refused request's map (None: it could not be read), where they can be read, to echo
    in the error."""
    if not isinstance(msg, dict):
        return None, None, None
    mtype, stream, req = msg.get("type"), msg.get("stream"), msg.get("req")
    return (mtype if isinstance(mtype, str) else None,
            stream if protocol.is_stream_id(stream) else None,
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
