"""How the commands log: one place for the line format and ``--log-format json``, light enough for the supervisor of
``serve --restart``, which imports nothing of the runtime."""

from __future__ import annotations

import json
import logging
from typing import Any

LINE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: for log collectors (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(verbose: bool) -> None:
    """A command's logging: lines on stderr, debug messages with ``--verbose``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LINE_FORMAT)


def use_format(fmt: str) -> None:
    """``serve``'s ``log_format``: "text" (the lines above) or "json"."""
    if fmt == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLogFormatter())
