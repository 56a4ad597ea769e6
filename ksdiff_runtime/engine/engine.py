"""The streaming engine: many live streams, one batched inference call per round.

    sessions           the registry (ksdiff_runtime.sessions): audio waits there per stream
    step()             one round, on the engine's thread: take the waiting audio (the voice
                       gate's VAD in ONE batched call over every stream's new audio); plan each
                       stream's next hop (skipping frames that could not be published in time,
                       taking several hops at once when a stream is late); run the front-end for
                       the planned hops (the recogniser in ONE batched call over every stream's
                       new audio); then ONE batched call to the backend for every planned hop
                       (the stream conditioner and the denoiser); build the round's wire frames.
                       On the CPU, a batched call of a round with a few streams per core is cut
                       into one part per core, run at once (ksdiff_runtime.parallel)

A round does a bounded amount of work (at most one hop per stream), so a stream pushed far ahead
of real time never holds up the others and the engine's thread answers a stop within a round.
Streams join and leave at any time; one whose input or computation fails is ended with an error
(a final neutral frame, then its end), and the others keep running.

For embedding and tests the engine has its own registry and a small API on it:
``open_stream`` / ``push`` / ``end_stream``, then ``step()`` until the frames are out (``stream_clip``
does all of it for one clip).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends.base import Backend
from ksdiff_runtime.events import AudioLevel
from ksdiff_runtime.features.frontend import BlockwiseFrontEnd, make_front_end
from ksdiff_runtime.features.prosody import prosody_many
from ksdiff_runtime.features.streaming_frontend import StreamingPosteriorgramFrontEnd
from ksdiff_runtime.features.transcript import phoneme_tokens_later
from ksdiff_runtime.features.vad import advance_many
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_runtime.inputs.stream import AudioFormat
from ksdiff_runtime.parallel import MIN_PART_ROWS, as_part, one_blas_thread, row_parts, single_thread_cpu
from ksdiff_runtime.sessions import Session, Sessions
from ksdiff_sdk import Frame

from .capacity import ROUND_PROBE, Capacity, Probe, RoundCost
from .closure import ClosureConfig, closure_for
from .controls import Controls, ControlStage
from .gate import GateConfig, VoiceGate
from .liveliness import Liveliness, LivelinessConfig
from .network_style import NetworkStyles
from .presets import LINE_EXPRESSION_STEPS, LINE_STEPS, Preset, get_preset
from .sampling import (
    DEFAULT_MOOD_GUIDANCE,
    NO_MOOD_STYLES,
    Guidance,
    WindowBatch,
    WindowResult,
    check_mood_guidance,
    guidance_variants,
    mood_style,
    sample_windows,
    with_mood_guidance,
)
from .stream import Emitted, Hop, HopWindow, StreamState, frame_sample, prosody_rows
from .style import STYLES, StyleProfile, style_for

log = logging.getLogger("ksdiff_runtime.engine")

DEFAULT_IDLE_TIMEOUT_S = 10.0
LINE_WAIT_MS = 100  # lines whose ready windows were put off this long for live hops get a round of their own
# While live streams run, a round of lines takes as many lines (the oldest first) as fit in this by their measured
# cost, one before any is measured: a live frame has max_lag_ms (100 ms) of slack, and a round of 32 lines' first
# windows took over a second, past every live frame's deadline (frames published 264 ms after their audio).
LINE_ROUND_MS = 50
WARM_UP_S = 1.0  # seconds of the bundled speech per warm-up pass
PROBE_REPEATS = 3  # the warm-up's cost probe (1 and ROUND_PROBE streams) runs this many times; medians are kept
# seconds of speech per probe pass: its rounds are paced at the hop as `serve`'s are, so a pass takes this long
PROBE_S = 0.6
PROBE_STAGGER_S = 0.01  # each paced probe stream's audio is this far ahead of the one before
WARM_WAIT_S = 0.005  # an unpaced warm-up pass with nothing to do waits this long at most before its next round


@dataclass
class Ended:
    """A stream the engine has finished with."""

    session: Session
    reason: str  # protocol END_REASONS: ended, timeout, error
    error: str | None = None  # what failed (reason error)
    final: list[Frame] = field(default_factory=list)  # the ease to rest of a stream cut short (controls.py)


@dataclass
class StepResult:
    frames: list[Frame] = field(default_factory=list)  # wire frames, seq = index; published_ns set on publishing
    levels: list[AudioLevel] = field(default_factory=list)  # each hop's audio level, for meters
    ended: list[Ended] = field(default_factory=list)
    shed: dict[str, int] = field(default_factory=dict)  # stream id -> frames skipped this round to stay current
    hops: int = 0  # stream-hops computed
    ticks: int = 0  # batched inference calls
    compute_ms: float = 0.0


class StreamingEngine:
    def __init__(
        self,
        backend: Backend,
        preset: str | Preset = "low-latency",
        fps: int = motion.FPS,
        guidance: Guidance | None = None,
        max_batch: int = 256,
        front_end: BlockwiseFrontEnd | None = None,
        front_end_threads: int | None = None,
        sessions: Sessions | None = None,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        capacity: Capacity | None = None,
        controls: Controls | None = None,
        voice_gate: GateConfig | None = None,
        closure: ClosureConfig | None = None,
        liveliness: LivelinessConfig | None = None,
        line_steps: int = LINE_STEPS,
        line_expression_steps: int | None = LINE_EXPRESSION_STEPS,
        stream_conditioner: bool = True,
        streaming_recogniser: bool = True,
        round_clock: Callable[[], int] = time.perf_counter_ns,
        mood_guidance: float = DEFAULT_MOOD_GUIDANCE,
        network_style: bool = False,
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
        # streams in mode "line"
        self.line_preset = self.preset.for_lines(self.cfg.train_window_frames, line_steps, line_expression_steps)
        self.idle_timeout_ns = int(idle_timeout_s * 1e9)
        # A stream's mood reaches the network as a style (sampling.mood_style) at this guidance (0: it does not);
        # a style guidance of the caller's is refused with it
        self.mood_guidance = check_mood_guidance(mood_guidance)
        guidance = self.guidance = with_mood_guidance(guidance, mood_guidance)
        self._mood_warned = False
        self.capacity = capacity or Capacity()
        self.probe: Probe | None = None  # the capacity probe ``warm_up`` measured or was given (None: none yet)
        # A stream's style take on the network's style input as well as on the output (engine/network_style.py;
        # None: on the output only), its response measured live as this engine streams. The takes are made ready
        # on the callers' threads (``with_network_style``), the built-in ones in ``warm_up``: never on the engine's.
        self.network_styles = NetworkStyles(backend, live=self.live_profiles) if network_style else None
        self.controls = controls or Controls()  # for streams opened without their own (its take: below)
        # The voice gate (engine/gate.py; None: off), as this preset's streams read it. Its VAD model loads
        # now: a missing one is an error before serving, not a failed first stream.
        self.voice_gate = None
        if voice_gate is not None:
            from ksdiff_runtime.features.vad import shared_vad

            self._vad = shared_vad()
            self.voice_gate = voice_gate.for_preset(self.preset)
        # The lips seal where the recogniser hears /p b m/ (engine/closure.py; None: off), for a model that reads the
        # recogniser's posteriorgram and a preset whose hops wait for the features the closure reads (lines keep
        # the preset's lookahead)
        self.closure = closure_for(self.cfg.front_end.name, closure, self.preset.model_lookahead_frames)
        # Live streams' hops condition with the stream conditioner (model/streaming.py: the encoder's past
        # cached, only new frames encoded) when the backend has it; False: window by window, as lines do.
        has_it = stream_conditioner and hasattr(backend, "condition_stream")
        self.stream_variants = guidance_variants(guidance) if has_it else 0
        self.liveliness = liveliness  # blinks, gaze, a centred head on every stream (engine/liveliness.py; None: off)
        self.sessions = sessions if sessions is not None else Sessions(admission=None)
        # A tick sends streams x guidance variants rows through the graphs; a backend with a
        # fixed limit (TensorRT's optimisation profile) bounds how many streams share a tick.
        variants = guidance_variants(guidance)
        self.max_batch = max(1, min(max_batch, getattr(backend, "max_batch", max_batch) // variants))
        # The preset sets the front-end's lookahead (and context); its recogniser is shared by every stream.
        # Live streams of a posteriorgram model keep a streaming recogniser each (features/streaming_frontend.py:
        # only new audio recognised, every stream's chunks batched); False: each hop re-recognises its window.
        # The pool: lines' first features (one pass over a whole line, a line per thread), and the model's
        # batches cut into parts run at once (ksdiff_runtime.parallel) on the CPU only (a GPU runs one call
        # at a time anyway, and the TensorRT backend's buffers are not for concurrent calls): lines' always,
        # a live round's when it has a few streams per thread and the backend's calls use one thread each
        # (as `serve` loads it; more would oversubscribe the cores). Live streams' front-ends run on the step
        # thread, batched; the streaming recogniser cuts its calls into as many parts. A given front-end
        # (e.g. an instrumented one) runs on the step thread only.
        given = front_end is not None
        threads = (os.cpu_count() or 1) if front_end_threads is None and not given else (front_end_threads or 1)
        if front_end is None:
            config = self.preset.front_end_config(self.cfg.front_end)
            front_end = (StreamingPosteriorgramFrontEnd(config, parallel=threads)
                         if streaming_recogniser and config.name == "ppg"
                         else make_front_end(dataclasses.replace(config, recogniser="full-context")))
        self.front_end = front_end
        self._own_front_end = not given  # closed with the engine
        self._threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ksdiff-front-end") if threads > 1 else None
        one_blas_thread()  # the front-end's numpy products: OpenBLAS's spinning threads would take a core
        self._cpu_parts = backend.name.endswith("-cpu")
        self._live_parts = single_thread_cpu(backend)
        self._vad_failed = False  # the batched VAD failed once (said once; each stream's own runs meanwhile)
        self._local = threading.local()
        # Rounds are timed on this clock (ns): how long they take decides which frames are already stale. A
        # caller that drives ``step``'s now_ns itself (a simulation, a test) may pass a frozen one: rounds then
        # take no time, and how busy the machine is sheds no frame. Only rounds' durations come from it: a
        # line's first-frame delay (stated latency) is measured on time.monotonic_ns, as frames' arrivals are.
        self._round_clock = round_clock
        self._round_ns = 0.0  # how long a live round takes (EMA): a frame due sooner than that is stale
        self._line_round_ns = 0.0  # how long a round of lines' windows takes (EMA)
        self._lines_waiting_since: int | None = None  # when lines' ready hops were first put off for live ones
        self._line_first_ns = 0.0  # from a line's first audio reaching the runtime to its first frames (EMA)
        self._line_cost_ns = 0.0  # what one line's window adds to a round of lines (EMA)
        # A runtime keeps a finished session in the registry until it has published its end (then removes
        # it); on its own the engine forgets it as soon as it reports it.
        self.keep_ended = False
        self.controls = self.with_network_style(self.controls)  # measured live as configured above

    # --- the small API over the engine's registry (embedding, tests, benchmarks) ----------------
    def open_stream(self, stream_id: str | None = None, seed: int | None = 0, style: np.ndarray | None = None,
                    text: str | None = None, controls: Controls | None = None, mode: str = "live",
                    source: str = "sdk") -> str:
        """Start a stream of 16 kHz audio (one voice). ``seed``: its motion's noise (streams with one seed share
        it: give NPCs speaking at once their own, or None for a hash of the id, as the protocol's streams without
        one get); ``style``: a style vector from the model's style
        encoder; ``text``: the transcript of what it will say, when known (conditions every hop);
        ``controls``: its artists' controls (default: the engine's); ``mode``: live or line; ``source``: what feeds
        it, "sdk" (audio pushed, maybe ahead of real time) or a device, "mic" or "file" (audio as it is captured, on
        the device's clock: ``Session.device_clock``)."""
        if style is not None:
            style = np.asarray(style, np.float32).reshape(-1)
            if style.size != self.cfg.style_dim or not np.isfinite(style).all():
                raise ValueError(f"style must be {self.cfg.style_dim} finite numbers")
        stream_id = stream_id or uuid.uuid4().hex[:12]
        if controls is not None:
            controls = self.with_network_style(controls)
        session = self.sessions.open(stream_id, source, AudioFormat(), seed=seed, text=text, style=style,
                                     admit=False, mode=mode, controls=controls)
        return session.id

    def set_controls(self, stream_id: str, controls: Controls) -> None:
        """Change a stream's controls from its next hop on (any thread: the stream's controls are replaced whole)."""
        self._session(stream_id).controls = self.with_network_style(controls)

    def with_network_style(self, controls: Controls) -> Controls:
        """``controls`` as streams use them: with the network style on, its style take made ready for the network
        (its vector and response, engine/network_style.py; 1.3 s on a 2-core CPU the first time a take is seen, on
        this thread)."""
        return controls if self.network_styles is None else self.network_styles.controls(controls)

    def push(self, stream_id: str, audio: np.ndarray, at_sample: int | None = None,
             captured_ns: int | None = None) -> None:
        """Queue 16 kHz mono audio. ``at_sample`` places it on the stream's clock (gaps become silence);
        ``captured_ns``: when it was captured (monotonic; None: not real time, never shed)."""
        session = self._session(stream_id)
        self.sessions.feed(session, np.asarray(audio).reshape(-1), at_sample, arrival_ns=captured_ns)

    def end_stream(self, stream_id: str) -> None:
        """No more audio: the stream's remaining frames are emitted, then it is freed."""
        self.sessions.end(self._session(stream_id))

    def stream_clip(self, audio: np.ndarray, chunks: Iterable[int] = (), seed: int = 0, mode: str = "live",
                    controls: Controls | None = None, progress: Callable[[int], None] | None = None) -> list[Frame]:
        """Every frame of one stream of 16 kHz ``audio``, by index: opened, pushed in ``chunks`` (sample
        counts; then 533, a frame's worth), ended and stepped until done, on this thread (tests,
        benchmarks, embedding). Not real time: nothing is shed. ``progress``: called with each push's size."""
        sid = self.open_stream(seed=seed, controls=controls, mode=mode)
        sizes = iter(chunks)
        frames: list[Frame] = []
        i = 0
        while i < audio.size:
            n = next(sizes, 533)
            self.push(sid, audio[i : i + n])
            i += n
            if progress is not None:
                progress(n)
            while self.has_work():
                frames += self.step().frames
        self.end_stream(sid)
        while self.has_work():
            frames += self.step().frames
        return sorted((f for f in frames if f.stream == sid), key=lambda f: f.index)

    def _session(self, stream_id: str) -> Session:
        session = self.sessions.get(stream_id)
        if session is None or session.finished:
            raise KeyError(f"no open stream {stream_id!r}")
        return session

    @property
    def stream_ids(self) -> list[str]:
        return [s.id for s in self.sessions if not s.finished]

    # --- the engine's thread -------------------------------------------------------------------
    def has_work(self) -> bool:
        """Whether ``step`` would do something now: audio or an end waiting, a hop ready, an end to finish."""
        return any(not s.finished and (s.pending or (s.ending and not s.end_taken) or
                                       (s.state is not None and s.state.work_ready())) for s in self.sessions)

    def step(self, now_ns: int | None = None) -> StepResult:
        """One round: take queued audio and compute at most one hop per stream, batched across streams."""
        started = self._round_clock()
        now = time.monotonic_ns() if now_ns is None else now_ns
        result = StepResult()
        states: list[tuple[Session, StreamState]] = []
        for session, chunks, end_now in self.sessions.take():
            try:
                state = session.state
                if state is None:
                    state = session.state = self._new_state(session)
                for c in chunks:
                    state.append(c.audio, c.clock_end, c.arrival_ns)
                if end_now and not state.ended:
                    state.end()
            except Exception as exc:  # one bad stream must not stop the others
                self._fail(session, exc, result)
                continue
            if not session.ending and (quiet := session.quiet_ns(now)) > self.idle_timeout_ns:
                log.warning("stream %s: no audio for %.1f s; ending it", session.id, quiet / 1e9)
                self.sessions.end(session, "timeout", flush=False)
                continue  # its end is taken next round
            states.append((session, state))
        self._listen([st for _, st in states])
        live_open = any(not st.line for _, st in states)
        planned = self._rounds_kind(self._plan(states, now, result), now, live_open)
        live_hops = 0  # live streams hopped, in a round that did nothing else (admission rescales its rounds by them)
        if planned:
            self._features(planned, result)
            ready = [(s, st, h) for s, st, h in planned if not s.finished and st.hop_ready(h)]
            if len(ready) == len(planned) and not any(st.line for _, st, _ in planned):
                live_hops = len(ready)
            emitted: list[tuple[StreamState, Emitted]] = []
            starting = [st for _, st, _ in ready if st.line and st.emitted == 0 and st.anchor_ns is not None]
            # one batch per window shape: live streams' windows, lines' windows
            for preset in (self.preset, self.line_preset):
                group = [r for r in ready if r[1].preset is preset]
                for i in range(0, len(group), self.max_batch):
                    emitted += self._tick(group[i : i + self.max_batch], result, preset)
            result.compute_ms = (self._round_clock() - started) / 1e6
            result.frames = self._frames(emitted, result.compute_ms)
            result.levels = [AudioLevel(st.id, *em.level) for st, em in emitted if em.level is not None]
            done_ns = time.monotonic_ns()
            for st in starting:
                if st.emitted > 0:
                    assert st.anchor_ns is not None
                    self._line_first_ns = _ema(self._line_first_ns, done_ns - st.anchor_ns, 0.3)
        for session, state in states:
            session.backlog_samples = max(0, state.samples - frame_sample(state.emitted))
            if not session.finished and state.finished():
                self.sessions.finish(session)
                result.ended.append(Ended(session, session.end_reason))
        if not self.keep_ended:
            for ended in result.ended:
                self.sessions.remove(ended.session)
        elapsed = self._round_clock() - started
        if planned and planned[0][1].line:
            self._line_round_ns = _ema(self._line_round_ns, elapsed, 0.2)
            self._line_cost_ns = _ema(self._line_cost_ns, elapsed / len(planned), 0.3)
        elif planned or result.shed:
            # A round that shed frames and ran no hop counts too: with an estimate past the deadline every frame is
            # stale, no hop runs to measure a round by, and the estimate would stay there for good.
            self._round_ns = 0.8 * self._round_ns + 0.2 * elapsed
        audio_s = len(result.frames) / self.fps
        live_s = self.preset.hop_frames / motion.FPS if planned else 0.0
        self.capacity.observe(elapsed if planned else 0, audio_s, bool(result.shed), live_s, live_hops)
        return result

    def latency_ms(self, mode: str = "live") -> float:
        """The latency the runtime states for a stream (protocol ``stream_opened.latency_ms``): a frame is
        published at most this long after its audio was due. Live: the preset's deadline, a bound (a frame
        that would be later is shed). A line is never shed and, once started, runs ahead of real time: what
        matters is how long its first frames take, so it states 1.25 times the recent lines' first-frame
        delay (or line round, before any line was measured), or what the lines not started yet need before it
        (``_line_queue_ns``), whichever is longer, and at least the live deadline (an estimate)."""
        deadline = self.preset.deadline_ms()
        if mode == "live":
            return deadline
        return max(deadline, 1.25 * max(self._line_first_ns, self._line_round_ns, self._line_queue_ns()) / 1e6)

    def _line_queue_ns(self) -> float:
        """How long the lines that have not started yet (the one being opened among them) take to get their first
        windows, by the lines' measured cost: one round for them all, or, while live streams run, rounds of
        ``_lines_per_round`` each behind LINE_WAIT_MS of live hops. Lines opened together share those rounds: a burst
        of 32 was told 223 ms each and got its first frames after 0.9-1.6 s."""
        sessions = list(self.sessions)
        # lines whose audio came and whose first frames did not yet (lines opened ahead of their audio wait for it,
        # not in this queue), and the one being opened
        waiting = 1 + sum(1 for s in sessions if s.mode == "line" and not s.finished and s.anchor_ns is not None
                          and (s.state is None or s.state.emitted == 0))
        queue = waiting * self._line_cost_ns
        if any(s.mode == "live" and not s.finished and s.anchor_ns is not None for s in sessions):  # live hops run
            queue += -(-waiting // self._lines_per_round()) * LINE_WAIT_MS * 1e6
        return queue

    def _lines_per_round(self) -> int:
        """While live streams run: lines whose windows fit a round of LINE_ROUND_MS (one until their cost is known)."""
        if self._line_cost_ns <= 0:
            return 1
        return max(1, int(LINE_ROUND_MS * 1e6 // self._line_cost_ns))

    def _new_state(self, session: Session) -> StreamState:
        if session.controls is None:
            session.controls = self.controls
        session.stage = ControlStage(session.controls, self.fps, made=session.mode)
        tokens = None
        if session.text and session.text.strip():
            tokens = phoneme_tokens_later(session.text, self.cfg.max_text_tokens)
            tokens.add_done_callback(lambda _: self.sessions.notify())  # wake the engine when they are ready
        # the engine takes a uint64 seed; the protocol's is int64
        line = session.mode == "line"
        seed = session.seed & 0xFFFF_FFFF_FFFF_FFFF
        gate = None if self.voice_gate is None else VoiceGate(self.voice_gate, self._vad)
        alive = None if self.liveliness is None else Liveliness(self.liveliness, seed)
        return StreamState(session.id, self.cfg, self.line_preset if line else self.preset, self.front_end,
                           seed, session.style, tokens, self.fps, line=line, gate=gate, liveliness=alive,
                           stream_variants=self.stream_variants, closure=self.closure,
                           device_clock=session.device_clock)

    def _listen(self, states: list[StreamState]) -> None:
        """The voice gate's VAD over every stream's new audio, batched (``vad.advance_many``: one call for
        the round's streams). If it fails, each stream's own VAD runs it when the stream needs it (and a
        failure there is that stream's)."""
        gated = [st for st in states if st.gate is not None]
        if not gated:
            return
        try:
            advance_many([st.gate.track for st in gated], [st.listen_args() for st in gated])
        except Exception as exc:
            if not self._vad_failed:
                log.warning("the batched VAD failed (%s); each stream runs its own", exc)
            self._vad_failed = True

    def _rounds_kind(self, planned: list[tuple[Session, StreamState, Hop]], now: int, live_open: bool = False
                     ) -> list[tuple[Session, StreamState, Hop]]:
        """A round runs live streams' hops or lines' windows, not both: a line's round (its first features over all
        of its audio, whole windows of many lines) may take far longer than a live hop's. Live hops go first; lines
        take the rounds with none, and a round of their own once they have waited LINE_WAIT_MS for one. Before,
        their work was in the live hops' rounds, and the live rounds' estimate, grown past the deadline, marked
        every live frame stale from then on: a burst of 16 lines left a live stream without frames for good. While
        live streams run, a round of lines takes as many lines as fit LINE_ROUND_MS by their cost, the oldest first."""
        live = [p for p in planned if not p[1].line]
        lines = [p for p in planned if p[1].line]
        if not lines:
            self._lines_waiting_since = None
            return live
        if live and (self._lines_waiting_since is None
                     or now - self._lines_waiting_since < LINE_WAIT_MS * 1_000_000):
            if self._lines_waiting_since is None:
                self._lines_waiting_since = now
            return live
        if not live_open:
            self._lines_waiting_since = None
            return lines
        # beside live streams: as many as fit a round of LINE_ROUND_MS, the oldest first (lines under way before new
        # ones, then by when their audio came: a line opened long before its audio must not hold up one playing)
        taken = sorted(lines, key=_line_order)[: self._lines_per_round()]
        self._lines_waiting_since = now if live and len(taken) < len(lines) else None
        return taken

    def _plan(self, states: list[tuple[Session, StreamState]], now: int,
              result: StepResult) -> list[tuple[Session, StreamState, Hop]]:
        planned = []
        lead = round(self._round_ns)  # a frame due before this round would end is stale
        for session, state in states:
            try:
                hop = state.plan(now, lead)
                if hop is None:
                    continue
                if hop.skip:
                    skipped = state.skip_to(state.emitted + hop.skip)
                    if skipped:
                        result.shed[session.id] = skipped
                if hop.frames:
                    planned.append((session, state, hop))
            except Exception as exc:
                self._fail(session, exc, result)
        if result.shed:
            log.debug("shed frames to stay current: %s", result.shed)
        return planned

    def _features(self, planned: list[tuple[Session, StreamState, Hop]], result: StepResult) -> None:
        """Every planned hop's features. Live streams' front-end groups go through the recogniser in one
        batched call (``many_range_features``); a line's first features (one pass over all of its audio,
        the recogniser in pieces) run on the pool's threads, one line per thread."""
        jobs = [(session, st, st.features_needed(h), h.catch_up) for session, st, h in planned]
        first_of_line = [j for j in jobs if j[1].line and j[1].n_feats == 0]
        rest = [j for j in jobs if not (j[1].line and j[1].n_feats == 0)]
        if len(first_of_line) > 1 and self._pool is not None:
            errors = list(self._pool.map(lambda job: self._update_features(*job[1:]), first_of_line))
        else:
            errors = [self._update_features(*job[1:], front_end=self.front_end) for job in first_of_line]
        for job, exc in zip(first_of_line, errors, strict=True):
            if exc is not None:
                self._fail(job[0], exc, result)
        self._batched_features(rest, result)

    def _batched_features(self, jobs: list[tuple[Session, StreamState, int, bool]], result: StepResult) -> None:
        """Streams' front-end groups: the recogniser once over all of them, prosody once, then each stream's
        features in order. A failure of a batched call falls back to each stream on its own (its own failure)."""
        groups = []
        for session, st, upto, one_call in jobs:
            try:
                groups += [(session, st, f0, f1) for f0, f1 in st.feature_groups(upto, one_call)]
            except Exception as exc:
                self._fail(session, exc, result)
        try:
            feats = self.front_end.many_range_features([st.front_end_request(f0, f1) for _, st, f0, f1 in groups])
        except Exception:  # one stream's bad request must not fail the others: each on its own
            for session, st, upto, one_call in jobs:
                if not session.finished and (exc := self._update_features(st, upto, one_call, self.front_end)):
                    self._fail(session, exc, result)
            return
        # every group's prosody in one call too (YIN over all their frames), then each stream's features in order
        try:
            asks = [st.prosody_request(f0, f0 + f.shape[0], f1)
                    for (_, st, f0, f1), f in zip(groups, feats, strict=True)]
            pros = [prosody_rows(p, row, f.shape[0]) for p, (_, row), f in
                    zip(prosody_many([seg for seg, _ in asks], [row for _, row in asks]), asks, feats, strict=True)]
        except Exception:  # then each stream computes its own (and a failure is its own)
            pros = [None] * len(groups)
        for (session, st, f0, f1), f, p in zip(groups, feats, pros, strict=True):
            if session.finished:
                continue
            try:
                st.add_features(f0, f1, f, p)
            except Exception as exc:
                self._fail(session, exc, result)

    def _update_features(self, state: StreamState, upto: int, one_call: bool,
                         front_end: BlockwiseFrontEnd | None = None) -> Exception | None:
        """Run a stream's front-end (on a pool thread: with that thread's own front-end)."""
        front_end = front_end or self._thread_front_end()
        try:
            state.update_features(upto, one_call, front_end)
        except Exception as exc:
            return exc
        return None

    def _tick(self, hops: list[tuple[Session, StreamState, Hop]], result: StepResult,
              preset: Preset) -> list[tuple[StreamState, Emitted]]:
        ready = []
        for session, st, hop in hops:
            try:
                ready.append((session, st, hop, st.hop_window(hop)))
            except Exception as exc:
                self._fail(session, exc, result)
        # one backend call per window shape: streamed hops by how many frames they commit (all alike in a
        # round of streams keeping up), windowed hops (lines; a backend without the stream conditioner) apart
        parts: dict[tuple[bool, int, int], list] = {}
        for item in ready:
            w = item[3]
            parts.setdefault((w.state is not None, w.commit, w.feats.shape[0]), []).append(item)
        emitted = []
        for part in parts.values():
            emitted += self._run_part(part, result, preset)
        result.hops += len(hops)
        return emitted

    def _run_part(self, part: list[tuple[Session, StreamState, Hop, HopWindow]], result: StepResult,
                  preset: Preset) -> list[tuple[StreamState, Emitted]]:
        """One backend call for streams whose windows have one shape, then each stream's frames. If the call
        fails (a backend error, one stream's bad state), each stream runs alone: the one that fails is closed
        with its error and the others go on."""
        try:
            out = self._sample(self._batch([(se, st) for se, st, _, _ in part], [w for _, _, _, w in part]),
                               preset, lines=preset is self.line_preset)
        except Exception as exc:
            if len(part) == 1:
                self._fail(part[0][0], exc, result)
                return []
            log.warning("a batch of %d streams failed (%s); running them one by one", len(part), exc)
            return [e for item in part for e in self._run_part([item], result, preset)]
        result.ticks += 1
        emitted = []
        for j, (session, state, hop, _) in enumerate(part):
            try:
                # the stream's controls, and its ease to rest after its final frame: every output's numbers
                emitted.append((state, session.stage.apply(state.apply_hop(hop, out, j), session.controls)))
            except Exception as exc:
                self._fail(session, exc, result)
        return emitted

    def _styles(self, streams: list[tuple[Session, StreamState]]) -> np.ndarray | None:
        """The streams' network styles [B, style_dim]: each stream's style moved toward its mood's (now: a
        mood set live changes the next hop); None when every stream has the null style."""
        k = self.backend.constants
        rows = []
        for session, st in streams:
            c = session.controls or self.controls
            # the stream's own vector (the Python API's), else its style take's with the network style on
            base = st.style if st.style is not None or c.style is None or c.style.network is None \
                else c.style.network.vector
            style, missing = mood_style(k, base, c.mood, c.mood_intensity, self.mood_guidance)
            if missing and not self._mood_warned:
                self._mood_warned = True
                log.warning(NO_MOOD_STYLES)
            rows.append(style)
        if all(r is None for r in rows):
            return None
        return np.stack([k.style_null if r is None else r for r in rows]).astype(np.float32)

    def _batch(self, streams: list[tuple[Session, StreamState]], windows: list[HopWindow]) -> WindowBatch:
        """The streams' hop windows as one batch (their styles, transcripts and encoder states stacked)."""
        styles = self._styles(streams)
        streams = [st for _, st in streams]
        text = text_keep = None
        if any(s.tokens.size for s in streams):
            text = np.zeros((len(streams), max(s.tokens.size for s in streams)), np.int64)
            for i, s in enumerate(streams):
                text[i, : s.tokens.size] = s.tokens
            text_keep = np.array([float(s.tokens.size > 0) for s in streams], np.float32)
        state = None
        if windows[0].state is not None:
            state = {name: np.stack([w.state[name] for w in windows]) for name in windows[0].state}
        return WindowBatch(
            feats=np.stack([w.feats for w in windows]), prosody=np.stack([w.prosody for w in windows]),
            prev_expr=np.stack([w.prev_expr for w in windows]), prev_pose=np.stack([w.prev_pose for w in windows]),
            known=np.stack([w.known for w in windows]), noise=np.stack([w.noise for w in windows]), style=styles,
            text=text, text_keep=text_keep, state=state, commit=windows[0].commit,
        )

    def _sample(self, batch: WindowBatch, preset: Preset, lines: bool) -> WindowResult:
        """The model on a batch of windows, cut into one part per pool thread run at once (ONNX Runtime and
        torch sessions take concurrent calls; ksdiff_runtime.parallel): ``lines``' rounds (large windows) into
        as many parts as it has rows, a live round's only when it has a few streams per thread. This thread
        waits meanwhile: numpy work here would hold the GIL the parts need between their calls (a live round
        pipelined that way, one part's features computed during another part's model, measured slower)."""
        B = batch.noise.shape[0]
        cut = self._pool is not None and (self._cpu_parts if lines else self._live_parts)
        parts = row_parts(B, self._threads, 1 if lines else MIN_PART_ROWS) if cut else [(0, B)]

        def sample(piece: WindowBatch) -> WindowResult:
            return sample_windows(self.backend, piece, preset.steps, self.guidance,
                                  expression_steps=preset.expression_steps)

        if len(parts) < 2:
            return sample(batch)
        outs = list(self._pool.map(as_part(sample), [batch.rows(a, b) for a, b in parts]))
        return WindowResult.concat(outs)

    def _frames(self, emitted: list[tuple[StreamState, Emitted]], compute_ms: float) -> list[Frame]:
        """The round's wire frames, built once: gaze for all of them in one call, seq = index."""
        return self._wire([(st.id, em) for st, em in emitted], compute_ms)

    def _wire(self, emitted: list[tuple[str, Emitted]], compute_ms: float) -> list[Frame]:
        emitted = [(sid, em) for sid, em in emitted if em.index]
        if not emitted:
            return []
        values = np.concatenate([em.values for _, em in emitted])
        D = self.cfg.expr_dim
        blendshapes = np.ascontiguousarray(values[:, :D], np.float32)
        head = np.ascontiguousarray(values[:, D:], np.float32)
        gaze = motion.gaze_from_blendshapes(blendshapes)
        lookahead_ms = self.preset.lookahead_ms()
        frames, row = [], 0
        for sid, em in emitted:
            for index, captured, last in zip(em.index, em.captured_ns, em.last, strict=True):
                frames.append(Frame(sid, index, index, self.fps, index / self.fps, blendshapes[row], head[row],
                                    gaze[row], captured, 0, lookahead_ms, compute_ms, last))
                row += 1
        return frames

    def closing_frames(self, session: Session) -> list[Frame]:
        """The ease to rest after a stream's published frames (``last`` on the final one), for a stream that
        ends without its audio's frames (an error, a shutdown): receivers return to rest instead of
        holding a pose mid-word. Empty when it published nothing. Only on the engine's thread, or once it
        has stopped."""
        if session.stage is None:
            return []
        return self._wire([(session.id, session.stage.closing())], 0.0)

    def _fail(self, session: Session, exc: Exception, result: StepResult) -> None:
        log.error("stream %s failed and was closed: %s", session.id, exc)
        self.sessions.finish(session)
        result.ended.append(Ended(session, "error", f"{type(exc).__name__}: {exc}", self.closing_frames(session)))

    # --- before serving ------------------------------------------------------------------------
    def warm_up(self, audio: np.ndarray | None = None, probe_repeats: int = PROBE_REPEATS,
                probe: Probe | None = None) -> float:
        """Run everything a first stream touches before a real one waits on it (session set-up and memory
        planning in the backend, the recogniser, the prosody path's lazy import and compile on voiced
        audio, the transcript's G2P, a resampler), then measure what a stream costs (``capacity``), the
        median of ``probe_repeats`` probes, kept in ``self.probe``. ``probe``: one measured before by an engine of
        the same settings on this machine (a restarted serve's), calibrated from instead of probing when it
        probed as many streams with the same hop. ``audio``: 16 kHz speech (default: the bundled sample). Returns
        the seconds it took."""
        if probe_repeats < 1:
            raise ValueError(f"probe_repeats must be >= 1, not {probe_repeats}")
        t0 = time.perf_counter()
        if self.network_styles is not None:  # the built-in takes, ready for the network before a stream names one
            self.network_styles.attach_all([style_for(name) for name in STYLES])
        self._warm_pool()
        if audio is None:
            audio, _ = load_audio(SAMPLE_SPEECH)
        clip = np.asarray(audio, np.float32)[: int(WARM_UP_S * motion.SAMPLE_RATE)]
        stereo_48k = np.repeat(np.repeat(clip, 3)[:, None], 2, axis=1)  # a 48 kHz stereo device, crudely
        for mode in ("live", "line"):  # a first stream's paths, a transcript's too
            self._warm_streams(1, stereo_48k, mode, text="hello there")
        # what live streams cost: the CPU and the engine thread's round with 1 and with ROUND_PROBE streams (at most
        # the registry's), each the median of probe_repeats passes (a hiccup of a busy machine moves one pass). The
        # streams run as `serve`'s live streams do: their audio comes a hop a round and a round starts every hop.
        # A round after the cores idled takes longer than one right after another (docs/ENGINE.md "What a round
        # costs"): measured back to back, admission took streams whose latency then broke its promise. With their
        # audio pushed whole, the VAD ran a probe's audio in its first round and the streams' recogniser chunks
        # fell in the same rounds, and the median round had the work of neither (docs/SERVE.md)
        streams = min(ROUND_PROBE, self.sessions.max_streams)
        if streams < 2:  # a registry of one stream: admission has nothing to decide
            return time.perf_counter() - t0
        hop_ms = 1000.0 * self.preset.hop_frames / motion.FPS
        backend = f"{self.backend.name} ({getattr(self.backend, 'precision', 'float')})"
        if probe is not None and (probe.streams, probe.backend) == (streams, backend) and \
                math.isclose(probe.rounds.hop_ms, hop_ms):  # not again; other programs' load is of now, though
            self.capacity.measure_other_cores()
            probe.calibrate(self.capacity)
            self.probe = probe
            return time.perf_counter() - t0
        probe_audio = stereo_48k[: int(PROBE_S * 48_000)]
        one_cpu, probe_cpu, one_ms, probe_ms = [], [], [], []
        for _ in range(probe_repeats):
            cpu0 = time.process_time()
            one_ms.append(self._warm_streams(1, probe_audio, "live", paced=True))
            cpu1 = time.process_time()
            probe_ms.append(self._warm_streams(streams, probe_audio, "live", paced=True))
            one_cpu.append(cpu1 - cpu0)
            probe_cpu.append(time.process_time() - cpu1)
        median = statistics.median
        probe_s = len(probe_audio) / 48_000
        self.probe = Probe(median(one_cpu) / probe_s, median(probe_cpu) / (probe_s * streams), streams,
                           RoundCost.fit(median(one_ms), median(probe_ms), streams, hop_ms), time.time(), backend)
        self.probe.calibrate(self.capacity)
        return time.perf_counter() - t0

    def _warm_streams(self, n: int, stereo_48k: np.ndarray, mode: str, text: str | None = None,
                      paced: bool = False) -> float:
        """``n`` warm-up streams of the audio (48 kHz stereo), stepped to their end. Unpaced: the audio pushed
        whole, rounds back to back. ``paced``: as `serve` runs live streams: a round starts every hop and brings
        each stream a hop of audio (the first, the audio its first hop waits for: every stream hops from the
        first round); each stream is PROBE_STAGGER_S ahead of the one before, so their recogniser and VAD chunks
        fall in different rounds, as streams opened at different times do (a preset whose wait is longer than
        the audio, `quality`, gets it all in the first round). Returns the median time (ms) of the rounds that
        brought every stream audio and hopped all of them."""
        sessions = [self.sessions.open(f"warm-up-{uuid.uuid4().hex[:8]}", "sdk", AudioFormat(48_000, 2), text=text,
                                       admit=False, mode=mode) for _ in range(n)]
        hop_s = self.preset.hop_frames / motion.FPS
        block = round(hop_s * 48_000) if paced else len(stereo_48k)
        # the first round: the preset's wait and a hop (the resampler holds a few samples back), and the stagger
        first = self.preset.latency_budget_ms() / 1000 + hop_s
        lead = [round((first + i * PROBE_STAGGER_S) * 48_000) if paced else len(stereo_48k) for i in range(n)]
        fed = [0] * n
        rounds = []
        next_round = time.perf_counter()
        try:
            while not all(session.finished for session in sessions):
                steady = True  # every stream gets audio this round
                for i, session in enumerate(sessions):
                    if session.ending or session.finished:  # all fed, or failed
                        steady = False
                        continue
                    upto = min(len(stereo_48k), fed[i] + block if fed[i] else lead[i])
                    for k in range(fed[i], upto, 480):  # 10 ms blocks, as a source's
                        self.sessions.feed(session, stereo_48k[k : min(k + 480, upto)])
                    fed[i] = upto
                    if upto == len(stereo_48k):
                        self.sessions.end(session)
                if paced:  # a hop after the last round started, or at once after one that overran (no catching up)
                    time.sleep(max(0.0, next_round - time.perf_counter()))
                elif not self.has_work():  # a transcript's G2P still running (its first loads libhama): wait, as
                    # `serve`'s engine thread does; rounds of nothing back to back took the GIL and a core from it
                    self.sessions.wait_for_work(WARM_WAIT_S)
                t = time.perf_counter()
                next_round = t + hop_s
                hops = self.step().hops
                if hops == n and steady:
                    rounds.append(time.perf_counter() - t)
        finally:
            for session in sessions:
                self.sessions.remove(session)
        return 1000.0 * float(np.median(rounds)) if rounds else 0.0

    def live_profiles(self, audio: np.ndarray, styles: list[np.ndarray | None]) -> list[StyleProfile]:
        """The profiles (engine/style.py) of live streams of 16 kHz ``audio``, one per network style vector (None:
        the null style), as this engine's streams would be made (its preset, closure and liveliness; seed 0; the
        mouth's rest in silence aside: no voice gate), streamed side by side by a twin engine of its own."""
        twin = StreamingEngine(self.backend, self.preset, sessions=Sessions(max_streams=len(styles), admission=None),
                               closure=self.closure, liveliness=self.liveliness, front_end_threads=1,
                               guidance=self.guidance, mood_guidance=0.0)
        try:
            ids = [twin.open_stream(f"style-{i}", seed=0, style=v) for i, v in enumerate(styles)]
            frames: dict[str, list[Frame]] = {sid: [] for sid in ids}
            for i in range(0, audio.size, 533):
                for sid in ids:
                    twin.push(sid, audio[i : i + 533])
                while twin.has_work():
                    for f in twin.step().frames:
                        frames[f.stream].append(f)
            for sid in ids:
                twin.end_stream(sid)
            while twin.has_work():
                for f in twin.step().frames:
                    frames[f.stream].append(f)
        finally:
            twin.close()
        return [StyleProfile.of(np.stack([f.blendshapes for f in fs]), np.stack([f.head for f in fs]))
                for fs in frames.values()]

    def _warm_pool(self) -> None:
        """Give every front-end thread its front-end now (made on first use; the recogniser they share
        loads once, ~0.15 s), which would otherwise stall the first round that has two streams."""
        if self._pool is None:
            return
        workers = self._threads
        everyone = threading.Barrier(workers)  # holds each task until all threads have one: one per thread

        def load() -> None:
            everyone.wait(timeout=60)
            self._thread_front_end()

        for future in [self._pool.submit(load) for _ in range(workers)]:
            future.result()

    def _thread_front_end(self) -> BlockwiseFrontEnd:
        """This pool thread's front-end (its own log-mel buffers; the recogniser is shared), made on first use. The
        streaming-recogniser front-end is shared as it is (its state is per stream; its sessions take any thread)."""
        if isinstance(self.front_end, StreamingPosteriorgramFrontEnd):
            return self.front_end
        if not hasattr(self._local, "front_end"):
            self._local.front_end = make_front_end(self.front_end.config)
        return self._local.front_end

    def close(self) -> None:
        """Stop the front-end threads, and the front-end's own when the engine made it (streams are not flushed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._own_front_end and hasattr(self.front_end, "close"):
            self.front_end.close()


def _line_order(planned: tuple[Session, StreamState, Hop]) -> tuple[bool, int]:
    """Lines under way first, then by when their audio came (their opening, for one with none yet)."""
    session, state, _ = planned
    return state.emitted == 0, state.anchor_ns if state.anchor_ns is not None else session.opened_ns


def _ema(average: float, value: float, weight: float) -> float:
    """An exponential moving average that starts at its first value (0: none yet)."""
    return float(value) if average == 0 else (1 - weight) * average + weight * value
