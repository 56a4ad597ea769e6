"""The `ksdiff-runtime` command: one subcommand per job, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, subcommand) pairs; each module has `add_parser(subparsers)` which registers its
# subcommand with a `func(args) -> int` default. Imported lazily so `--help` stays fast and
# a subcommand's heavy dependencies load only when it runs.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("ksdiff_runtime.training.corpus", "corpus"),
    ("ksdiff_runtime.training.frontend_study", "frontend-study"),
    ("ksdiff_runtime.training.frontend_probe", "frontend-probe"),
    ("ksdiff_runtime.training.train", "train"),
    ("ksdiff_runtime.training.evaluate", "eval"),
    ("ksdiff_runtime.training.stream_eval", "eval-stream"),
    ("ksdiff_runtime.bake", "bake"),
    ("ksdiff_runtime.backends.export", "export"),
    ("ksdiff_runtime.bench", "bench"),
    ("ksdiff_runtime.serve.publish_bench", "bench-publish"),
    ("ksdiff_runtime.serve.command", "serve"),
    ("ksdiff_runtime.demo", "demo"),
    ("ksdiff_runtime.serve.sources", "devices"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ksdiff-runtime",
        description="Speech-driven facial animation (KSDiff) for game engines and VTubing apps.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, command in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("ksdiff_runtime"):
                continue  # a subcommand whose module is not part of this build
            raise
        module.add_parser(sub)
        assert command in sub.choices, f"{module_name} did not register {command!r}"
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ksdiff_runtime.audio.guards import AudioInputError
    from ksdiff_runtime.backends.base import BackendError
    from ksdiff_runtime.model.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (AudioInputError, BackendError, CheckpointError) as exc:
        # user errors (a bad input file or checkpoint): the message names the file; no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
