"""`python -m ksdiff_runtime.cli`: the same as the `ksdiff-runtime` command."""

from ksdiff_runtime.cli import run

run()
