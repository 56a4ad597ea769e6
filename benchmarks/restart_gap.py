"""`python -m benchmarks.restart_gap`: how long a face stays still while `serve --restart` brings back a dead runtime.

Starts `ksdiff-runtime serve --restart` playing the bundled sample in a loop (stream ``sample_speech``, standing in
for a microphone) on loopback, with a Python SDK client receiving its frames. Each round kills the serving process
with SIGABRT, as libzmq's abort does (docs/SERVE.md), and times, from the kill, the supervisor's new child serving
(its "serving" log line) and the client's first frame of the new runtime: the gap a VTuber's avatar stays frozen.
Of that gap, the supervisor's wait before it starts a child again (0.5 s, doubling for a child that keeps dying) is
printed apart, and on Linux the supervisor's own resident memory.

Prints each round and the medians; returns them (``main``).
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

from ksdiff_sdk import Client

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "ksdiff_runtime", "assets", "sample_speech.wav")
START_TIMEOUT_S = 180.0


class Supervised:
    """`serve --restart` on ephemeral loopback ports; its log lines read on a thread."""

    def __init__(self, extra: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--restart", "--pub", "tcp://127.0.0.1:0",
             "--router", "tcp://127.0.0.1:0", "--file", SAMPLE, "--loop", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)  # the command ended (a start-up error, a crash of the supervisor)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The next log line that matches ``pattern``; a RuntimeError with the log if the command ends first or the
        line does not come within START_TIMEOUT_S."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no log line {pattern!r} within {START_TIMEOUT_S} s:\n{self.tail()}") from None
            if line is None:
                raise RuntimeError(f"serve --restart ended (exit {self.proc.wait()}) before {pattern!r}:\n"
                                   f"{self.tail()}")
            self.log.append(line)
            if m := re.search(pattern, line):
                return m

    def tail(self) -> str:
        return "".join(self.log[-30:])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="kills to time (default 3)")
    parser.add_argument("--backend", default="onnxruntime", help="serve's --backend (default onnxruntime)")
    args = parser.parse_args(argv)
    serve = Supervised(["--backend", args.backend])
    serving: list[float] = []
    frames: list[float] = []
    waits: list[float] = []
    rss_mb = None
    try:
        pid = int(serve.wait_for(r"serve started in process (\d+)")[1])
        m = serve.wait_for(r"serving: frames on (tcp://\S+), requests on (tcp://[^\s,]+)")
        rss_mb = resident_mb(serve.proc.pid)
        with Client(m[1], m[2], timeout=30) as client:
            client.wait_for_runtime()
            for n in range(args.rounds):
                client.recv(timeout=30)  # the stream is publishing
                killed, killed_ns = time.monotonic(), time.monotonic_ns()
                os.kill(pid, signal.SIGABRT)
                waits.append(float(serve.wait_for(r"starting it again in ([\d.]+) s")[1]))
                pid = int(serve.wait_for(r"serve started in process (\d+)")[1])
                serve.wait_for(r"serving: frames on")
                serving.append(time.monotonic() - killed)
                while True:  # the dead runtime's frames may still be queued: the first of audio captured after the kill
                    captured = client.recv(timeout=START_TIMEOUT_S).captured_ns  # this host's monotonic clock
                    if captured is not None and captured > killed_ns:
                        break
                frames.append(time.monotonic() - killed)
                print(f"round {n + 1}: serving again {serving[-1]:.1f} s after the kill, its first frame at "
                      f"the client {frames[-1]:.1f} s ({waits[-1]:.1f} s of it the supervisor's wait)", flush=True)
    finally:
        serve.stop()
    result = {"rounds": args.rounds, "serving_s": serving, "first_frame_s": frames, "wait_s": waits,
              "median_serving_s": statistics.median(serving), "median_first_frame_s": statistics.median(frames),
              "supervisor_rss_mb": rss_mb}
    print(f"median: serving again {result['median_serving_s']:.1f} s, first frame "
          f"{result['median_first_frame_s']:.1f} s after the kill ({args.rounds} rounds)")
    if rss_mb is not None:
        print(f"the supervisor: {rss_mb:.0f} MB resident")
    return result


def resident_mb(pid: int) -> float | None:
    """A process's resident memory (Linux; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


if __name__ == "__main__":
    main()
