"""The pacer of the outputs that show frames as they arrive (ksdiff_runtime/outputs/pacing.py), on a clock driven
by hand; and a line pushed whole through the SDK reaching a VMC receiver at its own pace (a real runtime)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest

from ksdiff_runtime.events import AudioLevel, Frame, Hello, StreamEnded, StreamStarted
from ksdiff_runtime.outputs.pacing import Pacer

FPS = 30


def frame(stream: str, index: int, last: bool = False, captured_s: float | None = 0.0, fps: int = FPS) -> Frame:
    """A frame of a real-time stream (its audio captured at ``captured_s``; None: on no real-time clock)."""
    return Frame(stream=stream, seq=index, index=index, fps=fps, t_audio=index / fps,
                 blendshapes=np.zeros(52, np.float32), head=np.zeros(3, np.float32), gaze=np.zeros(4, np.float32),
                 captured_ns=None if captured_s is None else round(captured_s * 1e9), published_ns=0,
                 lookahead_ms=0.0, compute_ms=0.0, last=last)


def released(pacer: Pacer, start: float, until: float, step: float = 0.001) -> list[tuple[float, object]]:
    """(time, event) for each event the pacer lets go, looking every ``step`` seconds from ``start`` to ``until``."""
    out = []
    for i in range(round((until - start) / step) + 1):
        now = start + i * step
        out.extend((now, e) for e in pacer.due(now))
    return out


def test_a_line_that_comes_at_once_goes_out_at_its_own_pace_then_ends():
    pacer = Pacer()
    pacer.put(StreamStarted("npc", "sdk", mode="line"), 10.0)
    for i in range(60):  # 2 s of frames computed in 50 ms
        pacer.put(frame("npc", i, last=i == 59), 10.0 + i / 1200)
    pacer.put(StreamEnded("npc", "sdk", "ended", 60), 10.05)
    out = released(pacer, 10.0, 12.1)
    frames = [(t, e) for t, e in out if isinstance(e, Frame)]
    assert isinstance(out[0][1], StreamStarted) and out[0][0] == 10.0
    assert [e.index for _, e in frames] == list(range(60))
    assert all(abs(t - (10.0 + e.t_audio)) < 0.0011 for t, e in frames)  # each at its time, the first at once
    assert isinstance(out[-1][1], StreamEnded) and out[-1][0] == frames[-1][0]  # right after its last frame
    assert pacer.held == 0 and pacer.next_due() is None


def test_a_lines_frames_go_at_its_first_audios_arrival_plus_its_stated_latency():
    """SPEC 4.6 (latency_ms): a game plays a line's audio latency_ms after its first push and shows frame i at that
    plus t_audio; a VMC app shown the line by the pacer is then in sync with that audio, however fast it was made."""
    pacer = Pacer()
    pacer.put(StreamStarted("npc", "sdk", mode="line", latency_ms=250.0), 10.0)
    for i in range(30):  # pushed at 10.0, computed by 10.1
        pacer.put(frame("npc", i, captured_s=10.0), 10.1)
    out = released(pacer, 10.1, 11.5)
    frames = [(t, e) for t, e in out if isinstance(e, Frame)]
    assert [e.index for _, e in frames] == list(range(30))
    assert all(abs(t - (10.25 + e.t_audio)) < 0.0011 for t, e in frames)
    late = Pacer()  # a line whose first frame took longer than stated: it goes at once, and the rest at their time
    late.put(StreamStarted("npc", "sdk", mode="line", latency_ms=50.0), 10.0)
    for i in range(30):
        late.put(frame("npc", i, captured_s=10.0), 10.1)
    times = {e.index: t for t, e in released(late, 10.1, 11.5) if isinstance(e, Frame)}
    assert times[0] == times[1] == 10.1 and times[2] == pytest.approx(10.05 + 2 / FPS, abs=0.0011)


def test_frames_on_no_real_time_clock_go_at_once():
    """serve --file --fast: the frames carry no captured_ns; holding them to real time would hold the whole file (a
    looped one for good), 430 frames a second more than went out."""
    pacer = Pacer()
    pacer.put(StreamStarted("fast", "file", mode="line", latency_ms=200.0), 0.0)
    for i in range(300):
        pacer.put(frame("fast", i, captured_s=None), 0.01)
    assert len([e for e in pacer.due(0.01) if isinstance(e, Frame)]) == 300 and pacer.held == 0


def test_a_rounds_audio_level_does_not_hold_back_the_next_rounds_frames():
    """At 60 fps a round's level (its t_audio the end of the round's native frames) came later on the clock than the
    next round's first frame, which waited behind it: the first frame of every round was held ~16 ms."""
    pacer = Pacer()
    pacer.put(StreamStarted("mic", "mic", mode="live"), 0.0)
    held = []
    for k in range(60):
        pacer.next_batch()
        now = 0.1 + k / 30
        for i in (2 * k, 2 * k + 1):
            pacer.put(frame("mic", i, fps=60), now)
        pacer.put(AudioLevel("mic", (k + 1) / 30 + 1 / 120, -30.0), now)
        got = released(pacer, now, now + 1 / 30 - 0.001)
        held.append(next(t for t, e in got if isinstance(e, Frame) and e.index == 2 * k) - now)
    assert max(held) == 0.0


def test_a_late_frame_goes_at_once_and_the_next_ones_keep_their_time():
    pacer = Pacer()
    pacer.put(frame("mic", 0), 0.0)
    assert [e.index for e in pacer.due(0.0)] == [0]
    pacer.next_batch()
    pacer.put(frame("mic", 1), 0.0333 + 0.2)  # a 200 ms stall
    assert [e.index for e in pacer.due(0.2333)] == [1]
    pacer.next_batch()
    pacer.put(frame("mic", 2), 0.2334)  # the engine catches up: frames 2 to 9 come together, 2 to 6 late
    pacer.put(frame("mic", 3), 0.2334)
    pacer.put(frame("mic", 9), 0.2335)  # early: held to 0.3
    assert [e.index for e in pacer.due(0.2334)] == [2, 3]
    assert pacer.due(0.29) == [] and pacer.next_due() == pytest.approx(0.3)
    assert [e.index for e in pacer.due(0.3)] == [9]


def test_a_live_streams_frames_go_as_they_come_and_a_hops_burst_at_its_frames_times():
    """Low-latency: a frame a round, with jitter: none is held. Quality: a hop's 15 frames come together every 0.5 s
    (late by some jitter): the first of each goes at once, the rest at their times."""
    rng = np.random.default_rng(0)
    pacer = Pacer()
    held = []
    for i in range(300):
        pacer.next_batch()
        now = 0.1 + i / FPS + rng.uniform(0, 0.02)
        pacer.put(frame("mic", i), now)
        held += [t - now for t, _ in released(pacer, now, now)]
    assert len(held) == 300 and max(held) == 0.0
    pacer = Pacer()
    pacer.put(StreamStarted("npc", "sdk", mode="live"), 0.0)
    out = []
    for hop in range(10):
        pacer.next_batch()
        now = 0.66 + hop * 0.5 + rng.uniform(0, 0.03)
        for k in range(15):
            pacer.put(frame("npc", hop * 15 + k), now)
        out += released(pacer, now, now + 0.499)
    times = {e.index: t for t, e in out if isinstance(e, Frame)}
    assert len(times) == 150
    gaps = np.diff([times[i] for i in range(150)])
    assert gaps.max() < 2 / FPS + 0.002 and np.median(gaps) == pytest.approx(1 / FPS, abs=0.0011)


def test_a_live_stream_whose_first_frame_was_late_is_not_delayed_for_good():
    """Its first frames came 0.3 s late (a warm-up stall), then the engine ran in real time: the frames go as they come
    from the first batch that came on time (and what was held of the late ones with it: the app shows the newest)."""
    pacer = Pacer()
    pacer.put(StreamStarted("mic", "mic", mode="live"), 0.0)
    pacer.next_batch()
    for i in range(10):  # frames 0-9 come together at 0.3
        pacer.put(frame("mic", i), 0.3)
    assert [e.index for e in pacer.due(0.3) if isinstance(e, Frame)] == [0]
    held = {}
    for i in range(10, 60):
        pacer.next_batch()
        now = i / FPS
        pacer.put(frame("mic", i), now)
        held |= {e.index: t - now for t, e in released(pacer, now, now + 0.31)}
    assert sorted(held) == list(range(1, 60)) and max(held.values()) == 0.0


def test_a_line_is_never_moved_ahead_of_its_time():
    """A long line computed at 12x real time: all its frames come early, by design; none may go before its time."""
    pacer = Pacer()
    pacer.put(StreamStarted("npc", "sdk", mode="line"), 0.0)
    out = []
    for i in range(900):  # 30 s of line over 2.5 s, a window of frames each round
        now = i / (12 * FPS)
        if i % 30 == 0:
            pacer.next_batch()
        pacer.put(frame("npc", i), now)
        out += [(now, e) for e in pacer.due(now)]
    out += released(pacer, 2.5, 30.1, step=0.01)
    assert len(out) == 901
    assert all(t >= e.t_audio - 1e-9 for t, e in out if isinstance(e, Frame))


def test_streams_are_paced_apart_and_events_of_no_stream_go_at_once():
    pacer = Pacer()
    pacer.put(frame("a", 0), 0.0)
    pacer.put(frame("a", 30), 0.0)  # held to 1.0
    assert [e.index for e in pacer.due(0.0)] == [0]
    pacer.put(frame("b", 0), 0.5)
    pacer.put(Hello("x"), 0.5)
    pacer.put(AudioLevel("a", 0.9, -20.0), 0.5)  # behind a's held frame, due at 0.9, so goes with it at 1.0
    got = pacer.due(0.5)
    assert [(type(e).__name__, getattr(e, "stream", None)) for e in got] == [("Hello", None), ("Frame", "b")]
    assert [type(e).__name__ for e in pacer.due(1.0)] == ["Frame", "AudioLevel"]


def held_line(reason: str) -> Pacer:
    """A pacer holding a 3 s line that came whole at 0 and ended (``reason``); its start and first frame went."""
    pacer = Pacer()
    pacer.put(StreamStarted("npc", "sdk", mode="line"), 0.0)
    for i in range(90):
        pacer.put(frame("npc", i, last=i == 89), 0.0)
    pacer.put(StreamEnded("npc", "sdk", reason, 90), 0.0)
    assert len(pacer.due(0.0)) == 2
    return pacer


def test_a_stream_opened_again_under_its_id_cuts_the_old_ones_held_frames_to_its_last():
    pacer = held_line("ended")
    pacer.put(StreamStarted("npc", "sdk", mode="line"), 0.5)
    pacer.put(frame("npc", 0), 0.5)
    got = pacer.due(0.5)
    assert [(type(e).__name__, getattr(e, "index", None)) for e in got] == [
        ("Frame", 89), ("StreamEnded", None), ("StreamStarted", None), ("Frame", 0)]


def test_a_stopping_runtime_drains_each_stream_to_its_last_frame_and_its_end():
    pacer = held_line("shutdown")
    got = pacer.drain()
    assert [(type(e).__name__, getattr(e, "index", None)) for e in got] == [("Frame", 89), ("StreamEnded", None)]
    assert pacer.held == 0 and pacer.next_due() is None


@pytest.mark.timeout(120)
def test_a_line_pushed_whole_reaches_vmc_at_its_own_pace(serve_engine, speech_16k):
    """A TTS line pushed at once through the SDK, the avatar in a VMC app: the runtime computes it in a fraction of
    its length; before pacing its 1.5 s of bundles reached the app within ~0.1 s of the push."""
    import ksdiff_sdk
    from ksdiff_runtime.cli.serve import build_outputs
    from ksdiff_runtime.server.config import ServeConfig
    from ksdiff_runtime.server.runtime import Runtime

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    arrived: list[float] = []

    def receive() -> None:  # every bundle's arrival, until none comes for 5 s
        rx.settimeout(5.0)
        with contextlib.suppress(TimeoutError, OSError):
            while True:
                rx.recv(65536)
                arrived.append(time.monotonic())

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    outputs = build_outputs(ServeConfig(vmc=f"127.0.0.1:{rx.getsockname()[1]}"))
    try:
        with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", outputs=outputs,
                     admission=False) as rt, ksdiff_sdk.Client(rt.pub_endpoint, rt.router_endpoint) as client:
            handle = client.open_stream(mode="line", sample_rate=16000)
            pushed = time.monotonic()
            handle.push(speech_16k)
            frames = handle.end(timeout=60.0)
            receiver.join(timeout=60.0)
    finally:
        rx.close()
    duration = len(speech_16k) / 16000
    assert frames is not None and len(arrived) == frames and handle.latency_ms is not None
    # in sync with audio a game starts latency_ms after its push (SPEC 4.6), not as soon as it was computed
    assert arrived[0] >= pushed + handle.latency_ms / 1000.0
    # a bundle can only be late, never early: the spread is at least the line's frames' time
    assert arrived[-1] - arrived[0] >= (frames - 1) / FPS - 0.05 > 0.8 * duration


class HeldOutput:
    """A paced output that takes everything (what it got is not the point here)."""

    name = "held"
    paced = True

    def send(self, event: object) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.timeout(120)
def test_after_the_io_thread_failed_the_runtime_is_idle_though_frames_were_held(serve_engine, speech_16k, monkeypatch):
    """The io thread sends what the pacer holds; once it is gone nothing will, and wait_until_idle must not wait for it
    (it waited for good)."""
    import ksdiff_sdk
    from ksdiff_runtime.server.runtime import Runtime

    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", outputs=[HeldOutput()],
                 admission=False) as rt, ksdiff_sdk.Client(rt.pub_endpoint, rt.router_endpoint) as client:
        handle = client.open_stream(mode="line", sample_rate=16000)
        handle.push(np.tile(speech_16k, 4))
        handle.end(timeout=60.0)  # every frame made: the line's last seconds are still held for their time
        assert rt._pacer.held > 0

        def broken() -> None:
            raise RuntimeError("the publisher broke")

        monkeypatch.setattr(rt, "_publish_outbox", broken)
        rt._wake()
        assert rt._io is not None
        rt._io.join(30.0)
        assert rt.failure == "the io thread failed: RuntimeError: the publisher broke"
        assert rt.wait_until_idle(timeout=0)


class RecordingOutput:
    """A paced output that records each frame it is sent, and when."""

    name = "recording"
    paced = True

    def __init__(self) -> None:
        self.frames: list[tuple[float, Frame]] = []
        self.changed = threading.Condition()

    def send(self, event: object) -> None:
        if isinstance(event, Frame):
            with self.changed:
                self.frames.append((time.monotonic(), event))
                self.changed.notify_all()

    def close(self) -> None:
        pass


@pytest.mark.timeout(120)
def test_a_stream_cut_by_the_runtimes_stop_eases_to_rest_in_the_paced_outputs(serve_engine, speech_wav):
    """Stopping mid-speech makes each stream's ease to rest (its last 150 ms) at once; the pacer held those frames for
    their times and the stop dropped all but the last: a VMC avatar snapped from an open mouth to neutral."""
    from ksdiff_runtime.engine.controls import ease_frames
    from ksdiff_runtime.server.runtime import Runtime
    from ksdiff_runtime.sources import FileSource

    out = RecordingOutput()
    rt = Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", outputs=[out], admission=False)
    rt.start()
    try:
        rt.add_source(FileSource(speech_wav, loop=True, stream_id="voice"))
        with out.changed:
            assert out.changed.wait_for(lambda: len(out.frames) >= 20, timeout=60.0)
    finally:
        stopping = time.monotonic()
        rt.stop()
    after = [f for t, f in out.frames if t >= stopping]
    assert after and after[-1].last
    assert len(after) >= ease_frames(FPS)
    indexes = [f.index for f in after]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))  # no frame of the ease left out
