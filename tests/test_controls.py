"""Artists' controls and the ease to rest (ksdiff_runtime/engine/controls.py), through the real engine."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.engine.controls import (
    EASE_S,
    Controls,
    ControlsError,
    ControlStage,
    ease_frames,
    stream_frames,
)
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.stream import Emitted, output_frames
from ksdiff_runtime.motion import SAMPLE_RATE

JAW = motion.BLENDSHAPE_INDEX["jawOpen"]


def run(engine: StreamingEngine, audio: np.ndarray, controls: Controls | None = None, chunk: int = 1600,
        change: tuple[int, Controls] | None = None) -> list:
    """Frames of one stream fed in chunks, one round per chunk; ``change``: (chunk number, new controls)."""
    sid = engine.open_stream(seed=3, controls=controls)
    frames = []
    for k, start in enumerate(range(0, audio.size, chunk)):
        if change is not None and k == change[0]:
            engine.set_controls(sid, change[1])
        engine.push(sid, audio[start : start + chunk])
        while engine.has_work():
            frames += engine.step().frames
    engine.end_stream(sid)
    while engine.has_work():
        frames += engine.step().frames
    return frames


def arrays(frames: list) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([f.blendshapes for f in frames]), np.stack([f.head for f in frames])


@pytest.fixture(scope="module")
def engine(serve_engine):
    """The bundled model (a random tiny one barely opens the jaw), its own engine. The controls alone: a mood is
    its expression here, the network not told of it (mood guidance 0; the network's mood: test_mood_guidance.py)."""
    e = StreamingEngine(serve_engine.backend, "low-latency", front_end=serve_engine.front_end, mood_guidance=0.0)
    yield e
    e.close()


def test_default_controls_change_nothing(engine, speech_16k):
    plain = run(engine, speech_16k)
    explicit = run(engine, speech_16k, Controls.from_dict({"strength": {"mouth": 1.0}, "timing_offset_ms": 0}))
    b0, h0 = arrays(plain)
    b1, h1 = arrays(explicit)
    np.testing.assert_array_equal(b0, b1)
    np.testing.assert_array_equal(h0, h1)


def test_strength_gain_offset_and_clamp(engine, speech_16k):
    b0, h0 = arrays(run(engine, speech_16k))
    n = output_frames(speech_16k.size, motion.FPS)  # the audio's frames (the ease follows)
    c = Controls.from_dict({"strength": {"mouth": 0.0, "jaw": 0.5, "head": 2.0},
                            "shapes": {"browInnerUp": {"gain": 2.0, "offset": 0.1, "max": 0.6}}})
    b, h = arrays(run(engine, speech_16k, c))
    mouth = [motion.BLENDSHAPE_INDEX[name] for name in motion.REGIONS["mouth"]]
    assert np.all(b[:, mouth] == 0.0)
    np.testing.assert_allclose(b[:n, JAW], 0.5 * b0[:n, JAW], atol=1e-6)
    np.testing.assert_allclose(h[:n], 2.0 * h0[:n], atol=1e-6)
    brow = motion.BLENDSHAPE_INDEX["browInnerUp"]
    np.testing.assert_allclose(b[:n, brow], np.clip(2.0 * b0[:n, brow] + 0.1, 0.0, 0.6), atol=1e-6)
    eyes = [motion.BLENDSHAPE_INDEX[name] for name in motion.REGIONS["eyes"]]
    np.testing.assert_array_equal(b[:n, eyes], b0[:n, eyes])  # regions not named are untouched
    # the rest pose keeps the offset: the ease ends there, not at zero
    assert b[-1, brow] == pytest.approx(0.1) and b[-1, JAW] == 0.0


def test_smoothing_slows_a_region_only(engine, speech_16k):
    b0 = arrays(run(engine, speech_16k))[0]
    b = arrays(run(engine, speech_16k, Controls.from_dict({"smoothing_ms": {"jaw": 150.0}})))[0]
    n = output_frames(speech_16k.size, motion.FPS)
    assert np.abs(np.diff(b[:n, JAW])).mean() < 0.5 * np.abs(np.diff(b0[:n, JAW])).mean()
    others = [i for i, name in enumerate(motion.BLENDSHAPES) if name not in motion.REGIONS["jaw"]]
    np.testing.assert_allclose(b[:n, others], b0[:n, others], atol=1e-6)


@pytest.mark.parametrize("offset_ms", [100.0, -100.0])
def test_timing_offset_moves_the_animation_on_the_audio_clock(engine, speech_16k, offset_ms):
    """+100 ms: frame i shows the motion of frame i - 3 (at 30 fps); -100 ms: of frame i + 3. The frames
    keep their indices, count and clock; anticipation holds frames back until the motion they show exists."""
    base = run(engine, speech_16k)
    shifted = run(engine, speech_16k, Controls.from_dict({"timing_offset_ms": offset_ms}))
    assert [f.index for f in shifted] == [f.index for f in base] == list(range(len(base)))
    n = output_frames(speech_16k.size, motion.FPS)
    k = 3
    b0, b = arrays(base)[0][:n], arrays(shifted)[0][:n]
    if offset_ms > 0:
        np.testing.assert_allclose(b[k:], b0[:-k], atol=1e-6)
        np.testing.assert_allclose(b[:k], np.repeat(b0[:1], k, 0), atol=1e-6)  # before the start: the first
    else:
        np.testing.assert_allclose(b[:-k], b0[k:], atol=1e-6)
        np.testing.assert_allclose(b[-k:], np.repeat(b0[-1:], k, 0), atol=1e-6)  # after the end: the last


def test_anticipation_holds_frames_back_by_the_offset():
    stage = ControlStage(Controls.from_dict({"timing_offset_ms": -100.0}), 30)
    values = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 55), np.float32) / 10
    out = stage.apply(Emitted(list(range(5)), values[:5], [1] * 5, [False] * 5))
    assert out.index == [0, 1]  # frames 2.. show motion 5.., not there yet
    np.testing.assert_allclose(out.values[:, 0], [0.3, 0.4])
    out = stage.apply(Emitted(list(range(5, 10)), values[5:], [2] * 5, [False] * 4 + [True]))
    assert out.index[:8] == list(range(2, 10))  # the final hop releases the rest (clamped at the end)
    np.testing.assert_allclose(out.values[:8, 0], [0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9])
    assert out.captured_ns[:8] == [1, 1, 1, 2, 2, 2, 2, 2]  # each frame keeps its own audio's arrival
    assert out.last == [False] * (len(out.index) - 1) + [True]


@pytest.mark.parametrize("offset_ms", [200.0, -200.0, 30.0])
def test_timing_offset_shifts_a_line_hop_of_hundreds_of_frames(offset_ms):
    """A line's hop hands over all of its frames at once (hundreds), more than the few rows of history the timing
    keeps between hops: every frame is still sampled from the motion ``offset_ms`` earlier. It used to interpolate
    on the hop's last 17 rows alone, so the frames before them were clamped to one value: a line's mouth stood
    still in plateaus, shifted the wrong way."""
    fps, n = 30, 300
    shift = offset_ms * fps / 1000
    t = np.arange(n, dtype=np.float64)
    values = (0.5 + 0.4 * np.sin(t / 7))[:, None] * np.ones((1, 55))
    stage = ControlStage(Controls.from_dict({"timing_offset_ms": offset_ms}), fps)
    out = stage.apply(Emitted(list(range(n)), values.astype(np.float32), [0] * n, [False] * (n - 1) + [True]))
    assert out.index[:n] == list(range(n))
    want = np.interp(t - shift, t, values[:, 0])  # clamped to the first and last frame of the stream
    np.testing.assert_allclose(out.values[:n, 0], want, atol=1e-5)


def test_controls_changed_mid_stream_apply_from_the_next_hop(engine, speech_16k):
    frames = run(engine, speech_16k, change=(5, Controls.from_dict({"strength": {"jaw": 0.0}})))
    jaw = arrays(frames)[0][:, JAW]
    late = [i for i, f in enumerate(frames) if f.t_audio > 0.6]
    assert np.all(jaw[late] == 0.0)
    assert jaw[: late[0]].max() > 0.0  # before the change it moved


def test_every_stream_eases_to_rest_after_its_audio(engine, speech_16k):
    for fps in (30, 60):
        e = StreamingEngine(engine.backend, "low-latency", fps=fps, front_end=engine.front_end)
        frames = run(e, speech_16k)
        n = output_frames(speech_16k.size, fps)
        assert len(frames) == stream_frames(speech_16k.size, fps) == n + ease_frames(fps)
        ease = frames[n:]
        end = speech_16k.size / SAMPLE_RATE
        assert all(end <= f.t_audio <= end + EASE_S + 1e-9 for f in ease)
        assert [f.last for f in frames] == [False] * (len(frames) - 1) + [True]
        assert not frames[-1].blendshapes.any() and not frames[-1].head.any() and not frames[-1].gaze.any()
        # monotone towards rest
        dist = [np.abs(f.blendshapes).sum() + np.abs(f.head).sum() for f in frames[n - 1 :]]
        assert all(a >= b - 1e-6 for a, b in itertools.pairwise(dist))


def test_a_stream_cut_short_eases_from_its_last_frame(engine, speech_16k):
    sid = engine.open_stream()
    engine.push(sid, speech_16k)
    frames = []
    while engine.has_work() and len(frames) < 20:
        frames += engine.step().frames
    session = engine.sessions.get(sid)
    closing = engine.closing_frames(session)
    assert [f.index for f in closing] == list(range(frames[-1].index + 1, frames[-1].index + 1 + ease_frames(30)))
    assert closing[-1].last and not any(f.last for f in closing[:-1]) and not closing[-1].blendshapes.any()
    assert engine.closing_frames(session) == []  # once
    engine.sessions.finish(session)
    engine.sessions.remove(session)


@pytest.mark.parametrize("bad", [
    {"strength": {"mouth": 4}},
    {"strength": {"nose": 1}},
    {"strength": {"mouth": float("nan")}},
    {"strength": {"mouth": True}},
    {"shapes": {"jawOpenn": {"gain": 1}}},
    {"shapes": {"jawOpen": {"gain": -1}}},
    {"shapes": {"jawOpen": {"min": 0.6, "max": 0.4}}},
    {"shapes": {"jawOpen": {"gian": 2}}},
    {"shapes": {"jawOpen": 2}},
    {"shapes": {"jawOpen": {"gain": 1.0, b"x": 1, "y": 2}}},  # msgpack keys of both kinds (once a TypeError)
    {"smoothing_ms": {"head": 5000}},
    {"timing_offset_ms": 900},
    {"timing_offset_ms": "soon"},
    {"speed": 2},
    {"mood": "excited"},
    {"mood": 3},
    {"mood": "Happy"},
    {"mood_intensity": 1.5},
    {"mood_intensity": "lots"},
    [1, 2],
])
def test_bad_controls_are_refused_with_a_message_naming_them(bad):
    with pytest.raises(ControlsError) as err:
        Controls.from_dict(bad)
    message = str(err.value)
    assert len(message) < 1200
    if isinstance(bad, dict):
        key = next(iter(bad))
        assert key in message or "unknown" in message
        if key == "mood":  # the message names every mood allowed
            assert all(m in message for m in motion.MOODS)


def test_controls_round_trip_and_merge():
    c = Controls.from_dict({"strength": {"jaw": 1.5}, "shapes": {"jawOpen": {"gain": 2}}})
    merged = c.merged({"timing_offset_ms": -40, "shapes": {"mouthClose": {"offset": 0.05}}})
    assert merged.strength["jaw"] == 1.5 and merged.shapes["jawOpen"].gain == 2.0
    assert merged.shapes["mouthClose"].offset == 0.05 and merged.timing_offset_ms == -40.0
    assert Controls.from_dict(merged.to_dict()).to_dict() == merged.to_dict()
    assert Controls.from_dict(Controls().to_dict()).to_dict() == Controls().to_dict()
    assert not Controls().changes_values
    sad = merged.merged({"mood": "sad", "mood_intensity": 0.25})
    assert (sad.mood, sad.mood_intensity, sad.strength["jaw"]) == ("sad", 0.25, 1.5) and sad.changes_values
    assert sad.merged({"mood": "angry"}).mood_intensity == 0.25  # a new mood keeps the intensity
    assert Controls.from_dict(sad.to_dict()).to_dict() == sad.to_dict()
    assert (Controls().mood, Controls().mood_intensity) == ("neutral", 1.0)  # the default: neutral
    assert not Controls.from_dict({"mood": "happy", "mood_intensity": 0}).changes_values


def test_a_line_cut_mid_vowel_closes_its_mouth_within_the_ease_time(engine, speech_16k):
    """The issue's target: jawOpen < 0.05 within EASE_S of the last audio, for lines cut where the jaw is
    most open (the three highest jawOpen peaks of the sample)."""
    jaw = arrays(run(engine, speech_16k))[0][:, JAW]
    peaks = [i for i in np.argsort(jaw)[::-1] if 5 < i < len(jaw) - 10][:3]
    for peak in peaks:
        cut = speech_16k[: round(peak * SAMPLE_RATE / motion.FPS)]
        frames = run(engine, cut)
        end = cut.size / SAMPLE_RATE
        audio = [f for f in frames if f.t_audio < end]
        assert audio[-1].blendshapes[JAW] > 0.05, "cut where the mouth is open"
        closed = [f.t_audio - end for f in frames if f.t_audio >= end and f.blendshapes[JAW] < 0.05]
        assert closed and closed[0] <= EASE_S, (peak, closed)
        print(f"cut at frame {peak}: jawOpen {audio[-1].blendshapes[JAW]:.2f} at the cut, < 0.05 after "
              f"{1000 * closed[0]:.0f} ms (ease {1000 * EASE_S:.0f} ms)")


@pytest.mark.parametrize("fps", [30, 60])
def test_the_ease_closes_a_wide_open_mouth_within_its_time(fps):
    stage = ControlStage(Controls(), fps)
    wide = np.zeros((1, 55), np.float32)
    wide[0, JAW], wide[0, -2] = 1.0, 0.3  # jaw fully open, head turned
    out = stage.apply(Emitted([7], wide, [1], [True]))
    assert out.index == list(range(7, 8 + ease_frames(fps))) and out.last[-1] and not any(out.last[:-1])
    t = (np.array(out.index) - 7) / fps
    assert t[-1] <= EASE_S and out.values[-1].tolist() == [0.0] * 55
    assert np.all(np.diff(out.values[:, JAW]) <= 0)


# --- mood (SPEC 4.6 "Controls", 1.3) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def neutral_run(engine, speech_16k):
    return arrays(run(engine, speech_16k))


@pytest.mark.parametrize("mood", [m for m in motion.MOODS if m != motion.DEFAULT_MOOD])
def test_a_mood_shows_holds_through_silence_and_never_opens_the_lips(engine, speech_16k, neutral_run, mood):
    """Through the real engine and model: the mood's pose is on the face while it speaks and after (the rest
    pose and the end of the ease keep it), the lips are never further apart than without it, and the jaw
    follows the speech as before."""
    b0, h0 = neutral_run
    b, h = arrays(run(engine, speech_16k, Controls.from_dict({"mood": mood})))
    n = output_frames(speech_16k.size, motion.FPS)
    expression = motion.MOOD_EXPRESSIONS[mood]
    for name, weight in expression.pose.items():
        i = motion.BLENDSHAPE_INDEX[name]
        if not name.startswith("eye"):  # (eye poses give way to blinks)
            assert b[-1, i] == pytest.approx(min(1.0, weight), abs=1e-6), name  # the ease ends at the mood's rest
        assert b[:n, i].mean() >= b0[:n, i].mean() + 0.5 * weight, name
    assert h[-1, 0] == pytest.approx(expression.head_pitch, abs=1e-6)
    gain = expression.gain.get("head", 1.0)  # the head livelier or calmer, around the mood's pitch
    np.testing.assert_allclose(h[:n], gain * h0[:n] + [expression.head_pitch, 0, 0], atol=1e-5)
    assert np.all(motion.lip_aperture(b) <= motion.lip_aperture(b0) + 1e-6)
    assert np.corrcoef(b[:n, JAW], b0[:n, JAW])[0, 1] > 0.999
    closed0 = motion.lip_aperture(b0[:n]) < motion.LIP_CLOSED_THRESHOLD
    assert np.all(motion.lip_aperture(b[:n])[closed0] < motion.LIP_CLOSED_THRESHOLD)  # every closure kept


def test_mood_intensity_scales_it_and_zero_is_neutral(engine, speech_16k, neutral_run):
    b0, h0 = neutral_run
    b, h = arrays(run(engine, speech_16k, Controls.from_dict({"mood": "happy", "mood_intensity": 0.0})))
    np.testing.assert_array_equal(b, b0)
    np.testing.assert_array_equal(h, h0)
    smile = motion.BLENDSHAPE_INDEX["mouthSmileLeft"]
    half = arrays(run(engine, speech_16k, Controls.from_dict({"mood": "happy", "mood_intensity": 0.5})))[0]
    assert half[-1, smile] == pytest.approx(0.5 * motion.MOOD_EXPRESSIONS["happy"].pose["mouthSmileLeft"])


def test_a_mood_set_mid_stream_applies_from_the_next_hop(engine, speech_16k):
    frames = run(engine, speech_16k, change=(10, Controls.from_dict({"mood": "angry"})))
    brow = motion.BLENDSHAPE_INDEX["browDownLeft"]
    b = arrays(frames)[0][:, brow]
    assert b[:5].max() < 0.3 and b[-1] == pytest.approx(motion.MOOD_EXPRESSIONS["angry"].pose["browDownLeft"])


def test_a_moods_eye_pose_gives_way_to_a_blink():
    stage = ControlStage(Controls.from_dict({"mood": "surprised"}), motion.FPS)
    rows = np.zeros((3, 55), np.float32)
    blink, wide = motion.BLENDSHAPE_INDEX["eyeBlinkLeft"], motion.BLENDSHAPE_INDEX["eyeWideLeft"]
    rows[:, blink] = [0.0, 0.5, 1.0]  # the left eye blinks, the right one does not
    out = stage.shape(rows)
    full = motion.MOOD_EXPRESSIONS["surprised"].pose["eyeWideLeft"]
    np.testing.assert_allclose(out[:, wide], [full, 0.5 * full, 0.0], atol=1e-6)
    np.testing.assert_allclose(out[:, motion.BLENDSHAPE_INDEX["eyeWideRight"]], full, atol=1e-6)
    np.testing.assert_allclose(out[:, blink], rows[:, blink])  # the blink itself is the model's
