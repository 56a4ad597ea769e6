"""`ksdiff-runtime bake`: a speech file -> an animation file (CSV or JSON), plus an optional plot.

The CSV is laid out like a Live Link Face recording and the JSON carries the same frames with
their audio time and canonical names (``ksdiff_runtime.outputs.files``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends import BACKEND_NAMES, load_backend
from ksdiff_runtime.cli.plots import pyplot
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE, closure_for
from ksdiff_runtime.engine.controls import Controls, ControlsError, ControlStage
from ksdiff_runtime.engine.gate import gate_if_available
from ksdiff_runtime.engine.liveliness import LivelinessConfig
from ksdiff_runtime.engine.network_style import NetworkStyles
from ksdiff_runtime.engine.offline import bake_animations, clip_inputs
from ksdiff_runtime.engine.sampling import DEFAULT_MOOD_GUIDANCE, NO_MOOD_STYLES, mood_style, with_mood_guidance
from ksdiff_runtime.engine.stream import output_frames
from ksdiff_runtime.engine.style import NO_STYLE
from ksdiff_runtime.features import transcript
from ksdiff_runtime.inputs.guards import AudioInputError, load_audio, open_audio_file
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT
from ksdiff_runtime.outputs import files

log = logging.getLogger(__name__)

# The highest --fps: what the CSV's timecode can number. The model animates at motion.FPS; frames above it are
# interpolated between the model's, in the CSV and the JSON alike.
MAX_FPS = files.MAX_TIMECODE_FPS


def fps_value(text: str) -> int:
    """--fps: a whole number of frames a second from 1 to MAX_FPS; argparse's error otherwise."""
    try:
        fps = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of frames a second, got {text!r}") from None
    if fps < 1:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_FPS}, got {fps}")
    if fps > MAX_FPS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_FPS}, got {fps}: a Live Link Face CSV's timecode "
                                         f"numbers a second's frames in two digits (the model animates at {motion.FPS} "
                                         "fps; more frames are only interpolated)")
    return fps


def configure_bake(p: argparse.ArgumentParser) -> None:
    p.description = ("Bake speech files to facial animation: 52 ARKit blendshapes, head rotation and gaze "
        "per frame, timed on the audio clock. One file: the output's extension (.csv or .json) sets the format. "
        "Many files (a game's lines): the output is a folder with a file per line, baked in batches on every "
        "core in one process.")
    p.add_argument("input", type=Path, nargs="*",
                   help="speech files (wav/flac/ogg; any rate, any channels); default: the bundled sample")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="out.csv or out.json for one file; a folder for many (an existing one, or a new path without "
                   "an extension; OUTPUT/<name>.csv, see --format)")
    p.add_argument("--format", choices=("csv", "json"), default=None,
                   help="the files' format when the output is a folder (default csv)")
    p.add_argument("--text", help="transcript of the line (one file only; optional, improves articulation). "
                   "Without it a line's transcript is read from a .txt of the same name beside it, if there is one "
                   "(said in the output; --text '' bakes without it)")
    p.add_argument("--plot", type=Path, help="also write a plot of the main curves (PNG; its extension may name "
                   "another format matplotlib writes: .pdf, .svg, ...)")
    p.add_argument("--fps", type=fps_value, default=motion.FPS,
                   help=f"output frame rate, 1 to {MAX_FPS} (default {motion.FPS}, the model's own)")
    p.add_argument("--steps", type=int, default=4,
                   help="DDIM denoising steps, from 1 to the model's diffusion steps (the bundled model's: 1000) "
                   "(default 4)")
    p.add_argument("--seed", type=int, default=None,
                   help="noise seed, any integer (taken modulo 2^64, as serve takes a stream's int64 seed): the same "
                   "seed, the same animation (default: one from the audio, so the same "
                   "file bakes the same and different lines do not sway and blink alike; with many files, each "
                   "line's seed is made from this one and its audio, for the same reason)")
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
                   help="the --style take (which it needs) also reaches the network's own style input (its style "
                   "vector), not only the output's gains, as serve --network-style (docs/STYLE.md)")
    p.add_argument("--no-liveliness", dest="liveliness", action="store_false",
                   help="the model's eyes and head alone: no added blinks, gaze micro-saccades, head centring or "
                   "sway (as in serve)")
    p.add_argument("--full-context-recogniser", dest="streaming_recogniser", action="store_false",
                   help="read the posteriorgram from hama's full-context recogniser instead of the streaming "
                   "recogniser live streams run (docs/STREAMING_RECOGNISER.md)")
    p.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: the bundled one)")
    p.add_argument("--backend", default="auto", choices=BACKEND_NAMES, metavar="BACKEND",
                   help="inference backend: auto (tensorrt > torch-cuda > onnxruntime-cpu), torch, torch-cpu, "
                   "torch-cuda, onnxruntime, onnxruntime-cpu, onnxruntime-cuda, tensorrt")
    # the parser goes along, so flags that cannot go together are refused as argparse refuses a bad value
    p.set_defaults(func=functools.partial(run_bake, parser=p))


# lines baked in one batch (sorted by length, so a batch's windows end together); the batch runs in one part
# per core (engine/offline.py)
BATCH_LINES = 16


@dataclass
class Line:
    source: Path
    output: Path
    text: str | None  # --text, or the transcript beside the audio once read
    transcript: Path | None = None  # the .txt beside the audio, when --text is not given and there is one
    audio: np.ndarray | None = None  # 16 kHz mono, once read


def lines_to_bake(args: argparse.Namespace) -> list[Line]:
    """Each input and the file its animation goes to, checked before anything is baked."""
    inputs = args.input or [SAMPLE_SPEECH]
    folder = args.output.is_dir()  # or a new path without an extension (below)
    one_file = not folder and args.output.suffix.lower() in (".csv", ".json")
    if one_file and len(inputs) > 1:
        raise SystemExit(f"error: {len(inputs)} inputs need a folder to write to, not the file {args.output}")
    if not one_file and not folder and args.output.suffix:
        raise SystemExit(f"error: output {args.output} must end in .csv or .json (or be a folder, for many inputs: "
                         "an existing one, or a new path without an extension)")
    if one_file and args.format is not None:
        raise SystemExit(f"error: --format is for a folder of lines; {args.output}'s extension sets its format")
    if args.text is not None and len(inputs) > 1:
        raise SystemExit("error: --text is one line's transcript; for many, put each line's in a .txt beside it")
    if args.plot and len(inputs) > 1:
        raise SystemExit("error: --plot draws one line; bake that one on its own to plot it")
    outputs = [args.output] if one_file else [args.output / f"{i.stem}.{args.format or 'csv'}" for i in inputs]
    seen: dict[str, tuple[Path, Path]] = {}  # an output's name as a disk that ignores case sees it -> (input, output)
    for inp, out in zip(inputs, outputs, strict=True):
        key = same_file_key(out)
        if key in seen:
            first, first_out = seen[key]
            if first_out == out:
                raise SystemExit(f"error: {first} and {inp} would both be baked to {out}")
            raise SystemExit(f"error: {first} and {inp} would be baked to {first_out} and {out}, one file on a disk "
                             "that ignores letter case (Windows, macOS): rename one of them")
        seen[key] = (inp, out)
    return [Line(inp, out, args.text, None if args.text is not None or not inp.with_suffix(".txt").is_file()
                 else inp.with_suffix(".txt")) for inp, out in zip(inputs, outputs, strict=True)]


def same_file_key(path: Path) -> str:
    """``path`` as Windows and macOS disks compare names by default: letter case ignored (a.csv and A.csv are one
    file there)."""
    return str(path).lower()


def check_destinations(args: argparse.Namespace) -> None:
    """Where the animation (and the plot) will be written can be written: said before the model loads. The
    folders on the way are made when the first file is written; the nearest that exists must be a folder this
    process can make files in. (A line's own file can still fail then, e.g. a folder in its place: that line is
    named on stderr and the others are baked.)"""
    one_file = args.output.suffix.lower() in (".csv", ".json") and not args.output.is_dir()
    places = [("output", args.output, args.output.parent if one_file else args.output)]
    if args.plot:
        places.append(("plot", args.plot, args.plot.parent))
    for what, path, folder in places:
        existing = folder
        try:
            while not existing.exists() and existing.parent != existing:
                existing = existing.parent
            if not existing.is_dir():
                raise SystemExit(f"error: cannot write the {what} {shown(path)}: {shown(existing)} is a file, not a "
                                 "folder")
            # a file made and dropped there: no permission, a read-only disk or /proc fail as the real write would
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as exc:
            raise SystemExit(f"error: cannot write the {what} {shown(path)}: cannot make files in {shown(existing)} "
                             f"({exc.strerror or exc})") from None
        if path is not folder and path.is_file() and not os.access(path, os.W_OK):
            raise SystemExit(f"error: cannot write the {what} {shown(path)}: permission denied")


def plot_path(path: Path) -> Path:
    """The file --plot writes: its extension names a format matplotlib writes (without one, matplotlib adds
    .png); checked before anything is baked, as matplotlib itself (``pyplot``'s clear error without it)."""
    pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    if path.is_dir():
        raise SystemExit(f"error: --plot {shown(path)} is a folder; name the plot's file (e.g. line.png)")
    if not path.suffix:
        return path.with_name(path.name + ".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise SystemExit(f"error: --plot {shown(path)}: its extension sets the plot's format; matplotlib writes "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    if path.suffix.lower() == ".pgf":  # matplotlib's PGF writer runs a TeX program
        import matplotlib

        tex = matplotlib.rcParams["pgf.texsystem"]
        if shutil.which(tex) is None:
            raise SystemExit(f"error: --plot {shown(path)}: a .pgf plot needs {tex} (TeX), which is not installed; "
                             "use .pdf, .svg or .png")
    return path


def shown(path: Path) -> str:
    """A path as printed: a file name that is not UTF-8 (held as surrogate escapes) shows its bytes as \\xNN
    instead of failing to print (stdout is strict in a UTF-8 locale)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace") if sys.platform != "win32" else str(path)


def run_bake(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.network_style and args.style == NO_STYLE:
        # the network style is the style take's vector (engine/network_style.py): without a take the bake would be
        # the same as without the flag
        parser.error("--network-style puts the --style take on the network's style input: it needs --style (a "
                     "built-in style or a take's file)")
    lines = lines_to_bake(args)
    if args.steps < 1:
        raise SystemExit(f"error: --steps must be at least 1, got {args.steps}")
    if args.plot:
        args.plot = plot_path(args.plot)
    check_destinations(args)
    try:
        controls = Controls.from_dict({"mood": args.mood, "mood_intensity": args.mood_intensity, "style": args.style},
                                      allow_files=True)
        guidance = with_mood_guidance(None, args.mood_guidance)
    except (ControlsError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if len(lines) == 1:
        read_line(lines[0], alone=True)  # a file that cannot be read is said before the model loads
    # one intra-op thread on the CPU, as `serve` runs it: a clip's windows go one after another (each continues
    # the last), and at batch 1 a second thread slowed these graphs (the 6.8 s sample's model 75 -> 92-99 ms);
    # a batch of lines runs in one part per core at once instead
    backend = load_backend(args.backend, args.checkpoint or DEFAULT_CHECKPOINT, fallback=True, threads=1)
    if args.steps > len(backend.constants.alpha_bar):  # the checkpoint's own number: known once it is loaded
        raise SystemExit(f"error: --steps must be in 1..{len(backend.constants.alpha_bar)} (the model's diffusion "
                         f"steps), got {args.steps}")
    if args.network_style:  # the take's vector and the network's response to it (engine/network_style.py)
        controls = NetworkStyles(backend).controls(controls)
    # the network's style: the take's with --network-style, moved by the mood's, as a stream's (engine/sampling.py)
    base = None if controls.style is None or controls.style.network is None else controls.style.network.vector
    style, missing = mood_style(backend.constants, base, controls.mood, controls.mood_intensity, args.mood_guidance)
    if missing:
        log.warning(NO_MOOD_STYLES)
    closure = closure_for(backend.constants.cfg.front_end.name, DEFAULT_CLOSURE if args.closure else None)
    gate = gate_if_available(args.voice_gate)
    started = time.perf_counter()
    baked, seconds = 0, 0.0
    # shortest first, so a batch's lines end together; a batch's audio is read when it is baked and dropped after
    ordered = sorted(lines, key=lambda line: stored_seconds(line.source))
    for k in range(0, len(ordered), BATCH_LINES):
        t0 = time.perf_counter()
        batch = [line for line in ordered[k : k + BATCH_LINES]
                 if line.audio is not None or read_line(line, alone=len(lines) == 1)]
        if not batch:
            continue
        for line in batch:
            if line.text:
                warn_if_cut(line, backend.constants.cfg.max_text_tokens)
        inputs = [clip_inputs(backend, line.audio, line.text, fps=args.fps,
                              streaming_recogniser=args.streaming_recogniser) for line in batch]
        anims = bake_animations(
            backend, inputs, steps=args.steps, seeds=line_seeds(args.seed, inputs, alone=len(lines) == 1),
            style=None if style is None else np.repeat(style[None], len(batch), axis=0),
            guidance=None if style is None else guidance, closure=closure, gate=gate,
            liveliness=LivelinessConfig() if args.liveliness else None)
        elapsed = time.perf_counter() - t0
        for line, anim in zip(batch, anims, strict=True):
            # a file that cannot be written (a folder in its place, no permission, a full disk) is named on
            # stderr, as one that cannot be read, and the other lines are still written
            if write_line(args, line, anim, controls, elapsed if len(lines) == 1 else None):
                baked, seconds = baked + 1, seconds + line.audio.size / motion.SAMPLE_RATE
            line.audio = None
    if len(lines) > 1:
        elapsed = time.perf_counter() - started
        print(f"baked {baked} of {len(lines)} lines ({seconds:.1f} s of audio) -> {shown(args.output)} in "
              f"{elapsed:.2f} s ({seconds / max(elapsed, 1e-9):.1f}x real time)")
    return 0 if baked == len(lines) else 1


def line_seeds(seed: int | None, inputs: list, alone: bool) -> list[int] | None:
    """The lines' seeds: None (each its audio's, ClipInputs.seed) without --seed; --seed itself for one line;
    for many, one made from --seed and each line's audio, so they do not all sway and blink alike."""
    if seed is None:
        return None
    if alone:
        return [seed]
    return [zlib.crc32(f"{seed}:{clip.seed}".encode()) for clip in inputs]


def stored_seconds(path: Path) -> float:
    """An audio file's duration from its header, for the order lines are baked in: opened as reading it opens it
    (``open_audio_file``). A file that cannot be opened sorts first as 0 s: reading it, in its batch, names it
    and says why."""
    try:
        with open_audio_file(path) as f:
            return f.frames / f.samplerate
    except (AudioInputError, OSError):
        return 0.0


def read_line(line: Line, alone: bool) -> bool:
    """Read a line's audio (16 kHz mono, repaired). A file that cannot be read, or holds no audio, stops a bake of
    one line (``AudioInputError``); among many it is named on stderr and the others are baked."""
    try:
        line.audio, report = load_audio(line.source)
        if line.audio.size == 0:  # no 16 kHz sample: nothing to animate, and no file is written for it
            held = f"{report.n_samples} samples at {report.sample_rate} Hz, under one at 16 kHz" if report.n_samples \
                else "0 samples"
            raise AudioInputError(f"no audio in {shown(line.source)}: the file holds {held}")
        if line.transcript is not None:
            line.text = read_transcript(line.transcript)
    except AudioInputError as exc:
        line.audio = None
        if alone:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return False
    if report.n_nonfinite or report.n_clipped:
        log.warning("%s: %d non-finite and %d clipped samples were sanitised", line.source, report.n_nonfinite,
                    report.n_clipped)
    return True


def warn_if_cut(line: Line, max_tokens: int) -> None:
    """One warning when the model reads only the start of a line's transcript (its first ``max_tokens`` phoneme
    tokens, ``transcript.read_transcript``): how many of its words it reads."""
    assert line.text is not None
    reading = transcript.read_transcript(line.text, max_tokens)  # G2P's words are cached: the line's reuses them
    if reading.left_out:
        total = sum(1 for _ in transcript.words(line.text))
        log.warning("%s: only the start of the transcript is used: its first %d of %d words%s (the model reads at "
                    "most %d phoneme tokens)", shown(line.source), reading.words, total,
                    ", the last in part" if reading.last_in_part else "", max_tokens)


def read_transcript(path: Path) -> str | None:
    """A line's transcript from the .txt beside its audio (None when it is empty)."""
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise AudioInputError(f"cannot read the transcript {path} (UTF-8 text expected): {exc}") from None


def write_line(args: argparse.Namespace, line: Line, anim, controls: Controls, elapsed: float | None) -> bool:
    """A baked line's frames at the output rate, with the controls a stream applies, to its file (and plot).
    False, with the file and the reason on stderr, when it cannot be written."""
    assert line.audio is not None
    n_out = output_frames(line.audio.size, args.fps)  # one frame per started frame period, as a stream yields
    blendshapes = files.resample_frames(anim.blendshapes, motion.FPS, args.fps, n_out).clip(0.0, 1.0)
    head = files.resample_frames(anim.head, motion.FPS, args.fps, n_out)
    if controls.changes_values:  # the mood and style, as a stream's controls apply them
        shaped = ControlStage(controls, args.fps, made="bake").shape(np.concatenate([blendshapes, head], axis=1))
        blendshapes, head = shaped[:, : motion.NUM_BLENDSHAPES], shaped[:, motion.NUM_BLENDSHAPES :]
    gaze = motion.gaze_from_blendshapes(blendshapes)
    try:
        line.output.parent.mkdir(parents=True, exist_ok=True)
        if line.output.suffix.lower() == ".csv":
            files.write_csv(line.output, blendshapes, head, gaze, args.fps)
        else:
            files.write_json(line.output, blendshapes, head, gaze, args.fps, shown(line.source))
    except OSError as exc:
        return cannot_write("the animation of", line.source, line.output, exc)
    duration = len(line.audio) / motion.SAMPLE_RATE
    timing = "" if elapsed is None else f" in {elapsed:.2f} s ({duration / max(elapsed, 1e-9):.1f}x real time)"
    said = "" if line.transcript is None or line.text is None else \
        f", with the transcript in {shown(line.transcript)}"
    print(f"baked {shown(line.source)} ({duration:.2f} s{said}) -> {shown(line.output)}: {len(blendshapes)} frames "
          f"at {args.fps} fps{timing}")
    if args.plot:
        try:
            args.plot.parent.mkdir(parents=True, exist_ok=True)
            plot_curves(args.plot, line.audio, blendshapes, head, args.fps,
                        f"{shown(Path(line.source.name))} ({args.steps} DDIM steps)")
        except (OSError, RuntimeError, ValueError) as exc:  # a full disk; a format's writer that fails (matplotlib)
            return cannot_write("the plot of", line.source, args.plot, exc)
        print(f"plot -> {shown(args.plot)}")
    return True


def cannot_write(what: str, source: Path, path: Path, exc: Exception) -> bool:
    """Say on stderr that a line's file could not be written, and why (no traceback); False."""
    filename = getattr(exc, "filename", None)
    where = shown(Path(filename)) if isinstance(filename, str) and Path(filename) != path else None
    reason = getattr(exc, "strerror", None) or str(exc)
    print(f"error: cannot write {what} {shown(source)} to {shown(path)}: {reason}"
          f"{'' if where is None else f' ({where})'}", file=sys.stderr)
    return False


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
    with files.written_whole(path) as part:
        fig.savefig(part, dpi=110, format=path.suffix[1:].lower())
    plt.close(fig)
