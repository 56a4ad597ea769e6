"""Sounds that are not a voice, for judging (and later training) what the face does when nobody speaks.

A VTuber's microphone hears music, a fan, wind, rain, keys, breaths and game sounds; an avatar
that mouths along to them is the field's most common complaint about lip-sync tools. This module
makes a battery of such sounds (16 kHz mono float32), reproducibly from a seed:

- procedural: white, pink and brown noise, fan hum, wind, rain, keyboard clicks, breaths, game-like
  effects and chords (``procedural``);
- recorded music: Debian's ``asterisk-moh-opsound-wav`` music-on-hold tracks (Macroform, Manolo Camp,
  Reno Project; CC BY-SA 3.0 by their authors' permission, /usr/share/doc/asterisk-moh-opsound-wav/
  copyright), read from /usr/share/asterisk/moh when installed (``recorded_music``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.signal

from ksdiff_runtime.motion import SAMPLE_RATE

from .augment import colored_noise

MUSIC_ON_HOLD = Path("/usr/share/asterisk/moh")

PROCEDURAL = ("white noise", "pink noise", "brown noise", "fan hum", "wind", "rain", "keyboard", "breaths",
              "game effects", "chords")


def at_dbfs(x: np.ndarray, dbfs: float) -> np.ndarray:
    """``x`` scaled to an RMS level of ``dbfs`` dB relative to full scale."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1.0
    return (x * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _bursts(rng: np.random.Generator, n: int, rate_hz: float, length_s: tuple[float, float],
            make: Callable[[np.random.Generator, int], np.ndarray]) -> np.ndarray:
    """Events at random times (``rate_hz`` on average), each ``make(rng, samples)`` long."""
    out = np.zeros(n, np.float64)
    t = 0.0
    while True:
        t += rng.exponential(1.0 / rate_hz)
        start = int(t * SAMPLE_RATE)
        if start >= n:
            return out
        k = min(n - start, int(rng.uniform(*length_s) * SAMPLE_RATE))
        out[start : start + k] += make(rng, k)


def procedural(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One of ``PROCEDURAL`` at -20 dBFS (the level of a loud room at a streamer's microphone)."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if kind in ("white noise", "pink noise", "brown noise"):
        x = colored_noise(rng, n, kind.split()[0])
    elif kind == "fan hum":  # mains hum with harmonics over a low broadband rush
        hum = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 6))
        x = hum + 0.5 * scipy.signal.sosfilt(scipy.signal.butter(2, 800, fs=SAMPLE_RATE, output="sos"),
                                             colored_noise(rng, n, "white"))
    elif kind == "wind":  # low-passed noise in slow gusts
        gusts = 0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6)) * np.sin(2 * np.pi * 0.11 * t)
        x = gusts * scipy.signal.sosfilt(scipy.signal.butter(2, 500, fs=SAMPLE_RATE, output="sos"),
                                         colored_noise(rng, n, "pink"))
    elif kind == "rain":  # dense tiny drops over a soft hiss
        drops = _bursts(rng, n, 300.0, (0.002, 0.01),
                        lambda r, k: r.normal(0, 1, k) * np.exp(-np.arange(k) / (0.002 * SAMPLE_RATE)))
        x = drops + 0.2 * colored_noise(rng, n, "pink")
    elif kind == "keyboard":  # key presses: sharp decaying clicks, 6 a second
        x = _bursts(rng, n, 6.0, (0.02, 0.05),
                    lambda r, k: r.normal(0, 1, k) * np.exp(-np.arange(k) / (0.004 * SAMPLE_RATE)))
    elif kind == "breaths":  # band-passed noise, a breath every 3 s or so
        band = scipy.signal.butter(2, (300, 2500), btype="band", fs=SAMPLE_RATE, output="sos")
        x = _bursts(rng, n, 0.35, (0.6, 1.2),
                    lambda r, k: scipy.signal.sosfilt(band, r.normal(0, 1, k)) * np.hanning(k))
    elif kind == "game effects":  # laser sweeps and explosions
        def effect(r: np.random.Generator, k: int) -> np.ndarray:
            u = np.arange(k) / SAMPLE_RATE
            if r.random() < 0.5:
                f = np.linspace(r.uniform(1500, 3000), r.uniform(200, 500), k)
                return np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.exp(-u / 0.15)
            return colored_noise(r, k, "brown") * np.exp(-u / 0.3)
        x = _bursts(rng, n, 1.5, (0.2, 0.6), effect)
    elif kind == "chords":  # triads of harmonic tones, a new chord every second
        x = np.zeros(n)
        for c0 in range(0, n, SAMPLE_RATE):
            c1 = min(n, c0 + SAMPLE_RATE)
            root = 110 * 2 ** (rng.integers(0, 12) / 12)
            u = t[c0:c1] - t[c0]
            env = np.minimum(1, u / 0.02) * np.exp(-u / 0.8)
            for ratio in (1.0, 1.26, 1.5):
                x[c0:c1] += env * sum(np.sin(2 * np.pi * root * ratio * h * u) / h for h in (1, 2, 3))
    else:
        raise ValueError(f"unknown sound {kind!r}; known: {', '.join(PROCEDURAL)}")
    return at_dbfs(np.asarray(x), -20.0)


def recorded_music(seconds: float) -> dict[str, np.ndarray]:
    """The first ``seconds`` of each installed music-on-hold track at 16 kHz (empty when not installed)."""
    from ksdiff_runtime.inputs.guards import load_audio

    if not MUSIC_ON_HOLD.is_dir():
        return {}
    tracks = {}
    for path in sorted(MUSIC_ON_HOLD.glob("*.wav")):
        audio, _ = load_audio(path)
        tracks[path.stem] = audio[: int(seconds * SAMPLE_RATE)].astype(np.float32)
    return tracks
