"""A style reference (engine/style.py): takes read as users hand them, their profile, the gains, and the
controls stage applying them."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.engine import style as S
from ksdiff_runtime.engine.controls import Controls, ControlsError, ControlStage
from ksdiff_runtime.outputs import files

D = motion.NUM_BLENDSHAPES
JAW = motion.BLENDSHAPE_INDEX["jawOpen"]
BROW = motion.BLENDSHAPE_INDEX["browInnerUp"]


def take(seconds: float = 3.0, fps: int = 30, head_deg: float = 2.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A face moving: the jaw opening and closing, brows raising, the head turning about all three axes."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * fps)) / fps
    blend = np.zeros((len(t), D), np.float32)
    blend[:, JAW] = 0.3 * (1 + np.sin(2 * np.pi * 4 * t)) / 2
    for name in ("browInnerUp", "browOuterUpLeft", "browOuterUpRight"):  # raises on accents, from rest
        raise_ = np.clip(np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)), 0, 1)
        blend[:, motion.BLENDSHAPE_INDEX[name]] = 0.1 * raise_**2
    head = np.deg2rad(head_deg) * np.stack([np.sin(2 * np.pi * f * t + p) for f, p in ((0.5, 0), (0.3, 1), (0.4, 2))],
                                           axis=1)
    return blend, head.astype(np.float32)


def write_take(path: Path, blend: np.ndarray, head: np.ndarray, fps: int = 30) -> Path:
    if path.suffix == ".json":
        files.write_json(path, blend, head, motion.gaze_from_blendshapes(blend), fps, "test")
    else:
        files.write_csv(path, blend, head, motion.gaze_from_blendshapes(blend), fps)
    return path


# --- references ------------------------------------------------------------------------------------
def test_the_built_in_takes_go_from_least_motion_to_most() -> None:
    profiles = [S.style_for(name).profile for name in S.STYLES]
    for q in ("head", "expression", "articulation"):
        values = [getattr(p, q) for p in profiles]
        assert values == sorted(values) and len(set(values)) == len(values), (q, values)
    gains = [S.style_for(name).gains(S.MODEL_PROFILES["live"])["head"] for name in S.STYLES]
    # the model's live head, with the liveliness stage's sway, moves about as much as the natural take's
    assert gains == sorted(gains) and gains[0] < 0.5 and gains[-1] > 2.0


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_bake_file_reads_back_as_the_motion_it_holds(tmp_path: Path, suffix: str) -> None:
    blend, head = take()
    b, h = S.read_reference(write_take(tmp_path / f"take{suffix}", blend, head))
    np.testing.assert_allclose(b, blend, atol=1e-5)
    np.testing.assert_allclose(h, head, atol=1e-5)  # the Live Link Face convention undone: our pitch, yaw, roll


def test_a_live_link_face_take_is_read_by_column_name_and_its_own_frame_rate(tmp_path: Path) -> None:
    """As the iPhone app records: 60 fps timecodes, columns in another order, extra columns."""
    from ksdiff_runtime.outputs import livelink

    blend, head = take(seconds=4.0, fps=60)
    values = livelink.values(blend, head, motion.gaze_from_blendshapes(blend))
    names = list(livelink.VALUE_NAMES)
    order = np.random.default_rng(1).permutation(len(names))
    path = tmp_path / "MySlate_1_iPhone.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Timecode", "BlendShapeCount", *[names[i] for i in order], "Extra"])
        for i, row in enumerate(values):
            w.writerow([f"10:20:{30 + i // 60:02d}:{i % 60:02d}.123", 61, *[f"{row[j]:.6f}" for j in order], 0])
    b, h = S.read_reference(path)
    assert len(b) == 120  # 4 s at 30 fps
    want_b, want_h = take(seconds=4.0, fps=30)
    np.testing.assert_allclose(b, want_b, atol=2e-3)
    np.testing.assert_allclose(h, want_h, atol=2e-4)


@pytest.mark.parametrize(("fps", "seconds", "first_frame", "sep", "bom"), [
    (60, 2.5, 45, ":", False),   # starts late in a second: the first and last seconds are partial
    (30, 2.2, 0, ":", True),     # saved by a spreadsheet: a byte-order mark before the header
    (60, 3.0, 10, ";", False),   # drop-frame timecodes
])
def test_a_takes_frame_rate_comes_from_its_timecodes(tmp_path: Path, fps: int, seconds: float, first_frame: int,
                                                     sep: str, bom: bool) -> None:
    from ksdiff_runtime.outputs import livelink

    blend, head = take(seconds=seconds, fps=fps)
    values = livelink.values(blend, head, motion.gaze_from_blendshapes(blend))
    path = tmp_path / "take.csv"
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Timecode", "BlendShapeCount", *livelink.VALUE_NAMES])
        for i, row in enumerate(values):
            n = first_frame + i
            w.writerow([f"01:02:{n // fps:02d}{sep}{n % fps:02d}.000", 61, *[f"{v:.6f}" for v in row]])
    b, h = S.read_reference(path)
    assert len(b) == int(len(blend) * motion.FPS / fps)
    np.testing.assert_allclose(h, take(seconds=seconds, fps=30)[1][: len(h)], atol=3e-4)


def test_the_profile_measures_the_heads_brows_and_jaws_motion_not_their_posture() -> None:
    blend, head = take(seconds=8.0, head_deg=2.0)
    p = S.StyleProfile.of(blend, head)
    assert p.head == pytest.approx(np.deg2rad(2.0) / np.sqrt(2), rel=0.2)  # about a sine's RMS
    blend2, head2 = take(seconds=8.0, head_deg=4.0)
    blend2[:, JAW] *= 1.5
    p2 = S.StyleProfile.of(blend2, head2)
    assert p2.head == pytest.approx(2 * p.head, rel=1e-4) and p2.articulation == pytest.approx(1.5 * p.articulation)
    assert p2.expression == pytest.approx(p.expression)
    # a head held tilted, a posture drifting over the take, the brows held raised: not motion
    t = np.arange(len(head)) / motion.FPS
    posture = head + np.deg2rad([5.0, -3.0, 2.0]) + np.deg2rad(1.0) * (t / t[-1])[:, None]
    raised = blend.copy()
    raised[:, BROW] += 0.3
    p3 = S.StyleProfile.of(raised, posture)
    assert p3.head == pytest.approx(p.head, rel=0.05) and p3.expression == pytest.approx(p.expression, rel=1e-4)


def test_gains_are_the_takes_motion_over_the_models_own_within_bounds() -> None:
    own = S.StyleProfile(head=0.01, expression=0.02, articulation=0.3)
    g = S.Style("t", S.StyleProfile(head=0.02, expression=0.01, articulation=0.45)).gains(own)
    assert g == pytest.approx({"head": 2.0, "brows": 0.5, "jaw": 1.5, "mouth": 1.5})
    frozen = S.Style("t", S.StyleProfile(head=0.0, expression=0.0, articulation=0.0)).gains(own)
    wild = S.Style("t", S.StyleProfile(head=1.0, expression=1.0, articulation=1.0)).gains(own)
    assert frozen == {"head": 0.25, "brows": 0.25, "jaw": 0.5, "mouth": 0.5}
    assert wild == {"head": 12.0, "brows": 6.0, "jaw": 2.0, "mouth": 2.0}


# --- bad input ---------------------------------------------------------------------------------------
def test_no_style_is_none_and_an_unknown_style_names_the_allowed_ones() -> None:
    assert S.style_for("none") is None
    with pytest.raises(S.StyleError, match=r"unknown style 'bouncy'; built-in styles: none, still, calm, natural, "
                                           r"lively, animated$"):
        S.style_for("bouncy")
    with pytest.raises(S.StyleError, match="style must be one of none, still"):
        S.style_for(3)  # type: ignore[arg-type]


def test_a_file_is_a_style_only_where_files_are_allowed(tmp_path: Path) -> None:
    path = write_take(tmp_path / "me.csv", *take())
    with pytest.raises(S.StyleError, match=r"unknown style .*me\.csv'; built-in styles"):
        S.style_for(str(path))  # what a client's request gets: no reading the server's files
    assert S.style_for(str(path), allow_files=True).profile == S.StyleProfile.of(*S.read_reference(path))


@pytest.mark.parametrize(("content", "says"), [
    (None, "does not exist"),
    ("", "is empty"),
    ("Timecode,BlendShapeCount,JawOpen\n00:00:00:00.000,1,0.5\n", "not a Live Link Face CSV; missing column(s) "
                                                                   "EyeBlinkLeft"),
    ("short", "is 1.00 s long; a take of at least 2 s is needed"),
    ("nan", "non-finite values"),
    ("text", "cannot read it"),
    ("truncated", "cannot read it"),
])
def test_a_broken_take_is_a_clear_error_naming_the_file(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "take.csv"
    if content == "short":
        write_take(path, *take(seconds=1.0))
    elif content == "nan":
        blend, head = take()
        head[5, 1] = np.nan
        write_take(path, blend, head)
    elif content == "truncated":
        write_take(path, *take())
        path.write_text(path.read_text().rstrip("\n").rsplit(",", 30)[0] + "\n")
    elif content == "text":
        write_take(path, *take())
        path.write_text(path.read_text().replace(",0.", ",x.", 1))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(S.StyleError, match=re.escape(says)) as e:
        S.read_reference(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(("doc", "says"), [
    ('{"frames": []}', "not a bake JSON"),
    ("[]", "not a bake JSON"),
    ("FPS0", "its frame rate must be a positive number, got 0.0"),
    ("FPS-30", "its frame rate must be a positive number, got -30.0"),
])
def test_a_json_that_is_not_a_bake_is_refused(tmp_path: Path, doc: str, says: str) -> None:
    path = tmp_path / "take.json"
    if doc.startswith("FPS"):
        write_take(path, *take())
        path.write_text(path.read_text().replace('"fps": 30', f'"fps": {doc[3:]}'))
    else:
        path.write_text(doc)
    with pytest.raises(S.StyleError, match=re.escape(says)):
        S.read_reference(path)


# --- the controls ----------------------------------------------------------------------------------------
def test_a_style_scales_the_models_motion_and_not_its_posture_or_a_moods_pose() -> None:
    blend, head = take(seconds=8.0, head_deg=1.0)
    blend[:, JAW] += 0.15  # lips apart all along (the model's lips are kept only where they are nearly closed)
    head += np.deg2rad([3.0, 0.0, -2.0])  # the model holding its head tilted: the tilt is not scaled
    values = np.concatenate([blend, head], axis=1)
    lively = Controls.from_dict({"style": "lively"})
    stage = ControlStage(lively, motion.FPS)
    g = lively.style.gains(stage.model_profile)
    out = stage.shape(values)
    before, after = S.StyleProfile.of(blend, head), S.StyleProfile.of(out[:, :D], out[:, D:])
    # the level follows the scaled motion a little too, so slow motion grows a little less than the gain
    assert after.head == pytest.approx(g["head"] * before.head, rel=0.1)
    assert after.expression == pytest.approx(g["brows"] * before.expression, rel=0.1)
    np.testing.assert_allclose(out[:, JAW], np.clip(values[:, JAW] * g["jaw"], 0, 1), rtol=1e-5)
    untilted = ControlStage(lively, motion.FPS).shape(np.concatenate([blend, head - head[0]], axis=1))
    np.testing.assert_allclose(out[:, D:] - untilted[:, D:], np.broadcast_to(head[0], head.shape), atol=1e-5)
    eyes = motion.BLENDSHAPE_INDEX["eyeBlinkLeft"]
    np.testing.assert_array_equal(out[:, eyes], values[:, eyes])  # blinks stay whole
    # a mood's held pose is added after the style: a still face keeps the sad brows at their weight
    sad = Controls.from_dict({"style": "animated", "mood": "sad"})
    rest = ControlStage(sad, motion.FPS).neutral()
    assert rest[BROW] == pytest.approx(motion.MOOD_EXPRESSIONS["sad"].pose["browInnerUp"])
    assert not ControlStage(lively, motion.FPS).neutral().any()  # no style moves the rest pose


def test_a_livelier_mouth_keeps_the_lips_the_model_closes_closed() -> None:
    """Articulation above 1 scales the lips' aperture up; where the model's lips are closed (a /p b m/) they stay
    closed, and open lips open further."""
    rows = np.zeros((4, D + motion.NUM_HEAD), np.float32)
    close = motion.BLENDSHAPE_INDEX["mouthClose"]
    rows[:, JAW] = [0.30, 0.30, 0.30, 0.0]
    rows[:, close] = [0.26, 0.20, 0.0, 0.0]  # apertures 0.04 (closed), 0.10 (nearly), 0.30 (open), 0 (rest)
    lower = motion.BLENDSHAPE_INDEX["mouthLowerDownLeft"]
    rows[0, lower] = 0.05  # a lip shape on the closed frame: it stays as the model has it too
    before = motion.lip_aperture(rows[:, :D])
    animated = Controls.from_dict({"style": "animated"})
    stage = ControlStage(animated, motion.FPS)
    g = animated.style.gains(stage.model_profile)["mouth"]
    assert g > 1.5
    shaped = stage.shape(rows)
    after = motion.lip_aperture(shaped[:, :D])
    np.testing.assert_allclose(shaped[0, S.LIP_SHAPES], rows[0, S.LIP_SHAPES])  # closed: the model's lips
    assert after[0] == pytest.approx(before[0], abs=1e-6) and after[0] < motion.LIP_CLOSED_THRESHOLD
    assert before[1] < after[1] < g * before[1]  # between closed and open: partly kept
    assert after[2] == pytest.approx(g * before[2], rel=1e-5) and after[3] == 0
    assert np.all(shaped[:, close] <= np.maximum(shaped[:, JAW], rows[:, close]) + 1e-7)  # no lips through lips
    # below 1 nothing is added: the mouth closes further
    still = motion.lip_aperture(ControlStage(Controls.from_dict({"style": "still"}), motion.FPS).shape(rows)[:, :D])
    assert np.all(still <= before + 1e-7)


def test_controls_carry_the_style_by_name_and_keep_it_until_changed(tmp_path: Path) -> None:
    c = Controls.from_dict({"style": "calm"})
    assert c.to_dict()["style"] == "calm" and c.changes_values
    kept = c.merged({"mood": "happy"})
    assert kept.style == c.style
    assert kept.merged({"style": "none"}).style is None and Controls().to_dict()["style"] == "none"
    assert not Controls.from_dict({"style": "none"}).changes_values
    path = write_take(tmp_path / "me.json", *take())
    mine = Controls.from_dict({"style": str(path)}, allow_files=True)
    assert mine.to_dict()["style"] == "me.json"  # clients see the file's name, not the server's path
    path.unlink()  # what follows reads no file
    assert mine.merged({"style": "me.json"}).style == mine.style  # a client may keep the server's take
    calm = mine.merged({"style": "calm"})
    assert calm.merged({"style": "me.json"}, known=(mine.style,)).style == mine.style  # and come back to it
    with pytest.raises(ControlsError, match=r"unknown style 'me\.json'"):
        calm.merged({"style": "me.json"})  # a name the server did not configure
    with pytest.raises(ControlsError, match="unknown style 'sleepy'; built-in styles: none, still"):
        c.merged({"style": "sleepy"})
    with pytest.raises(ControlsError, match=r"unknown style '/etc/passwd\.csv'"):
        Controls().merged({"style": "/etc/passwd.csv"})
