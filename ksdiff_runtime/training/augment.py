"""Make clean synthetic speech sound like a real microphone, and lay out sentences with pauses.

Two jobs, both deterministic from an ``np.random.Generator``:

- ``assemble``: concatenate utterances with leading, between-sentence and trailing silences
  (0.1-1.5 s) and shift each phoneme's start accordingly, so the teacher sees the same timeline
  the audio has.
- ``mic_augment``: noise (white / pink / brown / babble) at 5-40 dB SNR or none, synthetic room
  reverb (exponentially decaying noise impulse response, RT60 0.1-0.8 s), EQ (telephone band or
  random low/high shelves), gain (-20..+6 dB) with occasional soft clipping. It never moves
  audio in time (reverb adds a tail but keeps the direct path at lag 0), so the phoneme timings
  of the clean audio stay valid for the augmented one.

Pitch and tempo variation are *not* done here: the corpus varies espeak's pitch and rate per
clip (about +-1.5 semitones and +-8 %), which changes the audio and the phoneme timings
together and leaves no timing to correct afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt

from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_runtime.training.speech import Utterance


def assemble(
    parts: Sequence[Utterance],
    rng: np.random.Generator,
    min_gap_s: float = 0.1,
    max_gap_s: float = 1.5,
    sample_rate: int = SAMPLE_RATE,
) -> Utterance:
    """Utterances joined by random silences (also before the first and after the last)."""
    chunks: list[np.ndarray] = []
    phonemes: list[str] = []
    starts: list[np.ndarray] = []
    durs: list[np.ndarray] = []
    offset = 0  # samples so far
    for k, part in enumerate(parts):
        # Leading silence is usually short (a clip starts near its speech); gaps can be long.
        hi = max(min_gap_s, min(0.6, max_gap_s)) if k == 0 else max_gap_s
        gap = int(rng.uniform(min_gap_s, hi) * sample_rate)
        chunks.append(np.zeros(gap, dtype=np.float32))
        offset += gap
        chunks.append(part.audio.astype(np.float32))
        phonemes.extend(part.phonemes)
        starts.append(np.asarray(part.start, dtype=np.float64) + offset / sample_rate)
        durs.append(np.asarray(part.duration, dtype=np.float64))
        offset += len(part.audio)
    tail = int(rng.uniform(min_gap_s, max_gap_s) * sample_rate)
    chunks.append(np.zeros(tail, dtype=np.float32))
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    start = np.concatenate(starts) if starts else np.zeros(0)
    dur = np.concatenate(durs) if durs else np.zeros(0)
    return Utterance(audio, phonemes, start.astype(np.float32), dur.astype(np.float32))


def colored_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """Unit-RMS white, pink (1/f power) or brown (1/f^2 power) noise, shaped in the frequency domain."""
    white = rng.standard_normal(n)
    if kind == "white" or n < 4:
        x = white
    else:
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f) if kind == "pink" else f
        x = np.fft.irfft(spec, n)
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def _babble(rng: np.random.Generator, n: int, speech_pool: Sequence[np.ndarray]) -> np.ndarray:
    """Several random speech snippets overlaid: a crowd-like murmur."""
    out = np.zeros(n)
    for _ in range(int(rng.integers(3, 7))):
        src = speech_pool[int(rng.integers(len(speech_pool)))]
        if len(src) == 0:
            continue
        reps = int(np.ceil((n + len(src)) / len(src)))
        tiled = np.tile(src, reps)
        off = int(rng.integers(len(src)))
        out += tiled[off : off + n]
    return out / max(float(np.sqrt(np.mean(out**2))), 1e-12)


def room_impulse_response(
    rng: np.random.Generator, rt60_s: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A synthetic room: direct path at lag 0, then exponentially decaying noise (60 dB in rt60_s)."""
    n = max(int(rt60_s * sample_rate), 2)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s)  # ln(1000) = 6.9: -60 dB at rt60
    # Early reflections arrive a few ms after the direct sound; nothing before it.
    tail[: int(0.003 * sample_rate)] = 0.0
    ir = tail * rng.uniform(0.2, 0.6) / max(float(np.sqrt(np.sum(tail**2))), 1e-12)
    ir[0] = 1.0
    return ir


def _shelf(x: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Random low and high shelves: a cheap or boomy microphone's tilt."""
    low_cut = rng.uniform(80, 400)
    high_cut = rng.uniform(2500, 7000)
    lo = sosfilt(butter(2, low_cut, "lowpass", fs=sample_rate, output="sos"), x)
    hi = sosfilt(butter(2, high_cut, "highpass", fs=sample_rate, output="sos"), x)
    g_lo = 10 ** (rng.uniform(-9, 6) / 20) - 1.0
    g_hi = 10 ** (rng.uniform(-12, 6) / 20) - 1.0
    return x + g_lo * lo + g_hi * hi


def mic_augment(
    audio: np.ndarray,
    rng: np.random.Generator,
    speech_pool: Sequence[np.ndarray] = (),
    sample_rate: int = SAMPLE_RATE,
    strength: float = 1.0,
) -> np.ndarray:
    """The clean clip as a microphone in a room would hear it; same length, float32 in [-1, 1].

    ``strength`` in [0, 1] scales how harsh the draw may be (1 = full training range, ~0.3 = mild).
    """
    x = np.asarray(audio, dtype=np.float64).copy()
    n = len(x)
    if n == 0:
        return x.astype(np.float32)
    speech_rms = float(np.sqrt(np.mean(x[np.abs(x) > 1e-4] ** 2))) if np.any(np.abs(x) > 1e-4) else 0.1

    if rng.random() < 0.6 * strength:  # reverb
        rt60 = rng.uniform(0.1, 0.1 + 0.7 * strength)
        x = fftconvolve(x, room_impulse_response(rng, rt60, sample_rate))[:n]

    eq = rng.random()
    if eq < 0.15 * strength:  # telephone band
        x = sosfilt(butter(4, (300, 3400), "bandpass", fs=sample_rate, output="sos"), x)
    elif eq < 0.65:
        x = _shelf(x, rng, sample_rate)

    if rng.random() < 0.85:  # noise; the rest stay clean
        kind = rng.choice(
            ["white", "pink", "brown", "babble"] if len(speech_pool) else ["white", "pink", "brown"]
        )
        noise = _babble(rng, n, speech_pool) if kind == "babble" else colored_noise(rng, n, str(kind))
        snr_db = rng.uniform(40 - 35 * strength, 40)
        x = x + noise * speech_rms * 10 ** (-snr_db / 20)

    peak = float(np.max(np.abs(x))) or 1.0
    x = x / peak * 10 ** (rng.uniform(-20, 0) / 20)  # level relative to full scale
    if rng.random() < 0.1 * strength:  # an overdriven input: gain up, then soft clip
        x = np.tanh(x * 10 ** (rng.uniform(3, 6) / 20))
    return np.clip(x, -1.0, 1.0).astype(np.float32)
