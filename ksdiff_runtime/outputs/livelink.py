"""Live Link Face output: the UDP packet stock Unreal's "Live Link Face (Apple ARKit)" source reads.

One packet per frame and stream, network byte order (docs/OUTPUTS.md has the field choices):

    u8  version = 6
    i32 length, device id (UTF-8)
    i32 length, subject name (UTF-8)
    i32 frame number, f32 subframe          frame time on the stream's audio clock
    i32 numerator, i32 denominator          frame rate: fps / 1
    u8  count = 61
    61 x f32                                52 ARKit weights, then head and eye angles

The 52 weights go in Live Link Face's order, which is our canonical order (protocol/SPEC.md 5.1)
with capitalised names. The 9 angles are radians in Live Link Face's own frame, which mirrors
ours left for right (see ``values``: the one place that convention is written).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from ksdiff_sdk import Frame, schema

from .udp import StreamChoice, UdpOutput, check_stream_id

PACKET_VERSION = 6
DEFAULT_PORT = 11111
DEFAULT_DESTINATION = f"127.0.0.1:{DEFAULT_PORT}"
DEVICE_ID = "ksdiff-runtime"
# Live Link Face's value names, in packet order: ours capitalised, then the 9 angles
BLENDSHAPE_NAMES: tuple[str, ...] = tuple(n[0].upper() + n[1:] for n in schema.BLENDSHAPES)
ANGLE_NAMES: tuple[str, ...] = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
                                "RightEyeYaw", "RightEyePitch", "RightEyeRoll")
VALUE_NAMES: tuple[str, ...] = BLENDSHAPE_NAMES + ANGLE_NAMES
NUM_VALUES = len(VALUE_NAMES)  # 61
_VALUES = struct.Struct(f"!B{NUM_VALUES}f")
_FRAME_TIME_AND_RATE = struct.Struct("!ifii")
# a float within this many frames of a whole frame is that frame (t_audio = index / fps in float64)
_WHOLE_FRAME_EPS = 1e-6


def frame_time(t_audio: float, fps: int) -> tuple[int, float]:
    """(frame number, subframe) of an audio instant at ``fps``: the whole frames and the fraction.

    A frame at ``t_audio = index / fps`` is (index, 0.0); an instant between frames keeps its
    fraction (never a constant subframe)."""
    position = t_audio * fps
    whole = round(position)
    if abs(position - whole) < _WHOLE_FRAME_EPS:
        return int(whole), 0.0
    number = math.floor(position)
    return int(number), float(position - number)


def values(blendshapes: np.ndarray, head: np.ndarray, gaze: np.ndarray) -> np.ndarray:
    """The 61 Live Link Face values [..., 61] (``VALUE_NAMES`` order) of frames [..., 52], [..., 3], [..., 4].

    The one place the Live Link Face convention is written: the UDP packets and the CSV bake
    (``outputs/files.py``) both call it, so a baked file and a live stream give the same numbers.
    The 52 weights are ours in our order. The 9 angles are radians in Live Link Face's own frame:
    Live Link Face (as recorded by the app and as Unreal's ARKit conversion writes them) measures
    yaw and roll in the opposite direction to ours relative to the weights' Left/Right names, and
    its LeftEye* values belong to the eye whose weights are named Right. So yaw and roll change
    sign, pitch (positive = down, for head and eyes) does not, and the eyes swap. Eye roll: 0."""
    bs = np.asarray(blendshapes, np.float32)
    pitch, yaw, roll = np.moveaxis(np.asarray(head, np.float32), -1, 0)
    left_yaw, left_pitch, right_yaw, right_pitch = np.moveaxis(np.asarray(gaze, np.float32), -1, 0)
    zero = np.zeros_like(pitch)
    angle_values = np.stack([-yaw, pitch, -roll, -right_yaw, right_pitch, zero, -left_yaw, left_pitch, zero], axis=-1)
    return np.concatenate([bs, angle_values], axis=-1)


def encode_packet(subject: str, frame_number: int, subframe: float, fps: int,
                  packet_values: tuple[float, ...] | list[float], device_id: str = DEVICE_ID) -> bytes:
    """One Live Link Face packet (version 6)."""
    if len(packet_values) != NUM_VALUES:
        raise ValueError(f"a Live Link Face packet holds {NUM_VALUES} values, got {len(packet_values)}")
    device = device_id.encode("utf-8")
    name = subject.encode("utf-8")
    return b"".join((
        struct.pack("!Bi", PACKET_VERSION, len(device)), device,
        struct.pack("!i", len(name)), name,
        # the frame rate is fps/1: a denominator of fps/60 (seen in public senders) is 0 below 60 fps
        _FRAME_TIME_AND_RATE.pack(frame_number, subframe, fps, 1),
        _VALUES.pack(NUM_VALUES, *packet_values),
    ))


class LiveLinkOutput(UdpOutput):
    """Every frame (or one stream's) as a Live Link Face packet to HOST:PORT.

    Subjects: each stream is its own subject named after the stream id; with ``subject`` every
    packet carries that name (a VTuber's one character), and then only one stream is sent (the
    ``stream`` given, else the first that publishes) so two faces never fight over one subject."""

    name = "livelink"
    flag = "--livelink"

    def __init__(self, destination: str = DEFAULT_DESTINATION, subject: str | None = None,
                 stream: str | None = None) -> None:
        check_stream_id(stream, "--livelink-stream")
        if subject is not None and not subject.strip():
            subject = None
        self.subject = subject
        self.stream = stream or None
        choice = StreamChoice(self.stream, "--livelink-stream") if (self.stream or self.subject) else None
        super().__init__(destination, choice)

    def encode(self, frame: Frame) -> bytes:
        number, subframe = frame_time(frame.t_audio, frame.fps)
        packet_values = values(frame.blendshapes, frame.head, frame.gaze).tolist()
        return encode_packet(self.subject or frame.stream, number, subframe, frame.fps, packet_values)
