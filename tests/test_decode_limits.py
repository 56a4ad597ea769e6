"""Decoding within the structure limits of SPEC 3.5 (ksdiff_sdk/protocol.py ``unpack``): a payload under 1 MiB that
would make the decoder build a million objects is refused ``malformed`` at once; the largest legal messages decode.
Over real ZeroMQ, with the runtime: tests/test_serve_bounds.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from ksdiff_sdk import protocol as P
from ksdiff_sdk import schema

M = P.MAX_MESSAGE_BYTES


def _array(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big")


def _in_a_request(value: bytes) -> bytes:
    """A request map whose one unknown field holds ``value`` (unknown fields are allowed: forward compatibility)."""
    return (b"\x83" + msgpack.packb("v") + msgpack.packb([1, 4]) + msgpack.packb("type") + msgpack.packb("hello")
            + msgpack.packb("x") + value)[:M]


def _tree(fanout: int, size: int) -> bytes:
    """Arrays of ``fanout`` arrays of ... empty arrays, nested as deep as ``size`` bytes allow: every array within
    ``fanout`` entries, hundreds of thousands of them in all."""
    level = b"\x90"
    while len(_array(fanout) + level * fanout) <= size:
        level = _array(fanout) + level * fanout
    k = min(fanout, (size - 3) // len(level))  # as many of the deepest trees as fit
    return _array(k) + level * k


def _map_of(n: int) -> bytes:
    return b"\xde" + n.to_bytes(2, "big") + b"".join(msgpack.packb(f"k{i}") + b"\xc0" for i in range(n))


BOMBS = {
    # the hunter's: a million empty arrays (each a Python list to build: ~0.25 s, twice with the echo of the error)
    "a million empty arrays": (b"\xdd" + (M - 10).to_bytes(4, "big") + b"\x90" * (M - 10))[:M],
    "a million empty maps": (b"\xdd" + (M - 10).to_bytes(4, "big") + b"\x80" * (M - 10))[:M],
    "a million empty arrays in a map": _in_a_request(b"\xdd" + (M - 100).to_bytes(4, "big") + b"\x90" * (M - 100)),
    "a tree of arrays of 64": _in_a_request(_tree(64, M - 100)),
    "a tree of arrays of 8": _in_a_request(_tree(8, M - 100)),
    "arrays of 64 maps of 64 keys": _in_a_request(_array(64) + (_array(64) + _map_of(64) * 64) * 64),
    "a map of 65535 keys": _in_a_request(_map_of(0xFFFF)),
    "a str of 1 MB": _in_a_request(msgpack.packb("a" * (M - 100))),
    "an ext": _in_a_request(msgpack.packb(msgpack.ExtType(1, b"\0" * 100))),
}


def _cpu_ms(payload: bytes, limits: P.Limits | None = None) -> float:
    """CPU time of decoding ``payload`` (``limits`` None: decode's default), which must fail malformed: this thread's
    alone (the process's counted other threads' work: 377 ms once in CI, beside a runtime's), best of 3 (ignores a
    stray GC or page fault)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.thread_time()
        with pytest.raises(P.ProtocolError) as e:
            P.decode(payload) if limits is None else P.decode(payload, limits)
        best = min(best, time.thread_time() - t0)
        assert e.value.code == "malformed", e.value
    return best * 1000


@pytest.mark.parametrize("name", BOMBS)
def test_a_decode_bomb_is_refused_malformed_within_a_few_ms(name):
    payload = BOMBS[name]
    assert len(payload) <= M
    assert _cpu_ms(payload, P.REQUEST_LIMITS) < 3.0, name  # before: up to ~270 ms of CPU
    if name != "arrays of 64 maps of 64 keys":  # a client's limits let that one through: it is no bomb
        assert _cpu_ms(payload, P.MESSAGE_LIMITS) < 20.0, name


def test_decode_by_default_refuses_a_million_empty_arrays_fast():
    """What a client reads (``decode``'s default limits) is no slower to refuse: checked before anything is built."""
    for name in ("a million empty arrays", "a million empty arrays in a map", "a tree of arrays of 8"):
        assert _cpu_ms(BOMBS[name]) < 20.0, name


def _every_control() -> dict:
    regions = ("jaw", "mouth", "brows", "eyes", "head")
    return {"strength": dict.fromkeys(regions, 2.5),
            "shapes": {n: {"gain": 9.5, "offset": -0.5, "min": 0.125, "max": 0.875} for n in schema.BLENDSHAPES},
            "smoothing_ms": dict.fromkeys(regions, 999.0), "timing_offset_ms": -499.0, "mood": "surprised",
            "mood_intensity": 1.0, "style": "animated"}


def test_the_largest_legal_requests_decode_within_the_request_limits():
    """Every control given, a transcript of 2000 four-byte characters, a line's audio filling the message, every
    golden request vector: all read by the runtime (REQUEST_LIMITS) as they were."""
    transcript = "\U0001f600" * P.MAX_TRANSCRIPT_CHARS  # 8000 bytes of UTF-8
    big = [
        P.encode_request("set_controls", stream="npc1", controls=_every_control(), req=2**64 - 1),
        P.encode_request("open_stream", stream="n" * 64, sample_rate=192_000, channels=8, format="f32le",
                         transcript=transcript, seed=-(2**63), mode="line", controls=_every_control(), req=1),
        P.encode_request("audio", stream="npc1", seq=0, at_sample=0, pcm=bytes(M - 100)),
    ]
    golden = Path(__file__).resolve().parents[1] / "protocol" / "golden"
    requests = [(golden / f"{v['name']}.msgpack").read_bytes()
                for v in json.loads((golden / "index.json").read_text())["valid"] if v["type"] in P.REQUEST_TYPES]
    assert len(requests) >= 5
    for payload in big + requests:
        msg = P.decode(payload, P.REQUEST_LIMITS)
        assert msg == P.decode(payload) == msgpack.unpackb(payload, raw=False)
    assert P.decode(big[1], P.REQUEST_LIMITS)["transcript"] == transcript
    # one past a limit is malformed

    def lists(n: int) -> list:  # a hello's x with n arrays and maps in all: its map, v, x, 3 arrays, n - 6 empty ones
        return [[[]] * 60, [[]] * 60, [[]] * (n - 126)]

    assert P.decode(msgpack.packb({"v": [1, 4], "type": "hello", "x": lists(P.MAX_REQUEST_CONTAINERS)}),
                    P.REQUEST_LIMITS)
    for payload in (msgpack.packb({"v": [1, 4], "type": "hello", "x": list(range(P.MAX_REQUEST_ENTRIES + 1))}),
                    msgpack.packb({"v": [1, 4], "type": "hello", "x": "a" * (P.MAX_STR_BYTES + 1)}),
                    msgpack.packb({"v": [1, 4], "type": "hello", "x": lists(P.MAX_REQUEST_CONTAINERS + 1)})):
        with pytest.raises(P.ProtocolError) as e:
            P.decode(payload, P.REQUEST_LIMITS)
        assert e.value.code == "malformed"


def test_the_largest_messages_a_runtime_sends_decode():
    """A controls_set with every control, stats of as many streams as fit in a message, the hello."""
    reply = P.encode_reply("controls_set", stream="npc1", controls=_every_control(), req=3)
    assert P.decode(reply)["controls"]["shapes"]["jawOpen"]["gain"] == 9.5
    entry = {"fps": 30.0, "latency_p50_ms": 1.0, "latency_p95_ms": 2.0, "frames": 1, "drops": 0}
    streams = {}
    for i in range(20_000):  # until the next one would not fit in 1 MiB
        streams[f"s{i}"] = entry
        if i % 500 == 0 and len(P.encode_stats(1.0, streams, 0, 1)[1]) > M - 50_000:
            break
    _, payload = P.encode_stats(1.0, streams, 0, 1, refused=dict.fromkeys(P.ERROR_CODES, 1), capacity=3)
    assert len(streams) < P.MAX_ENTRIES and len(payload) <= M
    assert len(P.decode(payload)["streams"]) == len(streams)
    _, hello = P.encode_hello("0.1.0", instance="x" * 64, req=1)
    assert P.decode(hello)["blendshapes"] == list(schema.BLENDSHAPES)
    assert np.array_equal(P.frame_arrays(P.decode(P.encode_frame("a", 0, 0, 30, 0.0, np.zeros(52), np.zeros(3),
                                                                  np.zeros(4), None, 0, 0.0, 0.0)[1]))[0],
                          np.zeros(52, np.float32))
