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
    assert result["prompts"] == 4 and result["medial_bilabials"] >= result["model"]["medial_closed@30"]
    settings = result["settings"]
    holds = sum(1 for a in closure_choice.AHEAD for h in closure_choice.HOLD if h <= a + 1)
    assert len(settings) == holds * len(closure_choice.RAMPS)
    for s in settings:  # the closure only ever closes lips: nothing is lost, and it never opens a shut vowel
        for fps in closure_choice.RATES:
            gained = [s[f"{k}@{fps}"] for k in closure_choice.KEYS]
            assert min(gained) >= 0 and s[f"net@{fps}"] == gained[0] - gained[1] - gained[2]
        assert s["net"] == sum(s[f"net@{fps}"] for fps in closure_choice.RATES)
    assert result["best"]["net"] == max(s["net"] for s in settings)
    # a lower threshold, or a longer hold, closes at least as much, reading the same frames
    for ahead in closure_choice.AHEAD:
        for hold in closure_choice.HOLD:
            gained = [s["medial_closed@30"] for s in settings if (s["ahead_frames"], s["hold_frames"]) == (ahead, hold)]
            assert gained == sorted(gained, reverse=True)
