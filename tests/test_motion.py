"""The motion representation is the one source of truth: check what the rest relies on."""

from __future__ import annotations

import numpy as np
import pytest

from ksdiff_runtime import motion


def test_blendshapes_are_the_52_arkit_names_in_canonical_order():
    assert len(motion.BLENDSHAPES) == 52 == len(set(motion.BLENDSHAPES))
    assert motion.BLENDSHAPES[0] == "eyeBlinkLeft" and motion.BLENDSHAPES[-1] == "tongueOut"
    assert motion.BLENDSHAPES.index("jawOpen") == 17
    assert motion.index("mouthClose") == 18
    with pytest.raises(KeyError, match="unknown ARKit blendshape 'jawopen'"):
        motion.index("jawopen")


def test_mouth_region_holds_jaw_mouth_cheek_puff_and_tongue_only():
    names = set(motion.MOUTH_BLENDSHAPES)
    assert {"jawOpen", "mouthClose", "mouthPucker", "cheekPuff", "tongueOut"} <= names
    assert not any(n.startswith(("eye", "brow", "nose")) for n in names)


def test_num_frames_follows_the_audio_clock():
    assert motion.num_frames(16_000) == 30
    assert motion.num_frames(533) == 0
    assert motion.num_frames(534) == 1
    assert motion.num_frames(0) == 0


def pose(**weights: float) -> np.ndarray:
    b = np.zeros(52, dtype=np.float32)
    for name, w in weights.items():
        b[motion.index(name)] = w
    return b


def test_lip_aperture_closed_and_open():
    assert motion.lip_aperture(pose()) < motion.LIP_CLOSED_THRESHOLD
    # jaw open with lips held together (an /m/ with the jaw dropped) is still closed
    assert motion.lip_aperture(pose(jawOpen=0.3, mouthClose=0.3)) < motion.LIP_CLOSED_THRESHOLD
    assert motion.lip_aperture(pose(jawOpen=0.4)) > 0.3
    assert motion.mouth_at_rest(pose())
    assert not motion.mouth_at_rest(pose(jawOpen=0.4))


def test_gaze_signs_follow_the_head_convention():
    # both eyes looking toward the face's own left: left eye looks out, right eye looks in
    g = motion.gaze_from_blendshapes(pose(eyeLookOutLeft=1.0, eyeLookInRight=1.0))
    assert g[0] > 0 and g[2] > 0
    g = motion.gaze_from_blendshapes(pose(eyeLookDownLeft=1.0, eyeLookDownRight=1.0))
    assert g[1] > 0 and g[3] > 0  # pitch + = down
    assert motion.gaze_from_blendshapes(np.zeros((7, 52))).shape == (7, 4)
