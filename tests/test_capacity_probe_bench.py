"""`python -m benchmarks.capacity_probe` end to end: the shipped model warmed up as `serve` does, probed once and
twice per warm-up."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import capacity_probe


def test_the_capacity_probe_benchmark_reads_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    result = capacity_probe.main(["--warm-ups", "2", "--repeats", "1", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert list(result["by_probe_repeats"]) == ["1", "2"] and len(result["load_average"]) == 2
    for by in result["by_probe_repeats"].values():
        assert len(by["readings"]) == 2
        for reading in by["readings"]:
            assert reading["stream_cores"] > 0 and reading["fixed_cores"] >= 0 and reading["room_idle"] >= 1
            assert reading["round_ms_per_stream"] > 0 and reading["warm_up_s"] > 0
        s = by["summary"]["stream_cores"]
        assert s["min"] <= s["median"] <= s["max"]
