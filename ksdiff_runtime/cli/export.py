"""`ksdiff-runtime export`: a checkpoint's two graphs to ONNX, checked against torch."""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT, ExportError
from ksdiff_runtime.backends.export import DEFAULT_EXPORT_DIR, export_model
from ksdiff_runtime.features.recogniser import export_onnx
from ksdiff_runtime.features.recogniser_onnx import GRAPH
from ksdiff_runtime.features.streaming_recogniser import export_stream_step
from ksdiff_runtime.features.streaming_recogniser_onnx import STEP_GRAPH
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT


def configure_export(p: argparse.ArgumentParser) -> None:
    p.description = ("Export a checkpoint's graphs (conditioner, denoiser and its two paths, stream conditioner, style "
                     "encoder) to float32 ONNX with dynamic batch and time axes, and the denoiser with its face's path "
                     "in int8 for ONNX Runtime on the CPU, plus constants.npz and manifest.json, then check ONNX "
                     "Runtime against torch and the int8 graph against the float one.")
    p.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: the bundled one)")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_EXPORT_DIR,
                   help=f"export directory, replaced atomically if it holds an export; a folder holding anything "
                   f"else is refused, never deleted (default {DEFAULT_EXPORT_DIR})")
    p.add_argument("--ship", action="store_true", help=f"export the bundled checkpoint to {SHIPPED_EXPORT}, the export "
                   "a runtime without torch uses (after retraining and shipping a new checkpoint)")
    p.add_argument("--recogniser", action="store_true", help="instead, write the phoneme recogniser's parameter-free "
                   f"graphs, {GRAPH.name} and {STEP_GRAPH.name} (the streaming step), to {GRAPH.parent} (the weights "
                   "are supplied at load time)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_export)


# the recogniser's graphs `export --recogniser` writes, each with the function that writes it to a path
RECOGNISER_GRAPHS: tuple[tuple[Path, Callable[[Path], None]], ...] = (
    (GRAPH, export_onnx), (STEP_GRAPH, export_stream_step))


def write_graphs(graphs: Sequence[tuple[Path, Callable[[Path], None]]]) -> None:
    """Write each graph to a temporary file beside its path, and only once all are written rename each into place
    (os.replace: atomic). The writers write their file in steps (torch's export, then the weights taken out), so
    a failure or Ctrl-C part-way through left a truncated or weight-laden graph where the runtime loads it; now
    the graphs there stay as they were, both of them, and the temporary files are removed."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    written: list[tuple[Path, Path]] = []
    replaced: list[Path] = []
    try:
        for path, write in graphs:
            tmp = path.with_name(f".{path.name}.tmp-{tag}")
            written.append((tmp, path))
            write(tmp)
        for tmp, path in written:
            os.replace(tmp, path)
            replaced.append(path)
    except OSError as exc:  # a read-only package folder, a full disk
        where = f" ({exc.filename})" if exc.filename else ""
        left = ("the graphs there are unchanged" if not replaced else
                f"only {', '.join(p.name for p in replaced)} was replaced: run it again")
        raise ExportError(f"cannot write the recogniser's graphs to {graphs[0][0].parent}: {exc.strerror or exc}"
                          f"{where}; {left}") from exc
    finally:
        for tmp, _ in written:
            with contextlib.suppress(OSError):
                tmp.unlink()


def run_export(args: argparse.Namespace) -> int:
    if args.recogniser:
        write_graphs(RECOGNISER_GRAPHS)
        for graph, _ in RECOGNISER_GRAPHS:
            print(f"exported a recogniser graph (no weights) -> {graph} ({graph.stat().st_size} bytes)")
        return 0
    if args.ship and args.checkpoint not in (None, DEFAULT_CHECKPOINT):
        raise SystemExit("error: --ship exports the bundled checkpoint; leave --checkpoint out")
    # `-o ~/exports` quoted, or `--output=~/exports` (which the shell leaves as it is): the home folder, not a "~"
    out = SHIPPED_EXPORT if args.ship else args.output.expanduser()
    result = export_model(args.checkpoint or DEFAULT_CHECKPOINT, out, progress=not args.no_progress)
    m = result.manifest
    print(f"exported {m['checkpoint']['name']} -> {result.path} (opset {m['opset']}, model_hash "
          f"{m['model_hash'][:16]})")
    for graph, err in result.errors.items():
        print(f"  {graph}: ONNX Runtime vs torch max abs error {err:.2e}")
    return 0
