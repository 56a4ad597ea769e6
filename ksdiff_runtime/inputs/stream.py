"""One stream's audio on its way into the engine: decode, place on the stream's clock, downmix, resample.

Every source (microphone, file, SDK push) delivers audio in its own format; the engine takes
16 kHz mono float32. ``InputStream`` is that conversion for one stream, stateful so chunked
audio resamples seamlessly:

    pcm (bytes or [n, channels] at the stream's rate)
      -> at_sample: a gap becomes silence, a repeat is dropped (on the stream's own input clock)
      -> sanitise: NaN/Inf -> 0, clip to [-1, 1] (counted), mean of the channels
      -> streaming resampler (soxr) to 16 kHz
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from ksdiff_runtime.engine.stream import MAX_GAP_S
from ksdiff_runtime.inputs.guards import sanitize
from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_sdk import protocol

# soxr's "LQ" filter holds back ~12 ms of audio at 44.1/48 kHz ("HQ": ~22 ms); its passband
# still covers speech up to 7 kHz, all a 16 kHz model hears. Latency matters more here.
RESAMPLER_QUALITY = "LQ"


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


class InputStream:
    """One stream's input: chunks of any size at the stream's format in, 16 kHz mono out."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.received = 0  # sample frames placed on the stream's clock (input rate)
        self.gap_samples = 0  # silence inserted for gaps (input rate)
        self.overlap_samples = 0  # repeated samples dropped (input rate)
        self.sanitized = 0  # NaN/Inf values zeroed plus samples clipped
        self.out_samples = 0  # 16 kHz samples handed on
        self._resampler = None
        if fmt.sample_rate != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(fmt.sample_rate, SAMPLE_RATE, 1, dtype="float32",
                                                  quality=RESAMPLER_QUALITY)

    def feed(self, pcm: bytes | np.ndarray, at_sample: int | None = None) -> np.ndarray:
        """Place a chunk on the stream's clock and convert it; returns 16 kHz mono float32.

        ``at_sample``: where the chunk's first sample frame goes (input rate; None: right after
        the previous chunk). Raises BadAudioError for pcm of the wrong shape or a gap over MAX_GAP_S;
        the stream's state is unchanged then, so the stream can go on."""
        x = self.format.decode(pcm) if isinstance(pcm, bytes | bytearray | memoryview) else np.asarray(pcm)
        if x.ndim == 1 and self.format.channels == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.format.channels:
            raise BadAudioError(f"audio of shape {x.shape} does not have {self.format.channels} channel(s)")
        if at_sample is not None:
            gap = at_sample - self.received
            if gap > MAX_GAP_S * self.format.sample_rate:
                raise BadAudioError(f"{gap / self.format.sample_rate:.1f} s of audio missing before sample {at_sample} "
                               f"(at most {MAX_GAP_S} s is filled with silence); chunk dropped")
            if gap > 0:
                x = np.concatenate([np.zeros((gap, x.shape[1]), x.dtype), x])
                self.gap_samples += gap
            elif gap < 0:
                drop = min(-gap, len(x))
                self.overlap_samples += drop
                x = x[drop:]
        self.received += len(x)
        mono, report = sanitize(x, self.format.sample_rate)
        self.sanitized += report.n_nonfinite + report.n_clipped
        return self._resample(mono, last=False)

    def flush(self) -> np.ndarray:
        """The resampler's held-back tail, at the end of the stream."""
        return self._resample(np.zeros(0, np.float32), last=True)

    def _resample(self, mono: np.ndarray, last: bool) -> np.ndarray:
        out = mono if self._resampler is None else self._resampler.resample_chunk(mono, last=last)
        out = np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)
        self.out_samples += out.size
        return out
