"""The runtime server over real ZeroMQ sockets on 127.0.0.1 (ephemeral ports), with the real model.

Each bad request of the protocol gets its error reply while another client's stream keeps
getting frames; streams in other formats, empty streams, timeouts and shutdown end as the
SPEC says.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import msgpack
import numpy as np
import pytest
import zmq
from scipy.signal import resample_poly

from ksdiff_runtime.inputs.stream import AudioFormat, BadAudioError, InputStream
from ksdiff_runtime.server.runtime import Runtime, RuntimeStartError, build_engine
from ksdiff_sdk import protocol as P

TIMEOUT_S = 30.0




class Peer:
    """A client: a DEALER for requests and a SUB that has received at least one message."""

    def __init__(self, rt: Runtime, *subscribe: bytes) -> None:
        self.ctx = zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        for topic in subscribe or (P.TOPIC_ROOT,):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.setsockopt(zmq.SUBSCRIBE, P.HELLO_TOPIC)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(rt.pub_endpoint)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(rt.router_endpoint)
        self.seen: list[dict] = []
        # the runtime publishes hello every second: the first one proves the subscription is live
        self.wait_pub(lambda m: m["type"] == "hello")

    def close(self) -> None:
        self.sub.close()
        self.dealer.close()

    def send(self, payload: bytes | list[bytes]) -> None:
        if isinstance(payload, list):
            self.dealer.send_multipart(payload)
        else:
            self.dealer.send(payload)

    def reply(self, timeout: float = TIMEOUT_S) -> dict:
        assert self.dealer.poll(int(timeout * 1000)), "no reply"
        return P.decode(self.dealer.recv())

    def request(self, mtype: str, **fields) -> dict:
        self.send(P.encode_request(mtype, **fields))
        return self.reply()

    def wait_pub(self, done: Callable[[dict], bool], timeout: float = TIMEOUT_S) -> list[dict]:
        """Collect published messages until ``done(message)``; returns those collected."""
        deadline = time.monotonic() + timeout
        got: list[dict] = []
        while time.monotonic() < deadline:
            if not self.sub.poll(100):
                continue
            _, payload = self.sub.recv_multipart()
            msg = P.decode(payload)
            got.append(msg)
            self.seen.append(msg)
            if done(msg):
                return got
        raise AssertionError(f"timed out; last messages: {[m['type'] for m in got[-5:]]}")


def speech(seconds: float, speech_16k: np.ndarray) -> np.ndarray:
    return np.resize(speech_16k, int(seconds * 16000)).astype(np.float32)


def push_clip(peer: Peer, stream: str, pcm: bytes, frame_bytes: int, chunk_frames: int, first_seq: int = 0) -> int:
    """Push pcm in chunks; returns the next audio seq."""
    step = chunk_frames * frame_bytes
    seq = first_seq
    for start in range(0, len(pcm), step):
        peer.send(P.encode_request("audio", stream=stream, seq=seq, pcm=pcm[start : start + step]))
        seq += 1
    return seq


def frames_of(messages: list[dict], stream: str) -> list[dict]:
    return [m for m in messages if m["type"] == "frame" and m["stream"] == stream]


def is_end(stream: str) -> Callable[[dict], bool]:
    return lambda m: m["type"] == "stream_end" and m["stream"] == stream


# --- the audio path ----------------------------------------------------------------------------
def test_input_stream_resamples_chunks_seamlessly_and_keeps_its_clock():
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((48000, 2))).astype(np.float32)
    whole = InputStream(AudioFormat(48000, 2))
    a = np.concatenate([whole.feed(x), whole.flush()])
    chunked = InputStream(AudioFormat(48000, 2))
    parts = [chunked.feed(x[i : i + 480]) for i in range(0, len(x), 480)]
    b = np.concatenate([*parts, chunked.flush()])
    assert abs(len(a) - 16000) <= 1 and len(a) == len(b)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # the same signal at 16 kHz, by another resampler, agrees in band
    ref = resample_poly(x.mean(axis=1), 1, 3)
    assert np.corrcoef(a[200:-200], ref[200 : len(a) - 200])[0, 1] > 0.95
    # at_sample: a gap becomes silence, a repeat is dropped
    s = InputStream(AudioFormat(16000, 1))
    assert len(s.feed(np.ones(100, np.float32))) == 100
    assert len(s.feed(np.ones(100, np.float32), at_sample=150)) == 150 and s.gap_samples == 50
    assert len(s.feed(np.ones(100, np.float32), at_sample=200)) == 50 and s.overlap_samples == 50
    with pytest.raises(BadAudioError, match="missing"):
        s.feed(np.ones(10, np.float32), at_sample=16000 * 11)
    assert s.received == 300  # the refused chunk left the clock alone
    with pytest.raises(BadAudioError, match="whole number"):
        InputStream(AudioFormat(16000, 2, "s16le")).feed(b"\0\0\0")
    nan = InputStream(AudioFormat(16000, 1))
    out = nan.feed(np.array([np.nan, 2.0, -np.inf, 0.5], np.float32))
    assert np.isfinite(out).all() and nan.sanitized == 3
    for bad in (dict(sample_rate=4000), dict(channels=9), dict(encoding="u8")):
        with pytest.raises(BadAudioError):
            AudioFormat(**bad)


# --- streams ------------------------------------------------------------------------------------
def test_sdk_stream_in_another_rate_and_channel_count(runtime, speech_16k):
    """48 kHz stereo int16 pushed in 20 ms chunks: every frame of the clip comes back, in order,
    the last one flagged, then stream_end; end_stream is answered with the frame count."""
    peer = Peer(runtime)
    try:
        mono = speech(1.0, speech_16k)
        x = resample_poly(mono, 3, 1)
        pcm = (np.stack([x, x], axis=1).clip(-1, 1) * 32767).astype("<i2").tobytes()
        opened = peer.request("open_stream", stream="npc1", sample_rate=48000, channels=2, format="s16le",
                              seed=-5, req=7)
        assert opened == {"v": [1, 0], "type": "stream_opened", "stream": "npc1", "fps": 30, "req": 7}
        push_clip(peer, "npc1", pcm, 4, 960)
        peer.send(P.encode_request("end_stream", stream="npc1", req=8))
        msgs = peer.wait_pub(is_end("npc1"))
        ended = peer.reply()
        frames = frames_of(msgs, "npc1")
        assert [f["index"] for f in frames] == list(range(30))
        assert [f["seq"] for f in frames] == list(range(30))
        assert frames[-1]["last"] and not any(f["last"] for f in frames[:-1])
        assert ended == {"v": [1, 0], "type": "stream_ended", "stream": "npc1", "frames": 30, "req": 8}
        assert msgs[-1]["reason"] == "ended" and msgs[-1]["frames"] == 30 and msgs[-1]["source"] == "sdk"
        assert any(m["type"] == "stream_start" and m["stream"] == "npc1" for m in peer.seen)
        jaw = [P.frame_arrays(f)[0][17] for f in frames]
        assert np.std(jaw) > 0.01  # the mouth moves with the speech
        for f in frames:
            assert f["published_ns"] >= f["captured_ns"] and f["lookahead_ms"] > 0 and f["compute_ms"] > 0
    finally:
        peer.close()


def test_empty_stream_and_transcript(runtime):
    peer = Peer(runtime)
    try:
        assert peer.request("open_stream", sample_rate=16000, channels=1, format="f32le",
                            transcript="Hello there.")["stream"] == "sdk-1"
        peer.send(P.encode_request("audio", stream="sdk-1", seq=0, pcm=b""))
        ended = peer.request("end_stream", stream="sdk-1")
        assert ended["frames"] == 0
        end = peer.wait_pub(is_end("sdk-1"))[-1]
        assert end["reason"] == "ended" and end["frames"] == 0
    finally:
        peer.close()


def test_nan_and_clipped_samples_are_sanitised_and_counted(runtime, speech_16k):
    peer = Peer(runtime)
    try:
        peer.request("open_stream", stream="noisy", sample_rate=16000, channels=1, format="f32le")
        x = speech(0.5, speech_16k) * 3.0  # clipped
        x[100:200] = np.nan
        x[300] = np.inf
        push_clip(peer, "noisy", x.astype("<f4").tobytes(), 4, 1600)
        stats = peer.wait_pub(lambda m: m["type"] == "stats" and m["streams"].get("noisy", {}).get("sanitized"))
        assert stats[-1]["streams"]["noisy"]["sanitized"] >= 101
        assert peer.request("end_stream", stream="noisy")["frames"] == 15
    finally:
        peer.close()


# --- bad requests: an error to the sender, nothing lost for anyone else -------------------------
BAD_REQUESTS: list[tuple[str, bytes | list[bytes], str]] = [
    ("not msgpack", b"\xc1\xc1\xc1", "malformed"),
    ("trailing bytes", P.encode_request("hello") + b"\x00", "malformed"),
    ("not a map", msgpack.packb([1, 2, 3]), "malformed"),
    ("no version", msgpack.packb({"type": "hello"}), "malformed"),
    ("unknown major", msgpack.packb({"v": [2, 0], "type": "hello", "req": 3}), "unsupported_version"),
    ("unknown type", msgpack.packb({"v": [1, 0], "type": "dance", "req": 4}), "unknown_type"),
    ("published type", P.encode_stream_start("x", "sdk", 1)[1], "unknown_type"),
    ("oversized", msgpack.packb({"v": [1, 0], "type": "audio", "stream": "a", "seq": 0,
                                 "pcm": b"\0" * (P.MAX_MESSAGE_BYTES + 8)}), "too_large"),
    ("two frames", [P.encode_request("hello"), P.encode_request("hello")], "malformed"),
    ("REQ delimiter", [b"", P.encode_request("hello")], "malformed"),
    ("bad stream id", msgpack.packb({"v": [1, 0], "type": "end_stream", "stream": "a b"}), "malformed"),
    ("unknown stream", P.encode_request("audio", stream="nobody", seq=0, pcm=b""), "unknown_stream"),
    ("end unknown stream", P.encode_request("end_stream", stream="nobody", req=9), "unknown_stream"),
    ("bad rate", msgpack.packb({"v": [1, 0], "type": "open_stream", "sample_rate": 1000, "channels": 1,
                                "format": "f32le"}), "bad_audio"),
    ("bad format", msgpack.packb({"v": [1, 0], "type": "open_stream", "sample_rate": 16000, "channels": 1,
                                  "format": "mp3"}), "bad_audio"),
]


def test_bad_requests_get_errors_and_another_stream_keeps_its_frames(runtime, speech_16k):
    good, bad = Peer(runtime, P.frame_topic("good"), P.stream_topic("good")), Peer(runtime)
    try:
        good.request("open_stream", stream="good", sample_rate=16000, channels=1, format="f32le")
        x = speech(1.0, speech_16k).astype("<f4").tobytes()
        half = len(x) // 2 // 4 * 4
        seq = push_clip(good, "good", x[:half], 4, 320)
        for name, payload, code in BAD_REQUESTS:
            bad.send(payload)
            reply = bad.reply()
            assert reply["type"] == "error" and reply["code"] == code, (name, reply)
            assert reply["message"], name
        # request ids are echoed where the request could be read
        bad.send(msgpack.packb({"v": [2, 0], "type": "hello", "req": 3}))
        assert bad.reply()["req"] == 3
        # a stream id in use, audio of the wrong length, a gap over 10 s: errors, the stream stays open
        bad.request("open_stream", stream="other", sample_rate=16000, channels=2, format="s16le")
        assert bad.request("open_stream", stream="other", sample_rate=16000, channels=1,
                           format="f32le")["code"] == "busy"
        assert bad.request("audio", stream="other", seq=0, pcm=b"\0\0\0")["code"] == "bad_audio"
        assert bad.request("audio", stream="other", seq=1, at_sample=16000 * 11, pcm=b"")["code"] == "bad_audio"
        assert bad.request("end_stream", stream="other")["type"] == "stream_ended"
        # the good stream got every frame, in order, despite all of this
        push_clip(good, "good", x[half:], 4, 320, seq)
        good.send(P.encode_request("end_stream", stream="good"))
        frames = frames_of(good.wait_pub(is_end("good")), "good")
        assert [f["index"] for f in frames] == list(range(30))
    finally:
        good.close()
        bad.close()


def test_capacity_is_refused_with_busy(serve_engine):
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", max_streams=1) as rt:
        peer = Peer(rt)
        try:
            assert peer.request("open_stream", sample_rate=16000, channels=1, format="f32le")["type"] == "stream_opened"
            refused = peer.request("open_stream", sample_rate=16000, channels=1, format="f32le")
            assert refused["code"] == "busy" and "at most 1" in refused["message"]
        finally:
            peer.close()


def test_port_in_use_is_a_clear_error(serve_engine, runtime):
    with pytest.raises(RuntimeStartError, match=r"already in use.*--pub"):
        Runtime(serve_engine, pub=runtime.pub_endpoint, router="tcp://127.0.0.1:0").start()
    with pytest.raises(RuntimeStartError, match=r"already in use.*--router"):
        Runtime(serve_engine, pub="tcp://127.0.0.1:0", router=runtime.router_endpoint).start()


# --- ends: timeout and shutdown ----------------------------------------------------------------
def test_idle_stream_times_out():
    eng = build_engine("onnxruntime", "low-latency", idle_timeout_s=0.3)
    try:
        with Runtime(eng, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0") as rt:
            peer = Peer(rt)
            try:
                peer.request("open_stream", stream="quiet", sample_rate=16000, channels=1, format="f32le")
                assert peer.wait_pub(is_end("quiet"))[-1]["reason"] == "timeout"
                assert peer.request("audio", stream="quiet", seq=0, pcm=b"")["code"] == "unknown_stream"
            finally:
                peer.close()
    finally:
        eng.close()


def test_shutdown_ends_open_streams_and_stops_promptly(serve_engine):
    rt = Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0").start()
    peer = Peer(rt)
    try:
        peer.request("open_stream", stream="live", sample_rate=16000, channels=1, format="f32le")
        stopper = threading.Thread(target=rt.stop)
        started = time.monotonic()
        stopper.start()
        end = peer.wait_pub(is_end("live"))[-1]
        stopper.join(timeout=10)
        assert not stopper.is_alive() and time.monotonic() - started < 5
        assert end["reason"] == "shutdown"
        assert "live" not in serve_engine.stream_ids
    finally:
        peer.close()


# --- sources and the command line --------------------------------------------------------------
def test_file_source_stream_in_its_own_rate(runtime, tmp_path, speech_16k):
    """A 44.1 kHz stereo file played as fast as possible: every frame, then stream_end."""
    import soundfile as sf

    from ksdiff_runtime.sources import FileSource

    x = resample_poly(speech(1.2, speech_16k), 441, 160)
    path = tmp_path / "line 1.wav"
    sf.write(path, np.stack([x, 0.5 * x], axis=1), 44100, subtype="PCM_16")
    peer = Peer(runtime)
    try:
        sid = runtime.add_source(FileSource(path, realtime=False, stream_id="line_1"))
        msgs = peer.wait_pub(is_end(sid))
        frames = frames_of(msgs, sid)
        assert [f["index"] for f in frames] == list(range(36)) and frames[-1]["last"]
        assert all(f["captured_ns"] is None for f in frames)  # played faster than real time: no capture clock
        assert msgs[-1]["source"] == "file" and msgs[-1]["reason"] == "ended"
    finally:
        peer.close()


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ksdiff_runtime.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_serve_refuses_bad_files_and_configs_before_loading_the_model(tmp_path):
    missing = cli("serve", "--file", str(tmp_path / "nope.wav"))
    assert missing.returncode == 1 and "not found" in missing.stderr and "nope.wav" in missing.stderr
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    bad = cli("serve", "--file", str(corrupt))
    assert bad.returncode == 1 and "corrupt.wav" in bad.stderr
    config = tmp_path / "serve.toml"
    config.write_text('pub = "tcp://127.0.0.1:5555"\nmicrophone = true\n')
    unknown = cli("serve", "--config", str(config))
    assert unknown.returncode == 2 and "unknown key(s) microphone" in unknown.stderr
    config.write_text("fps = 'fast'\n")
    typed = cli("serve", "--config", str(config))
    assert typed.returncode == 2 and "fps must be of type int" in typed.stderr


def test_serve_port_in_use_exits_with_a_clear_message(runtime):
    taken = cli("serve", "--pub", runtime.pub_endpoint, "--router", "tcp://127.0.0.1:0", "--backend", "onnxruntime")
    assert taken.returncode == 1
    assert f"cannot listen on {runtime.pub_endpoint}" in taken.stderr and "--pub" in taken.stderr


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    """The real command: a client opens a stream, SIGTERM, the stream ends with reason shutdown."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    pub, router = (f"tcp://127.0.0.1:{p}" for p in ports)
    server = subprocess.Popen([sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--pub", pub, "--router", router,
                               "--backend", "onnxruntime", "--log-format", "json"],
                              stderr=subprocess.PIPE, text=True)
    try:
        rt = type("Endpoints", (), {"pub_endpoint": pub, "router_endpoint": router})()
        peer = Peer(rt)  # waits for the server's first hello (it loads the model first)
        try:
            peer.request("open_stream", stream="npc", sample_rate=16000, channels=1, format="f32le")
            server.send_signal(signal.SIGTERM)
            assert peer.wait_pub(is_end("npc"))[-1]["reason"] == "shutdown"
        finally:
            peer.close()
        assert server.wait(timeout=30) == 0
        logs = [json.loads(line) for line in server.stderr.read().splitlines() if line.startswith("{")]
        assert any("stream npc ended (shutdown)" in entry["msg"] for entry in logs)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_a_frame_that_cannot_be_encoded_is_dropped_and_the_runtime_goes_on(runtime, speech_16k):
    """A non-finite head angle (a broken model) must cost that frame, not the io thread."""
    from ksdiff_runtime.engine.stream import Frame

    peer = Peer(runtime)
    try:
        peer.request("open_stream", stream="odd", sample_rate=16000, channels=1, format="f32le")
        info = runtime._streams["odd"]
        bad = Frame("odd", 0, 0.0, np.zeros(52, np.float32), np.array([np.nan, 0, 0], np.float32), None, 0)
        runtime._post(("frame", info, bad, 0, 1.0))
        stats = peer.wait_pub(lambda m: m["type"] == "stats" and m["streams"].get("odd", {}).get("drops") == 1)
        assert stats[-1]["drops"] >= 1
        # and the runtime still serves the stream
        push_clip(peer, "odd", speech(0.5, speech_16k).astype("<f4").tobytes(), 4, 1600)
        assert peer.request("end_stream", stream="odd")["frames"] == 15
    finally:
        peer.close()


def test_a_source_that_fails_to_start_ends_its_stream_with_error(runtime):
    class DeadSource:
        kind, stream_id, sample_rate, channels = "mic", "mic", 48000, 1

        def start(self, on_audio, on_end) -> None:
            raise RuntimeError("device vanished")

        def stop(self) -> None:
            pass

    peer = Peer(runtime)
    try:
        with pytest.raises(RuntimeError, match="vanished"):
            runtime.add_source(DeadSource())
        end = peer.wait_pub(is_end("mic"))[-1]
        assert end["reason"] == "error" and end["source"] == "mic"
        assert runtime.wait_until_idle(timeout=TIMEOUT_S) and "mic" not in runtime.engine.stream_ids
    finally:
        peer.close()
