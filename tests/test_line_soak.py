"""Hours of NPC line bursts must not grow the runtime: nothing it keeps grows with the number of lines it served.

A game pushes lines (mode "line") in bursts for hours, each with an id never used before. Whatever the runtime
keeps per stream (its registry, the paced outputs' per-stream clocks, per-stream counters, logs' kinds) must go
when the stream ends, or serve's memory grows with every line (benchmarks/line_soak.py measures the RSS; this
counts entries, which is deterministic and fast). A real Runtime on loopback with a paced output (VMC to a UDP
socket here), driven by the real SDK client.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Iterator

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.outputs.vmc import VmcOutput
from ksdiff_runtime.server.runtime import Runtime
from ksdiff_sdk import Client

pytestmark = pytest.mark.timeout(300)

TIMEOUT_S = 60.0
LINES_PER_BURST = 6
LINE_S = 0.5
MORE_BURSTS = 5  # after the first burst (which may make what is made once, lazily)
MAX_DEPTH = 5
CONTAINERS = (dict, list, set, collections.deque)


def container_sizes(obj: object, path: str, depth: int = 0, seen: set[int] | None = None) -> dict[str, int]:
    """len() of every dict, list, set and deque reachable from ``obj`` through the runtime's own objects (their
    attributes, and the items of their lists and dicts), by attribute path. Objects of other packages (numpy,
    ZeroMQ, ONNX Runtime) are not walked into: what they hold is theirs."""
    seen = set() if seen is None else seen
    sizes: dict[str, int] = {}
    if id(obj) in seen or depth > MAX_DEPTH:
        return sizes
    seen.add(id(obj))
    if isinstance(obj, CONTAINERS):
        sizes[path] = len(obj)
        items: Iterator[tuple[str, object]] = (
            ((f"{path}[{k!r}]", v) for k, v in list(obj.items())) if isinstance(obj, dict)
            else ((f"{path}[{i}]", v) for i, v in enumerate(list(obj))))
        for p, v in items:
            if isinstance(v, CONTAINERS) or _ours(v):
                sizes |= container_sizes(v, p, depth + 1, seen)
        return sizes
    for name, value in list(getattr(obj, "__dict__", {}).items()):
        if isinstance(value, CONTAINERS) or _ours(value):
            sizes |= container_sizes(value, f"{path}.{name}", depth + 1, seen)
    return sizes


def _ours(value: object) -> bool:
    return type(value).__module__.startswith("ksdiff_runtime") and not isinstance(value, type)


def speak_burst(client: Client, burst: int, speech: np.ndarray) -> None:
    """A game's burst: LINES_PER_BURST lines with new ids, each pushed whole and ended at once; returns once every
    line's last frame has arrived and its handle is let go."""
    handles = []
    for k in range(LINES_PER_BURST):
        handle = client.open_stream(f"b{burst}-npc{k}", mode="line", max_frames=None)
        handle.push(speech)
        handle.end(wait=False)
        handles.append(handle)
    for handle in handles:
        frames = list(handle.frames(TIMEOUT_S))
        assert frames and frames[-1].last, f"line {handle.stream} did not get its last frame"
        handle.close()


@pytest.fixture
def udp_sink() -> Iterator[str]:
    """A bound UDP socket on loopback for the VMC output to send to (nobody needs to read it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_nothing_the_runtime_keeps_grows_with_the_number_of_lines_it_served(serve_engine, udp_sink: str,
                                                                             speech_16k: np.ndarray) -> None:
    speech = np.resize(speech_16k, round(LINE_S * motion.SAMPLE_RATE)).astype(np.float32)
    vmc = VmcOutput(udp_sink)
    with (Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False,
                  outputs=[vmc]) as rt,
          Client(rt.pub_endpoint, rt.router_endpoint, streams=(), timeout=TIMEOUT_S) as client):
        client.wait_for_runtime(TIMEOUT_S)
        speak_burst(client, 0, speech)
        # the paced output sends each line's frames on the line's own clock: idle once it has sent them all
        assert rt.wait_until_idle(TIMEOUT_S)
        before = container_sizes(rt, "rt")
        for burst in range(1, MORE_BURSTS + 1):
            speak_burst(client, burst, speech)
        assert rt.wait_until_idle(TIMEOUT_S)
        after = container_sizes(rt, "rt")

    lines = MORE_BURSTS * LINES_PER_BURST
    # a structure that keeps something per line grows by about one entry a line; windows and caches that are
    # refilled as they go may differ by a few entries between the two looks
    grown = {p: (before.get(p, 0), n) for p, n in after.items() if n - before.get(p, 0) >= lines // 2}
    assert not grown, f"grew over {lines} more lines (path: (before, after)): {grown}"
    assert len(rt.sessions) == 0
    assert after["rt._pacer._streams"] == 0, "the paced output still holds streams that ended"
    assert after["rt.floods._clients"] <= 1  # the one client's record, not one per line
