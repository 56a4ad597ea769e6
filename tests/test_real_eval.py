"""The real-voice evaluation (training/real_eval.py): transcripts, alignment, scores, and one small run.

Real inputs: Debian's asterisk-core-sounds-en-wav prompts and their transcripts from
asterisk-core-sounds-en (.ci/run installs both), aligned by PocketSphinx (the train extra).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.training import real_eval as R

HAVE_PROMPTS = R.TRANSCRIPTS.is_file() and bool(R.real_prompts("test"))
needs_prompts = pytest.mark.skipif(
    not HAVE_PROMPTS, reason="apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-wav")
JAW = motion.index("jawOpen")


def _frames(T: int, jaw: float = 0.5) -> np.ndarray:
    b = np.zeros((T, motion.NUM_BLENDSHAPES), np.float32)
    b[:, JAW] = jaw
    return b


def test_transcripts_become_dictionary_words() -> None:
    known = {"press", "one", "to", "mute", "or", "two", "pound", "star", "for", "help", "please", "zero",
             "call-forwarding", "call", "forwarding", "it's", "done"}.__contains__
    assert R.words_of("Please press 1 to mute, or 2.", known) == ["please", "press", "one", "to", "mute", "or", "two"]
    assert R.words_of("Press # or * for help...", known) == ["press", "pound", "or", "star", "for", "help"]
    assert R.words_of("Press 10", known) == ["press", "one", "zero"]  # digit by digit, as the prompts read it
    assert R.words_of("Call-Forwarding: it's done.", known) == ["call", "forwarding", "it's", "done"]
    assert R.words_of("[this is a simple beep tone]", known) is None  # not speech
    assert R.words_of("Please unmute yourself", known) is None  # a word the dictionary lacks
    assert R.words_of("...", known) is None


def test_missing_transcripts_name_the_package(tmp_path: Path) -> None:
    with pytest.raises(R.RealEvalError, match="asterisk-core-sounds-en"):
        R.transcripts(tmp_path / "core-sounds-en.txt.gz")
    path = tmp_path / "t.txt.gz"
    path.write_bytes(gzip.compress(b"; a comment\n\nactivated: Activated.\ndigits/1: One.\nempty:\n"))
    assert R.transcripts(path) == {"activated": "Activated.", "digits/1": "One."}


def test_bilabials_closed_open_and_medial() -> None:
    b = _frames(90)
    b[29:33, JAW] = 0.0  # lips closed 0.97-1.1 s
    phones = [R.Phone("sil", 0.0, 0.5), R.Phone("m", 0.5, 0.1), R.Phone("aa", 0.6, 0.4),
              R.Phone("p", 1.0, 0.08), R.Phone("ah", 1.08, 0.5), R.Phone("b", 1.58, 0.1), R.Phone("sil", 1.68, 1.3)]
    # /m/ after the pause: not medial, open; /p/ medial and closed; /b/ medial and open
    assert R.bilabials(b, phones) == [("m", False, False), ("p", True, True), ("b", True, False)]
    assert R.bilabials(b[:20], phones) == [("m", False, False)]  # phones past the frames are not counted


def test_vowels_shut_count_lips_closed_in_a_vowels_middle() -> None:
    b = _frames(90)
    phones = [R.Phone("sil", 0.0, 0.5), R.Phone("m", 0.5, 0.1), R.Phone("aa", 0.6, 0.4), R.Phone("t", 1.0, 0.1),
              R.Phone("iy", 1.1, 0.4), R.Phone("s", 1.5, 0.1), R.Phone("ow", 1.6, 0.6)]
    prompt = R.Prompt("x", "", np.zeros(1, np.float32), phones, slice(0, 1))
    shut = R.vowels_shut([b], [prompt])
    assert shut == {"beside a bilabial": {"rate": 0.0, "shut": 0, "n": 1},
                    "elsewhere": {"rate": 0.0, "shut": 0, "n": 2}}
    b[38:40, JAW] = 0.0  # closed 1.27-1.33 s: inside /iy/'s middle half (1.2-1.4 s)
    b[24, JAW] = 0.0  # closed at 0.8 s: /aa/'s middle (0.7-0.9 s), beside the /m/
    b[63, JAW] = 0.0  # closed at 2.1 s: past /ow/'s middle half (1.75-2.05 s), not counted
    shut = R.vowels_shut([b], [prompt])
    assert shut["beside a bilabial"]["shut"] == 1 and shut["elsewhere"] == {"rate": 0.5, "shut": 1, "n": 2}


def test_silent_frames_and_rest() -> None:
    phones = [R.Phone("sil", 0.0, 1.0), R.Phone("aa", 1.0, 1.0), R.Phone("sil", 2.0, 1.0)]
    silent = R.silent_frames(phones, 90)
    assert silent[:30].all() and not silent[30:60].any() and silent[60:].all()


def test_loudness_follower_takes_the_models_apertures_in_loudness_order() -> None:
    rng = np.random.default_rng(0)
    T = 60
    model = _frames(T, 0.0)
    model[:, JAW] = rng.uniform(0, 0.6, T)
    t = np.arange(T * motion.SAMPLE_RATE // motion.FPS) / motion.SAMPLE_RATE
    audio = (t * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # louder and louder
    base = R.loudness_follower(model, audio)
    # the model's apertures, narrowest on the quietest frame to widest on the loudest
    np.testing.assert_allclose(motion.lip_aperture(base), np.sort(motion.lip_aperture(model)), atol=1e-6)
    backwards = R.loudness_follower(model, audio[::-1].copy())
    np.testing.assert_allclose(motion.lip_aperture(backwards), np.sort(motion.lip_aperture(model))[::-1], atol=1e-6)


def test_rate_with_interval() -> None:
    rng = np.random.default_rng(0)
    r = R.rate_with_interval([(9, 10), (1, 10), (5, 10)], rng)
    assert r["rate"] == 0.5 and r["n"] == 30
    lo, hi = r["ci95"]
    assert 0.1 <= lo < 0.5 < hi <= 0.9
    same = R.rate_with_interval([(3, 3), (4, 4)], rng)
    assert same["rate"] == 1.0 and same["ci95"] == [1.0, 1.0]
    assert R.rate_with_interval([(0, 0)], rng) == {"rate": None, "ci95": None, "n": 0}


def test_mix_takes_the_snr_from_the_recording_not_the_padding() -> None:
    rng = np.random.default_rng(0)
    voice = rng.standard_normal(16000).astype(np.float32) * 0.1
    audio = np.concatenate([np.zeros(16000, np.float32), voice, np.zeros(16000, np.float32)])
    prompt = R.Prompt("x", "x", audio, [], slice(16000, 32000))
    noise = rng.standard_normal(5000).astype(np.float32)
    mixed = R.mix(prompt, noise, 10.0)
    added = mixed - audio
    snr = 10 * np.log10(np.mean(voice.astype(np.float64) ** 2) / np.mean(added.astype(np.float64) ** 2))
    assert added.size == audio.size and abs(snr - 10.0) < 0.01
    assert np.abs(added[:16000]).mean() > 0  # the noise plays through the padding too


@needs_prompts
def test_prompts_align_to_their_transcripts() -> None:
    prompts, _ = R.held_out_prompts(max_prompts=3)
    assert len(prompts) == 3
    for p in prompts:
        speech = [ph for ph in p.phones if ph.name != "sil"]
        assert speech, p.name
        starts = [ph.start for ph in p.phones]
        assert starts == sorted(starts)
        # the voice is where the recording is: the first phone after the padding, the last before its end
        assert R.PAD_S - 0.2 <= speech[0].start <= R.PAD_S + 0.5, (p.name, speech[0])
        end = p.voice.stop / motion.SAMPLE_RATE
        assert end - 0.6 <= speech[-1].start + speech[-1].dur <= end + 0.2, (p.name, speech[-1])
        assert p.audio.size == p.voice.stop + int(R.PAD_S * motion.SAMPLE_RATE)


@needs_prompts
@pytest.mark.slow
def test_a_small_run_writes_its_report(tmp_path: Path) -> None:
    from ksdiff_runtime.backends.select import load_backend

    result = R.evaluate_real(load_backend("onnxruntime", threads=1), tmp_path, max_prompts=3, modes=("bake",),
                             nonspeech_seconds=1.0, noisy_prompts=1)
    saved = json.loads((tmp_path / "real_eval.json").read_text())
    assert saved["prompts"] == result["prompts"] == 3
    speech = saved["speech"]["bake"]
    assert set(speech) == {"model", "gated", "closed + gated", "loudness follower"}
    # the closure only ever closes lips, so on the same bilabials it closes at least as many
    assert speech["closed + gated"]["closure"]["n"] == speech["gated"]["closure"]["n"]
    assert speech["closed + gated"]["closure"]["rate"] >= speech["gated"]["closure"]["rate"]
    for where, shut in speech["closed + gated"]["vowels_shut"].items():
        assert shut["n"] == speech["gated"]["vowels_shut"][where]["n"] > 0
        assert shut["shut"] >= speech["gated"]["vowels_shut"][where]["shut"]
    for run in speech.values():
        r = run["closure"]
        assert r["n"] > 0 and 0.0 <= r["rate"] <= 1.0 and r["ci95"][0] <= r["rate"] <= r["ci95"][1]
        assert run["rest_frames"] > 0 and 0.0 <= run["rest_in_silence"] <= 1.0
    assert all(set(row) == {"bake", "bake + gate", "bake + closure + gate"} for row in saved["nonspeech"].values())
    assert len(saved["nonspeech"]) == 2 * (len(R.nonspeech.PROCEDURAL) + len(R.nonspeech.recorded_music(1.0)))
    assert all(-1.0 <= v <= 1.0 for row in saved["noisy_speech"].values() for v in row.values())
    assert {t["run"] for t in saved["targets"]} == {"bake", "bake + gate", "bake + closure + gate"}
    report = (tmp_path / "real_eval.md").read_text()
    assert "| bake: loudness follower |" in report and "| bake + closure + gate |" in report and "Targets" in report
    assert (tmp_path / "real_eval.png").stat().st_size > 10_000


@needs_prompts
@pytest.mark.slow
def test_live_runs_take_the_closure_from_an_engine_that_runs_it(tmp_path: Path, monkeypatch) -> None:
    """A live run's "+ closure" frames come from an engine built with the closure (a bake's are closed after), and
    without a closure there are no such runs."""
    from ksdiff_runtime.backends.select import load_backend

    engines = []
    real_frames = R.live_frames

    def live_frames(engine, audios, seed=0):
        engines.append(engine.closure)
        return real_frames(engine, audios, seed)

    monkeypatch.setattr(R, "live_frames", live_frames)
    backend = load_backend("onnxruntime", threads=1)
    result = R.evaluate_real(backend, tmp_path, max_prompts=1, modes=("live",), nonspeech_seconds=0.5,
                             noisy_prompts=1)
    assert set(engines) == {None, R.DEFAULT_CLOSURE}
    assert set(result["speech"]["live"]) == {"model", "gated", "closed + gated", "loudness follower"}
    assert all("live + closure + gate" in row for row in result["noisy_speech"].values())
    plain = R.evaluate_real(backend, tmp_path / "off", max_prompts=1, modes=("bake",), nonspeech_seconds=0.5,
                            noisy_prompts=1, closure=None)
    assert "closed + gated" not in plain["speech"]["bake"]
    assert {t["run"] for t in plain["targets"]} == {"bake", "bake + gate"}


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bake"):
        R.evaluate_real(None, tmp_path, modes=("offline",))  # type: ignore[arg-type]
