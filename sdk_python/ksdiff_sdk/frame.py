"""A decoded animation frame (SPEC 4.2) and helpers to drive a rig with it.

``Frame`` holds one frame of one stream: 52 ARKit weights in canonical order (``schema.BLENDSHAPES``),
head rotation and eye gaze in radians, and the timing fields. ``unity_weights`` and ``remap`` turn
the weights into the names and scale of your own rig.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ksdiff_sdk import protocol, schema

_HEAD_INDEX = {name: i for i, name in enumerate(schema.HEAD_ROTATION)}
_GAZE_INDEX = {name: i for i, name in enumerate(schema.GAZE)}


def _unknown_name(name: object, angles: bool = True) -> KeyError:
    """The KeyError for a name that is not one: it lists the names the caller takes (``angles``: head and gaze too)."""
    known = f"unknown blendshape {name!r}; known names (ARKit, canonical order): {', '.join(schema.BLENDSHAPES)}"
    if angles:
        known += f"; head: {', '.join(schema.HEAD_ROTATION)}; gaze: {', '.join(schema.GAZE)}"
    elif name in _HEAD_INDEX or name in _GAZE_INDEX:
        known = f"{name!r} is an angle in radians, not a blendshape weight (frame[{name!r}] reads it); {known}"
    return KeyError(known)


# eq=False: numpy arrays make the generated __eq__ ambiguous; frames compare by identity.
@dataclass(slots=True, eq=False)
class Frame:
    """One animation frame of one stream (SPEC 4.2).

    ``blendshapes``: float32 [52], ARKit weights 0..1 in canonical order; ``head``: float32 [3]
    ``[headPitch, headYaw, headRoll]`` rad; ``gaze``: float32 [4]
    ``[leftEyeYaw, leftEyePitch, rightEyeYaw, rightEyePitch]`` rad. Show the frame at your
    audio clock's ``t_audio`` (SPEC 6), not when it arrives. ``captured_ns``/``published_ns`` are
    the runtime host's monotonic clock: only their difference (``latency_ms``) means anything.
    """

    stream: str
    seq: int
    index: int
    fps: int
    t_audio: float
    blendshapes: np.ndarray
    head: np.ndarray
    gaze: np.ndarray
    captured_ns: int | None
    published_ns: int
    lookahead_ms: float
    compute_ms: float
    last: bool

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> Frame:
        """A Frame from a decoded ``frame`` message (``protocol.decode`` output)."""
        if msg.get("type") != "frame":
            raise ValueError(f"not a frame message: type {msg.get('type')!r}")
        blendshapes, head, gaze = protocol.frame_arrays(dict(msg))
        return cls(
            stream=msg["stream"],
            seq=int(msg["seq"]),
            index=int(msg["index"]),
            fps=int(msg["fps"]),
            t_audio=float(msg["t_audio"]),
            blendshapes=blendshapes,
            head=head,
            gaze=gaze,
            captured_ns=None if msg["captured_ns"] is None else int(msg["captured_ns"]),
            published_ns=int(msg["published_ns"]),
            lookahead_ms=float(msg["lookahead_ms"]),
            compute_ms=float(msg["compute_ms"]),
            last=bool(msg["last"]),
        )

    def encode(self) -> tuple[bytes, bytes]:
        """(topic, payload) of this frame on the wire (``protocol.encode_frame``)."""
        return protocol.encode_frame(self.stream, self.seq, self.index, self.fps, self.t_audio, self.blendshapes,
                                     self.head, self.gaze, self.captured_ns, self.published_ns, self.lookahead_ms,
                                     self.compute_ms, self.last)

    def __getitem__(self, name: str) -> float:
        """A weight by ARKit name (``frame["jawOpen"]``); head and gaze angles by their names too."""
        if name in schema.BLENDSHAPE_INDEX:
            return float(self.blendshapes[schema.BLENDSHAPE_INDEX[name]])
        if name in _HEAD_INDEX:
            return float(self.head[_HEAD_INDEX[name]])
        if name in _GAZE_INDEX:
            return float(self.gaze[_GAZE_INDEX[name]])
        raise _unknown_name(name)

    def weights(self) -> dict[str, float]:
        """ARKit name -> weight (0..1), in canonical order."""
        return dict(zip(schema.BLENDSHAPES, self.blendshapes.tolist(), strict=True))

    @property
    def latency_ms(self) -> float | None:
        """The runtime's end-to-end latency for this frame (published - captured), None when unknown."""
        if self.captured_ns is None:
            return None
        return (self.published_ns - self.captured_ns) / 1e6


def remap(frame: Frame, mapping: Mapping[str, str], scale: float = 1.0) -> dict[str, float]:
    """``{your_name: weight * scale}`` for each ``{arkit_name: your_name}`` in ``mapping``.

    ARKit names not in ``mapping`` are left out; an ARKit name the protocol does not know, or two
    ARKit names mapped to the same target, raise (a typo would otherwise silently freeze a shape)."""
    out: dict[str, float] = {}
    for arkit_name, target in mapping.items():
        if arkit_name not in schema.BLENDSHAPE_INDEX:
            raise _unknown_name(arkit_name, angles=False)
        if target in out:
            raise ValueError(f"two ARKit blendshapes map to {target!r}; map each target name once")
        out[target] = float(frame.blendshapes[schema.BLENDSHAPE_INDEX[arkit_name]]) * scale
    return out


def unity_weights(frame: Frame, mapping: Mapping[str, str] | None = None) -> dict[str, float]:
    """Weights on Unity's SkinnedMeshRenderer scale (0..100), for ``SetBlendShapeWeight``.

    Without ``mapping``: keyed by ARKit name. With ``{arkit_name: your_blendshape_name}``: keyed by
    your names, and ARKit names not in the mapping are dropped."""
    if mapping is None:
        mapping = {name: name for name in schema.BLENDSHAPES}
    # Clamped because the rig would over-drive a shape on a value a hair above 1 (float rounding).
    return {name: min(100.0, max(0.0, w)) for name, w in remap(frame, mapping, 100.0).items()}
