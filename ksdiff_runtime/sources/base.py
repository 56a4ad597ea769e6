"""What the runtime needs from an audio source, and the callbacks a source delivers through.

A source delivers float32 PCM ``[n, channels]`` at its own rate on its own thread (a file) or on
PortAudio's callback thread (a microphone); the input stage (``ksdiff_runtime.inputs``) places it
on the stream's clock, sanitises, downmixes and resamples it. Each chunk comes with
``captured_ns``: the ``time.monotonic_ns()`` instant its last sample was captured, where the
latency the runtime reports starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

# pcm float32 [n, channels] at source.sample_rate; captured_ns: time.monotonic_ns() when the
# chunk's last sample was captured (None: unknown, e.g. a file read faster than real time)
OnAudio = Callable[[np.ndarray, int | None], None]
# None: ended normally (end of file); str: what went wrong (device lost, a callback failed)
OnEnd = Callable[[str | None], None]


class SourceError(Exception):
    """A source cannot be opened (no device, unknown device, unsupported settings); for the user."""


class Source(Protocol):
    """What the runtime needs from an audio source."""

    kind: str  # "mic" or "file" (the protocol's `source` field)
    mode: str  # "live" (real time: a mic, a file played in real time) or "line" (a file read as fast as possible)
    stream_id: str
    sample_rate: int  # rate of the pcm it delivers
    channels: int

    def start(self, on_audio: OnAudio, on_end: OnEnd) -> None:
        """Begin delivering on the source's own thread or callback."""

    def stop(self) -> None:
        """Idempotent and prompt; after it returns no callback runs."""
