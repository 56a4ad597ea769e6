"""The motion representation: the one source of truth for what a frame of animation is.

A frame is:
- 52 ARKit blendshape weights in [0, 1], in ARKit's canonical order (``BLENDSHAPES``);
- head rotation (pitch, yaw, roll) in radians (``HEAD_ROTATION``), convention below;
- eye gaze (yaw, pitch) in radians per eye, derived from the eyeLook* blendshapes
  (``gaze_from_blendshapes``), so gaze never disagrees with the eye curves.

Head-rotation convention (ARKit's face frame, right-handed): +X points to the face's
own left, +Y up, +Z out of the face toward the viewer. Rotations are applied as
R = Ry(yaw) @ Rx(pitch) @ Rz(roll).
- pitch: about +X; positive = chin down (nodding down);
- yaw:   about +Y; positive = the face turns toward its own left;
- roll:  about +Z; positive = the head tilts toward its own right shoulder.
Zero is the neutral pose looking straight ahead.

Time: motion runs at ``FPS`` frames per second on the audio clock; frame ``i`` animates
the audio instant ``i / FPS`` seconds from the first sample of its stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ksdiff_sdk.schema import (  # the wire-level facts live in the SDK, the runtime's base package
    BLENDSHAPE_INDEX,
    BLENDSHAPES,
    DEFAULT_MOOD,
    DEFAULT_STYLE,
    FPS,
    GAZE,
    HEAD_ROTATION,
    MOODS,
    NUM_BLENDSHAPES,
    NUM_HEAD,
    SAMPLE_RATE,
    STYLES,
)

__all__ = ["BLENDSHAPES", "BLENDSHAPE_INDEX", "DEFAULT_MOOD", "DEFAULT_STYLE", "FPS", "GAZE", "HEAD_ROTATION", "MOODS",
           "NUM_BLENDSHAPES", "NUM_HEAD", "SAMPLE_RATE", "STYLES"]


# Blendshapes of the mouth region: the ones lip-sync error is measured on.
MOUTH_BLENDSHAPES: tuple[str, ...] = tuple(
    n for n in BLENDSHAPES if n.startswith(("jaw", "mouth", "cheekPuff", "tongue"))
)
MOUTH_INDICES: tuple[int, ...] = tuple(BLENDSHAPE_INDEX[n] for n in MOUTH_BLENDSHAPES)

# Face regions, for artists' controls (engine/controls.py): every blendshape is in exactly one; the
# head rotation is a region of its own ("head"). The cheek and nose shapes move with the mouth.
REGIONS: dict[str, tuple[str, ...]] = {
    "jaw": tuple(n for n in BLENDSHAPES if n.startswith("jaw")),
    "mouth": tuple(n for n in BLENDSHAPES if n.startswith(("mouth", "tongue", "cheek", "nose"))),
    "brows": tuple(n for n in BLENDSHAPES if n.startswith("brow")),
    "eyes": tuple(n for n in BLENDSHAPES if n.startswith("eye")),
}
HEAD_REGION = "head"
assert sorted(n for names in REGIONS.values() for n in names) == sorted(BLENDSHAPES)


@dataclass(frozen=True)
class MoodExpression:
    """What a mood does to a face at full intensity (the artists' controls apply it, scaled by the
    stream's ``mood_intensity``): ``pose`` weights added to the blendshapes (held through speech and
    silence alike), ``gain`` multipliers on a region's motion, ``shape_gain`` on single blendshapes
    (a sad face does not keep the model's smile), ``head_pitch`` radians added (positive: chin down).
    The pose leaves the lips' aperture (``lip_aperture``) as it is or smaller and the jaw alone, and
    no gain opens them, so this expression never opens a closed mouth: articulation is the model's (which
    speaks in the mood itself at the mood guidance: engine/sampling.py)."""

    pose: dict[str, float]
    gain: dict[str, float]
    head_pitch: float = 0.0
    shape_gain: dict[str, float] = field(default_factory=dict)


def _both(**weights: float) -> dict[str, float]:
    """Weights of shapes that come in Left/Right pairs (names without the side) and single shapes."""
    out: dict[str, float] = {}
    for name, w in weights.items():
        pair = name + "Left" in BLENDSHAPE_INDEX
        out.update({name + "Left": w, name + "Right": w} if pair else {name: w})
    return out


# The moods' looks, in the terms of the procedural teacher's expression space (training/teacher.py:
# smile lifts the mouth corners and cheeks; brows carry emphasis; the head's amplitude and its pitch).
MOOD_EXPRESSIONS: dict[str, MoodExpression] = {
    "neutral": MoodExpression(pose={}, gain={}),
    "happy": MoodExpression(_both(mouthSmile=0.55, cheekSquint=0.35, eyeSquint=0.25, mouthDimple=0.1),
                            {"brows": 1.2, "head": 1.2}, head_pitch=-0.035),
    "sad": MoodExpression(_both(browInnerUp=0.55, mouthFrown=0.45, mouthShrugLower=0.2, mouthPress=0.1,
                                eyeLookDown=0.15),
                          {"head": 0.6, "brows": 0.8, "jaw": 0.85, "mouth": 0.85}, head_pitch=0.07,
                          shape_gain=_both(mouthSmile=0.2, cheekSquint=0.3)),
    "angry": MoodExpression(_both(browDown=0.6, noseSneer=0.35, eyeSquint=0.3, mouthFrown=0.2, mouthPress=0.15),
                            {"brows": 1.2, "head": 1.25}, head_pitch=0.035,
                            shape_gain=_both(mouthSmile=0.2, browOuterUp=0.5) | {"browInnerUp": 0.5}),
    "surprised": MoodExpression(_both(browInnerUp=0.6, browOuterUp=0.65, eyeWide=0.5),
                                {"brows": 1.3, "head": 1.1}, head_pitch=-0.05),
}
assert tuple(MOOD_EXPRESSIONS) == MOODS and DEFAULT_MOOD in MOODS
assert all(n in BLENDSHAPE_INDEX for m in MOOD_EXPRESSIONS.values() for n in (*m.pose, *m.shape_gain))
assert all(r in (*REGIONS, HEAD_REGION) for m in MOOD_EXPRESSIONS.values() for r in m.gain)
# the lips' shapes (jaw and mouth regions) scale together and never up, so their aperture only shrinks
assert all(m.gain.get("jaw", 1.0) == m.gain.get("mouth", 1.0) <= 1.0 for m in MOOD_EXPRESSIONS.values())
_LIPS = {"jawOpen", "mouthClose", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
         "mouthFunnel", "mouthPressLeft", "mouthPressRight", "mouthRollLower", "mouthRollUpper"}
assert not any(set(m.shape_gain) & _LIPS for m in MOOD_EXPRESSIONS.values())  # the lips' aperture is the model's

# How far the eyeLook* blendshapes rotate the eye at weight 1 (ARKit's ranges, approximately).
EYE_YAW_RANGE = np.deg2rad(30.0)
EYE_PITCH_UP_RANGE = np.deg2rad(25.0)
EYE_PITCH_DOWN_RANGE = np.deg2rad(30.0)


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE, fps: int = FPS) -> int:
    """Frames a clip of ``num_samples`` audio samples animates (frame i at i / fps s)."""
    return int(num_samples) * fps // sample_rate


def take_frames(x: np.ndarray, start: int, length: int) -> np.ndarray:
    """Frames x[start : start + length] with edge replication outside the clip.

    The one windowing rule shared by training windows and inference windows, so a window
    reaching before a clip's start or past its end looks the same to the model in both.
    """
    idx = np.clip(np.arange(start, start + length), 0, len(x) - 1)
    return x[idx]


def index(name: str) -> int:
    """Index of a blendshape by name; a clear error for an unknown name."""
    try:
        return BLENDSHAPE_INDEX[name]
    except KeyError:
        raise KeyError(f"unknown ARKit blendshape {name!r}; known: {', '.join(BLENDSHAPES)}") from None


def gaze_from_blendshapes(blendshapes: np.ndarray) -> np.ndarray:
    """Eye gaze [..., 4] (left yaw, left pitch, right yaw, right pitch; radians) from [..., 52] weights.

    Yaw follows the head convention (positive = toward the face's own left); pitch positive = down.
    For the left eye, looking out is toward the face's left; for the right eye, looking in is.
    """
    b = np.asarray(blendshapes, dtype=np.float32)

    def w(name: str) -> np.ndarray:
        return b[..., BLENDSHAPE_INDEX[name]]

    left_yaw = (w("eyeLookOutLeft") - w("eyeLookInLeft")) * EYE_YAW_RANGE
    right_yaw = (w("eyeLookInRight") - w("eyeLookOutRight")) * EYE_YAW_RANGE
    left_pitch = w("eyeLookDownLeft") * EYE_PITCH_DOWN_RANGE - w("eyeLookUpLeft") * EYE_PITCH_UP_RANGE
    right_pitch = w("eyeLookDownRight") * EYE_PITCH_DOWN_RANGE - w("eyeLookUpRight") * EYE_PITCH_UP_RANGE
    return np.stack([left_yaw, left_pitch, right_yaw, right_pitch], axis=-1).astype(np.float32)


# --- Lip geometry in blendshape space ------------------------------------------------------
# ARKit's mouthClose closes the lips *against* jawOpen (lips together with the jaw open), so
# the visible gap between the lips grows with jawOpen, shrinks with mouthClose and with the
# lips pressed/rolled in, and grows with the lips pulled down/up. One definition, used by the
# teacher (to make closures), by evaluation (to score them) and by tests.
LIP_CLOSED_THRESHOLD = 0.06  # aperture below this counts as lips closed (bilabial closure)
REST_APERTURE_THRESHOLD = 0.10  # "mouth at rest": aperture and jawOpen both below this


# The gap before clipping is linear in the weights (these coefficients), so a trainer can score it too.
LIP_GAP_COEFFICIENTS: dict[str, float] = {
    "jawOpen": 1.0,
    "mouthClose": -1.0,
    "mouthLowerDownLeft": 0.2,
    "mouthLowerDownRight": 0.2,
    "mouthUpperUpLeft": 0.2,
    "mouthUpperUpRight": 0.2,
    "mouthFunnel": 0.2,
    "mouthPressLeft": -0.15,
    "mouthPressRight": -0.15,
    "mouthRollLower": -0.15,
    "mouthRollUpper": -0.15,
}


def lip_gap_vector() -> np.ndarray:
    """[52] float32: lip_aperture(b) == max(b @ lip_gap_vector(), 0)."""
    v = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
    for name, c in LIP_GAP_COEFFICIENTS.items():
        v[BLENDSHAPE_INDEX[name]] = c
    return v


_LIP_GAP = lip_gap_vector()  # built once: lip_aperture runs on every hop's frames


def lip_aperture(blendshapes: np.ndarray) -> np.ndarray:
    """Approximate lip opening [...] (0 = lips sealed, ~1 = wide open) from [..., 52] weights."""
    b = np.asarray(blendshapes, dtype=np.float32)
    return np.clip(b @ _LIP_GAP, 0.0, None)


def mouth_at_rest(blendshapes: np.ndarray) -> np.ndarray:
    """Boolean [...]: lips nearly closed and jaw nearly shut (a silent, resting mouth)."""
    b = np.asarray(blendshapes, dtype=np.float32)
    jaw = b[..., BLENDSHAPE_INDEX["jawOpen"]]
    return (lip_aperture(b) < REST_APERTURE_THRESHOLD) & (jaw < REST_APERTURE_THRESHOLD)
