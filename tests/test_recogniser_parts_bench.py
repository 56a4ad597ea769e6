"""`python -m benchmarks.recogniser_parts` end to end: paced live rounds, the recogniser's call whole and in parts."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import recogniser_parts
from ksdiff_runtime.features import streaming_recogniser_onnx


def test_the_parts_benchmark_times_rounds_both_ways(tmp_path: Path) -> None:
    out = tmp_path / "parts.json"
    result = recogniser_parts.main(["--streams", "2", "--block", "14", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["min_part_streams"] == streaming_recogniser_onnx.MIN_PART_STREAMS
    (row,) = result["rows"]
    assert row["streams"] == 2 and row["shipped_parts"] == 1  # two streams: whole, as shipped
    for way in ("whole", "parts"):
        assert row[way]["round_p50_ms"] > 0 and 0 < row[way]["recogniser_ms"] < row[way]["round_mean_ms"]
    # the recogniser's call was cut when forced (one call a round whole; one a part, on a machine of 2 cores or more)
    assert row["whole"]["recogniser_calls_per_round"] <= 1.2
    if row["cores"] > 1:
        assert row["parts"]["recogniser_calls_per_round"] >= 1.8
