"""One voice's state in the streaming engine: its audio, its features, what it has generated.

Everything a stream computes is scheduled by *sample counts*, never by how the audio was
chunked or when it arrived: front-end group g runs once the audio reaches the sample it
needs, and hop k runs once the features of its frames (plus the preset's lookahead) exist.
So the same audio gives the same frames for a fixed seed whether it arrives whole or in
random-sized chunks, as long as the engine keeps up.

When it does not (the machine is busy, or more work arrived than fits), real time wins over
determinism (``plan``): a frame that could no longer be published within its deadline is not
computed at all (shed: a gap in ``seq``), and a stream more than a hop late takes every frame
whose audio is there in one hop (one front-end call, one model window) to catch up.

Only recent audio and features are kept (what the next front-end call and the next window's
encoder context need), so a stream can run for hours in constant memory.
"""

from __future__ import annotations

import collections
import math
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ksdiff_runtime.features.frontend import BlockwiseFrontEnd
from ksdiff_runtime.features.prosody import normalized_prosody, prosody
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.motion import FPS, SAMPLE_RATE, take_frames

from .closure import ClosureConfig
from .gate import VoiceGate
from .liveliness import Liveliness
from .presets import Preset
from .sampling import WindowResult

# Prosody of a frame range is computed over this many frames before it (YIN needs 64 ms of
# audio around a frame; the rest keeps the relative voicing gate from seeing too little).
PROSODY_CONTEXT_FRAMES = 6


def frame_sample(frame: int) -> int:
    """Audio sample at the instant motion frame ``frame`` animates."""
    return round(frame * SAMPLE_RATE / FPS)


def prosody_span(front_end: BlockwiseFrontEnd, f0: int, f1: int) -> tuple[int, int]:
    """Audio span [s0, s1) the prosody of frame group [f0, f1) is computed from: the group's own
    audio (as the front-end reads it) plus PROSODY_CONTEXT_FRAMES before it."""
    return frame_sample(max(0, f0 - PROSODY_CONTEXT_FRAMES)), front_end.range_samples(f0, f1)[1]


def prosody_rows(p: np.ndarray, row: int, n: int) -> np.ndarray:
    """The model's prosody rows [n, 2] of ``n`` frames from ``row`` of a ``prosody_request``'s prosody."""
    return take_frames(normalized_prosody(p), row, n).astype(np.float32)


def low_pass(x: np.ndarray, prev: np.ndarray, time_constant_ms: float) -> np.ndarray:
    """A one-pole low-pass over frames x [..., n, d] continuing from the frame before them, prev [..., d]
    (per frame, so however the frames are cut into hops the result is the same): a live stream's head
    smoothing (Preset.head_smoothing_ms)."""
    a = 1.0 - np.exp(-1000.0 / (FPS * time_constant_ms))
    out = np.empty_like(x)
    for j in range(x.shape[-2]):
        prev = prev + a * (x[..., j, :] - prev)
        out[..., j, :] = prev
    return out


def output_frames(samples: int, fps: int) -> int:
    """Frames a stream of ``samples`` yields at ``fps``: one per started frame period, so the tail of
    the audio (the last partial period) is animated too (protocol/SPEC.md 4.2)."""
    return -(-samples * fps // SAMPLE_RATE)


def padded_samples(samples: int, fps: int) -> int:
    """Audio length (silence added after ``samples``) whose native 30 fps frames reach the last output
    frame at ``fps``: what a stream, or a whole clip, is animated over."""
    n_out = output_frames(samples, fps)
    if n_out == 0:
        return samples
    last_pos = (n_out - 1) * FPS / fps  # in native frames
    native = math.floor(last_pos + 1e-9) + (2 if last_pos % 1 > 1e-9 else 1)
    return max(samples, -(-native * SAMPLE_RATE // FPS))


@dataclass(frozen=True)
class Hop:
    """What a stream does this round: skip ``skip`` stale frames, then emit ``frames`` in one window."""

    skip: int
    frames: int
    catch_up: bool  # more than the preset's hop (the stream was late): features in one call, no crossfade


@dataclass
class HopWindow:
    """The model inputs of one stream's next hop."""

    feats: np.ndarray  # [S, F]
    prosody: np.ndarray  # [S, 2]
    prev_expr: np.ndarray  # [C, 52]
    prev_pose: np.ndarray  # [C, 3]
    known: np.ndarray  # [C]
    noise: np.ndarray  # [N, 55]
    # streamed (the stream conditioner): feats/prosody are the hop's new frames, ``commit`` of them final,
    # and ``state`` the stream's encoder state before them (name -> [V, ...])
    state: dict[str, np.ndarray] | None = None
    commit: int = 0


@dataclass
class Emitted:
    """Output frames of one hop, as arrays (the engine builds the wire frames of a whole round at once)."""

    index: list[int]
    values: np.ndarray  # [n, 55]: 52 blendshapes then head pitch, yaw, roll
    captured_ns: list[int | None]
    last: list[bool]
    shed: int = 0  # output frames skipped before these
    level: tuple[float, float] | None = None  # (end of the hop's audio in s, its RMS in dBFS), for meters


class StreamState:
    def __init__(self, stream_id: str, cfg: ModelConfig, preset: Preset, front_end: BlockwiseFrontEnd,
                 seed: int = 0, style: np.ndarray | None = None, tokens: np.ndarray | Future | None = None,
                 out_fps: int = FPS, line: bool = False, gate: VoiceGate | None = None,
                 liveliness: Liveliness | None = None, stream_variants: int = 0,
                 closure: ClosureConfig | None = None, device_clock: bool = False) -> None:
        self.id = stream_id
        self.cfg = cfg
        self.preset = preset  # for a line, the engine's preset as lines use it (Preset.for_lines)
        # a line (protocol mode "line"): its audio is already there; whole windows as soon as the audio
        # covers them, as fast as the machine can, never shed (real time does not apply)
        self.line = line
        self.front_end = front_end
        # a live stream's own recogniser stream, when the front-end keeps one (features/streaming_frontend.py)
        new_stream = getattr(front_end, "new_stream", None)
        self.ppg = new_stream() if new_stream is not None and not line else None
        self.seed = int(seed)
        self.style = style
        # transcript phoneme ids; a Future while the G2P thread works on them (no hop runs until then)
        self.tokens: np.ndarray = np.zeros(0, np.int64)
        self._tokens_later = tokens if isinstance(tokens, Future) else None
        if isinstance(tokens, np.ndarray):
            self.tokens = tokens
        self.ready_ns: int | None = None  # when the transcript was ready: no frame is due before
        self.out_fps = out_fps
        self.gate = gate  # the voice gate (engine/gate.py): the mouth rests where no voice is heard
        # the lips seal where the recogniser hears /p b m/ (engine/closure.py; the engine checks it reads no further
        # ahead than the hops wait for)
        self.closure = closure
        self.liveliness = liveliness  # blinks, gaze, a centred head (engine/liveliness.py)
        self.ended = False
        self.n_out: int | None = None  # output frames of the whole stream, once it has ended
        # audio: samples [audio_offset, samples) are kept
        self.samples = 0
        self.audio_offset = 0
        self._audio = np.zeros(0, np.float32)
        # when audio arrived: (end of a chunk's input on the 16 kHz clock, arrival ns), oldest first
        self._arrivals: collections.deque[tuple[int, int]] = collections.deque()
        self.anchor_ns: int | None = None  # real time of sample 0 (the first arrival)
        # a device's audio (sessions.Session.device_clock): sample 0 is due at the earliest its arrivals imply, so a
        # device clock running fast never makes its frames look pushed ahead (never shed)
        self.device_clock = device_clock
        # features: frames [feat_offset, feat_offset + len(feats)) are kept; n_feats computed so far
        self.n_feats = 0
        self.feat_offset = 0
        self._feats = np.zeros((0, cfg.feature_dim), np.float32)
        self._pros = np.zeros((0, cfg.prosody_dim), np.float32)
        # motion: frames [0, emitted) emitted or skipped; the last C kept as context for the next hop
        self.emitted = 0
        self.hops = 0
        C = cfg.motion_context_frames
        self._ctx = np.zeros((C, cfg.expr_dim + cfg.pose_dim), np.float32)
        self._provisional = np.zeros((0, cfg.expr_dim + cfg.pose_dim), np.float32)
        # The stream conditioner's state (model/streaming.py), one row per guidance variant; 0 variants:
        # this stream's hops are conditioned window by window. Feature frames [0, enc_pos) are in it.
        self.stream_variants = stream_variants
        self.enc_state: dict[str, np.ndarray] | None = None
        self.enc_pos = 0
        # output-fps resampling: the last emitted native frame, and the next output index
        self._last_native: np.ndarray | None = None
        self.out_index = 0
        # the real-time budget: a frame not published this long after its audio was due is stale
        self.deadline_ns = round(preset.deadline_ms() * 1e6)
        self.hop_period_ns = round(preset.hop_frames * 1e9 / FPS)

    # --- audio -------------------------------------------------------------------------------
    def append(self, audio: np.ndarray, clock_end: int, arrival_ns: int | None) -> None:
        """Add 16 kHz samples (already sanitised by the input stage); ``clock_end``: where the input
        received so far ends on the 16 kHz clock; ``arrival_ns``: when it reached the runtime."""
        if self.ended:
            raise ValueError(f"stream {self.id} has ended; open a new stream")
        if arrival_ns is not None:
            if self.anchor_ns is None:
                self.anchor_ns = arrival_ns
            if self.device_clock:
                self.anchor_ns = min(self.anchor_ns, arrival_ns - clock_end * 1_000_000_000 // SAMPLE_RATE)
            self._arrivals.append((clock_end, arrival_ns))
        if audio.size:
            self._audio = np.concatenate([self._audio, audio])
            self.samples += audio.size

    def end(self) -> None:
        """No more audio. The stream yields ``output_frames(samples)`` frames: the audio is padded with
        silence so that the native 30 fps frames cover the last output frame."""
        if self.ended:
            return
        self.ended = True
        self.n_out = output_frames(self.samples, self.out_fps)
        need = padded_samples(self.samples, self.out_fps)
        if need > self.samples:
            self._audio = np.concatenate([self._audio, np.zeros(need - self.samples, np.float32)])
            self.samples = need

    @property
    def total_frames(self) -> int | None:
        """Native (30 fps) frames of the whole stream once it has ended (None while it is live)."""
        return self.samples * FPS // SAMPLE_RATE if self.ended else None

    def audio_frames(self) -> int:
        """Frames whose features the audio here can give (all of them once the stream has ended)."""
        if self.ended:
            return self.total_frames or 0
        look = self.front_end.lookahead_samples
        return max(0, (self.samples - look) * FPS // SAMPLE_RATE)

    # --- real time -----------------------------------------------------------------------------
    def due_ns(self, sample: int) -> int | None:
        """When audio sample ``sample`` was due in real time: when it arrived, or, for audio pushed
        ahead of real time, when its instant comes (None: not real-time audio)."""
        if self.anchor_ns is None or not self._arrivals:
            return None
        arrival = self._arrivals[-1][1]
        for end, ns in self._arrivals:
            if end >= sample:
                arrival = ns
                break
        due = max(arrival, self.anchor_ns + sample * 1_000_000_000 // SAMPLE_RATE)
        return due if self.ready_ns is None else max(due, self.ready_ns)

    def captured_ns(self, frame_pos: float) -> int | None:
        """When the audio at (native) frame position ``frame_pos`` reached the runtime: the arrival
        of the chunk that held it; never earlier than an earlier instant's (protocol/SPEC.md 4.2)."""
        if not self._arrivals:
            return None
        sample = round(frame_pos * SAMPLE_RATE / FPS)
        for end, ns in self._arrivals:
            if end >= sample:
                return ns
        return self._arrivals[-1][1]

    def plan(self, now_ns: int, lead_ns: int) -> Hop | None:
        """This round's hop, or None when nothing is ready. ``lead_ns``: how long a round takes (a
        frame whose deadline passes before then is stale)."""
        if self._tokens_later is not None:
            if not self._tokens_later.done():
                return None  # the transcript's phonemes are on their way; the stream starts with them
            self.tokens = self._tokens_later.result()  # raises what G2P raised: the stream fails with it
            self._tokens_later = None
            self.ready_ns = now_ns
        p, L = self.preset, self.preset.model_lookahead_frames
        end = self.total_frames
        available = self.audio_frames()
        e = self.emitted
        if self.line:  # a whole window, or the rest of an ended line
            left = end - e if end is not None else available - L - e
            if left <= 0 or (end is None and left < p.hop_frames):
                return None
            return Hop(0, min(left, p.hop_frames), True)
        skip = 0
        if not self.ended or e < (end or 0):
            while e + skip < available - L and self._stale(e + skip, now_ns + lead_ns):
                skip += 1
        e += skip
        if end is not None:
            left = end - e
            if left <= 0:
                return Hop(skip, 0, False) if skip else None
            k = min(left, p.window_frames if skip or self._late(min(e + p.hop_frames, end) - 1, now_ns)
                    else p.hop_frames)
            return Hop(skip, k, k > p.hop_frames)
        if available < self._grouped(e + p.hop_frames + L):
            return Hop(skip, 0, True) if skip else None
        if skip or self._late(e + p.hop_frames + L - 1, now_ns):
            return Hop(skip, min(available - L - e, p.window_frames), True)
        return Hop(skip, p.hop_frames, False)

    def _grouped(self, upto: int) -> int:
        """Frames the audio must cover for features up to ``upto`` in the preset's groups (from ``n_feats``)."""
        if upto <= self.n_feats:
            return upto
        G = self.preset.feature_block_frames
        return self.n_feats + -(-(upto - self.n_feats) // G) * G

    def _stale(self, frame: int, at_ns: int) -> bool:
        """The frame could not be published by its deadline (its audio's arrival + the preset's deadline)."""
        due = self.due_ns(frame_sample(frame))
        return due is not None and due + self.deadline_ns < at_ns

    def _late(self, frame: int, now_ns: int) -> bool:
        """More than one hop behind the audio that frame ``frame``'s features need (the last frame a
        hop needs): the audio arrived over a hop ago and the hop has not run."""
        due = self.due_ns(self.front_end.range_samples(frame, frame + 1)[1])
        return due is not None and now_ns - due > self.hop_period_ns

    # --- features ----------------------------------------------------------------------------
    def skip_to(self, frame: int) -> int:
        """Leave frames [emitted, frame) out (stale); returns the output frames skipped. Their features,
        when not computed yet, repeat the last ones (the encoder context of later hops sees them)."""
        if frame <= self.emitted:
            return 0
        if self.n_feats < frame:
            n = frame - self.n_feats
            last_f = self._feats[-1:] if len(self._feats) else np.zeros((1, self.cfg.feature_dim), np.float32)
            last_p = self._pros[-1:] if len(self._pros) else np.zeros((1, self.cfg.prosody_dim), np.float32)
            self._feats = np.concatenate([self._feats, np.repeat(last_f, n, 0)])
            self._pros = np.concatenate([self._pros, np.repeat(last_p, n, 0)])
            self.n_feats = frame
        self.emitted = frame
        self._provisional = self._provisional[:0]
        self._last_native = None
        first_out = math.ceil(frame * self.out_fps / FPS - 1e-9)
        skipped, self.out_index = max(0, first_out - self.out_index), max(self.out_index, first_out)
        self._trim()
        return skipped

    def update_features(self, upto: int, one_call: bool, front_end: BlockwiseFrontEnd | None = None) -> None:
        """Features for frames up to ``upto`` (exclusive), as far as the audio allows. Normally in the
        preset's groups (the schedule training used); ``one_call``: everything in one front-end call
        (a stream catching up, a line). ``front_end``: the instance to compute with (an engine gives
        each of its threads its own front-end); the same configuration, so the same features."""
        compute = front_end or self.front_end
        available = self.audio_frames()
        if self.line and self.n_feats == 0 and self.audio_offset == 0 and available:
            # A line's first features: every frame its audio already gives, as a bake computes them (one
            # pass over all of it with full context, front_end.offline, and prosody over all of it), not
            # one call per window. A clip through `animate` is all here by then: its frames are the bake's.
            # (A preset that reads frames early may have one frame more to read than the audio's whole
            # periods, which the bake's pass gives: that one comes from its group below.)
            feats = compute.offline(self._audio)[:available]
            n = feats.shape[0]
            self._feats = feats
            self._pros = take_frames(normalized_prosody(prosody(self._audio)), 0, n).astype(np.float32)
            self.n_feats = n
            self._trim()
        groups = self.feature_groups(upto, one_call)
        for (f0, f1), feats in zip(groups, compute.many_range_features([self.front_end_request(*g) for g in groups]),
                                   strict=True):
            self.add_features(f0, f1, feats)

    def front_end_request(self, f0: int, f1: int) -> tuple:
        """The front-end's request for group [f0, f1): (the audio kept, f0, f1, its first sample's index), and
        the stream's recogniser stream when it keeps one."""
        request = (self._audio, f0, f1, self.audio_offset)
        return request if self.ppg is None else (*request, self.ppg)

    def feature_groups(self, upto: int, one_call: bool) -> list[tuple[int, int]]:
        """The front-end calls (frame ranges) that bring the features up to ``upto``, as far as the audio
        allows: the preset's groups (the schedule training used), or ``one_call`` (a stream catching up).
        The last range of an ended stream may reach past its audio (the front-end gives what there is)."""
        available = self.audio_frames()
        G = self.preset.feature_block_frames
        groups: list[tuple[int, int]] = []
        f0 = self.n_feats
        while f0 < min(upto, available):
            f1 = min(upto, available) if one_call else f0 + G
            if f1 > available and not self.ended:
                break
            groups.append((f0, f1))
            f0 = f1
        return groups

    def add_features(self, f0: int, f1: int, feats: np.ndarray, pros: np.ndarray | None = None) -> None:
        """The front-end's features of group [f0, f1) (fewer frames at an ended stream's end), with their
        prosody: ``pros`` from ``prosody_rows`` (an engine round computes every stream's at once), or here."""
        if self.ended:  # a preset reading frames early may be given one past the end: the stream has no such frame
            feats = feats[: max(0, (self.total_frames or 0) - f0)]
            pros = None if pros is None else pros[: feats.shape[0]]
        n = feats.shape[0]
        if f0 != self.n_feats or n == 0:  # cannot happen with the sample counts above; never loop on it
            raise RuntimeError(f"stream {self.id}: front-end gave {n} frames for [{f0}, {f1}) after {self.n_feats}")
        if pros is None:
            segment, row = self.prosody_request(f0, f0 + n, f1)
            pros = prosody_rows(prosody(segment, from_row=row), row, n)
        self._feats = np.concatenate([self._feats, feats])
        self._pros = np.concatenate([self._pros, pros])
        self.n_feats += n
        self._trim()

    def prosody_request(self, f0: int, f1: int, f1_nominal: int) -> tuple[np.ndarray, int]:
        """The audio frames [f0, f1)'s prosody is computed from (PROSODY_CONTEXT_FRAMES before them, for
        the voicing gate), and the row of frame f0 in it."""
        k0 = max(0, f0 - PROSODY_CONTEXT_FRAMES)
        s0, s1 = prosody_span(self.front_end, f0, f1_nominal)
        s1 = min(self.samples, s1)
        seg = self._audio[s0 - self.audio_offset : s1 - self.audio_offset]
        # at the very end of a stream the segment may stop inside frame f1 - 1: pad with silence
        # so every frame gets its own row
        need = -(-(f1 - k0) * SAMPLE_RATE // FPS) + 1
        if seg.size < need:
            seg = np.pad(seg, (0, need - seg.size))
        return seg, f0 - k0

    def listen_args(self) -> tuple[np.ndarray, int, int, bool]:
        """The audio the voice gate's VAD reads: (the audio kept, its first sample's index, samples, ended)."""
        return self._audio, self.audio_offset, self.samples, self.ended

    def _listen(self) -> None:
        """The voice gate's VAD over the audio there is (before any of it is forgotten). An engine round runs
        every stream's at once first (``vad.advance_many``); this catches what that did not."""
        if self.gate is not None:
            self.gate.listen(*self.listen_args())

    def _trim(self) -> None:
        """Forget audio, features and arrival times no future computation can need."""
        self._listen()
        next_f0 = self.n_feats
        keep_from = min(self.front_end.range_samples(next_f0, next_f0 + 1)[0],
                        frame_sample(max(0, next_f0 - PROSODY_CONTEXT_FRAMES)))
        if keep_from > self.audio_offset + SAMPLE_RATE:  # trim in 1 s steps, not every call
            self._audio = self._audio[keep_from - self.audio_offset :].copy()
            self.audio_offset = keep_from
        keep_frame = self.emitted - self.cfg.encoder_context_frames
        if keep_frame > self.feat_offset + FPS:
            cut = keep_frame - self.feat_offset
            self._feats, self._pros = self._feats[cut:].copy(), self._pros[cut:].copy()
            self.feat_offset = keep_frame
        # keep the arrival of every frame an output-fps resampler or a deadline may still ask about
        while len(self._arrivals) > 1 and self._arrivals[0][0] < frame_sample(self.emitted - 2):
            self._arrivals.popleft()

    # --- hops ---------------------------------------------------------------------------------
    def features_needed(self, hop: Hop) -> int:
        """Frames whose features the hop reads: its own and the model's lookahead (within the stream). A
        line computes every frame its audio gives at once (one front-end call, full context across it)."""
        need = self.emitted + hop.frames + self.preset.model_lookahead_frames
        if self.line:
            need = max(need, self.audio_frames())
        end = self.total_frames
        return need if end is None else min(need, end)

    def hop_ready(self, hop: Hop) -> bool:
        """The features the hop needs exist."""
        return hop.frames > 0 and self.n_feats >= self.features_needed(hop)

    def work_ready(self) -> bool:
        """A hop could run now without more audio (the preset's hop, or the rest of an ended stream)."""
        if self._tokens_later is not None and not self._tokens_later.done():
            return False
        if self.ended:
            return not self.finished()
        p = self.preset
        if self.line:
            return self.audio_frames() >= self.emitted + p.hop_frames + p.model_lookahead_frames
        return self.audio_frames() >= self._grouped(self.emitted + p.hop_frames + p.model_lookahead_frames)

    def finished(self) -> bool:
        """Ended, and every output frame emitted (or skipped)."""
        return self.ended and self.out_index >= (self.n_out or 0)

    def hop_window(self, hop: Hop) -> HopWindow:
        cfg, p = self.cfg, self.preset
        E, L, C, N = cfg.encoder_context_frames, cfg.lookahead_frames, cfg.motion_context_frames, p.window_frames
        e = self.emitted
        # Features the hop may use: exactly up to its lookahead (never more, even if more audio
        # has arrived, so the frames do not depend on arrival timing); later frames repeat the
        # last of them, as in training's hide-lookahead augmentation.
        usable = e + hop.frames + p.model_lookahead_frames
        if self.ended:
            usable = min(usable, self.n_feats)
        avail = usable - self.feat_offset
        start = e - E - self.feat_offset
        feats = take_frames(self._feats[:avail], start, E + N + L)
        pros = take_frames(self._pros[:avail], start, E + N + L)
        known = (np.arange(e - C, e) >= 0).astype(np.float32)
        rng = np.random.default_rng([self.seed, self.hops])
        noise = rng.standard_normal((N, cfg.expr_dim + cfg.pose_dim)).astype(np.float32)
        D = cfg.expr_dim
        window = HopWindow(feats, pros, self._ctx[:, :D].copy(), self._ctx[:, D:].copy(), known, noise)
        if self.streamed:
            # Frames [enc_pos, e + H + L) are final (committed: the state moves past them), the rest of
            # the window's frames provisional, with the very features the windowed hop above would read.
            # A stream that is new, or whose state fell further behind than the encoder context (frames
            # shed), starts again from zeros at the windowed span's start.
            if self.enc_state is None or self.enc_pos < e - E:
                self.enc_state = {name: np.zeros((self.stream_variants, *shape), np.float32)
                                  for name, shape in cfg.stream_state_shapes().items()}
                self.enc_pos = e - E
            first = self.enc_pos - (e - E)  # where the hop's new frames start in the windowed span
            window.feats, window.prosody = feats[first:], pros[first:]
            window.commit = e + hop.frames + L - self.enc_pos
            window.state = self.enc_state
        return window

    @property
    def streamed(self) -> bool:
        """Whether the stream's hops are conditioned by the stream conditioner: a live stream (lines run whole
        windows, the bake's way) on a backend that has it, with the model's whole lookahead."""
        return (self.stream_variants > 0 and not self.line
                and self.preset.model_lookahead_frames == self.cfg.lookahead_frames)

    def apply_hop(self, hop: Hop, result: WindowResult, i: int) -> Emitted:
        """Take row ``i`` of a batched hop result: crossfade, emit, keep context and provisional frames."""
        p = self.preset
        if result.state is not None:
            self.enc_state = {name: rows[i] for name, rows in result.state.items()}
            self.enc_pos = self.emitted + hop.frames + self.cfg.lookahead_frames
        window = np.concatenate([result.expr[i], result.pose[i]], axis=-1)
        X = 0 if hop.catch_up else min(p.crossfade_frames, len(self._provisional))
        if X:
            # ramp from the previous hop's guess (made with less audio) to this hop's frames
            w = (np.arange(1, X + 1, dtype=np.float32) / (X + 1))[:, None]
            window[:X] = (1.0 - w) * self._provisional[:X] + w * window[:X]
        n = hop.frames
        new = window[:n].copy()
        self._provisional = window[n:].copy()
        D = self.cfg.expr_dim
        # (a low-pass on blendshapes was tried too: it only blurred closures, docs/ENGINE.md)
        if p.head_smoothing_ms > 0 and n:
            new[:, D:] = low_pass(new[:, D:], self._ctx[-1, D:] if self.emitted else new[0, D:], p.head_smoothing_ms)
        C = self.cfg.motion_context_frames
        self._ctx = np.concatenate([self._ctx, new])[-C:]
        first = self.emitted
        self.emitted += n
        self.hops += 1
        # on what goes out; the model's own context stays as it made it
        if self.closure is not None:
            new[:, :D] = self.closure.apply(new[:, :D], self._feats, first - self.feat_offset)
        if self.gate is not None:
            self._listen()
            new = self.gate.apply(new, first)
        if self.liveliness is not None:
            new = self.liveliness.apply(new)
        emitted = self._resample(new, first)
        emitted.level = (frame_sample(self.emitted) / SAMPLE_RATE, self._level_dbfs(first, self.emitted))
        self._trim()
        return emitted

    def _level_dbfs(self, f0: int, f1: int) -> float:
        """RMS level of the audio of native frames f0..f1 in dB relative to full scale (-120 for silence)."""
        lo = max(0, frame_sample(f0) - self.audio_offset)
        seg = self._audio[lo : max(lo, frame_sample(f1) - self.audio_offset)]
        power = float(np.mean(np.square(seg, dtype=np.float64))) if seg.size else 0.0
        return max(-120.0, 10.0 * math.log10(power)) if power > 0 else -120.0

    def _resample(self, new: np.ndarray, first: int) -> Emitted:
        """Output frames at ``out_fps`` whose times fall within the native frames emitted so far
        (linear interpolation between neighbouring 30 fps frames)."""
        native = new if self._last_native is None else np.concatenate([self._last_native[None], new])
        base = first if self._last_native is None else first - 1
        self._last_native = new[-1].copy() if len(new) else self._last_native
        last_native = self.emitted - 1
        out = Emitted([], np.zeros((0, new.shape[1]), np.float32), [], [])
        rows = []
        while self.n_out is None or self.out_index < self.n_out:
            pos = self.out_index * FPS / self.out_fps  # position in native frames
            if pos > last_native + 1e-9:
                break
            i0 = int(np.floor(pos + 1e-9))
            w = pos - i0
            a = native[i0 - base]
            b = native[min(i0 + 1, last_native) - base]
            rows.append((1.0 - w) * a + w * b)
            out.index.append(self.out_index)
            out.captured_ns.append(self.captured_ns(pos))
            out.last.append(self.n_out is not None and self.out_index == self.n_out - 1)
            self.out_index += 1
        if rows:
            out.values = np.stack(rows).astype(np.float32)
        return out
