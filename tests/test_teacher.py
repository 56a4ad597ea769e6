"""The procedural teacher and prosody: closures, rest in pauses, shapes and ranges."""

from __future__ import annotations

import numpy as np
import pytest

from ksdiff_runtime.features.prosody import normalized_prosody, prosody, prosody_many, yin
from ksdiff_runtime.motion import FPS, LIP_CLOSED_THRESHOLD, lip_aperture, mouth_at_rest, num_frames
from ksdiff_runtime.training.augment import assemble
from ksdiff_runtime.training.speech import synthesize
from ksdiff_runtime.training.teacher import (
    BILABIAL_PHONEMES,
    STYLE_NAMES,
    VISEMES,
    silent_frames,
    strip_stress,
    teach,
    viseme_of,
)


def _bilabial_centres(phonemes, start, dur) -> list[float]:
    return [
        float(s + d / 2) for p, s, d in zip(phonemes, start, dur, strict=True) if strip_stress(p) in BILABIAL_PHONEMES
    ]


@pytest.mark.parametrize("style_value", [0.0, 0.5, 1.0])
def test_every_bilabial_closes(style_value: float) -> None:
    utt = synthesize("My puppy Bob bumped the big blue map, mmm, maybe.", "en-us+m3", rate=220, pitch=50)
    style = np.full(len(STYLE_NAMES), style_value, dtype=np.float32)
    blend, _ = teach(utt.phonemes, utt.start, utt.duration, len(utt.audio), prosody(utt.audio), style)
    centres = _bilabial_centres(utt.phonemes, utt.start, utt.duration)
    assert len(centres) >= 8
    aperture = lip_aperture(blend)
    for c in centres:
        assert aperture[round(c * FPS)] < LIP_CLOSED_THRESHOLD, f"lips open at bilabial centre {c:.3f} s"


def test_mouth_rests_in_long_pauses_and_shapes() -> None:
    rng = np.random.default_rng(1)
    parts = [synthesize(t, "en-gb-scotland+f2") for t in ("Wow, a huge apple!", "Open your mouth wide.")]
    utt = assemble(parts, rng, min_gap_s=1.0, max_gap_s=1.5)
    T = num_frames(len(utt.audio))
    blend, head = teach(utt.phonemes, utt.start, utt.duration, len(utt.audio), prosody(utt.audio), rng=rng)
    assert blend.shape == (T, 52) and head.shape == (T, 3)
    assert blend.dtype == np.float32 and blend.min() >= 0.0 and blend.max() <= 1.0
    assert np.all(np.isfinite(head)) and np.abs(head).max() < 0.5
    silent = silent_frames(utt.phonemes, utt.start, utt.duration, T)
    # Frames at least 150 ms deep inside a silence must be at rest.
    margin = round(0.15 * FPS)
    deep = silent.copy()
    for shift in range(1, margin + 1):
        deep[shift:] &= silent[:-shift]
        deep[:-shift] &= silent[shift:]
    assert deep.sum() > FPS  # the gaps are long, so there are many such frames
    assert mouth_at_rest(blend)[deep].all()
    # And the mouth does open while speaking.
    assert blend[~silent, 17].max() > 0.3  # jawOpen


def test_viseme_table_is_total() -> None:
    for p in ("p", "'aI", ",u:", "_:", "tS", "@", "zz_unknown", "", "3:"):
        assert viseme_of(p) in VISEMES
    assert viseme_of("b") == viseme_of("m") == "PP"
    assert viseme_of("'u:") == "ou"


def test_teacher_on_empty_and_short_input() -> None:
    blend, head = teach([], np.zeros(0), np.zeros(0), 0)
    assert blend.shape == (0, 52) and head.shape == (0, 3)
    blend, head = teach(["m"], np.array([0.0]), np.array([0.1]), 1600)
    assert blend.shape == (3, 52)


def test_prosody_edge_cases() -> None:
    assert prosody(np.zeros(0)).shape == (0, 2)
    assert prosody(np.zeros(100)).shape == (0, 2)
    p = prosody(np.zeros(16000))
    assert p.shape == (30, 2) and np.all(p[:, 0] == 0) and np.all(p[:, 1] == -100)
    nan = np.full(8000, np.nan, dtype=np.float32)
    assert np.all(np.isfinite(prosody(nan)))
    t = np.arange(16000) / 16000
    tone = prosody(0.3 * np.sin(2 * np.pi * 150 * t))
    assert np.all(np.abs(tone[3:-3, 0] - 150) < 5)
    n = normalized_prosody(tone)
    assert n.shape == tone.shape and np.all(np.isfinite(n)) and np.abs(n).max() < 2


def test_prosody_from_a_row_on_is_the_whole_calls(speech_16k: np.ndarray) -> None:
    """A stream's hop asks for its new frames' prosody only, with earlier frames as the voicing gate's
    context: the rows it gets are exactly the whole call's, at any level and cut, also when a round's
    streams share one call."""
    rng = np.random.default_rng(0)
    segments, rows, wholes = [], [], []
    for _ in range(60):
        s0 = int(rng.integers(0, speech_16k.size - 4000))
        seg = speech_16k[s0 : s0 + int(rng.integers(600, 4000))] * rng.uniform(0.01, 2.0)
        whole = prosody(seg)
        k = int(rng.integers(0, len(whole)))
        part = prosody(seg, from_row=k)
        assert part.shape == whole.shape
        np.testing.assert_array_equal(part[k:], whole[k:])
        segments.append(seg)
        rows.append(k)
        wholes.append(whole)
    # an engine round's streams in one call (silence and a clip shorter than a frame among them)
    segments += [np.zeros(4000, np.float32), np.zeros(100, np.float32)]
    rows += [2, 0]
    wholes += [prosody(segments[-2]), prosody(segments[-1])]
    for got, whole, k in zip(prosody_many(segments, rows), wholes, rows, strict=True):
        assert got.shape == whole.shape
        np.testing.assert_array_equal(got[k:], whole[k:])


@pytest.mark.parametrize("what", ["speech", "noise", "tone", "shorter than a frame", "float64"])
def test_yin_is_librosas(what: str, speech_16k: np.ndarray) -> None:
    """prosody's YIN (numpy alone, no numba compile on first use) gives librosa.yin's F0 to float32 precision."""
    import librosa

    rng = np.random.default_rng(0)
    y = {"speech": speech_16k, "noise": rng.normal(0, 0.1, 20_000).astype(np.float32),
         "tone": (0.3 * np.sin(2 * np.pi * 180 * np.arange(16_000) / 16_000)).astype(np.float32),
         "shorter than a frame": speech_16k[:600], "float64": speech_16k.astype(np.float64)}[what]
    kw = dict(fmin=60.0, fmax=500.0, sr=16_000, frame_length=1024, hop_length=160)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = librosa.yin(y, center=True, **kw)
    got = yin(y, **kw)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    at = np.unique(np.linspace(0, len(ref) - 1, 7).round().astype(int))  # only some frames, as prosody asks
    np.testing.assert_array_equal(yin(y, **kw, at=at), got[at])


def test_prosody_on_speech_is_voiced_in_speech_only() -> None:
    utt = assemble([synthesize("Hello, how are you today?", "en-us+f3")], np.random.default_rng(0), 0.5, 0.6)
    p = prosody(utt.audio)
    assert p.shape == (num_frames(len(utt.audio)), 2)
    voiced = p[:, 0] > 0
    assert 0.2 < voiced.mean() < 0.9
    assert not voiced[: round(0.4 * FPS)].any()  # the leading silence (>= 0.5 s) is unvoiced
