"""One stream's audio on its way into the engine: decode, place on the stream's clock, sanitise, resample.

Every source (microphone, file, SDK push) delivers audio in its own format; the engine takes
16 kHz mono float32. ``InputStream`` is that conversion for one stream, stateful so chunked
audio resamples seamlessly, and the only place audio is repaired:

    pcm (bytes, or an array [n] / [n, channels] at the stream's rate)
      -> clock: ``at_sample`` places it on the stream's own input clock; a gap becomes silence,
         a repeat of audio already received is dropped
      -> sanitise once: NaN/Inf -> 0 and values outside [-1, 1] clipped, counted per channel value
      -> mean of the channels
      -> streaming resampler (soxr) to 16 kHz

A gap is never materialised at the input rate (10 s of 192 kHz x 8 channels would be 123 MB of
float64 silence): the resampler's tail is flushed and the silence is written at 16 kHz, where it
is what the engine needs anyway.

Each chunk comes out as an ``InputChunk`` that also says where its input ends on the 16 kHz clock
(``clock_end``): the resampler holds a few ms back, so the samples handed on lag the audio that
arrived, and latency is measured from when audio arrived, not from when the resampler let it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from ksdiff_runtime.inputs.guards import sanitize
from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_sdk import protocol

# soxr's "LQ" filter holds back ~12 ms of audio at 44.1/48 kHz ("HQ": ~22 ms); its passband
# still covers speech up to 7 kHz, all a 16 kHz model hears. Latency matters more here.
RESAMPLER_QUALITY = "LQ"
# Longest gap on a stream's clock that is filled with silence; a longer one is refused.
MAX_GAP_S = protocol.MAX_GAP_S


class BadAudioError(ValueError):
    """Audio or audio parameters a stream cannot take (the protocol's ``bad_audio``)."""


@dataclass(frozen=True)
class AudioFormat:
    """What a source delivers: its rate, channel count and sample encoding."""

    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    encoding: str = "f32le"  # protocol.AUDIO_FORMATS: f32le or s16le

    def __post_init__(self) -> None:
        lo, hi = protocol.MIN_SAMPLE_RATE, protocol.MAX_SAMPLE_RATE
        if not lo <= self.sample_rate <= hi:
            raise BadAudioError(f"sample rate {self.sample_rate} Hz out of range {lo}..{hi}")
        if not 1 <= self.channels <= protocol.MAX_CHANNELS:
            raise BadAudioError(f"{self.channels} channels out of range 1..{protocol.MAX_CHANNELS}")
        if self.encoding not in protocol.AUDIO_FORMATS:
            raise BadAudioError(f"audio format {self.encoding!r} not one of {', '.join(protocol.AUDIO_FORMATS)}")

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (one sample of every channel)."""
        return self.channels * protocol.AUDIO_FORMATS[self.encoding]

    def decode(self, pcm: bytes) -> np.ndarray:
        """Interleaved little-endian bytes -> [n, channels] (float32 or int16, as sent)."""
        if len(pcm) % self.frame_bytes:
            raise BadAudioError(f"{len(pcm)} bytes of pcm is not a whole number of {self.channels}-channel "
                                f"{self.encoding} sample frames ({self.frame_bytes} bytes each)")
        dtype = "<f4" if self.encoding == "f32le" else "<i2"
        return np.frombuffer(pcm, dtype=dtype).reshape(-1, self.channels)


@dataclass(frozen=True)
class InputChunk:
    """16 kHz mono audio handed on to the engine."""

    audio: np.ndarray  # float32 [n], finite, the samples the resampler released
    clock_end: int  # where the input received so far ends on the 16 kHz clock (>= the samples released)


class InputStream:
    """One stream's input: chunks of any size at the stream's format in, 16 kHz mono out."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.received = 0  # sample frames placed on the stream's clock (input rate), gaps included
        self.gap_samples = 0  # silence inserted for gaps (input rate)
        self.overlap_samples = 0  # repeated samples dropped (input rate)
        self.sanitized = 0  # NaN/Inf values zeroed plus values clipped (per channel value)
        self.out_samples = 0  # 16 kHz samples handed on
        self._resampler = self._new_resampler()

    def _new_resampler(self) -> soxr.ResampleStream | None:
        if self.format.sample_rate == SAMPLE_RATE:
            return None
        return soxr.ResampleStream(self.format.sample_rate, SAMPLE_RATE, 1, dtype="float32",
                                   quality=RESAMPLER_QUALITY)

    def clock_16k(self, input_samples: int) -> int:
        """Position on the 16 kHz clock of an input-rate sample count."""
        return input_samples * SAMPLE_RATE // self.format.sample_rate

    def seconds_after(self, pcm_bytes: int, at_sample: int | None) -> float:
        """Where the stream's clock would end (s) after a chunk of ``pcm_bytes`` at ``at_sample``, without
        taking it: what a caller checks against a limit before decoding anything."""
        start = self.received if at_sample is None else max(at_sample, 0)
        end = max(self.received, start + pcm_bytes // self.format.frame_bytes)
        return end / self.format.sample_rate

    def check_gap(self, at_sample: int | None) -> None:
        """Raise BadAudioError for a chunk placed more than MAX_GAP_S after the audio received (nothing taken)."""
        gap = 0 if at_sample is None else at_sample - self.received
        if gap > MAX_GAP_S * self.format.sample_rate:
            raise BadAudioError(f"{gap / self.format.sample_rate:.1f} s of audio missing before sample "
                                f"{at_sample} (at most {MAX_GAP_S} s is filled with silence); chunk dropped")

    def feed(self, pcm: bytes | np.ndarray, at_sample: int | None = None) -> InputChunk:
        """Place a chunk on the stream's clock and convert it.

        ``at_sample``: where the chunk's first sample frame goes (input rate; None: right after the
        previous chunk). Raises BadAudioError for pcm of the wrong shape or a gap over MAX_GAP_S;
        the stream's state is unchanged then, so the stream can go on."""
        x = self.format.decode(pcm) if isinstance(pcm, bytes | bytearray | memoryview) else np.asarray(pcm)
        if x.ndim == 1 and self.format.channels == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.format.channels:
            raise BadAudioError(f"audio of shape {x.shape} does not have {self.format.channels} channel(s)")
        silence = np.zeros(0, np.float32)
        self.check_gap(at_sample)
        if at_sample is not None:
            gap = at_sample - self.received
            if gap > 0:
                silence = self._gap(gap)
            elif gap < 0:
                drop = min(-gap, len(x))
                self.overlap_samples += drop
                x = x[drop:]
        self.received += len(x)
        mono, report = sanitize(x, self.format.sample_rate)
        self.sanitized += report.n_nonfinite + report.n_clipped
        out = self._resample(mono, last=False)
        if silence.size:
            out = np.concatenate([silence, out])
        return InputChunk(out, self.clock_16k(self.received))

    def flush(self) -> InputChunk:
        """The resampler's held-back tail, at the end of the stream."""
        end = self.clock_16k(self.received)
        return InputChunk(self._tail(end), end)

    def _tail(self, end: int) -> np.ndarray:
        """The resampler's held-back samples, cut or padded with silence so that the output ends at ``end`` on the
        16 kHz clock: soxr's last call rounds the output's length, and for a third of the lengths at 48 kHz (half
        at 44.1 kHz) gave one sample past floor(received x 16000 / rate), the stream's count (SPEC 4.2, a bake's): a
        stream of 49,601 samples at 48 kHz got 32 frames where its bake has 31."""
        before = self.out_samples
        tail = self._resample(np.zeros(0, np.float32), last=True)
        keep = min(tail.size, max(0, end - before))
        pad = max(0, end - before - keep)
        self.out_samples = before + keep + pad
        return np.concatenate([tail[:keep], np.zeros(pad, np.float32)])

    def _gap(self, gap: int) -> np.ndarray:
        """``gap`` input samples of silence, as 16 kHz samples: the resampler's tail, then zeros up to
        where the gap ends on the 16 kHz clock; a fresh resampler continues after it."""
        tail = self._tail(self.clock_16k(self.received))
        self.gap_samples += gap
        self.received += gap
        zeros = max(0, self.clock_16k(self.received) - self.out_samples)
        self.out_samples += zeros
        self._resampler = self._new_resampler()
        return np.concatenate([tail, np.zeros(zeros, np.float32)])

    def _resample(self, mono: np.ndarray, last: bool) -> np.ndarray:
        out = mono if self._resampler is None else self._resampler.resample_chunk(mono, last=last)
        out = np.asarray(out, dtype=np.float32)
        self.out_samples += out.size
        return out
