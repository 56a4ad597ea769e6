"""Frame-level prosody (F0 and energy) on the motion clock: the expression path's 2-channel input.

Frame ``i`` is centred on the audio instant ``i / fps`` (the motion.py convention), so a prosody
row lines up with the animation frame it conditions. F0 comes from YIN (fast, deterministic),
gated by energy and by the normalised autocorrelation at the YIN period, because YIN alone
returns a pitch for every frame, noise and silence included.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from ksdiff_runtime.motion import FPS, SAMPLE_RATE, num_frames

FMIN_HZ = 60.0
FMAX_HZ = 500.0
ENERGY_FLOOR_DB = -100.0
# Voicing gate: frames quieter than this (absolute, or relative to the clip's loudest frame)
# are unvoiced, and a voiced frame must repeat itself at the YIN period this well.
VOICED_MIN_DB = -50.0
VOICED_REL_DB = -35.0
VOICED_MIN_PERIODICITY = 0.5

_YIN_FRAME = 1024  # 64 ms at 16 kHz: two periods of FMIN_HZ fit, as YIN needs
_YIN_HOP = 160  # 10 ms analysis step, sampled at the motion frame times afterwards
_RMS_WINDOW = 512  # 32 ms energy window centred on each motion frame


def _zero_pad(x: np.ndarray, before: int, after: int, dtype: np.dtype | type | None = None) -> np.ndarray:
    """``np.pad(x, (before, after))`` of a 1-D array (zeros; as ``dtype``), without np.pad's per-call cost (a
    live round pads a short segment of every stream three times)."""
    out = np.zeros(before + x.size + after, dtype or x.dtype)
    out[before : before + x.size] = x
    return out


def _frame_rms_db(audio: np.ndarray, centres: np.ndarray, window: int) -> np.ndarray:
    """RMS level in dB of a ``window``-sample window centred on each sample index in ``centres``."""
    half = window // 2
    padded = _zero_pad(audio, half, half)
    idx = centres[:, None] + np.arange(window)[None, :]
    idx = np.clip(idx, 0, len(padded) - 1)
    rms = np.sqrt(np.mean(padded[idx].astype(np.float64) ** 2, axis=1))
    db = 20.0 * np.log10(np.maximum(rms, 1e-5))
    return np.maximum(db, ENERGY_FLOOR_DB)


def _periodicity(audio: np.ndarray, centres: np.ndarray, f0: np.ndarray, sample_rate: int) -> np.ndarray:
    """Normalised autocorrelation at lag 1/f0 of a YIN-sized window around each centre."""
    half = _YIN_FRAME // 2
    padded = _zero_pad(audio, half, half, np.float64)
    out = np.zeros(len(centres))
    for k, (c, f) in enumerate(zip(centres, f0, strict=True)):
        if not np.isfinite(f) or f <= 0:
            continue
        lag = round(sample_rate / f)
        x = padded[c : c + _YIN_FRAME]
        if lag <= 0 or lag >= len(x):
            continue
        a, b = x[:-lag], x[lag:]
        denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
        if denom > 1e-12:
            out[k] = np.dot(a, b) / denom
    return out


def yin(y: np.ndarray, *, fmin: float, fmax: float, sr: int, frame_length: int, hop_length: int,
        trough_threshold: float = 0.1, at: np.ndarray | None = None) -> np.ndarray:
    """F0 (Hz) of each frame by YIN (de Cheveigne and Kawahara 2002), computed exactly as ``librosa.yin``
    (0.11, ``center=True``, ``pad_mode="constant"``) computes it, in numpy and scipy.fft alone.
    ``at``: indices of the analysis frames wanted (default: all of them); the others are not computed.

    librosa's own routes its local-minimum and parabolic-interpolation steps through numba, which
    compiles them on first use: 15-25 s on a 2-core CPU, paid by every new install on its first stream
    or bake. tests/test_teacher.py checks this function against ``librosa.yin``."""
    return yin_frames(_analysis_frames(y, frame_length, hop_length, at), fmin=fmin, fmax=fmax, sr=sr,
                      trough_threshold=trough_threshold)


def _analysis_frames(y: np.ndarray, frame_length: int, hop_length: int, at: np.ndarray | None) -> np.ndarray:
    """YIN's analysis frames [F, frame_length] of y (centred, zero-padded), or only those at ``at``."""
    y = _zero_pad(np.asarray(y), frame_length // 2, frame_length // 2)
    frames = np.lib.stride_tricks.sliding_window_view(y, frame_length)[::hop_length]  # [F, frame_length]
    return frames if at is None else frames[at]


def yin_frames(frames: np.ndarray, *, fmin: float, fmax: float, sr: int, trough_threshold: float = 0.1) -> np.ndarray:
    """``yin`` on analysis frames [F, frame_length] (each row on its own: rows of several clips may share
    a call)."""
    frame_length = frames.shape[-1]
    min_period = int(np.floor(sr / fmax))
    max_period = min(int(np.ceil(sr / fmin)), frame_length - 1)
    # the difference function from the autocorrelation and the running energy (librosa's arrangement,
    # including its zero in place of the first energy term)
    n_fft = scipy.fft.next_fast_len(2 * frame_length - 1, real=True)
    spectrum = scipy.fft.rfft(frames, n=n_fft, axis=-1)
    acf = scipy.fft.irfft(spectrum.real**2 + spectrum.imag**2, n=n_fft, axis=-1)[:, : max_period + 1]
    energy = np.cumsum(np.square(frames), axis=-1)
    energy[:, 0] = 0
    diff = 2 * (acf[:, :1] - acf[:, 1:]) - energy[:, :max_period]  # lags 1..max_period
    cumulative_mean = np.cumsum(diff, axis=-1) / np.arange(1, max_period + 1, dtype=diff.dtype)
    denominator = cumulative_mean[:, min_period - 1 : max_period]
    cmnd = diff[:, min_period - 1 :] / (denominator + np.finfo(denominator.dtype).tiny)  # lags min..max
    # parabolic interpolation around each lag (0 at both ends, and where the parabola is too flat)
    left, mid, right = cmnd[:, :-2], cmnd[:, 1:-1], cmnd[:, 2:]
    a = right + left - 2 * mid
    b = (right - left) / 2
    shifts = np.zeros_like(cmnd)
    with np.errstate(divide="ignore", invalid="ignore"):
        shifts[:, 1:-1] = np.where(np.abs(b) >= np.abs(a), 0, -b / a)
    # the first trough under the threshold, else the global minimum
    trough = np.zeros(cmnd.shape, bool)
    trough[:, 1:-1] = (mid < left) & (mid <= right)
    trough[:, 0] = cmnd[:, 0] < cmnd[:, 1]
    trough[:, -1] = cmnd[:, -1] < cmnd[:, -2]
    below = trough & (cmnd < trough_threshold)
    period = np.where(below.any(axis=-1), np.argmax(below, axis=-1), np.argmin(cmnd, axis=-1))
    rows = np.arange(len(cmnd))
    return sr / (min_period + period + shifts[rows, period])


def prosody(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, fps: int = FPS, from_row: int = 0) -> np.ndarray:
    """[num_frames(len(audio)), 2] float32: F0 in Hz (0 = unvoiced) and RMS energy in dB (floor -100).

    ``from_row``: F0 is computed from that row on; earlier rows are context (a stream's previous frames)
    whose energy the voicing gate reads, and their F0 is left 0. Rows from it on are exactly the
    whole call's."""
    return prosody_many([audio], [from_row], sample_rate, fps)[0]


def prosody_many(segments: list[np.ndarray], from_rows: list[int], sample_rate: int = SAMPLE_RATE,
                 fps: int = FPS) -> list[np.ndarray]:
    """``prosody(segment, from_row=r)`` of several segments (an engine round's streams), with one YIN call
    over all their analysis frames; each result is exactly its own call's."""
    frame = _YIN_FRAME * sample_rate // SAMPLE_RATE
    hop = _YIN_HOP * sample_rate // SAMPLE_RATE
    outs, jobs = [], []
    for audio, from_row in zip(segments, from_rows, strict=True):
        y = np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)
        n = num_frames(len(y), sample_rate, fps)
        out = np.zeros((n, 2), dtype=np.float32)
        outs.append(out)
        if n == 0:
            continue
        centres = np.round(np.arange(n) * sample_rate / fps).astype(np.int64)
        energy = _frame_rms_db(y, centres, _RMS_WINDOW * sample_rate // SAMPLE_RATE)
        out[:, 1] = energy
        rows = slice(max(0, from_row), n)
        if energy.max() <= VOICED_MIN_DB or rows.start >= n:
            continue  # silence (or near): no pitch, and YIN on zeros would only produce noise
        if len(y) < frame + 1:
            y = _zero_pad(y, 0, frame + 1 - len(y))
        # YIN frame j is centred on sample j * hop; only the analysis frame nearest each motion frame is
        # computed (a third of the 10 ms grid at 30 fps)
        j = np.clip(np.round(centres[rows] / hop).astype(np.int64), 0, len(y) // hop)
        jobs.append((out, y, centres[rows], energy, rows, _analysis_frames(y, frame, hop, j)))
    if not jobs:
        return outs
    with np.errstate(divide="ignore", invalid="ignore"):
        f0_all = yin_frames(np.concatenate([job[-1] for job in jobs]), fmin=FMIN_HZ, fmax=FMAX_HZ,
                            sr=sample_rate).astype(np.float64)
    start = 0
    for out, y, centres, energy, rows, frames in jobs:
        f0 = f0_all[start : start + len(frames)]
        start += len(frames)
        periodic = _periodicity(y, centres, f0, sample_rate)
        voiced = (
            (energy[rows] > VOICED_MIN_DB)
            & (energy[rows] > energy.max() + VOICED_REL_DB)
            & (periodic > VOICED_MIN_PERIODICITY)
            & np.isfinite(f0)
        )
        out[rows, 0] = np.where(voiced, f0, 0.0)
    return outs


def normalized_prosody(p: np.ndarray) -> np.ndarray:
    """Model-ready [T, 2]: F0 as semitones re 100 Hz / 12 (0 when unvoiced); energy (dB + 50) / 30.

    Semitones make F0 speaker-independent up to an offset; /12 keeps typical speech (-10..+20
    st) near unit range. Unvoiced frames get 0, which the energy channel disambiguates.
    """
    p = np.asarray(p, dtype=np.float32)
    f0 = p[:, 0]
    voiced = f0 > 0
    st = np.zeros_like(f0)
    st[voiced] = np.log2(f0[voiced] / 100.0)  # = semitones / 12
    energy = np.clip((p[:, 1] + 50.0) / 30.0, -1.7, 1.7)
    return np.stack([st, energy], axis=1).astype(np.float32)
