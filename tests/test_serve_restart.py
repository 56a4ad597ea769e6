"""`serve --restart`: a runtime that dies under its users (libzmq's abort a client can cause, the OOM killer, a crash)
is started again on the same endpoints, and its clients go on; Ctrl-C still stops it; a start-up error is not
repeated for ever.

The supervisor's rules are tested on a small stand-in child (a Python script that says it is ready as ``serve`` does,
then dies or stops as told: real processes and real signals, in seconds); the whole path on the real ``serve``,
aborted by a hostile client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from peers import sample_speech
from serve_process import Serve, flood_and_reset

from ksdiff_runtime.cli import supervise
from ksdiff_runtime.cli.supervise import READY_FILE_ENV, Supervisor
from ksdiff_sdk import Client, StreamLost

pytestmark = pytest.mark.timeout(240)

ANSWER_TIMEOUT_S = 10.0

# The stand-in child: appends its command line to a log, says it is ready as serve does (endpoints from its flags,
# "0" ports made concrete), then does what its run's entry in the plan says: "abort" (SIGABRT), "exit1", "exit0",
# "wait" (until SIGTERM/SIGINT, then exit 0), or "abort-before-ready" / "exit1-before-ready".
CHILD = textwrap.dedent('''
    import json, os, signal, sys, time
    log, plan = sys.argv[1], json.loads(sys.argv[2])
    args = sys.argv[3:]
    with open(log, "a") as f:
        f.write(json.dumps(args) + "\\n")
    with open(log) as f:
        run = len(f.read().splitlines()) - 1
    what = plan[min(run, len(plan) - 1)]
    if what == "abort-before-ready":
        os.abort()
    if what == "exit1-before-ready":
        sys.exit(1)
    flag = lambda name: args[len(args) - 1 - args[::-1].index(name) + 1]  # the last one wins, as in argparse
    pub, router = flag("--pub").replace(":0", ":5001"), flag("--router").replace(":0", ":5002")
    stopped = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.append(1))
    path = os.environ[READY_FILE_ENV]
    with open(path + ".tmp", "w") as f:
        json.dump({"instance": f"run{run}", "pub": pub, "router": router}, f)
    os.replace(path + ".tmp", path)
    if what == "abort":
        os.abort()
    if what == "exit1":
        sys.exit(1)
    if what == "exit0":
        sys.exit(0)
    while not stopped:
        time.sleep(0.02)
    with open(log + ".stopped", "w") as f:
        f.write("stopped")
''').replace("READY_FILE_ENV", repr(READY_FILE_ENV))


def stand_in(tmp_path: Path, plan: list[str]) -> tuple[list[str], Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log = tmp_path / "runs.log"
    return [sys.executable, str(script), str(log), json.dumps(plan)], log


def runs(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


CHILD_ARGV = ["serve", "--pub", "tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0"]


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
    code = (f"import sys; from ksdiff_runtime.cli.supervise import Supervisor; "
            f"sys.exit(Supervisor({CHILD_ARGV!r}, program={program!r}).run())")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not runs(log):  # the child has started (polling a condition with a deadline)
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert Path(str(log) + ".stopped").exists(), "the child was not told to stop"
    assert len(runs(log)) == 1
    assert "died" not in err


def test_the_restart_flag_never_reaches_the_child() -> None:
    assert supervise.child_argv(["-v", "serve", "--restart", "--mic"]) == ["-v", "serve", "--mic"]


@pytest.mark.slow
def test_serve_restart_brings_back_a_runtime_a_client_aborted_and_its_clients_go_on() -> None:
    """The real thing: a hostile client aborts the runtime (libzmq 4.3.5); the supervisor starts it again on the same
    endpoints; an SDK client sees the restart (its stream lost, reason 'restart') and opens a new stream there. If
    the abort does not happen (a fixed libzmq), the child is killed with SIGABRT, as the abort would."""
    serve = Serve("--restart")
    try:
        started = re.search(r"serve started in process (\d+)", "".join(serve.log))
        assert started, "".join(serve.log)
        first_pid = int(started[1])
        with Client(serve.pub, serve.router, timeout=ANSWER_TIMEOUT_S) as client:
            first = client.wait_for_runtime()["instance"]
            old = client.open_stream("npc1")
            old.push(sample_speech(0.3))
            host, port = serve.router.removeprefix("tcp://").rsplit(":", 1)
            flood_and_reset(host, int(port))
            try:
                died = serve.wait_for(r"died: (.*), after", timeout=ANSWER_TIMEOUT_S)
            except AssertionError:  # it survived the client: kill it as the abort would
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
        serve.proc.send_signal(signal.SIGINT)
        assert serve.proc.wait(timeout=60) == 0
        serve.read_to_end()
        assert "".join(serve.log).count("starting it again") == 1, serve.output()  # the abort's restart alone
    finally:
        serve.stop()
