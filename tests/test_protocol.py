"""Wire protocol v1: golden vectors, encoder/decoder agreement, topics, validation, limits."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_sdk import protocol as P

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "protocol" / "golden"
INDEX = json.loads((GOLDEN / "index.json").read_text())


def _make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "protocol" / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def code_of(payload: bytes) -> str:
    with pytest.raises(P.ProtocolError) as e:
        P.decode(payload)
    return e.value.code


# --- golden vectors --------------------------------------------------------------------------
def test_golden_bytes_are_what_the_encoder_produces_today():
    mg = _make_golden()
    valid = mg.valid_vectors()
    assert [v["name"] for v in valid] == [v["name"] for v in INDEX["valid"]]
    for vec, entry in zip(valid, INDEX["valid"], strict=True):
        assert (GOLDEN / f"{vec['name']}.msgpack").read_bytes() == vec["payload"], vec["name"]
        assert entry["topic"] == (None if vec["topic"] is None else vec["topic"].decode()), vec["name"]
    invalid = mg.invalid_vectors({v["name"]: v["payload"] for v in valid})
    assert [v["name"] for v in invalid] == [v["name"] for v in INDEX["invalid"]]
    for vec in invalid:
        assert (GOLDEN / f"{vec['name']}.msgpack").read_bytes() == vec["payload"], vec["name"]


@pytest.mark.parametrize("entry", INDEX["valid"], ids=lambda e: e["name"])
def test_golden_decodes_to_its_json(entry):
    msg = P.decode((GOLDEN / f"{entry['name']}.msgpack").read_bytes())
    assert msg["type"] == entry["type"]
    assert P.to_json_compatible(msg) == json.loads((GOLDEN / f"{entry['name']}.json").read_text())


@pytest.mark.parametrize("entry", INDEX["invalid"], ids=lambda e: e["name"])
def test_invalid_golden_raises_its_code(entry):
    assert code_of((GOLDEN / f"{entry['name']}.msgpack").read_bytes()) == entry["error"]


def test_every_message_type_has_a_golden_vector():
    assert {e["type"] for e in INDEX["valid"]} == set(P.SCHEMA)
    assert {e["error"] for e in INDEX["invalid"]} >= {"malformed", "too_large", "unsupported_version",
                                                      "unknown_type", "bad_audio"}


def test_golden_frame_content():
    msg = P.decode((GOLDEN / "frame.msgpack").read_bytes())
    bs, head, gaze = P.frame_arrays(msg)
    assert bs[motion.index("jawOpen")] == 0.5 and bs[motion.index("tongueOut")] == 1.0
    assert head.tolist() == [0.125, -0.25, 0.0625]
    np.testing.assert_allclose(gaze, motion.gaze_from_blendshapes(bs))
    assert gaze[0] > 0 and gaze[1] > 0  # left eye: toward the face's left, down
    assert msg["published_ns"] - msg["captured_ns"] == 150_000_000
    # the blendshapes bin is little-endian float32 in canonical order, whatever the host
    raw = msg["blendshapes"]
    j = motion.index("jawOpen")
    assert raw[4 * j : 4 * j + 4] == b"\x00\x00\x00\x3f"


def test_hello_matches_motion():
    msg = P.decode((GOLDEN / "hello.msgpack").read_bytes())
    assert msg["blendshapes"] == list(motion.BLENDSHAPES)
    assert msg["head"] == ["headPitch", "headYaw", "headRoll"] == list(motion.HEAD_ROTATION)
    assert msg["gaze"] == list(motion.GAZE)
    assert msg["sample_rate"] == motion.SAMPLE_RATE == 16000 and msg["fps"] == motion.FPS
    assert msg["max_message_bytes"] == P.MAX_MESSAGE_BYTES == 1 << 20
    assert msg["head_units"] == "rad"


def test_spec_lists_blendshapes_and_error_codes():
    spec = (ROOT / "protocol" / "SPEC.md").read_text()
    positions = [spec.find(f"`{name}`") for name in motion.BLENDSHAPES]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)
    for code in P.ERROR_CODES:
        assert f"`{code}`" in spec
    for mtype in P.SCHEMA:
        assert f"`{mtype}`" in spec


# --- encode/decode ---------------------------------------------------------------------------
def test_frame_round_trip_random():
    rng = np.random.default_rng(0)
    for i in range(50):
        bs = rng.random(52).astype(np.float32)
        head = rng.normal(size=3).astype(np.float32)
        gaze = motion.gaze_from_blendshapes(bs)
        captured = None if i % 5 == 0 else int(rng.integers(0, 2**62))
        kw = dict(stream=f"npc{i}", seq=int(rng.integers(0, 2**63)), index=i, fps=30, t_audio=i / 30,
                  blendshapes=bs, head=head, gaze=gaze, captured_ns=captured,
                  published_ns=int(rng.integers(-(2**63), 2**63)), lookahead_ms=float(rng.random() * 500),
                  compute_ms=float(rng.random() * 50), last=i == 49)
        topic, payload = P.encode_frame(**kw)
        assert topic == f"ksd1/frame/npc{i}/".encode()
        msg = P.decode(payload)
        bs2, head2, gaze2 = P.frame_arrays(msg)
        assert np.array_equal(bs2, bs) and np.array_equal(head2, head) and np.array_equal(gaze2, gaze)
        for k in ("stream", "seq", "index", "fps", "t_audio", "captured_ns", "published_ns", "last"):
            assert msg[k] == kw[k], k
        assert msg["lookahead_ms"] == float(np.float32(kw["lookahead_ms"]))
        assert len(payload) < 450


def test_frame_encoder_rejects_bad_shapes():
    with pytest.raises(ValueError):
        P.encode_frame("a", 0, 0, 30, 0.0, np.zeros(51), np.zeros(3), np.zeros(4), None, 0, 0.0, 0.0)
    with pytest.raises(P.ProtocolError):
        P.encode_frame("a b", 0, 0, 30, 0.0, np.zeros(52), np.zeros(3), np.zeros(4), None, 0, 0.0, 0.0)
    bs = np.zeros(52)
    bs[3] = np.nan
    with pytest.raises(P.ProtocolError):
        P.encode_frame("a", 0, 0, 30, 0.0, bs, np.zeros(3), np.zeros(4), None, 0, 0.0, 0.0)


def test_requests_round_trip_and_validate():
    pcm = np.arange(8, dtype="<f4")
    msg = P.decode(P.encode_request("audio", stream="s", seq=1, pcm=pcm.tobytes()))
    assert np.array_equal(np.frombuffer(msg["pcm"], "<f4"), pcm)
    msg = P.decode(P.encode_request("audio", stream="s", seq=1, pcm=memoryview(pcm.tobytes())))
    assert isinstance(msg["pcm"], bytes)
    with pytest.raises(ValueError):
        P.encode_request("frame")
    with pytest.raises(P.ProtocolError) as e:
        P.encode_request("open_stream", sample_rate=16000, channels=9, format="f32le")
    assert e.value.code == "bad_audio"
    with pytest.raises(P.ProtocolError) as e:
        P.encode_request("open_stream", sample_rate=16000, channels=1, format="f32le", transcript="x" * 2001)
    assert e.value.code == "malformed"
    with pytest.raises(P.ProtocolError) as e:
        P.encode_request("end_stream")
    assert e.value.code == "malformed" and e.value.message_type == "end_stream"
    err = P.decode(P.encode_error("busy", "too many streams", "open_stream", req=4))
    assert (err["code"], err["request_type"], err["req"]) == ("busy", "open_stream", 4)
    # an error stays small whatever the request held: a type no request has is echoed up to 64 characters
    junk = "A" * 1_048_000
    err = P.decode(P.encode_error("unknown_type", junk, junk))
    assert err["request_type"] is None and len(err["message"]) == P.MAX_ERROR_MESSAGE_CHARS
    assert P.decode(P.encode_error("unknown_type", "x", "A" * 64))["request_type"] == "A" * 64
    with pytest.raises(ValueError):
        P.ProtocolError("nope", "not a code")


def test_unknown_keys_are_ignored():
    payload = pack({"v": [1, 0], "type": "end_stream", "stream": "npc1", "future": {"a": [1, 2]}, "z": b"\x00"})
    assert P.decode(payload)["stream"] == "npc1"


def test_minor_versions_accepted_major_refused():
    for minor in (0, 1, 99):
        P.decode(pack({"v": [1, minor], "type": "hello"}))
    for v in ([0, 9], [2, 0], [3, 1]):
        with pytest.raises(P.ProtocolError) as e:
            P.decode(pack({"v": v, "type": "hello"}))
        assert e.value.code == "unsupported_version"
    for v in (None, "1.0", [1], [1, 0, 0], [1, -1], [True, 0], [1.0, 0]):
        assert code_of(pack({"v": v, "type": "hello"})) == "malformed"


def test_unknown_type_detected():
    with pytest.raises(P.ProtocolError) as e:
        P.decode(pack({"v": [1, 0], "type": "set_mood", "mood": "happy"}))
    assert e.value.code == "unknown_type" and e.value.message_type == "set_mood"
    assert code_of(pack({"v": [1, 0], "type": 7})) == "malformed"
    assert code_of(pack({"v": [1, 0]})) == "malformed"


def test_hello_is_all_or_nothing():
    fields = P.hello_fields("0.1.0")
    P.decode(pack({"v": [1, 0], "type": "hello", **fields}))
    fields.pop("gaze")
    assert code_of(pack({"v": [1, 0], "type": "hello", **fields})) == "malformed"


def test_size_limit():
    overhead = len(P.encode_request("audio", stream="npc1", seq=0, pcm=b""))
    fits = P.MAX_MESSAGE_BYTES - overhead - 4  # bin32 header is 5 bytes vs bin8's 2
    payload = P.encode_request("audio", stream="npc1", seq=0, pcm=bytes(fits))
    assert len(payload) <= P.MAX_MESSAGE_BYTES
    assert len(P.decode(payload)["pcm"]) == fits
    with pytest.raises(P.ProtocolError) as e:
        P.encode_request("audio", stream="npc1", seq=0, pcm=bytes(P.MAX_MESSAGE_BYTES))
    assert e.value.code == "too_large"
    assert code_of(payload + b"\x00" * (P.MAX_MESSAGE_BYTES - len(payload) + 1)) == "too_large"
    # 16 s of 16 kHz float32 mono fits in one message
    assert len(P.encode_request("audio", stream="npc1", seq=0, pcm=bytes(16 * 16000 * 4))) <= P.MAX_MESSAGE_BYTES


def test_malformed_payloads():
    for payload in (b"", b"\xc1", b"\x81\xa1v", pack({1: 2}), pack("frame"), b"\x81\xa1v\x92\x01\x00\x00"):
        assert code_of(payload) == "malformed", payload
    assert code_of("not bytes") == "malformed"


# --- topics and stream ids -------------------------------------------------------------------
def test_topics_are_prefix_safe():
    t1, t10 = P.frame_topic("npc1"), P.frame_topic("npc10")
    assert t1 == b"ksd1/frame/npc1/" and t10 == b"ksd1/frame/npc10/"
    assert not t10.startswith(t1)  # subscribing to npc1 does not receive npc10
    assert t1.startswith(P.FRAME_TOPIC_PREFIX) and t10.startswith(P.FRAME_TOPIC_PREFIX)
    assert not P.stream_topic("npc1").startswith(P.FRAME_TOPIC_PREFIX)
    assert not P.STATS_TOPIC.startswith(P.FRAME_TOPIC_PREFIX) and not P.HELLO_TOPIC.startswith(P.FRAME_TOPIC_PREFIX)
    for topic in (t1, P.stream_topic("a.b-c_d"), P.STATS_TOPIC, P.HELLO_TOPIC):
        assert topic.endswith(b"/")
    assert P.parse_topic(t10) == ("frame", "npc10")
    assert P.parse_topic(P.stream_topic("x")) == ("stream", "x")
    assert P.parse_topic(P.STATS_TOPIC) == ("stats", None)
    assert P.parse_topic(b"ksd1/hello/") == ("hello", None)
    for bad in (b"ksd2/frame/a/", b"ksd1/frame/a", b"ksd1/frame/a/b/", b"ksd1/nope/"):
        with pytest.raises(P.ProtocolError):
            P.parse_topic(bad)


def test_stream_id_validation():
    for ok in ("a", "npc1", "NPC_1.v2-x", "x" * 64, "0", "..."):
        assert P.validate_stream_id(ok) == ok
    for bad in ("", "x" * 65, "npc 1", "npc/1", "npc1\n", "é", "a*", None, 5, b"npc1"):
        with pytest.raises(P.ProtocolError) as e:
            P.validate_stream_id(bad)
        assert e.value.code == "malformed"


def test_sdk_imports_neither_torch_nor_the_runtime():
    code = ("import sys, ksdiff_sdk, ksdiff_sdk.protocol; "
            "assert 'torch' not in sys.modules and 'ksdiff_runtime' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_an_error_code_from_a_newer_runtime_still_decodes():
    """SPEC 4.7: a client treats an unknown code as internal, so decoding must not refuse it."""
    payload = msgpack.packb({"v": [1, 3], "type": "error", "code": "overheated", "message": "later",
                             "request_type": None})
    assert P.decode(payload)["code"] == "overheated"
    with pytest.raises(ValueError, match="unknown error code"):
        P.encode_error("overheated", "x", None)


def test_the_documents_name_the_protocol_version_the_code_speaks():
    """The version lives in ksdiff_sdk.protocol; a README that names another sends a client's author to the wrong
    spec (README.md and docs/SERVE.md said v1.3 while the code spoke 1.4)."""
    said = {}
    for doc in ["README.md", "docs/SERVE.md", "sdk_python/README.md", "unity_sample/README.md",
                "unreal_sample/README.md"]:
        for version in re.findall(r"wire protocol v(\d+\.\d+)", (ROOT / doc).read_text()):
            said.setdefault(version, []).append(doc)
    assert said and set(said) == {".".join(map(str, P.VERSION))}, said
