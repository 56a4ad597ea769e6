"""Frame from the golden vectors, access by name, the Unity/remap helpers, Animation, error classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ksdiff_sdk import (
    Animation,
    BusyError,
    Frame,
    InternalError,
    KsdiffError,
    StreamLost,
    UnknownStreamError,
    protocol,
    remap,
    schema,
    unity_weights,
)
from ksdiff_sdk.errors import ERROR_CLASSES

GOLDEN = Path(__file__).resolve().parents[2] / "protocol" / "golden"
if not (GOLDEN / "index.json").is_file():
    pytest.skip("protocol/golden/ not found (the SDK tests run from the ksdiff-runtime repository)",
                allow_module_level=True)
INDEX = json.loads((GOLDEN / "index.json").read_text())
FRAME_VECTORS = [e for e in INDEX["valid"] if e["type"] == "frame"]


def golden_frame(name: str) -> Frame:
    return Frame.from_message(protocol.decode((GOLDEN / f"{name}.msgpack").read_bytes()))


def test_there_are_frame_vectors():
    assert {e["name"] for e in FRAME_VECTORS} >= {"frame", "frame_last", "frame_future_minor"}


@pytest.mark.parametrize("entry", FRAME_VECTORS, ids=lambda e: e["name"])
def test_frame_from_every_golden_frame_vector(entry):
    frame = golden_frame(entry["name"])
    want = json.loads((GOLDEN / f"{entry['name']}.json").read_text())
    assert entry["topic"] == protocol.frame_topic(frame.stream).decode()
    for key in ("stream", "seq", "index", "fps", "t_audio", "captured_ns", "published_ns", "lookahead_ms",
                "compute_ms", "last"):
        assert getattr(frame, key) == want[key], key
    bs = np.frombuffer(protocol.decode((GOLDEN / f"{entry['name']}.msgpack").read_bytes())["blendshapes"], "<f4")
    assert frame.blendshapes.dtype == np.float32 and frame.blendshapes.shape == (52,)
    np.testing.assert_array_equal(frame.blendshapes, bs)
    assert frame.head.dtype == np.float32 and frame.head.tolist() == want["head"]
    assert frame.gaze.dtype == np.float32 and frame.gaze.tolist() == want["gaze"]
    assert list(frame.weights()) == list(schema.BLENDSHAPES)


def test_frame_access_by_name_matches_the_vector_note():
    f = golden_frame("frame")  # jawOpen 0.5, eyeBlink* 0.25, mouthSmileLeft 0.75, tongueOut 1
    assert f["jawOpen"] == 0.5
    assert f["eyeBlinkLeft"] == f["eyeBlinkRight"] == 0.25
    assert f["mouthSmileLeft"] == 0.75 and f["tongueOut"] == 1.0
    assert f["headPitch"] == 0.125 and f["headYaw"] == -0.25 and f["headRoll"] == 0.0625
    assert f["leftEyeYaw"] == pytest.approx(np.radians(15), rel=1e-6)
    assert f.weights()["jawOpen"] == 0.5 and len(f.weights()) == 52
    assert f.latency_ms == 150.0
    assert golden_frame("frame_last").latency_ms is None  # captured_ns nil
    assert golden_frame("frame_last").last and golden_frame("frame_last").fps == 60


def test_unknown_name_is_a_clear_key_error():
    f = golden_frame("frame")
    with pytest.raises(KeyError) as e:
        f["jawopen"]
    assert "jawopen" in str(e.value) and "jawOpen" in str(e.value) and "tongueOut" in str(e.value)


def test_from_message_refuses_other_types():
    with pytest.raises(ValueError, match="not a frame"):
        Frame.from_message(protocol.decode((GOLDEN / "hello.msgpack").read_bytes()))


def test_unity_weights_scale_and_mapping():
    f = golden_frame("frame")
    w = unity_weights(f)
    assert list(w) == list(schema.BLENDSHAPES)
    assert w["jawOpen"] == 50.0 and w["tongueOut"] == 100.0 and all(0.0 <= v <= 100.0 for v in w.values())
    mapped = unity_weights(f, {"jawOpen": "Mouth_Open", "mouthSmileLeft": "Smile_L"})
    assert mapped == {"Mouth_Open": 50.0, "Smile_L": 75.0}  # names not in the mapping are dropped
    with pytest.raises(KeyError, match="jawOpn"):
        unity_weights(f, {"jawOpn": "Mouth_Open"})


def test_remap_scale_and_duplicate_target():
    f = golden_frame("frame")
    assert remap(f, {"jawOpen": "jaw"}, scale=2.0) == {"jaw": 1.0}
    with pytest.raises(ValueError, match="blink"):
        remap(f, {"eyeBlinkLeft": "blink", "eyeBlinkRight": "blink"})
    # an angle is no weight to scale onto a morph target: refused, saying what it is (the message listed it as known)
    with pytest.raises(KeyError, match="'headYaw' is an angle in radians, not a blendshape weight") as e:
        remap(f, {"headYaw": "yaw"})
    assert "gaze:" not in str(e.value)


def test_animation_orders_by_index_and_stacks():
    frames = [golden_frame("frame"), golden_frame("frame_last"), golden_frame("frame_future_minor")]
    anim = Animation.from_frames("npc1", 30, frames, expected_frames=3)
    assert [f.index for f in anim.frames] == sorted({f.index for f in frames})
    assert anim.blendshapes.shape == (len(anim), 52) and anim.head.shape == (len(anim), 3)
    assert anim.gaze.shape == (len(anim), 4) and anim.t_audio.dtype == np.float64
    assert anim.missing == 3 - len(anim)
    np.testing.assert_array_equal(anim["jawOpen"], anim.blendshapes[:, 17])
    # head and gaze curves by name, as a frame's values (the error message listed them as known names)
    np.testing.assert_array_equal(anim["headYaw"], anim.head[:, 1])
    np.testing.assert_array_equal(anim["rightEyePitch"], anim.gaze[:, 3])
    assert anim["headYaw"][0] == anim.frames[0]["headYaw"]
    with pytest.raises(KeyError, match="jawopen"):
        anim["jawopen"]
    empty = Animation.from_frames("x", 30, [])
    assert empty.blendshapes.shape == (0, 52) and len(empty) == 0 and empty.missing == 0


def test_error_classes_cover_every_code():
    assert set(ERROR_CLASSES) == set(protocol.ERROR_CODES)
    err = KsdiffError.from_reply(protocol.decode((GOLDEN / "error.msgpack").read_bytes()))
    assert isinstance(err, UnknownStreamError) and err.code == "unknown_stream" and err.request_type == "audio"
    busy = KsdiffError.from_reply({"code": "busy", "message": "full", "request_type": "open_stream"})
    assert isinstance(busy, BusyError) and busy.code == "busy"
    odd = KsdiffError.from_reply({"code": "overloaded", "message": "?", "request_type": None})
    assert isinstance(odd, InternalError) and odd.code == "internal"  # SPEC 4.7: unknown code = internal
    lost = StreamLost("npc1", "restart", "gone")
    assert isinstance(lost, UnknownStreamError) and lost.reason == "restart" and lost.stream == "npc1"
