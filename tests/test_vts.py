"""The VTube Studio output against a fake VTube Studio (tests/fake_vts.py: the API's server side, written
from its published requests, responses and error ids) on 127.0.0.1, ephemeral ports.

The parameter mapping (a neutral frame is the rest pose; signs; MouthOpen follows jawOpen on the bundled
sample), injection at the frame rate and a keep-alive that never leaves a second without values, the
token (asked once, stored 0600, reused; a refused one replaced once; a denied popup not asked again),
custom parameters, VTube Studio absent, switched off, cutting the connection and restarting, and the
real runtime and `serve` feeding it. Every wait is on a condition with a timeout; frames are paced like
a live source.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fake_vts import DEFAULT_PARAMETERS as VTS_DEFAULTS
from fake_vts import FakeVTubeStudio, Injection, authenticated, wait_until
from peers import cli

from ksdiff_runtime import motion
from ksdiff_runtime.engine.controls import stream_frames
from ksdiff_runtime.outputs.udp import OutputConfigError
from ksdiff_runtime.outputs.vts import (
    CUSTOM_PARAMETERS,
    DEFAULT_URL,
    KEEPALIVE_S,
    REST_VALUES,
    VtsOutput,
    default_token_path,
    vts_parameters,
)
from ksdiff_runtime.server.config import ConfigError, ServeConfig, load_config
from ksdiff_sdk import Frame, schema

TIMEOUT_S = 10.0
FPS = 30
JAW = schema.BLENDSHAPE_INDEX["jawOpen"]


def make_frame(stream: str = "mic", index: int = 0, weights: dict[str, float] | None = None,
               head: tuple = (0.0, 0.0, 0.0), gaze: tuple | None = None, last: bool = False) -> Frame:
    """A frame; gaze from the eyeLook* weights unless given (as the engine makes it)."""
    bs = np.zeros(schema.NUM_BLENDSHAPES, np.float32)
    for name, value in (weights or {}).items():
        bs[schema.BLENDSHAPE_INDEX[name]] = value
    g = motion.gaze_from_blendshapes(bs) if gaze is None else np.asarray(gaze, np.float32)
    return Frame(stream, index, index, FPS, index / FPS, bs, np.asarray(head, np.float32), g, None, 0, 100.0, 1.0,
                 last)


def speech_frames(n: int, stream: str = "mic") -> list[Frame]:
    """n frames whose jaw moves (every frame differs), the last one neutral and ``last``."""
    frames = [make_frame(stream, i, {"jawOpen": 0.05 + 0.4 * abs(math.sin(i / 3)), "mouthSmileLeft": 0.2},
                         head=(0.02, 0.05 * math.sin(i / 10), 0.0)) for i in range(n - 1)]
    return [*frames, make_frame(stream, n - 1, last=True)]


def play(out: VtsOutput, frames: list[Frame], fps: int = FPS, stop: threading.Event | None = None) -> float:
    """Hand frames to the output at the frame rate, as the runtime's io thread does (paced like a live
    source, not a synchronisation). Returns the longest send() call in seconds."""
    start, longest = time.monotonic(), 0.0
    for i, frame in enumerate(frames):
        if stop is not None and stop.is_set():
            break
        delay = start + i / fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = time.perf_counter()
        out.send(frame)
        longest = max(longest, time.perf_counter() - t)
    return longest


@contextlib.contextmanager
def playing(out: VtsOutput, seconds: int = 60) -> Iterator[None]:
    """``play`` of ``seconds`` of speech frames on a thread of its own while the block runs; stopped after it."""
    stop = threading.Event()
    feeder = threading.Thread(target=play, args=(out, speech_frames(seconds * FPS)), kwargs={"stop": stop},
                              daemon=True)
    feeder.start()
    try:
        yield
    finally:
        stop.set()
        feeder.join(timeout=5)


def gaps(injections: list[Injection]) -> list[float]:
    return [b.t - a.t for a, b in itertools.pairwise(injections)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the mapping ---------------------------------------------------------------------------------
def test_a_neutral_frame_maps_to_the_rest_pose():
    values = vts_parameters(make_frame())
    assert values == REST_VALUES
    assert values == {"MouthOpen": 0.0, "MouthSmile": 0.5, "FaceAngleX": 0.0, "FaceAngleY": 0.0, "FaceAngleZ": 0.0,
                      "EyeOpenLeft": 1.0, "EyeOpenRight": 1.0, "EyeLeftX": 0.0, "EyeLeftY": 0.0, "EyeRightX": 0.0,
                      "EyeRightY": 0.0, "Brows": 0.5, "CheekPuff": 0.0, "TongueOut": 0.0}
    assert set(values) <= set(VTS_DEFAULTS)  # every one is a VTube Studio default parameter


def test_parameter_signs_units_and_ranges():
    deg = math.degrees
    # head (SPEC 5.2): +yaw toward the face's own left = the screen's right = +FaceAngleX (ParamAngleX);
    # +pitch chin down = -FaceAngleY (ParamAngleY + looks up); +roll toward its own right shoulder tips the
    # head's top to the screen's left = -FaceAngleZ (ParamAngleZ + tilts to the screen's right)
    v = vts_parameters(make_frame(head=(0.2, 0.3, 0.1)))
    assert (v["FaceAngleX"], v["FaceAngleY"], v["FaceAngleZ"]) == pytest.approx((deg(0.3), -deg(0.2), -deg(0.1)),
                                                                                 abs=1e-4)
    # eyes: ARKit's Left is the face's own left eye (ParamEyeLOpen); X + toward the screen's right, Y + up
    v = vts_parameters(make_frame(weights={"eyeBlinkLeft": 1.0, "eyeBlinkRight": 0.25, "eyeLookOutLeft": 0.4,
                                           "eyeLookInRight": 0.4, "eyeLookUpLeft": 0.5, "eyeLookDownRight": 0.5}))
    assert (v["EyeOpenLeft"], v["EyeOpenRight"]) == (0.0, 0.75)
    assert (v["EyeLeftX"], v["EyeRightX"]) == pytest.approx((0.4, 0.4), abs=1e-6)  # both toward its own left
    assert (v["EyeLeftY"], v["EyeRightY"]) == pytest.approx((0.5, -0.5), abs=1e-6)
    # mouth and brows
    v = vts_parameters(make_frame(weights={"jawOpen": 0.6, "mouthSmileLeft": 1.0, "mouthSmileRight": 1.0,
                                           "browInnerUp": 1.0, "browOuterUpLeft": 1.0, "browOuterUpRight": 1.0,
                                           "cheekPuff": 0.3, "tongueOut": 0.7}))
    assert (v["MouthOpen"], v["MouthSmile"], v["Brows"], v["CheekPuff"], v["TongueOut"]) == pytest.approx(
        (0.6, 1.0, 1.0, 0.3, 0.7))
    v = vts_parameters(make_frame(weights={"mouthFrownLeft": 1.0, "mouthFrownRight": 1.0, "browDownLeft": 1.0,
                                           "browDownRight": 1.0}))
    assert (v["MouthSmile"], v["Brows"]) == (0.0, 0.0)
    # out of range and non-finite input: clipped, or the rest value
    v = vts_parameters(make_frame(head=(float("nan"), 3.0, -3.0), gaze=(1.0, -1.0, float("inf"), 0.0)))
    assert (v["FaceAngleY"], v["FaceAngleX"], v["FaceAngleZ"]) == (0.0, 90.0, 90.0)
    assert (v["EyeLeftX"], v["EyeLeftY"], v["EyeRightX"]) == (1.0, 1.0, 0.0)
    rng = np.random.default_rng(1)
    for _ in range(200):
        frame = make_frame(weights=dict(zip(schema.BLENDSHAPES, rng.uniform(0, 1, 52), strict=True)),
                           head=tuple(rng.normal(0, 1, 3)), gaze=tuple(rng.normal(0, 1, 4)))
        for name, value in vts_parameters(frame).items():
            low, high = VTS_DEFAULTS[name]
            assert low <= value <= high, (name, value)


@pytest.fixture(scope="module")
def baked_sample(tmp_path_factory: pytest.TempPathFactory) -> list[Frame]:
    """The bundled sample speech through `bake` (the offline path, the shipped model)."""
    from ksdiff_runtime.cli import main

    out = tmp_path_factory.mktemp("vts_bake") / "sample.json"
    assert main(["bake", "-o", str(out), "--backend", "onnxruntime"]) == 0
    doc = json.loads(out.read_text())
    return [Frame("sample", i, i, doc["fps"], f["t_audio"], np.asarray(f["blendshapes"], np.float32),
                  np.asarray(f["head"], np.float32), np.asarray(f["gaze"], np.float32), None, 0, 0.0, 0.0,
                  i == len(doc["frames"]) - 1)
            for i, f in enumerate(doc["frames"])]


@pytest.mark.timeout(300)
def test_mouth_open_follows_jaw_open_on_the_bundled_sample(baked_sample):
    jaw = np.array([f.blendshapes[JAW] for f in baked_sample])
    mouth = np.array([vts_parameters(f)["MouthOpen"] for f in baked_sample])
    r = float(np.corrcoef(jaw, mouth)[0, 1])
    print(f"MouthOpen vs jawOpen on the bundled sample: correlation {r:.4f} over {len(jaw)} frames")
    assert r >= 0.95 and mouth.max() > 0.1  # the mouth moves with the speech
    for frame in baked_sample:
        for name, value in vts_parameters(frame).items():
            low, high = VTS_DEFAULTS[name]
            assert low <= value <= high


# --- injection -----------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_values_reach_vts_at_the_frame_rate_and_never_a_second_apart(vts, token_path, outputs):
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    assert vts.injections() == []  # nothing to say before the first frame
    frames = speech_frames(31)  # 1 s at 30 fps, then the last (neutral) frame
    longest_send = play(out, frames)
    t_last = time.monotonic()
    # then no frames: the final values keep coming at least once a second (wait for 2.5 s of them)
    assert vts.wait_for(lambda s: s.injections and s.injections[-1].t - t_last >= 2.5, TIMEOUT_S)
    injections = vts.injections()
    # Split at the final (neutral) frame's injection, not at the test's clock: the fake stamps an
    # injection when its thread reads it, late on a busy machine.
    is_rest = [i.values == pytest.approx(REST_VALUES, abs=1e-6) for i in injections]
    end = is_rest.index(True) + 1
    during, after = injections[:end], injections[end:]
    mouths = [m for m, _ in itertools.groupby(i.values["MouthOpen"] for i in during)]  # keep-alives out
    sent = [vts_parameters(f)["MouthOpen"] for f in frames]
    max_gap = max(gaps(injections))
    silent_gaps = gaps(after)
    print(f"vts: {len(during)} injections for {len(frames)} frames ({len(mouths)} distinct) in "
          f"{during[-1].t - during[0].t:.2f} s; after the stream {len(after)} keep-alives, gaps "
          f"{min(silent_gaps):.3f}..{max(silent_gaps):.3f} s; max gap between injections {max_gap:.3f} s; "
          f"longest send() {longest_send * 1e3:.2f} ms")
    assert max_gap <= 1.0  # VTube Studio forgets a parameter after a second without it
    # The frames as they came, in order: the output keeps only the newest frame, so a stall on a busy
    # machine merges a few, never reorders them (all 31 go out on an idle machine).
    it = iter(sent)
    assert all(any(abs(m - v) < 1e-5 for v in it) for m in mouths), f"{mouths}\n{sent}"
    assert len(mouths) >= 0.5 * len(frames)  # new values at about the frame rate
    assert len(after) >= 2 and all(is_rest[end:])  # then only the final (neutral) pose, kept alive ...
    assert float(np.median(silent_gaps)) <= KEEPALIVE_S + 0.15  # ... every KEEPALIVE_S
    assert all(i.face_found and i.mode == "set" for i in injections)
    assert set(injections[0].values) == set(REST_VALUES)
    assert vts.state.errors == [] and vts.state.violations == []
    assert longest_send < 0.25  # send() only hands the frame over (a wait on VTube Studio: the muted test below)


def test_one_stream_goes_out(vts, token_path, outputs):
    """No --vts-stream: the first stream that publishes until its last frame; a named stream: only it."""
    out = VtsOutput(vts.url, token_path=token_path, stream="npc")
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    out.send(make_frame("mic", 0, {"jawOpen": 0.9}))
    out.send(make_frame("npc", 0, {"jawOpen": 0.3}))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)
    assert vts.injections()[0].values["MouthOpen"] == pytest.approx(0.3)


def test_close_right_after_a_frame_stops_the_output_and_closes_the_connection_normally(vts, token_path):
    """serve's stop() hands the output a stream's last frame and closes it at once. The cancel that stopped the
    output's thread could be lost then (Python 3.11's asyncio.wait_for swallows a cancel that comes as the event it
    waits for is set): the thread outlived close() by 2 s with a warning, or for good in a process that goes on,
    injecting into VTube Studio every 0.5 s. Now the thread stops within close() and VTube Studio sees a normal
    close (1000) after the last frame's values (the face at rest), every time."""
    trials = 10
    for trial in range(trials):
        out = VtsOutput(vts.url, token_path=token_path)
        try:
            assert vts.wait_for(authenticated(trial + 1), TIMEOUT_S)
            *frames, last = speech_frames(6)
            for frame in frames:
                out.send(frame)
                time.sleep(1 / FPS)  # paced as the runtime hands them over
            out.send(last)
            out.close()  # at once, as serve's stop() does
            assert not out._thread.is_alive(), f"trial {trial}: the thread outlived close()"
        finally:
            out.close()
    assert vts.wait_for(lambda s: len(s.close_codes) == trials, TIMEOUT_S)
    assert vts.state.close_codes == [1000] * trials
    for connection in range(1, trials + 1):  # each one's last values: the last frame's, the face at rest
        assert [i.values for i in vts.injections() if i.connection == connection][-1] == REST_VALUES


# --- authentication ----------------------------------------------------------------------------
def test_the_token_is_asked_once_stored_0600_and_reused(vts, token_path, outputs, logs):
    first = VtsOutput(vts.url, token_path=token_path)
    outputs.append(first)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    assert logs.wait("click 'Allow' in the popup")
    first.close()
    assert token_path.read_text().strip() in vts.tokens
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_path.parent.stat().st_mode) == 0o700
    second = VtsOutput(vts.url, token_path=token_path)  # a new session (serve started again)
    outputs.append(second)
    assert vts.wait_for(authenticated(2), TIMEOUT_S)
    assert vts.count("AuthenticationTokenRequest") == 1  # no second popup
    assert vts.state.authentications == [(1, True), (2, True)]
    second.send(make_frame(weights={"jawOpen": 0.5}))
    assert vts.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)


def test_the_token_lives_in_the_users_config_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_token_path() == tmp_path / "xdg" / "ksdiff-runtime" / "vtube_studio_token"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_token_path() == tmp_path / "home" / ".config" / "ksdiff-runtime" / "vtube_studio_token"


def test_a_refused_stored_token_is_replaced_once(vts, token_path, outputs, logs):
    token_path.parent.mkdir(parents=True)
    token_path.write_text("revoked-token\n")
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    assert vts.state.authentications == [(1, False), (1, True)]
    assert vts.count("AuthenticationTokenRequest") == 1
    assert logs.count("refused the stored token") == 1
    new = token_path.read_text().strip()
    assert new != "revoked-token" and new in vts.tokens and stat.S_IMODE(token_path.stat().st_mode) == 0o600


def test_a_denied_popup_is_not_asked_again(vts, token_path, outputs, logs):
    vts.approve = False
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert logs.wait("access denied in VTube Studio")
    message = next(line for line in logs.lines if "access denied" in line)
    assert "restart serve with --vts and click 'Allow'" in message
    out.send(make_frame(weights={"jawOpen": 0.5}))  # frames still come: nothing is sent, nothing breaks
    # no second popup, no retry storm: nothing more reaches VTube Studio
    assert not vts.wait_for(lambda s: len(s.requests) > 2 or s.connections > 1, 1.5)
    assert vts.count("AuthenticationTokenRequest") == 1 and vts.state.errors == [("AuthenticationTokenRequest", 50)]
    assert logs.count("access denied") == 1 and not token_path.exists() and vts.injections() == []
    started = time.monotonic()
    out.close()
    assert time.monotonic() - started < 0.5


def test_close_is_bounded_while_the_popup_waits_for_the_user(vts, token_path):
    vts.approve = None  # the popup stays open
    out = VtsOutput(vts.url, token_path=token_path)
    try:
        assert vts.wait_for(lambda s: any(kind == "AuthenticationTokenRequest" for _, _, kind, _ in s.requests),
                            TIMEOUT_S)
    finally:
        started = time.monotonic()
        out.close()
        took = time.monotonic() - started
    assert took < 2.0 and not out._thread.is_alive(), took


def test_access_revoked_mid_stream_asks_for_a_new_token_once(vts, token_path, outputs, logs):
    from ksdiff_runtime.outputs.vts import PLUGIN_DEVELOPER, PLUGIN_NAME

    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    first = token_path.read_text().strip()
    with playing(out):
        assert vts.wait_for(lambda s: len(s.injections) >= 5, TIMEOUT_S)
        vts.revoke((PLUGIN_NAME, PLUGIN_DEVELOPER))
        # error 50 -> reconnect -> the stored token is refused -> one new popup, allowed -> values again
        assert vts.wait_for(lambda s: s.injections[-1].connection == 2, TIMEOUT_S)
    assert ("InjectParameterDataRequest", 50) in vts.state.errors
    assert vts.count("AuthenticationTokenRequest") == 2
    assert vts.state.authentications == [(1, True), (2, False), (2, True)]
    second = token_path.read_text().strip()
    assert second != first and second in vts.tokens and first not in vts.tokens
    assert logs.count("no longer accepts this plugin") == 1 and logs.count("refused the stored token") == 1


def test_a_vts_that_stops_answering_is_reconnected(vts, token_path, outputs, logs, monkeypatch):
    from ksdiff_runtime.outputs import vts as vts_module

    monkeypatch.setattr(vts_module, "REPLY_TIMEOUT_S", 0.5)
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    vts.mute_injections = True  # values arrive, answers never come
    longest = play(out, speech_frames(60))  # 2 s of frames: send() never waits for VTube Studio
    assert logs.wait("has not answered")
    assert vts.wait_for(lambda s: s.connections >= 2, TIMEOUT_S)
    assert longest < 0.25  # a wait on the answer would last REPLY_TIMEOUT_S (0.5 s here)
    vts.mute_injections = False
    assert vts.wait_for(lambda s: authenticated(2)(s) and s.injections[-1].connection >= 2, TIMEOUT_S)


# --- custom parameters ------------------------------------------------------------------------------
def test_custom_parameters_are_created_once_per_session_and_sent(vts, token_path, outputs):
    out = VtsOutput(vts.url, token_path=token_path, custom=True)
    outputs.append(out)
    frame = make_frame(weights={"jawOpen": 0.5, "mouthClose": 0.2, "eyeBlinkRight": 0.7})
    out.send(frame)
    assert vts.wait_for(lambda s: len(s.injections) >= 3, TIMEOUT_S)  # the frame, then keep-alives
    assert len(vts.state.created) == 52 and len(set(vts.state.created)) == 52
    assert set(vts.state.created) == set(CUSTOM_PARAMETERS)
    assert all(n.isascii() and n.isalnum() and 4 <= len(n) <= 32 for n in vts.state.created)
    assert "KSDiffJawOpen" in vts.state.created and "KSDiffMouthLowerDownRight" in vts.state.created
    values = vts.injections()[0].values
    assert set(values) == set(REST_VALUES) | set(CUSTOM_PARAMETERS)
    assert (values["KSDiffJawOpen"], values["KSDiffMouthClose"], values["KSDiffEyeBlinkRight"]) == pytest.approx(
        (0.5, 0.2, 0.7))
    assert values["MouthOpen"] == pytest.approx(0.5)
    assert vts.state.errors == []
    vts.drop_connections()  # a new session creates them again (VTube Studio may have lost them), once
    assert vts.wait_for(lambda s: s.injections[-1].connection == 2, TIMEOUT_S)
    assert len(vts.state.created) == 2 * 52 and vts.count("ParameterCreationRequest") == 2 * 52


# --- VTube Studio away, off, gone and back -------------------------------------------------------
@pytest.mark.timeout(60)
def test_vts_not_running_is_said_once_and_it_connects_when_vts_appears(token_path, outputs, logs):
    port = free_port()
    out = VtsOutput(f"ws://127.0.0.1:{port}", token_path=token_path)
    outputs.append(out)
    assert logs.wait(f"is VTube Studio running with 'Start API' enabled on port {port}?")
    longest = play(out, speech_frames(10), fps=100)  # frames keep coming; send() never waits
    assert longest < 0.25  # (a busy machine's GIL switch at worst) never a wait on the connection
    # several retries later (every 0.5 s), still one message
    assert not logs.wait("vts: connected", timeout=1.2)
    assert logs.count("Start API") == 1
    fake = FakeVTubeStudio(port=port)
    try:
        appeared = time.monotonic()
        assert fake.wait_for(lambda s: len(s.injections) >= 1, TIMEOUT_S)
        took = fake.injections()[0].t - appeared
        print(f"vts: VTube Studio appeared; parameters {took:.3f} s later")
        assert took < 2.0
        assert fake.injections()[0].values == pytest.approx(REST_VALUES)  # the newest frame: the last, neutral
        assert logs.wait("vts: connected to VTube Studio")
    finally:
        out.close()
        fake.close()


def test_api_access_switched_off_is_said_once(vts, token_path, outputs, logs):
    vts.api_active = False
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert logs.wait("plugin API is off")
    assert "turn on 'Start API (allow plugins)'" in next(line for line in logs.lines if "API is off" in line)
    assert vts.wait_for(lambda s: s.connections >= 3, TIMEOUT_S)  # it keeps trying, quietly
    assert logs.count("plugin API is off") == 1
    vts.api_active = True
    assert vts.wait_for(authenticated(), TIMEOUT_S)


@pytest.mark.timeout(90)
def test_cut_connections_and_a_restart_are_recovered_within_2_s(vts, token_path, outputs, logs):
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    with playing(out):
        assert vts.wait_for(lambda s: len(s.injections) >= 10, TIMEOUT_S)
        # 1. VTube Studio cuts the connection mid-stream (no closing handshake)
        cut = vts.drop_connections()
        assert vts.wait_for(lambda s: s.injections[-1].connection == 2, TIMEOUT_S)
        after_cut = next(i for i in vts.injections() if i.connection == 2).t - cut
        # 2. VTube Studio quits and starts again a moment later (the output retries meanwhile)
        quit_at, attempts = vts.stop(), out.attempts
        assert logs.wait("nothing listens at")
        assert wait_until(lambda: out.attempts >= attempts + 3)  # down for a few retries
        restarted = vts.start()
        assert vts.wait_for(lambda s: s.injections[-1].connection == 3, TIMEOUT_S)
        after_restart = next(i for i in vts.injections() if i.connection == 3).t - restarted
        assert vts.wait_for(lambda s: len([i for i in s.injections if i.connection == 3]) >= 10, TIMEOUT_S)
    print(f"vts: connection cut -> parameters again after {after_cut:.3f} s; VTube Studio down "
          f"{restarted - quit_at:.2f} s, restarted -> parameters again after {after_restart:.3f} s")
    assert after_cut < 2.0 and after_restart < 2.0
    assert vts.count("AuthenticationTokenRequest") == 1  # the stored token is reused: no popup again
    assert vts.state.errors == []
    # within each connection (the second lasted only until the quit) the values kept coming
    for connection in (1, 2, 3):
        mine = [i for i in vts.injections() if i.connection == connection]
        assert mine and (len(mine) == 1 or max(gaps(mine)) < 1.0)


def test_sessions_that_end_as_soon_as_they_start_are_retried_ever_less_often(vts, token_path, outputs):
    """A VTube Studio that authenticates the plugin and then refuses every injection: each session ends at its first
    injection. The output backs off (0.5 s doubling to 10 s) instead of reconnecting at once in a loop that took a
    core (1300 connections in 3 s)."""
    vts.refuse_injections = True
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    with playing(out):
        assert vts.wait_for(lambda s: s.connections >= 4, TIMEOUT_S)
        first = vts.state.connections
        t0 = time.monotonic()
        # the next connection: the delays double (0.5, 1, 2, 4 s), so it comes 4 s after the fourth
        assert vts.wait_for(lambda s: s.connections > first, TIMEOUT_S)
        waited = time.monotonic() - t0
    assert out.sessions >= 4 and waited > 2.0, (out.sessions, waited)


@pytest.mark.parametrize("error_id", [float("inf"), "8", 8.5, [8]])
def test_an_error_id_that_is_not_a_whole_number_is_an_unknown_error(vts, token_path, outputs, logs, error_id):
    """A broken VTube Studio (or something else on its port) answers with an errorID that is no integer: the output
    reads it as an unknown error (said once) and goes on sending. Before, 1e400 (Infinity) raised OverflowError and
    stopped the output for good."""
    vts.refuse_injections = True
    vts.error_id = error_id
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    with playing(out):
        assert vts.wait_for(lambda s: len(s.errors) >= 20, TIMEOUT_S)  # refused, and sent again and again
    assert logs.wait("VTube Studio refused parameter values: error -1")
    assert logs.count("error -1") == 1 and logs.count("the output stopped") == 0


@pytest.mark.parametrize("answered", ["APIStateRequest", "InjectParameterDataRequest"])
def test_a_message_nested_too_deeply_is_an_unreadable_answer(vts, token_path, outputs, logs, answered):
    """Something on VTube Studio's port answers with JSON nested deeper than Python's recursion limit (10 kB of
    brackets): the output says it cannot read the answer and reconnects. Before, json.loads raised RecursionError:
    as an answer to the handshake it stopped the output for good ("the output stopped"); mid-session it killed the
    replies' reader silently and the values stalled until the 5 s no-answer timeout."""
    vts.replace_once[answered] = "[" * 5000 + "]" * 5000
    out = VtsOutput(vts.url, token_path=token_path)
    outputs.append(out)
    with playing(out):
        assert logs.wait("unexpected answer from VTube Studio (ValueError: JSON nested too deeply)")
        assert vts.wait_for(lambda s: s.injections and s.injections[-1].connection == 2, TIMEOUT_S)
    assert logs.count("the output stopped") == 0 and logs.count("has not answered") == 0


# --- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize("text,message", [
    ("127.0.0.1:8001", "expected a WebSocket URL"),
    ("http://127.0.0.1:8001", "expected a WebSocket URL"),
    ("wss://127.0.0.1:8001", "expected a WebSocket URL"),
    ("ws://:8001", "expected a WebSocket URL"),
    ("ws://127.0.0.1:8001/api?x=1", "expected a WebSocket URL"),
    ("ws://127.0.0.1", "give the port"),
    ("ws://127.0.0.1:0", "give the port"),
    ("ws://127.0.0.1:99999", "from 1 to 65535"),
    ("ws://127.0.0.1:port", "from 1 to 65535"),
])
def test_bad_urls_are_clear_errors(text, message):
    with pytest.raises(OutputConfigError, match=message) as e:
        VtsOutput(text)
    assert "--vts" in str(e.value)
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"vts": text})


def test_flags_and_config_keys(tmp_path):
    from ksdiff_runtime.cli import build_parser
    from ksdiff_runtime.cli.serve import build_outputs

    argv = ["serve", "--vts"]
    args = build_parser(argv).parse_args(argv)
    assert (args.vts, args.vts_stream, args.vts_custom) == (DEFAULT_URL, None, None)
    argv = ["serve", "--vts", "ws://[::1]:8002", "--vts-stream", "mic", "--vts-custom"]
    args = build_parser(argv).parse_args(argv)
    assert (args.vts, args.vts_stream, args.vts_custom) == ("ws://[::1]:8002", "mic", True)
    config = tmp_path / "serve.toml"
    config.write_text('vts = "ws://127.0.0.1:8001"\nvts_stream = "mic"\nvts_custom = true\n')
    loaded = load_config(config, {"vts_stream": "npc"})  # a flag wins over the file
    assert (loaded.vts, loaded.vts_stream, loaded.vts_custom) == ("ws://127.0.0.1:8001", "npc", True)
    shipped = load_config(Path(__file__).resolve().parent.parent / "configs" / "serve.toml", {})
    assert (shipped.vts, shipped.vts_stream, shipped.vts_custom) == ("", "", False)  # off unless asked for
    with pytest.raises(ConfigError, match="not a stream id"):
        load_config(None, {"vts": DEFAULT_URL, "vts_stream": "mic stream"})
    outputs = build_outputs(ServeConfig(vts=f"ws://127.0.0.1:{free_port()}", vts_stream="mic", vts_custom=True))
    try:
        assert [(o.name, o.stream, o.custom) for o in outputs] == [("vts", "mic", True)]
    finally:
        for out in outputs:
            out.close()


def test_serve_with_a_bad_vts_url_exits_2_before_loading_the_model():
    bad = cli("serve", "--vts", "ws://127.0.0.1:99999")
    assert bad.returncode == 2 and "--vts 'ws://127.0.0.1:99999'" in bad.stderr and "65535" in bad.stderr
    unknown = cli("serve", "--vts", "ws://no-such-host.invalid:8001", "--backend", "onnxruntime")
    assert unknown.returncode == 2 and "cannot resolve 'no-such-host.invalid'" in unknown.stderr
    assert "serving" not in unknown.stderr


# --- the real runtime and serve ---------------------------------------------------------------------
class Recorder:
    """An output that keeps the frames it is handed (what the other outputs got)."""

    name = "recorder"

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def send(self, event: object) -> None:
        if isinstance(event, Frame):
            self.frames.append(event)

    def close(self) -> None:
        pass


@pytest.fixture
def speech_1s_wav(tmp_path: Path, speech_16k: np.ndarray) -> Path:
    path = tmp_path / "line.wav"
    sf.write(str(path), speech_16k[:16000], 16000, subtype="PCM_16")
    return path


@pytest.mark.timeout(180)
def test_the_runtime_feeds_vts_from_a_file(serve_engine, speech_1s_wav, vts, token_path):
    from ksdiff_runtime.server.runtime import Runtime
    from ksdiff_runtime.sources import FileSource

    out, recorder = VtsOutput(vts.url, token_path=token_path), Recorder()
    assert vts.wait_for(authenticated(), TIMEOUT_S)
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", outputs=[out, recorder],
                 admission=False) as rt:
        sid = rt.add_source(FileSource(speech_1s_wav, realtime=True, stream_id="line"))
        assert rt.wait_until_idle(timeout=60)
        assert wait_until(lambda: recorder.frames and recorder.frames[-1].last)
        t_end = time.monotonic()
        assert vts.wait_for(lambda s: s.injections[-1].t - t_end >= 1.0, TIMEOUT_S)  # the keep-alive goes on
        errors = dict(rt.output_errors)
    frames = [f for f in recorder.frames if f.stream == sid]
    injections = vts.injections()
    mouth = [i.values["MouthOpen"] for i in injections]
    print(f"vts: {len(frames)} frames from the runtime, {len(injections)} injections, MouthOpen up to "
          f"{max(mouth):.2f}, max gap {max(gaps(injections)):.3f} s")
    assert errors == {"zmq": 0, "vts": 0, "recorder": 0}
    # 1 s, then the ease to rest (the indices in the message: a gap is frames shed on a machine too busy)
    assert len(frames) == stream_frames(16_000, 30) and frames[-1].last, [f.index for f in frames]
    assert len(injections) >= 0.7 * len(frames) and max(mouth) > 0.05 and max(gaps(injections)) <= 1.0
    assert injections[-1].values == pytest.approx(vts_parameters(frames[-1]), abs=1e-5)
    assert vts.state.errors == [] and vts.state.violations == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_goes_on_without_vts_and_drives_it_once_it_appears(speech_wav, tmp_path):
    """The real command: VTube Studio is not running when serve starts (a clear message, once; serve
    goes on), then it appears and gets the file's frames; serve stops normally."""
    port = free_port()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    server = subprocess.Popen([sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--pub", "tcp://127.0.0.1:0",
                               "--router", "tcp://127.0.0.1:0", "--backend", "onnxruntime", "--file", str(speech_wav),
                               "--exit-when-done", "--vts", f"ws://127.0.0.1:{port}"],
                              stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    changed = threading.Condition()

    def read() -> None:
        assert server.stderr is not None
        for line in server.stderr:
            with changed:
                lines.append(line.rstrip())
                changed.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    fake: FakeVTubeStudio | None = None
    try:
        with changed:
            assert changed.wait_for(lambda: any("is VTube Studio running" in ln for ln in lines), 120), lines
        fake = FakeVTubeStudio(port=port)
        assert fake.wait_for(lambda s: any(i.values["MouthOpen"] > 0.05 for i in s.injections), 120)
        code = server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        reader.join(timeout=5)
        if fake is not None:
            fake.close()
    text = "\n".join(lines)
    assert code == 0, text[-3000:]
    assert sum("is VTube Studio running" in ln for ln in lines) == 1
    assert "stream speech ended (ended)" in text and "Traceback" not in text
    assert (tmp_path / "xdg" / "ksdiff-runtime" / "vtube_studio_token").is_file()
