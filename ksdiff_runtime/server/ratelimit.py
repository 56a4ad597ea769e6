"""Log lines that a client can cause, without letting it flood the log.

A client that sends garbage may send a lot of it: each kind (an error code, a warning) is logged in
full the first time, then at most once every ``period_s`` as a summary ("1234 more ..."), and
counted all along (the refusal counts go into ``stats``).
"""

from __future__ import annotations

import logging
import time

SUMMARY_PERIOD_S = 10.0


class RateLimitedLog:
    def __init__(self, log: logging.Logger, what: str, period_s: float = SUMMARY_PERIOD_S) -> None:
        self.log = log
        self.what = what  # "request refused", ...
        self.period_s = period_s
        self.counts: dict[str, int] = {}  # kind -> occurrences since start
        self._unlogged: dict[str, int] = {}  # kind -> occurrences since its last log line
        self._next_log: dict[str, float] = {}

    def __call__(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        if kind not in self._next_log:
            self.log.warning("%s (%s): %s", self.what, kind, message)
            self._next_log[kind] = now + self.period_s
            self._unlogged[kind] = 0
            return
        self._unlogged[kind] += 1
        self.flush(now)

    def count(self, kind: str) -> None:
        """Count without a log line (what the summary covers anyway)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def flush(self, now: float | None = None) -> None:
        """Log the summary of every kind whose period has passed (also called now and then by the io thread)."""
        now = time.monotonic() if now is None else now
        for kind, n in self._unlogged.items():
            if n and now >= self._next_log[kind]:
                self.log.warning("%s (%s): %d more in the last %.0f s, %d in all", self.what, kind, n,
                                 self.period_s, self.counts[kind])
                self._unlogged[kind] = 0
                self._next_log[kind] = now + self.period_s
