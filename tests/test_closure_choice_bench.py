"""`python -m benchmarks.closure_choice` end to end on a few training prompts: every setting scored against the model
alone, the best the one with the most closures gained less vowels shut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import closure_choice
from ksdiff_runtime.training import real_eval as R

pytestmark = pytest.mark.skipif(
    not (R.TRANSCRIPTS.is_file() and bool(R.real_prompts("train"))),
    reason="apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-wav")


def test_the_closure_choice_scores_every_setting_on_training_prompts(tmp_path: Path) -> None:
    out = tmp_path / "choice.json"
    result = closure_choice.main(["--prompts", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["prompts"] == 4 and result["medial_bilabials"] >= result["model"]["medial_closed"]
    settings = result["settings"]
    assert len(settings) == len(closure_choice.AHEAD) * len(closure_choice.RAMPS)
    for s in settings:  # the closure only ever closes lips: nothing is lost, and it never opens a shut vowel
        assert s["medial_closed"] >= 0 and s["vowels_shut_beside"] >= 0 and s["vowels_shut_elsewhere"] >= 0
        assert s["net"] == s["medial_closed"] - s["vowels_shut_beside"] - s["vowels_shut_elsewhere"]
    assert result["best"]["net"] == max(s["net"] for s in settings)
    # a lower threshold closes at least as much, reading the same frame
    for ahead in closure_choice.AHEAD:
        gained = [s["medial_closed"] for s in settings if s["ahead_frames"] == ahead]
        assert gained == sorted(gained, reverse=True)
