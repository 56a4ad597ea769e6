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
