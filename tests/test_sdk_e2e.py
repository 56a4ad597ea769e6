"""ksdiff_sdk.Client end to end against the real runtime (ksdiff_runtime.server.runtime) on loopback.

The bundled checkpoint on the onnxruntime backend, ephemeral ports, real ZeroMQ sockets. Each
client waits once for the runtime's published hello (SDK: slow joiner), up to ~1 s.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from ksdiff_runtime.engine.controls import ease_frames, stream_frames
from ksdiff_runtime.server.runtime import Runtime, RuntimeStartError
from ksdiff_sdk import Animation, Client, StreamLost, schema

pytestmark = pytest.mark.timeout(180)

SAMPLE_SPEECH = Path(__file__).resolve().parent.parent / "ksdiff_runtime" / "assets" / "sample_speech.wav"
TIMEOUT_S = 30.0
JAW = schema.BLENDSHAPE_INDEX["jawOpen"]


def speech(seconds: float, rate: int = 16_000) -> np.ndarray:
    """``seconds`` of the bundled sample speech from its first voiced sample, float32 mono at ``rate``."""
    audio, sr = sf.read(str(SAMPLE_SPEECH), dtype="float32", always_2d=True)
    x = audio[:, 0]
    voiced = np.flatnonzero(np.abs(x) > 0.05)
    start = max(0, int(voiced[0]) - sr // 20)
    n = round(seconds * sr)
    x = x[start : start + n]
    assert len(x) == n, "the sample speech is too short"
    if rate != sr:
        g = math.gcd(rate, sr)
        x = resample_poly(x, rate // g, sr // g).astype(np.float32)
    return x


def s16_stereo(x: np.ndarray) -> np.ndarray:
    """[n, 2] int16: left = x, right = 0.8 x (so the mixdown is not just one channel)."""
    st = np.stack([x, 0.8 * x], axis=1)
    return np.round(np.clip(st, -1.0, 1.0) * 32767.0).astype(np.int16)




def check_complete(anim: Animation, expected: int) -> None:
    assert len(anim) == expected and anim.expected_frames == expected and anim.missing == 0
    assert [f.index for f in anim.frames] == list(range(expected))  # 0.. without gaps
    assert [f.last for f in anim.frames] == [False] * (expected - 1) + [True]
    assert all(f.stream == anim.stream for f in anim.frames)
    np.testing.assert_allclose(anim.t_audio, np.arange(expected) / anim.fps)


def test_animate_48k_stereo_s16(runtime):
    audio = s16_stereo(speech(2.05, 48_000))
    duration = audio.shape[0] / 48_000
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        anim = client.animate(audio, sample_rate=48_000, transcript=None, seed=1)
        assert client.invalid == 0 and client.missed == 0
    # one frame per started frame period (the tail is animated too), then the ease to rest
    expected = math.ceil(duration * anim.fps) + ease_frames(anim.fps)
    assert anim.fps == 30 and expected == 62 + 4
    check_complete(anim, expected)
    assert anim.blendshapes.shape == (expected, 52) and anim.head.shape == (expected, 3)
    assert np.isfinite(anim.blendshapes).all() and anim.blendshapes.min() >= 0 and anim.blendshapes.max() <= 1
    jaw = anim["jawOpen"]
    assert jaw.max() - jaw.min() > 0.05 and jaw.std() > 0.01  # the mouth moves with the speech
    audio_frames, ease = anim.frames[: -ease_frames(30)], anim.frames[-ease_frames(30) :]
    assert all(f.captured_ns is not None and f.latency_ms >= 0 for f in audio_frames)
    assert all(f.captured_ns is None for f in ease)  # the ease to rest after the audio


def test_transcript_and_seed_reach_the_model(runtime):
    """Same audio and seed -> the same frames; a transcript or another seed -> other frames."""
    x = speech(1.0)
    text = SAMPLE_SPEECH.with_suffix(".txt").read_text().strip()
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        plain = client.animate(x, seed=3)
        again = client.animate(x, seed=3)
        spoken = client.animate(x, seed=3, transcript=text)
        other_seed = client.animate(x, seed=4)
    np.testing.assert_array_equal(plain.blendshapes, again.blendshapes)
    assert np.abs(spoken.blendshapes - plain.blendshapes).max() > 1e-3
    assert np.abs(other_seed.head - plain.head).max() > 1e-4


def test_two_concurrent_streams_get_only_their_frames(runtime):
    x = speech(1.5)
    with (
        Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client,
        Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S, streams="npc-b") as only_b,
    ):
        only_b.wait_for_runtime()
        a = client.open_stream("npc-a", sample_rate=48_000, channels=2, format="s16le")
        b = client.open_stream("npc-b", sample_rate=16_000, channels=1, format="f32le")
        a_audio, b_audio = s16_stereo(resample_poly(x, 3, 1)), x[::-1].copy()
        # interleaved 100 ms pushes: both streams are live in the runtime at once
        for k in range(15):
            a.push(a_audio[k * 4800 : (k + 1) * 4800])
            b.push(b_audio[k * 1600 : (k + 1) * 1600])
        assert a.end() == b.end() == stream_frames(24_000, 30)
        frames_a, frames_b = list(a.frames()), list(b.frames())
        a.close()
        b.close()
        for frames, sid in ((frames_a, "npc-a"), (frames_b, "npc-b")):
            assert {f.stream for f in frames} == {sid}
            assert [f.index for f in frames] == list(range(stream_frames(24_000, 30))) and frames[-1].last
        # a client that filters on npc-b receives exactly npc-b's frames and nothing of npc-a
        n = stream_frames(24_000, 30)
        got_b = [only_b.recv(TIMEOUT_S) for _ in range(n)]
        assert [f.index for f in got_b] == list(range(n)) and {f.stream for f in got_b} == {"npc-b"}
        with pytest.raises(TimeoutError):
            only_b.recv(timeout=0.2)
        assert not np.allclose(frames_a[20].blendshapes, frames_b[20].blendshapes)  # different audio, motion


def test_concurrent_animate_from_two_clients(runtime):
    x = speech(1.0)
    results: dict[str, Animation] = {}
    errors: list[BaseException] = []

    def animate(name: str, audio: np.ndarray) -> None:
        try:
            with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as c:
                results[name] = c.animate(audio)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=animate, args=(n, a)) for n, a in (("fwd", x), ("rev", x[::-1].copy()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results["fwd"].stream != results["rev"].stream
    for anim in results.values():
        check_complete(anim, stream_frames(16_000, 30))


def _start_on(serve_engine, pub: str, router: str) -> Runtime:
    """A new Runtime on the endpoints a stopped one used (the ports can take a moment to be free)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return Runtime(serve_engine, pub=pub, router=router).start()
        except RuntimeStartError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # retrying a bind, not synchronising


def test_runtime_restart_under_a_connected_client(serve_engine):
    first = Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0").start()
    pub, router = first.pub_endpoint, first.router_endpoint
    second = None
    with Client(pub, router, timeout=TIMEOUT_S) as client:
        try:
            client.wait_for_runtime()
            assert client.instance == first.instance
            old = client.open_stream("npc1")
            old.push(speech(0.5))
            first.stop()
            second = _start_on(serve_engine, pub, router)
            deadline = time.monotonic() + TIMEOUT_S
            while client.instance != second.instance:  # the new runtime's hello (every second)
                assert time.monotonic() < deadline, "the client never saw the new runtime"
                time.sleep(0.01)  # polling a condition with a deadline
            with pytest.raises(StreamLost):
                old.push(speech(0.1))
            with pytest.raises(StreamLost):
                old.end()
            old.close()
            # the same client animates a new stream on the new runtime, nothing recreated
            anim = client.animate(speech(1.0))
            check_complete(anim, stream_frames(16_000, 30))
            assert client.latest(anim.stream) is not None  # and its frames reached recv() too
            assert client.restarts == 1
        finally:
            first.stop()
            if second is not None:
                second.stop()
