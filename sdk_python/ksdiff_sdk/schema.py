"""What a frame of animation is on the wire: the one source of truth for names, order and rates.

The runtime (``ksdiff_runtime.motion`` re-exports these) and every client read them from here,
so the blendshape order the model is trained on and the order a client decodes cannot drift
apart. Conventions (head rotation, gaze) are documented in ``protocol/SPEC.md`` section 5.
"""

from __future__ import annotations

FPS = 30
SAMPLE_RATE = 16_000

BLENDSHAPES: tuple[str, ...] = (
    "eyeBlinkLeft",
    "eyeLookDownLeft",
    "eyeLookInLeft",
    "eyeLookOutLeft",
    "eyeLookUpLeft",
    "eyeSquintLeft",
    "eyeWideLeft",
    "eyeBlinkRight",
    "eyeLookDownRight",
    "eyeLookInRight",
    "eyeLookOutRight",
    "eyeLookUpRight",
    "eyeSquintRight",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawRight",
    "jawOpen",
    "mouthClose",
    "mouthFunnel",
    "mouthPucker",
    "mouthLeft",
    "mouthRight",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "noseSneerLeft",
    "noseSneerRight",
    "tongueOut",
)
NUM_BLENDSHAPES = len(BLENDSHAPES)
BLENDSHAPE_INDEX: dict[str, int] = {name: i for i, name in enumerate(BLENDSHAPES)}

HEAD_ROTATION: tuple[str, ...] = ("headPitch", "headYaw", "headRoll")
NUM_HEAD = len(HEAD_ROTATION)

GAZE: tuple[str, ...] = ("leftEyeYaw", "leftEyePitch", "rightEyeYaw", "rightEyePitch")

# A stream's mood (protocol 1.3: the controls' ``mood`` and ``mood_intensity``): how the face is held
# while it speaks and between its words, and (at the server's mood guidance) how it speaks. The runtime's
# table of what each looks like is ksdiff_runtime/motion.py (MOOD_EXPRESSIONS).
MOODS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised")
DEFAULT_MOOD = "neutral"

# A stream's style (protocol 1.4: the controls' ``style``): a built-in reference take whose motion the face
# follows, from least to most (how much the head moves, how lively the brows are, how far the mouth goes),
# or none. The takes are ksdiff_runtime/assets/styles; what is done with them, ksdiff_runtime/engine/style.py.
STYLES: tuple[str, ...] = ("none", "still", "calm", "natural", "lively", "animated")
DEFAULT_STYLE = "none"
