"""`python -m benchmarks.smile_probe`'s measures (its run on a tiny trained model: tests/test_dataset.py)."""

from __future__ import annotations

import numpy as np

from benchmarks import smile_probe as P
from ksdiff_runtime import motion


def test_the_style_regression_is_scored_on_clips_it_did_not_see() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = x @ rng.normal(size=6) + 0.3
    assert P.loo_ridge_r(x, y) > 0.99  # a linear truth is found
    noise = rng.normal(size=40)
    assert abs(P.loo_ridge_r(x, noise)) < 0.4  # noise is not: no clip predicts itself
    assert P.loo_ridge_r(x[:2], y[:2]) is None


def test_a_late_output_scores_best_shifted_back() -> None:
    rng = np.random.default_rng(1)
    truth = [rng.random((50, len(motion.BLENDSHAPES))).astype(np.float32) for _ in range(3)]
    late = [np.concatenate([t[:2], t[:-2]]) for t in truth]  # two frames late
    errs = {s: P.shifted_mae(late, truth, s) for s in P.SHIFTS}
    assert errs[2] == 0.0 and min(errs, key=errs.get) == 2 and errs[0] > 0
