"""LineSync's playback start on a clock the test drives (the SDK against a real runtime:
tests/test_sdk_e2e.py): it waits exactly until the line's first sample is due at the speaker."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ksdiff_sdk import Frame, StreamLost, schema
from ksdiff_sdk import sync as sync_module
from ksdiff_sdk.sync import DEFAULT_MARGIN_MS, LineSync


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def test_playback_starts_when_the_first_sample_is_due_minus_the_output_latency(monkeypatch) -> None:
    clock = Clock(100.0)
    monkeypatch.setattr(sync_module.time, "sleep", clock.sleep)
    handle = SimpleNamespace(latency_ms=180.0, started_at=None, lost=None)
    sync = LineSync(handle, output_latency_s=0.030, clock=clock)
    with pytest.raises(RuntimeError, match="push the line's first audio"):
        sync.start_playback(lambda: None)
    handle.started_at = 100.0  # the first push
    assert sync.play_at == pytest.approx(100.0 + (180.0 + DEFAULT_MARGIN_MS) / 1000)
    clock.t = 100.05  # the game did other work after the push
    played: list[float] = []
    at = sync.start_playback(lambda: played.append(clock.t))
    assert clock.slept == [pytest.approx(0.200 - 0.030 - 0.05)] and played == [at]  # one wait, exactly
    assert at == pytest.approx(sync.play_at - 0.030)


def test_playback_already_due_starts_at_once_and_a_far_one_is_refused(monkeypatch) -> None:
    clock = Clock(10.0)
    monkeypatch.setattr(sync_module.time, "sleep", clock.sleep)
    handle = SimpleNamespace(latency_ms=None, started_at=10.0, lost=None)  # a runtime that states no latency
    sync = LineSync(handle, clock=clock)
    clock.t = 11.0  # past play_at (the fallback latency, 0.27 s): no wait
    assert sync.start_playback(lambda: None) == 11.0 and clock.slept == []
    handle.started_at = 20.0
    with pytest.raises(TimeoutError, match="beyond the timeout"):
        sync.start_playback(lambda: None, timeout=0.1)


def frame(index: int, jaw: float, last: bool = False) -> Frame:
    bs = np.zeros(schema.NUM_BLENDSHAPES, np.float32)
    bs[schema.BLENDSHAPE_INDEX["jawOpen"]] = jaw
    return Frame("line", index, index, 30, index / 30, bs, np.zeros(3, np.float32), np.zeros(4, np.float32), None, 0,
                 1.0, 1.0, last)


class Handle(SimpleNamespace):
    """A StreamHandle's side LineSync reads, with its frames given; not ended unless a test says so."""

    end_reason: str | None = None
    ended: bool = False

    def take_frames(self) -> list[Frame]:
        frames, self.frames = self.frames, []
        return frames


def test_playback_started_late_moves_the_lines_clock_with_it(monkeypatch) -> None:
    """A line longer than max_ahead_s makes push() wait for real time (10 s for 30 s of audio): playback starts
    long after play_at. The poses follow the audio as it plays, not the clock it was due on (they ran 10 s
    ahead of the speaker)."""
    clock = Clock(100.0)
    monkeypatch.setattr(sync_module.time, "sleep", clock.sleep)
    handle = Handle(latency_ms=180.0, started_at=100.0, lost=None, frames=[frame(i, i / 100) for i in range(90)])
    sync = LineSync(handle, output_latency_s=0.030, clock=clock)
    clock.t = 110.0  # push() returned 10 s after the first audio went
    assert sync.pose() is not None  # the game's render loop took the frames that came meanwhile
    sync.start_playback(lambda: None)
    assert clock.slept == [] and sync.play_at == pytest.approx(110.030)
    clock.t = 110.030 + 0.5  # half a second of the line has played
    assert sync.pose().t_audio == pytest.approx(0.5)
    assert sync.late == 0  # every frame was there before its instant, on the clock the line plays on


def test_a_lost_stream_ends_the_render_loop_once_the_frames_that_came_are_played(monkeypatch) -> None:
    """The README's loop (`while not pose.ended`) ran for good when the runtime died mid-line: no `last` frame
    would come. pose() raises the stream's StreamLost once the frames that arrived are played."""
    clock = Clock(100.0)
    monkeypatch.setattr(sync_module.time, "sleep", clock.sleep)
    handle = Handle(latency_ms=180.0, started_at=100.0, lost=None, frames=[frame(i, 0.5) for i in range(60)])
    sync = LineSync(handle, clock=clock)
    sync.start_playback(lambda: None)
    lost = StreamLost("line", "restart", "the runtime restarted and lost stream 'line'")
    handle.lost = lost
    clock.t = sync.play_at + 1.0  # frame 30 of the 60 that came: still shown
    assert sync.pose().t_audio == pytest.approx(1.0)
    clock.t = sync.play_at + 2.5  # past them
    with pytest.raises(StreamLost):
        sync.pose()
