"""`ksdiff-runtime bake`: a speech file -> an animation file (CSV or JSON), plus an optional plot.

The CSV is laid out like a Live Link Face recording (Timecode, BlendShapeCount, then one column
per curve, by name, then head and eye rotations) so tools that import those recordings read it.
Import by column name, never by position. The JSON carries the same frames with their audio time
and the canonical names.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = Path(__file__).resolve().parent / "assets" / "sample_speech.wav"


def resample_frames(x: np.ndarray, fps_in: int, fps_out: int) -> np.ndarray:
    """Frames [T, D] at fps_in -> fps_out by linear interpolation on the audio clock."""
    if fps_in == fps_out or len(x) == 0:
        return x
    duration = len(x) / fps_in
    t_out = np.arange(round(duration * fps_out)) / fps_out
    t_in = np.arange(len(x)) / fps_in
    return np.stack([np.interp(t_out, t_in, x[:, d]) for d in range(x.shape[1])], axis=1).astype(np.float32)


def live_link_name(name: str) -> str:
    return name[0].upper() + name[1:]


def timecode(frame: int, fps: int) -> str:
    seconds, ff = divmod(frame, fps)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}.000"


def write_csv(path: Path, blendshapes: np.ndarray, head: np.ndarray, gaze: np.ndarray, fps: int) -> None:
    header = ["Timecode", "BlendShapeCount", *(live_link_name(n) for n in motion.BLENDSHAPES)]
    header += ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
               "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(len(blendshapes)):
            pitch, yaw, roll = head[i]
            row = [timecode(i, fps), len(header) - 2, *(f"{v:.5f}" for v in blendshapes[i])]
            row += [f"{v:.5f}" for v in (yaw, pitch, roll, gaze[i, 0], gaze[i, 1], 0.0, gaze[i, 2], gaze[i, 3], 0.0)]
            w.writerow(row)


def write_json(path: Path, blendshapes: np.ndarray, head: np.ndarray, gaze: np.ndarray, fps: int,
               source: str) -> None:
    doc = {
        "source": source,
        "fps": fps,
        "blendshape_names": list(motion.BLENDSHAPES),
        "head_rotation_names": list(motion.HEAD_ROTATION),
        "head_rotation_units": "radians; pitch + = chin down, yaw + = toward the face's left, roll + = toward "
        "the right shoulder (see ksdiff_runtime/motion.py)",
        "gaze_names": list(motion.GAZE),
        "frames": [
            {
                "t_audio": round(i / fps, 6),
                "blendshapes": [round(float(v), 5) for v in blendshapes[i]],
                "head": [round(float(v), 5) for v in head[i]],
                "gaze": [round(float(v), 5) for v in gaze[i]],
            }
            for i in range(len(blendshapes))
        ],
    }
    path.write_text(json.dumps(doc))


def plot_curves(path: Path, audio: np.ndarray, blendshapes: np.ndarray, head: np.ndarray, fps: int,
                title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(blendshapes)) / fps
    fig, axes = plt.subplots(4, 1, figsize=(11, 9), sharex=True)
    axes[0].plot(np.arange(len(audio)) / motion.SAMPLE_RATE, audio, color="0.4", lw=0.5)
    axes[0].set_ylabel("audio")
    axes[0].set_title(title)
    for name in ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft"):
        axes[1].plot(t, blendshapes[:, motion.index(name)], label=name, lw=1.2)
    axes[1].plot(t, motion.lip_aperture(blendshapes), "k:", label="lip aperture", lw=1)
    axes[1].set_ylabel("mouth")
    axes[1].legend(fontsize=7, ncol=3)
    for name in ("eyeBlinkLeft", "browInnerUp", "browOuterUpLeft", "cheekSquintLeft"):
        axes[2].plot(t, blendshapes[:, motion.index(name)], label=name, lw=1.2)
    axes[2].set_ylabel("eyes / brows")
    axes[2].legend(fontsize=7, ncol=2)
    for k, name in enumerate(motion.HEAD_ROTATION):
        axes[3].plot(t, np.rad2deg(head[:, k]), label=name, lw=1.2)
    axes[3].set_ylabel("head (deg)")
    axes[3].set_xlabel("audio time (s)")
    axes[3].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bake",
        help="animate a speech file offline to CSV (Live Link Face layout) or JSON",
        description="Bake a speech file to facial animation: 52 ARKit blendshapes, head rotation and gaze "
        "per frame, timed on the audio clock. The output format follows the extension (.csv or .json).",
    )
    p.add_argument("input", type=Path, nargs="?", default=DEFAULT_SAMPLE,
                   help="speech file (wav/flac/ogg; any rate, any channels); default: the bundled sample")
    p.add_argument("-o", "--output", type=Path, required=True, help="out.csv or out.json")
    p.add_argument("--text", help="transcript of the line (optional; improves articulation when known)")
    p.add_argument("--plot", type=Path, help="also write a PNG plot of the main curves")
    p.add_argument("--fps", type=int, default=motion.FPS, help=f"output frame rate (default {motion.FPS})")
    p.add_argument("--steps", type=int, default=4, help="DDIM denoising steps (default 4)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same animation)")
    p.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: the bundled one)")
    p.add_argument("--backend", default="auto", help="inference backend: auto (tensorrt > torch-cuda > "
                   "onnxruntime-cpu), torch, torch-cpu, torch-cuda, onnxruntime, onnxruntime-cpu, onnxruntime-cuda, "
                   "tensorrt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ksdiff_runtime.audio.guards import load_audio
    from ksdiff_runtime.backends import load_backend
    from ksdiff_runtime.engine.offline import animate, clip_inputs
    from ksdiff_runtime.model.checkpoint import DEFAULT_CHECKPOINT

    suffix = args.output.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise SystemExit(f"error: output {args.output} must end in .csv or .json")
    if args.fps <= 0:
        raise SystemExit("error: --fps must be positive")
    audio, report = load_audio(args.input)
    if report.n_nonfinite or report.n_clipped:
        log.warning("%s: %d non-finite and %d clipped samples were sanitised", args.input, report.n_nonfinite,
                    report.n_clipped)
    text = args.text
    if text is None and args.input == DEFAULT_SAMPLE:
        text = DEFAULT_SAMPLE.with_suffix(".txt").read_text().strip()
    backend = load_backend(args.backend, args.checkpoint or DEFAULT_CHECKPOINT, fallback=True)
    started = time.perf_counter()
    anim = animate(backend, [clip_inputs(backend, audio, text)], steps=args.steps, seeds=[args.seed])[0]
    elapsed = time.perf_counter() - started
    blendshapes = resample_frames(anim.blendshapes, motion.FPS, args.fps).clip(0.0, 1.0)
    head = resample_frames(anim.head, motion.FPS, args.fps)
    gaze = motion.gaze_from_blendshapes(blendshapes)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        write_csv(args.output, blendshapes, head, gaze, args.fps)
    else:
        write_json(args.output, blendshapes, head, gaze, args.fps, str(args.input))
    duration = len(audio) / motion.SAMPLE_RATE
    print(f"baked {args.input} ({duration:.2f} s) -> {args.output}: {len(blendshapes)} frames at {args.fps} fps "
          f"in {elapsed:.2f} s ({duration / max(elapsed, 1e-9):.1f}x real time)")
    if args.plot:
        plot_curves(args.plot, audio, blendshapes, head, args.fps, f"{args.input.name} ({args.steps} DDIM steps)")
        print(f"plot -> {args.plot}")
    return 0
