"""`python -m benchmarks.restart_gap` end to end: `serve --restart` killed as libzmq's abort kills it, and the client's
first frame of the runtime started again timed."""

from __future__ import annotations

import pytest

from benchmarks import restart_gap

pytestmark = pytest.mark.timeout(400)


@pytest.mark.slow
def test_the_restart_gap_benchmark_times_a_killed_runtime_serving_again() -> None:
    result = restart_gap.main(["--rounds", "1"])
    assert len(result["serving_s"]) == len(result["first_frame_s"]) == 1
    # frames of the new runtime come after it serves again (the new child's start-up, seconds)
    assert 0.0 < result["serving_s"][0] <= result["first_frame_s"][0] < restart_gap.START_TIMEOUT_S
    assert result["wait_s"] == [0.5]  # the supervisor's first wait (supervise.FIRST_DELAY_S), part of the gap
    assert 1.0 < result["supervisor_rss_mb"] < 60.0  # the supervisor, exec'd light: tens of MB, not serve's hundreds


@pytest.mark.timeout(90)
def test_a_serve_that_cannot_start_fails_the_benchmark_at_once_with_its_log() -> None:
    """A start-up error (here a backend that does not exist) ends `serve --restart` at once: the benchmark must say
    so with serve's own words, not wait out its START_TIMEOUT_S (minutes) and then raise a bare queue.Empty."""
    with pytest.raises(RuntimeError, match="no-such-backend"):
        restart_gap.main(["--rounds", "1", "--backend", "no-such-backend"])
