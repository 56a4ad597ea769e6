"""Keyframes, defined from the target motion (what KEL learns to predict).

A keyframe is a turning point of the motion: a frame where the motion's speed has a local
minimum (the trajectory stops and changes direction: a mouth fully open, a closure, the
bottom of a nod) AND the motion has travelled far enough since the previous keyframe to
matter. Speed is the central-difference velocity norm, lightly smoothed:

    v[t] = || x[t+1] - x[t-1] || / 2,   smoothed with [1, 2, 1] / 4
    keyframe at t  if  v[t] <= v[t +- k] for k = 1..2  and  || x[t] - x[last keyframe] || >= min_travel

Expression uses the 52 weights (natural units, 0..1); pose the head angles (radians).
Salient frames of this kind are also what head-pose BeatAlign calls "motion beats".
"""

from __future__ import annotations

import numpy as np

EXPR_MIN_TRAVEL = 0.08  # L2 over 52 weights
POSE_MIN_TRAVEL = 0.015  # radians
NEIGHBOURHOOD = 2


def motion_speed(x: np.ndarray) -> np.ndarray:
    """Smoothed speed [T] of motion x [T, D]."""
    x = np.asarray(x, dtype=np.float32)
    if len(x) < 3:
        return np.zeros(len(x), dtype=np.float32)
    v = np.zeros(len(x), dtype=np.float32)
    v[1:-1] = np.linalg.norm(x[2:] - x[:-2], axis=-1) / 2
    v[0], v[-1] = v[1], v[-2]
    padded = np.pad(v, 1, mode="edge")
    return (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4


def keyframes(x: np.ndarray, min_travel: float) -> np.ndarray:
    """Boolean [T]: the keyframes of motion x [T, D] (definition in the module docstring)."""
    x = np.asarray(x, dtype=np.float32)
    T = len(x)
    keys = np.zeros(T, dtype=bool)
    if T < 2 * NEIGHBOURHOOD + 1:
        return keys
    v = motion_speed(x)
    padded = np.pad(v, NEIGHBOURHOOD, mode="edge")
    is_min = np.ones(T, dtype=bool)
    for k in range(1, NEIGHBOURHOOD + 1):
        is_min &= v <= padded[NEIGHBOURHOOD - k : NEIGHBOURHOOD - k + T]
        is_min &= v <= padded[NEIGHBOURHOOD + k : NEIGHBOURHOOD + k + T]
    last = x[0]
    for t in np.flatnonzero(is_min):
        if np.linalg.norm(x[t] - last) >= min_travel:
            keys[t] = True
            last = x[t]
    return keys


def expression_keyframes(blendshapes: np.ndarray) -> np.ndarray:
    return keyframes(blendshapes, EXPR_MIN_TRAVEL)


def pose_keyframes(head: np.ndarray) -> np.ndarray:
    return keyframes(head, POSE_MIN_TRAVEL)


def keyframe_f1(pred: np.ndarray, true: np.ndarray, tolerance: int = 1) -> float:
    """F1 of predicted vs true keyframes [T] where a match may be off by up to ``tolerance`` frames."""
    p, t = np.flatnonzero(pred), np.flatnonzero(true)
    if len(p) == 0 and len(t) == 0:
        return 1.0
    if len(p) == 0 or len(t) == 0:
        return 0.0
    used = np.zeros(len(t), dtype=bool)
    hits = 0
    for i in p:  # greedy one-to-one matching in time order
        d = np.abs(t - i)
        d[used] = tolerance + 1
        j = int(np.argmin(d))
        if d[j] <= tolerance:
            used[j] = True
            hits += 1
    precision, recall = hits / len(p), hits / len(t)
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)
