"""Write the golden vectors of protocol v1 into protocol/golden/ (deterministic; values chosen by hand).

    .venv/bin/python protocol/make_golden.py

Valid vectors: <name>.msgpack (the exact bytes our encoder produces) + <name>.json (the same
message; bin fields as {"$bin": "<base64>"}). Invalid vectors: <name>.msgpack only; the error
code each must produce is in index.json. tests/test_protocol.py checks that the encoder
still produces these bytes; rerun this script only for a deliberate protocol change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "sdk_python"))

from ksdiff_runtime import motion  # noqa: E402
from ksdiff_sdk import protocol as P  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"
RUNTIME_VERSION = "0.2.0"
INSTANCE = "3f2a9c4b8d1e6f70"  # a runtime process's random id


def frame_blendshapes() -> np.ndarray:
    bs = np.zeros(motion.NUM_BLENDSHAPES, np.float32)
    bs[motion.index("jawOpen")] = 0.5
    bs[motion.index("eyeBlinkLeft")] = 0.25
    bs[motion.index("eyeBlinkRight")] = 0.25
    bs[motion.index("eyeLookOutLeft")] = 0.5  # both eyes look toward the face's own left
    bs[motion.index("eyeLookInRight")] = 0.5
    bs[motion.index("eyeLookDownLeft")] = 0.25  # and a little down
    bs[motion.index("eyeLookDownRight")] = 0.25
    bs[motion.index("mouthSmileLeft")] = 0.75
    bs[motion.index("tongueOut")] = 1.0
    return bs


def valid_vectors() -> list[dict]:
    """[{name, topic (bytes or None), payload, note}]"""
    out: list[dict] = []

    def add(name: str, topic: bytes | None, payload: bytes, note: str) -> None:
        out.append({"name": name, "topic": topic, "payload": payload, "note": note})

    topic, payload = P.encode_hello(RUNTIME_VERSION, instance=INSTANCE)
    add("hello", topic, payload, "the runtime's hello (published on ksd1/hello/ and the reply to a hello request)")
    add("hello_reply", None, P.encode_hello(RUNTIME_VERSION, req=7, instance=INSTANCE)[1],
        "reply to a hello request that had req=7")
    add("hello_request", None, P.encode_request("hello"), "client -> runtime: ask for the schema")

    bs = frame_blendshapes()
    head = np.array([0.125, -0.25, 0.0625], np.float32)  # chin a little down, face turned to its right, tilt
    topic, payload = P.encode_frame(
        stream="npc1", seq=42, index=45, fps=30, t_audio=1.5, blendshapes=bs, head=head,
        gaze=motion.gaze_from_blendshapes(bs), captured_ns=1_000_000_000_000, published_ns=1_000_150_000_000,
        lookahead_ms=100.0, compute_ms=12.5, last=False,
    )
    add("frame", topic, payload,
        "jawOpen 0.5, eyeBlink* 0.25, eyes look left (0.5) and down (0.25), mouthSmileLeft 0.75, tongueOut 1; "
        "head pitch 0.125, yaw -0.25, roll 0.0625 rad; published 150 ms after capture")
    zeros = np.zeros(motion.NUM_BLENDSHAPES, np.float32)
    topic, payload = P.encode_frame(
        stream="npc10", seq=0, index=0, fps=60, t_audio=0.0, blendshapes=zeros, head=np.zeros(3), gaze=np.zeros(4),
        captured_ns=None, published_ns=5_000, lookahead_ms=0.0, compute_ms=0.0, last=True,
    )
    add("frame_last", topic, payload, "a neutral first-and-last frame of stream npc10 at 60 fps; capture time unknown")
    # a frame from a future minor version: v [1, 7] and an extra key, which readers ignore
    frame_vec = next(v for v in out if v["name"] == "frame")
    msg = msgpack.unpackb(frame_vec["payload"], raw=False)
    msg["v"] = [1, 7]
    msg["mood"] = "cheerful"
    add("frame_future_minor", frame_vec["topic"], P._pack(msg), "v [1, 7] with an unknown key 'mood': must decode")

    topic, payload = P.encode_stream_start("npc1", "sdk", published_ns=999_000_000_000)
    add("stream_start", topic, payload, "stream npc1 opened by an SDK client")
    topic, payload = P.encode_stream_start("npc2", "sdk", published_ns=999_500_000_000, mode="line",
                                           latency_ms=233.33333333333334)
    add("stream_start_line", topic, payload, "stream npc2 opened as a line; the runtime states 233.3 ms latency (1.2)")
    topic, payload = P.encode_stream_end("npc1", "sdk", "ended", frames=46, published_ns=1_000_200_000_000)
    add("stream_end", topic, payload, "stream npc1 ended by end_stream after 46 frames")
    topic, payload = P.encode_stats(
        uptime_s=120.5,
        streams={"mic": {"fps": 30.0, "latency_p50_ms": 96.5, "latency_p95_ms": 128.25, "frames": 3600, "drops": 0,
                         "source": "mic", "sanitized": 0, "shed": 0},
                 "npc1": {"fps": 29.5, "latency_p50_ms": 110.0, "latency_p95_ms": 140.75, "frames": 46,
                          "drops": 2, "source": "sdk", "sanitized": 12, "shed": 2}},
        drops=2, published_ns=1_120_500_000_000, refused={"malformed": 3, "forbidden": 1}, capacity=2,
    )
    add("stats", topic, payload, "two live streams; 2 frames of npc1 shed under load; 4 requests refused; room for 2")

    add("open_stream", None,
        P.encode_request("open_stream", stream="npc1", sample_rate=48_000, channels=2, format="s16le",
                         transcript="Hello there.", seed=3, req=1),
        "open npc1 for 48 kHz stereo s16le audio, with a transcript and a seed")
    add("open_stream_line", None,
        P.encode_request("open_stream", stream="npc2", sample_rate=24_000, channels=1, format="f32le", mode="line",
                         controls={"strength": {"mouth": 1.25, "head": 0.5},
                                   "shapes": {"jawOpen": {"gain": 1.1, "max": 0.8}}, "timing_offset_ms": -20.0},
                         req=3),
        "open npc2 as a line (audio already there, e.g. TTS) with artists' controls (1.2)")
    add("set_controls", None,
        P.encode_request("set_controls", stream="mic", controls={"smoothing_ms": {"head": 80.0}}, req=9),
        "smooth the head of the runtime's own mic stream (1.2)")
    add("set_controls_mood", None,
        P.encode_request("set_controls", stream="npc1", controls={"mood": "happy", "mood_intensity": 0.625}, req=4),
        "npc1 happy, at 0.625 of the mood's full expression (1.3)")
    add("set_controls_style", None,
        P.encode_request("set_controls", stream="npc1", controls={"style": "lively"}, req=6),
        "npc1 moves like the built-in lively take: more head, brow and mouth motion than the model's own (1.4)")
    add("open_stream_minimal", None,
        P.encode_request("open_stream", sample_rate=16_000, channels=1, format="f32le"),
        "let the runtime name the stream; 16 kHz mono float32")
    pcm_s16 = np.array([0, 1000, -1000, 32767, -32768, 0], "<i2").tobytes()  # 3 stereo samples
    add("audio", None, P.encode_request("audio", stream="npc1", seq=0, at_sample=0, pcm=pcm_s16),
        "3 stereo s16le sample frames (L, R interleaved): (0, 1000), (-1000, 32767), (-32768, 0)")
    pcm_f32 = np.array([0.0, 0.5, -0.5, 1.0], "<f4").tobytes()
    add("audio_f32", None, P.encode_request("audio", stream="sdk-1", seq=5, pcm=pcm_f32),
        "4 mono f32le samples 0, 0.5, -0.5, 1 without at_sample (appended)")
    add("end_stream", None, P.encode_request("end_stream", stream="npc1", req=2), "end npc1")
    add("stream_opened", None, P.encode_reply("stream_opened", stream="npc1", fps=30, max_ahead_s=20.0, req=1),
        "reply to open_stream: push at most 20 s beyond real time")
    add("stream_opened_line", None,
        P.encode_reply("stream_opened", stream="npc2", fps=30, max_ahead_s=20.0, mode="line",
                       latency_ms=233.33333333333334, req=3),
        "reply to open_stream_line: start playing npc2's audio 233.3 ms after pushing it (1.2)")
    add("stream_ended", None, P.encode_reply("stream_ended", stream="npc1", frames=46, req=2), "reply to end_stream")
    add("controls_set", None,
        P.encode_reply("controls_set", stream="mic", req=9, controls={
            "strength": {"jaw": 1.0, "mouth": 1.0, "brows": 1.0, "eyes": 1.0, "head": 1.0},
            "shapes": {},
            "smoothing_ms": {"jaw": 0.0, "mouth": 0.0, "brows": 0.0, "eyes": 0.0, "head": 80.0},
            "timing_offset_ms": 0.0, "mood": "neutral", "mood_intensity": 1.0, "style": "none"}),
        "reply to set_controls: the stream's controls now, in full (1.2; the mood keys 1.3; the style 1.4)")
    add("error_bad_controls", None,
        P.encode_error("bad_controls", "shapes: unknown blendshape 'jawOpn'", "set_controls", stream="mic", req=10),
        "set_controls naming a blendshape that does not exist (1.2)")
    add("error_bad_mood", None,
        P.encode_error("bad_controls", "mood must be one of neutral, happy, sad, angry, surprised; got 'excited'",
                       "set_controls", stream="npc1", req=5),
        "set_controls naming a mood that does not exist: the message lists the moods (1.3)")
    add("error_bad_style", None,
        P.encode_error("bad_controls", "unknown style 'bouncy'; built-in styles: none, still, calm, natural, lively, "
                       "animated", "set_controls", stream="npc1", req=7),
        "set_controls naming a style that does not exist: the message lists the styles (1.4)")
    add("error", None, P.encode_error("unknown_stream", "no open stream 'npc9'", "audio", stream="npc9"),
        "audio pushed to a stream that is not open")
    add("error_nil_request_type", None, P.encode_error("malformed", "not one valid msgpack value", None),
        "an undecodable request: request_type nil")
    add("error_forbidden", None, P.encode_error("forbidden", "stream 'npc1' belongs to the client that opened it",
                                                "end_stream", stream="npc1", req=4),
        "end_stream for a stream another client opened (1.1)")
    return out


def invalid_vectors(valid: dict[str, bytes]) -> list[dict]:
    """[{name, payload, error, note}]"""
    v10 = [1, 0]

    def pack(obj: object) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    frame = msgpack.unpackb(valid["frame"], raw=False)
    short_bs = dict(frame, blendshapes=frame["blendshapes"][:204])
    pcm = bytes(P.MAX_MESSAGE_BYTES)  # the whole message is then just over 1 MiB
    return [
        {"name": "invalid_truncated", "payload": valid["frame"][:-7], "error": "malformed",
         "note": "the frame vector without its last 7 bytes"},
        {"name": "invalid_trailing_bytes", "payload": valid["end_stream"] + b"\xc0", "error": "malformed",
         "note": "a valid message followed by an extra msgpack nil"},
        {"name": "invalid_not_a_map", "payload": pack([1, 0, "frame"]), "error": "malformed",
         "note": "an array instead of a map"},
        {"name": "invalid_missing_v", "payload": pack({"type": "end_stream", "stream": "npc1"}), "error": "malformed",
         "note": "no 'v'"},
        {"name": "invalid_unknown_major", "payload": pack({"v": [2, 0], "type": "end_stream", "stream": "npc1"}),
         "error": "unsupported_version", "note": "major 2"},
        {"name": "invalid_unknown_type", "payload": pack({"v": v10, "type": "teleport", "stream": "npc1"}),
         "error": "unknown_type", "note": "a type v1.0 does not define"},
        {"name": "invalid_oversized", "payload": pack({"v": v10, "type": "audio", "stream": "npc1", "seq": 0,
                                                       "pcm": pcm}),
         "error": "too_large", "note": "an audio message with 1 MiB of pcm: over MAX_MESSAGE_BYTES"},
        {"name": "invalid_blendshapes_length", "payload": pack(short_bs), "error": "malformed",
         "note": "blendshapes bin of 204 bytes (51 floats)"},
        {"name": "invalid_stream_id", "payload": pack({"v": v10, "type": "end_stream", "stream": "npc 1"}),
         "error": "malformed", "note": "a space in the stream id"},
        {"name": "invalid_field_type", "payload": pack({"v": v10, "type": "audio", "stream": "npc1", "seq": "0",
                                                        "pcm": b""}),
         "error": "malformed", "note": "seq as a string"},
        {"name": "invalid_sample_rate", "payload": pack({"v": v10, "type": "open_stream", "sample_rate": 4000,
                                                         "channels": 1, "format": "f32le"}),
         "error": "bad_audio", "note": "sample_rate below 8000"},
        {"name": "invalid_format", "payload": pack({"v": v10, "type": "open_stream", "sample_rate": 16000,
                                                    "channels": 1, "format": "mp3"}),
         "error": "bad_audio", "note": "an audio format v1 does not define"},
        {"name": "invalid_sample_rate_type", "payload": pack({"v": [1, 1], "type": "open_stream",
                                                              "sample_rate": "16000", "channels": 1,
                                                              "format": "f32le"}),
         "error": "malformed", "note": "sample_rate as a string: a wrong type is malformed, not bad_audio (1.1)"},
        {"name": "invalid_mode", "payload": pack({"v": [1, 2], "type": "open_stream", "sample_rate": 16000,
                                                  "channels": 1, "format": "f32le", "mode": "fast"}),
         "error": "malformed", "note": "a mode 1.2 does not define"},
        {"name": "invalid_controls_type", "payload": pack({"v": [1, 2], "type": "set_controls", "stream": "mic",
                                                           "controls": [1.0]}),
         "error": "malformed", "note": "controls as an array, not a map (1.2)"},
        {"name": "invalid_stream_id_dots", "payload": pack({"v": [1, 1], "type": "end_stream", "stream": ".."}),
         "error": "malformed", "note": "stream id '..' (reserved, as '.', since 1.1)"},
    ]


def readme(index: dict) -> str:
    lines = [
        f"# Golden vectors of protocol v{P.PROTOCOL_MAJOR}.{P.PROTOCOL_MINOR}",
        "",
        "Generated by `protocol/make_golden.py` (deterministic; rerun only for a deliberate protocol change).",
        "See `../SPEC.md` section 8 for how a client uses them; `index.json` is the machine-readable list.",
        "",
        "Valid vectors: `<name>.msgpack` (exact bytes of the reference encoder) and `<name>.json` (the same",
        'message; `bin` fields as `{"$bin": "<standard base64>"}`, nil as `null`). Decoding the `.msgpack`',
        "must give the `.json` (key order aside).",
        "",
        "| name | type | PUB topic | note |",
        "|---|---|---|---|",
    ]
    for e in index["valid"]:
        topic = f"`{e['topic']}`" if e["topic"] else "(DEALER/ROUTER)"
        lines.append(f"| `{e['name']}` | `{e['type']}` | {topic} | {e['note']} |")
    lines += ["", "Invalid vectors: `<name>.msgpack` only; decoding must fail with the error code shown.", "",
              "| name | error code | what is wrong |", "|---|---|---|"]
    for e in index["invalid"]:
        lines.append(f"| `{e['name']}` | `{e['error']}` | {e['note']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    GOLDEN.mkdir(exist_ok=True)
    valid = valid_vectors()
    index: dict = {"protocol": list(P.VERSION), "bin_in_json": '{"$bin": "<standard base64>"}',
                   "valid": [], "invalid": []}
    for vec in valid:
        (GOLDEN / f"{vec['name']}.msgpack").write_bytes(vec["payload"])
        msg = P.decode(vec["payload"])
        (GOLDEN / f"{vec['name']}.json").write_text(json.dumps(P.to_json_compatible(msg), indent=2) + "\n")
        index["valid"].append({"name": vec["name"], "type": msg["type"],
                               "topic": None if vec["topic"] is None else vec["topic"].decode("ascii"),
                               "bytes": len(vec["payload"]), "note": vec["note"]})
    for vec in invalid_vectors({v["name"]: v["payload"] for v in valid}):
        try:
            P.decode(vec["payload"])
        except P.ProtocolError as e:
            assert e.code == vec["error"], (vec["name"], e)
        else:
            raise AssertionError(f"{vec['name']} decoded")
        (GOLDEN / f"{vec['name']}.msgpack").write_bytes(vec["payload"])
        index["invalid"].append({"name": vec["name"], "error": vec["error"], "bytes": len(vec["payload"]),
                                 "note": vec["note"]})
    (GOLDEN / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    (GOLDEN / "README.md").write_text(readme(index))
    print(f"wrote {len(index['valid'])} valid and {len(index['invalid'])} invalid vectors to {GOLDEN}")


if __name__ == "__main__":
    main()
