"""Client against real ZeroMQ sockets on loopback: a scripted runtime (fake_runtime.py) on ephemeral ports.

No test sleeps to synchronise: each waits on a condition (client counters, replies) with a deadline.
"""

from __future__ import annotations

import gc
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from fake_runtime import FakeRuntime, frame_message, wait_until

import ksdiff_sdk.client as client_module
from ksdiff_sdk import (
    BadAudioError,
    BusyError,
    Client,
    ClientClosedError,
    Frame,
    InternalError,
    KsdiffError,
    LineSync,
    MalformedError,
    StreamLost,
    UnknownStreamError,
    UnsupportedVersionError,
    protocol,
    schema,
)

pytestmark = pytest.mark.timeout(60)

GOLDEN = Path(__file__).resolve().parents[2] / "protocol" / "golden"
NO_RUNTIME = "tcp://127.0.0.1:1"  # nothing listens on port 1: ZeroMQ keeps retrying in the background


@pytest.fixture
def fake() -> Iterator[FakeRuntime]:
    with FakeRuntime() as rt:
        yield rt


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    """``make_client(fake, **kwargs)`` or ``make_client(pub=..., router=...)``: a Client closed at teardown."""
    clients: list[Client] = []

    def make(rt: FakeRuntime | None = None, pub: str | None = None, router: str | None = None, **kw: Any) -> Client:
        c = Client(pub or rt.pub_endpoint, router or rt.router_endpoint, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def ready(make_client, rt: FakeRuntime, **kw) -> Client:
    client = make_client(rt, **kw)
    client.wait_for_runtime(5)
    return client


# --- receiving ----------------------------------------------------------------------------------
def test_wait_for_runtime_returns_the_hello(fake, make_client):
    client = make_client(fake)
    hello = client.wait_for_runtime(5)
    assert hello["blendshapes"] == list(protocol.schema.BLENDSHAPES) and hello["fps"] == 30
    assert client.hello == hello and "req" not in hello
    assert client.instance == "instance-A"


def test_recv_frames_in_order(fake, make_client):
    client = ready(make_client, fake)
    for seq in range(5):
        fake.publish(*frame_message("npc1", seq))
    got = [client.recv(timeout=5) for _ in range(5)]
    assert all(isinstance(f, Frame) for f in got)
    assert [f.seq for f in got] == list(range(5)) and got[3]["jawOpen"] == pytest.approx(0.3)
    assert client.latest("npc1") is got[-1] and client.latest() is got[-1]
    assert client.received == 5 and client.missed == 0 and client.invalid == 0
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.05)


def test_frames_iterator_stops_after_an_idle_timeout(fake, make_client):
    client = ready(make_client, fake)
    for seq in range(3):
        fake.publish(*frame_message("a", seq))
    wait_until(lambda: client.received == 3)
    assert [f.seq for f in client.frames(timeout=0.05)] == [0, 1, 2]


def test_filter_by_one_stream_and_by_a_list(fake, make_client):
    only_a = ready(make_client, fake, streams="a")
    a_and_c = ready(make_client, fake, streams=["a", "c"])
    everything = ready(make_client, fake)
    for stream in ("b", "a", "c", "a10", "b", "a"):  # a10: the topic's trailing '/' keeps it out of 'a'
        fake.publish(*frame_message(stream, 0))
    wait_until(lambda: everything.received == 6)
    wait_until(lambda: a_and_c.received == 3)
    wait_until(lambda: only_a.received == 2)
    assert [f.stream for f in only_a.frames(timeout=0.05)] == ["a", "a"]
    assert [f.stream for f in a_and_c.frames(timeout=0.05)] == ["a", "c", "a"]
    with pytest.raises(ValueError, match="stream id"):
        Client(streams="bad id")


def test_latest_only_keeps_one_frame_per_stream(fake, make_client):
    client = ready(make_client, fake, latest_only=True)
    for seq in range(30):
        fake.publish(*frame_message("a", seq))
        if seq < 5:
            fake.publish(*frame_message("b", seq))
    wait_until(lambda: client.received == 35)
    assert client.latest("a").seq == 29 and client.latest("b").seq == 4 and client.latest("zz") is None
    first, second = client.recv(timeout=1), client.recv(timeout=1)
    assert (first.stream, first.seq) == ("a", 29) and (second.stream, second.seq) == ("b", 4)
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.05)  # nothing new since
    assert len(client._queue) == 0 and client.dropped == 0
    fake.publish(*frame_message("a", 30))
    assert client.recv(timeout=5).seq == 30


def test_every_frame_queue_is_bounded_and_drops_oldest(fake, make_client):
    client = ready(make_client, fake, max_queue=5)
    for seq in range(20):
        fake.publish(*frame_message("a", seq))
    wait_until(lambda: client.received == 20)
    assert client.dropped == 15
    assert [f.seq for f in client.frames(timeout=0.05)] == [15, 16, 17, 18, 19]


def test_seq_gaps_are_counted_per_stream(fake, make_client):
    client = ready(make_client, fake)
    for stream, seq in [("a", 0), ("a", 1), ("a", 2), ("a", 5), ("a", 6), ("b", 0), ("b", 3), ("b", 4)]:
        fake.publish(*frame_message(stream, seq))
    wait_until(lambda: client.received == 8)
    assert client.missed == 4 and client.missed_per_stream == {"a": 2, "b": 2}
    # a new stream that reuses the id starts at seq 0 again: not a gap
    fake.publish(*protocol.encode_stream_start("a", "sdk", 1))
    fake.publish(*frame_message("a", 0))
    fake.publish(*frame_message("a", 1))
    wait_until(lambda: client.received == 10)
    assert client.missed == 4


def test_seq_gaps_are_remembered_for_a_bounded_number_of_streams_and_counted_exactly(fake, make_client, monkeypatch):
    """A game opens a stream per NPC line for hours: the per-stream record of lost frames keeps the streams that lost
    some last (LATEST_STREAMS_KEPT; 3 here), and ``missed`` still counts every one (it grew by a key per stream)."""
    monkeypatch.setattr(client_module, "LATEST_STREAMS_KEPT", 3)
    client = ready(make_client, fake)
    for n in range(6):
        fake.publish(*frame_message(f"line{n}", 0))
        fake.publish(*frame_message(f"line{n}", 2 + n))  # 1 + n frames lost
    wait_until(lambda: client.received == 12)
    assert client.missed == sum(1 + n for n in range(6))
    assert client.missed_per_stream == {"line3": 4, "line4": 5, "line5": 6}


def test_invalid_messages_are_counted_and_dropped(fake, make_client):
    client = ready(make_client, fake)
    topic, good = frame_message("a", 0)
    bad = [
        [topic, b"\xc1 not msgpack"],
        [topic, (GOLDEN / "invalid_blendshapes_length.msgpack").read_bytes()],
        [topic, (GOLDEN / "invalid_truncated.msgpack").read_bytes()],
        [topic, (GOLDEN / "invalid_unknown_major.msgpack").read_bytes()],
        [topic, (GOLDEN / "invalid_oversized.msgpack").read_bytes()],
        [b"ksd1/frame/a/", frame_message("b", 0)[1]],  # payload's stream is not the topic's
        [protocol.HELLO_TOPIC, good],  # a frame on the hello topic
        [b"ksd1/frame/bad id/", good],  # not a valid topic
        [topic, good, b"extra"],  # 3 ZeroMQ frames
        [topic],  # 1 ZeroMQ frame
    ]
    for parts in bad:
        fake.publish(*parts)
    fake.publish(protocol.STATS_TOPIC, (GOLDEN / "invalid_unknown_type.msgpack").read_bytes())  # a newer type
    fake.publish(topic, good)
    wait_until(lambda: client.received == 1)
    wait_until(lambda: client.invalid == len(bad))
    assert client.ignored == 1
    assert client.recv(timeout=1).seq == 0
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.05)
    fake.publish(*frame_message("a", 1))  # the I/O thread is still alive
    assert client.recv(timeout=5).seq == 1


def test_invalid_replies_are_counted_and_dropped(fake, make_client):
    client = ready(make_client, fake)
    stats = protocol.encode_message("stats", uptime_s=1.0, streams={}, drops=0, published_ns=1)
    fake.on_request = lambda m: [b"\xc1", stats] if m["type"] == "open_stream" else None
    with pytest.raises(TimeoutError):
        client.open_stream("npc1", timeout=0.3)
    wait_until(lambda: client.invalid == 2)  # not msgpack; a stats message is not a reply
    fake.on_request = None
    assert client.open_stream("npc2").stream == "npc2"  # the I/O thread goes on


def test_stats_are_kept(fake, make_client):
    client = ready(make_client, fake)
    fake.publish(*protocol.encode_stats(1.5, {}, 0, 123))
    wait_until(lambda: client.stats is not None)
    assert client.stats["uptime_s"] == 1.5


# --- streams ------------------------------------------------------------------------------------
def test_open_push_end_and_frames(fake, make_client):
    client = ready(make_client, fake, streams="other")  # the handle still gets its own stream's frames
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)
    with client.open_stream("npc1", transcript="hi", seed=3) as handle:
        assert handle.stream == "npc1" and handle.fps == 30 and handle.instance == "instance-A"
        handle.push(audio[:8000])
        handle.push(audio[8000:])
        assert handle.end(5) == 30
    frames = list(handle.frames(timeout=5))
    assert [f.index for f in frames] == list(range(30)) and frames[-1].last
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.05)  # npc1 is not in the client's filter
    opened = fake.requests_of("open_stream")[0]
    assert opened["transcript"] == "hi" and opened["seed"] == 3 and opened["format"] == "f32le"
    sent = fake.audio["npc1"]
    assert [m["seq"] for m in sent] == list(range(len(sent)))
    assert b"".join(m["pcm"] for m in sent) == audio.astype("<f4").tobytes()
    assert sent[0]["at_sample"] == 0 and sent[-1]["at_sample"] + len(sent[-1]["pcm"]) // 4 == 16000


def test_runtime_picks_the_stream_id(fake, make_client):
    client = ready(make_client, fake)
    handle = client.open_stream(sample_rate=8000, format="s16le")
    assert handle.stream == "sdk-1"
    handle.push(np.zeros(8000, np.int16))
    assert handle.end() == 30
    assert len(list(handle.frames())) == 30


def test_animate_returns_every_frame_by_index(fake, make_client):
    client = ready(make_client, fake)
    audio = (np.random.default_rng(1).uniform(-0.5, 0.5, (48000, 2)) * 32767).astype(np.int16)
    anim = client.animate(audio, sample_rate=48000)
    assert len(anim) == 30 and anim.missing == 0 and anim.fps == 30
    assert anim.blendshapes.shape == (30, 52) and anim.head.shape == (30, 3) and anim.gaze.shape == (30, 4)
    assert [f.index for f in anim.frames] == list(range(30)) and anim.frames[-1].last
    np.testing.assert_allclose(anim.t_audio, np.arange(30) / 30)
    sent = fake.audio[anim.stream]
    assert b"".join(m["pcm"] for m in sent) == audio.tobytes()
    # a line (animate's mode): its audio in messages of up to 10 s, so this second goes in one
    assert len(sent) == 1 and fake.requests_of("open_stream")[0]["mode"] == "line"
    assert fake.requests_of("open_stream")[0]["channels"] == 2


def test_a_lines_messages_stay_under_the_size_limit_and_a_live_streams_at_100_ms() -> None:
    from ksdiff_sdk import protocol
    from ksdiff_sdk.audio import LINE_CHUNK_MS, MAX_CHUNK_MS, audio_messages

    pcm = np.zeros((20 * 48000, 2), np.float32).tobytes()  # 20 s of 48 kHz stereo f32le: 7.7 MB
    line = audio_messages("npc", pcm, 48000, 2, "f32le", 0, 0, LINE_CHUNK_MS)
    assert all(len(m) <= protocol.MAX_MESSAGE_BYTES for m in line) and len(line) == 8
    live = audio_messages("mic", pcm[: 48000 * 8], 48000, 2, "f32le", 0, 0, MAX_CHUNK_MS)
    assert len(live) == 10 and all(len(protocol.decode(m)["pcm"]) == 4800 * 8 for m in live)


def test_error_reply_raises_a_typed_error(fake, make_client):
    client = ready(make_client, fake)
    fake.on_request = lambda m: (
        [protocol.encode_error("busy", "at capacity", "open_stream", req=m.get("req"))]
        if m["type"] == "open_stream" else None
    )
    with pytest.raises(BusyError) as e:
        client.open_stream("npc1")
    assert isinstance(e.value, KsdiffError) and e.value.code == "busy" and "capacity" in e.value.message


def test_a_reply_of_the_wrong_type_raises_malformed_error(fake, make_client):
    """A reply whose req is a pending request's but whose type answers another request: MalformedError, counted in
    invalid (it was stored as the reply, then read as one: a bare KeyError, open_stream's after it had subscribed
    the stream's topic)."""
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")

    def wrong(m: dict) -> list[bytes] | None:
        if m["type"] == "set_controls":
            return [protocol.encode_reply("stream_ended", stream="npc1", frames=0, req=m["req"])]
        if m["type"] in ("open_stream", "end_stream"):
            return [protocol.encode_reply("controls_set", stream="npc1", controls={}, req=m["req"])]
        return None

    fake.on_request = wrong
    with pytest.raises(MalformedError, match="answered set_controls with stream_ended"):
        handle.set_controls({"timing_offset_ms": -30})
    with pytest.raises(MalformedError, match="answered open_stream with controls_set"):
        client.open_stream("npc2")
    with pytest.raises(MalformedError, match="answered end_stream with controls_set"):
        handle.end()
    assert client.invalid == 3
    fake.on_request = None
    assert client.open_stream("npc2").stream == "npc2"


def test_unknown_error_code_counts_as_internal(fake, make_client):
    client = ready(make_client, fake)

    def reply(m):
        if m["type"] != "open_stream":
            return None
        return [msgpack.packb({"v": [1, 0], "type": "error", "code": "overloaded", "message": "later",
                               "request_type": "open_stream", "req": m["req"]})]

    fake.on_request = reply
    with pytest.raises(InternalError):
        client.open_stream("npc1")


def test_bad_open_arguments_are_refused_locally(make_client):
    client = make_client(pub=NO_RUNTIME, router=NO_RUNTIME)
    with pytest.raises(ValueError, match="sample_rate"):
        client.open_stream(sample_rate=4000)
    with pytest.raises(ValueError, match="format"):
        client.open_stream(format="u8")
    with pytest.raises(ValueError, match="sample_rate"):  # was a ZeroDivisionError, before open_stream checked it
        client.animate(np.zeros(1600, np.float32), sample_rate=0)


def test_audio_errors_surface_on_the_next_push_and_end(fake, make_client):
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")
    refused = protocol.encode_error("bad_audio", "odd length", "audio", stream="npc1")
    fake.on_request = lambda m: [refused] if m["type"] == "audio" else None
    handle.push(np.zeros(160, np.float32))
    wait_until(lambda: len(handle.errors) == 1)
    with pytest.raises(BadAudioError):
        handle.push(np.zeros(160, np.float32))  # raised before anything is sent
    handle.push(np.zeros(160, np.float32))  # raised once: this one is sent (and fails too)
    wait_until(lambda: len(handle.errors) == 2)
    fake.on_request = None
    with pytest.raises(BadAudioError):
        handle.end()  # ends the stream, then raises what was not raised yet
    assert handle.ended and handle.end() == 0  # the refused audio never counted
    assert len(fake.requests_of("end_stream")) == 1
    assert [e.code for e in handle.errors] == ["bad_audio", "bad_audio"]
    assert len(fake.requests_of("audio")) == 2


def test_error_for_no_waiting_call_is_kept(fake, make_client):
    client = ready(make_client, fake)
    client._send([protocol.encode_request("audio", stream="nobody", seq=0, pcm=b"")])
    wait_until(lambda: len(client.errors) == 1)
    assert client.errors[0].code == "unknown_stream"


# --- timeouts and closing -----------------------------------------------------------------------
def test_timeouts(fake, make_client):
    client = ready(make_client, fake)
    fake.on_request = lambda m: [] if m["type"] == "open_stream" else None  # never answers
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="open_stream"):
        client.open_stream("npc1", timeout=0.3)
    assert time.monotonic() - t0 < 2
    nothing = make_client(pub=NO_RUNTIME, router=NO_RUNTIME)
    with pytest.raises(TimeoutError, match="runtime not ready"):
        nothing.wait_for_runtime(0.2)
    with pytest.raises(TimeoutError, match="PUB"):
        nothing.open_stream("npc1", timeout=0.2)


def test_an_end_that_timed_out_takes_its_late_reply_on_the_next_end(fake, make_client):
    """end() timing out (a runtime slow to finish the stream) keeps the request: the reply that comes later is
    what the next end() returns (it once waited for a reply already dropped, and close() timed out too)."""
    client = ready(make_client, fake)
    held: list[dict] = []

    def script(m: dict) -> list[bytes] | None:
        if m["type"] == "end_stream" and not held:
            held.append(m)
            return []  # answered late: with the next open_stream's reply
        if m["type"] == "open_stream" and m.get("stream") == "other":
            return [protocol.encode_reply("stream_ended", stream="npc1", frames=0, req=held[0]["req"]),
                    protocol.encode_reply("stream_opened", stream="other", fps=30, req=m["req"])]
        return None

    fake.on_request = script
    handle = client.open_stream("npc1")
    with pytest.raises(TimeoutError, match="end_stream"):
        handle.end(timeout=0.2)
    client.open_stream("other")
    assert handle.end(timeout=2) == 0 and handle.ended


def test_an_end_never_answered_is_forgotten_when_its_stream_is_released(fake, make_client):
    client = ready(make_client, fake, timeout=0.3)
    fake.on_request = lambda m: [] if m["type"] == "end_stream" else None  # never answers an end
    handle = client.open_stream("npc1")
    with pytest.raises(TimeoutError, match="end_stream"):
        handle.end()
    with pytest.raises(TimeoutError, match="end_stream"):
        handle.close()
    assert client._pending == {}  # nothing kept waiting for a reply that no call will take


def test_an_infinite_timeout_waits_without_limit(fake, make_client):
    """timeout=math.inf (or one past threading.TIMEOUT_MAX) is no limit, as None is for recv: every wait raised
    OverflowError from Condition.wait_for. Each call below waits for a reply or frames a round trip away."""
    client = ready(make_client, fake)
    assert client.wait_for_runtime(math.inf)["fps"] == 30
    handle = client.open_stream("npc1", timeout=math.inf)
    assert handle.set_controls({"timing_offset_ms": -30}, timeout=1e10) == {"timing_offset_ms": -30}
    handle.push(np.zeros(16000, np.float32))
    handle.end(wait=False)  # its frames are published when the fake reads the end_stream
    assert client.recv(timeout=math.inf).stream == "npc1"
    assert handle.end(timeout=math.inf) == 30
    line = client.open_stream("npc2")
    line.push(np.zeros(16000, np.float32))
    line.end(wait=False)
    assert next(line.frames(timeout=math.inf)).index == 0
    assert len(client.animate(np.zeros(16000, np.float32), timeout=math.inf)) == 30
    with pytest.raises(ValueError, match="nan"):
        client.recv(timeout=float("nan"))


def test_an_end_interrupted_is_still_sent_and_a_later_end_takes_its_reply(fake, make_client, monkeypatch):
    """end() stopped by anything but a timeout (KeyboardInterrupt while it waits) used to forget its end_stream
    (withdrawn unsent, or its reply dropped) but keep it as the handle's: every later end() and close() waited for
    a reply that could not come, and the runtime held the stream until its idle timeout."""
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")
    handle.push(np.zeros(1600, np.float32))
    withdrawn = client.withdrawn
    # answered without the stream_end (lost on the PUB): only the reply ends the next end()'s wait
    fake.on_request = lambda m: ([protocol.encode_reply("stream_ended", stream="npc1", frames=3, req=m["req"])]
                                 if m["type"] == "end_stream" else None)

    def interrupted(cv: threading.Condition, predicate: Callable[[], object], timeout: float | None) -> bool:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(client_module, "_wait_for", interrupted)
        with pytest.raises(KeyboardInterrupt):
            handle.end()
    assert handle.end(timeout=5) == 3 and handle.ended
    assert len(fake.requests_of("end_stream")) == 1 and client.withdrawn == withdrawn
    assert client._pending == {}  # taken by the second end()


def test_requests_whose_call_timed_out_before_they_left_are_never_sent(fake, make_client):
    """The runtime's ROUTER is away while its PUB reaches the client: requests wait in the client's outbox, and those
    whose call gave up there are withdrawn, not sent when the runtime is back (an open_stream sent then opened a
    stream nobody used, which the runtime held until its idle timeout; a set_controls changed what its caller was
    told had failed)."""
    away = FakeRuntime().start()
    router = away.router_endpoint
    away.stop()  # nothing listens on that port now: ZeroMQ keeps trying, the DEALER queues nothing (ZMQ_IMMEDIATE)
    client = make_client(pub=fake.pub_endpoint, router=router)
    client.wait_for_runtime(5)  # from the published hello; its hello request is left in the outbox
    with pytest.raises(TimeoutError, match="open_stream"):
        client.open_stream("npc1", timeout=0.2)
    with pytest.raises(TimeoutError, match="set_controls"):
        client.set_controls("mic", {"timing_offset_ms": -30}, timeout=0.05)
    # open_stream's hello, the open_stream, the set_controls: the calls that timed out. wait_for_runtime's hello is
    # withdrawn too, uncounted: its call got the published hello (a game watching `withdrawn` for a stalled runtime
    # saw one per wait_for_runtime of a shared client that already had a hello)
    wait_until(lambda: client.withdrawn == 3, what="the abandoned requests withdrawn")
    with FakeRuntime(router=router) as back:  # the runtime's ROUTER is back on its port
        handle = client.open_stream("npc2", timeout=10)
        assert handle.stream == "npc2"
        assert [m.get("stream") for m in back.requests_of("open_stream")] == ["npc2"]
        assert back.requests_of("set_controls") == [] and len(back.requests_of("hello")) == 1  # npc2's own
    assert client.withdrawn == 3 and client.unsent == 0 and list(client.errors) == []


def test_a_stream_opened_after_its_call_timed_out_is_ended(fake, make_client):
    """An open_stream that left the client and is answered after its call timed out: the stream is nobody's, so the
    client ends it at once instead of leaving it to the runtime's idle timeout. Other late replies (controls_set,
    and the reply to that end_stream) change nothing and are not errors."""
    client = ready(make_client, fake)
    other = client.open_stream("other")
    withdrawn = client.withdrawn
    held: list[dict] = []

    def script(m: dict) -> list[bytes] | None:
        if (m["type"], m.get("stream")) in (("open_stream", "npc1"), ("set_controls", "other")):
            held.append(m)
            return []  # answered late: with the next open_stream's reply
        if m["type"] == "open_stream" and m.get("stream") == "marker":
            return [reply for late in held for reply in fake.answer(late)] + fake.answer(m)
        return None

    fake.on_request = script
    with pytest.raises(TimeoutError, match="open_stream"):
        client.open_stream("npc1", timeout=0.2)
    with pytest.raises(TimeoutError, match="set_controls"):
        other.set_controls({"timing_offset_ms": -30}, timeout=0.2)
    assert client.withdrawn == withdrawn  # both had left the client
    marker = client.open_stream("marker")  # the late replies come first
    wait_until(lambda: fake.requests_of("end_stream"), what="the late stream ended")
    assert [m["stream"] for m in fake.requests_of("end_stream")] == ["npc1"]
    wait_until(lambda: not client._orphan_ends, what="the end_stream's reply")  # dropped quietly
    assert "npc1" not in fake.open_streams and list(client.errors) == [] and client.invalid == 0
    assert other.errors == [] and other.lost is None and marker.lost is None
    assert other.end() == 0 and marker.end() == 0


def test_a_duplicate_or_unsolicited_stream_opened_leaves_a_held_stream_alone(fake, make_client):
    """A stream_opened with no req, or one no open_stream of this client sent, is no late answer to a call that gave
    up: the client sent end_stream for it, ending a stream the user's handle held."""
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")
    handle.push(np.zeros(16000, np.float32))

    def duplicates(m: dict) -> list[bytes] | None:
        if m["type"] != "set_controls":
            return None
        return [protocol.encode_reply("stream_opened", stream="npc1", fps=30),
                protocol.encode_reply("stream_opened", stream="npc1", fps=30, req=999_999), *fake.answer(m)]

    fake.on_request = duplicates
    handle.set_controls({"timing_offset_ms": -30})  # its reply comes after the two stream_opened
    fake.on_request = None
    assert handle.end() == 30 and handle.lost is None
    assert [m["stream"] for m in fake.requests_of("end_stream")] == ["npc1"]  # the handle's own, nothing before
    assert client.invalid == 2 and client._orphan_ends == set()


def test_a_push_refused_before_sending_leaves_the_streams_clock_as_it_was(fake, make_client):
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")
    with pytest.raises(protocol.ProtocolError):
        handle.push(np.zeros(1600, np.float32), at_sample=-1)
    assert handle.started_at is None and LineSync(handle).play_at is None  # the clock starts with audio that goes
    handle.push(np.zeros(1600, np.float32))
    wait_until(lambda: fake.audio.get("npc1"), what="the audio")
    assert [m["at_sample"] for m in fake.audio["npc1"]] == [0]


def test_audio_a_stalled_runtime_does_not_take_is_bounded_and_the_newest_goes_when_it_reads_again(
        fake, make_client, monkeypatch):
    """A runtime that stops reading (stalled, its connection up): ZeroMQ's queues fill, then the client keeps at most
    OUTBOX_MAX_BYTES of audio, the newest, and counts what it dropped in ``unsent``; requests are never dropped."""
    monkeypatch.setattr(client_module, "OUTBOX_MAX_BYTES", 20_000)
    client = ready(make_client, fake)
    handle = client.open_stream("mic")
    fake.paused.set()
    n = 6000  # 100 ms messages (6.4 kB): more than ZeroMQ's queues (1000 messages each way) and the socket buffers hold
    for k in range(n):
        handle.push(np.full(1600, k / n, np.float32))
    wait_until(lambda: client.unsent > 0, what="the oldest audio dropped")
    handle.end(wait=False)  # a request queued behind the audio
    fake.paused.clear()
    wait_until(lambda: fake.requests_of("end_stream"), timeout=20, what="the end_stream")
    seqs = [m["seq"] for m in fake.requests_of("audio")]
    assert len(set(seqs)) == len(seqs) and seqs == sorted(seqs)  # in order, none twice
    assert len(seqs) + client.unsent == n  # none lost uncounted
    assert seqs[-3:] == [n - 3, n - 2, n - 1]  # the newest went


def test_a_stalled_runtime_costs_a_flooding_mic_its_oldest_audio_not_a_lines(fake, make_client, monkeypatch):
    """A line's audio waits in the client (its second message until the runtime has read the first) while a live mic
    pushes faster than a stalled runtime takes: past OUTBOX_MAX_BYTES the mic's oldest audio goes, never the line's
    (every frame of a line is wanted, however late). The oldest audio went whoever's it was, and the line lost 2 s."""
    monkeypatch.setattr(client_module, "OUTBOX_MAX_BYTES", 200_000)  # the line's waiting 2 s (128 kB) fit
    client = ready(make_client, fake)
    line = client.open_stream("npc", mode="line")
    mic = client.open_stream("mic")
    fake.paused.set()
    line.push(np.full(12 * 16_000, 0.25, np.float32))  # 10 s go at once, 2 s wait for them to be known read
    for k in range(6000):  # 100 ms messages (6.4 kB): more than ZeroMQ's queues and the socket buffers hold
        mic.push(np.full(1600, k / 6000, np.float32))
    wait_until(lambda: client.unsent > 0, what="the oldest audio dropped")
    fake.paused.clear()
    wait_until(lambda: sum(len(m["pcm"]) for m in fake.audio.get("npc", [])) >= 12 * 16_000 * 4, timeout=20,
               what="all of the line's audio")
    assert client.unsent <= 6000 - len(fake.audio["mic"])  # what was dropped was the mic's


def test_a_stream_is_lost_when_its_connection_drops_and_a_new_one_opens(make_client):
    """The runtime keeps a stream for the connection that opened it; a dropped connection is remade with another
    routing id, so the client's streams are lost at once (reason "reconnect"), and nothing queued for them is sent."""
    first = FakeRuntime(instance="A").start()
    client = ready(make_client, first)
    handle = client.open_stream("mic")
    handle.push(np.zeros(1600, np.float32))
    wait_until(lambda: first.audio.get("mic"), what="the audio")
    pub, router = first.pub_endpoint, first.router_endpoint
    first.stop()
    wait_until(lambda: handle.lost is not None, what="the stream lost with its connection")
    assert handle.lost.reason == "reconnect" and "another id" in str(handle.lost)
    with pytest.raises(StreamLost):
        handle.push(np.zeros(1600, np.float32))
    with FakeRuntime(pub=pub, router=router, instance="A") as back:  # the same runtime, reachable again
        again = client.open_stream("mic-2")
        again.push(np.zeros(16000, np.float32))
        assert again.end() == 30
        assert {m["stream"] for m in back.requests_of("audio")} == {"mic-2"}
    assert client.restarts == 0


def test_a_request_refused_as_another_clients_stream_loses_the_stream(fake, make_client):
    """forbidden for a handle's own stream: its connection was remade (the runtime keeps the stream for the old)."""
    client = ready(make_client, fake)
    handle, other = client.open_stream("npc1"), client.open_stream("npc2")

    def refuse(m: dict) -> list[bytes]:
        return [protocol.encode_error("forbidden", f"stream {m['stream']!r} belongs to the client that opened it",
                                      m["type"], stream=m["stream"], req=m.get("req"))]

    fake.on_request = refuse
    with pytest.raises(StreamLost) as e:
        handle.set_controls({"timing_offset_ms": -30})
    assert e.value.reason == "reconnect" and handle.lost is e.value
    with pytest.raises(StreamLost):
        handle.push(np.zeros(1600, np.float32))
    with pytest.raises(StreamLost) as e:
        other.end()
    assert e.value.reason == "reconnect" and other.lost is e.value


def test_an_end_whose_reply_is_lost_ends_on_the_published_stream_end(fake, make_client):
    """The runtime publishes a stream's stream_end before it replies to end_stream: a reply lost on the way (its
    connection dropped) does not leave end() timing out."""
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")
    handle.push(np.zeros(16000, np.float32))

    def publish_only(m: dict) -> list[bytes] | None:
        if m["type"] != "end_stream":
            return None
        fake.publish(*protocol.encode_stream_end("npc1", "sdk", "ended", 30, time.monotonic_ns()))
        return []  # no reply

    fake.on_request = publish_only
    assert handle.end(timeout=5) == 30 and handle.ended and handle.lost is None


def test_a_runtime_of_another_major_version_is_named_not_waited_for(make_client):
    """wait_for_runtime against a protocol-2 runtime waited its whole timeout for a hello it could read, then said
    "no hello" (the version-2 ones counted invalid): it raises UnsupportedVersionError naming the version."""
    with FakeRuntime(hello_period=0) as rt:
        v2 = msgpack.packb({"v": [2, 0], "type": "hello", "version": "future"})
        rt.on_request = lambda m: [v2]
        client = make_client(rt)
        t0 = time.monotonic()
        with pytest.raises(UnsupportedVersionError, match="protocol major 2"):
            client.wait_for_runtime(5)
        assert time.monotonic() - t0 < 4 and client.invalid >= 1


def test_close_never_hangs_and_wakes_waiters():
    client = Client(NO_RUNTIME, NO_RUNTIME)
    for _ in range(50):  # requests queued on a DEALER that never connects
        with pytest.raises(TimeoutError):
            client.wait_for_runtime(0.001)
    errors: list[BaseException] = []

    def blocked_recv() -> None:
        try:
            client.recv()  # no timeout: until the client closes
        except BaseException as e:
            errors.append(e)

    waiter = threading.Thread(target=blocked_recv)
    waiter.start()
    t0 = time.monotonic()
    client.close()
    waiter.join(5)
    assert time.monotonic() - t0 < 2
    assert not waiter.is_alive() and isinstance(errors[0], ClientClosedError)
    client.close()  # twice is fine
    with pytest.raises(ClientClosedError):
        client.recv(timeout=1)
    with pytest.raises(ClientClosedError):
        client.wait_for_runtime(1)
    assert list(client.frames()) == []


def test_a_bad_endpoint_fails_in_the_constructor():
    with pytest.raises(zmq.ZMQError):
        Client("not-an-endpoint", NO_RUNTIME)
    with pytest.raises(ValueError, match="max_queue"):
        Client(NO_RUNTIME, NO_RUNTIME, max_queue=0)
    for timeout in (None, float("nan"), float("inf"), -1, 0, "5"):  # None failed later, in open_stream (TypeError)
        with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
            Client(NO_RUNTIME, NO_RUNTIME, timeout=timeout)


def test_context_manager_closes(fake):
    with Client(fake.pub_endpoint, fake.router_endpoint) as client:
        client.wait_for_runtime(5)
    assert client.closed and not client._thread.is_alive()


# --- restarts -----------------------------------------------------------------------------------
def test_restart_with_a_new_instance_loses_streams_and_frames_keep_flowing(make_client):
    first = FakeRuntime(instance="A").start()
    client = ready(make_client, first)
    handle = client.open_stream("npc1")
    handle.push(np.zeros(1600, np.float32))
    pub, router = first.pub_endpoint, first.router_endpoint
    first.stop()
    with FakeRuntime(pub=pub, router=router, instance="B") as second:
        wait_until(lambda: client.instance == "B", what="the new runtime's hello")
        assert client.restarts == 1
        with pytest.raises(StreamLost) as e:
            handle.push(np.zeros(1600, np.float32))
        assert e.value.reason == "restart" and "npc1" in str(e.value)
        with pytest.raises(StreamLost):
            handle.end()  # every later call says so
        handle.close()  # a lost handle closes quietly
        # frames of the new runtime reach recv() with nothing done by the user
        seq = 0
        deadline = time.monotonic() + 5
        while True:
            second.publish(*frame_message("x", seq))
            seq += 1
            try:
                frame = client.recv(timeout=0.05)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "no frame from the new runtime"
        assert frame.stream == "x"
        # and a new stream opens on the new runtime
        again = client.open_stream("npc1")
        assert again.instance == "B"
        again.push(np.zeros(16000, np.float32))
        assert again.end() == 30


def test_a_stale_hello_of_the_old_instance_changes_nothing(fake, make_client):
    client = ready(make_client, fake)
    fake.instance = "instance-B"
    wait_until(lambda: client.instance == "instance-B")
    handle = client.open_stream("npc1")
    fake.publish(protocol.HELLO_TOPIC, protocol.encode_message("hello", **protocol.hello_fields("x"),
                                                               instance="instance-A"))
    fake.publish(*frame_message("mark", 0))
    wait_until(lambda: client.latest("mark") is not None)
    assert client.instance == "instance-B" and client.restarts == 1 and handle.lost is None


def test_shutdown_stream_end_loses_the_stream(fake, make_client):
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")
    fake.shutdown()
    wait_until(lambda: handle.lost is not None)
    assert handle.lost.reason == "shutdown"
    with pytest.raises(StreamLost):
        handle.push(np.zeros(160, np.float32))
    with pytest.raises(StreamLost):
        list(handle.frames(timeout=1))


def test_runtime_without_instance_keeps_streams(make_client):
    with FakeRuntime(instance=None) as rt:
        client = ready(make_client, rt)
        assert client.instance is None
        handle = client.open_stream("npc1")
        assert handle.instance is None
        handle.push(np.zeros(16000, np.float32))
        assert handle.end() == 30


def test_an_end_stream_sent_again_after_busy_takes_the_first_ones_answer_and_drops_its_copys(fake, make_client):
    """SPEC 4.6 "A client past its share": the runtime says (busy, no req) that it dropped this client's requests
    unread after end_stream was sent, so once BUSY_WINDOW_S has passed without an answer the client sends it again.
    Here the first one was read after all: the copy is answered unknown_stream at once (the stream is ending), and
    the first one's stream_ended comes later. end() returns the frames; the copy's answer is no error of the
    stream's."""
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")
    handle.push(np.zeros(16_000, np.float32))
    held: list[dict[str, Any]] = []

    def script(m: dict[str, Any]) -> list[bytes] | None:
        if m["type"] == "end_stream" and not held:  # read, but ending takes a while; later requests dropped: busy
            held.append(m)
            return [protocol.encode_error("busy", "this client sent more requests than the runtime handles for it; "
                                          "the excess is dropped unread, slow down", None)]
        if m["type"] == "end_stream":  # the copy
            return [protocol.encode_error("unknown_stream", "no open stream 'npc1'", "end_stream", stream="npc1",
                                          req=m["req"])]
        if m["type"] == "set_controls" and m["controls"] == {"timing_offset_ms": 0}:  # the stream has ended meanwhile
            return [*fake.answer(m), *fake.answer(held[0])]  # the first end_stream's answer
        return None

    fake.on_request = script
    t0 = time.monotonic()
    assert handle.end(wait=False) is None  # a game ending a line and going on: the client sends it again by itself
    wait_until(lambda: len(fake.requests_of("end_stream")) == 2)  # the copy, answered unknown_stream
    assert time.monotonic() - t0 >= protocol.BUSY_WINDOW_S  # sent again only once the drops were over
    client.set_controls("npc1", {})  # answered after the copy's answer: that was taken
    with pytest.raises(TimeoutError):  # the stream is still ending: no answer yet (the copy's is none)
        handle.end(timeout=0.2)
    client.set_controls("npc1", {"timing_offset_ms": 0})  # the fake answers the first one now
    assert handle.end() == 30
    assert client.resent == 1 and handle.errors == [] and [e.code for e in client.errors] == ["busy"]
    ends = fake.requests_of("end_stream")
    assert ends[0]["req"] == ends[1]["req"]



@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts file descriptors in /proc")
def test_a_client_dropped_without_close_stops_its_thread_and_closes_its_sockets():
    """A Client nobody holds any more (a script that forgot close(), a notebook cell run again, a game that ended its
    line without waiting) is collected: its I/O thread stops, its sockets and context close. Each one used to keep
    its thread polling and 13 file descriptors open for good (the thread held the client, so nothing ever collected
    it)."""

    def fds() -> int:
        return len(list(Path("/proc/self/fd").iterdir()))

    before = fds()
    threads, refs = [], []
    for _ in range(5):
        client = Client(NO_RUNTIME, NO_RUNTIME, timeout=1)
        threads.append(client._thread)
        refs.append(weakref.ref(client))
        del client
    with FakeRuntime() as fake:  # a game's pattern: a line pushed and ended without waiting, nothing closed
        client = ready(lambda rt: Client(rt.pub_endpoint, rt.router_endpoint, timeout=5), fake)
        handle = client.open_stream("npc1")  # the client and its handle hold each other: only gc frees them
        handle.push(np.zeros(1600, np.float32))
        handle.end(wait=False)
        threads.append(client._thread)
        refs.append(weakref.ref(client))
        del client, handle
        # the I/O thread holds its client only while a pass runs (not while it polls), so the collector finds the
        # cycle unreachable
        wait_until(lambda: gc.collect() >= 0 and all(r() is None for r in refs), what="the clients collected")
    wait_until(lambda: not any(t.is_alive() for t in threads), what="the I/O threads stopped")
    wait_until(lambda: fds() <= before, what=f"file descriptors back to {before}")


def test_a_push_after_end_is_refused_at_once_and_sends_nothing(fake, make_client):
    """After end(wait=False) the runtime takes no more audio for the stream: push() used to send it anyway (the
    runtime dropped it, the error surfacing on some later call); now it raises UnknownStreamError at once."""
    client = ready(make_client, fake)
    handle = client.open_stream("npc1")
    handle.push(np.zeros(1600, np.float32))
    handle.end(wait=False)
    with pytest.raises(UnknownStreamError, match="end\\(\\) was called"):
        handle.push(np.zeros(1600, np.float32))
    assert handle.end() == 3
    assert sum(len(m["pcm"]) for m in fake.audio["npc1"]) == 1600 * 4  # only the first push's


# --- LineSync -----------------------------------------------------------------------------------
def test_line_sync_ends_a_line_whose_last_frame_or_every_frame_never_came(fake, make_client):
    """The README's render loop (`while (pose := sync.pose()) is None or not pose.ended`) ran for good when the
    stream ended without its last=True frame reaching the client (the PUB dropped it) or with no frame at all: once
    the stream's end is known, the latest frame received is the final one, and no frame is the rest pose, ended."""
    client = ready(make_client, fake)

    def last_frame_lost(m: dict) -> list[bytes] | None:
        if m["type"] != "end_stream":
            return None
        n = {"line1": 6, "line2": 0}[m["stream"]]
        for i in range(n - 1):  # frame n - 1, the last one, lost on the way
            fake.publish(*frame_message(m["stream"], i))
        fake.publish(*protocol.encode_stream_end(m["stream"], "sdk", "ended", n, time.monotonic_ns()))
        return [protocol.encode_reply("stream_ended", stream=m["stream"], frames=n, req=m["req"])]

    fake.on_request = last_frame_lost
    line = client.open_stream("line1", mode="line")
    sync = LineSync(line)
    line.push(np.zeros(3200, np.float32))
    assert line.end() == 6
    wait_until(lambda: line.end_reason == "ended", what="the stream_end")
    at = sync.play_at
    assert not sync.pose(now=at + 3.5 / 30).ended
    pose = sync.pose(now=at + 4.5 / 30)  # past frame 4, the latest that came
    assert pose.ended and pose.blendshapes[schema.BLENDSHAPE_INDEX["jawOpen"]] == pytest.approx(0.4)
    empty = client.open_stream("line2", mode="line")
    sync = LineSync(empty)
    empty.push(np.zeros(160, np.float32))
    assert empty.end() == 0
    wait_until(lambda: empty.end_reason == "ended", what="the stream_end")
    pose = sync.pose()
    assert pose is not None and pose.ended and not pose.blendshapes.any()
