"""The publish benchmark on a tiny run: every frame reaches every subscriber, the report is complete.

Timing is not asserted (it depends on the machine's load); only structure and delivery."""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.publish import SyntheticEngine, plot, run_publish_bench, summary

STREAMS = 2
FPS = 60
SECONDS = 1.0


def test_synthetic_engine_emits_each_stream_on_schedule_and_ends_it():
    from ksdiff_runtime.inputs.stream import AudioFormat

    engine = SyntheticEngine(frames_per_stream=3, fps=FPS)
    for sid in ("a", "b"):
        engine.sessions.open(sid, "sdk", AudioFormat())
    first = engine.step()  # the first stream starts the clock: its first tick is due at once
    assert [(f.stream, f.index) for f in first.frames] == [("a", 0), ("b", 0)]
    # drive the clock by hand: two more ticks are due here, and both are emitted (late, never skipped)
    result = engine.step(now_ns=time.monotonic_ns() + 2 * engine.period_ns)
    assert [(f.stream, f.index) for f in result.frames] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert [f.last for f in result.frames] == [False] * 2 + [True] * 2
    assert sorted(e.session.id for e in result.ended) == ["a", "b"]
    assert all(f.seq == f.index and f.captured_ns is not None for f in result.frames)
    assert all(f.blendshapes.shape == (52,) and 0 <= f.blendshapes.min() <= f.blendshapes.max() <= 1
               for f in result.frames)
    assert len(engine.sessions) == 0
    assert not engine.step().frames
    assert not engine.has_work()  # nothing open: no tick is due


@pytest.mark.timeout(180)
def test_every_frame_reaches_one_and_two_subscribers(tmp_path):
    # one socket per process, so that two subscribers are two processes; the floor runs too
    doc = run_publish_bench((1, 2), streams=STREAMS, fps=FPS, seconds=SECONDS, sockets_per_process=1)
    expected = STREAMS * round(SECONDS * FPS)
    assert [r["subscribers"] for r in doc["runs"]] == [1, 2]
    for run in doc["runs"]:
        n = run["subscribers"]
        assert run["processes"] == n
        assert run["frames_emitted"] == expected
        assert run["frames_expected_per_subscriber"] == expected
        assert run["frames_received_min"] == expected
        assert run["frames_received_total"] == n * expected
        assert run["drops"] == 0 and run["runtime_drops"] == 0
        assert len(run["per_subscriber"]) == n
        for row in run["per_subscriber"]:
            assert row["received"] == expected and row["drops"] == 0 and row["out_of_order"] == 0
            assert row["stream_ends"] == STREAMS
            assert set(row["latency_ms"]) == {"p50", "p90", "p99", "max"}
        for key in ("latency_ms", "latency_before_decode_ms", "fastest_subscriber_latency_ms",
                    "slowest_subscriber_latency_ms", "runtime_hop_ms", "engine_tick_late_ms"):
            stats = run[key]
            assert all(stats[q] is not None and stats[q] >= 0 for q in ("p50", "p90", "p99", "max")), key
            assert stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"], key
        assert len(run["cdf_ms"]) == 103 and np.all(np.diff(run["cdf_ms"]) >= 0)
        assert isinstance(run["target_met"], bool)
        floor = run["floor"]  # the same frames without the Runtime: delivered in full too
        assert floor["frames_received_min"] == expected and floor["drops"] == 0
        assert floor["latency_ms"]["p50"] is not None and len(floor["cdf_ms"]) == 103
    assert "synthetic engine" in summary(doc)
    plot(doc, tmp_path / "publish.png")
    assert (tmp_path / "publish.png").stat().st_size > 0
