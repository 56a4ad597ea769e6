"""`ksdiff-runtime demo` when serve cannot start: one `error:` line with serve's reason, within seconds.

Before, demo waited 120 s for a serve process that had died within a second and then ended with a
TimeoutError traceback. These runs never load the model: serve fails on its arguments, or demo's wait
for serve's hello is cut to a fraction of a second.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ksdiff_runtime.cli import demo, main

# serve fails on a bad option in about a second; demo must report it long before its 120 s wait for hello
FAIL_FAST_S = 30.0


@pytest.mark.parametrize(("option", "reason"), [
    (["--backend", "nope"], "nope"),
    (["--threads", "0"], "threads must be at least 1"),
])
def test_demo_reports_a_serve_that_fails_at_start(tmp_path: Path, option: list[str], reason: str) -> None:
    cmd = [sys.executable, "-m", "ksdiff_runtime.cli", "demo", "--seconds", "1", "--out", str(tmp_path / "demo.png"),
           *option]
    start = time.monotonic()
    # the timeout ends the test (TimeoutExpired) where demo waits for a dead serve
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=FAIL_FAST_S)
    took = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: serve exited with code "), done.stderr
    assert "before the runtime was ready" in last and reason in last, last
    assert "Traceback" not in done.stderr.split("serve exited")[-1]
    assert not (tmp_path / "demo.png").exists()
    assert took < FAIL_FAST_S


def test_demo_that_waits_too_long_for_serve_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """serve is still loading the model when the (shortened) wait ends: an `error:` line, serve stopped."""
    monkeypatch.setattr(demo, "READY_TIMEOUT_S", 0.2)
    assert main(["demo", "--seconds", "1", "--out", str(tmp_path / "demo.png")]) == 1
    err = capsys.readouterr().err
    assert "error: serve was running but not ready within 0.2 s" in err, err
    assert "stopped it" in err and "Traceback" not in err
