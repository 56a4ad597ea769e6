"""One voice's state in the streaming engine: its audio, its features, what it has generated.

Everything a stream computes is scheduled by *sample counts*, never by how the audio was
chunked or when it arrived: front-end group g runs once the audio reaches the sample it
needs, and hop k runs once the features of its frames (plus the preset's lookahead) exist.
So the same audio gives the same frames for a fixed seed whether it arrives whole or in
random-sized chunks.

Only recent audio and features are kept (what the next front-end call and the next
window's encoder context need), so a stream can run for hours in constant memory.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.features.frontend import BlockwiseFrontEnd
from ksdiff_runtime.features.prosody import normalized_prosody, prosody
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.motion import FPS, SAMPLE_RATE, take_frames

from .presets import Preset
from .sampling import WindowResult

log = logging.getLogger("ksdiff_runtime.engine")

# Prosody of a frame range is computed over this many frames before it (YIN needs 64 ms of
# audio around a frame; the rest keeps the relative voicing gate from seeing too little).
PROSODY_CONTEXT_FRAMES = 6
# Longest gap on a stream's clock that is filled with silence; a longer one fails the stream.
MAX_GAP_S = 10


def frame_sample(frame: int) -> int:
    """Audio sample at the instant motion frame ``frame`` animates."""
    return round(frame * SAMPLE_RATE / FPS)


def prosody_span(front_end: BlockwiseFrontEnd, f0: int, f1: int) -> tuple[int, int]:
    """Audio span [s0, s1) the prosody of frame group [f0, f1) is computed from: the group's own
    audio (as the front-end reads it) plus PROSODY_CONTEXT_FRAMES before it."""
    return frame_sample(max(0, f0 - PROSODY_CONTEXT_FRAMES)), front_end.range_samples(f0, f1)[1]


@dataclass
class Frame:
    """One output frame of one stream."""

    stream_id: str
    index: int  # frame number at the engine's output fps
    t_audio: float  # seconds into the stream's audio that this frame animates
    blendshapes: np.ndarray  # [52] ARKit weights 0..1, motion.BLENDSHAPES order
    head: np.ndarray  # [3] pitch, yaw, roll in radians (motion.HEAD_ROTATION)
    captured_ns: int | None  # monotonic ns when the audio at t_audio was captured (None: unknown)
    emitted_ns: int  # monotonic ns when the engine produced the frame
    last: bool = False  # the stream's final frame


@dataclass
class HopWindow:
    """The model inputs of one stream's next hop."""

    feats: np.ndarray  # [S, F]
    prosody: np.ndarray  # [S, 2]
    prev_expr: np.ndarray  # [C, 52]
    prev_pose: np.ndarray  # [C, 3]
    known: np.ndarray  # [C]
    noise: np.ndarray  # [N, 55]


class StreamState:
    def __init__(
        self,
        stream_id: str,
        cfg: ModelConfig,
        preset: Preset,
        front_end: BlockwiseFrontEnd,
        seed: int = 0,
        style: np.ndarray | None = None,
        out_fps: int = FPS,
    ) -> None:
        self.id = stream_id
        self.cfg = cfg
        self.preset = preset
        self.front_end = front_end
        self.seed = int(seed)
        self.style = style
        self.tokens = np.zeros(0, np.int64)  # transcript phoneme ids (empty: no transcript)
        self.out_fps = out_fps
        self.ended = False
        # audio: samples [audio_offset, samples) are kept
        self.samples = 0
        self.audio_offset = 0
        self._audio = np.zeros(0, np.float32)
        # features: frames [feat_offset, feat_offset + len(feats)) are kept; n_feats computed so far
        self.n_feats = 0
        self.feat_offset = 0
        self._feats = np.zeros((0, cfg.feature_dim), np.float32)
        self._pros = np.zeros((0, cfg.prosody_dim), np.float32)
        # motion: frames [0, emitted) emitted; the last C kept as context for the next hop
        self.emitted = 0
        self.hops = 0
        C = cfg.motion_context_frames
        self._ctx = np.zeros((C, cfg.expr_dim + cfg.pose_dim), np.float32)
        self._provisional = np.zeros((0, cfg.expr_dim + cfg.pose_dim), np.float32)
        # output-fps resampling: the last emitted native frame, and the next output index
        self._last_native: np.ndarray | None = None
        self.out_index = 0
        # (absolute end sample, monotonic capture ns) of recent chunks, for latency accounting
        self._captures: collections.deque[tuple[int, int]] = collections.deque()
        self.gap_samples = 0
        self.overlap_samples = 0

    # --- audio -------------------------------------------------------------------------------
    def append_audio(self, audio: np.ndarray, at_sample: int | None, captured_ns: int | None) -> None:
        """Add sanitised 16 kHz samples. ``at_sample`` places them on the stream's clock: a gap
        is filled with silence (the clock never slips), a repeat of audio already held is dropped."""
        if self.ended:
            raise ValueError(f"stream {self.id} has ended; open a new stream")
        if at_sample is not None:
            if at_sample > self.samples:
                gap = at_sample - self.samples
                if gap > MAX_GAP_S * SAMPLE_RATE:
                    # silence this long would cost recogniser time and memory for nothing
                    raise ValueError(f"stream {self.id}: {gap / SAMPLE_RATE:.1f} s of audio missing before sample "
                                     f"{at_sample} (at most {MAX_GAP_S} s is filled with silence); end the stream "
                                     "and open a new one after a long pause")
                self.gap_samples += gap
                log.warning("stream %s: %d samples (%.0f ms) missing before sample %d; filled with silence",
                            self.id, gap, 1000 * gap / SAMPLE_RATE, at_sample)
                audio = np.concatenate([np.zeros(gap, np.float32), audio])
            elif at_sample < self.samples:
                dup = min(self.samples - at_sample, audio.size)
                self.overlap_samples += dup
                log.warning("stream %s: dropped %d samples already received (chunk starts at %d, stream at %d)",
                            self.id, dup, at_sample, self.samples)
                audio = audio[dup:]
        if audio.size == 0:
            return
        self._audio = np.concatenate([self._audio, audio])
        self.samples += audio.size
        if captured_ns is not None:
            self._captures.append((self.samples, captured_ns))

    def end(self) -> None:
        self.ended = True

    @property
    def total_frames(self) -> int | None:
        """Frames of the whole stream once it has ended (None while it is live)."""
        return motion.num_frames(self.samples) if self.ended else None

    # --- features ----------------------------------------------------------------------------
    def update_features(self, front_end: BlockwiseFrontEnd | None = None) -> int:
        """Run the front-end on every frame group whose audio is complete; returns groups run.

        ``front_end``: the instance to compute with (an engine gives each of its threads its own
        recogniser); the same configuration as the stream's, so the same features."""
        compute = front_end or self.front_end
        G = self.preset.feature_block_frames
        runs = 0
        while True:
            f0 = self.n_feats
            f1 = f0 + G
            end = self.total_frames
            if end is not None:
                if f0 >= end:
                    return runs
            elif self.samples < self.front_end.range_samples(f0, f1)[1]:
                return runs
            feats = compute.range_features(self._audio, f0, f1, offset=self.audio_offset)
            n = feats.shape[0]
            if n == 0:  # cannot happen with the sample counts above; never loop on it
                raise RuntimeError(f"stream {self.id}: front-end gave no frames for [{f0}, {f1})")
            self._feats = np.concatenate([self._feats, feats])
            self._pros = np.concatenate([self._pros, self._prosody(f0, f0 + n, f1)])
            self.n_feats += n
            runs += 1
            self._trim()

    def _prosody(self, f0: int, f1: int, f1_nominal: int) -> np.ndarray:
        k0 = max(0, f0 - PROSODY_CONTEXT_FRAMES)
        s0, s1 = prosody_span(self.front_end, f0, f1_nominal)
        s1 = min(self.samples, s1)
        seg = self._audio[s0 - self.audio_offset : s1 - self.audio_offset]
        # at the very end of a stream the segment may stop inside frame f1 - 1: pad with silence
        # so every frame gets its own row
        need = -(-(f1 - k0) * SAMPLE_RATE // FPS) + 1
        if seg.size < need:
            seg = np.pad(seg, (0, need - seg.size))
        rows = normalized_prosody(prosody(seg))
        return take_frames(rows, f0 - k0, f1 - f0).astype(np.float32)

    def _trim(self) -> None:
        """Forget audio and features no future computation can need."""
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
        # keep the capture times of frames an output-fps resampler may still interpolate
        while self._captures and self._captures[0][0] < frame_sample(self.emitted - 2):
            self._captures.popleft()

    # --- hops ---------------------------------------------------------------------------------
    def hop_ready(self) -> bool:
        """True when the next hop's features exist (or the stream ended with frames left)."""
        end = self.total_frames
        if end is not None:
            return self.emitted < end and self.n_feats >= end
        return self.n_feats >= self.emitted + self.preset.hop_frames + self.preset.model_lookahead_frames

    def finished(self) -> bool:
        """Ended, and every frame emitted."""
        return self.ended and self.emitted >= motion.num_frames(self.samples)

    def hop_window(self) -> HopWindow:
        cfg, p = self.cfg, self.preset
        E, L, C, N = cfg.encoder_context_frames, cfg.lookahead_frames, cfg.motion_context_frames, p.window_frames
        e = self.emitted
        # Features the hop may use: exactly up to its lookahead (never more, even if more audio
        # has arrived, so the frames do not depend on arrival timing); later frames repeat the
        # last of them, as in training's hide-lookahead augmentation.
        usable = e + p.hop_frames + p.model_lookahead_frames
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
        return HopWindow(feats, pros, self._ctx[:, :D].copy(), self._ctx[:, D:].copy(), known, noise)

    def apply_hop(self, result: WindowResult, i: int, now_ns: int) -> list[Frame]:
        """Take row ``i`` of a batched hop result: crossfade, emit, keep context and provisional frames."""
        p = self.preset
        window = np.concatenate([result.expr[i], result.pose[i]], axis=-1)
        X = min(p.crossfade_frames, len(self._provisional))
        if X:
            # ramp from the previous hop's guess (made with less audio) to this hop's frames
            w = (np.arange(1, X + 1, dtype=np.float32) / (X + 1))[:, None]
            window[:X] = (1.0 - w) * self._provisional[:X] + w * window[:X]
        end = self.total_frames
        n = p.hop_frames if end is None else min(p.hop_frames, end - self.emitted)
        new = window[:n].copy()
        self._provisional = window[p.hop_frames :].copy()
        D = self.cfg.expr_dim
        # (a low-pass on blendshapes was tried too: it only blurred closures, docs/ENGINE.md)
        if p.head_smoothing_ms > 0 and n:
            new[:, D:] = self._low_pass(new[:, D:], self._ctx[-1, D:], p.head_smoothing_ms)
        C = self.cfg.motion_context_frames
        self._ctx = np.concatenate([self._ctx, new])[-C:]
        first = self.emitted
        self.emitted += n
        self.hops += 1
        frames = self._resample(new, first, now_ns)
        self._trim()
        return frames

    def _low_pass(self, x: np.ndarray, last: np.ndarray, time_constant_ms: float) -> np.ndarray:
        """One-pole low-pass continuing from the last emitted frame (per frame, so chunk-invariant)."""
        a = 1.0 - np.exp(-1000.0 / (FPS * time_constant_ms))
        prev = last if self.emitted else x[0]
        out = np.empty_like(x)
        for j in range(len(x)):
            prev = prev + a * (x[j] - prev)
            out[j] = prev
        return out

    def _resample(self, new: np.ndarray, first: int, now_ns: int) -> list[Frame]:
        """Output frames at ``out_fps`` whose times fall within the native frames emitted so far
        (linear interpolation between neighbouring 30 fps frames)."""
        native = new if self._last_native is None else np.concatenate([self._last_native[None], new])
        base = first if self._last_native is None else first - 1
        self._last_native = new[-1].copy() if len(new) else self._last_native
        last_native = self.emitted - 1
        end = self.total_frames
        frames: list[Frame] = []
        D = self.cfg.expr_dim
        while True:
            pos = self.out_index * FPS / self.out_fps  # position in native frames
            if pos > last_native + 1e-9:
                break
            i0 = int(np.floor(pos + 1e-9))
            w = pos - i0
            a = native[i0 - base]
            b = native[min(i0 + 1, last_native) - base]
            v = (1.0 - w) * a + w * b
            t = self.out_index / self.out_fps
            next_pos = (self.out_index + 1) * FPS / self.out_fps
            frames.append(Frame(self.id, self.out_index, t, v[:D].astype(np.float32), v[D:].astype(np.float32),
                                self.captured_ns_at(round(t * SAMPLE_RATE)), now_ns,
                                last=end is not None and next_pos > end - 1 + 1e-9))
            self.out_index += 1
        return frames

    def captured_ns_at(self, sample: int) -> int | None:
        """When the audio sample ``sample`` was captured, from the capture time of its chunk."""
        for end, ns in self._captures:
            if end >= sample:
                return ns - round((end - sample) * 1e9 / SAMPLE_RATE)
        return None
