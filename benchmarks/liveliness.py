"""Eyes and head in a long live stream, with and without the liveliness stage (engine/liveliness.py).

    python -m benchmarks.liveliness [--minutes 8] [--checkpoint K] [--audio-guidance 1] [--mood neutral]

The bundled speech, looped for ``--minutes``, is streamed through the engine (ONNX Runtime,
low-latency preset, the live schedule; as fast as it computes) once as the model alone and once with
the stage, same seed. Reported per run: blinks per minute (eyeBlinkLeft rising through 0.5) over the
whole stream and in each minute, how much likelier a blink is in the first second of a pause than
elsewhere, gaze movement, the head's standard deviation and its mean pitch, yaw and roll (degrees) in
each minute, and head motion beats per second (metrics.motion_beats; the teacher makes 2.5).
``--audio-guidance``: both runs with that classifier-free guidance over the audio (the Python API's
``Guidance(audio=...)``; `serve` runs 1). ``--mood``: both runs in that mood (the controls' expression and
the network's mood style, at the default mood guidance).

Writes benchmarks/liveliness.json and docs/liveliness.png; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends.select import DEFAULT_CHECKPOINT, load_backend
from ksdiff_runtime.engine.controls import Controls
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.liveliness import BLINKS, JAW, PAUSE_FRAMES, REST_JAW, LivelinessConfig
from ksdiff_runtime.engine.sampling import Guidance
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_runtime.training.metrics import motion_beats

from .live import machine

ROOT = Path(__file__).resolve().parent.parent
FPS = motion.FPS
D = motion.NUM_BLENDSHAPES


def stream(engine: StreamingEngine, audio: np.ndarray, label: str) -> np.ndarray:
    """Every frame [n, 55] of one live stream of ``audio`` (33 ms pushes, never shed), with progress."""
    from tqdm import tqdm

    with tqdm(total=audio.size, desc=label, unit="sample", unit_scale=True, mininterval=2.0) as bar:
        frames = engine.stream_clip(audio, seed=5, progress=bar.update)
    return np.array([np.concatenate([f.blendshapes, f.head]) for f in frames], np.float32)


def figures(values: np.ndarray) -> dict[str, Any]:
    blink = values[:, BLINKS[0]]
    starts = np.flatnonzero((blink[1:] >= 0.5) & (blink[:-1] < 0.5)) + 1
    minutes = len(values) // (60 * FPS)
    per_minute = [int(np.sum((starts >= m * 60 * FPS) & (starts < (m + 1) * 60 * FPS))) for m in range(minutes)]
    rest = values[:, JAW] < REST_JAW
    run = np.zeros(len(values), int)
    for i in range(1, len(values)):
        run[i] = run[i - 1] + 1 if rest[i] else 0
    early_pause = (run >= PAUSE_FRAMES[0]) & (run < PAUSE_FRAMES[1])
    in_pause = np.isin(starts, np.flatnonzero(early_pause))
    rate_in = in_pause.sum() / max(1, early_pause.sum())
    rate_out = (~in_pause).sum() / max(1, (~early_pause).sum())
    gaze = np.rad2deg(motion.gaze_from_blendshapes(values[:, :D]))
    head = np.rad2deg(values[:, D:].astype(np.float64))  # float64, so the rounded figures print as rounded
    head_minutes = [np.round(head[m * 60 * FPS : (m + 1) * 60 * FPS].mean(axis=0), 2).tolist() for m in range(minutes)]
    return {
        "frames": len(values), "blinks": int(starts.size),
        "blinks_per_minute": round(starts.size / (len(values) / FPS / 60), 1),
        "blinks_each_minute": per_minute,
        "blink_rate_pause_vs_elsewhere": round(float(rate_in / rate_out), 2) if rate_out else None,
        "max_eye_blink": round(float(blink.max()), 3),
        "gaze_yaw_std_deg": round(float(gaze[:, 0].std()), 2), "gaze_pitch_std_deg": round(float(gaze[:, 1].std()), 2),
        "head_mean_deg_each_minute": head_minutes,
        "head_mean_deg_last_half": np.round(head[len(head) // 2 :].mean(axis=0), 2).tolist(),
        "head_std_deg": np.round(head.std(axis=0), 2).tolist(),
        "head_beats_per_s": round(len(motion_beats(values[:, D:])) / (len(values) / FPS), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.liveliness", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=8.0, help="length of the looping stream")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "liveliness.json", help="results (JSON)")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "liveliness.png", help="plot (PNG)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="model checkpoint (default: the bundled one)")
    p.add_argument("--audio-guidance", type=float, default=1.0,
                   help="classifier-free guidance over the audio, as Guidance(audio=...) (default 1: none, as serve)")
    p.add_argument("--mood", choices=motion.MOODS, default=motion.DEFAULT_MOOD,
                   help=f"the streams' mood (default {motion.DEFAULT_MOOD})")
    args = p.parse_args(argv)
    speech, _ = load_audio(SAMPLE_SPEECH)
    audio = np.resize(speech.astype(np.float32), int(args.minutes * 60 * motion.SAMPLE_RATE))
    backend = load_backend("onnxruntime", args.checkpoint, threads=1)
    runs = {}
    for label, config in (("model alone", None), ("with liveliness", LivelinessConfig())):
        engine = StreamingEngine(backend, "low-latency", front_end_threads=1, liveliness=config,
                                 guidance=Guidance(audio=args.audio_guidance), controls=Controls(mood=args.mood))
        runs[label] = stream(engine, audio, label)
        engine.close()
    result = {"machine": machine(), "minutes": args.minutes, "preset": "low-latency",
              "audio_guidance": args.audio_guidance, "mood": args.mood,
              "config": LivelinessConfig().__dict__, **{k: figures(v) for k, v in runs.items()}}
    for label in runs:
        r = result[label]
        print(f"{label}: {r['blinks_per_minute']} blinks/min (each minute {r['blinks_each_minute']}), "
              f"pause/elsewhere {r['blink_rate_pause_vs_elsewhere']}, gaze std {r['gaze_yaw_std_deg']}/"
              f"{r['gaze_pitch_std_deg']} deg, head mean (last half) {r['head_mean_deg_last_half']} deg, "
              f"head std {r['head_std_deg']} deg, head beats {r['head_beats_per_s']}/s")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, args.plot)
    print(f"-> {args.out}, {args.plot}")
    return 0


def plot(runs: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for (label, v), color in zip(runs.items(), ("C3", "C0"), strict=True):
        t = np.arange(len(v)) / FPS
        show = t < 60
        axes[0].plot(t[show], v[show, BLINKS[0]], color=color, lw=0.8, label=label)
        axes[1].plot(t[show], np.rad2deg(v[show, D]), color=color, lw=0.8, label=label)
    axes[0].set_ylabel("eyeBlinkLeft")
    axes[1].set_ylabel("head pitch (deg)")
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_xlabel("seconds (the first minute of the stream)")
    axes[0].legend(loc="upper right")
    axes[0].set_title("Blinks and head pitch in a live stream of the looping sample speech")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
