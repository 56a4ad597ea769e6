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
    for name in motion.REGIONS["brows"]:
        blend[:, motion.BLENDSHAPE_INDEX[name]] = 0.2 * (1 + np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))) / 2
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
    gains = [S.style_for(name).gains()["head"] for name in S.STYLES]
    assert gains[0] < 1.0 < gains[-1]  # the model's own head lies between the stillest and liveliest take


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


def test_the_profile_measures_the_heads_brows_and_jaws_motion() -> None:
    blend, head = take(head_deg=2.0)
    p = S.StyleProfile.of(blend, head)
    assert p.head == pytest.approx(np.deg2rad(2.0) / np.sqrt(2), rel=0.1)  # a sine's std
    blend2, head2 = take(head_deg=4.0)
    blend2[:, JAW] *= 1.5
    p2 = S.StyleProfile.of(blend2, head2)
    assert p2.head == pytest.approx(2 * p.head, rel=1e-4) and p2.articulation == pytest.approx(1.5 * p.articulation)
    assert p2.expression == pytest.approx(p.expression)


def test_gains_are_the_takes_motion_over_the_models_own_within_bounds() -> None:
    own = S.StyleProfile(head=0.01, expression=0.02, articulation=0.3)
    g = S.Style("t", S.StyleProfile(head=0.02, expression=0.01, articulation=0.45)).gains(own)
    assert g == pytest.approx({"head": 2.0, "brows": 0.5, "jaw": 1.5, "mouth": 1.5})
    frozen = S.Style("t", S.StyleProfile(head=0.0, expression=0.0, articulation=0.0)).gains(own)
    wild = S.Style("t", S.StyleProfile(head=1.0, expression=1.0, articulation=1.0)).gains(own)
    assert frozen == {"head": 0.25, "brows": 0.25, "jaw": 0.5, "mouth": 0.5}
    assert wild == {"head": 6.0, "brows": 6.0, "jaw": 2.0, "mouth": 2.0}


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
])
def test_a_broken_take_is_a_clear_error_naming_the_file(tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "take.csv"
    if content == "short":
        write_take(path, *take(seconds=1.0))
    elif content == "nan":
        blend, head = take()
        head[5, 1] = np.nan
        write_take(path, blend, head)
    elif content == "text":
        write_take(path, *take())
        path.write_text(path.read_text().replace(",0.", ",x.", 1))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(S.StyleError, match=re.escape(says)) as e:
        S.read_reference(path)
    assert str(path) in str(e.value)


def test_a_json_that_is_not_a_bake_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "take.json"
    path.write_text('{"frames": []}')
    with pytest.raises(S.StyleError, match="not a bake JSON"):
        S.read_reference(path)


# --- the controls ----------------------------------------------------------------------------------------
def test_a_style_scales_the_models_motion_and_not_a_moods_pose() -> None:
    blend, head = take()
    values = np.concatenate([blend, head], axis=1)
    lively = Controls.from_dict({"style": "lively"})
    g = lively.style.gains()
    out = ControlStage(lively, motion.FPS).shape(values)
    np.testing.assert_allclose(out[:, D:], values[:, D:] * g["head"], rtol=1e-5)
    np.testing.assert_allclose(out[:, BROW], np.clip(values[:, BROW] * g["brows"], 0, 1), rtol=1e-5)
    np.testing.assert_allclose(out[:, JAW], np.clip(values[:, JAW] * g["jaw"], 0, 1), rtol=1e-5)
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
    before = motion.lip_aperture(rows[:, :D])
    animated = Controls.from_dict({"style": "animated"})
    g = animated.style.gains()["mouth"]
    assert g > 1.5
    after = motion.lip_aperture(ControlStage(animated, motion.FPS).shape(rows)[:, :D])
    assert after[0] == pytest.approx(before[0], abs=1e-6) and after[0] < motion.LIP_CLOSED_THRESHOLD
    assert before[1] < after[1] < g * before[1]  # between closed and open: partly kept
    assert after[2] == pytest.approx(g * before[2], rel=1e-5) and after[3] == 0
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
    assert mine.to_dict()["style"] == str(path)
    assert mine.merged({"style": str(path)}).style == mine.style  # a client may keep the server's take
    with pytest.raises(ControlsError, match="unknown style 'sleepy'; built-in styles: none, still"):
        c.merged({"style": "sleepy"})
    with pytest.raises(ControlsError, match=r"unknown style '/etc/passwd\.csv'"):
        Controls().merged({"style": "/etc/passwd.csv"})
