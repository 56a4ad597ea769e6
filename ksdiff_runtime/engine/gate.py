"""The voice gate: the mouth rests wherever Silero VAD hears no voice.

The model mouths along to music, fans, wind and noise (issue 11's measurements); a VTuber's room
has all of them. The gate closes the mouth and jaw (the ``jaw`` and ``mouth`` regions: weight 0,
ARKit's neutral face) on frames with no voice near them, and leaves every other frame exactly as
the model made it. Eyes, brows and head keep moving: a silent person is not a statue.

Frame ``i`` (30 fps, at sample ``i * 16000 / 30``) is voiced when ``min_chunks`` consecutive 32 ms
VAD chunks ending in (instant - ``hangover_ms``, instant + lookahead] have a speech probability of at
least ``threshold`` (one chunk alone is too easily a chord's attack or a click; a syllable lasts
longer than two); the lookahead is the audio a hop already waits for (``lookahead_frames``, the
model's, and the frame's own period, less ``early_ms`` for a preset that reads frames early), so the
gate adds no latency and opens before the first syllable's frame, and the hangover keeps the mouth
free through the short pauses inside speech. On a voiced frame the gain is 1; after the last one it
falls to 0 linearly over ``release_ms`` (a closing mouth, not a snap). Frames are gated from the audio
alone, so a stream and a bake gated with the same config (``GateConfig.for_preset``) agree; a bake's
own (``GateConfig()``) reads the whole period, 10 ms more than a ``low-latency`` stream, and may open
a frame sooner at the start of speech.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.engine.presets import Preset
from ksdiff_runtime.features.vad import CHUNK, SileroVad, VadTrack, VadUnavailableError, vad_model_path

log = logging.getLogger(__name__)

GATED_COLUMNS = np.array([motion.index(n) for n in (*motion.REGIONS["jaw"], *motion.REGIONS["mouth"])])


@dataclass(frozen=True)
class GateConfig:
    # speech probability that counts as voice: Silero's own default is 0.5, at which a chord's attack
    # passed for two chunks of voice (benchmarks/voice_gate.py); at 0.6 none did and real prompts lost
    # one more voiced frame in 590
    threshold: float = 0.6
    hangover_ms: float = 250.0  # voice this recent keeps the mouth free
    release_ms: float = 100.0  # then the mouth closes over this long
    lookahead_frames: int = 2  # voice this many frames ahead opens it (the model's lookahead)
    # a preset that reads a frame before its period is all heard (a negative feature lookahead) makes its
    # hops this much sooner, and the gate reads no further than they do
    early_ms: float = 0.0
    # consecutive voiced VAD chunks (32 ms each) that count as voice; 3 closed the first opening of an
    # utterance (the third chunk comes after the model's lookahead)
    min_chunks: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"voice gate threshold must be in (0, 1), got {self.threshold}")
        if self.hangover_ms < 0 or self.release_ms < 0 or self.lookahead_frames < 0 or self.early_ms < 0:
            raise ValueError("voice gate hangover_ms, release_ms, lookahead_frames and early_ms must be >= 0")
        if self.min_chunks < 1:
            raise ValueError(f"voice gate min_chunks must be >= 1, got {self.min_chunks}")

    def for_preset(self, preset: Preset) -> GateConfig:
        """This gate as a stream of ``preset`` reads it: as far ahead as the model looks, and as early as the
        preset reads frames, so the audio it reads is there when a hop runs."""
        return dataclasses.replace(self, lookahead_frames=preset.model_lookahead_frames,
                                   early_ms=max(0.0, -preset.feature_lookahead_ms))

    def audio_needed(self, frame: int) -> int:
        """Samples the gain of native frame ``frame`` reads: up to its lookahead (less ``early_ms``)."""
        early = round(self.early_ms * motion.SAMPLE_RATE / 1000)
        return (frame + self.lookahead_frames + 1) * motion.SAMPLE_RATE // motion.FPS - early

    def chunk_span(self, frame: int) -> tuple[int, int]:
        """VAD chunks [k0, k1) the frame's gain reads: those ending after (instant - hangover) and no later
        than ``audio_needed`` (whole chunks only, so the span never depends on how much audio has come)."""
        instant = frame * motion.SAMPLE_RATE / motion.FPS
        k0 = max(0, int(np.floor((instant - self.hangover_ms * motion.SAMPLE_RATE / 1000) / CHUNK)))
        return k0, self.audio_needed(frame) // CHUNK


class VoiceGate:
    """One stream's gate: its VAD track and the gain of the last frame it gated."""

    def __init__(self, config: GateConfig, model: SileroVad) -> None:
        self.config = config
        self.track = VadTrack(model)
        # frames since the last voiced one (an integer, so gains are the same whatever the hops): before
        # the first frame, long ago (closed)
        self._since = 1 << 30
        self._release = max(1.0, config.release_ms * motion.FPS / 1000.0)  # frames the mouth takes to close

    def listen(self, audio: np.ndarray, offset: int, samples: int, ended: bool) -> None:
        """Run the VAD over the audio there is (``audio`` holds the stream from sample ``offset`` on)."""
        self.track.advance(audio, offset, samples, ended)

    def gains(self, first: int, n: int) -> np.ndarray:
        """Gains [n] of native frames [first, first + n), in order (each continues from the last)."""
        if n == 0:
            return np.zeros(0, np.float32)
        cfg, m = self.config, self.config.min_chunks
        spans = np.array([cfg.chunk_span(f) for f in range(first, first + n)])  # [n, 2]: chunks [k0, k1)
        lo = max(int(spans[:, 0].min()), self.track.first)
        above = self.track.probs(lo, int(spans[:, 1].max())) >= cfg.threshold
        # ends[i]: chunk lo + i closes a run of m chunks above the threshold; a frame is voiced when such a
        # run lies within its span, i.e. one ends in [k0 + m - 1, k1)
        ends = np.convolve(above.astype(np.int32), np.ones(m, np.int32))[: above.size] >= m
        count = np.concatenate([[0], np.cumsum(ends)])
        a = np.clip(spans[:, 0] + m - 1 - lo, 0, above.size)
        b = np.clip(spans[:, 1] - lo, 0, above.size)
        voiced = count[np.maximum(a, b)] - count[a] > 0
        # 1 on a voiced frame, then down linearly to 0 over the release
        j = np.arange(n)
        last = np.maximum.accumulate(np.where(voiced, j, -1))
        since = np.where(last >= 0, j - last, self._since + j + 1)
        self._since = int(since[-1])
        out = np.clip((self._release - since) / self._release, 0.0, 1.0).astype(np.float32)
        self.track.forget_before(cfg.chunk_span(first + n)[0])
        return out

    def apply(self, values: np.ndarray, first: int) -> np.ndarray:
        """Native frames [first, first + len(values)) [n, 55] with the mouth and jaw scaled by their gains."""
        gains = self.gains(first, len(values))
        if np.all(gains == 1.0):
            return values
        out = values.copy()
        out[:, GATED_COLUMNS] *= gains[:, None]
        return out


def gate_clip(values: np.ndarray, audio: np.ndarray, config: GateConfig, model: SileroVad) -> np.ndarray:
    """A whole clip's frames [T, >=52] gated from its 16 kHz audio (what a stream of it would get)."""
    gate = VoiceGate(config, model)
    audio = np.asarray(audio, np.float32).reshape(-1)
    gate.listen(audio, 0, audio.size, ended=True)
    return gate.apply(np.asarray(values, np.float32), 0)


def gate_if_available(enabled: bool = True) -> GateConfig | None:
    """The default gate for ``serve`` and ``bake`` (on unless ``enabled`` is False); when Silero VAD is not
    installed the gate is off, with a warning that says how to install it (the runtime still serves)."""
    if not enabled:
        return None
    try:
        vad_model_path()
    except VadUnavailableError as e:
        log.warning("voice gate off: %s", e)
        return None
    return GateConfig()
