"""`python -m benchmarks.bench`: the sections run and report positive, finite figures (no speed assertions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.bench import main, run_latency


def positive_finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_bench_quick_compute_and_bake(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ~15 s on 2 cores (tiny model; the recogniser and the 16-clip bake dominate), so not marked slow
    # the ONNX export of the tiny checkpoint goes to a throwaway cache, not the user's
    monkeypatch.setenv("KSDIFF_RUNTIME_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    rc = main(["--quick", "--only", "compute,bake", "--batches", "1,2", "--checkpoint", str(tiny_checkpoint),
               "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "bench.json").read_text())
    assert (out / "bench.png").stat().st_size > 0
    assert {"device", "settings", "compute", "bake", "memory"} <= set(doc)
    assert "latency" not in doc
    assert doc["device"]["cpu_cores"] >= 1

    compute = doc["compute"]
    labels = {"torch-cpu", "onnxruntime-cpu", "onnxruntime-cpu+int8"}
    assert set(compute["backends"]) | set(compute["skipped"]) == labels
    assert "torch-cpu" in compute["backends"]  # torch always loads on the CPU
    for entry in compute["backends"].values():
        assert set(entry["presets"]) == {"low-latency", "quality"}
        for points in entry["presets"].values():
            assert set(points) == {"1", "2"}
            for pt in points.values():
                assert positive_finite(pt["p50"]) and positive_finite(pt["p99"]) and pt["p99"] >= pt["p50"]
                assert pt["n"] >= 3
    for fe in compute["front_end"].values():
        assert positive_finite(fe["per_stream_hop_ms"]["p50"]) and positive_finite(fe["per_stream_hop_ms"]["p99"])
    for label in compute["backends"]:
        for cap in compute["capacity"][label].values():
            assert cap["model_bound_streams"] in (0, 1, 2)
            assert isinstance(cap["cpu_bound_streams"], int) and cap["cpu_bound_streams"] >= 0

    bake = doc["bake"]
    for key in ("single", "batch"):
        assert positive_finite(bake[key]["rtf"])
        assert positive_finite(bake[key]["front_end_s_median"]) and positive_finite(bake[key]["model_s_median"])
    assert bake["batch"]["clips"] == 16
    assert isinstance(bake["target"]["single_pass"], bool)
    assert positive_finite(doc["memory"]["peak_rss_mib"])


@pytest.mark.slow
def test_latency_harness_measures_the_real_serve(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The latency section drives the real `ksdiff-runtime serve` (a tiny model: the harness is what is
    tested, not the model's speed) with two real-time file streams and a subscriber in another process."""
    r = run_latency("onnxruntime", tiny_checkpoint, "low-latency", seconds=2.0, discard_s=0.5, show_progress=False,
                    streams=2, out_dir=tmp_path)
    assert r["streams"] == 2 and set(r["per_stream"]) == {"live-0", "live-1"}
    assert r["frames_received"] > 2 * 30
    assert r["latency_ms"]["n"] == len(r["latency_samples_ms"]) > 0
    for q in ("p50", "p95", "p99", "max"):
        assert positive_finite(r["latency_ms"][q])
    assert all(x > 0 for x in r["latency_samples_ms"])
    assert positive_finite(r["budget"]["wire_ms"]["p50"])
    assert positive_finite(r["budget"]["compute_per_round_ms"]["p50"])
    assert r["how"].startswith("ksdiff-runtime serve") and r["ready_s"] > 0
    assert isinstance(r["kept_up"], bool)
