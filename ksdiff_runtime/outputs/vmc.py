"""VMC protocol output (OSC over UDP) for VSeeFace, Warudo, VNyan, EVMC4U: one face, one bundle a frame.

Each bundle holds, in this order:

    /VMC/Ext/Blend/Val  (name, value)   the 52 ARKit weights as "Perfect Sync" names (JawOpen, ...)
    /VMC/Ext/Blend/Val  (name, value)   the VRM 0 presets A I U E O Blink Blink_L Blink_R (``vrm_presets``)
    /VMC/Ext/Blend/Apply                receivers apply the values above together
    /VMC/Ext/Bone/Pos   Head, LeftEye, RightEye: position 0 0 0, rotation quaternion in Unity's frame
    /VMC/Ext/OK         1               "a model is loaded and tracking"
    /VMC/Ext/T          t_audio         the frame's time on its stream's audio clock, in seconds

VMC shows one avatar, so one stream goes out: ``stream`` if given, else the first stream that
publishes (the microphone for a VTuber). docs/OUTPUTS.md explains the mappings.
"""

from __future__ import annotations

import math

from pythonosc.parsing import osc_types

from ksdiff_sdk import Frame, schema

from .udp import StreamChoice, UdpOutput, check_stream_id

DEFAULT_PORT = 39539  # what VSeeFace, Warudo, VNyan and EVMC4U listen on by default
DEFAULT_DESTINATION = f"127.0.0.1:{DEFAULT_PORT}"
PERFECT_SYNC_NAMES: tuple[str, ...] = tuple(n[0].upper() + n[1:] for n in schema.BLENDSHAPES)
VRM_PRESETS: tuple[str, ...] = ("A", "I", "U", "E", "O", "Blink", "Blink_L", "Blink_R")

Quaternion = tuple[float, float, float, float]  # (x, y, z, w), as VMC sends it


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def vrm_presets(blendshapes: dict[str, float]) -> dict[str, float]:
    """VRM 0 preset weights (0..1) from ARKit weights by name, for models without Perfect Sync.

    Vowels from how open the jaw is and how the lips are shaped: "round" lips (funnel, pucker)
    make U (jaw nearly closed) and O (jaw open); "spread" lips (stretch, smile) make I (jaw
    nearly closed) and E (jaw open); an open jaw with neither is A. Blink is what both eyes
    share, Blink_L/Blink_R the rest of each eye, so a model that adds the three clips (VRM
    blink clips usually move the same eyelid shapes) closes each eye exactly as far as ARKit
    says, never twice as far."""
    w = blendshapes
    jaw = _clip01(w["jawOpen"])
    round_lips = _clip01(max(w["mouthFunnel"], w["mouthPucker"]))
    spread = _clip01(max((w["mouthStretchLeft"] + w["mouthStretchRight"]) / 2,
                         (w["mouthSmileLeft"] + w["mouthSmileRight"]) / 2))
    blink_l, blink_r = _clip01(w["eyeBlinkLeft"]), _clip01(w["eyeBlinkRight"])
    both = min(blink_l, blink_r)
    return {
        "A": jaw * (1.0 - round_lips) * (1.0 - spread),
        "I": spread * (1.0 - jaw),
        "U": _clip01(w["mouthPucker"]) * (1.0 - jaw),
        # geometric means: E and O need both an open jaw and the lip shape
        "E": math.sqrt(spread * jaw),
        "O": math.sqrt(_clip01(w["mouthFunnel"]) * jaw),
        "Blink": both,
        "Blink_L": blink_l - both,
        "Blink_R": blink_r - both,
    }


def _axis_angle(axis: int, angle: float) -> Quaternion:
    q = [0.0, 0.0, 0.0, math.cos(angle / 2)]
    q[axis] = math.sin(angle / 2)
    return q[0], q[1], q[2], q[3]


def _mul(a: Quaternion, b: Quaternion) -> Quaternion:
    """Hamilton product a*b (b is applied first), (x, y, z, w) order."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz)


def unity_rotation(pitch: float, yaw: float, roll: float = 0.0) -> Quaternion:
    """Our rotation (SPEC 5.2: R = Ry(yaw) Rx(pitch) Rz(roll) in ARKit's right-handed face frame,
    +X the face's own left, +Y up, +Z out of the face) as a Unity quaternion.

    Unity's character frame is left-handed: +X the character's right, +Y up, +Z forward (out of
    the face). It is ours with X negated, a mirror: M R M with M = diag(-1, 1, 1). Mirroring a
    rotation keeps the angle about X and negates the angles about Y and Z, so the quaternion is
    Ry(-yaw) Rx(pitch) Rz(-roll), which is also Unity's Quaternion.Euler(pitch, -yaw, -roll) in
    degrees (Unity applies Z, then X, then Y, the same order as ours)."""
    return _mul(_axis_angle(1, -yaw), _mul(_axis_angle(0, pitch), _axis_angle(2, -roll)))


# OSC encoding with python-osc's own type writers. Not its message and bundle builders: those
# parse every datagram they build back into objects, which made a frame's bundle cost 0.6 ms of
# the io thread; this costs about 0.04 ms and sends the same bytes.
def _message(address: str, tags: str = "", *args: bytes) -> bytes:
    return osc_types.write_string(address) + osc_types.write_string("," + tags) + b"".join(args)


# the bytes of a /VMC/Ext/Blend/Val message before its value never change: built once per name
_BLEND_PREFIX: dict[str, bytes] = {
    name: _message("/VMC/Ext/Blend/Val", "sf", osc_types.write_string(name))
    for name in PERFECT_SYNC_NAMES + VRM_PRESETS
}
_BUNDLE_HEADER = osc_types.write_string("#bundle") + osc_types.write_date(osc_types.IMMEDIATELY)
_APPLY = _message("/VMC/Ext/Blend/Apply")
_OK = _message("/VMC/Ext/OK", "i", osc_types.write_int(1))


def _bone(name: str, q: Quaternion) -> bytes:
    # position 0 0 0: we do not know the model's bone offsets (receivers take VMC bone rotations;
    # one that also applies positions must have that turned off, see docs/OUTPUTS.md)
    return _message("/VMC/Ext/Bone/Pos", "sfffffff", osc_types.write_string(name),
                    *(osc_types.write_float(v) for v in (0.0, 0.0, 0.0, *q)))


def encode_bundle(frame: Frame) -> bytes:
    """One VMC bundle (an OSC datagram, timetag "immediately") for a frame."""
    weights = dict(zip(schema.BLENDSHAPES, (float(w) for w in frame.blendshapes), strict=True))
    messages = [_BLEND_PREFIX[name] + osc_types.write_float(weights[arkit_name])
                for arkit_name, name in zip(schema.BLENDSHAPES, PERFECT_SYNC_NAMES, strict=True)]
    messages += [_BLEND_PREFIX[name] + osc_types.write_float(value) for name, value in vrm_presets(weights).items()]
    messages.append(_APPLY)
    pitch, yaw, roll = (float(v) for v in frame.head)
    left_yaw, left_pitch, right_yaw, right_pitch = (float(v) for v in frame.gaze)
    messages += [_bone("Head", unity_rotation(pitch, yaw, roll)),
                 _bone("LeftEye", unity_rotation(left_pitch, left_yaw)),
                 _bone("RightEye", unity_rotation(right_pitch, right_yaw))]
    messages.append(_OK)
    messages.append(_message("/VMC/Ext/T", "f", osc_types.write_float(float(frame.t_audio))))
    return _BUNDLE_HEADER + b"".join(osc_types.write_int(len(m)) + m for m in messages)


class VmcOutput(UdpOutput):
    """One stream's frames as VMC bundles to HOST:PORT (``stream``, else the first that publishes)."""

    name = "vmc"
    flag = "--vmc"

    def __init__(self, destination: str = DEFAULT_DESTINATION, stream: str | None = None) -> None:
        check_stream_id(stream, "--vmc-stream")
        self.stream = stream or None
        super().__init__(destination, StreamChoice(self.stream, "--vmc-stream"))

    def encode(self, frame: Frame) -> bytes:
        return encode_bundle(frame)
