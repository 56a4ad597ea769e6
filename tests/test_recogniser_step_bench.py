"""`python -m benchmarks.recogniser_step` end to end: the shipped step graph timed beside another export of it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import recogniser_step
from ksdiff_runtime.features.streaming_recogniser_onnx import STEP_GRAPH


def test_the_recogniser_step_benchmark_times_both_graphs_and_compares_them(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    other = tmp_path / "other.onnx"
    other.write_bytes(STEP_GRAPH.read_bytes())
    result = recogniser_step.main(["--graph", str(other), "--batches", "1", "2", "--lookaheads", "0",
                                   "--calls", "3", "--whole-calls", "1", "--rounds", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    names = list(result["median_ms_by_round"])
    assert names == ["live, lookahead 0, B=1", "live, lookahead 0, B=2"] + [
        f"whole clip {s} s" for s in recogniser_step.WHOLE_S]
    for by_graph in result["median_ms_by_round"].values():
        assert set(by_graph) == {"shipped", "other"}
        assert all(len(v) == 2 and min(v) > 0 for v in by_graph.values())
    # the same graph: the same log-probabilities
    assert set(result["log_probs_max_abs_diff"]) == set(names)
    assert max(result["log_probs_max_abs_diff"].values()) == 0.0
