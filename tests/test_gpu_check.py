"""`make gpu-check`'s benchmark (benchmarks/gpu_check.py): its sweep runs here on the CPU with small batches
(the CUDA run needs a GPU: on one, `make gpu-check`), and the Makefile target is wired to it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_sweep_runs_on_the_cpu_and_writes_its_report(tmp_path: Path) -> None:
    out, png = tmp_path / "bench-gpu.json", tmp_path / "bench-gpu.png"
    assert gpu_check.main(["--device", "cpu", "--quick", "--max-batch", "2", "--latency-seconds", "0",
                           "--out", str(out), "--plot", str(png)]) == 0
    doc = json.loads(out.read_text())
    assert doc["batches"] == [1, 2] and doc["device"] == "cpu"
    for b in ("1", "2"):
        windowed = doc["recogniser"][b]
        assert 0 < windowed["p50"] <= windowed["p99"] and windowed["samples_per_stream"] == gpu_check.segment_samples()
        rec = doc["stream_recogniser"][b]
        assert 0 < rec["p50"] <= rec["p99"]
        assert doc["model"]["torch-cpu"][b]["p50"] > 0
        tick = doc["summary"]["ticks"][b]
        assert tick["p50"] == pytest.approx(rec["p50"] + doc["model"]["torch-cpu"][b]["p50"], abs=2e-3)
    side = doc["cpu_side"]
    assert 0 < side["rest_per_stream_hop_ms"] < side["front_end_per_stream_hop_ms"]
    assert doc["summary"]["target_streams"] == 512 and doc["summary"]["streams_met"] is False
    assert png.stat().st_size > 10_000


def test_without_a_gpu_the_check_says_so() -> None:
    if gpu_check.bench.cuda_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--out", "/nonexistent/x.json"])


def test_make_gpu_check_runs_the_script() -> None:
    dry = subprocess.run(["make", "-n", "gpu-check", "GPU_OUT=/tmp/x"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert "benchmarks/gpu_check.sh /tmp/x" in dry
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "-m gpu" in script and "benchmarks.gpu_check" in script
