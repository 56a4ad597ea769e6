"""The streaming engine: many live streams, one batched inference call per tick.

    push(stream, audio)   any thread, any chunk size: audio is queued, nothing is computed
    step()                the engine's thread: take queued audio, run the front-end where a
                          feature group is complete, then tick until no stream has a hop
                          ready; a tick runs the next hop of every ready stream as ONE
                          batched call to the backend, and returns their frames

Streams join (``open_stream``) and leave (``end_stream``: its remaining frames are flushed)
at any time; a stream that stops pushing without ending times out and is freed. A stream
whose input or computation fails is ended with an error; the others keep running.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.backends.base import Backend
from ksdiff_runtime.features.frontend import BlockwiseFrontEnd, make_front_end
from ksdiff_runtime.inputs.guards import AudioInputError, AudioReport, sanitize
from ksdiff_runtime.model.ksdiff import Guidance

from .presets import Preset, get_preset
from .sampling import WindowBatch, sample_windows
from .stream import Frame, StreamState

log = logging.getLogger("ksdiff_runtime.engine")


@dataclass
class StepResult:
    frames: list[Frame] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # ended and flushed
    timed_out: list[str] = field(default_factory=list)  # stopped pushing; state freed
    failed: dict[str, str] = field(default_factory=dict)  # stream id -> error message
    hops: int = 0  # stream-hops computed
    ticks: int = 0  # batched inference calls


@dataclass
class _Pending:
    chunks: list[tuple[np.ndarray, int | None, int | None]] = field(default_factory=list)
    end: bool = False
    last_push_ns: int = 0


class StreamingEngine:
    def __init__(
        self,
        backend: Backend,
        preset: str | Preset = "low-latency",
        fps: int = motion.FPS,
        stream_timeout_s: float = 10.0,
        guidance: Guidance | None = None,
        max_batch: int = 256,
        front_end: BlockwiseFrontEnd | None = None,
        front_end_threads: int | None = None,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.backend = backend
        self.cfg = backend.constants.cfg
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        if self.preset.model_lookahead_frames > self.cfg.lookahead_frames:
            raise ValueError(f"preset {self.preset.name}: the model sees at most {self.cfg.lookahead_frames} "
                             "lookahead frames")
        self.fps = fps
        self.stream_timeout_ns = int(stream_timeout_s * 1e9)
        self.guidance = guidance
        # A tick sends streams x guidance variants rows through the graphs; a backend with a
        # fixed limit (TensorRT's optimisation profile) bounds how many streams share a tick.
        g = guidance or Guidance()
        variants = 1 + sum(scale != 1.0 for scale in (g.audio, g.style, g.text))
        self.max_batch = max(1, min(max_batch, getattr(backend, "max_batch", max_batch) // variants))
        # The preset sets the front-end's lookahead (and context); its recogniser is shared by every stream.
        self.front_end = front_end or make_front_end(self.preset.front_end_config(self.cfg.front_end))
        # a given front-end (e.g. an instrumented one) runs on the step thread only
        threads = (os.cpu_count() or 1) if front_end_threads is None and front_end is None else (front_end_threads or 1)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ksdiff-front-end") if threads > 1 else None
        self._local = threading.local()
        self._streams: dict[str, StreamState] = {}
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)

    # --- any thread ----------------------------------------------------------------------------
    def open_stream(
        self, stream_id: str | None = None, seed: int = 0, style: np.ndarray | None = None, text: str | None = None
    ) -> str:
        """Start a stream (one voice). ``style``: a style vector from the model's style encoder;
        ``text``: the transcript of what the stream will say, when known (conditions every hop)."""
        stream_id = stream_id or uuid.uuid4().hex[:12]
        if style is not None:
            style = np.asarray(style, np.float32).reshape(-1)
            if style.size != self.cfg.style_dim or not np.isfinite(style).all():
                raise ValueError(f"style must be {self.cfg.style_dim} finite numbers")
        state = StreamState(stream_id, self.cfg, self.preset, self.front_end, seed, style, self.fps)
        if text and text.strip():
            from ksdiff_runtime.features.transcript import phoneme_tokens

            state.tokens = phoneme_tokens(text, self.cfg.max_text_tokens)
        with self._lock:
            if stream_id in self._streams:
                raise ValueError(f"stream {stream_id!r} is already open")
            self._streams[stream_id] = state
            self._pending[stream_id] = _Pending(last_push_ns=time.monotonic_ns())
        return stream_id

    def push(
        self,
        stream_id: str,
        audio: np.ndarray,
        at_sample: int | None = None,
        captured_ns: int | None = None,
    ) -> AudioReport:
        """Queue 16 kHz audio for a stream. NaN/Inf are zeroed and loud samples clipped (see the
        report); ``at_sample`` is where the chunk starts on the stream's clock (gaps become
        silence); ``captured_ns`` is when its last sample was captured (monotonic), for latency."""
        clean, report = sanitize(audio)
        if report.n_nonfinite:
            log.warning("stream %s: %d NaN/Inf samples replaced by silence", stream_id, report.n_nonfinite)
        if at_sample is not None and at_sample < 0:
            raise AudioInputError(f"at_sample must be >= 0, got {at_sample}")
        with self._lock:
            pending = self._pending.get(stream_id)
            if pending is None:
                raise KeyError(f"no open stream {stream_id!r}")
            if pending.end:
                raise ValueError(f"stream {stream_id!r} has ended; open a new stream")
            pending.chunks.append((clean, at_sample, captured_ns))
            pending.last_push_ns = time.monotonic_ns()
            self._wake.notify_all()
        return report

    def end_stream(self, stream_id: str) -> None:
        """No more audio: the stream's remaining frames are emitted, then it is freed."""
        with self._lock:
            pending = self._pending.get(stream_id)
            if pending is None:
                raise KeyError(f"no open stream {stream_id!r}")
            pending.end = True
            self._wake.notify_all()

    def warm_up(self, seconds: float = 1.0) -> None:
        """Run a throwaway stream of low noise through the front-end and the backend, so their first
        calls (session set-up, memory planning: tens to hundreds of ms) happen before a real stream
        waits on them. Call it before serving, from the thread that will call ``step``."""
        sid = self.open_stream(f"warm-up-{uuid.uuid4().hex[:8]}")
        noise = np.random.default_rng(0).standard_normal(int(seconds * motion.SAMPLE_RATE)).astype(np.float32)
        self.push(sid, 1e-3 * noise)
        self.end_stream(sid)
        while sid in self.stream_ids:
            self.step()

    def abort_stream(self, stream_id: str) -> None:
        """Forget a stream now, without emitting its remaining frames (e.g. at shutdown)."""
        self._drop(stream_id)

    def wait_for_audio(self, timeout: float | None = None) -> bool:
        """Block until some stream has queued audio or an end (True) or the timeout passes."""
        with self._wake:
            return self._wake.wait_for(lambda: any(p.chunks or p.end for p in self._pending.values()), timeout)

    @property
    def stream_ids(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    # --- the engine's thread -------------------------------------------------------------------
    def step(self, now_ns: int | None = None) -> StepResult:
        """Take queued audio and compute every hop that is ready, batched across streams."""
        result = StepResult()
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            taken = {sid: (p.chunks, p.end, p.last_push_ns) for sid, p in self._pending.items()}
            for p in self._pending.values():
                p.chunks = []
        fed: list[StreamState] = []
        for sid, (chunks, end, last_push) in taken.items():
            state = self._streams[sid]
            try:
                for audio, at_sample, captured in chunks:
                    state.append_audio(audio, at_sample, captured)
                if end and not state.ended:
                    state.end()
            except Exception as exc:  # one bad stream must not stop the others
                self._fail(sid, exc, result)
                continue
            if not state.ended and now_ns - last_push > self.stream_timeout_ns:
                log.warning("stream %s: no audio for %.1f s; freed", sid, (now_ns - last_push) / 1e9)
                result.timed_out.append(sid)
                self._drop(sid)
            elif chunks or end:
                fed.append(state)
        # The recogniser is per stream and single-threaded, and it releases the GIL: streams'
        # front-ends run on a thread pool, each thread with its own recogniser.
        if len(fed) > 1 and self._pool is not None:
            errors = list(self._pool.map(self._update_features, fed))
        else:
            errors = [self._update_features(state, self.front_end) for state in fed]
        for state, exc in zip(fed, errors, strict=True):
            if exc is not None:
                self._fail(state.id, exc, result)
        while True:
            ready = [s for s in self._streams.values() if s.hop_ready()]
            if not ready:
                break
            for i in range(0, len(ready), self.max_batch):
                self._tick(ready[i : i + self.max_batch], result)
        for sid, state in list(self._streams.items()):
            if state.finished():
                result.finished.append(sid)
                self._drop(sid)
        return result

    def _update_features(self, state: StreamState, front_end: BlockwiseFrontEnd | None = None) -> Exception | None:
        """Run a stream's front-end (on a pool thread: with that thread's own recogniser)."""
        if front_end is None:
            if not hasattr(self._local, "front_end"):
                self._local.front_end = make_front_end(self.front_end.config)
            front_end = self._local.front_end
        try:
            state.update_features(front_end)
        except Exception as exc:
            return exc
        return None

    def close(self) -> None:
        """Stop the front-end threads (streams are not flushed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _tick(self, streams: list[StreamState], result: StepResult) -> None:
        windows = [s.hop_window() for s in streams]
        styles = None
        if any(s.style is not None for s in streams):
            null = self.backend.constants.style_null
            styles = np.stack([null if s.style is None else s.style for s in streams]).astype(np.float32)
        text = text_keep = None
        if any(s.tokens.size for s in streams):
            text = np.zeros((len(streams), max(s.tokens.size for s in streams)), np.int64)
            for i, s in enumerate(streams):
                text[i, : s.tokens.size] = s.tokens
            text_keep = np.array([float(s.tokens.size > 0) for s in streams], np.float32)
        batch = WindowBatch(
            feats=np.stack([w.feats for w in windows]), prosody=np.stack([w.prosody for w in windows]),
            prev_expr=np.stack([w.prev_expr for w in windows]), prev_pose=np.stack([w.prev_pose for w in windows]),
            known=np.stack([w.known for w in windows]), noise=np.stack([w.noise for w in windows]), style=styles,
            text=text, text_keep=text_keep,
        )
        out = sample_windows(self.backend, batch, self.preset.steps, self.guidance)
        now = time.monotonic_ns()
        for i, s in enumerate(streams):
            result.frames.extend(s.apply_hop(out, i, now))
        result.hops += len(streams)
        result.ticks += 1

    def _fail(self, sid: str, exc: Exception, result: StepResult) -> None:
        log.error("stream %s failed and was closed: %s", sid, exc)
        result.failed[sid] = f"{type(exc).__name__}: {exc}"
        self._drop(sid)

    def _drop(self, sid: str) -> None:
        with self._lock:
            self._streams.pop(sid, None)
            self._pending.pop(sid, None)
