"""Real-world training clips (training/realworld.py): non-speech at rest, speech under sound with its own
targets, recorded prompts with the teacher's targets from their aligned phones; and a fine-tune from a
checkpoint keeps its motion statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.training import metrics
from ksdiff_runtime.training import real_eval as R
from ksdiff_runtime.training import realworld as W
from ksdiff_runtime.training.corpus import generate

HAVE_PROMPTS = R.TRANSCRIPTS.is_file() and bool(R.real_prompts("train"))


def test_every_cmu_phone_maps_to_a_teacher_phoneme() -> None:
    from pocketsphinx import get_model_path

    words = (Path(get_model_path()) / "en-us" / "cmudict-en-us.dict").read_text().splitlines()
    phones = {p.lower() for line in words for p in line.split()[1:]} | {"sil"}  # every phone the aligner can give
    assert {"p", "b", "m", "aa", "zh"} <= phones and len(phones) == 40
    for p in phones:
        assert p in W.ARPABET, p
    assert W.espeak_phoneme("P") == "p" and W.espeak_phoneme("+SPN+") == "_"
    from ksdiff_runtime.training.teacher import viseme_of

    assert {viseme_of(W.espeak_phoneme(p)) for p in ("p", "b", "m")} == {"PP"}
    assert viseme_of(W.espeak_phoneme("sil")) == "sil"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_PROMPTS, reason="apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-wav")
def test_real_world_clips(tmp_path: Path) -> None:
    generate(str(tmp_path), seed=3, n_train=2, n_test=1, clips_train=2, clips_test=1, workers=1, progress=False)
    before = json.loads((tmp_path / "manifest.json").read_text())["clips"]
    manifest = W.add_real_world(tmp_path, n_nonspeech=3, n_mixed=2, max_real=4, seed=1)
    clips = manifest["clips"]
    assert clips[: len(before)] == before  # the synthetic corpus is untouched
    kinds = [c.get("kind") for c in clips[len(before) :]]
    assert kinds.count("nonspeech") == 3 and kinds.count("mixed") == 2 and 1 <= kinds.count("real") <= 4
    assert all(c["split"] == "train" for c in clips[len(before) :])
    by_id = {c["id"]: c for c in clips}
    for c in clips[len(before) :]:
        data = np.load(tmp_path / c["file"])
        audio, blend = data["audio"], data["blendshapes"]
        assert blend.shape == (motion.num_frames(audio.size), motion.NUM_BLENDSHAPES)
        assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
        if c["kind"] == "nonspeech":  # the face rests, the eyes still blink
            assert motion.mouth_at_rest(blend).all() and data["silent"].all()
            assert c["persona"] in {b["persona"] for b in before if b["split"] == "train"}
        elif c["kind"] == "mixed":  # the source clip's targets, other audio
            src = next(b for b in before if np.array_equal(np.load(tmp_path / b["file"])["blendshapes"], blend))
            assert src["split"] == "train" and by_id[src["id"]]["text"] == c["text"]
            assert not np.array_equal(np.load(tmp_path / src["file"])["audio"], audio)
        else:  # a recorded prompt: the teacher closes the lips on every aligned bilabial
            assert c["persona"] == W.REAL_PERSONA and c["text"]
            closed, total = metrics.bilabial_closures(blend, data["phonemes"], data["phoneme_start"],
                                                      data["phoneme_dur"])
            assert closed == total
            assert not motion.mouth_at_rest(blend).all()
    # run again: the same clips, not twice as many
    again = W.add_real_world(tmp_path, n_nonspeech=3, n_mixed=2, max_real=4, seed=1)
    assert [c["id"] for c in again["clips"]] == [c["id"] for c in clips]


def test_fine_tune_starts_from_the_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import torch

    from ksdiff_runtime.model.checkpoint import load_model
    from ksdiff_runtime.training import train

    start = load_model(tiny_checkpoint)
    corpus = tmp_path / "corpus"
    generate(str(corpus), seed=5, n_train=2, n_test=1, clips_train=2, clips_test=1, workers=1, progress=False)
    cfg = train.TrainConfig(corpus=str(corpus), cache=str(tmp_path / "cache"), out=str(tmp_path / "run"),
                            batch_size=2, max_steps=1, warmup_steps=1, workers=1, init_from=str(tiny_checkpoint),
                            threads=1)
    last = train.train(start.cfg, cfg)
    tuned = torch.load(last, map_location="cpu", weights_only=False)["model"]
    for name in ("expr_mean", "expr_std", "pose_mean", "pose_std"):  # the checkpoint's statistics, not the corpus's
        torch.testing.assert_close(tuned[name].float(), getattr(start, name).float())
    params = dict(start.named_parameters())
    assert any(not torch.equal(v.float(), tuned[k].float()) for k, v in params.items())  # and it trained


def test_a_fine_tune_may_move_the_model_to_the_streaming_recognisers_features(tiny_checkpoint: Path,
                                                                             tmp_path: Path) -> None:
    """Issue 14 item 5: the same model, trained on (and recording) the other recogniser; any other change of
    config is still refused."""
    import dataclasses

    import pytest

    from ksdiff_runtime.model.checkpoint import load_model
    from ksdiff_runtime.training import train

    start = load_model(tiny_checkpoint)
    corpus = tmp_path / "corpus"
    generate(str(corpus), seed=5, n_train=2, n_test=1, clips_train=2, clips_test=1, workers=1, progress=False)
    cfg = train.TrainConfig(corpus=str(corpus), cache=str(tmp_path / "cache"), out=str(tmp_path / "run"),
                            batch_size=2, max_steps=1, warmup_steps=1, workers=1, init_from=str(tiny_checkpoint),
                            threads=1)
    streaming = dataclasses.replace(start.cfg, front_end=dataclasses.replace(start.cfg.front_end,
                                                                            recogniser="streaming"))
    assert load_model(train.train(streaming, cfg)).cfg.front_end.recogniser == "streaming"
    wider = dataclasses.replace(streaming, front_end=dataclasses.replace(streaming.front_end, lookahead_ms=0))
    with pytest.raises(RuntimeError, match="another model config"):
        train.train(wider, dataclasses.replace(cfg, out=str(tmp_path / "run2")))
