"""ksdiff_sdk.Client end to end against the real runtime (ksdiff_runtime.server.runtime) on loopback.

The bundled checkpoint on the onnxruntime backend, ephemeral ports, real ZeroMQ sockets. Each
client waits once for the runtime's published hello (SDK: slow joiner), up to ~1 s.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from peers import SAMPLE_SPEECH, Peer, TcpRelay, is_end, sample_speech, spend_share
from scipy.signal import resample_poly

from ksdiff_runtime.engine.controls import ease_frames, stream_frames
from ksdiff_runtime.motion import MOOD_EXPRESSIONS
from ksdiff_runtime.server.runtime import Runtime, RuntimeStartError
from ksdiff_sdk import (
    Animation,
    BadAudioError,
    BadControlsError,
    Client,
    ClientClosedError,
    ForbiddenError,
    LineSync,
    StreamLost,
    UnknownStreamError,
    protocol,
    schema,
)

pytestmark = pytest.mark.timeout(180)

TIMEOUT_S = 30.0
JAW = schema.BLENDSHAPE_INDEX["jawOpen"]


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
    audio = s16_stereo(sample_speech(2.05, 48_000))
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


def test_lines_without_a_seed_take_their_ids_and_never_move_in_lockstep(runtime):
    """1.4: a stream opened without a seed takes a hash of its id. Two NPCs speaking the same line at once get
    different head motion (with one seed for all they nodded together); the same id and audio again repeat its
    frames exactly."""
    x = sample_speech(1.5)

    def line(stream: str) -> np.ndarray:
        handle = client.open_stream(stream, 16_000, mode="line", max_frames=None)
        with handle:
            handle.push(x)
            handle.end()
            return np.stack([f.head for f in handle.frames(TIMEOUT_S)])

    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        a, b, a_again = line("crowd-1"), line("crowd-2"), line("crowd-1")
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(a - b).max() > 1e-3


def test_transcript_and_seed_reach_the_model(runtime):
    """Same audio and seed -> the same frames; a transcript or another seed -> other frames."""
    x = sample_speech(1.0)
    text = SAMPLE_SPEECH.with_suffix(".txt").read_text().strip()
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        plain = client.animate(x, seed=3)
        again = client.animate(x, seed=3)
        spoken = client.animate(x, seed=3, transcript=text)
        other_seed = client.animate(x, seed=4)
    np.testing.assert_array_equal(plain.blendshapes, again.blendshapes)
    assert np.abs(spoken.blendshapes - plain.blendshapes).max() > 1e-3
    assert np.abs(other_seed.head - plain.head).max() > 1e-4


def test_a_push_placed_past_the_gap_limit_fails_at_once_and_a_paced_push_ends_with_its_client(runtime):
    """at_sample more than MAX_GAP_S past the audio before it is refused by the runtime: push paced itself to real
    time first (62,480 s for at_sample 1e9, in one sleep that Client.close() did not end) and then sent it; now
    BadAudioError at once, nothing sent. So a push waits for real time one short chunk at a time only (a clip longer
    than max_ahead_s), and ends soon after its client is closed."""
    client = Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S)
    try:
        handle = client.open_stream("gap", sample_rate=16_000)  # named: auto ids (sdk-N) are tested in test_serve.py
        for at in (16_000 * (protocol.MAX_GAP_S + 1), 10**9):
            t0 = time.monotonic()
            with pytest.raises(BadAudioError, match="is filled with silence"):
                handle.push(np.zeros(1600, np.float32), at_sample=at)
            assert time.monotonic() - t0 < 1.0
        handle.push(np.zeros(1600, np.float32), at_sample=16_000 * (protocol.MAX_GAP_S - 1))  # within: taken
        assert handle.max_ahead_s is not None
        clip = np.zeros(int(16_000 * (handle.max_ahead_s + 30)), np.float32)  # 30 s more than may go at once
        outcome: list[BaseException | None] = []

        def push() -> None:
            try:
                handle.push(clip)
                outcome.append(None)
            except BaseException as e:  # what push raised is the test's result
                outcome.append(e)

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        deadline = time.monotonic() + TIMEOUT_S
        while handle._next_sample < 16_000 * (protocol.MAX_GAP_S - 1) + clip.size:  # the clip is being paced
            assert time.monotonic() < deadline and pusher.is_alive(), outcome
            pusher.join(0.01)
        t0 = time.monotonic()
        client.close()
        pusher.join(5.0)
        assert not pusher.is_alive(), "push still waiting for real time after its client was closed"
        assert time.monotonic() - t0 < 2.0 and isinstance(outcome[0], ClientClosedError), outcome
    finally:
        client.close()


def test_two_concurrent_streams_get_only_their_frames(runtime):
    x = sample_speech(1.5)
    with (
        Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client,
        Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S, streams="npc-b") as only_b,
    ):
        only_b.wait_for_runtime()
        # lines: every frame comes however busy the machine (a live stream's frames too late for its deadline are shed)
        a = client.open_stream("npc-a", sample_rate=48_000, channels=2, format="s16le", mode="line")
        b = client.open_stream("npc-b", sample_rate=16_000, channels=1, format="f32le", mode="line")
        a_audio, b_audio = s16_stereo(resample_poly(x, 3, 1)), x[::-1].copy()
        # interleaved 100 ms pushes: both streams are in the runtime at once
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
    x = sample_speech(1.0)
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
            old.push(sample_speech(0.5))
            first.stop()
            second = _start_on(serve_engine, pub, router)
            deadline = time.monotonic() + TIMEOUT_S
            while client.instance != second.instance:  # the new runtime's hello (every second)
                assert time.monotonic() < deadline, "the client never saw the new runtime"
                time.sleep(0.01)  # polling a condition with a deadline
            with pytest.raises(StreamLost):
                old.push(sample_speech(0.1))
            with pytest.raises(StreamLost):
                old.end()
            old.close()
            # the same client animates a new stream on the new runtime, nothing recreated
            anim = client.animate(sample_speech(1.0))
            check_complete(anim, stream_frames(16_000, 30))
            assert client.latest(anim.stream) is not None  # and its frames reached recv() too
            assert client.restarts == 1
        finally:
            first.stop()
            if second is not None:
                second.stop()


# --- lines in sync (SPEC 6, "You play the audio yourself") ---------------------------------------------
def test_a_line_played_locally_gets_its_frames_in_time(runtime):
    """The game's way: open a line, push it whole, start local playback the stated latency later with
    LineSync, and sample a pose per render tick: the frames are there before their instant (unless the
    runtime itself ran later than it stated, which an overloaded machine can make it do), and the pose at
    each frame's instant is that frame."""
    x = sample_speech(3.0)
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        handle = client.open_stream("npc-line", 16_000, mode="line", max_frames=None)
        with handle:
            assert handle.mode == "line" and handle.latency_ms >= runtime.engine.preset.deadline_ms()
            sync = LineSync(handle, output_latency_s=0.0)
            assert sync.play_at is None  # the clock starts with the first push
            handle.push(x)
            handle.end(wait=False)  # the tail of the line is animated too; the game goes on at once
            played = sync.start_playback(lambda: None, timeout=TIMEOUT_S)  # a speaker that starts at once
            assert 0 <= played - sync.play_at < 0.5  # never early; late only by a busy machine's sleep
            deadline = time.monotonic() + TIMEOUT_S
            while (pose := sync.pose()) is None or not pose.ended:  # the game loop, until the rest pose
                assert time.monotonic() < deadline, "the line never ended"
                time.sleep(1 / 120)  # a 120 Hz render tick
            n = stream_frames(48_000, 30)
            assert handle.end() == n
            slack = sync.arrival_slack_s()
            frames = sync.frames
    assert [f.index for f in frames] == list(range(n))
    first_ms = (sync.delay_s - slack[0]) * 1e3  # from the first push to the first frame
    ahead = sorted(slack)
    print(f"\nline: stated latency {handle.latency_ms:.0f} ms, first frame {first_ms:.0f} ms after the first push; "
          f"frames ahead of their instant: min {ahead[0] * 1e3:.0f} ms, median {ahead[n // 2] * 1e3:.0f} ms; "
          f"late {sync.late} of {n}")
    # the runtime kept its statement for the line's start (an overloaded machine may not): then the rest of
    # the line, animated faster than real time, keeps ahead of the audio
    if first_ms <= handle.latency_ms:
        assert sync.late <= n // 10
    for i in (0, 17, n - 1):  # sampled at its instant, a pose is that frame
        pose = sync.pose(sync.play_at + i / 30)
        np.testing.assert_allclose(pose.blendshapes, frames[i].blendshapes, atol=1e-6)
    halfway = sync.pose(sync.play_at + 10.5 / 30)
    np.testing.assert_allclose(halfway.blendshapes, (frames[10].blendshapes + frames[11].blendshapes) / 2, atol=1e-5)
    assert not sync.pose(sync.play_at + (n - 2) / 30).ended and sync.pose(sync.play_at + 99).ended


def test_animate_runs_a_whole_clip_as_a_line(runtime):
    """animate pushes the clip at once in line mode: every frame, faster than real time (printed)."""
    x = sample_speech(3.0)
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        client.animate(x[:8000])  # the first line of a session also pays for its threads' start
        t0 = time.monotonic()
        anim = client.animate(x, seed=3)
        took = time.monotonic() - t0
    check_complete(anim, stream_frames(48_000, 30))
    print(f"\nanimate of a 3 s line: {took:.2f} s ({3.0 / took:.1f}x real time)")


def test_animate_of_a_line_longer_than_the_runtime_lets_a_stream_run_ahead(serve_engine, monkeypatch):
    """A line longer than ``max_ahead_s`` (a long NPC speech against the default 20 s): what fits goes at once,
    the rest as real time makes room for it, in messages short enough that the runtime neither refuses one as
    too far ahead nor ends the stream for its silence between them (here 1.5 s ahead at most and a 1 s idle
    timeout, so a 4 s line takes ~3 s; once its first message alone was over the lead: busy)."""
    monkeypatch.setattr(serve_engine, "idle_timeout_ns", 1_000_000_000)
    x = sample_speech(4.0)
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", max_ahead_s=1.5,
                 admission=False) as rt, \
            Client(rt.pub_endpoint, rt.router_endpoint, timeout=TIMEOUT_S) as client:
        anim = client.animate(x, seed=4)
        assert rt.refusals.counts == {}
    check_complete(anim, stream_frames(64_000, 30))


def test_a_first_push_placed_beyond_the_lead_is_taken(serve_engine):
    """A stream's first audio placed later than ``max_ahead_s`` on its clock (a line that starts with a pause):
    the runtime's clock starts with the stream's first message, so the SDK starts it when the push is made, not
    when the audio goes (it used to wait, send it, and be refused busy again and again)."""
    x = sample_speech(1.0)
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", max_ahead_s=1.5,
                 admission=False) as rt, \
            Client(rt.pub_endpoint, rt.router_endpoint, timeout=TIMEOUT_S) as client:
        stream = client.open_stream("late-start")
        stream.push(x, at_sample=48_000)  # 3 s in: waits ~2 s for real time to make room
        assert stream.end() == stream_frames(64_000, 30)
        frames = list(stream.frames())
        stream.close()
        assert rt.refusals.counts == {}
    assert [f.index for f in frames] == list(range(stream_frames(64_000, 30)))
    jaw = np.array([f.blendshapes[JAW] for f in frames])
    assert jaw[:75].max() < 0.1 < jaw[95:].max()  # at rest in the silence, then speaking


def test_a_stream_whose_connection_was_remade_is_lost_and_a_new_one_opens(runtime):
    """The network drops the client's connection for a moment: ZeroMQ reconnects, with another routing id, and the
    runtime keeps a stream for the connection that opened it. The handle says the stream is lost (reason
    "reconnect"), as for a restart, and a new stream opens on the new connection."""
    chunk = sample_speech(0.1)
    with TcpRelay(runtime.router_endpoint) as relay, \
            Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        stream = client.open_stream("blip")
        stream.push(chunk)
        relay.cut()
        deadline = time.monotonic() + 10
        with pytest.raises(StreamLost) as lost:
            while time.monotonic() < deadline:  # audio sent before ZeroMQ saw the cut is lost with the connection
                stream.push(chunk)
                time.sleep(0.02)  # a mic's pace, until the refusal of the stream's audio comes back
        assert lost.value.reason == "reconnect"
        with pytest.raises(StreamLost):
            stream.end()
        again = client.open_stream("blip-again")
        again.push(sample_speech(1.0))
        assert again.end() == stream_frames(16_000, 30)
        assert relay.connections == 2  # the new stream went over the connection ZeroMQ made again
        again.close()
        stream.close()  # a lost handle closes quietly


def test_requests_that_timed_out_before_they_reached_the_runtime_are_never_sent(runtime):
    """The runtime's ROUTER out of reach (its PUB in reach): an open_stream and a set_controls whose calls time out in
    the client's outbox are withdrawn, not sent once the ROUTER is reachable (the open_stream used to open a stream
    nobody used, held until the runtime's idle timeout)."""
    relay = TcpRelay(runtime.router_endpoint)  # not entered: it accepts nothing yet
    with Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        client.wait_for_runtime()  # from the published hello; its own hello request waits in the outbox
        with pytest.raises(TimeoutError, match="open_stream"):
            client.open_stream("never", timeout=0.5)
        with pytest.raises(TimeoutError, match="set_controls"):
            client.set_controls("never", {"timing_offset_ms": -30}, timeout=0.1)
        with relay:
            marker = client.open_stream("marker")  # requests are taken in order: anything sent before went first
            assert runtime.stream_ids == ["marker"]
            marker.close()
        # the open_stream and the hello sent before it, the set_controls (wait_for_runtime's own hello, not needed
        # once the published one came, is withdrawn too but its call did not time out)
        assert client.withdrawn == 3
        assert list(client.errors) == []


def test_a_stream_opened_after_its_call_timed_out_is_ended_at_once(runtime):
    """A runtime that stalls (here the relay holds what the client sends, the connection up) answers an open_stream
    after its call timed out: the client ends the stream it opened ("ended" at once, not "timeout" after the
    runtime's 10 s idle timeout)."""
    watcher = Peer(runtime, protocol.STREAM_TOPIC_PREFIX)
    try:
        with TcpRelay(runtime.router_endpoint) as relay, \
                Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
            first = client.open_stream("first")  # the connection through the relay is up
            relay.hold_requests()
            with pytest.raises(TimeoutError, match="open_stream"):
                client.open_stream("orphan", timeout=0.5)  # it left the client: ZeroMQ took it
            relay.release_requests()
            end = watcher.wait_pub(is_end("orphan"))[-1]
            assert end["reason"] == "ended"
            assert runtime.stream_ids == ["first"] and first.lost is None
            first.close()
            assert client.withdrawn == 0 and list(client.errors) == []
    finally:
        watcher.close()


def test_an_end_stream_the_runtime_dropped_unread_is_sent_again_once_the_drops_are_over(runtime):
    """A client past its share of the runtime's io thread (floods.py) has its requests dropped unread, told by one
    `busy` with no req; an end_stream among them used to leave its stream to the runtime's 10 s idle timeout, and
    `end()` raised StreamLost. The client sends it again once the window of those drops has passed (SPEC 4.6)."""
    watcher = Peer(runtime, protocol.STREAM_TOPIC_PREFIX)
    try:
        with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
            stream = client.open_stream("dropped", mode="line")  # every frame, however late its end (not shed)
            stream.push(sample_speech(0.5))
            stream.set_controls({})  # requests are handled in order: once this one is answered, the pushes were
            spend_share(runtime, "dropped")  # in a window that starts now
            assert stream.end() == stream_frames(8_000, 30)
            busy = [e for e in client.errors if e.code == "busy"]
            # sent again: the end_stream alone (the push was read before the set_controls was answered: no copy)
            assert len(busy) == 1 and "dropped unread" in str(busy[0]) and client.resent == 1
            end = watcher.wait_pub(is_end("dropped"))[-1]
            assert end["reason"] == "ended" and stream.errors == []
    finally:
        watcher.close()


def test_audio_the_runtime_dropped_unread_is_sent_again_once_the_drops_are_over(runtime):
    """24 NPC lines of 10 s at 48 kHz stereo pushed at once through one client went past its share of the runtime's
    io thread: the audio of 8 was dropped unread, and those lines ended with no frame ("busy" with no req, SPEC 4.6).
    Every audio message carries its at_sample, so the client sends what left in the window of the drops again once it
    has passed (the runtime drops what it already has of a copy), ahead of audio pushed after it and before the
    end_stream sent again: every line gets all of its frames."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        first = client.open_stream("before", mode="line")
        first.push(sample_speech(0.5))  # taken before the drops: its copy changes nothing
        first.set_controls({})  # requests are handled in order: once this one is answered, the push was taken
        dropped = client.open_stream("dropped", mode="line", sample_rate=48_000, channels=2)
        dropped.set_controls({})
        spend_share(runtime, "dropped")  # in a window that starts now
        x = resample_poly(sample_speech(2.0), 3, 1).astype(np.float32)
        dropped.push(np.stack([x, x], axis=1))
        first.push(sample_speech(0.5), at_sample=8_000)
        assert dropped.end() == stream_frames(32_000, 30)  # all of it, not the silence a lost message leaves
        assert first.end() == stream_frames(16_000, 30)
        busy = [e for e in client.errors if e.code == "busy"]
        # the dropped line's audio (and first's second push if it left before the busy came); what was pushed and
        # ended once the client knew of the drops waited for their end, and no end_stream left before its audio was read
        assert len(busy) == 1 and client.resent in (1, 2)
        assert dropped.errors == [] and first.errors == []
        assert dropped.started_at is not None and len(dropped.take_frames()) == stream_frames(32_000, 30)


def _wait_busy(client: Client) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not any(e.code == "busy" for e in client.errors) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_copy_of_audio_an_ending_line_has_changes_nothing(runtime):
    """Lines pushed whole and ended (the NPC pattern, `end(wait=False)`), then a busy: their audio goes again while
    the runtime still animates them. It refused each copy (unknown_stream, no open stream) and `end()` raised it; a
    copy of audio a stream already has is now nothing to the runtime, ending or not."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        lines = [client.open_stream(f"ending{i}", mode="line") for i in range(6)]
        other = client.open_stream("other", mode="line")
        for line in lines:
            line.push(np.resize(sample_speech(6.0), 19 * 16_000))  # 6 lines of 19 s: still animated when it goes again
            line.end(wait=False)
        other.set_controls({})  # answered: the lines' audio was read (their end_streams follow once that is known)
        spend_share(runtime, "other")
        other.push(sample_speech(0.1))  # dropped unread: busy
        _wait_busy(client)
        for line in lines:
            assert line.end() == stream_frames(19 * 16_000, 30) and line.errors == []
        assert client.resent >= 6  # their audio went again


def test_audio_sent_again_goes_to_the_line_that_sent_it_not_one_opened_again_with_its_id(runtime):
    """A line ended, a busy came, and the id was opened again for a new line before the audio went again: the old
    line's audio was sent again to the new one (matched by id), which got 19 frames for its 0.1 s."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        other = client.open_stream("other2", mode="line")
        old = client.open_stream("npc", mode="line")
        old.push(sample_speech(0.5))
        assert old.end() == stream_frames(8_000, 30)
        drops_end = spend_share(runtime, "other2", ends_in=0.3)
        other.push(sample_speech(0.1))  # dropped unread: busy
        _wait_busy(client)
        while time.monotonic() < drops_end:  # the runtime's drops are over; the client's resend (busy + 1 s) to come
            time.sleep(0.01)
        assert client.resent == 0
        new = client.open_stream("npc", mode="line")
        new.push(sample_speech(0.1))
        deadline = time.monotonic() + TIMEOUT_S
        while client.resent == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert new.end() == stream_frames(1_600, 30)


# --- artists' controls ------------------------------------------------------------------------------
def test_controls_through_the_sdk(runtime):
    x = sample_speech(1.0)
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client, \
            Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as other:
        with pytest.raises(BadControlsError, match="unknown blendshape 'jaw'"):
            client.open_stream("tuned", 16_000, controls={"shapes": {"jaw": {"gain": 0}}})
        handle = client.open_stream("tuned", 16_000, controls={"strength": {"head": 0}}, max_frames=None, mode="line")
        with handle:
            now = handle.set_controls({"shapes": {"jawOpen": {"gain": 0}}})
            assert now["strength"]["head"] == 0.0 and now["shapes"]["jawOpen"]["gain"] == 0.0
            with pytest.raises(BadControlsError, match=r"strength.jaw must be in \[0, 3\]"):
                handle.set_controls({"strength": {"jaw": 4}})
            with pytest.raises(ForbiddenError):
                other.set_controls("tuned", {"strength": {"jaw": 1}})
            with pytest.raises(ValueError, match="controls"):
                handle.set_controls(["jaw"])  # type: ignore[arg-type]
            handle.push(x)
            handle.end()
            frames = list(handle.frames(TIMEOUT_S))
        with pytest.raises(UnknownStreamError):
            client.set_controls("tuned", {})  # ended
    assert len(frames) == stream_frames(16_000, 30)
    assert all(f.blendshapes[JAW] == 0 and not f.head.any() for f in frames)


def test_a_mood_through_the_sdk(runtime):
    """1.3: open_stream(mood=...), StreamHandle.set_mood, animate(mood=...); a mood the protocol does not know
    is refused before it is sent, naming the moods."""
    smile, frown = schema.BLENDSHAPE_INDEX["mouthSmileLeft"], schema.BLENDSHAPE_INDEX["mouthFrownLeft"]
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        with pytest.raises(ValueError, match="mood must be one of neutral, happy, sad, angry, surprised; got 'glad'"):
            client.open_stream("moody", 16_000, mood="glad")
        with pytest.raises(BadControlsError, match=r"mood_intensity must be in \[0, 1\]"):
            client.open_stream("moody", 16_000, mood="happy", mood_intensity=3)
        handle = client.open_stream("moody", 16_000, mood="happy", mood_intensity=0.5, max_frames=None)
        with handle:
            handle.push(sample_speech(0.5))
            frames = [next(handle.frames(TIMEOUT_S))]  # a first frame, happy, before the mood changes
            now = handle.set_mood("sad")
            assert (now["mood"], now["mood_intensity"]) == ("sad", 0.5)  # the intensity kept
            handle.push(sample_speech(0.5))
            handle.end()
            frames += list(handle.frames(TIMEOUT_S))
        happy, sad, angry = (MOOD_EXPRESSIONS[m].pose for m in ("happy", "sad", "angry"))
        assert frames[0].blendshapes[smile] >= 0.5 * happy["mouthSmileLeft"] - 1e-6  # happy from the first frame
        assert frames[-1].blendshapes[frown] == pytest.approx(0.5 * sad["mouthFrownLeft"])
        assert frames[-1].blendshapes[smile] == 0
        anim = client.animate(sample_speech(0.5), mood="angry")
        assert anim.blendshapes[:, schema.BLENDSHAPE_INDEX["browDownLeft"]].min() >= angry["browDownLeft"] - 1e-6


def test_a_style_through_the_sdk(runtime):
    """1.4: open_stream(style=...), StreamHandle.set_style, animate(style=...); a style the protocol does not
    know is refused before it is sent, naming the styles. The same audio and seed: each style's frames are the
    plain line's through the controls stage with that style, as a line's (its gains against the model's lines)."""
    from ksdiff_runtime.engine.controls import Controls, ControlStage
    from ksdiff_runtime.engine.style import StyleProfile

    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        with pytest.raises(ValueError, match="style must be one of none, still, calm, natural, lively, animated; "
                                             "got 'bouncy'"):
            client.open_stream("styled", 16_000, style="bouncy")
        handle = client.open_stream("styled", 16_000, style="calm", max_frames=None)
        with handle:
            now = handle.set_style("lively")
            assert now["style"] == "lively" and now["mood"] == "neutral"
            handle.end()
        audio = sample_speech(1.0)
        still = client.animate(audio, seed=4, style="still")
        animated = client.animate(audio, seed=4, style="animated")
        plain = client.animate(audio, seed=4)

        def head(anim) -> float:
            return StyleProfile.of(anim.blendshapes, anim.head).head

        assert head(still) < 0.5 * head(plain) and head(animated) > 1.5 * head(plain)
        n = len(audio) * 30 // 16_000  # the line's frames (the ease to rest after them starts from the styled last)
        values = np.concatenate([plain.blendshapes, plain.head], axis=1)[:n]
        for name, anim in (("still", still), ("animated", animated)):
            expected = ControlStage(Controls.from_dict({"style": name}), 30, made="line").shape(values)
            np.testing.assert_allclose(np.concatenate([anim.blendshapes, anim.head], axis=1)[:n], expected, atol=1e-5)
