"""`python -m benchmarks.conditioner_step` end to end: the shipped stream conditioner timed beside another export."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import conditioner_step
from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT, STREAM_CONDITIONER_FILE


def test_the_conditioner_step_benchmark_times_both_graphs_and_compares_them(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    other = tmp_path / "other.onnx"
    other.write_bytes((SHIPPED_EXPORT / STREAM_CONDITIONER_FILE).read_bytes())
    result = conditioner_step.main(["--graph", str(other), "--batches", "1", "2", "--calls", "3", "--rounds", "2",
                                    "--out", str(out)])
    assert json.loads(out.read_text()) == result
    names = list(result["median_ms_by_round"])
    assert names == [f"{p}, B={b}" for p in conditioner_step.PRESETS for b in (1, 2)]
    for by_graph in result["median_ms_by_round"].values():
        assert set(by_graph) == {"shipped", "other"}
        assert all(len(v) == 2 and min(v) > 0 for v in by_graph.values())
    # the same graph: the same outputs
    assert set(result["outputs_max_abs_diff"]) == set(names)
    assert max(result["outputs_max_abs_diff"].values()) == 0.0
