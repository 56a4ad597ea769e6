"""Keyframe definition and the evaluation metrics on hand-made signals with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.training import metrics as M
from ksdiff_runtime.training.keyframes import keyframe_f1, keyframes, motion_speed

PERIOD = 40  # frames


def sine(T: int = 80, shift: float = 0.0, amplitude: float = 1.0) -> np.ndarray:
    """[T, 1]: peaks at frames 10 + shift + 40 k, troughs at 30 + shift + 40 k."""
    t = np.arange(T, dtype=np.float64)
    return (amplitude * np.sin(2 * np.pi * (t - shift) / PERIOD))[:, None]


# --- keyframes -----------------------------------------------------------------------------------
def test_sine_keyframes_are_its_peaks_and_troughs() -> None:
    keys = keyframes(sine(), min_travel=0.5)
    assert np.flatnonzero(keys).tolist() == [10, 30, 50, 70]


def test_keyframes_of_a_multidimensional_motion() -> None:
    x = np.concatenate([sine(), 0.5 * sine(), np.zeros((80, 1))], axis=1)
    assert np.flatnonzero(keyframes(x, min_travel=0.5)).tolist() == [10, 30, 50, 70]


def test_constant_motion_has_no_keyframes() -> None:
    assert not keyframes(np.full((60, 52), 0.3), min_travel=0.08).any()
    # too short to have a neighbourhood
    assert not keyframes(sine(4), min_travel=0.0).any()


def test_min_travel_suppresses_jitter() -> None:
    rng = np.random.default_rng(0)
    jitter = 0.3 + 0.004 * rng.standard_normal((90, 52))
    assert keyframes(jitter, min_travel=0.0).sum() > 5  # speed minima everywhere...
    assert not keyframes(jitter, min_travel=0.08).any()  # ...none travelling far enough to count
    # jitter on top of a real movement: only the turning points survive (within a frame)
    noisy = sine() + 0.002 * rng.standard_normal((80, 1))
    found = np.flatnonzero(keyframes(noisy, min_travel=0.5))
    assert len(found) == 4
    assert np.abs(found - np.array([10, 30, 50, 70])).max() <= 1


def test_min_travel_is_measured_from_the_previous_keyframe() -> None:
    # wiggles of 0.2 peak to trough starting at a trough (frame 0): min_travel 0.3 keeps none,
    # 0.15 keeps every later turning point (each 0.2 from the one before)
    x = sine(70, amplitude=0.1, shift=10) + 0.5  # ends mid-swing (frame 70: fastest)
    assert not keyframes(x, min_travel=0.3).any()
    assert np.flatnonzero(keyframes(x, min_travel=0.15)).tolist() == [20, 40, 60]
    # starting mid-swing, the first turning point is only 0.1 from frame 0 and is skipped, and
    # so is every later one (each is 0.1 from frame 0, the last kept reference)
    assert not keyframes(sine(amplitude=0.1) + 0.5, min_travel=0.15).any()


def test_motion_speed_shape_and_values() -> None:
    x = np.arange(10, dtype=np.float32)[:, None] * 0.1  # constant speed 0.1 per frame
    np.testing.assert_allclose(motion_speed(x), 0.1, rtol=1e-5)
    assert motion_speed(np.zeros((2, 3))).tolist() == [0.0, 0.0]


# --- keyframe F1 ---------------------------------------------------------------------------------
def _keys(T: int, frames: list[int]) -> np.ndarray:
    k = np.zeros(T, dtype=bool)
    k[frames] = True
    return k


@pytest.mark.parametrize(
    ("pred", "tolerance", "expected"),
    [
        ([10, 30, 50], 1, 1.0),  # exact
        ([11, 29, 51], 1, 1.0),  # off by one, within tolerance
        ([12, 28, 52], 1, 0.0),  # off by two, outside tolerance
        ([12, 28, 52], 2, 1.0),  # off by two, tolerance two
        ([10, 40], 1, 0.4),  # 1 hit: precision 1/2, recall 1/3
        ([], 1, 0.0),
    ],
)
def test_keyframe_f1_tolerance(pred: list[int], tolerance: int, expected: float) -> None:
    true = _keys(60, [10, 30, 50])
    assert keyframe_f1(_keys(60, pred), true, tolerance=tolerance) == pytest.approx(expected)


def test_keyframe_f1_matches_one_to_one() -> None:
    # two predictions next to one true keyframe: one hit, not two
    assert keyframe_f1(_keys(20, [9, 10]), _keys(20, [10]), tolerance=1) == pytest.approx(2 / 3)
    assert keyframe_f1(_keys(20, []), _keys(20, []), tolerance=1) == 1.0


# --- bilabial closures ---------------------------------------------------------------------------
def _open_mouth(T: int) -> np.ndarray:
    b = np.zeros((T, motion.NUM_BLENDSHAPES), dtype=np.float32)
    b[:, motion.index("jawOpen")] = 0.5
    return b


def test_bilabial_closure_counts_closed_and_open_phonemes() -> None:
    b = _open_mouth(60)
    assert motion.lip_aperture(b).min() > motion.LIP_CLOSED_THRESHOLD
    # /m/ at 0.5 s for 0.25 s: lips sealed with mouthClose against the open jaw on frame 20
    b[20, motion.index("mouthClose")] = 0.5
    phonemes = np.array(["h", "'m", "aI", "p", "b"])
    starts = np.array([0.25, 0.5, 0.75, 1.25, 1.75], dtype=np.float32)
    durs = np.array([0.25, 0.25, 0.5, 0.125, 0.125], dtype=np.float32)
    assert M.bilabial_closures(b, phonemes, starts, durs) == (1, 3)
    assert M.bilabial_closures(_open_mouth(60), phonemes, starts, durs) == (0, 3)


@pytest.mark.parametrize(("frame", "closed"), [(13, 0), (14, 1), (17, 1), (24, 1), (25, 0)])
def test_bilabial_closure_window_is_the_phoneme_widened_by_a_frame(frame: int, closed: int) -> None:
    # phoneme 0.5 .. 0.75 s = frames 15 .. 22.5; bracketing frames 15 and 23, widened: 14 .. 24
    b = _open_mouth(60)
    b[frame, motion.index("jawOpen")] = 0.0
    got = M.bilabial_closures(b, np.array(["b"]), np.array([0.5]), np.array([0.25]))
    assert got == (closed, 1)


def test_bilabial_phoneme_past_the_end_is_not_counted() -> None:
    assert M.bilabial_closures(_open_mouth(10), np.array(["m"]), np.array([2.0]), np.array([0.1])) == (0, 0)


# --- rest frames ---------------------------------------------------------------------------------
def test_rest_frames_keep_a_margin_from_speech() -> None:
    silent = np.ones(40, dtype=bool)
    silent[10:20] = False  # speech
    rest = M.rest_frames(silent)
    m = M.REST_MARGIN_FRAMES
    assert m == 5
    expected = np.zeros(40, dtype=bool)
    expected[: 10 - m] = True  # frames more than m away before the speech
    expected[20 + m :] = True  # ... and after it
    assert rest.tolist() == expected.tolist()
    assert M.rest_frames(np.ones(7, dtype=bool)).all()
    assert not M.rest_frames(np.zeros(7, dtype=bool)).any()
    assert not M.rest_frames(np.array([True, True, False, True])).any()


# --- beats ---------------------------------------------------------------------------------------
def test_beat_align_perfect_and_off_by_sigma() -> None:
    beats = np.array([0.5, 1.2, 2.0])
    assert M.beat_align(beats, beats) == pytest.approx(1.0)
    assert M.beat_align(beats, beats + 0.1) == pytest.approx(math.exp(-0.5))
    # nearest motion beat counts: extra motion beats do not hurt
    assert M.beat_align(beats, np.sort(np.concatenate([beats, beats + 0.4]))) == pytest.approx(1.0)
    assert M.beat_align(np.zeros(0), beats) is None
    assert M.beat_align(beats, np.zeros(0)) == 0.0


def test_motion_beats_at_the_turning_points_of_a_nod() -> None:
    # head turning points on half frames 10.5, 30.5, 50.5, 70.5: the frame step across each is ~0
    s = sine(shift=0.5)[:, 0]
    head = np.stack([0.2 * s, 0.05 * s, 0.01 * s], axis=1)
    beats = M.motion_beats(head)
    np.testing.assert_allclose(beats, np.array([10.5, 30.5, 50.5, 70.5]) / motion.FPS, atol=1e-9)
    assert M.motion_beats(head[:2]).size == 0
    assert M.beat_align(beats, beats) == pytest.approx(1.0)


# --- diversity and simple scores -----------------------------------------------------------------
def test_diversity() -> None:
    x = np.random.default_rng(0).random((30, 3))
    assert M.diversity([x, x.copy(), x.copy()]) == 0.0
    assert M.diversity([x]) == 0.0
    y = x.copy()
    y[:, 1] += 3.0
    assert M.diversity([x, y]) == pytest.approx(3.0)
    assert M.diversity([x, x, y]) == pytest.approx(2.0)  # pairs: 0, 3, 3


def test_mouth_mae_only_looks_at_the_mouth() -> None:
    a = np.zeros((5, motion.NUM_BLENDSHAPES))
    b = a.copy()
    b[:, motion.index("eyeBlinkLeft")] = 1.0
    assert M.mouth_mae(a, b) == 0.0
    b[:, motion.index("jawOpen")] = 0.5
    assert M.mouth_mae(a, b) == pytest.approx(0.5 / len(motion.MOUTH_INDICES))


@pytest.mark.parametrize("value", [0.1, 0.2, 0.7])
def test_correlation_with_a_constant_float32_track_is_zero_not_nan(value: float) -> None:
    # e.g. the mean-pose baseline's jawOpen: np.std of this array is ~1e-8..1e-7, not 0
    constant = np.full(1000, value, dtype=np.float32)
    other = np.random.default_rng(0).random(1000).astype(np.float32)
    assert M.correlation(constant, other) == 0.0
    assert M.correlation(other, constant) == 0.0
    assert M.rank_correlation(constant, other) == 0.0
    assert M.correlation(other, 2 * other + 1) == pytest.approx(1.0)
    assert M.rank_correlation(other, other**3) == pytest.approx(1.0)


def test_kel_f1_from_probabilities() -> None:
    prob = np.zeros(40)
    prob[[9, 10, 11]] = [0.6, 0.9, 0.6]  # one peak at 10
    prob[30] = 0.4  # below threshold
    assert np.flatnonzero(M.pick_keyframes(prob)).tolist() == [10]
    assert M.kel_f1(prob, _keys(40, [11])) == 1.0
    assert M.kel_f1(prob, _keys(40, [11, 30])) == pytest.approx(2 / 3)
