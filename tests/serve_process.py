"""``ksdiff-runtime serve`` in a process of its own, and a client that aborts it (libzmq 4.3.5's assertion: the
story is in tests/test_zmq_abort.py), for the tests that need a runtime which may die."""

from __future__ import annotations

import queue
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ksdiff_runtime.cli.supervise import STOP_WAIT_S, stop_with_supervisor
from ksdiff_sdk import Client
from ksdiff_sdk import protocol as P

START_TIMEOUT_S = 120.0  # the serve command loads its model first; on a loaded machine this takes a while
ANSWER_TIMEOUT_S = 10.0
# More than ROUTER_RCVHWM (16) and than ZeroMQ's default (1000), so the engine stops reading whatever the limit;
# small enough (~60 KB) to sit in the loopback socket buffers, so sendall does not wait on the runtime.
MESSAGES = 2_000
# each reset kills an unfixed runtime nearly every time, but not every time: a clean-clone CI run (6 December 2026)
# saw 5 in a row survive, and tests/test_zmq_abort.py's strict xfail then failed; a round it survives takes well
# under a second, so 20 make a miss negligible
ROUNDS = 20
SERVE_ARGS = ("--pub", "tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0", "--backend", "onnxruntime",
              "--no-admission")


def zmtp_frame(body: bytes, command: bool = False) -> bytes:
    """One ZMTP 3.x frame, short or long form; ``command``: a command frame (READY, PING)."""
    flags = 0x04 if command else 0x00
    if len(body) > 255:
        return bytes([flags | 0x02]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def zmtp_greeting() -> bytes:
    """The 64-byte ZMTP 3.1 greeting of a NULL-mechanism client (3.1: the version that has PING)."""
    return b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def zmtp_ready(socket_type: bytes = b"DEALER") -> bytes:
    name = b"Socket-Type"
    return zmtp_frame(b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(socket_type)) + socket_type,
                      command=True)


# a PING with no TTL (none of the runtime's timers start) and a context to echo, as ZMTP 3.1 allows
ZMTP_PING = zmtp_frame(b"\x04PING" + struct.pack(">H", 0) + b"ctx", command=True)


def flood_and_reset(host: str, port: int) -> None:
    """A client that sends hellos far faster than the runtime reads them, each followed by a PING (wherever the
    runtime's engine stops reading, a PING is left in its buffer), then resets the connection."""
    with socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S) as s:
        s.sendall(zmtp_greeting())
        greeting = b""
        while len(greeting) < 64:  # the runtime's greeting: the handshake has begun
            chunk = s.recv(64 - len(greeting))
            assert chunk, "the runtime closed the connection during the greeting"
            greeting += chunk
        request = zmtp_frame(P.encode_request("hello"))
        s.sendall(zmtp_ready() + (request + ZMTP_PING) * MESSAGES)
        # SO_LINGER 0: the close() at the end of this block sends an RST, not a FIN (a FIN goes unnoticed while the
        # runtime's engine is not reading: it never aborts)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def stop_signals_heard() -> None:
    """Run in a test's child before it starts: SIGINT and SIGHUP as a terminal's job has them. pytest may run with
    them ignored (under nohup, or a script's ``command &``: CI may), an ignored signal stays ignored in the children,
    and a supervisor keeps it so (supervise.py: ``nohup serve --restart &`` must survive a logout): the tests' Ctrl-C
    and hang-up would reach nothing."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def ended_with_the_test() -> Callable[[], None]:
    """What a test's ``serve`` runs before it starts: no core file when it aborts (the test's doing), stop signals as
    from a terminal, and, on Linux, SIGTERM when pytest dies (in a session of its own, nothing sent to pytest's group
    reaches it)."""
    tie = stop_with_supervisor()

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        stop_signals_heard()
        if tie is not None:
            tie()

    return preexec


class Serve:
    """``ksdiff-runtime serve`` in its own process on ephemeral loopback ports (``args``: more flags); its log is read
    on a thread, and waited on line by line. The process leads a process group of its own, as a shell's job: a test
    can send it a terminal's Ctrl-C (a SIGINT to the whole group) without reaching pytest."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ksdiff_runtime.cli", "serve", *SERVE_ARGS, *args],
            stderr=subprocess.STDOUT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True, preexec_fn=ended_with_the_test())
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.pub, self.router = self.wait_for_serving()
        except BaseException:  # the caller gets no object to stop: what was started must not outlive the test
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)  # the process closed its output: it ended

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        """The next log line that matches ``pattern`` (the lines before it are kept in ``log``, not matched again)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no log line {pattern!r} within {timeout} s:\n{self.output()}") from None
            assert line is not None, f"serve ended (exit {self.proc.wait()}) before {pattern!r}:\n{self.output()}"
            self.log.append(line)
            if m := re.search(pattern, line):
                return m

    def wait_for_serving(self) -> tuple[str, str]:
        """The endpoints of the next runtime that starts serving."""
        m = self.wait_for(r"serving: frames on (tcp://\S+), requests on (tcp://[^\s,]+)")
        return m[1], m[2]

    def output(self) -> str:
        """What the process has logged so far (all of it once it ended)."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.log.append(line)
        return "".join(self.log[-30:])

    def assert_answers(self, after: str) -> None:
        """The runtime is alive and answers a real client's hello (the io thread read past what came before)."""
        answered = False
        try:
            with Client(self.pub, self.router, timeout=ANSWER_TIMEOUT_S) as client:
                client.wait_for_runtime()
                answered = True
        except TimeoutError:
            pass  # a dead runtime says more than the timeout: checked first, below
        if self.proc.poll() is not None:
            self.read_to_end()  # the whole log, with libzmq's assertion
        assert self.proc.poll() is None, (
            f"the runtime died {after} (exit {self.proc.returncode}; -6: SIGABRT, a libzmq assertion):\n"
            f"{self.output()}")
        assert answered, f"the runtime did not answer a hello within {ANSWER_TIMEOUT_S} s {after}"

    def read_to_end(self) -> None:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if line is None:
                return
            self.log.append(line)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not ended in time: longer than a supervisor (``--restart``) gives its child
        to stop before it kills it, so that a child that hangs is killed by its supervisor, not left behind by it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_WAIT_S + 30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


