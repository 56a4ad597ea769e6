"""Where a recorded /p b/ sits against its own closure (training/stop_timing.py): the quietest frame is
found, a stop is snapped onto it by espeak-ng's convention, its neighbours give or take the time, and a
stop beside a pause is left alone."""

from __future__ import annotations

import numpy as np

from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_runtime.training import stop_timing as S


def _noise_with_gap(gap_s: tuple[float, float], seconds: float = 1.0) -> np.ndarray:
    """Loud noise with a silent closure between ``gap_s`` (seconds)."""
    audio = np.random.default_rng(0).normal(0.0, 0.1, int(seconds * SAMPLE_RATE))
    audio[int(gap_s[0] * SAMPLE_RATE) : int(gap_s[1] * SAMPLE_RATE)] = 0.0
    return audio.astype(np.float32)


def test_the_quietest_frame_is_the_closure() -> None:
    db = S.energy_db(_noise_with_gap((0.50, 0.56)))
    assert abs(S.quietest(db, 0.47) - 0.53) <= 0.011  # the gap's middle, found from 60 ms before it
    assert S.quietest(db, 2.0) is None  # past the audio's end


def test_a_stop_is_moved_onto_its_closure() -> None:
    audio = _noise_with_gap((0.50, 0.56))
    names = ["_", "a", "p", "a", "_"]
    start = np.array([0.0, 0.2, 0.45, 0.49, 0.8])
    dur = np.array([0.2, 0.25, 0.04, 0.31, 0.2])
    new_start, new_dur, moved = S.snap_stops(audio, names, start, dur)
    assert moved == 1
    quiet = S.quietest(S.energy_db(audio), start[2] + dur[2] / 2)  # found from the aligned centre
    assert abs(new_start[2] - (quiet - S.SYNTHETIC_QUIET_FROM_START_S)) < 1e-9  # espeak-ng's convention
    assert new_dur[2] == dur[2]  # the stop keeps its length
    np.testing.assert_allclose(new_start[:-1] + new_dur[:-1], new_start[1:])  # still contiguous
    assert new_start[0] == start[0] and new_start[-1] == start[-1] and new_dur[0] == dur[0]  # the rest stays
    assert new_dur[1] > dur[1] and new_dur[3] < dur[3]  # the vowel before gives, the one after takes


def test_a_snap_leaves_each_neighbour_a_minimum() -> None:
    audio = _noise_with_gap((0.50, 0.56))
    names = ["a", "p", "a", "t"]
    start = np.array([0.3, 0.45, 0.49, 0.51])  # the vowel after is 20 ms: the stop can move 10 ms
    dur = np.array([0.15, 0.04, 0.02, 0.3])
    new_start, new_dur, moved = S.snap_stops(audio, names, start, dur)
    assert moved == 1
    assert abs(new_dur[2] - S.MIN_PHONE_S) < 1e-9 and abs(new_start[1] - 0.46) < 1e-9


def test_a_stop_beside_a_pause_or_at_an_end_is_not_moved() -> None:
    audio = _noise_with_gap((0.50, 0.56))
    for names in (["a", "_", "p", "a"], ["a", "a", "p", "_"], ["p", "a", "a", "a"], ["a", "a", "a", "b"]):
        start = np.array([0.2, 0.4, 0.45, 0.49]) if names[0] != "p" else np.array([0.45, 0.49, 0.6, 0.7])
        dur = np.diff(np.append(start, 1.0))
        new_start, new_dur, moved = S.snap_stops(audio, names, start, dur)
        assert moved == 0 and np.array_equal(new_start, start) and np.array_equal(new_dur, dur), names
