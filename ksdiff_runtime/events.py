"""What the runtime hands its outputs: typed events, in the order they happen.

    Frame           one animation frame of one stream (ksdiff_sdk.Frame, the wire frame, built once
                    by the engine; ``published_ns`` is set when the ZeroMQ output publishes it)
    StreamStarted   a stream opened
    StreamEnded     a stream ended (after its last frame, which carries ``last``)
    Stats           the runtime's figures, once a second
    Hello           the runtime's schema announcement, once a second (for late joiners)
    AudioLevel      how loud a stream's audio was over the frames of one engine round (for meters)

Every output (outputs/: the ZeroMQ PUB, Live Link Face, VMC, ...) receives every event and takes
what it needs; Live Link and VMC only draw frames, the PUB publishes all but ``AudioLevel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ksdiff_sdk import Frame


@dataclass(frozen=True)
class StreamStarted:
    stream: str
    source: str  # protocol.SOURCES
    mode: str = "live"  # protocol.MODES
    latency_ms: float | None = None  # the latency the runtime states for it (engine.latency_ms)


@dataclass(frozen=True)
class StreamEnded:
    stream: str
    source: str
    reason: str  # protocol.END_REASONS
    frames: int  # frames published for the stream in total


@dataclass(frozen=True)
class Stats:
    uptime_s: float
    streams: dict[str, dict[str, Any]]  # stream id -> protocol/SPEC.md 4.5's per-stream map
    drops: int
    refused: dict[str, int] = field(default_factory=dict)  # error code -> requests refused with it
    capacity: int | None = None  # live streams the machine has room for now (measured)


@dataclass(frozen=True)
class Hello:
    instance: str  # random per runtime start


@dataclass(frozen=True)
class AudioLevel:
    stream: str
    t_audio: float  # the end of the audio measured, on the stream's audio clock (s)
    rms_dbfs: float  # its RMS level in dB relative to full scale (-120 for silence)


Event = Frame | StreamStarted | StreamEnded | Stats | Hello | AudioLevel

__all__ = ["AudioLevel", "Event", "Frame", "Hello", "Stats", "StreamEnded", "StreamStarted"]
