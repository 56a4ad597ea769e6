"""LineSync's playback start on a clock the test drives (the SDK against a real runtime:
tests/test_sdk_e2e.py): it waits exactly until the line's first sample is due at the speaker."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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
    handle = SimpleNamespace(latency_ms=180.0, started_at=None)
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
    handle = SimpleNamespace(latency_ms=None, started_at=10.0)  # a runtime that states no latency
    sync = LineSync(handle, clock=clock)
    clock.t = 11.0  # past play_at (the fallback latency, 0.27 s): no wait
    assert sync.start_playback(lambda: None) == 11.0 and clock.slept == []
    handle.started_at = 20.0
    with pytest.raises(TimeoutError, match="beyond the timeout"):
        sync.start_playback(lambda: None, timeout=0.1)
