"""`python -m benchmarks.teacher_ceiling`: what of the teacher the words decide, on a tiny generated corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks import teacher_ceiling as C
from ksdiff_runtime.training.corpus import generate


def test_a_frames_chance_is_the_share_of_the_other_draws_with_a_keyframe_within_a_frame() -> None:
    keys = np.zeros((4, 8), dtype=bool)
    keys[0, 3] = True  # left out below: must not count
    keys[1, 2] = keys[2, 4] = keys[3, 7] = True
    chances = C.key_chances(keys, leave_out=0)
    assert np.allclose(chances, [0, 1 / 3, 1 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert np.isclose(C.key_chances(keys, leave_out=1)[3], 2 / 3)  # draw 0's counts when another is left out


def test_the_words_decide_the_mouth_and_not_the_heads_turning_points(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    generate(str(corpus), seed=7, n_train=3, n_test=2, clips_train=2, clips_test=2, workers=1, progress=False)
    out = tmp_path / "ceiling.json"
    result = C.main(["--corpus", str(corpus), "--draws", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["held_out_clips"] == 4 and result["train_clips"] == 6
    # the mouth is the words' (the smile's slow wander is all a draw adds)
    assert result["mae_vs_baseline_ceiling"] < 0.1
    # the head's turning points are mostly the teacher's random drift and nods
    assert result["pose"]["f1_ceiling"] < result["expression"]["f1_ceiling"]
    assert 0 < result["pose"]["f1_ceiling"] < 0.8 and result["expression"]["f1_ceiling"] > 0.7
