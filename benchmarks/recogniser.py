"""hama's phoneme recogniser: libhama (native, one clip at a time) against the PyTorch port and
the ONNX Runtime recogniser the runtime runs, then the runtime's front-end and bake with each.

    python -m benchmarks.recogniser          # ~3 min on 2 cores; writes benchmarks/recogniser.json

Both run on one CPU thread over cuts of the bundled sample speech (6.8 s): batch 1 is one 4.1 s
cut, batch 8 is eight 4.1 s cuts at different offsets, and "batch 8 ragged" is eight cuts from
6.8 down to 3.4 s, zero-padded to the longest with their lengths (the port computes the padding
too). libhama runs a batch's clips one after another, the port as one batch. Figures are seconds
of compute per second of (unpadded) audio, the median of ``--repeats`` timed runs after a
warm-up, libhama, torch and ONNX Runtime alternating so all meet the same load from other work
(a speedup is the median of the paired ratios). The ports' argmax agreement and max abs
log-probability difference against libhama on the same clips are recorded with them.

The "runtime" section runs benchmarks/bench.py's front-end and bake measurements twice, with
libhama and with the ONNX Runtime recogniser behind ``PosteriorgramFrontEnd`` (all else equal):
the front-end's CPU cost per stream-hop of each preset (one stream, one thread) and the bake of
the sample line and of 16 lines (offline schedule, onnxruntime-cpu model, 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features import recogniser_onnx
from ksdiff_runtime.features.recogniser import LibHamaReference, Recogniser
from ksdiff_runtime.features.recogniser_onnx import OnnxRecogniser
from ksdiff_runtime.motion import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent


def clips_for(batch: int, speech: np.ndarray, ragged: bool) -> list[np.ndarray]:
    """``batch`` cuts of ``speech``: 0.6 of it at spread offsets, or (ragged) centred cuts from the
    whole line down to half of it."""
    if ragged:
        lengths = np.linspace(speech.size, speech.size // 2, batch).astype(int)
        return [speech[(speech.size - n) // 2 : (speech.size - n) // 2 + n] for n in lengths]
    n = int(0.6 * speech.size)
    return [speech[o : o + n] for o in np.linspace(0, speech.size - n, batch).astype(int)]


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def timed(run: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def measure(
    batch: int, ragged: bool, speech: np.ndarray, libhama: LibHamaReference, model: Recogniser,
    onnx_model: OnnxRecogniser, repeats: int,
) -> dict:
    clips = clips_for(batch, speech, ragged)
    audio_s = sum(c.size for c in clips) / SAMPLE_RATE
    waveform = np.zeros((batch, max(c.size for c in clips)), np.float32)
    for i, clip in enumerate(clips):
        waveform[i, : clip.size] = clip
    lengths = np.array([c.size for c in clips])

    def port() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model(torch.from_numpy(waveform), torch.from_numpy(lengths))

    def onnx() -> tuple[np.ndarray, np.ndarray]:
        return onnx_model(waveform, lengths)

    def reference() -> list[np.ndarray]:
        return [libhama.log_probs(c) for c in clips]

    # alternate them, after a warm-up, so all meet the same load from other work
    reference(), port(), onnx()
    times = [(timed(reference), timed(port), timed(onnx)) for _ in range(repeats)]
    row: dict[str, Any] = {"batch": batch, "ragged": ragged, "audio_s": round(audio_s, 3)}
    row["libhama_s_per_audio_s"] = round(statistics.median(t[0] for t in times) / audio_s, 5)
    refs = reference()
    for j, (name, run) in enumerate([("torch", port), ("onnxruntime", onnx)], start=1):
        log_probs, out_lengths = (np.asarray(x) for x in run())
        same, frames, max_diff = 0, 0, 0.0
        for i, ref in enumerate(refs):
            got = log_probs[i, : out_lengths[i]]
            same += int((ref.argmax(1) == got.argmax(1)).sum())
            frames += ref.shape[0]
            max_diff = max(max_diff, float(np.abs(ref - got).max()))
        row[name] = {
            "s_per_audio_s": round(statistics.median(t[j] for t in times) / audio_s, 5),
            "speedup": round(statistics.median(t[0] / t[j] for t in times), 1),  # median of paired ratios
            "argmax_agreement": round(same / frames, 5),
            "max_abs_diff": round(max_diff, 5),
        }
    return row


@contextmanager
def recogniser_behind_front_end(recogniser: object) -> Iterator[None]:
    """Front-ends made inside get ``recogniser`` (libhama or ONNX Runtime); bakes make fresh ones."""
    from ksdiff_runtime.engine import offline

    shared = recogniser_onnx.shared_recogniser
    recogniser_onnx.shared_recogniser = lambda: recogniser  # type: ignore[assignment]
    offline._FRONT_ENDS.clear()
    try:
        yield
    finally:
        recogniser_onnx.shared_recogniser = shared
        offline._FRONT_ENDS.clear()


def measure_runtime(quick: bool) -> dict[str, Any]:
    """bench.py's per-hop front-end cost and bake, with libhama and with ONNX Runtime."""
    from benchmarks.bench import Settings, bench_bake, bench_front_end, load_speech
    from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT, load_export
    from ksdiff_runtime.engine.presets import PRESETS
    from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

    settings = Settings.make(quick, None)
    cfg, _, _ = load_export(SHIPPED_EXPORT)
    out: dict[str, Any] = {}
    for name, recogniser in [("libhama", LibHamaReference()), ("onnxruntime", recogniser_onnx.shared_recogniser())]:
        with recogniser_behind_front_end(recogniser):
            speech = load_speech(cfg)
            hops = {p: bench_front_end(cfg, PRESETS[p], speech, settings)["per_stream_hop_ms"] for p in PRESETS}
            bake = bench_bake("onnxruntime-cpu", DEFAULT_CHECKPOINT, settings)
        out[name] = {"front_end_per_stream_hop_ms": hops, "bake": {k: bake[k] for k in ("single", "batch")}}
        print(f"{name}: front-end ms per stream-hop (p50) "
              + ", ".join(f"{p} {h['p50']:.1f}" for p, h in hops.items())
              + f"; bake {bake['single']['rtf']:.1f}x real time (sample line), {bake['batch']['rtf']:.1f}x (16 lines)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recogniser", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure (median)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "recogniser.json", help="results file")
    p.add_argument("--quick", action="store_true", help="fewer runs in the runtime section (bench.py --quick)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # libhama is single-threaded: compare like with like
    speech, rate = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    assert rate == SAMPLE_RATE, f"{SAMPLE_SPEECH} is {rate} Hz"
    libhama, model, onnx_model = LibHamaReference(), Recogniser.from_hama(), OnnxRecogniser(threads=1)
    rows = []
    for batch, ragged in [(1, False), (8, False), (8, True)]:
        row = measure(batch, ragged, speech, libhama, model, onnx_model, args.repeats)
        rows.append(row)
        print(f"batch {batch}{' ragged' if ragged else ''}: {row['audio_s']:.1f} s audio; s per audio-second: libhama "
              f"{row['libhama_s_per_audio_s']:.4f}, "
              + ", ".join(f"{n} {row[n]['s_per_audio_s']:.4f} ({row[n]['speedup']}x; argmax agreement "
                          f"{row[n]['argmax_agreement']:.4f}, max abs diff {row[n]['max_abs_diff']:.4f})"
                          for n in ("torch", "onnxruntime")))
    runtime = measure_runtime(args.quick)
    doc = {
        "what": "hama phoneme recogniser, seconds of compute per audio-second on 1 CPU thread; then the runtime's "
                "front-end per stream-hop (1 thread) and bake (2 cores) with libhama and with ONNX Runtime",
        "torch": torch.__version__,
        "onnxruntime": ort_version(),
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews both
        "repeats": args.repeats,
        "results": rows,
        "runtime": runtime,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
