"""`python -m benchmarks.moods` end to end on a few real prompts: every mood's expression keeps every closure, and
the network speaks in the mood at a guidance above 0."""

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
    assert moods.main(["--prompts", "4", "--guidance", "0", "2", "--cost-repeats", "1", "--out", str(out),
                       "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["prompts"] == 4 and list(result["guidance"]) == ["0", "2"] and png.stat().st_size > 0
    assert list(result["live_stream_cost"]) == ["0", "2"]
    assert all(c["stream_cores"] > 0 and c["streams_that_fit"] >= 1 for c in result["live_stream_cost"].values())
    layer, guided = result["guidance"]["0"], result["guidance"]["2"]
    assert list(layer) == list(guided) == list(motion.MOODS)
    neutral = layer["neutral"]["closure_medial"]["rate"]
    for mood, r in layer.items():  # the expression layer alone
        assert r["lip_aperture_largest_rise"] <= 1e-6 and r["jaw_r_with_neutral"] > 0.99
        assert r["closure_medial"]["rate"] >= neutral  # a mood's expression never opens a closed mouth
        for name, weight in motion.MOOD_EXPRESSIONS[mood].pose.items():
            assert r["shapes_speaking"][name] >= 0.5 * weight, (mood, name)
    # the network in the mood: a sad voice articulates less, an angry one more; the expression stays
    def figures(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "stage_us_per_frame"}  # (a timing)

    assert figures(guided["neutral"]) == figures(layer["neutral"])  # a neutral stream: the null style at any guidance
    jaw = {g: {mood: r["profile"]["articulation"] for mood, r in by_mood.items()}
           for g, by_mood in result["guidance"].items()}
    assert jaw["2"]["sad"] < jaw["0"]["sad"] and jaw["2"]["angry"] > jaw["0"]["angry"]
    for mood, r in guided.items():
        for name, weight in motion.MOOD_EXPRESSIONS[mood].pose.items():
            assert r["shapes_speaking"][name] >= 0.5 * weight, (mood, name)
