"""`python -m benchmarks.moods` end to end on a few real prompts: every mood keeps every closure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import moods
from ksdiff_runtime import motion
from ksdiff_runtime.training import real_eval as R

pytestmark = pytest.mark.skipif(
    not (R.TRANSCRIPTS.is_file() and bool(R.real_prompts("test"))),
    reason="apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-wav")


def test_the_moods_benchmark_scores_every_mood_on_real_prompts(tmp_path: Path) -> None:
    out, png = tmp_path / "moods.json", tmp_path / "moods.png"
    assert moods.main(["--prompts", "4", "--out", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["prompts"] == 4 and list(result["moods"]) == list(motion.MOODS) and png.stat().st_size > 0
    neutral = result["moods"]["neutral"]["closure_medial"]["rate"]
    for mood, r in result["moods"].items():
        assert r["lip_aperture_largest_rise"] <= 1e-6 and r["jaw_r_with_neutral"] > 0.99
        assert r["closure_medial"]["rate"] >= neutral  # a mood never opens a closed mouth
        for name, weight in motion.MOOD_EXPRESSIONS[mood].pose.items():
            assert r["shapes_speaking"][name] >= 0.5 * weight, (mood, name)
