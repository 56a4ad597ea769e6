"""`python -m benchmarks.bench`: what the runtime costs here, measured, written to bench.json + bench.png.

Sections (``--only`` picks some):

    compute   one ``sample_windows`` call (the model work of one engine tick) on B stream windows
              of each preset's shape, per backend and batch size, p50/p99; the front-end cost per
              stream-hop (the phoneme recogniser runs per stream, on the CPU); from both, how many
              streams one device serves in real time
    latency   a real-time run per preset: a paced feeder (a simulated sound card, 10 ms blocks),
              the engine on its own thread, every frame published in the wire protocol (msgpack,
              ksdiff_sdk/protocol.py) on a ZeroMQ socket
              and received by a subscriber thread; latency = receive time - capture time
    bake      offline real-time factor of the bake path, one clip and a batch of 16 clips
    memory    peak RSS, RSS per phase, the engine's per-stream state, GPU memory on GPU runs

Benchmarks print what they measured; targets are compared and reported, never asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import logging
import math
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH

log = logging.getLogger(__name__)

SECTIONS = ("compute", "latency", "bake", "memory")
CPU_BACKENDS = ("torch-cpu", "onnxruntime-cpu", "onnxruntime-cpu+int8")
# "torch-cuda+graphs" is torch-cuda loaded with cuda_graphs=True (the denoiser replayed from CUDA graphs);
# "onnxruntime-cpu+int8" runs the export's int8 denoiser, as `serve` does
GPU_BACKENDS = ("torch-cuda", "torch-cuda+graphs", "onnxruntime-cuda", "tensorrt")
CPU_BATCHES = (1, 2, 4, 8, 16, 32)
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_BATCHES = (1, 4)

LATENCY_TARGET_PRESET = "low-latency"
# issue 14's targets on a 2-core CPU (the runtime core's were 150 ms and 20x)
LATENCY_TARGET_P95_MS = 100.0
BAKE_TARGET_RTF = 50.0
BAKE_STEPS = 4
BATCH_CLIPS = 16

LOOP_SILENCE_S = 0.5  # between loops of the sample, so the engine also sees pauses



@dataclass(frozen=True)
class Settings:
    quick: bool = False
    seconds: float = 30.0  # real-time run per preset
    discard_s: float = 1.0  # start-up of the real-time run, not counted
    point_budget_s: float = 2.0  # adaptive iterations: stop after this long per compute point...
    max_iters: int = 200  # ...or this many iterations
    min_iters: int = 5  # but at least this many, so p99 is not a single sample
    warmup_iters: int = 2
    front_end_hops: int = 60  # stream-hops timed per preset
    bake_runs: int = 5
    batch_bake_runs: int = 3
    memory_streams: int = 64
    memory_seconds: float = 5.0

    @classmethod
    def make(cls, quick: bool, seconds: float | None) -> Settings:
        if quick:
            return cls(quick=True, seconds=seconds or 3.0, discard_s=1.0, point_budget_s=0.25, max_iters=20,
                       min_iters=3, warmup_iters=1, front_end_hops=10, bake_runs=1, batch_bake_runs=1,
                       memory_streams=8, memory_seconds=2.0)
        return cls(seconds=seconds or 30.0)


# --- small helpers ---------------------------------------------------------------------------------
def pcts(values_ms: list[float] | np.ndarray, qs: tuple[int, ...] = (50, 99)) -> dict[str, float]:
    """{'p50': .., 'p99': .., 'n': ..} in ms, rounded for the JSON."""
    a = np.asarray(values_ms, dtype=np.float64)
    if a.size == 0:
        return {f"p{q}": None for q in qs} | {"n": 0}  # type: ignore[dict-item]
    return {f"p{q}": round(float(np.percentile(a, q)), 4) for q in qs} | {"n": int(a.size)}


def time_calls(fn: Callable[[], object], s: Settings) -> tuple[list[float], float]:
    """Wall times (ms) of repeated calls (warm-up first, then until the budget or max_iters is reached), and
    the cores they kept busy on average (process CPU time / wall time: 1.0 = single-threaded)."""
    for _ in range(s.warmup_iters):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    cpu0 = time.process_time_ns()
    while len(times) < s.min_iters or (len(times) < s.max_iters and time.perf_counter() - started < s.point_budget_s):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times, round((time.process_time_ns() - cpu0) / 1e6 / sum(times), 2)


def rss_mib() -> float:
    """Current resident set size (Linux /proc; ru_maxrss only gives the peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def device_info() -> dict[str, Any]:
    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpu_cores": cpu_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min
    }
    for module in ("torch", "onnxruntime", "numpy", "zmq", "msgpack"):
        try:
            mod = __import__(module)
            info[f"{module}_version"] = getattr(mod, "__version__", None) or ".".join(map(str, mod.version))
        except ImportError:
            info[f"{module}_version"] = None
    if cuda_available():
        import torch

        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_mib": round(props.total_memory / 2**20),
                       "cuda": torch.version.cuda}
    return info


def cpu_cores() -> int:
    # the cores this process may run on (a container's limit), not the host's count
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def progress(total: float, desc: str, unit: str = "it"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


# --- inputs ------------------------------------------------------------------------------------------
@dataclass
class Speech:
    """The sample speech and its features (offline schedule), to draw realistic windows from."""

    audio: np.ndarray
    feats: np.ndarray  # [T, F]
    prosody: np.ndarray  # [T, 2]

    @property
    def seconds(self) -> float:
        return self.audio.size / motion.SAMPLE_RATE


def load_speech(cfg, front_end=None) -> Speech:
    from ksdiff_runtime.features.frontend import make_front_end
    from ksdiff_runtime.features.prosody import normalized_prosody, prosody
    from ksdiff_runtime.inputs.guards import load_audio

    audio, _ = load_audio(SAMPLE_SPEECH)
    front_end = front_end or make_front_end(cfg.front_end)
    feats = front_end.offline(audio).astype(np.float32)
    return Speech(audio, feats, normalized_prosody(prosody(audio)).astype(np.float32))


def window_batch(constants, preset, speech: Speech, batch: int, rng: np.random.Generator, streamed: bool = False):
    """B windows shaped like the engine's hop windows for ``preset``: real speech features at random
    places, previous motion near the model's mean pose (a stream mid-sentence), fresh noise. ``streamed``:
    as the stream conditioner takes them (a live stream's hop on a backend that has it): the hop's new
    frames and an encoder state (random: its values do not change the cost)."""
    from ksdiff_runtime.engine.sampling import WindowBatch
    from ksdiff_runtime.motion import take_frames

    cfg = constants.cfg
    E, L, C, N = cfg.encoder_context_frames, cfg.lookahead_frames, cfg.motion_context_frames, preset.window_frames
    S = E + N + L
    starts = rng.integers(0, max(1, len(speech.feats) - S), size=batch)
    feats = np.stack([take_frames(speech.feats, int(s), S) for s in starts])
    pros = np.stack([take_frames(speech.prosody, int(s), S) for s in starts])
    prev_expr = np.clip(constants.expr_mean + 0.5 * constants.expr_std * rng.standard_normal((batch, C, cfg.expr_dim)),
                        0.0, 1.0)
    prev_pose = constants.pose_mean + 0.5 * constants.pose_std * rng.standard_normal((batch, C, cfg.pose_dim))
    state, commit = None, 0
    if streamed:
        feats, pros, commit = feats[:, E + L :], pros[:, E + L :], preset.hop_frames
        state = {name: rng.standard_normal((batch, 1, *shape)).astype(np.float32)
                 for name, shape in cfg.stream_state_shapes().items()}
    return WindowBatch(
        feats=feats, prosody=pros, prev_expr=prev_expr.astype(np.float32), prev_pose=prev_pose.astype(np.float32),
        known=np.ones((batch, C), np.float32),
        noise=rng.standard_normal((batch, N, cfg.expr_dim + cfg.pose_dim)).astype(np.float32),
        state=state, commit=commit,
    )


def load_variant(label: str, checkpoint: Path):
    """A backend by its bench label (torch-cuda+graphs = torch-cuda with CUDA graphs; onnxruntime-cpu+int8 = its
    int8 denoiser)."""
    from ksdiff_runtime.backends import load_backend

    name, _, variant = label.partition("+")
    if variant and (name, variant) not in (("torch-cuda", "graphs"), ("onnxruntime-cpu", "int8")):
        raise ValueError(f"unknown backend label {label!r}: +graphs goes with torch-cuda, +int8 with onnxruntime-cpu")
    return load_backend(name, checkpoint, cuda_graphs=variant == "graphs", int8=variant == "int8")


def preset_hop_ms(preset) -> float:
    return 1000.0 * preset.hop_frames / motion.FPS


# --- compute -----------------------------------------------------------------------------------------
def bench_front_end(cfg, preset, speech: Speech, s: Settings) -> dict[str, Any]:
    """Front-end CPU cost of one stream-hop: every feature group whose frames fall in the hop, run as the
    engine runs them (range_features at the preset's lookahead), plus the prosody the engine adds per group."""
    from ksdiff_runtime.engine.stream import prosody_span
    from ksdiff_runtime.features.frontend import make_front_end
    from ksdiff_runtime.features.prosody import normalized_prosody, prosody

    fe = make_front_end(preset.front_end_config(cfg.front_end))
    H, G = preset.hop_frames, preset.feature_block_frames
    audio = speech.audio
    total_frames = motion.num_frames(audio.size)
    # hops whose groups have full left context and whose audio exists (a stream in mid-sentence)
    first_hop = -(-round(fe.config.left_context_ms * motion.FPS / 1000) // H)
    hops = [h for h in range(first_hop, total_frames // H) if fe.range_samples(h * H, (h + 1) * H + G)[1] <= audio.size]
    if not hops:
        raise RuntimeError("the sample speech is too short for a front-end hop at this preset")
    fe_ms: list[float] = []
    pros_ms: list[float] = []

    def one_hop(h: int) -> None:
        f_fe = f_pr = 0
        for f0 in range(-(-h * H // G) * G, (h + 1) * H, G):  # groups starting inside the hop
            t0 = time.perf_counter_ns()
            fe.range_features(audio, f0, f0 + G)
            t1 = time.perf_counter_ns()
            s0, s1 = prosody_span(fe, f0, f0 + G)
            seg = audio[s0:s1]
            normalized_prosody(prosody(seg))
            f_fe += t1 - t0
            f_pr += time.perf_counter_ns() - t1
        fe_ms.append(f_fe / 1e6)
        pros_ms.append(f_pr / 1e6)

    for h in hops[: s.warmup_iters]:
        one_hop(h)
    fe_ms.clear()
    pros_ms.clear()
    cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
    for i in range(s.front_end_hops):
        one_hop(hops[i % len(hops)])
    cores = (time.process_time_ns() - cpu0) / (time.perf_counter_ns() - wall0)
    both = np.asarray(fe_ms) + np.asarray(pros_ms)
    return {
        "groups_per_hop": H / G,
        "feature_lookahead_ms": preset.feature_lookahead_ms,
        "left_context_ms": fe.config.left_context_ms,
        "range_features_ms": pcts(fe_ms),
        "prosody_ms": pcts(pros_ms),
        "per_stream_hop_ms": pcts(both),
        "cores_used": round(cores, 2),  # 1.0: the recogniser runs single-threaded
    }


def bench_compute(checkpoint: Path, presets: list[str], labels: list[str], batches: list[int], s: Settings,
                  ) -> dict[str, Any]:
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.engine.sampling import sample_windows
    from ksdiff_runtime.model.checkpoint import load_model

    cfg = load_model(checkpoint).cfg
    speech = load_speech(cfg)
    out: dict[str, Any] = {"batches": batches, "presets": {}, "backends": {}, "skipped": {}, "front_end": {}}
    for name in presets:
        p = get_preset(name)
        out["presets"][name] = {"hop_frames": p.hop_frames, "hop_ms": round(preset_hop_ms(p), 3),
                                "window_frames": p.window_frames, "steps": p.steps,
                                "feature_lookahead_ms": p.feature_lookahead_ms}
    bar = progress(len(presets) * (1 + len(labels) * len(batches)), "compute", "point")
    for name in presets:
        out["front_end"][name] = bench_front_end(cfg, get_preset(name), speech, s)
        bar.update(1)
    for label in labels:
        gpu_before = gpu_used_mib()
        reset_torch_peak()
        try:
            backend = load_variant(label, checkpoint)
        except Exception as exc:  # a backend that cannot load here is recorded, not fatal
            out["skipped"][label] = f"{type(exc).__name__}: {exc}"
            log.info("bench: %s skipped: %s", label, exc)
            bar.update(len(presets) * len(batches))
            continue
        rng = np.random.default_rng(0)
        # live streams' hops as the engine conditions them (the stream conditioner where the backend has
        # it), and, beside them, window by window (every hop re-encoding the encoder context)
        streams = hasattr(backend, "condition_stream")
        per_preset: dict[str, Any] = {}
        windowed: dict[str, Any] = {}
        try:
            for name in presets:
                p = get_preset(name)
                for streamed, into in ((streams, per_preset), (False, windowed)) if streams else ((False, per_preset),):
                    points = {}
                    for b in batches:
                        wb = window_batch(backend.constants, p, speech, b, rng, streamed)
                        ms, cores = time_calls(functools.partial(sample_windows, backend, wb, p.steps), s)
                        points[str(b)] = pcts(ms) | {"per_stream_p50": round(float(np.percentile(ms, 50)) / b, 4),
                                                     "cores_used": cores}
                        bar.update(1 if streamed or not streams else 0)
                    into[name] = points
        except Exception as exc:  # e.g. a batch past a TensorRT profile: keep what was measured
            out["skipped"][label] = f"failed while measuring: {type(exc).__name__}: {exc}"
            log.warning("bench: %s failed: %s", label, exc)
        entry: dict[str, Any] = {"presets": per_preset, "conditioner": "stream" if streams else "window"}
        if windowed:
            entry["windowed_conditioner"] = windowed
        gpu = gpu_memory_report(label, gpu_before)
        if gpu:
            entry["gpu_memory"] = gpu
        out["backends"][label] = entry
        del backend
        gc.collect()
    bar.close()
    out["capacity"] = capacity(out, presets)
    return out


def capacity(compute: dict[str, Any], presets: list[str]) -> dict[str, Any]:
    """Streams served in real time, per backend and preset (from the measured batches only)."""
    from ksdiff_runtime.engine.presets import get_preset

    cores = cpu_cores()
    result: dict[str, Any] = {
        "formula_model_bound": "largest measured batch B with model compute p99(B) < hop_ms "
                               "(hop_ms = hop_frames / 30 fps)",
        "formula_cpu_bound": "floor(cpu_cores * hop_ms / (front_end_per_stream_hop_p50_ms + model_p50_ms(B) / B)), "
                             "B = the model-bound batch (1 when no batch is real time); front-end = range_features "
                             "+ prosody of the hop's feature groups; all wall-clock times on this machine",
        "formula_engine_thread_bound": "floor(hop_ms / (front_end_per_stream_hop_p50_ms + model_p50_ms(B) / B)): "
                                       "the bound if every stream's front-end ran on the step thread (an engine "
                                       "built with front_end_threads=1, as the latency section's instrumented "
                                       "front-end is); by default the engine runs front-ends on one thread per "
                                       "core, so cpu_bound is the figure that applies",
        "cpu_cores": cores,
    }
    for label, entry in compute["backends"].items():
        result[label] = {}
        for name in presets:
            points = entry["presets"].get(name)
            if not points:
                continue
            hop_ms = preset_hop_ms(get_preset(name))
            ok = [int(b) for b, pt in points.items() if pt["p99"] < hop_ms]
            b_rt = max(ok) if ok else 0
            b_ref = b_rt or min(int(b) for b in points)
            fe = compute["front_end"][name]["per_stream_hop_ms"]["p50"]
            per_stream = fe + points[str(b_ref)]["p50"] / b_ref
            result[label][name] = {
                "model_bound_streams": b_rt,
                "at_largest_measured_batch": b_rt == max(int(b) for b in points),  # the real limit may be higher
                "cpu_bound_streams": math.floor(cores * hop_ms / per_stream),
                "engine_thread_bound_streams": math.floor(hop_ms / per_stream),
                "cpu_ms_per_stream_hop": round(per_stream, 3),
            }
    return result


def gpu_used_mib() -> float | None:
    """Device memory in use (all processes; what ORT / TensorRT allocate shows only here)."""
    if not cuda_available():
        return None
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def reset_torch_peak() -> None:
    if cuda_available():
        import torch

        torch.cuda.reset_peak_memory_stats()


def gpu_memory_report(label: str, used_before: float | None) -> dict[str, float] | None:
    if used_before is None:
        return None
    import torch

    report = {"device_used_delta_mib": round((gpu_used_mib() or 0.0) - used_before, 1)}
    if label.startswith("torch-cuda"):
        report["torch_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return report


# --- end-to-end latency ------------------------------------------------------------------------------
def run_latency(backend_name: str, checkpoint: Path, preset_name: str, seconds: float, discard_s: float = 1.0,
                show_progress: bool = True, streams: int = 1, out_dir: Path = Path("runs/bench")) -> dict[str, Any]:
    """Live streams through the real runtime: ``ksdiff-runtime serve`` in its own process plays the bundled
    speech in real time from files (10 ms blocks, as a sound card delivers them; each stream from another
    place in the speech), and a subscriber in this process receives every frame over ZeroMQ.

    Latency per frame = the runtime's capture-to-publish time (published_ns - captured_ns) and the
    capture-to-receive time (with the transport to another process)."""
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.inputs.guards import load_audio

    from .live import ServeProcess, Subscriber, pcts, stream_figures

    preset = get_preset(preset_name)
    audio, _ = load_audio(SAMPLE_SPEECH)
    loop = looped_speech(audio)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(streams):
        path = out_dir / f"live-{i}.wav"
        sf.write(str(path), np.roll(loop, -i * 4000), motion.SAMPLE_RATE, subtype="FLOAT")
        files.append(path)
    args = ["--backend", backend_name, "--preset", preset_name, "--checkpoint", str(checkpoint), "--loop",
            "--no-admission", *(a for f in files for a in ("--file", str(f)))]
    sub = Subscriber()
    serve = ServeProcess(args, out_dir / f"serve-{preset_name}.log").start(sub)
    try:
        t0 = time.monotonic_ns()
        bar = progress(round(seconds + discard_s), f"latency {preset_name}", "s") if show_progress else None
        for _ in range(round(seconds + discard_s)):
            time.sleep(1.0)  # the run's length: real time passing, not synchronisation
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        t1 = time.monotonic_ns()
    finally:
        serve.stop()
        sub.close()
    per_stream = {sid: stream_figures(r, t0 + int(discard_s * 1e9), t1) for sid, r in sorted(sub.streams.items())}
    if not per_stream:
        raise RuntimeError(f"no frames received; see {serve.log_path}")
    start = t0 + int(discard_s * 1e9)
    lat, wire, compute = [], [], []
    for r in sub.streams.values():
        recv, captured = np.frombuffer(r.recv_ns, np.int64), np.frombuffer(r.captured_ns, np.int64)
        published = np.frombuffer(r.published_ns, np.int64)
        keep = (recv >= start) & (recv < t1) & (captured >= 0)
        lat.append((published[keep] - captured[keep]) / 1e6)
        wire.append((recv[keep] - published[keep]) / 1e6)
        compute.append(np.frombuffer(r.compute_ms, np.float32)[keep])
    kept, wire, compute = np.concatenate(lat), np.concatenate(wire), np.concatenate(compute)
    received = sum(f["frames"] for f in per_stream.values())
    return {
        "backend": backend_name,
        "preset": preset_name,
        "streams": streams,
        "seconds": seconds,
        "discarded_s": discard_s,
        "how": "ksdiff-runtime serve in its own process playing the sample in real time from files (10 ms blocks); "
               f"a SUB in another process over tcp://127.0.0.1; wire protocol v{protocol_version()}",
        "ready_s": round(serve.ready_s, 2),
        "latency_ms": pcts(kept, (50, 95, 99)),
        "latency_samples_ms": [round(float(x), 2) for x in kept],  # for the histogram
        "budget": {
            "hop_ms": round(preset_hop_ms(preset), 3),
            "preset_wait_ms": round(preset.latency_budget_ms(), 3),
            "deadline_ms": round(preset.deadline_ms(), 3),
            "compute_per_round_ms": pcts(compute, (50, 95)),
            "wire_ms": pcts(wire, (50, 95)),  # published -> received and decoded in another process
        },
        "per_stream": {sid: {k: v for k, v in f.items() if k != "latency_by_window"} for sid, f in per_stream.items()},
        "frames_received": int(received),
        "seq_gaps": sum(f["seq_gaps"] for f in per_stream.values()),
        "kept_up": all(f["seq_gaps"] == 0 for f in per_stream.values()),
        "kept_up_rule": "every frame of every stream published (no seq gap: nothing shed to meet a deadline)",
    }


def looped_speech(audio: np.ndarray) -> np.ndarray:
    return np.concatenate([audio, np.zeros(round(LOOP_SILENCE_S * motion.SAMPLE_RATE), np.float32)])


def protocol_version() -> str:
    from ksdiff_sdk import protocol

    return f"{protocol.PROTOCOL_MAJOR}.{protocol.PROTOCOL_MINOR}"


def bench_latency(backend_name: str, checkpoint: Path, presets: list[str], s: Settings, streams: int = 1,
                  ) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend_name, "target": {
        "preset": LATENCY_TARGET_PRESET, "p95_ms_max": LATENCY_TARGET_P95_MS, "on": "a 2-core CPU"}}
    for name in presets:
        out[name] = run_latency(backend_name, checkpoint, name, s.seconds, s.discard_s, streams=streams)
    if LATENCY_TARGET_PRESET in out:
        p95 = out[LATENCY_TARGET_PRESET]["latency_ms"]["p95"]
        out["target"]["p95_ms"] = p95
        out["target"]["pass"] = bool(p95 is not None and p95 <= LATENCY_TARGET_P95_MS)
        out["target"]["comparable_device"] = cpu_cores() == 2 and not backend_name.endswith(("cuda", "tensorrt"))
    return out


# --- offline bake ------------------------------------------------------------------------------------
def bake_pieces(audio: np.ndarray, n: int = BATCH_CLIPS) -> list[np.ndarray]:
    """n different pieces of the sample, 3..~6.5 s long, at spread offsets (as a game bakes many lines)."""
    sr = motion.SAMPLE_RATE
    longest = min(7.0, audio.size / sr - 0.3)
    pieces = []
    for i in range(n):
        length = round((3.0 + (longest - 3.0) * i / max(1, n - 1)) * sr)
        start = round((audio.size - length) * ((i * 7) % n) / max(1, n - 1))  # a permutation of offsets
        pieces.append(audio[start : start + length])
    return pieces


def bench_bake(backend_name: str, checkpoint: Path, s: Settings) -> dict[str, Any]:
    from ksdiff_runtime.backends import load_backend
    from ksdiff_runtime.engine.offline import animate, clip_inputs
    from ksdiff_runtime.inputs.guards import load_audio

    # as `ksdiff-runtime bake` loads it (with fallback, one intra-op thread), so the figure is what a user's bake gets
    model = load_backend(backend_name, checkpoint, fallback=True, threads=1)
    audio, _ = load_audio(SAMPLE_SPEECH)
    sr = motion.SAMPLE_RATE
    pieces = bake_pieces(audio)
    bar = progress(1 + s.bake_runs + 1 + s.batch_bake_runs, "bake", "run")
    # warm: the recogniser session, torch's kernels and allocator
    animate(model, [clip_inputs(model, audio)], steps=BAKE_STEPS)
    bar.update(1)
    fe_s, model_s = [], []
    for _ in range(s.bake_runs):
        t0 = time.perf_counter()
        clip = clip_inputs(model, audio)
        t1 = time.perf_counter()
        animate(model, [clip], steps=BAKE_STEPS)
        t2 = time.perf_counter()
        fe_s.append(t1 - t0)
        model_s.append(t2 - t1)
        bar.update(1)
    animate(model, [clip_inputs(model, p) for p in pieces[:2]], steps=BAKE_STEPS)  # warm the batched shapes
    bar.update(1)
    bfe_s, bmodel_s = [], []
    for _ in range(s.batch_bake_runs):
        t0 = time.perf_counter()
        clips = [clip_inputs(model, p) for p in pieces]
        t1 = time.perf_counter()
        animate(model, clips, steps=BAKE_STEPS, seeds=list(range(len(clips))))
        t2 = time.perf_counter()
        bfe_s.append(t1 - t0)
        bmodel_s.append(t2 - t1)
        bar.update(1)
    bar.close()
    total_fe, total_model = np.asarray(fe_s), np.asarray(model_s)
    single_wall = float(np.median(total_fe + total_model))
    batch_wall = float(np.median(np.asarray(bfe_s) + np.asarray(bmodel_s)))
    single_audio = audio.size / sr
    batch_audio = sum(p.size for p in pieces) / sr
    single_rtf = single_audio / single_wall
    batch_rtf = batch_audio / batch_wall
    return {
        "steps": BAKE_STEPS,
        "backend": model.name,
        "schedule": "offline front-end (clip_inputs) + animate, no transcript",
        "single": {
            "audio_s": round(single_audio, 3), "runs": s.bake_runs,
            "wall_s_median": round(single_wall, 4),
            "front_end_s_median": round(float(np.median(total_fe)), 4),
            "model_s_median": round(float(np.median(total_model)), 4),
            "rtf": round(single_rtf, 2),
        },
        "batch": {
            "clips": len(pieces), "clip_seconds": [round(p.size / sr, 2) for p in pieces],
            "audio_s": round(batch_audio, 3), "runs": s.batch_bake_runs,
            "wall_s_median": round(batch_wall, 4),
            "front_end_s_median": round(float(np.median(bfe_s)), 4),
            "model_s_median": round(float(np.median(bmodel_s)), 4),
            "rtf": round(batch_rtf, 2),
        },
        "target": {"rtf_min": BAKE_TARGET_RTF, "on": "a 2-core CPU", "single_pass": single_rtf >= BAKE_TARGET_RTF,
                   "batch_pass": batch_rtf >= BAKE_TARGET_RTF},
    }


# --- memory ------------------------------------------------------------------------------------------
def state_bytes(state) -> int:
    """Bytes of the numpy arrays a StreamState holds (its audio, features, motion context, encoder state)."""
    total = 0
    for value in vars(state).values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, dict):  # the stream conditioner's state
            total += sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))
    total += 16 * len(getattr(state, "_arrivals", ()))  # two ints per recent chunk
    return total


def bench_stream_memory(backend_name: str, checkpoint: Path, s: Settings, preset_name: str = "low-latency",
                        ) -> dict[str, Any]:
    """RSS growth when opening N streams and pushing audio to each, after warming the allocations that
    do not grow with the stream count (the backend at batch N, the recogniser)."""
    from ksdiff_runtime.backends import load_backend
    from ksdiff_runtime.engine.engine import StreamingEngine
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.engine.sampling import sample_windows

    backend = load_backend(backend_name, checkpoint)
    preset = get_preset(preset_name)
    n, seconds = s.memory_streams, s.memory_seconds
    engine = StreamingEngine(backend, preset, idle_timeout_s=3600)
    speech = load_speech(backend.constants.cfg, engine.front_end)
    audio = speech.audio
    sample_windows(backend, window_batch(backend.constants, preset, speech, n, np.random.default_rng(0)), preset.steps)
    engine.warm_up(audio)
    gc.collect()
    before = rss_mib()
    loop = looped_speech(audio)
    sids = [engine.open_stream(f"mem-{i}", seed=i) for i in range(n)]
    chunk = motion.SAMPLE_RATE // 10  # 100 ms pushes, then one step, as a server's loop would
    pushes = round(seconds * 10)
    bar = progress(pushes, "memory", "push")
    for k in range(pushes):
        for i, sid in enumerate(sids):
            start = (k * chunk + i * 4000) % loop.size  # streams at different places in the speech
            engine.push(sid, loop[(start + np.arange(chunk)) % loop.size])
        while engine.has_work():
            engine.step()
        bar.update(1)
    bar.close()
    gc.collect()
    after = rss_mib()
    arrays = [state_bytes(engine.sessions.get(sid).state) for sid in sids]  # reading, not changing, engine state
    return {
        "backend": backend.name, "preset": preset_name, "streams": n, "seconds_per_stream": seconds,
        "rss_before_mib": round(before, 1), "rss_after_mib": round(after, 1),
        "rss_growth_per_stream_kib": round(1024 * (after - before) / n, 1),
        "array_bytes_per_stream_kib": round(float(np.mean(arrays)) / 1024, 1),
        "note": "RSS growth includes allocator slack; array bytes count the numpy state a stream holds",
    }


# --- plot and summary --------------------------------------------------------------------------------
def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    ax = axes[0]
    compute = doc.get("compute")
    if compute and compute["backends"]:
        styles = ["-", "--", ":", "-."]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for bi, (label, entry) in enumerate(compute["backends"].items()):
            for pi, (name, points) in enumerate(entry["presets"].items()):
                bs = sorted(int(b) for b in points)
                p50 = np.array([points[str(b)]["p50"] for b in bs])
                p99 = np.array([points[str(b)]["p99"] for b in bs])
                ax.errorbar(bs, p50, yerr=[np.zeros_like(p50), p99 - p50], fmt="o" + styles[pi % 4], ms=3, capsize=2,
                            lw=1.2, color=colors[bi % len(colors)], label=f"{label} {name} (p50, bar to p99)")
        for pi, (name, p) in enumerate(compute["presets"].items()):
            ax.axhline(p["hop_ms"], color="k", ls=styles[pi % 4], lw=0.8, alpha=0.6)
            ax.text(min(compute["batches"]), p["hop_ms"] * 1.05, f"hop {name} {p['hop_ms']:.0f} ms", fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "compute not run", ha="center", transform=ax.transAxes)
    ax.set_xlabel("batch (streams per tick)")
    ax.set_ylabel("model compute per hop (ms)")
    ax.set_title("compute per hop vs batch")
    ax.grid(alpha=0.3, which="both")

    ax = axes[1]
    lat = doc.get("latency")
    names = [k for k in (lat or {}) if isinstance(lat[k], dict) and "latency_samples_ms" in lat[k]]
    if names:
        top = max((max(lat[n]["latency_samples_ms"], default=0.0) for n in names), default=0.0)
        bins = np.arange(0.0, max(top, LATENCY_TARGET_P95_MS) + 5.0, 4.0)  # 4 ms bins for every preset
        for i, name in enumerate(names):
            samples = lat[name]["latency_samples_ms"]
            if not samples:
                continue
            c = f"C{i}"
            ax.hist(samples, bins=bins, alpha=0.6, color=c, label=f"{name} (n={len(samples)})")
            ax.axvline(lat[name]["latency_ms"]["p95"], color=c, ls="--", lw=1,
                       label=f"{name} p95 {lat[name]['latency_ms']['p95']:.0f} ms")
        ax.axvline(LATENCY_TARGET_P95_MS, color="r", lw=1.5, label=f"target p95 {LATENCY_TARGET_P95_MS:.0f} ms "
                   f"({LATENCY_TARGET_PRESET})")
        ax.legend(fontsize=7)
        ax.set_title(f"end-to-end latency ({lat['backend']})")
    else:
        ax.text(0.5, 0.5, "latency not run", ha="center", transform=ax.transAxes)
        ax.set_title("end-to-end latency")
    ax.set_xlabel("capture -> received over ZeroMQ (ms)")
    ax.set_ylabel("frames")
    ax.grid(alpha=0.3)

    ax = axes[2]
    bake = doc.get("bake")
    if bake:
        rtf = [bake["single"]["rtf"], bake["batch"]["rtf"]]
        bars = ax.bar(["1 clip", f"{bake['batch']['clips']} clips, one batch"], rtf, color=["C0", "C1"])
        for b, v in zip(bars, rtf, strict=True):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}x", ha="center", va="bottom")
        ax.axhline(BAKE_TARGET_RTF, color="r", lw=1.5, label=f"target {BAKE_TARGET_RTF:.0f}x")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "bake not run", ha="center", transform=ax.transAxes)
    ax.set_ylabel("real-time factor (audio s / wall s)")
    ax.set_title("offline bake")
    ax.grid(alpha=0.3, axis="y")
    dev = doc["device"]
    fig.suptitle(f"python -m benchmarks.bench: {dev['cpu_model']}, {dev['cpu_cores']} cores"
                 + (f", {dev['gpu']['name']}" if dev.get("gpu") else ", no GPU")
                 + (" (quick)" if doc["settings"]["quick"] else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    compute = doc.get("compute")
    if compute:
        batches = compute["batches"]
        lines.append("model compute per hop, ms p50/p99 (sample_windows; live hops with the stream conditioner where "
                     "the backend has it, and window by window below)")
        head = f"  {'backend':<20}{'preset':<13}" + "".join(f"{'B=' + str(b):>15}" for b in batches)
        lines.append(head + f"{'RT streams':>12}{'CPU-bound':>11}{'1 thread':>10}")
        for label, entry in compute["backends"].items():
            for name, points in entry["presets"].items():
                cells = "".join(f"{points[str(b)]['p50']:>7.1f}/{points[str(b)]['p99']:<7.1f}" if str(b) in points
                                else f"{'-':>15}" for b in batches)
                cap = compute["capacity"].get(label, {}).get(name, {})
                rt = f"{cap.get('model_bound_streams', '-')}{'+' if cap.get('at_largest_measured_batch') else ''}"
                lines.append(f"  {label:<20}{name:<13}{cells}{rt:>12}{cap.get('cpu_bound_streams', '-'):>11}"
                             f"{cap.get('engine_thread_bound_streams', '-'):>10}")
                window = entry.get("windowed_conditioner", {}).get(name)
                if window:  # the same hops conditioned window by window, for comparison
                    cells = "".join(f"{window[str(b)]['p50']:>7.1f}/{window[str(b)]['p99']:<7.1f}"
                                    if str(b) in window else f"{'-':>15}" for b in batches)
                    lines.append(f"  {'  windowed':<20}{name:<13}{cells}")
        for label, reason in compute["skipped"].items():
            lines.append(f"  {label:<20}skipped: {reason[:100]}")
        for name, fe in compute["front_end"].items():
            ph = fe["per_stream_hop_ms"]
            lines.append(f"  front-end per stream-hop {name}: p50 {ph['p50']:.1f} ms, p99 {ph['p99']:.1f} ms "
                         f"({fe['groups_per_hop']:g} groups; prosody p50 {fe['prosody_ms']['p50']:.1f} ms; "
                         f"{fe['cores_used']:.2f} cores busy)")
    lat = doc.get("latency")
    if lat:
        n = next((r["streams"] for r in lat.values() if isinstance(r, dict) and "streams" in r), 1)
        lines.append(f"end-to-end latency ({lat['backend']}, {n} live stream{'s' * (n > 1)}, capture -> ZeroMQ "
                     "receive), ms")
        for name, r in lat.items():
            if not (isinstance(r, dict) and "latency_ms" in r):
                continue
            m, b = r["latency_ms"], r["budget"]
            lines.append(
                f"  {name:<12} p50 {m['p50']:.0f}  p95 {m['p95']:.0f}  p99 {m['p99']:.0f}  max {m['max']:.0f}  | hop "
                f"{b['hop_ms']:.0f}, preset wait {b['preset_wait_ms']:.0f}, deadline {b['deadline_ms']:.0f}, "
                f"compute/round {b['compute_per_round_ms']['p50']:.0f}/{b['compute_per_round_ms']['p95']:.0f}, wire "
                f"{b['wire_ms']['p50']:.2f}/{b['wire_ms']['p95']:.2f} | kept up: {r['kept_up']} ({r['seq_gaps']} gaps)")
        t = lat["target"]
        if "pass" in t:
            lines.append(f"  target: {t['preset']} p95 <= {t['p95_ms_max']:.0f} ms on {t['on']}: "
                         f"{'PASS' if t['pass'] else 'FAIL'} ({t['p95_ms']:.0f} ms)")
    bake = doc.get("bake")
    if bake:
        s1, sb = bake["single"], bake["batch"]
        lines.append(f"offline bake ({bake['backend']}, {bake['steps']} steps): 1 clip {s1['audio_s']:.2f} s -> "
                     f"{s1['rtf']:.1f}x real time (front-end {s1['front_end_s_median'] * 1000:.0f} ms, model "
                     f"{s1['model_s_median'] * 1000:.0f} ms); {sb['clips']} clips {sb['audio_s']:.1f} s -> "
                     f"{sb['rtf']:.1f}x (front-end {sb['front_end_s_median']:.2f} s, model "
                     f"{sb['model_s_median']:.2f} s)")
        lines.append(f"  target >= {BAKE_TARGET_RTF:.0f}x: single {'PASS' if bake['target']['single_pass'] else 'FAIL'}"
                     f", batch {'PASS' if bake['target']['batch_pass'] else 'FAIL'}")
    mem = doc["memory"]
    line = f"memory: peak RSS {mem['peak_rss_mib']:.0f} MiB"
    if "streams" in mem:
        st = mem["streams"]
        line += (f"; per stream ({st['streams']} streams, {st['seconds_per_stream']:g} s each): RSS "
                 f"{st['rss_growth_per_stream_kib']:.0f} KiB, arrays {st['array_bytes_per_stream_kib']:.0f} KiB")
    lines.append(line)
    return "\n".join(lines)


# --- command -----------------------------------------------------------------------------------------
@dataclass
class Phases:
    """RSS at the end of each phase (peak so far and current)."""

    rows: dict[str, dict[str, float]] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.rows[name] = {"peak_rss_mib": round(peak_rss_mib(), 1), "rss_mib": round(rss_mib(), 1)}


def parse_list(text: str, kind: type = str) -> list:
    return [kind(x.strip()) for x in text.split(",") if x.strip()]


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from ksdiff_runtime.engine.presets import PRESETS
    from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

    only = parse_list(args.only) if args.only else list(SECTIONS)
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"error: --only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    presets = parse_list(args.presets) if args.presets else list(PRESETS)
    for name in presets:
        if name not in PRESETS:
            raise SystemExit(f"error: --presets: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    gpu = cuda_available()
    s = Settings.make(args.quick, args.seconds)
    if args.batches:
        batches = parse_list(args.batches, int)
    else:
        batches = list(QUICK_BATCHES if s.quick else (GPU_BATCHES if gpu else CPU_BATCHES))
    if any(b < 1 for b in batches):
        raise SystemExit("error: --batches must be positive integers")
    if args.latency_streams < 1:
        raise SystemExit("error: --latency-streams must be >= 1")
    labels = parse_list(args.backends) if args.backends else list(CPU_BACKENDS + (GPU_BACKENDS if gpu else ()))
    backend = args.backend or ("auto" if gpu else "onnxruntime-cpu")
    checkpoint = Path(args.checkpoint or DEFAULT_CHECKPOINT)

    doc: dict[str, Any] = {
        "device": device_info(),
        "checkpoint": str(checkpoint),
        "settings": dataclasses.asdict(s) | {"sections": only, "presets": presets},
    }
    phases = Phases()
    phases.mark("start")
    started = time.perf_counter()
    if "compute" in only:
        doc["compute"] = bench_compute(checkpoint, presets, labels, batches, s)
        phases.mark("compute")
    if "latency" in only:
        doc["latency"] = bench_latency(backend, checkpoint, presets, s, args.latency_streams)
        phases.mark("latency")
    if "bake" in only:
        doc["bake"] = bench_bake(backend, checkpoint, s)
        phases.mark("bake")
    doc["memory"] = {"peak_rss_mib": round(peak_rss_mib(), 1), "phases": phases.rows}
    if "memory" in only:
        doc["memory"]["streams"] = bench_stream_memory(backend, checkpoint, s)
        phases.mark("memory")
        doc["memory"]["peak_rss_mib"] = round(peak_rss_mib(), 1)
    if gpu:
        import torch

        doc["memory"]["torch_cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    # other processes on the machine skew every figure: keep the evidence next to them
    doc["device"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return doc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Benchmark the runtime on this machine and write bench.json and bench.png. Sections: "
        "compute (sample_windows per backend and batch, front-end per stream-hop, streams served in real time), "
        "latency (a paced real-time stream through the engine and ZeroMQ), bake (offline real-time factor), "
        "memory (peak RSS, per-stream state). Figures are measured and reported; nothing is asserted.",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks"),
                   help="directory for bench.json and bench.png (default: benchmarks/)")
    p.add_argument("--only", help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run (~1 min): batches 1,4, short timing budgets, 3 s real-time runs, "
                        "1 bake run, 8 streams x 2 s for memory")
    p.add_argument("--backend", help="backend of the latency, bake and memory sections (default: onnxruntime-cpu, "
                                     "or auto on a CUDA machine)")
    p.add_argument("--backends", help="comma-separated backends for the compute section (default: torch-cpu, "
                                      "onnxruntime-cpu, onnxruntime-cpu+int8, and on a CUDA machine torch-cuda, "
                                      "torch-cuda+graphs, onnxruntime-cuda, tensorrt)")
    p.add_argument("--batches", help="comma-separated batch sizes for the compute section (default: 1..32 on CPU, "
                                     "1..256 on GPU, powers of two)")
    p.add_argument("--presets", help="comma-separated presets (default: all)")
    p.add_argument("--seconds", type=float, help="length of each real-time latency run (default 30, --quick 3)")
    p.add_argument("--latency-streams", type=int, default=1,
                   help="live streams in each real-time latency run (default 1; the target is for one stream)")
    p.add_argument("--checkpoint", type=Path, help="model checkpoint (default: the bundled one)")
    return p


def run(args: argparse.Namespace) -> int:
    doc = run_bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "bench.json", args.out / "bench.png"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, png_path)
    print(summary(doc))
    print(f"-> {json_path}, {png_path} ({doc['elapsed_s']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
