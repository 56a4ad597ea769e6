"""Live measurements of the real runtime: `ksdiff-runtime serve` in its own process, a subscriber here.

    ServeProcess    the real command on free loopback ports (sources, preset, flags as a user gives
                    them); waits for its first hello; reads its RSS; stops it with SIGINT and times it
    Subscriber      a SUB on a thread of this process that keeps, per stream, each frame's numbers
                    in compact arrays (so hours of frames cost little memory here, and nothing there)
    CpuBurner       other processes keeping cores busy, as OBS and a game do on a VTuber's machine

Latency here is ``published_ns - captured_ns`` (the runtime's own figure, SPEC 4.2) and
``received - captured`` (with the transport to a subscriber in another process); both on the one
monotonic clock of this machine.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ksdiff_sdk import protocol

READY_TIMEOUT_S = 180.0  # serve loads and warms the model before its first hello


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServeProcess:
    """``ksdiff-runtime serve ARGS`` on free ports, its log in ``log_path``."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.args = [sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--pub", self.pub, "--router", self.router,
                     *args]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.started_s = 0.0
        self.ready_s = float("nan")  # process start to first hello

    def start(self, subscriber: Subscriber | None = None) -> ServeProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        if subscriber is not None:
            subscriber.connect(self.pub)
            if not subscriber.hello.wait(READY_TIMEOUT_S):
                self.stop()
                raise RuntimeError(f"serve sent no hello within {READY_TIMEOUT_S:.0f} s; see {self.log_path}")
            self.ready_s = time.monotonic() - t0
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> float:
        """SIGINT, then the seconds until the process exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return time.monotonic() - t0

    def log(self) -> str:
        return self.log_path.read_text()


@dataclass
class StreamRecord:
    """Every received frame of one stream, as compact arrays."""

    seq: array.array = field(default_factory=lambda: array.array("q"))
    recv_ns: array.array = field(default_factory=lambda: array.array("q"))
    published_ns: array.array = field(default_factory=lambda: array.array("q"))
    captured_ns: array.array = field(default_factory=lambda: array.array("q"))  # -1: none
    compute_ms: array.array = field(default_factory=lambda: array.array("f"))
    last: bool = False


class Subscriber:
    """A SUB on every topic, on its own thread; ``streams`` fills as frames arrive."""

    def __init__(self) -> None:
        self.streams: dict[str, StreamRecord] = {}
        self.stats: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []  # stream_start / stream_end
        self.hello = threading.Event()
        self.invalid = 0
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, 0)  # keep everything: a drop here would hide what the runtime did
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_ROOT)
        self._thread = threading.Thread(target=self._run, name="bench-subscriber", daemon=True)

    def connect(self, endpoint: str) -> None:
        self._sock.connect(endpoint)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            _, payload = self._sock.recv_multipart()
            now = time.monotonic_ns()
            try:
                msg = protocol.decode(payload)
            except protocol.ProtocolError:
                self.invalid += 1
                continue
            kind = msg["type"]
            if kind == "frame":
                r = self.streams.setdefault(msg["stream"], StreamRecord())
                r.seq.append(msg["seq"])
                r.recv_ns.append(now)
                r.published_ns.append(msg["published_ns"])
                r.captured_ns.append(-1 if msg["captured_ns"] is None else msg["captured_ns"])
                r.compute_ms.append(msg["compute_ms"])
                r.last = r.last or msg["last"]
            elif kind == "stats":
                self.stats.append(msg | {"recv_ns": now})
            elif kind == "hello":
                self.hello.set()
            else:
                self.events.append(msg | {"recv_ns": now})

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sock.close()
        self._ctx.term()


def pcts(values: np.ndarray | list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {f"p{q}": None for q in qs} | {"max": None, "n": 0}
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in qs} | {"max": round(float(a.max()), 2),
                                                                          "n": int(a.size)}


def stream_figures(r: StreamRecord, t0_ns: int, t1_ns: int, window_s: float = 60.0) -> dict[str, Any]:
    """One stream's figures over frames received in [t0, t1): latency, rate, gaps, and latency per window."""
    recv = np.frombuffer(r.recv_ns, np.int64)
    keep = (recv >= t0_ns) & (recv < t1_ns)
    seq = np.frombuffer(r.seq, np.int64)[keep]
    captured = np.frombuffer(r.captured_ns, np.int64)[keep]
    published = np.frombuffer(r.published_ns, np.int64)[keep]
    recv = recv[keep]
    known = captured >= 0
    runtime_ms = (published[known] - captured[known]) / 1e6
    received_ms = (recv[known] - captured[known]) / 1e6
    gaps = int(np.sum(np.maximum(np.diff(seq) - 1, 0))) if seq.size > 1 else 0
    span_s = (t1_ns - t0_ns) / 1e9
    windows = []
    for w0 in np.arange(t0_ns, t1_ns, int(window_s * 1e9)):
        sel = (recv[known] >= w0) & (recv[known] < w0 + window_s * 1e9)
        if sel.any():
            windows.append({"p50": round(float(np.percentile(runtime_ms[sel], 50)), 2),
                            "p95": round(float(np.percentile(runtime_ms[sel], 95)), 2)})
    return {
        "frames": int(seq.size), "fps": round(seq.size / span_s, 2) if span_s > 0 else None,
        "seq_gaps": gaps, "capture_to_publish_ms": pcts(runtime_ms), "capture_to_receive_ms": pcts(received_ms),
        "latency_by_window": windows,
    }


class CpuBurner:
    """``cores`` processes spinning on the CPU (niceness 0, as a game or an encoder would)."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> CpuBurner:
        for _ in range(self.cores):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def machine() -> dict[str, Any]:
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version()}
