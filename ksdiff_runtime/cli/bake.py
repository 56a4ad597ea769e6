"""`ksdiff-runtime bake`: a speech file -> an animation file (CSV or JSON), plus an optional plot.

The CSV is laid out like a Live Link Face recording and the JSON carries the same frames with
their audio time and canonical names (``ksdiff_runtime.outputs.files``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.cli.plots import pyplot
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE, closure_for
from ksdiff_runtime.engine.controls import Controls, ControlsError, ControlStage
from ksdiff_runtime.engine.gate import gate_if_available
from ksdiff_runtime.engine.liveliness import LivelinessConfig
from ksdiff_runtime.engine.network_style import NetworkStyles
from ksdiff_runtime.engine.offline import bake_animations, clip_inputs
from ksdiff_runtime.engine.sampling import DEFAULT_MOOD_GUIDANCE, NO_MOOD_STYLES, mood_style, with_mood_guidance
from ksdiff_runtime.engine.stream import output_frames
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT
from ksdiff_runtime.outputs import files

log = logging.getLogger(__name__)

def configure_bake(p: argparse.ArgumentParser) -> None:
    p.description = ("Bake a speech file to facial animation: 52 ARKit blendshapes, head rotation and gaze "
        "per frame, timed on the audio clock. The output format follows the extension (.csv or .json).")
    p.add_argument("input", type=Path, nargs="?", default=SAMPLE_SPEECH,
                   help="speech file (wav/flac/ogg; any rate, any channels); default: the bundled sample")
    p.add_argument("-o", "--output", type=Path, required=True, help="out.csv or out.json")
    p.add_argument("--text", help="transcript of the line (optional; improves articulation when known)")
    p.add_argument("--plot", type=Path, help="also write a PNG plot of the main curves")
    p.add_argument("--fps", type=int, default=motion.FPS, help=f"output frame rate (default {motion.FPS})")
    p.add_argument("--steps", type=int, default=4, help="DDIM denoising steps (default 4)")
    p.add_argument("--seed", type=int, default=None,
                   help="noise seed: the same seed, the same animation (default: one from the audio, so the same "
                   "file bakes the same and different lines do not sway and blink alike)")
    p.add_argument("--no-voice-gate", dest="voice_gate", action="store_false",
                   help="let the mouth follow every sound, not only voices (by default it rests where Silero VAD "
                   "hears no voice, as in serve)")
    p.add_argument("--no-closure", dest="closure", action="store_false",
                   help="the model's lips alone: do not seal them where the recogniser hears /p b m/ (by default "
                   "they are, as in serve)")
    p.add_argument("--mood", choices=motion.MOODS, default=motion.DEFAULT_MOOD,
                   help="the face's mood, held through speech and silence (default neutral)")
    p.add_argument("--mood-intensity", type=float, default=1.0, metavar="0..1",
                   help="how much of the mood (default 1)")
    p.add_argument("--mood-guidance", type=float, default=DEFAULT_MOOD_GUIDANCE, metavar="0..4",
                   help="how strongly the network speaks in the mood: 0 not at all (the mood is only its held "
                   f"expression), 1 conditioned on it, above 1 more so (default {DEFAULT_MOOD_GUIDANCE:g}, as serve)")
    p.add_argument("--style", default=motion.DEFAULT_STYLE, metavar="STYLE|TAKE",
                   help=f"{', '.join(motion.STYLES)}, or a reference take of a face (a Live Link Face .csv, or a "
                   "bake .json): the head, brows and mouth move as much as in it (default none; docs/STYLE.md)")
    p.add_argument("--network-style", action="store_true",
                   help="the style take also reaches the network's own style input (its style vector), not only "
                   "the output's gains, as serve --network-style (docs/STYLE.md)")
    p.add_argument("--no-liveliness", dest="liveliness", action="store_false",
                   help="the model's eyes and head alone: no added blinks, gaze micro-saccades, head centring or "
                   "sway (as in serve)")
    p.add_argument("--full-context-recogniser", dest="streaming_recogniser", action="store_false",
                   help="read the posteriorgram from hama's full-context recogniser instead of the streaming "
                   "recogniser live streams run (docs/STREAMING_RECOGNISER.md)")
    p.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: the bundled one)")
    p.add_argument("--backend", default="auto", help="inference backend: auto (tensorrt > torch-cuda > "
                   "onnxruntime-cpu), torch, torch-cpu, torch-cuda, onnxruntime, onnxruntime-cpu, onnxruntime-cuda, "
                   "tensorrt")
    p.set_defaults(func=run_bake)


def run_bake(args: argparse.Namespace) -> int:
    suffix = args.output.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise SystemExit(f"error: output {args.output} must end in .csv or .json")
    if args.fps <= 0:
        raise SystemExit("error: --fps must be positive")
    try:
        controls = Controls.from_dict({"mood": args.mood, "mood_intensity": args.mood_intensity, "style": args.style},
                                      allow_files=True)
        guidance = with_mood_guidance(None, args.mood_guidance)
    except (ControlsError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    audio, report = load_audio(args.input)
    if report.n_nonfinite or report.n_clipped:
        log.warning("%s: %d non-finite and %d clipped samples were sanitised", args.input, report.n_nonfinite,
                    report.n_clipped)
    text = args.text
    if text is None and args.input == SAMPLE_SPEECH:
        text = SAMPLE_SPEECH.with_suffix(".txt").read_text().strip()
    # one intra-op thread on the CPU, as `serve` runs it: a clip's windows go one after another (each continues
    # the last), and at batch 1 a second thread slowed these graphs (the 6.8 s sample's model 75 -> 92-99 ms)
    backend = load_backend(args.backend, args.checkpoint or DEFAULT_CHECKPOINT, fallback=True, threads=1)
    if args.network_style:  # the take's vector and the network's response to it (engine/network_style.py)
        controls = NetworkStyles(backend).controls(controls)
    started = time.perf_counter()
    inputs = clip_inputs(backend, audio, text, fps=args.fps, streaming_recogniser=args.streaming_recogniser)
    # the network's style: the take's with --network-style, moved by the mood's, as a stream's (engine/sampling.py)
    base = None if controls.style is None or controls.style.network is None else controls.style.network.vector
    style, missing = mood_style(backend.constants, base, controls.mood, controls.mood_intensity, args.mood_guidance)
    if missing:
        log.warning(NO_MOOD_STYLES)
    anim = bake_animations(
        backend, [inputs], steps=args.steps, seeds=None if args.seed is None else [args.seed],
        style=None if style is None else style[None],
        guidance=None if style is None else guidance,
        closure=closure_for(backend.constants.cfg.front_end.name, DEFAULT_CLOSURE if args.closure else None),
        gate=gate_if_available(args.voice_gate), liveliness=LivelinessConfig() if args.liveliness else None)[0]
    elapsed = time.perf_counter() - started
    n_out = output_frames(audio.size, args.fps)  # one frame per started frame period, as a stream yields
    blendshapes = files.resample_frames(anim.blendshapes, motion.FPS, args.fps, n_out).clip(0.0, 1.0)
    head = files.resample_frames(anim.head, motion.FPS, args.fps, n_out)
    if controls.changes_values:  # the mood and style, as a stream's controls apply them
        shaped = ControlStage(controls, args.fps, made="bake").shape(np.concatenate([blendshapes, head], axis=1))
        blendshapes, head = shaped[:, : motion.NUM_BLENDSHAPES], shaped[:, motion.NUM_BLENDSHAPES :]
    gaze = motion.gaze_from_blendshapes(blendshapes)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        files.write_csv(args.output, blendshapes, head, gaze, args.fps)
    else:
        files.write_json(args.output, blendshapes, head, gaze, args.fps, str(args.input))
    duration = len(audio) / motion.SAMPLE_RATE
    print(f"baked {args.input} ({duration:.2f} s) -> {args.output}: {len(blendshapes)} frames at {args.fps} fps "
          f"in {elapsed:.2f} s ({duration / max(elapsed, 1e-9):.1f}x real time)")
    if args.plot:
        plot_curves(args.plot, audio, blendshapes, head, args.fps, f"{args.input.name} ({args.steps} DDIM steps)")
        print(f"plot -> {args.plot}")
    return 0


def plot_curves(path: Path, audio: np.ndarray, blendshapes: np.ndarray, head: np.ndarray, fps: int,
                title: str) -> None:
    plt = pyplot()
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
