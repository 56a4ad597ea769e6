"""`ksdiff-runtime serve --restart`: serve in a child process, started again whenever it dies.

A runtime can die under its users for reasons it cannot catch: libzmq 4.3.5 aborts the process when a client resets
its connection in a certain state (docs/SERVE.md, "A client can abort the runtime"), the kernel's OOM killer, a native
library's crash. A VTuber's avatar then freezes until someone notices and starts ``serve`` again. With ``--restart``
the command stays as a small supervisor (no model, no sockets) and runs ``serve`` itself in a child process:

- the child is started again when it dies after it was ready (a signal, or an exit other than 0), after
  ``FIRST_DELAY_S`` for the first death and, if it keeps dying within ``STEADY_S`` of being ready, after a delay that
  doubles up to ``MAX_DELAY_S``; it binds the endpoints the first child bound where any port would do
  (``tcp://...:0``, ``ipc://*``, ``--preview 0``; ``endpoint_to_reuse``), so clients connect again by themselves and
  are told their streams were lost (the SDK's ``StreamLost``, reason ``restart``), and ``--mic`` and ``--file``
  streams start again;
- a child that dies before it was ready the first time is a start-up error (a port in use, a device missing): its
  exit status is the command's, with no restart;
- with ``--exit-when-done`` (``exits_are_final``) a child's own exit status is the batch's result and the command's
  (a file that failed part-way would fail again); only a death by a signal is started again;
- SIGINT, SIGTERM and SIGHUP (the terminal closed) stop the child (it ends its streams as ``serve`` does) and the
  command, with no restart; exit 0 when it stopped cleanly, 128 + N when it died by signal N (killed after
  ``STOP_WAIT_S``, or a crash as it stopped), its own exit status when it failed as it stopped.

On POSIX the child runs in a process group of its own, so that a terminal's Ctrl-C (sent to the whole foreground
group) reaches it once, from the supervisor: a second SIGINT from the supervisor, arriving after serve had begun to
stop and put Python's handler back, interrupted its shutdown (its streams' closing frames not sent). Out of that
group, nothing sent to the command's group reaches the child, so the supervisor never leaves it behind: on Linux the
child is sent SIGTERM when the supervisor dies, however it dies (``PR_SET_PDEATHSIG``: ``kill -9`` of the group,
``timeout -s KILL``, the OOM killer), and an error in the supervisor stops it before the error goes on. A stop signal
the command was started to ignore (``nohup``'s SIGHUP, SIGINT of a script's ``command &``) stays ignored.

The child tells the supervisor it is ready, and which endpoints a restarted child must bind, through a small JSON
file named by ``READY_FILE_ENV`` (written by ``serve`` once its sources have started); a process started with it set
is a supervisor's child and never supervises itself. The file also holds the capacity probe the child measured (what
admission starts from, engine/capacity.py), which the supervisor hands a restarted child in ``PROBE_ENV``: a child
started again within ``PROBE_REUSE_S`` of that measurement, with the same engine settings, takes it instead of
probing again (``reusable_probe``), and is ready in about half the time.

Tested on Linux. On Windows (read, not run) the console's Ctrl-C reaches the child itself, and is not passed on;
``os.kill(pid, SIGTERM)`` is TerminateProcess of the supervisor alone (no handler runs), which leaves its child
serving.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ksdiff_runtime.cli import logs
from ksdiff_runtime.engine.capacity import Probe

log = logging.getLogger("ksdiff_runtime.supervisor")

# the child writes {"instance", "pub", "router", "preview", "probe"} here once ready
READY_FILE_ENV = "KSDIFF_SERVE_READY_FILE"
PROBE_ENV = "KSDIFF_SERVE_PROBE"  # a restarted child: the "probe" of the child before it ({"settings", "probe"})
# a restarted child reuses the capacity probe the child before it used if it was measured this recently: the live
# rounds served refresh its figures within seconds, but a probe from hours before may be of another machine's load
PROBE_REUSE_S = 600.0
FIRST_DELAY_S = 0.5  # before starting again a child that died
MAX_DELAY_S = 30.0  # the delay doubles for a child that keeps dying, up to this
STEADY_S = 60.0  # a child that served this long before dying is started again after FIRST_DELAY_S
STOP_WAIT_S = 30.0  # a child asked to stop is killed after this (serve stops within 2 s)
WATCH_S = 0.5  # how often the supervisor looks for the ready file and at a stop's time
# the signals that stop the supervisor and its child (SIGHUP: the terminal closed; POSIX only)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))
# a stopped child's exit statuses that are a clean stop: serve's 0, Ctrl-C during its start-up (KeyboardInterrupt: 130
# from the command, or Windows' STATUS_CONTROL_C_EXIT), a SIGINT or SIGTERM before serve handled them
CLEAN_STOPS = (0, 130, 0xC000013A, -signal.SIGINT, -signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Ready:
    """What a child said once it was ready."""

    instance: str
    pub: str  # the endpoints a restarted child binds (endpoint_to_reuse)
    router: str
    preview: int | None = None  # the preview page's port (None: no preview)
    probe: str | None = None  # the capacity probe it used and its engine settings, as JSON (None: no probe)


def under_supervisor() -> bool:
    """True in a supervisor's child: it serves, whatever its flags say (``--restart`` abbreviated, ``--resta``, is
    not taken out of its command line, and would start a chain of supervisors)."""
    return bool(os.environ.get(READY_FILE_ENV))


def endpoint_to_reuse(requested: str, bound: str) -> str:
    """The endpoint a restarted child binds: the one bound where any port or path would do (``tcp://...:0``,
    ``ipc://*``), so clients find it where it was; else the one asked for, resolved again (``tcp://eth0:5555``,
    ``tcp://myhost:5555``: the interface's address may have changed since)."""
    ephemeral = requested.endswith((":0", ":*")) if requested.startswith("tcp://") else requested == "ipc://*"
    return bound if ephemeral else requested


def write_ready(instance: str, pub: str, router: str, preview: int | None = None, probe: Probe | None = None,
                settings: str = "") -> None:
    """Called by ``serve`` once it is ready: tells a supervisor, if it runs under one, what a restarted child binds
    (``preview``: the preview page's port, None without one) and the capacity ``probe`` its engine used, built with
    ``settings`` (``reusable_probe``'s)."""
    path = os.environ.get(READY_FILE_ENV)
    if not path:
        return
    used = None if probe is None else {"settings": settings, "probe": probe.to_json()}
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps({"instance": instance, "pub": pub, "router": router, "preview": preview,
                               "probe": used}))
    tmp.replace(path)  # whole or not at all: the supervisor may read it at any moment


def _read_ready(path: Path) -> Ready | None:
    try:
        data = json.loads(path.read_text())
        preview, probe = data.get("preview"), data.get("probe")
        return Ready(str(data["instance"]), str(data["pub"]), str(data["router"]),
                     int(preview) if preview is not None else None, json.dumps(probe) if probe else None)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # not there yet (written whole, never in part)
        return None


def reusable_probe(settings: str) -> Probe | None:
    """In a child started again: the capacity probe the child before it used, when its engine was built with the same
    ``settings`` (build_engine's arguments, as serve writes them) and it was measured within PROBE_REUSE_S; None
    otherwise (the engine probes, and the log says why)."""
    given = os.environ.get(PROBE_ENV)
    if not given or not under_supervisor():  # a plain serve measures its own
        return None
    try:
        data = json.loads(given)
        probe, same = Probe.from_json(data["probe"]), data["settings"] == settings
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("the capacity probe of the process before cannot be read (%s); measuring again", exc)
        return None
    age = time.time() - probe.measured_at
    if not same:
        log.info("the engine's settings changed since the process before measured its capacity; measuring again")
    elif not 0 <= age <= PROBE_REUSE_S:
        log.info("the capacity probe of the process before is %.0f s old; measuring again", age)
    else:
        return probe
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


def stop_with_supervisor() -> Callable[[], None] | None:
    """Linux: what the child runs between fork and exec so that the kernel sends it SIGTERM when the supervisor dies,
    however it dies (serve then stops as on Ctrl-C); None elsewhere. The signal follows the thread that started the
    child: the command's main thread, which lives as long as the supervisor."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    supervisor = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # it died before prctl: no signal will come, and nothing is served yet
            os._exit(128 + signal.SIGTERM)

    return preexec


def command_status(code: int) -> int:
    """A child's exit status as the command's: a death by signal N is 128 + N, as a shell says it (``sys.exit`` of a
    negative number would be 256 - N)."""
    return 128 - code if code < 0 else code


class Supervisor:
    """Runs ``serve`` (``child_argv``: the command line after the program, ``--restart`` left out) until asked to
    stop, starting it again when it dies."""

    def __init__(self, child_argv: list[str], program: list[str] | None = None, exits_are_final: bool = False) -> None:
        """``program``: what runs ``child_argv`` (default: this Python's ``-m ksdiff_runtime.cli``);
        ``exits_are_final``: a child's own exit status ends the command (``--exit-when-done``: a batch's result)."""
        self.child_argv = child_argv
        self.program = program or [sys.executable, "-m", "ksdiff_runtime.cli"]
        self.exits_are_final = exits_are_final
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.told: subprocess.Popen[bytes] | None = None  # the child a stop was passed on to
        self.restarts = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stop.set()
        child = self.child
        if child is None or child.poll() is not None:
            return
        self.told = child  # its exit status is its stop's (a child that died before it was told died by itself)
        if os.name == "nt":  # the console's Ctrl-C reaches the child itself; there is no SIGTERM to forward
            if signum != signal.SIGINT:
                child.terminate()
            return
        # in a process group of its own, the child hears of a stop from here alone; serve handles SIGINT and SIGTERM
        child.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    def run(self) -> int:
        # a stop signal ignored when the command started stays ignored: nohup's SIGHUP (a logout must not stop it),
        # a non-interactive shell's SIGINT for `command &`; Python itself leaves an ignored SIGINT so
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS
                    if signal.getsignal(sig) is not signal.SIG_IGN}
        if hasattr(signal, "pthread_sigmask"):  # held since the exec (``supervise``): one that came is handled now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            with tempfile.TemporaryDirectory(prefix="ksdiff-serve-") as tmp:
                try:
                    return self._loop(Path(tmp) / "ready.json")
                finally:
                    self._stop_child()  # an error in the loop: the child, in a group of its own, must not serve on
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_child(self) -> None:
        """Stops a child still running (only an error in the loop leaves one): SIGTERM, then SIGKILL after
        STOP_WAIT_S; reaped either way."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        log.error("the supervisor is ending on an error: stopping serve (process %d)", child.pid)
        child.terminate()
        try:
            child.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def _loop(self, ready_file: Path) -> int:
        bound: Ready | None = None  # what the first ready child bound: every later one binds the same
        probe: str | None = None  # the capacity probe the last ready child used: the next one may reuse it
        delay = FIRST_DELAY_S
        while True:
            if self.stop.is_set():  # asked before the first child: none is started
                return 0
            argv = list(self.child_argv)
            if bound is not None:
                argv += ["--pub", bound.pub, "--router", bound.router]  # the last flag wins
                if bound.preview is not None:
                    argv += ["--preview", str(bound.preview)]  # --preview 0's port: the page open in a browser
            ready_file.unlink(missing_ok=True)
            env = dict(os.environ, **{READY_FILE_ENV: str(ready_file)})
            env.pop(PROBE_ENV, None)  # only ever the supervisor's own child's
            if probe is not None:
                env[PROBE_ENV] = probe
            self.child = None
            try:
                # POSIX: a process group of its own, out of reach of the terminal's Ctrl-C (the module's docstring)
                self.child = subprocess.Popen([*self.program, *argv], env=env, preexec_fn=stop_with_supervisor(),
                                              process_group=0 if os.name != "nt" else None)
            except OSError as exc:  # no process: EMFILE, fork's ENOMEM or EAGAIN (memory short after an OOM kill),
                # the interpreter gone (a virtual environment being reinstalled)
                if bound is None:  # at the start: the command fails, as on any start-up error
                    log.error("could not start serve (%s): %s", " ".join(self.program), exc)
                    return 1
                log.error("could not start serve again (%s): %s; trying again in %.1f s", " ".join(self.program),
                          exc, delay)
                if self._asked_to_stop_within(delay):
                    return 0
                delay = min(MAX_DELAY_S, 2 * delay)
                continue
            log.info("serve started in process %d (--restart: started again if it dies)", self.child.pid)
            if self.stop.is_set():  # a signal came as it started, before there was a child to tell
                self._on_signal(signal.SIGTERM, None)
            code, ready, served_s = self._wait_child(ready_file)
            if self.stop.is_set():  # asked to stop: no restart; a child that crashed before it was told is no error
                return 0 if code in CLEAN_STOPS or self.told is not self.child else command_status(code)
            if code == 0:  # it stopped by itself (its files have played, or someone stopped it directly)
                return 0
            if bound is None and ready is None:  # never served: a start-up error, which a restart would repeat
                log.error("serve ended before it was ready (%s); not started again", describe_exit(code))
                return command_status(code)
            if self.exits_are_final and code > 0:  # a batch's result (a file failed part-way): it would fail again
                log.error("serve ended (%s); not started again (--exit-when-done)", describe_exit(code))
                return code
            bound = bound or ready
            if ready is not None and ready.probe is not None:
                probe = ready.probe
            if served_s >= STEADY_S:
                delay = FIRST_DELAY_S
            self.restarts += 1
            log.error("serve (process %d) died: %s, after %.0f s serving; starting it again in %.1f s (restart %d)",
                      self.child.pid, describe_exit(code), served_s, delay, self.restarts)
            if self._asked_to_stop_within(delay):
                return 0
            delay = min(MAX_DELAY_S, 2 * delay)

    def _asked_to_stop_within(self, delay: float) -> bool:
        """Waits up to ``delay`` seconds for a stop, in WATCH_S steps: on Windows a lock's wait is not interrupted by
        Ctrl-C, whose handler runs only once the wait is over (a 30 s backoff, then a child started for nothing)."""
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self.stop.wait(min(WATCH_S, left)):
                return True
        return self.stop.is_set()

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


def supervise(argv: list[str], exits_are_final: bool = False, verbose: bool = False, log_format: str = "text") -> int:
    """Runs ``argv`` (the command line, ``--restart`` in it) under a supervisor. On POSIX this process becomes the
    supervisor by ``exec`` of this module (``main``): the same process id, for a service manager or a shell's ``$!``,
    and none of serve's imports (numpy, scipy, ONNX Runtime and their threads: 117 MB resident, against 17 MB); so
    ``cli.main(["serve", "--restart", ...])`` called from Python replaces the calling process. On Windows, where
    ``exec`` starts another process and ends this one, it supervises here. Returns only if it cannot exec (1)."""
    if os.name == "nt":
        return Supervisor(child_argv(argv), exits_are_final=exits_are_final).run()
    flags = [*(["--exits-are-final"] if exits_are_final else []), *(["--verbose"] if verbose else []),
             "--log-format", log_format]
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: started with it closed
            stream.flush()
    # A stop signal in the new interpreter's start-up, before the supervisor's handlers are set, would end it with a
    # traceback (or "Fatal Python error"): held pending across the exec (the mask is kept; ignored ones stay ignored)
    # until ``Supervisor.run`` has its handlers
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        os.execv(sys.executable, [sys.executable, "-m", __name__, *flags, "--", *child_argv(argv)])
    except (OSError, ValueError) as exc:  # the interpreter gone (a virtual environment being reinstalled), or unknown
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        log.error("could not start the supervisor (%r): %s", sys.executable, exc)
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m ksdiff_runtime.cli.supervise [flags] -- ARGV``: what ``supervise`` runs on POSIX. Not a command:
    ``serve --restart`` checked its settings before it came here."""
    parser = argparse.ArgumentParser(prog="ksdiff-runtime serve --restart", description=main.__doc__)
    parser.add_argument("--exits-are-final", action="store_true", help="a child's own exit status ends the command")
    parser.add_argument("--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="as serve's")
    parser.add_argument("child", nargs=argparse.REMAINDER, help="-- then the child's command line")
    args = parser.parse_args(argv)
    child = args.child[1:] if args.child[:1] == ["--"] else args.child
    if not child:
        parser.error("no command line for the child after --")
    logs.configure(args.verbose)
    logs.use_format(args.log_format)
    try:
        return Supervisor(child, exits_are_final=args.exits_are_final).run()
    except KeyboardInterrupt:  # Ctrl-C before its handlers were set: no child yet
        return 130


if __name__ == "__main__":
    sys.exit(main())
