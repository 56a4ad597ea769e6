"""The `ksdiff-runtime` command line: the one place the runtime's jobs are exposed as commands.

The library (sources, inputs, engine, backends, outputs, server) knows nothing of argparse; each
command here reads its flags and calls it. ``COMMANDS`` lists every command with its one-line
help, so ``ksdiff-runtime --help`` needs no heavy import; only the chosen command's module is
imported (``configure_<command>`` adds its flags and sets ``func``), so ``serve`` does not pay
for torch and a light install (no torch) still runs every command that does not train.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys

from ksdiff_runtime.cli import logs

# (command, module under ksdiff_runtime.cli, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("serve", "serve", "run the runtime: mic, files and SDK pushes in, ARKit frames out over ZeroMQ"),
    ("devices", "devices", "list the audio input devices (microphones) the runtime can record from"),
    ("keys", "keys", "make CurveZMQ key pairs for serving beyond this machine (server and clients)"),
    ("bake", "bake", "animate a speech file offline to CSV (Live Link Face layout) or JSON"),
    ("demo", "demo", "run serve on the bundled sample speech with an SDK client; print fps and latency, plot"),
    ("export", "export", "export the model to ONNX (for the onnxruntime and tensorrt backends)"),
    ("corpus", "training", "generate the synthetic training corpus (espeak-ng speech + procedural teacher)"),
    ("train", "training", "train KSDiff on the generated corpus (resumable)"),
    ("eval", "training", "evaluate a checkpoint on the held-out split (table, JSON, plot)"),
    ("eval-stream", "training", "held-out metrics through the streaming engine against whole-clip animation"),
    ("frontend-study", "training", "measure how much lookahead / left context the phoneme recogniser needs"),
    ("frontend-probe", "training", "compare acoustic front-ends on the held-out split with a linear probe"),
    ("teacher-plot", "training", "plot the procedural teacher's curves for one sentence"),
)
# what a command's module needs that a light install (no torch) lacks
NEEDS_TRAINING_EXTRAS = "this command needs the training extras: pip install 'ksdiff-runtime[train]'"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ksdiff-runtime",
        description="Speech-driven facial animation (KSDiff) for game engines and VTubing apps.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for command, module_name, help_text in COMMANDS:
        p = sub.add_parser(command, help=help_text, description=help_text)
        if command == chosen:
            _configure(p, command, module_name)
    return parser


def _configure(p: argparse.ArgumentParser, command: str, module_name: str) -> None:
    try:
        module = importlib.import_module(f"ksdiff_runtime.cli.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "onnx", "onnxscript", "matplotlib", "tqdm"):
            raise
        missing = exc.name

        def unavailable(args: argparse.Namespace) -> int:
            print(f"error: {command}: {missing} is not installed; {NEEDS_TRAINING_EXTRAS}", file=sys.stderr)
            return 2

        p.description = f"{p.description} (not available here: {missing} is not installed; {NEEDS_TRAINING_EXTRAS})"
        p.set_defaults(func=unavailable, unavailable=True)  # its own flags are not known here: accepted, unread
        return
    getattr(module, "configure_" + command.replace("-", "_"))(p)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(argv)  # imports the command's module: torch's import alone takes seconds
    except KeyboardInterrupt:  # Ctrl-C while it does: nothing has run yet
        print("interrupted", file=sys.stderr)
        return 130
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logs.configure(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = argv  # the command line, for a command that runs itself again (serve --restart)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        # a bad input file, checkpoint or hama install: the message names the file; no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C (serve handles it itself, and stops cleanly); files are written whole or not
        print("interrupted", file=sys.stderr)
        return 130


def user_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports in a line, without a traceback. Imported only when one is raised: their modules
    import the model's and the front-end's (scipy's 1.1 s among them), which ``--help``, ``devices``, ``keys`` and
    ``serve --restart``'s supervisor do not need."""
    from ksdiff_runtime.backends.base import BackendError
    from ksdiff_runtime.features.hama_weights import HamaFormatError
    from ksdiff_runtime.inputs.guards import AudioInputError
    from ksdiff_runtime.model.config import CheckpointError

    return AudioInputError, BackendError, CheckpointError, HamaFormatError


def run() -> None:
    """The ``ksdiff-runtime`` command: ``main``, then exit. The process ends here, so the collector is told to leave
    what exists alone: its last full pass walked the model's and runtime's ~220k objects, about a second of every
    exit (``python -m benchmarks.stop_time``); the OS frees them."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
