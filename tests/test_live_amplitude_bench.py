"""`python -m benchmarks.live_amplitude`'s measures: amplitude gains, best-fit gains and the jaw's lag."""

from __future__ import annotations

import numpy as np

from benchmarks import live_amplitude as A
from ksdiff_runtime import motion
from ksdiff_runtime.training import metrics as M


def _teacher(frames: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((frames, len(motion.BLENDSHAPES)), np.float32)
    t = np.arange(frames)
    for k, s in enumerate(M.MOUTH):
        out[:, s] = 0.3 + 0.2 * np.sin(t / (3 + k % 5) + rng.uniform(0, 6))
    return out


def test_a_damped_copy_gets_its_amplitude_back_and_its_error_goes() -> None:
    teacher = _teacher()
    rest = np.full(len(M.MOUTH), 0.3)
    damped = teacher.copy()
    damped[:, M.MOUTH] = 0.3 + 0.8 * (teacher[:, M.MOUTH] - 0.3)
    gains = A.amplitude_gains(damped, teacher, teacher)
    assert np.allclose(gains, 1 / 0.8, rtol=1e-3)
    assert M.mouth_mae(damped, teacher) > 0.01
    assert M.mouth_mae(A.scale_about(damped, gains, rest), teacher) < 1e-5
    best = A.best_fit_gains(damped, teacher, rest)
    assert np.allclose(best, 1.25, atol=0.011)  # the grid's step


def test_a_late_copy_is_not_fixed_by_any_gain_and_its_lag_is_found() -> None:
    teacher = _teacher(seed=1)
    late = np.concatenate([teacher[:2], teacher[:-2]])  # two frames late, the same amplitude
    jaw = motion.index("jawOpen")
    assert A.best_lag(late[:, jaw], teacher[:, jaw]) == 2
    assert A.best_lag(teacher[:, jaw], teacher[:, jaw]) == 0
    gains = A.amplitude_gains(late, teacher, teacher)
    assert np.allclose(gains, 1.0, atol=0.02)
    rest = np.full(len(M.MOUTH), 0.3)
    best = A.best_fit_gains(late, teacher, rest)  # the gains that lower its error most
    assert M.mouth_mae(A.scale_about(late, best, rest), teacher) > 0.9 * M.mouth_mae(late, teacher)


def test_shapes_the_teacher_leaves_still_keep_gain_one() -> None:
    teacher = _teacher(seed=2)
    still = M.MOUTH[0]
    teacher[:, still] = 0.1
    pred = teacher.copy()
    pred[:, still] = 0.1 + 0.001 * np.sin(np.arange(len(pred)))
    gains = A.amplitude_gains(pred, teacher, teacher)
    assert gains[0] == 1.0
