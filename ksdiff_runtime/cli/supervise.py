"""`ksdiff-runtime serve --restart`: serve in a child process, started again whenever it dies.

A runtime can die under its users for reasons it cannot catch: libzmq 4.3.5 aborts the process when a client resets
its connection in a certain state (docs/SERVE.md, "A client can abort the runtime"), the kernel's OOM killer, a native
library's crash. A VTuber's avatar then freezes until someone notices and starts ``serve`` again. With ``--restart``
the command stays as a small supervisor (no model, no sockets) and runs ``serve`` itself in a child process:

- the child is started again when it dies after it was ready (a signal, or an exit other than 0), at once for the
  first death and, if it keeps dying within ``STEADY_S`` of being ready, after a delay that doubles up to
  ``MAX_DELAY_S``; it binds the endpoints the first child bound (``tcp://...:0`` included), so clients connect again
  by themselves and are told their streams were lost (the SDK's ``StreamLost``, reason ``restart``), and ``--mic`` and
  ``--file`` streams start again;
- a child that dies before it was ready the first time is a start-up error (a port in use, a device missing): its
  exit status is the command's, with no restart;
- SIGINT and SIGTERM stop the child (it ends its streams as ``serve`` does) and the command, with no restart; exit 0
  when it stopped cleanly.

The child tells the supervisor it is ready, and which endpoints it bound, through a small JSON file named by
``READY_FILE_ENV`` (written by ``serve`` once its sources have started). Tested on Linux; on Windows the console's
Ctrl-C reaches the child itself, and SIGTERM is TerminateProcess there (no closing frames).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

log = logging.getLogger("ksdiff_runtime.supervisor")

READY_FILE_ENV = "KSDIFF_SERVE_READY_FILE"  # the child writes {"instance", "pub", "router"} here once ready
FIRST_DELAY_S = 0.5  # before starting again a child that died
MAX_DELAY_S = 30.0  # the delay doubles for a child that keeps dying, up to this
STEADY_S = 60.0  # a child that served this long before dying is started again after FIRST_DELAY_S
STOP_WAIT_S = 30.0  # a child asked to stop is killed after this (serve stops within 2 s)
WATCH_S = 0.5  # how often the supervisor looks for the ready file and at a stop's time


@dataclass(frozen=True)
class Ready:
    """What a child said once it was ready."""

    instance: str
    pub: str
    router: str


def write_ready(instance: str, pub: str, router: str) -> None:
    """Called by ``serve`` once it is ready: tells a supervisor, if it runs under one, what it bound."""
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps({"instance": instance, "pub": pub, "router": router}))
    tmp.replace(path)  # whole or not at all: the supervisor may read it at any moment


def _read_ready(path: Path) -> Ready | None:
    try:
        data = json.loads(path.read_text())
        return Ready(str(data["instance"]), str(data["pub"]), str(data["router"]))
    except (OSError, ValueError, KeyError, TypeError):  # not there yet (it is written whole, never in part)
        return None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (libzmq's abort is one cause: docs/SERVE.md)" if -code == signal.SIGABRT else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"


class Supervisor:
    """Runs ``serve`` (``child_argv``: the command line after the program, ``--restart`` left out) until asked to
    stop, starting it again when it dies."""

    def __init__(self, child_argv: list[str], program: list[str] | None = None) -> None:
        """``program``: what runs ``child_argv`` (default: this Python's ``-m ksdiff_runtime.cli``)."""
        self.child_argv = child_argv
        self.program = program or [sys.executable, "-m", "ksdiff_runtime.cli"]
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop.set()
        child = self.child
        if child is None or child.poll() is not None:
            return
        if os.name == "nt":  # the console's Ctrl-C reaches the child itself; there is no SIGTERM to forward
            if signum != signal.SIGINT:
                child.terminate()
            return
        child.send_signal(signum)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with tempfile.TemporaryDirectory(prefix="ksdiff-serve-") as tmp:
                return self._loop(Path(tmp) / "ready.json")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self, ready_file: Path) -> int:
        bound: Ready | None = None  # what the first ready child bound: every later one binds the same
        delay = FIRST_DELAY_S
        while True:
            argv = list(self.child_argv)
            if bound is not None:
                argv += ["--pub", bound.pub, "--router", bound.router]  # the last flag wins
            ready_file.unlink(missing_ok=True)
            env = dict(os.environ, **{READY_FILE_ENV: str(ready_file)})
            self.child = subprocess.Popen([*self.program, *argv], env=env)
            log.info("serve started in process %d (--restart: started again if it dies)", self.child.pid)
            if self.stop.is_set():  # a signal came as it started, before there was a child to tell
                self._on_signal(signal.SIGTERM, None)
            code, ready, served_s = self._wait_child(ready_file)
            if self.stop.is_set():
                return 0 if code in (0, 130, -signal.SIGINT, -signal.SIGTERM) else code
            if code == 0:  # it stopped by itself (its files have played, or someone stopped it directly)
                return 0
            if bound is None and ready is None:  # never served: a start-up error, which a restart would repeat
                log.error("serve ended before it was ready (%s); not started again", describe_exit(code))
                return code if code > 0 else 128 - code
            bound = bound or ready
            if served_s >= STEADY_S:
                delay = FIRST_DELAY_S
            self.restarts += 1
            log.error("serve (process %d) died: %s, after %.0f s serving; starting it again in %.1f s (restart %d)",
                      self.child.pid, describe_exit(code), served_s, delay, self.restarts)
            if self.stop.wait(delay):
                return 0
            delay = min(MAX_DELAY_S, 2 * delay)

    def _wait_child(self, ready_file: Path) -> tuple[int, Ready | None, float]:
        """Waits for the child to end (killed if it does not stop within STOP_WAIT_S of being asked to); returns its
        exit status, what it said once ready (None if it never was) and how long it served."""
        assert self.child is not None
        ready: Ready | None = None
        ready_at = stop_at = 0.0
        while True:
            try:
                code = self.child.wait(timeout=WATCH_S)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if ready is None and (ready := _read_ready(ready_file)) is not None:
                ready_at = now
                log.info("serve ready in process %d: instance %s, requests on %s", self.child.pid, ready.instance,
                         ready.router)
            if self.stop.is_set():
                stop_at = stop_at or now
                if now - stop_at > STOP_WAIT_S:
                    log.error("serve (process %d) did not stop within %.0f s; killing it", self.child.pid,
                              STOP_WAIT_S)
                    self.child.kill()
        if ready is None:  # ready just before it died
            ready = _read_ready(ready_file)
            ready_at = time.monotonic()
        return code, ready, (time.monotonic() - ready_at if ready is not None else 0.0)


def child_argv(argv: list[str]) -> list[str]:
    """The command line for the child: ``argv`` without ``--restart``."""
    return [a for a in argv if a != "--restart"]


def supervise(argv: list[str]) -> int:
    return Supervisor(child_argv(argv)).run()
