"""Live Link Face and VMC outputs over real UDP sockets on 127.0.0.1 (ephemeral ports).

Live Link packets are read back with a decoder written here from the documented layout (not the
encoder's code); VMC bundles with python-osc's own server. Then both outputs at once on a real
Runtime with the real model, a failing output next to them, unreachable destinations, and bad
HOST:PORT strings on the command line.
"""

from __future__ import annotations

import csv
import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq
from peers import cli
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from ksdiff_runtime.cli.serve import build_outputs
from ksdiff_runtime.engine.controls import stream_frames
from ksdiff_runtime.outputs import files, udp
from ksdiff_runtime.outputs.livelink import LiveLinkOutput, frame_time
from ksdiff_runtime.outputs.udp import OutputConfigError, UdpSender, parse_host_port
from ksdiff_runtime.outputs.vmc import VmcOutput, unity_rotation, vrm_presets
from ksdiff_runtime.outputs.vts import VtsOutput
from ksdiff_runtime.server.config import ConfigError, ServeConfig, load_config
from ksdiff_sdk import Frame, schema
from ksdiff_sdk import protocol as P

ONE_SECOND = stream_frames(16_000, 30)  # frames of 1 s of audio at 30 fps, the ease to rest included

TIMEOUT_S = 30.0

# Live Link Face's 61 values in packet order, as written in ../shared/design/ANCHORS.md
LIVE_LINK_FACE_NAMES = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft", "EyeSquintLeft",
    "EyeWideLeft", "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight", "JawForward", "JawLeft", "JawRight", "JawOpen", "MouthClose", "MouthFunnel",
    "MouthPucker", "MouthLeft", "MouthRight", "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft",
    "MouthFrownRight", "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper", "MouthPressLeft", "MouthPressRight",
    "MouthLowerDownLeft", "MouthLowerDownRight", "MouthUpperUpLeft", "MouthUpperUpRight", "BrowDownLeft",
    "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight", "CheekPuff", "CheekSquintLeft",
    "CheekSquintRight", "NoseSneerLeft", "NoseSneerRight", "TongueOut", "HeadYaw", "HeadPitch", "HeadRoll",
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)


def decode_live_link(packet: bytes) -> dict:
    """A Live Link Face v6 packet, field by field (network byte order)."""
    (version,) = struct.unpack_from("!B", packet, 0)
    at = 1
    fields: dict = {"version": version}
    for key in ("device", "subject"):
        (n,) = struct.unpack_from("!i", packet, at)
        fields[key] = packet[at + 4 : at + 4 + n].decode("utf-8")
        at += 4 + n
    fields["frame_number"], fields["subframe"], num, den = struct.unpack_from("!ifii", packet, at)
    fields["rate"] = (num, den)
    at += 16
    (count,) = struct.unpack_from("!B", packet, at)
    at += 1
    values = struct.unpack_from(f"!{count}f", packet, at)
    at += 4 * count
    assert at == len(packet), f"{len(packet) - at} bytes after the values"
    fields["count"] = count
    fields["values"] = dict(zip(LIVE_LINK_FACE_NAMES, values, strict=True))
    return fields


def make_frame(stream: str = "mic", index: int = 0, fps: int = 30, t_audio: float | None = None,
               weights: dict[str, float] | None = None, head: tuple = (0.0, 0.0, 0.0),
               gaze: tuple = (0.0, 0.0, 0.0, 0.0), last: bool = False) -> Frame:
    bs = np.zeros(schema.NUM_BLENDSHAPES, np.float32)
    for name, value in (weights or {}).items():
        bs[schema.BLENDSHAPE_INDEX[name]] = value
    return Frame(stream, index, index, fps, index / fps if t_audio is None else t_audio, bs,
                 np.asarray(head, np.float32), np.asarray(gaze, np.float32), None, 0, 100.0, 1.0, last)


def f32(x: float) -> float:
    return float(np.float32(x))


class UdpReceiver:
    """A UDP socket on 127.0.0.1, ephemeral port; recv waits up to a timeout (never a fixed sleep)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def recv(self, timeout: float = TIMEOUT_S) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def receiver() -> Iterator[UdpReceiver]:
    r = UdpReceiver()
    yield r
    r.close()


class VmcReceiver:
    """python-osc's server on 127.0.0.1, ephemeral port, recording every message in arrival order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple]] = []
        self._changed = threading.Condition()
        dispatcher = Dispatcher()
        dispatcher.set_default_handler(self._on_message)
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def _on_message(self, address: str, *args: object) -> None:
        with self._changed:
            self.messages.append((address, args))
            self._changed.notify_all()

    def bundles(self, n: int, timeout: float = TIMEOUT_S) -> list[list[tuple[str, tuple]]]:
        """Wait for n bundles; each ends with /VMC/Ext/T (checked in the bundle test)."""
        with self._changed:
            assert self._changed.wait_for(lambda: sum(a == "/VMC/Ext/T" for a, _ in self.messages) >= n, timeout), \
                f"got {sum(a == '/VMC/Ext/T' for a, _ in self.messages)} of {n} bundles"
            messages = list(self.messages)
        out: list[list[tuple[str, tuple]]] = [[]]
        for address, args in messages:
            out[-1].append((address, args))
            if address == "/VMC/Ext/T":
                out.append([])
        return out[:-1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def vmc_receiver() -> Iterator[VmcReceiver]:
    r = VmcReceiver()
    yield r
    r.close()


# --- Live Link Face ----------------------------------------------------------------------------
def test_live_link_packet_every_field_by_name(receiver):
    out = LiveLinkOutput(receiver.address)
    try:
        weights = {"jawOpen": 0.5, "eyeBlinkLeft": 0.25, "mouthSmileRight": 0.75, "tongueOut": 1.0}
        out.send(make_frame("mic", index=7, weights=weights, head=(0.1, 0.3, 0.2), gaze=(0.05, 0.1, 0.07, 0.12)))
        p = decode_live_link(receiver.recv())
    finally:
        out.close()
    assert p["version"] == 6 and p["device"] == "ksdiff-runtime" and p["subject"] == "mic"
    assert p["rate"] == (30, 1) and (p["frame_number"], p["subframe"]) == (7, 0.0) and p["count"] == 61
    v = p["values"]
    assert v["JawOpen"] == 0.5 and v["EyeBlinkLeft"] == 0.25 and v["MouthSmileRight"] == 0.75 and v["TongueOut"] == 1.0
    others = set(LIVE_LINK_FACE_NAMES[:52]) - {"JawOpen", "EyeBlinkLeft", "MouthSmileRight", "TongueOut"}
    assert all(v[name] == 0.0 for name in others)
    # radians; Live Link Face's yaw and roll run opposite to ours, pitch (down) the same (docs/OUTPUTS.md)
    assert (v["HeadYaw"], v["HeadPitch"], v["HeadRoll"]) == (f32(-0.3), f32(0.1), f32(-0.2))
    # its LeftEye* belong to the eye whose weights are named Right: eyes swap, yaw changes sign
    assert (v["LeftEyeYaw"], v["LeftEyePitch"], v["LeftEyeRoll"]) == (f32(-0.07), f32(0.12), 0.0)
    assert (v["RightEyeYaw"], v["RightEyePitch"], v["RightEyeRoll"]) == (f32(-0.05), f32(0.1), 0.0)
    assert out.sent == 1 and out.errors == 0


def test_a_baked_csv_and_a_live_stream_give_the_same_live_link_values(receiver, tmp_path):
    """The Live Link Face convention is written once (livelink.values): the CSV bake and the UDP packets
    carry the same numbers, angles mirrored and eyes swapped alike, for the same frames."""
    rng = np.random.default_rng(0)
    frames = [make_frame("npc", index=i, weights={"jawOpen": float(rng.uniform()), "eyeLookInLeft": 0.3},
                         head=tuple(rng.normal(0, 0.2, 3)), gaze=tuple(rng.normal(0, 0.2, 4))) for i in range(5)]
    csv_path = tmp_path / "line.csv"
    files.write_csv(csv_path, np.stack([f.blendshapes for f in frames]), np.stack([f.head for f in frames]),
                    np.stack([f.gaze for f in frames]), 30)
    with csv_path.open() as fh:
        rows = list(csv.reader(fh))
    out = LiveLinkOutput(receiver.address)
    try:
        for f in frames:
            out.send(f)
        packets = [decode_live_link(receiver.recv()) for _ in frames]
    finally:
        out.close()
    header = rows[0]
    assert header[2:] == list(LIVE_LINK_FACE_NAMES)
    for row, packet in zip(rows[1:], packets, strict=True):
        baked = dict(zip(header[2:], (float(v) for v in row[2:]), strict=True))
        for name in LIVE_LINK_FACE_NAMES:
            assert baked[name] == pytest.approx(packet["values"][name], abs=1e-5), name
    assert packets[0]["values"]["HeadYaw"] == pytest.approx(-frames[0].head[1])


def test_live_link_frame_rate_and_frame_time(receiver):
    out = LiveLinkOutput(receiver.address)
    try:
        out.send(make_frame(index=12345, fps=60))  # t_audio = 12345 / 60
        at_60 = decode_live_link(receiver.recv())
        out.send(make_frame(index=3, fps=30))
        at_30 = decode_live_link(receiver.recv())
        out.send(make_frame(index=2, fps=60, t_audio=2.25 / 60))  # a quarter of a frame after frame 2
        between = decode_live_link(receiver.recv())
    finally:
        out.close()
    assert at_60["rate"] == (60, 1) and (at_60["frame_number"], at_60["subframe"]) == (12345, 0.0)
    assert at_30["rate"] == (30, 1) and (at_30["frame_number"], at_30["subframe"]) == (3, 0.0)
    assert between["frame_number"] == 2 and between["subframe"] == pytest.approx(0.25, abs=1e-5)
    # whole frames are exact however t_audio rounds: index / fps for every index of a long stream
    assert all(frame_time(i / 30, 30) == (i, 0.0) for i in range(0, 400_000, 7))


def test_live_link_subject_per_stream_fixed_subject_and_chosen_stream(receiver):
    interleaved = [make_frame("npc_a", 0), make_frame("npc_b", 0), make_frame("npc_a", 1), make_frame("npc_b", 1)]

    def run(**options: str) -> tuple[list[tuple[str, int]], int]:
        out = LiveLinkOutput(receiver.address, **options)
        try:
            for frame in interleaved:
                out.send(frame)
            packets = [decode_live_link(receiver.recv()) for _ in range(out.sent)]
            return [(p["subject"], p["frame_number"]) for p in packets], out.sent
        finally:
            out.close()

    assert run() == ([("npc_a", 0), ("npc_b", 0), ("npc_a", 1), ("npc_b", 1)], 4)
    # one fixed subject: one face, the first stream that publishes
    assert run(subject="Avatar") == ([("Avatar", 0), ("Avatar", 1)], 2)
    assert run(stream="npc_b") == ([("npc_b", 0), ("npc_b", 1)], 2)
    assert run(subject="Avatar", stream="npc_b") == ([("Avatar", 0), ("Avatar", 1)], 2)


# --- VMC ---------------------------------------------------------------------------------------
def test_vmc_bundle_names_values_order_and_bones(vmc_receiver):
    out = VmcOutput(vmc_receiver.address)
    yaw = 0.4
    try:
        weights = {"jawOpen": 0.5, "eyeBlinkLeft": 1.0, "eyeBlinkRight": 0.25, "mouthFunnel": 0.5}
        out.send(make_frame("mic", index=45, weights=weights, head=(0.0, yaw, 0.0), gaze=(0.1, 0.0, 0.1, 0.0)))
        (bundle,) = vmc_receiver.bundles(1)
    finally:
        out.close()
    addresses = [a for a, _ in bundle]
    values = {args[0]: args[1] for a, args in bundle if a == "/VMC/Ext/Blend/Val"}
    n_values = addresses.count("/VMC/Ext/Blend/Val")
    # every value, then Apply, then the bones, OK and T
    assert addresses == (["/VMC/Ext/Blend/Val"] * n_values + ["/VMC/Ext/Blend/Apply"] + ["/VMC/Ext/Bone/Pos"] * 3
                         + ["/VMC/Ext/OK", "/VMC/Ext/T"])
    perfect_sync = [n[0].upper() + n[1:] for n in schema.BLENDSHAPES]
    presets = {"A", "I", "U", "E", "O", "Blink", "Blink_L", "Blink_R"}
    assert n_values == 60 and set(values) == set(perfect_sync) | presets
    assert values["JawOpen"] == 0.5 and values["EyeBlinkLeft"] == 1.0 and values["MouthFunnel"] == 0.5
    assert values["TongueOut"] == 0.0
    # presets: O needs the funnel and the open jaw; blinks: what both eyes share, then each eye's rest
    assert values["O"] == pytest.approx(0.5) and values["A"] == pytest.approx(0.25) and values["U"] == 0.0
    assert (values["Blink"], values["Blink_L"], values["Blink_R"]) == (0.25, 0.75, 0.0)
    bones = {args[0]: args[1:] for a, args in bundle if a == "/VMC/Ext/Bone/Pos"}
    assert set(bones) == {"Head", "LeftEye", "RightEye"}
    head = bones["Head"]
    assert head[:3] == (0.0, 0.0, 0.0)
    assert math.fsum(c * c for c in head[3:]) == pytest.approx(1.0, abs=1e-6)
    # turning toward the face's own left (+yaw) is a turn to -Y in Unity's left-handed frame
    assert head[3:] == pytest.approx((0.0, -math.sin(yaw / 2), 0.0, math.cos(yaw / 2)), abs=1e-6)
    assert bones["LeftEye"][3:] == pytest.approx((0.0, -math.sin(0.05), 0.0, math.cos(0.05)), abs=1e-6)
    assert dict(bundle)["/VMC/Ext/OK"] == (1,)
    assert dict(bundle)["/VMC/Ext/T"][0] == pytest.approx(45 / 30)


def _rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """SPEC 5.2: R = Ry(yaw) Rx(pitch) Rz(roll), right-handed."""
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    cr, sr = math.cos(roll), math.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def _quaternion_matrix(q: tuple[float, float, float, float]) -> np.ndarray:
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@pytest.mark.parametrize("pitch,yaw,roll", [(0.0, 0.4, 0.0), (0.3, 0.0, 0.0), (0.0, 0.0, -0.5), (0.2, -0.6, 0.35)])
def test_head_quaternion_is_our_rotation_seen_in_unitys_mirrored_frame(pitch, yaw, roll):
    """Unity's axes are ours with X negated (character's right vs the face's own left): M R M."""
    mirror = np.diag([-1.0, 1.0, 1.0])
    expected = mirror @ _rotation_matrix(pitch, yaw, roll) @ mirror
    q = unity_rotation(pitch, yaw, roll)
    assert math.fsum(c * c for c in q) == pytest.approx(1.0)
    np.testing.assert_allclose(_quaternion_matrix(q), expected, atol=1e-12)
    # the chin goes down (+pitch): the face's forward (+Z) tips toward -Y in Unity too
    if pitch > 0 and yaw == roll == 0:
        assert (_quaternion_matrix(q) @ [0, 0, 1])[1] < 0


def test_vrm_presets_from_arkit_weights():
    def presets(**w: float) -> dict[str, float]:
        return vrm_presets({name: w.get(name, 0.0) for name in schema.BLENDSHAPES})

    assert presets() == {k: 0.0 for k in ("A", "I", "U", "E", "O", "Blink", "Blink_L", "Blink_R")}
    assert presets(jawOpen=0.8)["A"] == pytest.approx(0.8)
    assert presets(mouthSmileLeft=0.6, mouthSmileRight=0.6)["I"] == pytest.approx(0.6)
    assert presets(mouthPucker=0.7)["U"] == pytest.approx(0.7)
    spread_open = presets(jawOpen=0.5, mouthStretchLeft=0.5, mouthStretchRight=0.5)
    assert spread_open["E"] == pytest.approx(0.5) and spread_open["A"] == pytest.approx(0.25)
    round_open = presets(jawOpen=0.6, mouthFunnel=0.6)
    assert round_open["O"] == pytest.approx(0.6) and round_open["A"] == pytest.approx(0.24)
    closed = presets(eyeBlinkLeft=1.0, eyeBlinkRight=1.0)
    assert (closed["Blink"], closed["Blink_L"], closed["Blink_R"]) == (1.0, 0.0, 0.0)
    wink = presets(eyeBlinkRight=0.9)
    assert (wink["Blink"], wink["Blink_L"], wink["Blink_R"]) == (0.0, 0.0, pytest.approx(0.9))


def test_vmc_sends_one_stream(vmc_receiver):
    """No --vmc-stream: the first stream that publishes, until its last frame; then the next one."""
    out = VmcOutput(vmc_receiver.address)
    try:
        for frame in (make_frame("mic", 0), make_frame("npc", 0), make_frame("mic", 1, last=True),
                      make_frame("npc", 1), make_frame("npc", 2)):
            out.send(frame)
        bundles = vmc_receiver.bundles(4)
    finally:
        out.close()
    times = [dict(b)["/VMC/Ext/T"][0] for b in bundles]
    assert out.sent == 4 and times[:3] == pytest.approx([0.0, 1 / 30, 1 / 30])  # mic 0, mic 1, then npc 1

    fixed = VmcOutput(vmc_receiver.address, stream="npc")
    try:
        for frame in (make_frame("mic", 5), make_frame("npc", 9)):
            fixed.send(frame)
        assert fixed.sent == 1
        assert dict(vmc_receiver.bundles(5)[-1])["/VMC/Ext/T"][0] == pytest.approx(9 / 30)
    finally:
        fixed.close()


def test_a_named_stream_that_never_publishes_is_warned_about_once(vmc_receiver, caplog, monkeypatch, tmp_path):
    """--vmc-stream Sample_speech (the stream is sample_speech): nothing was sent and nothing said. Now, once other
    streams have published for NO_SUCH_STREAM_S, one warning names them; when the stream appears, that is said."""
    caplog.set_level(logging.INFO, logger="ksdiff_runtime.outputs")
    out = VmcOutput(vmc_receiver.address, stream="Sample_speech")
    try:
        for i in range(10):  # well within NO_SUCH_STREAM_S (2 s): no warning yet
            out.send(make_frame("sample_speech", i))
        assert not [r for r in caplog.records if "Sample_speech" in r.getMessage()]
        monkeypatch.setattr(udp, "NO_SUCH_STREAM_S", 0.0)  # the next frame of another stream is past it
        for i in range(10, 100):
            out.send(make_frame("mic", i))
            out.send(make_frame("sample_speech", i))
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("--vmc-stream 'Sample_speech': no stream of that id has published")
        assert "(sample_speech, mic)" in warnings[0] and "case-sensitive; did you mean 'sample_speech'?" in warnings[0]
        assert out.sent == 0
        out.send(make_frame("Sample_speech", 0))
        out.send(make_frame("mic", 100))
        assert out.sent == 1
    finally:
        out.close()
    said = [r.getMessage() for r in caplog.records if "Sample_speech" in r.getMessage()]
    assert said[1:] == ["--vmc-stream 'Sample_speech': the stream publishes now; its frames are sent"]
    for flag, output in (("--livelink-stream", LiveLinkOutput(vmc_receiver.address, stream="x")),
                         ("--vts-stream", VtsOutput("ws://127.0.0.1:1", stream="x", token_path=tmp_path / "token"))):
        output.close()
        assert output._choice.flag == flag  # the same StreamChoice, named by its own flag


# --- nothing listening, no route: never a stall, never an exception --------------------------------
@pytest.mark.timeout(60)  # generous: the point is that 4000 sends do not hang, not how fast they are
def test_closed_and_unroutable_destinations_never_stall_or_raise():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # nobody listens there once this socket closes
    frames = [make_frame("mic", i, weights={"jawOpen": 0.5}) for i in range(1000)]
    for destination in (closed, "10.255.255.1:9"):  # 10.255.255.1: private, normally nobody there
        for out in (LiveLinkOutput(destination), VmcOutput(destination)):
            try:
                for frame in frames:
                    out.send(frame)  # raises nothing
            finally:
                out.close()
            assert out.sent + out.errors == 1000
            if destination == closed:
                # ICMP port unreachable comes back as ECONNREFUSED on the next send: counted
                assert out.errors > 0, f"{out.name} to a closed port counted no error"
    sender = UdpSender(closed, "--livelink", "livelink")
    sender.close()
    assert sender.send(b"after close") is False  # a frame published during shutdown: dropped, no error


def test_each_outage_of_a_udp_receiver_is_logged_when_it_starts_and_ends(caplog, monkeypatch):
    """VSeeFace closed, started, closed again: the start of each outage is logged, and its end once datagrams go
    out again (it was logged once per process: a later outage went unsaid)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(udp, "RECOVERED_AFTER_S", 0.2)
    sender = UdpSender(f"127.0.0.1:{port}", "--vmc", "vmc")
    caplog.set_level(logging.INFO, logger="ksdiff_runtime.outputs")

    def send(n: int, seconds: float = 0.0) -> None:  # n datagrams, then more until `seconds` have passed
        end = time.monotonic() + seconds
        while n > 0 or time.monotonic() < end:
            sender.send(b"frame")
            n -= 1
            time.sleep(0.01)  # a frame rate, not a synchronisation

    try:
        send(10)  # nobody listens: ECONNREFUSED on every other send
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
            receiver.bind(("127.0.0.1", port))
            send(10, seconds=0.4)  # the receiver is up: every datagram goes out, for longer than RECOVERED_AFTER_S
        send(10)  # down again
    finally:
        sender.close()
    lines = [r.getMessage() for r in caplog.records if "127.0.0.1" in r.getMessage()]
    said = ["failed" if "failed" in line else "again" if "works again" in line else "" for line in lines]
    assert [w for w in said if w] == ["failed", "again", "failed"], lines


def test_vmc_to_a_broadcast_address_reaches_a_receiver_on_this_machine():
    """VMC senders broadcast on a LAN (255.255.255.255:39539): every datagram failed 'Permission denied' (no
    SO_BROADCAST). A receiver bound to all addresses, as VSeeFace's is, gets the broadcast on this machine too."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("0.0.0.0", 0))
        receiver.settimeout(TIMEOUT_S)
        port = receiver.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            try:
                probe.sendto(b"probe", ("255.255.255.255", port))
            except OSError as e:  # e.g. ENETUNREACH in a container with loopback only
                pytest.skip(f"this machine cannot broadcast: {e}")
        assert receiver.recv(64) == b"probe"
        out = VmcOutput(f"255.255.255.255:{port}")
        try:
            out.send(make_frame("mic", 0, weights={"jawOpen": 0.5}))
            assert (out.sent, out.errors) == (1, 0)
            data = receiver.recv(65536)
        finally:
            out.close()
    assert data.startswith(b"#bundle\0")


# --- HOST:PORT ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,message", [
    ("nohost:99999", "port must be a number from 1 to 65535"),
    ("localhost:0", "port must be a number from 1 to 65535"),
    ("localhost:http", "port must be a number from 1 to 65535"),
    ("localhost", "expected HOST:PORT"),
    ("localhost:", "port must be a number"),
    ("127.0.0.1:\u00b2", "port must be a number from 1 to 65535"),  # "²": str.isdigit() is true, int() raises
    ("127.0.0.1:\u0661\u0662\u0663\u0664", "port must be a number"),  # Arabic-Indic 1234: int() reads 1234
    ("127.0.0.1:\uff11\uff11\uff11\uff11\uff11", "port must be a number"),  # full-width 11111
    (":11111", "expected HOST:PORT"),
    ("::1:11111", "expected HOST:PORT"),
    ("", "expected HOST:PORT"),
])
def test_bad_host_port_strings_are_clear_errors(text, message):
    with pytest.raises(OutputConfigError, match=message) as e:
        parse_host_port(text, "--livelink")
    assert "--livelink" in str(e.value)
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"vmc": text} if text else {"vmc": " "})


def test_good_host_port_strings_and_unknown_hosts():
    assert parse_host_port("127.0.0.1:11111", "--livelink") == ("127.0.0.1", 11111)
    assert parse_host_port("[::1]:39539", "--vmc") == ("::1", 39539)
    assert parse_host_port("studio-pc.local:11111", "--livelink") == ("studio-pc.local", 11111)
    with pytest.raises(OutputConfigError, match=r"cannot resolve 'no-such-host\.invalid'"):
        LiveLinkOutput("no-such-host.invalid:11111")
    with pytest.raises(OutputConfigError, match="not a stream id"):
        VmcOutput("127.0.0.1:39539", stream="mic stream")


def test_serve_config_keys_and_flags(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text('livelink = "127.0.0.1:11111"\nlivelink_subject = "Avatar"\nlivelink_stream = "mic"\n'
                      'vmc = "127.0.0.1:39539"\nvmc_stream = "mic"\n')
    loaded = load_config(config, {"vmc": "127.0.0.1:40000"})  # a flag wins over the file
    assert (loaded.livelink, loaded.livelink_subject, loaded.livelink_stream) == ("127.0.0.1:11111", "Avatar", "mic")
    assert (loaded.vmc, loaded.vmc_stream) == ("127.0.0.1:40000", "mic")
    shipped = load_config(Path(__file__).resolve().parent.parent / "configs" / "serve.toml", {})
    assert (shipped.livelink, shipped.vmc) == ("", "")  # off unless asked for
    from ksdiff_runtime.cli import build_parser

    argv = ["serve", "--livelink", "--vmc"]
    args = build_parser(argv).parse_args(argv)  # no value: the apps' default ports
    assert (args.livelink, args.vmc) == ("127.0.0.1:11111", "127.0.0.1:39539")
    outputs = build_outputs(ServeConfig(livelink=args.livelink, vmc=args.vmc, livelink_subject="Avatar"))
    try:
        assert [(o.name, o.destination) for o in outputs] == [("livelink", "127.0.0.1:11111"),
                                                               ("vmc", "127.0.0.1:39539")]
        assert outputs[0].subject == "Avatar"
    finally:
        for out in outputs:
            out.close()


def test_serve_with_a_bad_destination_exits_2_before_loading_the_model():
    bad_port = cli("serve", "--livelink", "nohost:99999")
    assert bad_port.returncode == 2
    assert "--livelink 'nohost:99999'" in bad_port.stderr and "from 1 to 65535" in bad_port.stderr
    unknown = cli("serve", "--vmc", "no-such-host.invalid:39539", "--backend", "onnxruntime")
    assert unknown.returncode == 2 and "cannot resolve 'no-such-host.invalid'" in unknown.stderr
    assert "serving" not in unknown.stderr  # it stopped before the model and the sockets


# --- both outputs on a real runtime -------------------------------------------------------------


@pytest.fixture
def speech_1s_wav(tmp_path: Path, speech_16k: np.ndarray) -> Path:
    path = tmp_path / "line.wav"
    sf.write(str(path), speech_16k[:16000], 16000, subtype="PCM_16")
    return path


class Subscriber:
    """A ZeroMQ SUB on the runtime's PUB that has seen a hello (so its subscription is live)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, P.TOPIC_ROOT)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.until(lambda m: m["type"] == "hello")

    def until(self, done, timeout: float = TIMEOUT_S) -> list[dict]:
        deadline = time.monotonic() + timeout
        got: list[dict] = []
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                got.append(P.decode(self.sock.recv_multipart()[1]))
                if done(got[-1]):
                    return got
        raise AssertionError(f"timed out; last messages: {[m['type'] for m in got[-5:]]}")

    def frames_until_end(self, stream: str) -> list[Frame]:
        msgs = self.until(lambda m: m["type"] == "stream_end" and m["stream"] == stream)
        return [Frame.from_message(m) for m in msgs if m["type"] == "frame" and m["stream"] == stream]

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(180)
def test_serve_sends_every_frame_to_live_link_and_vmc(serve_engine, speech_1s_wav, receiver, vmc_receiver):
    from ksdiff_runtime.server.runtime import Runtime
    from ksdiff_runtime.sources import FileSource

    outputs = build_outputs(ServeConfig(livelink=receiver.address, vmc=vmc_receiver.address))
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", outputs=outputs) as rt:
        sub = Subscriber(rt.pub_endpoint)
        try:
            sid = rt.add_source(FileSource(speech_1s_wav, realtime=False, stream_id="line"))
            frames = sub.frames_until_end(sid)
            assert rt.wait_until_idle(timeout=TIMEOUT_S)  # the paced outputs have sent the line's frames
        finally:
            sub.close()
        assert rt.output_errors == {"zmq": 0, "livelink": 0, "vmc": 0}
    assert len(frames) == ONE_SECOND and [f.index for f in frames] == list(range(ONE_SECOND)) and frames[-1].last
    packets = [decode_live_link(receiver.recv()) for _ in frames]
    assert [p["subject"] for p in packets] == ["line"] * ONE_SECOND
    assert [p["frame_number"] for p in packets] == [f.index for f in frames]
    assert all(p["rate"] == (30, 1) and p["subframe"] == 0.0 for p in packets)
    jaw = schema.BLENDSHAPE_INDEX["jawOpen"]
    assert [p["values"]["JawOpen"] for p in packets] == [float(f.blendshapes[jaw]) for f in frames]
    assert [p["values"]["HeadYaw"] for p in packets] == [-float(f.head[1]) for f in frames]
    assert max(p["values"]["JawOpen"] for p in packets) > 0.1  # speech moved the jaw
    bundles = vmc_receiver.bundles(ONE_SECOND)
    assert len(bundles) == ONE_SECOND
    assert [dict(b)["/VMC/Ext/T"][0] for b in bundles] == pytest.approx([f.t_audio for f in frames])
    values = [{args[0]: args[1] for a, args in b if a == "/VMC/Ext/Blend/Val"} for b in bundles]
    assert [v["JawOpen"] for v in values] == [float(f.blendshapes[jaw]) for f in frames]
    assert all(len(v) == 60 for v in values)
    assert outputs[0].sent == outputs[1].sent == ONE_SECOND


@pytest.mark.timeout(180)
def test_a_region_at_strength_0_is_zero_in_every_output(serve_engine, speech_16k, receiver, vmc_receiver, tmp_path):
    """Artists' controls are applied at one place before every output: a stream opened with the jaw and
    mouth at strength 0 shows them at 0 in the ZeroMQ frames, Live Link Face, VMC, VTube Studio and the
    preview feed, while a stream beside it without controls (same audio) moves its jaw."""
    import json

    from fake_vts import FakeVTubeStudio
    from peers import Peer, is_end, push_clip
    from websockets.sync.client import connect

    from ksdiff_runtime import motion
    from ksdiff_runtime.outputs.preview import PreviewOutput
    from ksdiff_runtime.outputs.vts import VtsOutput
    from ksdiff_runtime.server.runtime import Runtime

    zeroed = {n for r in ("jaw", "mouth") for n in motion.REGIONS[r]}
    arkit_names = {n[0].upper() + n[1:]: n for n in zeroed}  # Live Link Face and VMC capitalise ARKit's names
    vts = FakeVTubeStudio()
    outputs = [LiveLinkOutput(receiver.address, stream="quiet"), VmcOutput(vmc_receiver.address, stream="quiet"),
               VtsOutput(vts.url, stream="quiet", token_path=tmp_path / "vts_token"), PreviewOutput(0)]
    try:
        assert vts.wait_for(lambda st: any(ok for _, ok in st.authentications), TIMEOUT_S)
        with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", outputs=outputs,
                     admission=False) as rt, connect(f"ws://127.0.0.1:{outputs[3].port}/ws") as page:
            peer = Peer(rt)
            try:
                pcm = speech_16k[:16000].astype("<f4").tobytes()
                # quiet in live mode: its frames come over a second, so the preview page (latest frame wins)
                # sees several; plain as a line, at the machine's speed
                for stream, extra in (("quiet", {"controls": {"strength": {"jaw": 0, "mouth": 0}}}),
                                      ("plain", {"mode": "line"})):
                    opened = peer.request("open_stream", stream=stream, sample_rate=16000, channels=1,
                                          format="f32le", **extra)
                    assert opened["type"] == "stream_opened", opened
                    push_clip(peer, stream, pcm, 4, 1600)
                    peer.send(P.encode_request("end_stream", stream=stream))
                msgs = peer.wait_pub(is_end("quiet"))
                msgs += peer.wait_pub(is_end("plain")) if not any(is_end("plain")(m) for m in msgs) else []
            finally:
                peer.close()
            shown: list[dict] = []  # the frames of the quiet stream the preview sent, until it left the list
            while True:
                items = json.loads(page.recv(timeout=TIMEOUT_S))["items"]
                shown += [i for i in items if i["type"] == "frame" and i["stream"] == "quiet"]
                if shown and any(i["type"] == "streams" and "quiet" not in [s["stream"] for s in i["streams"]]
                                 for i in items):
                    break
        frames = {sid: [Frame.from_message(m) for m in msgs if m["type"] == "frame" and m["stream"] == sid]
                  for sid in ("quiet", "plain")}
        assert len(frames["quiet"]) == len(frames["plain"]) == ONE_SECOND
        idx = [schema.BLENDSHAPE_INDEX[n] for n in sorted(zeroed)]
        jaw = schema.BLENDSHAPE_INDEX["jawOpen"]
        assert max(f.blendshapes[jaw] for f in frames["plain"]) > 0.1  # the same audio without controls talks
        assert all(not f.blendshapes[idx].any() for f in frames["quiet"])  # ZeroMQ
        assert any(f.blendshapes.any() for f in frames["quiet"])  # eyes and brows still move
        packets = [decode_live_link(receiver.recv()) for _ in range(ONE_SECOND)]  # Live Link Face
        assert all(p["values"][name] == 0 for p in packets for name in arkit_names)
        bundles = vmc_receiver.bundles(ONE_SECOND)  # VMC
        for bundle in bundles:
            values = {args[0]: args[1] for a, args in bundle if a == "/VMC/Ext/Blend/Val"}
            assert all(values[name] == 0 for name in arkit_names if name in values)
            assert values["JawOpen"] == 0
        assert vts.wait_for(lambda st: len(st.injections) >= 1, TIMEOUT_S)  # VTube Studio
        assert all(i.values["MouthOpen"] == 0 and i.values["CheekPuff"] == 0 and i.values["TongueOut"] == 0
                   and i.values["MouthSmile"] == 0.5 for i in vts.injections())
        assert len(shown) >= 5 and all(item["bs"][k] == 0 for item in shown for k in idx)  # the preview's feed
    finally:
        for out in outputs:
            out.close()
        vts.close()


class ExplodingOutput:
    name = "exploding"

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    def send(self, event: object) -> None:
        if isinstance(event, Frame):  # every event comes; this receiver chokes on frames
            self.calls += 1
            raise RuntimeError("receiver gone")

    def close(self) -> None:
        self.closed = True


@pytest.mark.timeout(180)
def test_a_failing_output_costs_neither_subscribers_nor_the_other_output(serve_engine, speech_1s_wav, receiver):
    from ksdiff_runtime.server.runtime import Runtime
    from ksdiff_runtime.sources import FileSource

    exploding = ExplodingOutput()
    livelink = LiveLinkOutput(receiver.address)
    outputs = [exploding, livelink]
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", outputs=outputs) as rt:
        sub = Subscriber(rt.pub_endpoint)
        try:
            sid = rt.add_source(FileSource(speech_1s_wav, realtime=False, stream_id="line"))
            frames = sub.frames_until_end(sid)
            assert rt.wait_until_idle(timeout=TIMEOUT_S)  # Live Link is paced: the line's frames have been sent
        finally:
            sub.close()
        errors = dict(rt.output_errors)
    assert len(frames) == ONE_SECOND and frames[-1].last
    assert errors == {"zmq": 0, "exploding": ONE_SECOND, "livelink": 0} and exploding.calls == ONE_SECOND
    assert exploding.closed
    packets = [decode_live_link(receiver.recv()) for _ in frames]
    assert [p["frame_number"] for p in packets] == list(range(ONE_SECOND))
