"""`python -m benchmarks.busy_recovery` end to end: an open_stream and a set_controls the runtime dropped unread are
carried out (each round: two busies, three requests sent again)."""

from __future__ import annotations

import pytest

from benchmarks import busy_recovery


@pytest.mark.slow
def test_the_busy_recovery_benchmark_times_requests_dropped_unread_and_carried_out() -> None:
    # a call fails after 10 s: before the resend, both waited for their timeout
    result = busy_recovery.main(["--rounds", "2", "--timeout", "10"])
    assert result["busy"] == 4
    assert result["resent"] == 6  # each round: the open_stream, the hello before it, the set_controls
    assert len(result["open_stream_s"]) == len(result["set_controls_s"]) == 2
