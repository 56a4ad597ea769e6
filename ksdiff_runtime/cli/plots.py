"""Plots are for people, so the commands that draw them need matplotlib (the training extras)."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files, no screen), or a clear error without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("error: plots need matplotlib: pip install 'ksdiff-runtime[train]' (or leave the plot "
                         "option out)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
