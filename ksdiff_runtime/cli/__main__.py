"""`python -m ksdiff_runtime.cli`: the same as the `ksdiff-runtime` command."""

import sys

from ksdiff_runtime.cli import main

sys.exit(main())
