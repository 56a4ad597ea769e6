"""`python -m benchmarks.gpu_check`: the GPU figures of issue 14 in one short run (`make gpu-check`).

Per batch of B live streams (1 to 512), one engine tick of the low-latency preset on the device:

    stream recogniser  the streaming recogniser live streams run (StreamStep, features/streaming_recogniser.py,
                with the shipped distilled weights): a round's two one-frame chunks of B streams, state carried
    recogniser  the windowed recogniser (hama's, our PyTorch port, features/recogniser.py) over B streams' hop
                segments in one batched call, each the audio a live hop's feature group reads: the
                schedule before the streaming recogniser, for comparison
    model       ``sample_windows`` on B hop windows as the engine runs live hops (the stream
                conditioner where the backend has it), per backend: torch-cuda, torch-cuda with CUDA
                graphs, onnxruntime-cuda (recorded as skipped where it cannot load)
    tick        stream recogniser + model (the fastest model backend): one tick's device work

p50/p99 in ms; "streams" is the largest measured B whose tick p99 fits in one hop (33.3 ms), the
issue's targets are >= 512 streams and a tick <= 10 ms at 256. The part of the front-end that
stays on the CPU per stream (log-mel and prosody, and the ONNX Runtime recogniser the runtime runs
today, for comparison) is timed per stream-hop with the CPU bound it sets on this machine's cores.
Then one live stream end to end through ``serve`` on torch-cuda (the bench's latency section).

Writes bench-gpu.json and bench-gpu.png. ``--device cpu`` runs the same sweep on the CPU, with small
batches: how it is tested on a machine with no GPU. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

from . import bench

ROOT = Path(__file__).resolve().parent.parent
PRESET = "low-latency"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL_BACKENDS = ("torch-cuda", "torch-cuda+graphs", "onnxruntime-cuda")
TARGET_STREAMS = 512
TARGET_TICK_MS_AT_256 = 10.0


@functools.lru_cache(maxsize=1)
def segment_samples() -> int:
    """Samples of audio one live feature group of the preset reads (left context + the group + lookahead)."""
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.features.frontend import make_front_end
    from ksdiff_runtime.model.checkpoint import load_model

    preset = get_preset(PRESET)
    fe = make_front_end(preset.front_end_config(load_model(DEFAULT_CHECKPOINT).cfg.front_end))
    f0 = 30  # a group in mid-stream: full left context
    s0, s1 = fe.range_samples(f0, f0 + preset.feature_block_frames)
    return s1 - s0


def hop_segments(audio: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """[B, segment_samples()] float32: B such pieces of speech from random places."""
    n = segment_samples()
    starts = rng.integers(0, audio.size - n, size=batch)
    return np.stack([audio[s : s + n] for s in starts]).astype(np.float32)


def time_device(fn, s: bench.Settings, device: str) -> tuple[list[float], float]:
    """bench.time_calls with the device synchronised inside each timed call."""
    import torch

    def synced() -> None:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    return bench.time_calls(synced, s)


def sweep_recogniser(audio: np.ndarray, batches: list[int], device: str, s: bench.Settings) -> dict[str, Any]:
    import torch

    from ksdiff_runtime.features.recogniser import Recogniser

    model = Recogniser.from_hama().to(device).eval()
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for b in batches:
        segs = hop_segments(audio, b, rng)
        n = segs.shape[1]
        wave = torch.from_numpy(segs).to(device)
        lengths = torch.full((b,), n, dtype=torch.long, device=device)

        @torch.inference_mode()
        def call(wave=wave, lengths=lengths, model=model) -> None:
            model(wave, lengths)

        ms, _ = time_device(call, s, device)
        out[str(b)] = bench.pcts(ms) | {"samples_per_stream": n}
        print(f"recogniser B={b}: p50 {out[str(b)]['p50']:.3f} ms", flush=True)
    return out


def sweep_stream_recogniser(audio: np.ndarray, batches: list[int], device: str, s: bench.Settings) -> dict[str, Any]:
    """The streaming recogniser's work in one round of B live streams: at 30 fps a hop brings 1-2 new 20 ms
    frames, so two one-frame chunks (lookahead 0, as the runtime runs it), the second on the first's state."""
    import torch

    from ksdiff_runtime.features.hama_weights import recogniser_weights
    from ksdiff_runtime.features.streaming_frontend import LOOKAHEAD, WEIGHTS
    from ksdiff_runtime.features.streaming_recogniser import (
        CONV_LEFT,
        HEADS,
        WIDTH,
        StreamingRecogniser,
        StreamStep,
        step_audio_samples,
    )
    from ksdiff_runtime.features.streaming_recogniser_onnx import distilled_weights

    model = StreamingRecogniser(lookahead=LOOKAHEAD)
    hama = recogniser_weights()
    model.load_state_dict({name: torch.from_numpy(a) for name, a in (hama | distilled_weights(WEIGHTS, hama)).items()})
    step = StreamStep(model).to(device).eval()
    K, n_blocks, W = LOOKAHEAD + 1, len(model.blocks), model.left_frames
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for b in batches:
        starts = rng.integers(0, audio.size - 2 * step_audio_samples(K), size=b)
        chunks = [torch.from_numpy(np.stack([audio[s0 + 320 * i : s0 + 320 * i + step_audio_samples(K)]
                                             for s0 in starts])).to(device) for i in range(2)]
        masks = torch.ones(b, 2 * K + 1, device=device), torch.ones(b, K, device=device), torch.tensor(K, device=device)
        keys = torch.randn(b, n_blocks, HEADS, W, WIDTH // HEADS, device=device)
        conv = torch.randn(b, n_blocks, CONV_LEFT, WIDTH, device=device)
        valid = torch.ones(b, W, device=device)

        @torch.inference_mode()
        def call(chunks=chunks, masks=masks, keys=keys, conv=conv, valid=valid) -> None:
            st = (keys, keys, conv, valid)
            for chunk in chunks:
                st = step(chunk, *masks, *st)[1:]

        ms, _ = time_device(call, s, device)
        out[str(b)] = bench.pcts(ms)
        print(f"stream recogniser B={b}: p50 {out[str(b)]['p50']:.3f} ms", flush=True)
    return out


def sweep_model(label: str, batches: list[int], s: bench.Settings, speech: bench.Speech, device: str) -> dict[str, Any]:
    from ksdiff_runtime.backends import load_backend
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.engine.sampling import sample_windows

    if device == "cpu":  # the CPU stand-in for a test: the same sweep on torch-cpu
        backend = load_backend("torch-cpu", DEFAULT_CHECKPOINT)
    else:
        backend = bench.load_variant(label, DEFAULT_CHECKPOINT)
    preset = get_preset(PRESET)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for b in batches:
        # live hops as the engine runs them: the stream conditioner where the backend has it
        wb = bench.window_batch(backend.constants, preset, speech, b, rng, hasattr(backend, "condition_stream"))
        ms, _ = time_device(functools.partial(sample_windows, backend, wb, preset.steps), s, device)
        out[str(b)] = bench.pcts(ms)
        print(f"{label} B={b}: p50 {out[str(b)]['p50']:.3f} ms", flush=True)
    del backend
    gc.collect()
    return out


def cpu_side(speech: bench.Speech, s: bench.Settings) -> dict[str, Any]:
    """What stays on the CPU per stream-hop: the bench's front-end cost (ONNX Runtime recogniser + log-mel +
    prosody) and the same without the recogniser (what is left once the recogniser runs batched on the GPU)."""
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.features.frontend import make_front_end
    from ksdiff_runtime.model.checkpoint import load_model

    cfg = load_model(DEFAULT_CHECKPOINT).cfg
    preset = get_preset(PRESET)
    today = bench.bench_front_end(cfg, preset, speech, s)["per_stream_hop_ms"]["p50"]
    fe = make_front_end(preset.front_end_config(cfg.front_end))
    segs = hop_segments(speech.audio, 32, np.random.default_rng(1))
    groups = preset.hop_frames / preset.feature_block_frames
    for seg in segs[:2]:  # warm-up
        fe.log_probs(seg)
    t0 = time.perf_counter()
    for seg in segs:
        fe.log_probs(seg)
    per_group_recogniser_ms = 1e3 * (time.perf_counter() - t0) / len(segs)
    without = max(0.0, today - groups * per_group_recogniser_ms)
    hop_ms = bench.preset_hop_ms(preset)
    cores = bench.cpu_cores()
    return {
        "front_end_per_stream_hop_ms": today,
        "recogniser_per_stream_hop_ms": round(groups * per_group_recogniser_ms, 3),
        "rest_per_stream_hop_ms": round(without, 3),
        "cpu_cores": cores,
        "cpu_bound_streams_today": math.floor(cores * hop_ms / today),
        "cpu_bound_streams_recogniser_on_device": math.floor(cores * hop_ms / without) if without else None,
    }


def summarise(doc: dict[str, Any]) -> dict[str, Any]:
    hop_ms = doc["hop_ms"]
    models = {k: v for k, v in doc["model"].items() if v}
    ticks: dict[str, Any] = {}
    for b in doc["batches"]:
        key = str(b)
        measured = [(m[key]["p99"], name) for name, m in models.items() if key in m]
        recogniser = doc["stream_recogniser"]
        if not measured or key not in recogniser:
            continue
        best = min(measured)
        ticks[key] = {"model_backend": best[1], "p50": round(recogniser[key]["p50"] + models[best[1]][key]["p50"], 3),
                      "p99": round(recogniser[key]["p99"] + best[0], 3)}
    held = [int(b) for b, t in ticks.items() if t["p99"] < hop_ms]
    streams = max(held) if held else 0
    at_256 = ticks.get("256", {}).get("p99")
    return {
        "ticks": ticks,
        "streams_in_real_time": streams,
        "at_largest_measured_batch": bool(ticks) and streams == max(int(b) for b in ticks),
        "target_streams": TARGET_STREAMS, "streams_met": streams >= TARGET_STREAMS,
        "tick_p99_ms_at_256": at_256, "target_tick_ms_at_256": TARGET_TICK_MS_AT_256,
        "tick_met": at_256 is not None and at_256 <= TARGET_TICK_MS_AT_256,
    }


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    series = {"stream recogniser": doc["stream_recogniser"], "windowed recogniser": doc["recogniser"],
              **{f"model: {k}": v for k, v in doc["model"].items() if v},
              "tick (recogniser + fastest model)": doc["summary"]["ticks"]}
    for name, points in series.items():
        b = sorted(int(k) for k in points)
        ax.plot(b, [points[str(k)]["p99"] for k in b], marker="o", label=name,
                lw=2.5 if name.startswith("tick") else 1.2)
    ax.axhline(doc["hop_ms"], color="k", ls="--", lw=0.8, label=f"one hop ({doc['hop_ms']:.1f} ms)")
    ax.axhline(TARGET_TICK_MS_AT_256, color="C3", ls=":", lw=0.8, label=f"target at 256: {TARGET_TICK_MS_AT_256:g} ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("live streams in one tick (batch)")
    ax.set_ylabel("p99 ms per tick")
    gpu = doc["device_info"].get("gpu") or {}
    ax.set_title(f"One low-latency tick on {gpu.get('name', doc['device'])}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (the check) or cpu (the same sweep with small batches, for tests)")
    p.add_argument("--max-batch", type=int, default=max(BATCHES), help="largest batch of the sweep")
    p.add_argument("--latency-seconds", type=float, default=20.0,
                   help="the end-to-end run on torch-cuda (0: skip it)")
    p.add_argument("--quick", action="store_true", help="fewer timed calls per point")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "bench-gpu.json", help="results (JSON)")
    p.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "bench-gpu.png", help="plot (PNG)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not bench.cuda_available():
        raise SystemExit("error: no CUDA device here (torch.cuda.is_available() is False); --device cpu runs the "
                         "sweep on the CPU")
    s = bench.Settings.make(args.quick, args.latency_seconds or None)
    batches = [b for b in BATCHES if b <= args.max_batch]
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.model.checkpoint import load_model

    speech = bench.load_speech(load_model(DEFAULT_CHECKPOINT).cfg)
    doc: dict[str, Any] = {"device": args.device, "device_info": bench.device_info(), "preset": PRESET,
                           "hop_ms": round(bench.preset_hop_ms(get_preset(PRESET)), 3), "batches": batches,
                           "model": {}, "skipped": {}}
    doc["stream_recogniser"] = sweep_stream_recogniser(speech.audio, batches, args.device, s)
    doc["recogniser"] = sweep_recogniser(speech.audio, batches, args.device, s)
    for label in (MODEL_BACKENDS if args.device == "cuda" else ("torch-cpu",)):
        try:
            doc["model"][label] = sweep_model(label, batches, s, speech, args.device)
        except Exception as exc:  # a backend that cannot load here is recorded, not fatal
            doc["skipped"][label] = f"{type(exc).__name__}: {exc}"
            print(f"{label}: skipped: {exc}", flush=True)
    doc["cpu_side"] = cpu_side(speech, s)
    doc["summary"] = summarise(doc)
    if args.device == "cuda" and args.latency_seconds > 0:
        doc["latency"] = bench.bench_latency("torch-cuda", DEFAULT_CHECKPOINT, [PRESET], s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, args.plot)
    for b, t in doc["summary"]["ticks"].items():
        r = doc["stream_recogniser"][b]
        print(f"B={b:>4}: stream recogniser p99 {r['p99']:8.3f} ms, tick p99 {t['p99']:8.3f} ms ({t['model_backend']})")
    print(f"summary: {json.dumps({k: v for k, v in doc['summary'].items() if k != 'ticks'})}")
    print(f"cpu side: {json.dumps(doc['cpu_side'])}")
    if "latency" in doc:
        print(f"latency: {json.dumps(doc['latency'][PRESET].get('latency_ms'))}")
    print(f"-> {args.out}, {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
