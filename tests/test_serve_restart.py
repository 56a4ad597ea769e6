"""`serve --restart`: a runtime that dies under its users (libzmq's abort a client can cause, the OOM killer, a crash)
is started again on the same endpoints, and its clients go on; Ctrl-C still stops it; a start-up error is not
repeated for ever.

The supervisor's rules are tested on a small stand-in child (a Python script that says it is ready as ``serve`` does,
then dies or stops as told: real processes and real signals, in seconds); the whole path on the real ``serve``,
aborted by a hostile client."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from peers import sample_speech
from serve_process import SERVE_ARGS, Serve, flood_and_reset, stop_signals_heard

from ksdiff_runtime.cli import supervise
from ksdiff_runtime.cli.supervise import PROBE_ENV, READY_FILE_ENV, Supervisor, endpoint_to_reuse, reusable_probe
from ksdiff_runtime.engine.capacity import Probe, RoundCost
from ksdiff_sdk import Client, StreamLost

pytestmark = pytest.mark.timeout(240)

ANSWER_TIMEOUT_S = 10.0

# The stand-in child: appends its pid and command line to a log, says it is ready as serve does (endpoints from its
# flags, "0" ports made concrete), then does what its run's entry in the plan says: "abort" (SIGABRT), "exit1",
# "exit0", "wait" (until SIGTERM/SIGINT, then exit 0, the signal and its sender written to LOG.stopped),
# "abort-on-stop" (the same, then SIGABRT: a crash as it stops), "ignore" (never stops: only SIGKILL ends it), or
# "abort-before-ready" / "exit1-before-ready". Its ready file names its run as the capacity probe it used (but for
# "abort-no-probe", whose says it used none), and its log line the probe it was handed. SIGINT and SIGTERM are held
# from its first line, before its run is logged (a test that saw the run logged may signal at once), and taken with
# sigwaitinfo, which says who sent them; the stop signals still pending once it took the first are written too (a
# second stop sent to it).
CHILD = textwrap.dedent('''
    import json, os, resource, signal, sys, threading
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # its aborts are the test's: no core files
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    log, plan = sys.argv[1], json.loads(sys.argv[2])
    args = sys.argv[3:]
    with open(log, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "args": args, "probe": os.environ.get(PROBE_ENV)}) + "\\n")
    with open(log) as f:
        run = len(f.read().splitlines()) - 1
    what = plan[min(run, len(plan) - 1)]
    if what == "abort-before-ready":
        os.abort()
    if what == "exit1-before-ready":
        sys.exit(1)
    flag = lambda name: args[len(args) - 1 - args[::-1].index(name) + 1]  # the last one wins, as in argparse
    pub, router = flag("--pub").replace(":0", ":5001"), flag("--router").replace(":0", ":5002")
    preview = (5003 if flag("--preview") == "0" else int(flag("--preview"))) if "--preview" in args else None
    path = os.environ[READY_FILE_ENV]
    with open(path + ".tmp", "w") as f:
        json.dump({"instance": f"run{run}", "pub": pub, "router": router, "preview": preview,
                   "probe": {"settings": "s", "probe": {"run": run}} if what != "abort-no-probe" else None}, f)
    os.replace(path + ".tmp", path)
    if what in ("abort", "abort-no-probe"):
        os.abort()
    if what == "exit1":
        sys.exit(1)
    if what == "exit0":
        sys.exit(0)
    if what == "ignore":
        threading.Event().wait()
    info = signal.sigwaitinfo({signal.SIGINT, signal.SIGTERM})
    pending = sorted(int(s) for s in signal.sigpending())  # a stop signal sent to it as well, not yet taken
    with open(log + ".stopped.tmp", "w") as f:  # whole or not at all: a test may be waiting for it
        json.dump({"signal": info.si_signo, "from": info.si_pid, "pending": pending}, f)
    os.replace(log + ".stopped.tmp", log + ".stopped")
    if what == "abort-on-stop":
        os.abort()
''').replace("READY_FILE_ENV", repr(READY_FILE_ENV)).replace("PROBE_ENV", repr(PROBE_ENV))


def stand_in(tmp_path: Path, plan: list[str]) -> tuple[list[str], Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "runs.log"
    return [sys.executable, str(script), str(log), json.dumps(plan)], log


def runs(log: Path) -> list[list[str]]:
    """Each run's command line."""
    return [json.loads(line)["args"] for line in log.read_text().splitlines()] if log.exists() else []


def wait_for_runs(log: Path, count: int, proc: subprocess.Popen[str]) -> None:
    """Until the stand-in has started ``count`` times (polling a condition with a deadline)."""
    deadline = time.monotonic() + 60
    while len(runs(log)) < count:
        assert proc.poll() is None, f"the supervisor ended (exit {proc.returncode}) before run {count}"
        assert time.monotonic() < deadline, f"run {count} never started"
        time.sleep(0.02)


def supervisor_process(program: list[str], settings: str = "") -> subprocess.Popen[str]:
    """The supervisor in a process of its own, leading a process group as a shell's job does (a terminal's signals
    go to the whole group); ``settings``: Python run first (a module constant changed)."""
    code = (f"import sys\nfrom ksdiff_runtime.cli import supervise\n{settings}\n"
            f"sys.exit(supervise.Supervisor({CHILD_ARGV!r}, program={program!r}).run())")
    # its temporary directory (the ready file) in the test's, beside the stand-in: one killed outright cannot remove
    # it, and it would be left in /tmp by every run
    tmp = Path(program[1]).parent
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, TMPDIR=str(tmp)), preexec_fn=stop_signals_heard)


def end_all(proc: subprocess.Popen[str], log: Path) -> None:
    """Whatever a failed test left running: the supervisor and every stand-in it started (in groups of their own)."""
    proc.kill()
    proc.wait()
    for pid in runs_pids(log) if log.exists() else []:
        # one that ended may have left its id to another process: only a process running this test's stand-in (its
        # log on its command line) is killed
        with contextlib.suppress(OSError):  # ended already: no /proc entry, or gone before the kill
            if str(log).encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)


CHILD_ARGV = ["serve", "--pub", "tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0"]


def test_ending_a_tests_processes_kills_its_stand_ins_and_spares_a_process_that_took_a_dead_ones_id(
        tmp_path: Path) -> None:
    """``end_all`` kills by the ids the stand-ins logged, after every test, when most of them ended long before: a CI
    machine that starts thousands of processes gives such an id to another process, which must not be killed (a
    test elsewhere failing for no reason). A live bystander is given a stand-in's id in the log, beside a stand-in
    that never stops."""
    program, log = stand_in(tmp_path, ["ignore"])
    ready = tmp_path / "ready.json"
    stand_in_proc = subprocess.Popen([*program, *CHILD_ARGV], env=dict(os.environ, **{READY_FILE_ENV: str(ready)}))
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    supervisor = subprocess.Popen([sys.executable, "-c", "pass"], text=True)
    try:
        deadline = time.monotonic() + 60
        while not runs(log):  # the stand-in has logged its id (polling a condition with a deadline)
            assert time.monotonic() < deadline, "the stand-in never started"
            time.sleep(0.02)
        with log.open("a") as f:
            f.write(json.dumps({"pid": bystander.pid, "args": CHILD_ARGV}) + "\n")
        end_all(supervisor, log)
        assert stand_in_proc.wait(timeout=30) == -signal.SIGKILL
        assert bystander.stdin is not None
        bystander.stdin.close()  # a bystander left alive reads its end and exits 0; a killed one says -9
        assert bystander.wait(timeout=30) == 0, "end_all killed a process that was not one of its stand-ins"
    finally:
        for proc in (stand_in_proc, bystander):
            proc.kill()
            proc.wait()


def test_a_child_that_dies_after_it_was_ready_is_started_again_on_the_endpoints_it_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervise, "FIRST_DELAY_S", 0.1)
    program, log = stand_in(tmp_path, ["abort", "abort", "exit1", "exit0"])
    caplog.set_level("INFO", logger="ksdiff_runtime.supervisor")
    assert Supervisor(CHILD_ARGV, program=program).run() == 0  # the last run stopped by itself
    started = runs(log)
    assert len(started) == 4
    assert started[0] == CHILD_ARGV
    for later in started[1:]:  # every later run binds what the first one bound, not a new ephemeral port
        assert later == [*CHILD_ARGV, "--pub", "tcp://127.0.0.1:5001", "--router", "tcp://127.0.0.1:5002"]
    died = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
    assert len(died) == 3
    assert "killed by SIGABRT" in died[0] and "exit status 1" in died[2]
    # a child that keeps dying right after it was ready waits longer each time
    assert [m.split("starting it again in ")[1].split(" s")[0] for m in died] == ["0.1", "0.2", "0.4"]


def test_a_child_that_served_long_before_it_died_is_started_again_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervise, "FIRST_DELAY_S", 0.1)
    monkeypatch.setattr(supervise, "STEADY_S", 0.0)  # every run counts as one that served long
    program, log = stand_in(tmp_path, ["abort", "abort", "abort", "exit0"])
    caplog.set_level("INFO", logger="ksdiff_runtime.supervisor")
    assert Supervisor(CHILD_ARGV, program=program).run() == 0
    assert len(runs(log)) == 4
    died = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
    assert [m.split("starting it again in ")[1].split(" s")[0] for m in died] == ["0.1", "0.1", "0.1"]


@pytest.mark.parametrize(("plan", "code"), [(["exit1-before-ready"], 1),
                                            (["abort-before-ready"], 128 + signal.SIGABRT)])
def test_a_child_that_fails_before_it_was_ever_ready_is_not_started_again(
        tmp_path: Path, plan: list[str], code: int) -> None:
    """A port in use, a missing device: the first start-up's error is the command's, not a loop."""
    program, log = stand_in(tmp_path, plan)
    assert Supervisor(CHILD_ARGV, program=program).run() == code
    assert len(runs(log)) == 1


def test_a_later_child_that_fails_before_it_is_ready_is_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once it has served, a start-up that fails (the microphone not back yet) is tried again, later each time."""
    monkeypatch.setattr(supervise, "FIRST_DELAY_S", 0.1)
    program, log = stand_in(tmp_path, ["abort", "exit1-before-ready", "abort-before-ready", "exit0"])
    assert Supervisor(CHILD_ARGV, program=program).run() == 0
    assert len(runs(log)) == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_child_and_the_supervisor_without_a_restart(tmp_path: Path, sig: signal.Signals) -> None:
    program, log = stand_in(tmp_path, ["wait"])
    proc = supervisor_process(program)
    try:
        wait_for_runs(log, 1, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        end_all(proc, log)
    assert proc.returncode == 0, err
    assert Path(f"{log}.stopped").exists(), "the child was not told to stop"
    assert len(runs(log)) == 1
    assert "died" not in err


def stderr_lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's stderr line by line, read on a thread (None once it ends)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def wait_for_line(lines: queue.Queue[str | None], text: str, seen: list[str]) -> None:
    """Until a line with ``text`` comes (each line read is kept in ``seen``); fails if the process ends first."""
    deadline = time.monotonic() + 60
    while not any(text in line for line in seen):
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        assert line is not None, "".join(seen)  # the process ended
        seen.append(line)


def test_a_signal_during_the_wait_before_a_restart_stops_the_supervisor_at_once_with_no_new_child(
        tmp_path: Path) -> None:
    program, log = stand_in(tmp_path, ["abort", "wait"])
    proc = supervisor_process(program, settings="supervise.FIRST_DELAY_S = 60.0")
    lines = stderr_lines(proc)
    seen: list[str] = []
    try:
        # The supervisor says it will start the child again once it has seen it die and found no stop asked: it is
        # then in its 60 s wait. (The child's end alone is too early: a stop that comes between the child's end and
        # the supervisor's look at its stop flag is taken as one the child died of, exit 128 + SIGABRT.)
        wait_for_line(lines, "starting it again in 60.0 s", seen)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(seen)  # well within the 60 s wait
    finally:
        end_all(proc, log)
    assert len(runs(log)) == 1


def test_a_stop_that_comes_just_after_the_child_crashed_by_itself_exits_0_without_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands between a child's crash and the supervisor's look at its stop flag: the child was never
    told to stop, so its crash is not the stop's result (it exited 128 + SIGABRT, as if the stop had failed)."""
    program, log = stand_in(tmp_path, ["abort", "wait"])
    supervisor = Supervisor(CHILD_ARGV, program=program)
    wait_child = Supervisor._wait_child

    def crashed_then_signalled(self: Supervisor, ready_file: Path) -> tuple[int, object, float]:
        result = wait_child(self, ready_file)  # the child has died and been reaped
        self._on_signal(signal.SIGTERM, None)  # the signal's handler runs right then
        return result

    monkeypatch.setattr(Supervisor, "_wait_child", crashed_then_signalled)
    assert supervisor.run() == 0
    assert len(runs(log)) == 1


@pytest.mark.parametrize(("sig", "told"), [(signal.SIGINT, signal.SIGINT), (signal.SIGHUP, signal.SIGTERM)])
def test_a_terminals_signal_reaches_the_child_once_from_the_supervisor_as_one_serve_handles(
        tmp_path: Path, sig: signal.Signals, told: signal.Signals) -> None:
    """A terminal sends Ctrl-C's SIGINT, and SIGHUP when it closes, to its whole foreground process group. A child in
    that group got Ctrl-C twice, the terminal's and the supervisor's: the second, after serve had begun to stop and
    put Python's handler back, raised KeyboardInterrupt in its shutdown (its streams' closing frames not sent; 1 in
    3 Ctrl-Cs on the real serve). SIGHUP killed both, serve with no closing frames."""
    program, log = stand_in(tmp_path, ["wait"])
    proc = supervisor_process(program)
    try:
        wait_for_runs(log, 1, proc)
        os.killpg(proc.pid, sig)  # as the terminal does: the supervisor leads its group, as a shell's job
        _, err = proc.communicate(timeout=30)
    finally:
        end_all(proc, log)
    assert proc.returncode == 0, err
    # the first stop signal the child saw (a second of the same kind, still pending, merges into it)
    assert json.loads(Path(f"{log}.stopped").read_text()) == {"signal": told, "from": proc.pid, "pending": []}


@pytest.mark.parametrize(("plan", "status"),
                         [("ignore", 128 + signal.SIGKILL), ("abort-on-stop", 128 + signal.SIGABRT)])
def test_a_child_that_dies_by_a_signal_as_it_stops_gives_the_command_the_shells_status_for_it(
        tmp_path: Path, plan: str, status: int) -> None:
    """A child that does not stop is killed after STOP_WAIT_S; one that crashes as it stops dies by its signal: the
    command says so as a shell would (128 + N), not ``sys.exit(-N)``'s 256 - N (247 for SIGKILL)."""
    program, log = stand_in(tmp_path, [plan])
    proc = supervisor_process(program, settings="supervise.STOP_WAIT_S = 0.5")
    try:
        wait_for_runs(log, 1, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        end_all(proc, log)
    assert proc.returncode == status, err
    assert len(runs(log)) == 1


def test_with_exit_when_done_the_childs_own_exit_status_ends_the_command_and_only_a_crash_is_started_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--exit-when-done`` exits 1 when a file failed part-way: a batch's result, which starting it again (every
    file played again) would repeat for ever, 30 s apart."""
    monkeypatch.setattr(supervise, "FIRST_DELAY_S", 0.1)
    program, log = stand_in(tmp_path, ["abort", "exit1", "exit0"])
    assert Supervisor(CHILD_ARGV, program=program, exits_are_final=True).run() == 1
    assert len(runs(log)) == 2  # the crash was started again; the exit status was final


def test_a_restarted_child_gets_the_preview_port_that_preview_0_gave_the_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--preview 0`` (any free port): the page open in a browser must find the restarted runtime where it was."""
    monkeypatch.setattr(supervise, "FIRST_DELAY_S", 0.1)
    program, log = stand_in(tmp_path, ["abort", "exit0"])
    assert Supervisor([*CHILD_ARGV, "--preview", "0"], program=program).run() == 0
    assert runs(log)[1][-2:] == ["--preview", "5003"]


def test_a_restarted_child_is_handed_the_capacity_probe_the_last_ready_child_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe is most of a start-up: a restarted child may take the one the child before used (its own measurement,
    or one it was handed); a child that used none leaves the one before; the first child is handed none, even by a
    supervisor whose own environment names one."""
    monkeypatch.setattr(supervise, "FIRST_DELAY_S", 0.1)
    monkeypatch.setenv(PROBE_ENV, json.dumps({"settings": "s", "probe": {"run": "from outside"}}))
    program, log = stand_in(tmp_path, ["abort", "abort-no-probe", "abort", "exit0"])
    assert Supervisor(CHILD_ARGV, program=program).run() == 0
    handed = [json.loads(line)["probe"] for line in log.read_text().splitlines()]
    assert [None if p is None else json.loads(p)["probe"]["run"] for p in handed] == [None, 0, 0, 2]


def reusable(monkeypatch: pytest.MonkeyPatch, handed: object, settings: str = "the same") -> object:
    monkeypatch.setenv(READY_FILE_ENV, "ready.json")  # a supervisor's child
    if handed is None:
        monkeypatch.delenv(PROBE_ENV, raising=False)
    else:
        monkeypatch.setenv(PROBE_ENV, handed if isinstance(handed, str) else json.dumps(handed))
    return reusable_probe(settings)


def test_a_restarted_child_reuses_a_probe_only_of_the_same_settings_and_recent(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    probe = Probe(0.4, 0.15, 12, RoundCost(8.0, 1.5, 1000 / 30), time.time() - 5, "onnxruntime-cpu (int8)")
    entry = {"settings": "the same", "probe": probe.to_json()}
    assert reusable(monkeypatch, entry) == probe
    assert reusable(monkeypatch, None) is None  # a first child
    monkeypatch.setenv(PROBE_ENV, json.dumps(entry))
    monkeypatch.delenv(READY_FILE_ENV)
    assert reusable_probe("the same") is None  # a plain serve measures its own, whatever its environment says
    caplog.set_level("INFO", logger="ksdiff_runtime.supervisor")
    assert reusable(monkeypatch, entry, settings="another preset") is None  # the config file edited in between
    assert "settings changed" in caplog.text
    for measured_at in (time.time() - supervise.PROBE_REUSE_S - 5, time.time() + 60):  # old, or a clock set back
        caplog.clear()
        assert reusable(monkeypatch, {**entry, "probe": {**probe.to_json(), "measured_at": measured_at}}) is None
        assert "measuring again" in caplog.text
    for garbage in ("{not json", json.dumps([1]), json.dumps({"settings": "the same"}),
                    json.dumps({"settings": "the same", "probe": {**probe.to_json(), "streams": 1}})):
        caplog.clear()
        assert reusable(monkeypatch, garbage) is None
        assert "cannot be read" in caplog.text


@pytest.mark.parametrize(("requested", "bound", "reused"), [
    ("tcp://127.0.0.1:*", "tcp://127.0.0.1:40001", "tcp://127.0.0.1:40001"),  # serve's :0 as the runtime spells it
    ("tcp://[::1]:0", "tcp://[::1]:40001", "tcp://[::1]:40001"),
    ("ipc://*", "ipc:///tmp/tmpab12cd/0", "ipc:///tmp/tmpab12cd/0"),
    ("tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://*:5555"),
    ("tcp://eth0:5555", "tcp://192.168.1.5:5555", "tcp://eth0:5555"),  # the interface's address may change
    ("tcp://localhost:5555", "tcp://127.0.0.1:5555", "tcp://localhost:5555"),
    ("ipc:///run/ksdiff.sock", "ipc:///run/ksdiff.sock", "ipc:///run/ksdiff.sock"),
])
def test_a_restarted_child_binds_the_port_an_ephemeral_one_got_and_otherwise_what_was_asked(
        requested: str, bound: str, reused: str) -> None:
    assert endpoint_to_reuse(requested, bound) == reused


def test_an_abbreviated_restart_flag_makes_one_supervisor_not_a_chain_of_them(tmp_path: Path) -> None:
    """argparse takes ``--resta`` for ``--restart``, and it stays in the child's command line: the child must serve,
    not supervise a child of its own (which would do the same, without end). Here serve fails at once (a file that
    is not there): a start-up error, the command's."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--resta", "--pub", "tcp://127.0.0.1:0", "--router",
         "tcp://127.0.0.1:0", "--file", str(tmp_path / "missing.wav")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = stderr_lines(proc)
    log: list[str] = []
    try:
        deadline = time.monotonic() + 120
        # until the command ends, or a second supervisor says it started a child
        while sum("serve started in process" in line for line in log) < 2:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                break
            log.append(line)
    finally:
        # SIGTERM, not SIGKILL: each supervisor passes it on to its child, so a chain ends whole
        proc.terminate()
        proc.wait(timeout=60)
    output = "".join(log)
    assert output.count("serve started in process") == 1, output
    assert "serve ended before it was ready (exit status 1)" in output, output
    assert proc.returncode == 1, output


def stopped_file(log: Path) -> dict[str, object]:
    """What the stand-in wrote once told to stop, waited for (polling a condition with a deadline)."""
    stopped = Path(f"{log}.stopped")
    deadline = time.monotonic() + 30
    while not stopped.exists():
        assert time.monotonic() < deadline, "the child was never told to stop"
        time.sleep(0.02)
    return json.loads(stopped.read_text())


def test_a_supervisor_killed_outright_takes_its_child_with_it(tmp_path: Path) -> None:
    """The child runs in a process group of its own: a SIGKILL of the command (``timeout -s KILL``, ``kill -9`` of
    its group by a script or a test runner, the OOM killer choosing the supervisor) no longer reaches it, and it
    served on, unsupervised, holding the ports a new ``serve`` needs. It is told to stop (SIGTERM) instead."""
    program, log = stand_in(tmp_path, ["wait"])
    proc = supervisor_process(program)
    try:
        wait_for_runs(log, 1, proc)
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor's group, as `timeout -s KILL` and `kill -9 -PGID` do
        proc.wait(timeout=30)
        assert stopped_file(log)["signal"] == signal.SIGTERM
    finally:
        end_all(proc, log)


def test_a_hangup_the_command_was_started_to_ignore_is_left_ignored(tmp_path: Path) -> None:
    """``nohup ksdiff-runtime serve --restart &`` over SSH: the hangup at logout is ignored by the supervisor as it
    was asked, not turned into a stop of serve. Then a Ctrl-C stops it: the first and only stop the child hears."""
    program, log = stand_in(tmp_path, ["wait"])
    proc = supervisor_process(program, settings="import signal\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)")
    try:
        wait_for_runs(log, 1, proc)
        os.killpg(proc.pid, signal.SIGHUP)
        # a SIGHUP passed on would reach the child as SIGTERM before this SIGINT does (Python runs its handlers in
        # signal order, SIGHUP first): the child would take it first, or find it pending after the SIGINT
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        end_all(proc, log)
    assert proc.returncode == 0, err
    assert stopped_file(log) == {"signal": signal.SIGINT, "from": proc.pid, "pending": []}


def test_an_error_in_the_supervisor_stops_the_child_it_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever ends the supervisor, a child in a group of its own must not serve on without it (a terminal's
    Ctrl-C would no longer reach it). The error is injected where the supervisor reads the child's ready file."""
    program, _ = stand_in(tmp_path, ["wait"])

    def broken(_path: Path) -> None:
        raise RuntimeError("a bug in the supervisor")

    monkeypatch.setattr(supervise, "_read_ready", broken)
    supervisor = Supervisor(CHILD_ARGV, program=program)
    try:
        with pytest.raises(RuntimeError, match="a bug in the supervisor"):
            supervisor.run()
        assert supervisor.child is not None
        assert supervisor.child.poll() is not None, "the child serves on after its supervisor failed"
    finally:
        if supervisor.child is not None:
            supervisor.child.kill()
            supervisor.child.wait()


def test_a_serve_that_cannot_be_started_at_all_fails_the_command_with_the_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The interpreter gone (a virtual environment removed), no file descriptor or memory left: one error line and
    exit 1, not a traceback."""
    caplog.set_level("INFO", logger="ksdiff_runtime.supervisor")
    assert Supervisor(CHILD_ARGV, program=[str(tmp_path / "no-python")]).run() == 1
    assert any("could not start serve" in r.getMessage() and "no-python" in r.getMessage() for r in caplog.records)


def test_the_command_becomes_a_supervisor_that_logs_in_the_format_serve_was_asked_for(tmp_path: Path) -> None:
    """On POSIX ``serve --restart`` execs a light supervisor (``supervise.main``) in its own process: its lines follow
    ``--log-format json`` as serve's do, and a child that fails at the start (a file that is not there) is one error
    and the child's exit status."""
    proc = subprocess.run([sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--restart", "--log-format", "json",
                           "--file", str(tmp_path / "missing.wav"), *SERVE_ARGS],
                          capture_output=True, text=True, timeout=120, preexec_fn=stop_signals_heard)
    assert proc.returncode == 1, proc.stderr
    ours = [json.loads(line) for line in proc.stderr.splitlines() if '"ksdiff_runtime.supervisor"' in line]
    assert [entry["level"] for entry in ours] == ["INFO", "ERROR"], proc.stderr
    assert "serve ended before it was ready (exit status 1)" in ours[1]["msg"]
    assert "missing.wav" in proc.stderr  # the child's own error


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the command line from /proc")
def test_a_ctrl_c_as_the_command_becomes_the_supervisor_stops_it_without_a_traceback() -> None:
    """The new interpreter starts in 0.1-0.2 s after the exec, before the supervisor's handlers are set: a Ctrl-C then
    ended it with a KeyboardInterrupt traceback, or "Fatal Python error". The stop signals are held across the exec
    until the handlers are set, and a stop that came before the first child starts none. The command runs with its
    standard output closed, as ``>&-`` leaves it (``sys.stdout`` is None): flushing it before the exec crashed."""

    def closed_stdout() -> None:
        stop_signals_heard()
        os.close(1)

    proc = subprocess.Popen([sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--restart", *SERVE_ARGS],
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=closed_stdout)
    try:
        deadline = time.monotonic() + 120
        while b"cli.supervise" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # not exec'd yet
            assert proc.poll() is None and time.monotonic() < deadline, "the command never became the supervisor"
            time.sleep(0.001)  # polling a condition with a deadline
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err and "Fatal" not in err, err
    assert "serve started" not in err, err


@pytest.mark.skipif(os.name == "nt", reason="Windows supervises in the command's own process")
@pytest.mark.parametrize("python", ["", "/no/such/python"])
def test_a_supervisor_that_cannot_be_started_fails_the_command_with_the_reason(
        python: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An interpreter gone, or not known to Python (``sys.executable`` empty in an embedding): one error line and exit
    1, not a traceback, and the stop signals held for the exec are taken again."""
    monkeypatch.setattr(sys, "executable", python)
    assert supervise.supervise(["serve", "--restart"]) == 1
    assert "could not start the supervisor" in caplog.text
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & set(supervise.STOP_SIGNALS)


def test_a_restart_that_cannot_start_a_process_is_tried_again_later(tmp_path: Path) -> None:
    """Right after the OOM killer took serve, fork may fail for want of memory; an interpreter being reinstalled is
    briefly missing: the supervisor is there to bring serve back, so it tries again, later each time, instead of
    ending with a traceback and no runtime. Here the interpreter the supervisor runs is a link the test removes."""
    python = tmp_path / "python"
    python.symlink_to(sys.executable)
    program, log = stand_in(tmp_path, ["wait"])
    program[0] = str(python)
    proc = supervisor_process(program, settings="supervise.FIRST_DELAY_S = 0.1")
    lines = stderr_lines(proc)
    seen: list[str] = []
    try:
        wait_for_runs(log, 1, proc)
        python.unlink()
        os.kill(runs_pids(log)[0], signal.SIGKILL)  # the first child dies; its restart finds no interpreter
        wait_for_line(lines, "could not start serve", seen)
        python.symlink_to(sys.executable)
        wait_for_runs(log, 2, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, "".join(seen)
    finally:
        end_all(proc, log)


def runs_pids(log: Path) -> list[int]:
    """Each run's process id."""
    return [json.loads(line)["pid"] for line in log.read_text().splitlines()]


def test_the_restart_flag_never_reaches_the_child() -> None:
    assert supervise.child_argv(["-v", "serve", "--restart", "--mic"]) == ["-v", "serve", "--mic"]


def test_a_serve_whose_start_up_a_test_gives_up_on_is_stopped_with_the_child_its_supervisor_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``Serve`` waits up to minutes for a start-up (a loaded CI machine); a test that gives up on it (the wait timed
    out, or failed) never gets the object to stop in its ``finally``: the helper must stop what it started itself,
    or a supervisor and its child, in sessions and groups of their own, outlive the test run. The give-up is made to
    come once the supervisor has started its child, so that both are there to leave behind."""
    started: list[Serve] = []

    def give_up(self: Serve) -> tuple[str, str]:
        started.append(self)
        self.wait_for(r"serve started in process \d+")
        raise AssertionError("the test gave up on the start-up")

    monkeypatch.setattr(Serve, "wait_for_serving", give_up)
    with pytest.raises(AssertionError, match="gave up"):
        Serve("--restart")
    serve = started[0]
    child = int(re.findall(r"serve started in process (\d+)", "".join(serve.log))[0])
    try:
        assert serve.proc.poll() is not None, "the supervisor outlived the test that gave up on it"
        with pytest.raises(ProcessLookupError):  # reaped by the supervisor, which stopped it first
            os.kill(child, 0)
    finally:
        serve.proc.kill()
        serve.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)


@pytest.mark.slow
def test_serve_restart_brings_back_a_runtime_a_client_aborted_and_its_clients_go_on() -> None:
    """The real thing: a hostile client aborts the runtime (libzmq 4.3.5); the supervisor starts it again on the same
    endpoints; an SDK client sees the restart (its stream lost, reason 'restart') and opens a new stream there. If
    the abort does not happen (a fixed libzmq), the child is killed with SIGABRT, as the abort would."""
    # the old stream must not end by itself (the default idle timeout, 10 s) while the abort is awaited: it would be
    # lost with reason 'timeout', not 'restart'
    serve = Serve("--restart", "--idle-timeout-s", "300")
    try:
        started = re.search(r"serve started in process (\d+)", "".join(serve.log))
        assert started, "".join(serve.log)
        first_pid = int(started[1])
        # the command became the supervisor (exec: the same process), with none of the runtime's libraries loaded
        maps = Path(f"/proc/{serve.proc.pid}/maps").read_text()
        assert first_pid != serve.proc.pid and "numpy" not in maps and "onnxruntime" not in maps
        with Client(serve.pub, serve.router, timeout=ANSWER_TIMEOUT_S) as client:
            first = client.wait_for_runtime()["instance"]
            old = client.open_stream("npc1")
            old.push(sample_speech(0.3))
            host, port = serve.router.removeprefix("tcp://").rsplit(":", 1)
            flood_and_reset(host, int(port))
            try:
                died = serve.wait_for(r"died: (.*), after", timeout=ANSWER_TIMEOUT_S)
            except AssertionError:  # it survived the client: kill it as the abort would
                with contextlib.suppress(ProcessLookupError):  # unless it died just now
                    os.kill(first_pid, signal.SIGABRT)
                died = serve.wait_for(r"died: (.*), after", timeout=ANSWER_TIMEOUT_S)
            assert "SIGABRT" in died[1]
            assert serve.wait_for_serving() == (serve.pub, serve.router)
            deadline = time.monotonic() + 60
            while client.instance in (None, first):  # the new runtime's hello (every second)
                assert time.monotonic() < deadline, "the client never saw the new runtime"
                time.sleep(0.02)  # polling a condition with a deadline
            with pytest.raises(StreamLost) as lost:
                old.push(sample_speech(0.1))
            assert lost.value.reason == "restart"
            new = client.open_stream("npc2")  # the same client goes on, nothing recreated
            new.push(sample_speech(0.3))
            assert new.end(timeout=30) is not None
        os.killpg(serve.proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: a SIGINT to the whole foreground group
        assert serve.proc.wait(timeout=60) == 0
        serve.read_to_end()
        output = "".join(serve.log)
        assert output.count("starting it again") == 1, serve.output()  # the abort's restart alone
        # the restarted child took the first one's capacity probe, figures unchanged, and did not probe again (the
        # room differs as other programs' load does)
        costs = re.findall(r"costs (.*?)(, as the process before measured \d+ s ago)? \(room for \d+\)", output)
        assert len(costs) == 2, serve.output()
        (figures, reused), (figures_again, reused_again) = costs
        assert figures_again == figures and not reused and reused_again, serve.output()
        # the child's shutdown ran to its end: a second SIGINT in it would have raised KeyboardInterrupt ("interrupted")
        assert "ksdiff_runtime.server: stopped" in output and "interrupted" not in output, serve.output()
    finally:
        serve.stop()
