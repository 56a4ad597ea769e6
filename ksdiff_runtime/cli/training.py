"""Commands that make and judge the model: corpus, train, eval, eval-stream, the front-end studies.

They need the training extras (torch and friends); without them ``ksdiff-runtime`` says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ksdiff_runtime.backends.select import BACKEND_NAMES, load_backend
from ksdiff_runtime.engine.presets import LINE_EXPRESSION_STEPS, Preset, get_preset
from ksdiff_runtime.features.frontend import RECOGNISERS
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT
from ksdiff_runtime.training import (
    corpus,
    evaluate,
    frontend_probe,
    frontend_study,
    real_eval,
    realworld,
    stream_eval,
    teacher,
    train,
)
from ksdiff_runtime.training.dataset import CorpusError, read_manifest
from ksdiff_runtime.training.real_eval import RealEvalError

log = logging.getLogger(__name__)

# a user's mistake (a corpus that is not there or cut short, a missing optional package, a setting a run cannot
# use): the message names what to fix, so it is printed as `error: ...` (exit 1), not under a traceback.
# (Checkpoint errors are the CLI's own, cli/__init__.py.)
USER_ERRORS = (CorpusError, RealEvalError, train.TrainConfigError)


def user_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except USER_ERRORS as exc:
            raise SystemExit(f"error: {exc}") from exc

    return wrapped


def configure_corpus(p: argparse.ArgumentParser) -> None:
    p.description = corpus.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--out", default="data/corpus", help="output folder (default: data/corpus)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--train-personas", type=int, default=240, help="training voices (default 240)")
    p.add_argument("--test-personas", type=int, default=40, help="held-out voices (default 40)")
    p.add_argument("--clips-per-persona", type=int, default=8, help="train clips per persona (test: 3/4 of it)")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--sample-out", default=None, help="also write a bundled sample wav (+ .txt) here")
    p.add_argument("--real-world", action="store_true",
                   help="append the real-world training clips (non-speech at rest, speech under noise and music, "
                   "recorded prompts aligned by PocketSphinx; training/realworld.py) to the corpus at --out, "
                   "generating the synthetic corpus first only where --out has none")
    p.add_argument("--nonspeech-clips", type=int, default=300, help="with --real-world: non-speech clips")
    p.add_argument("--mixed-clips", type=int, default=400, help="with --real-world: speech-under-sound clips")
    p.add_argument("--max-real", type=int, default=0, help="with --real-world: at most this many prompts (0 = all)")
    p.set_defaults(func=run_corpus)


@user_errors
def run_corpus(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    if args.sample_out:
        text = corpus.write_sample(args.sample_out, args.seed)
        log.info("wrote %s: %s", args.sample_out, text)
    if not (args.real_world and (Path(args.out) / "manifest.json").is_file()):
        clips_test = max(1, round(args.clips_per_persona * 3 / 4))
        corpus.generate(args.out, args.seed, args.train_personas, args.test_personas, args.clips_per_persona,
                        clips_test, args.workers)
    if args.real_world:
        realworld.add_real_world(Path(args.out), args.nonspeech_clips, args.mixed_clips, args.max_real, args.seed)
    manifest = read_manifest(Path(args.out))
    dur = sum(c["duration_s"] for c in manifest["clips"])
    log.info("wrote %d clips (%.1f min of audio) to %s in %.0f s", len(manifest["clips"]), dur / 60, args.out,
             time.monotonic() - t0)
    return 0


def configure_train(p: argparse.ArgumentParser) -> None:
    p.description = ("Train KSDiff on the corpus made by `ksdiff-runtime corpus`. Run again to resume from "
                     "<out>/last.pt. Ctrl-C (or SIGTERM) stops it after the step under way, checkpointed; twice, at "
                     "once (last.pt as of its last checkpoint). Uses CUDA when present, the CPU otherwise.")
    p.add_argument("--config", type=Path, default=None, help="TOML file with [model] and [train] tables")
    p.add_argument("--corpus", help="corpus folder (overrides the config)")
    p.add_argument("--out", help="run folder (overrides the config)")
    p.add_argument("--max-steps", type=int, help="total optimisation steps (overrides the config)")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes, checkpointed (0: no limit)")
    p.add_argument("--lr", type=float, help="peak learning rate (overrides the config)")
    p.add_argument("--warmup-steps", type=int, help="steps of linear learning-rate warm-up (overrides the config)")
    p.add_argument("--batch-size", type=int, help="windows per step (overrides the config)")
    p.add_argument("--closure-weight", type=float,
                   help="weight of the closure loss: lips left open where the teacher's are shut (overrides config)")
    p.add_argument("--opening-weight", type=float,
                   help="weight of the opening loss, the closure loss's other side: lips shut where the teacher's "
                   "are clearly open (overrides config)")
    p.add_argument("--context-drop", type=float, metavar="SHARE",
                   help="share of whole-clip windows (live-shaped ones only with --context-drop-live) trained with "
                   "their previous frames hidden, as at a take's start, so the network learns a persona's smile from "
                   "the style (overrides the config)")
    p.add_argument("--context-drop-live", action="store_true", default=None,
                   help="hide the previous frames of that share of live-shaped windows too (overrides the config)")
    p.add_argument("--train-only", metavar="MODULES",
                   help="with --init-from: fine-tune only these of the model's modules, comma-separated (e.g. "
                   "den_expr, the expression denoiser, or head, the head's own branch); the rest stays as the "
                   "checkpoint has it (overrides the config)")
    p.add_argument("--live-windows", type=float, metavar="SHARE",
                   help="share of steps trained on live-shaped windows: the low-latency preset's short window, "
                   "scored on its hop frame only, at its one noise step, its context made by the model itself "
                   "hop by hop (overrides the config)")
    p.add_argument("--live-context", choices=["self", "teacher"],
                   help="a live window's context frames: made by the model (self, the default) or the teacher's")
    p.add_argument("--live-features", choices=["block", "preset"],
                   help="a live window's features: the front-end's block schedule (block, the default) or the live "
                   "preset's own, what its streams compute (preset: computed once into the feature cache)")
    p.add_argument("--live-face-only", dest="live_head", action="store_false", default=None,
                   help="score only the face on live windows, not the head (overrides the config)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (overrides the config; 0 = all cores)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default: auto)")
    p.add_argument("--ship", type=Path, help="also write the EMA weights in float16 here when done")
    p.add_argument("--init-from", type=Path,
                   help="fine-tune: start from this checkpoint's weights and motion statistics (a fresh optimiser; "
                   "ignored when resuming)")
    p.set_defaults(func=run_train)


@user_errors
def run_train(args: argparse.Namespace) -> int:
    model_cfg, cfg = train.load_config(args.config)
    overrides: dict[str, object] = {}
    for name in ("corpus", "out", "max_steps", "max_minutes", "lr", "warmup_steps", "batch_size", "device",
                 "init_from", "closure_weight", "opening_weight", "context_drop", "context_drop_live", "train_only",
                 "live_windows", "live_context", "live_head", "live_features", "threads"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = str(value) if name == "init_from" else value
    train.train(model_cfg, dataclasses.replace(cfg, **overrides), ship=args.ship)  # validated again
    return 0


def configure_eval(p: argparse.ArgumentParser) -> None:
    p.description = ("Score a KSDiff checkpoint against the teacher on held-out voices and sentences: mouth error, "
                     "bilabial closure, rest in silence, jawOpen correlation, BeatAlign, diversity, style "
                     "following, KEL keyframe F1; at 50, 4 and 2 DDIM steps, with baselines and ablations.")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="model checkpoint")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder")
    p.add_argument("--cache", type=Path, default=Path("cache/features"), help="feature cache folder")
    p.add_argument("--max-clips", type=int, default=0, help="evaluate on at most this many clips (0 = all)")
    p.add_argument("--out", type=Path, default=None,
                   help="where eval.json/.md/.png go (default runs/eval; with --real runs/eval-real)")
    p.add_argument("--real", action="store_true",
                   help="instead: score the model on real recorded voices (lip closure on bilabials aligned by "
                   "PocketSphinx, against a loudness follower; rest in silence), on non-speech sounds and on speech "
                   "under noise, as bake and live stream, with and without the voice gate, and with the bilabial "
                   "closure and the gate as serve and bake run by default (training/real_eval.py)")
    p.add_argument("--backend", default="onnxruntime", choices=BACKEND_NAMES,
                   help="with --real: the backend that runs the checkpoint")
    p.add_argument("--int8", action="store_true",
                   help="with --real: ONNX Runtime on the CPU runs the int8 denoiser, as `serve` does "
                   "(docs/BACKENDS.md)")
    p.add_argument("--quick", action="store_true",
                   help="instead: only the 4-step rows (offline and streaming features) of --checkpoint and every "
                   "--ablation, side by side on the same clips (minutes, not the full table's many)")
    p.add_argument("--mode", action="append", choices=real_eval.MODES, default=[],
                   help="with --real: bake and/or live (repeatable; default both)")
    p.add_argument("--ablation", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="also score another checkpoint at 4 steps as a row NAME (repeatable)")
    p.add_argument("--recogniser", choices=RECOGNISERS, default=None,
                   help="score every checkpoint on this phoneme recogniser's features (default: each on the one it "
                   "was trained on; the runtime serves 'streaming' unless told otherwise)")
    p.set_defaults(func=run_eval)


@user_errors
def run_eval(args: argparse.Namespace) -> int:
    if args.real:
        real_eval.check_installed()  # before the backend: its export can take minutes
        backend = load_backend(args.backend, args.checkpoint, int8=args.int8)
        result = real_eval.evaluate_real(backend, args.out or Path("runs/eval-real"), args.max_clips,
                                         tuple(args.mode) or real_eval.MODES)
        print(real_eval.format_report(result))
        return 0
    ablations = {}
    for item in args.ablation:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --ablation takes NAME=CHECKPOINT, got {item!r}")
        ablations[name] = Path(path)
    if args.quick:
        evaluate.quick_compare({"checkpoint": args.checkpoint, **ablations}, args.corpus, args.cache, args.max_clips,
                               args.out or Path("runs/eval-quick"), recogniser=args.recogniser)
        return 0
    evaluate.evaluate(args.checkpoint, args.corpus, args.cache, args.max_clips, args.out or Path("runs/eval"),
                      ablations=ablations, recogniser=args.recogniser)
    return 0


def configure_eval_stream(p: argparse.ArgumentParser) -> None:
    p.description = ("Stream every held-out clip through the engine at once, in random-sized chunks, for each "
                     "latency preset, and compare mouth, rest, jaw and head metrics with whole-clip animation.")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="model checkpoint")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder")
    p.add_argument("--cache", type=Path, default=Path("cache/features"), help="feature cache folder")
    p.add_argument("--max-clips", type=int, default=80, help="evaluate on at most this many clips (0 = all)")
    p.add_argument("--out", type=Path, default=Path("runs/eval-stream"), help="where stream_quality.json/.md go")
    p.add_argument("--backend", default="torch-cpu", choices=BACKEND_NAMES, help="backend the streams run on")
    p.add_argument("--int8", action="store_true",
                   help="ONNX Runtime on the CPU runs the streams' denoiser in int8, as `serve` does "
                   "(docs/BACKENDS.md; the whole-clip reference stays float)")
    p.add_argument("--variant", action="append", default=[], metavar="PRESET:FIELD=VALUE,...",
                   help="score a preset with fields changed instead of the two presets (repeatable), e.g. "
                   "'low-latency:hop_frames=2,feature_block_frames=2' (how the sweeps in docs/ENGINE.md were run)")
    p.add_argument("--lines", action="append", type=int, default=[], metavar="STEPS",
                   help="also animate every clip as a line (mode line: pushed whole, whole windows) at STEPS DDIM "
                   "steps (repeatable)")
    p.add_argument("--line-face-steps", type=int, default=LINE_EXPRESSION_STEPS, metavar="N",
                   help=f"with --lines: the face keeps its prediction after N of the steps, the head takes them all "
                   f"(default {LINE_EXPRESSION_STEPS}, what lines run; 0: the face takes every step too)")
    p.add_argument("--line-preset", metavar="PRESET:FIELD=VALUE,...", default=None,
                   help="with --lines: the engine preset lines derive from, as --variant takes it (default "
                   "low-latency), e.g. 'low-latency:head_smoothing_ms=0.0'")
    p.add_argument("--null-style", action="store_true",
                   help="give the network the null style in every row, as `serve` does for a neutral stream (default: "
                   "each clip's reference style, another clip of its persona, as the SDK can give a stream)")
    p.add_argument("--closure", action="store_true",
                   help="also score each preset's live streams with the bilabial closure (the lips sealed where the "
                   "recogniser hears /p b m/, engine/closure.py), as `serve` runs them")
    p.add_argument("--windowed", action="store_true",
                   help="also score each preset's live streams conditioned window by window, re-encoding the "
                   "encoder context every hop (as before the stream conditioner), for comparison")
    p.add_argument("--windowed-recogniser", action="store_true",
                   help="also score each preset's live streams with every hop re-recognising its window of audio, "
                   "and --lines with hama's full-context recogniser (as before the streaming recogniser)")
    p.add_argument("--recogniser-weights", type=Path, default=None, metavar="NPZ",
                   help="the streaming recogniser's weights (training.streaming_distil --export-weights; default: the "
                   "shipped ones), docs/STREAMING_RECOGNISER.md")
    p.add_argument("--recogniser-lookahead", type=int, default=None, choices=range(4),
                   help="the streaming recogniser's lookahead in 20 ms frames (default: the runtime's, 0)")
    p.set_defaults(func=run_eval_stream)


def parse_variant(text: str) -> Preset:
    """'low-latency:hop_frames=2,steps=1' -> that preset with those fields (numbers, or 'none')."""
    name, _, changes = text.partition(":")
    preset = get_preset(name)
    fields: dict[str, object] = {}
    for item in filter(None, changes.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in {f.name for f in dataclasses.fields(Preset)} or key == "name":
            raise SystemExit(f"error: --variant {text!r}: {item!r} is not FIELD=VALUE for a preset field")
        fields[key] = None if value.lower() == "none" else (float(value) if "." in value else int(value))
    return dataclasses.replace(preset, name=f"{name}[{changes}]" if changes else name, **fields)


@user_errors
def run_eval_stream(args: argparse.Namespace) -> int:
    variants = [parse_variant(v) for v in args.variant] or None
    stream_eval.stream_eval(args.checkpoint, args.corpus, args.cache, args.max_clips, args.out, args.backend,
                            variants, args.lines, args.windowed, args.windowed_recogniser,
                            args.recogniser_weights, args.recogniser_lookahead, args.line_face_steps or None,
                            parse_variant(args.line_preset) if args.line_preset else None, args.null_style,
                            args.closure, int8=args.int8)
    return 0


def configure_frontend_study(p: argparse.ArgumentParser) -> None:
    p.description = frontend_study.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--corpus", type=Path, default=Path("data/corpus/clips"), help="folder of *.npz clips")
    p.add_argument("--max-seconds", type=float, default=12.0, help="total speech to evaluate")
    p.add_argument("--block-ms", type=int, default=100, help="front-end block (default 100 ms)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/frontend_stability.json"), help="results file")
    p.add_argument("--plot", type=Path, default=Path("benchmarks/frontend_stability.png"), help="plot file")
    p.set_defaults(func=run_frontend_study)


def run_frontend_study(args: argparse.Namespace) -> int:
    frontend_study.study(args.corpus, args.max_seconds, args.block_ms, args.json, args.plot)
    return 0


def configure_frontend_probe(p: argparse.ArgumentParser) -> None:
    p.description = frontend_probe.__doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder")
    p.add_argument("--cache", type=Path, default=Path("cache/features"), help="feature cache folder")
    p.add_argument("--left-context-ms", type=int, default=250, help="front-end left context of the cached features")
    p.add_argument("--lookahead-ms", type=int, default=60, help="front-end lookahead of the cached features")
    p.add_argument("--max-frames", type=int, default=60_000, help="training frames for the probe")
    p.add_argument("--wav2vec2-dir", type=Path, help="also probe a local wav2vec2/HuBERT model directory")
    p.add_argument("--json", type=Path, default=Path("benchmarks/frontend_probe.json"), help="results file")
    p.set_defaults(func=run_frontend_probe)


def run_frontend_probe(args: argparse.Namespace) -> int:
    frontend_probe.probe_front_ends(args.corpus, args.cache, args.left_context_ms, args.lookahead_ms,
                                    args.max_frames, args.wav2vec2_dir, args.json)
    return 0


def configure_teacher_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plot", required=True, help="output PNG path")
    p.add_argument("--text", default="Bob bought a blue map, who knew?", help="the sentence")
    p.set_defaults(func=run_teacher_plot)


def run_teacher_plot(args: argparse.Namespace) -> int:
    teacher.plot_curves(args.plot, args.text)
    return 0
