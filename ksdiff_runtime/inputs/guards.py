"""Audio input guards: whatever arrives (file, mic, SDK push) leaves here as finite float32 mono.

Bad input must never take down a stream, so the guards repair what they can (NaN/Inf -> 0,
clipping to [-1, 1], downmix, resampling) and *report* what they repaired (``AudioReport``);
they raise ``AudioInputError`` only for input that cannot be audio at all (a missing or corrupt
file, a non-numeric array), with a message naming the file or the problem.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime.motion import SAMPLE_RATE

# Below this RMS (-60 dBFS) or this peak (-50 dBFS) a clip carries no usable speech.
SILENCE_RMS = 1e-3
SILENCE_PEAK = 3e-3
# More channels than this in a [S, C] array almost certainly means a channels-first [C, S] array.
MAX_CHANNELS = 32
# Frames read at a time from a file in a format libsndfile cannot seek in (it cannot read "the rest" at once).
UNSEEKABLE_READ_FRAMES = 1 << 16


class AudioInputError(ValueError):
    """Input that cannot be turned into audio: missing/corrupt/unsupported file, bad array."""


@dataclass(frozen=True)
class AudioReport:
    """What ``sanitize`` found and repaired.

    Counts refer to the array handed in, one per channel value, before the downmix:
    ``n_nonfinite`` counts NaN/Inf values, ``n_clipped`` values outside [-1, 1].
    """

    n_samples: int
    n_nonfinite: int
    n_clipped: int
    peak: float
    rms: float
    is_silent: bool
    sample_rate: int = SAMPLE_RATE


def _to_float(audio: np.ndarray) -> np.ndarray:
    """Integer PCM -> float in [-1, 1]; float stays as is (as float64 so counting is exact)."""
    if audio.dtype == np.bool_ or not np.issubdtype(audio.dtype, np.number):
        raise AudioInputError(f"audio must be a numeric array, got dtype {audio.dtype}")
    if np.issubdtype(audio.dtype, np.complexfloating):
        raise AudioInputError("audio must be real-valued, got a complex array")
    if np.issubdtype(audio.dtype, np.unsignedinteger):
        # Unsigned PCM (8-bit WAV) is offset binary: the midpoint is silence.
        info = np.iinfo(audio.dtype)
        mid = (int(info.max) + 1) / 2.0
        return (audio.astype(np.float64) - mid) / mid
    if np.issubdtype(audio.dtype, np.integer):
        # Divide by 2^(bits-1) so int16 -32768 maps to exactly -1.
        return audio.astype(np.float64) / float(-int(np.iinfo(audio.dtype).min))
    return audio.astype(np.float64)


def _channel_mean(x: np.ndarray) -> np.ndarray:
    """The mean of [S, C]'s channels: numpy's ``mean(axis=1)``, whose reduction over a short inner axis took 2.1 of the
    3.9 ms of sanitising 1 MiB of stereo (every pushed audio message), summed a channel at a time instead."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    total = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        total += x[:, c]
    total /= x.shape[1]
    return total


def sanitize(audio: np.ndarray, sample_rate: int = SAMPLE_RATE,
             channels_known: bool = False) -> tuple[np.ndarray, AudioReport]:
    """Finite float32 mono in [-1, 1] from int16/int32/float audio shaped [S] or [S, C].

    ``sample_rate`` is not used for the samples; it is recorded in the report so the counts
    can be read against the right clock. Empty audio gives an empty array and a silent report.
    An array from a caller with more than MAX_CHANNELS columns is taken to be channels-first and
    refused; ``channels_known`` (a file's samples, [S, C] as the file says) takes any count.
    """
    arr = np.asarray(audio)
    if arr.ndim == 0:
        raise AudioInputError("audio must be an array of samples, got a scalar")
    if arr.ndim > 2:
        raise AudioInputError(f"audio must be [samples] or [samples, channels], got shape {arr.shape}")
    if arr.ndim == 2 and arr.shape[1] > MAX_CHANNELS and not channels_known:
        raise AudioInputError(
            f"audio of shape {arr.shape} has {arr.shape[1]} channels; expected [samples, channels] "
            "(is it channels-first? transpose it)"
        )
    x = _to_float(arr)

    # Zero the non-finite values *before* the downmix so one bad channel value does not
    # poison the other channels of that sample.
    finite = np.isfinite(x)
    n_nonfinite = int(x.size - np.count_nonzero(finite))
    if n_nonfinite:
        x = np.where(finite, x, 0.0)
    # Clip (and count) every channel value before the downmix too: a 3.0 in one of 8 channels is
    # an overload that a mean would hide. (Counted only when the extremes say there is one: the
    # count's temporary is most of the cost of audio that needs none.)
    n_clipped = 0
    if x.size and (x.max() > 1.0 or x.min() < -1.0):
        n_clipped = int(np.count_nonzero(np.abs(x) > 1.0))
        x = np.clip(x, -1.0, 1.0)
    if x.ndim == 2:
        x = _channel_mean(x)

    out = x.astype(np.float32)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    rms = float(np.sqrt(np.mean(np.square(x)))) if out.size else 0.0
    report = AudioReport(
        n_samples=int(out.size),
        n_nonfinite=n_nonfinite,
        n_clipped=n_clipped,
        peak=peak,
        rms=rms,
        is_silent=bool(rms < SILENCE_RMS or peak < SILENCE_PEAK),
        sample_rate=int(sample_rate),
    )
    return out, report


def to_model_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono audio at ``sample_rate`` -> float32 at ``motion.SAMPLE_RATE`` (polyphase resampling).

    The output has floor(len * SAMPLE_RATE / sample_rate) samples, the count of the stream's 16 kHz clock
    (protocol/SPEC.md 4.2), so a bake and a stream of the same audio have as many frames. The
    anti-aliasing filter can overshoot slightly, so the result is clipped back to [-1, 1].
    """
    rate = int(sample_rate)
    if rate <= 0 or rate != sample_rate:
        raise AudioInputError(f"sample rate must be a positive integer, got {sample_rate!r}")
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise AudioInputError(f"to_model_rate expects mono [samples] audio, got shape {x.shape}")
    if rate == SAMPLE_RATE or x.size == 0:
        return x.copy()
    from scipy.signal import resample_poly  # here: scipy.signal is 1.1 s of import `ksdiff-runtime devices` needs not

    g = math.gcd(SAMPLE_RATE, rate)
    y = resample_poly(x, SAMPLE_RATE // g, rate // g)[: x.size * SAMPLE_RATE // rate]  # it gives the ceil
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def read_audio_file(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file as it is stored -> (float32 [samples, channels], sample rate).

    No repair, downmix or resampling: ``load_audio`` (whole clips for the model) and the
    runtime's file source (``open_audio_file``, blocks at the file's own rate) both start here, so they accept and
    refuse the same files with the same messages. Raises ``AudioInputError`` naming the file when
    it is missing, not a file, in a format libsndfile does not read, or corrupt.
    """
    with open_audio_file(path) as f:
        return read_blocks(f, path), int(f.samplerate)


def open_audio_file(path: str | Path) -> Any:
    """The file opened for reading (a ``soundfile.SoundFile``: rate, channels, frames, blocks), nothing decoded
    yet; ``AudioInputError`` as ``read_audio_file``."""
    import soundfile as sf  # local: the engine and SDK import guards without needing libsndfile

    p = Path(path)
    if not p.exists():
        raise AudioInputError(f"audio file not found: {p}")
    if not p.is_file():
        raise AudioInputError(f"audio path is not a file: {p}")
    try:
        return sf.SoundFile(libsndfile_name(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        try:  # libsndfile says only "System error" when the system refused it (no permission to read it, ...)
            with open(p, "rb"):
                pass
        except OSError as os_exc:
            raise AudioInputError(f"cannot open audio file {p}: {os_exc.strerror or os_exc}") from None
        raise _unreadable(p, exc) from exc


def libsndfile_name(p: Path) -> str | bytes:
    """The name soundfile opens ``p`` by. A POSIX file name is bytes, not always UTF-8 (a Latin-1 ``café.wav``
    from a Windows zip is ``b'caf\\xe9.wav'``): Python holds the bytes it cannot decode as surrogate escapes, which
    soundfile cannot encode back (it would report a good file as unreadable), so such a name goes as its bytes."""
    name = str(p)
    if sys.platform == "win32":  # names are UTF-16 there; soundfile opens them as str
        return name
    try:
        name.encode(sys.getfilesystemencoding())
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


def read_blocks(f: Any, path: str | Path, frames: int = -1) -> np.ndarray:
    """float32 [n, channels] of up to ``frames`` more of an open file (-1: the rest); ``AudioInputError`` naming
    the file when its content cannot be decoded."""
    import soundfile as sf

    try:
        if frames < 0 and not f.seekable():
            # a format libsndfile cannot seek in (GSM 6.10, G.72x ADPCM in WAV) reads only a given count at a time
            parts = []
            while len(part := f.read(UNSEEKABLE_READ_FRAMES, dtype="float32", always_2d=True)):
                parts.append(part)
            return np.concatenate(parts) if parts else np.zeros((0, f.channels), np.float32)
        return f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _unreadable(Path(path), exc) from exc


def _unreadable(p: Path, exc: Exception) -> AudioInputError:
    import soundfile as sf

    known = {ext.lower() for ext in sf.available_formats()}
    ext = p.suffix.lstrip(".").lower()
    if ext and ext not in known and ext not in ("oga", "opus"):
        return AudioInputError(f"unsupported audio format {p.suffix!r} for {p} (readable: {', '.join(sorted(known))})")
    return AudioInputError(f"cannot read audio file {p} (corrupt or unsupported content): {exc}")


def load_audio(path: str | Path) -> tuple[np.ndarray, AudioReport]:
    """Read an audio file -> (float32 mono at ``motion.SAMPLE_RATE``, report of the file's samples).

    Raises ``AudioInputError`` naming the file when it is missing, not a file, in a format
    libsndfile does not read, or corrupt (see ``read_audio_file``).
    """
    data, rate = read_audio_file(path)
    mono, report = sanitize(data, sample_rate=rate, channels_known=True)
    return to_model_rate(mono, rate), report
