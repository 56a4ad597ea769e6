"""Evaluation metrics against the teacher, in blendshape space (definitions next to each function)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr

from ksdiff_runtime import motion

from .keyframes import keyframe_f1
from .teacher import BILABIAL_PHONEMES, strip_stress

MOUTH = list(motion.MOUTH_INDICES)
BEAT_SIGMA_S = 0.1  # BeatAlign's tolerance (SAiD)
REST_MARGIN_FRAMES = 5  # silent frames this close to speech are transitions, not rest


def mouth_mae(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error over the mouth-region blendshapes (motion.MOUTH_BLENDSHAPES)."""
    return float(np.abs(pred[:, MOUTH] - true[:, MOUTH]).mean())


def closure_span(start: float, dur: float, fps: int = motion.FPS) -> tuple[int, int]:
    """Frames [a, b) a phone's closure is looked for in: the phone widened by one frame each side (a 30 fps
    frame grid can straddle a short closure); b may pass the last frame."""
    return max(0, int(np.floor(start * fps)) - 1), int(np.ceil((start + dur) * fps)) + 2


def closure_flags(
    blendshapes: np.ndarray, starts: np.ndarray, durs: np.ndarray, fps: int = motion.FPS
) -> tuple[np.ndarray, np.ndarray]:
    """(closed, counted), [n] bool each, for phones given by start and duration in seconds: closed when the
    lip aperture drops below motion.LIP_CLOSED_THRESHOLD on some frame of the phone, widened by one frame
    each side (a 30 fps frame grid can straddle a short closure); counted when the phone has frames."""
    aperture = motion.lip_aperture(blendshapes)
    closed, counted = np.zeros(len(starts), bool), np.zeros(len(starts), bool)
    for i, (s, d) in enumerate(zip(starts, durs, strict=True)):
        a, b = closure_span(s, d, fps)
        b = min(len(aperture), b)
        counted[i] = b > a
        closed[i] = b > a and aperture[a:b].min() < motion.LIP_CLOSED_THRESHOLD
    return closed, counted


def bilabial_closures(
    blendshapes: np.ndarray, phonemes: np.ndarray, starts: np.ndarray, durs: np.ndarray, fps: int = motion.FPS
) -> tuple[int, int]:
    """(closed, total) over the teacher's /p b m/ phonemes (closure_flags)."""
    keep = np.array([strip_stress(str(p)) in BILABIAL_PHONEMES for p in phonemes], bool)
    closed, counted = closure_flags(blendshapes, np.asarray(starts)[keep], np.asarray(durs)[keep], fps)
    return int(closed[counted].sum()), int(counted.sum())


def rest_frames(silent: np.ndarray) -> np.ndarray:
    """Silent frames at least REST_MARGIN_FRAMES away from any speech frame."""
    speech = ~np.asarray(silent, dtype=bool)
    near = speech.copy()
    for k in range(1, REST_MARGIN_FRAMES + 1):
        near[k:] |= speech[:-k]
        near[:-k] |= speech[k:]
    return ~near


def motion_beats(head: np.ndarray, fps: int = motion.FPS) -> np.ndarray:
    """Times (s) of head-motion beats: local minima of the normalised mean |velocity|."""
    if len(head) < 3:
        return np.zeros(0)
    vel = np.abs(np.diff(head, axis=0))
    vel = vel / (vel.std(axis=0, keepdims=True) + 1e-8)
    speed = vel.mean(axis=1)
    idx = [i for i in range(1, len(speed) - 1) if speed[i] < speed[i - 1] and speed[i] <= speed[i + 1]]
    return (np.asarray(idx, dtype=np.float64) + 0.5) / fps


def audio_beats(audio: np.ndarray, sample_rate: int = motion.SAMPLE_RATE) -> np.ndarray:
    import librosa

    if len(audio) < 2048:
        return np.zeros(0)
    return librosa.onset.onset_detect(y=audio.astype(np.float32), sr=sample_rate, units="time", hop_length=160)


def beat_align(audio_beat_times: np.ndarray, motion_beat_times: np.ndarray) -> float | None:
    """Mean over audio beats of exp(-dt^2 / (2 sigma^2)), dt to the nearest motion beat (SAiD)."""
    if len(audio_beat_times) == 0:
        return None
    if len(motion_beat_times) == 0:
        return 0.0
    dt = np.abs(audio_beat_times[:, None] - motion_beat_times[None, :]).min(axis=1)
    return float(np.exp(-(dt**2) / (2 * BEAT_SIGMA_S**2)).mean())


def _constant(x: np.ndarray) -> bool:
    # np.std of a constant float32 array is not exactly 0 (e.g. 1.5e-8 for 0.1), so check the range too
    return bool(np.ptp(x) == 0 or np.std(x) < 1e-8)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    if _constant(a) or _constant(b):
        return 0.0
    return float(pearsonr(a, b)[0])


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    if _constant(a) or _constant(b):
        return 0.0
    return float(spearmanr(a, b)[0])


def pick_keyframes(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Predicted keyframes from KEL probabilities: above threshold and a local maximum (+-1 frame)."""
    prob = np.asarray(prob, dtype=np.float32)
    padded = np.pad(prob, 1, constant_values=-1.0)
    return (prob >= threshold) & (prob >= padded[:-2]) & (prob > padded[2:])


def kel_f1(prob: np.ndarray, true_keys: np.ndarray, threshold: float = 0.5) -> float:
    return keyframe_f1(pick_keyframes(prob, threshold), true_keys, tolerance=1)


def diversity(samples: list[np.ndarray]) -> float:
    """Mean pairwise per-frame L2 distance between samples [T, D] generated for the same audio."""
    dists = [
        float(np.linalg.norm(samples[i] - samples[j], axis=-1).mean())
        for i in range(len(samples))
        for j in range(i + 1, len(samples))
    ]
    return float(np.mean(dists)) if dists else 0.0
