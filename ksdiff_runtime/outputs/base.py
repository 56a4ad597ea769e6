"""What every output is: something the io thread hands each event to (ksdiff_runtime/events.py)."""

from __future__ import annotations

from typing import Protocol

from ksdiff_runtime.events import Event


class FrameOutput(Protocol):
    """A destination for the runtime's events: the ZeroMQ PUB, Live Link Face UDP, VMC/OSC, ...

    ``send`` is called on the runtime's io thread for every event, in order, so it must not block:
    send without waiting (UDP, a non-blocking PUB) or hand the event to a thread of its own. An
    exception is counted and logged once; the runtime and the other outputs go on.

    An output with ``paced = True`` (an app that shows each frame when it arrives: Live Link Face, VMC, VTube
    Studio, the preview) is handed each frame at its time on its stream's clock instead (pacing.py), still on the
    io thread, and a stream's other events after its frames."""

    name: str

    def send(self, event: Event) -> None: ...

    def close(self) -> None: ...
