"""`python -m benchmarks.stop_time`: how long `ksdiff-runtime serve` takes from Ctrl-C to its exit.

The real command, as a VTuber runs it: `serve --file` on the bundled sample speech in real time (looped, standing in
for a microphone) with the VMC output, interrupted (SIGINT) 3 s after it says it is ready, on an idle machine and
with other processes keeping every core busy. The time is from the signal to the process's exit: what a user waits
for before the port is free and the next `serve` can start.

Prints each run and the range, and writes benchmarks/stop_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.live import CpuBurner, machine
from ksdiff_runtime.assets import SAMPLE_SPEECH

OUT = Path(__file__).with_name("stop_time.json")
READY_TIMEOUT_S = 240.0


def one_stop() -> float:
    """Seconds from SIGINT to the exit of a `serve` that has played for 3 s."""
    command = [sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--file", str(SAMPLE_SPEECH), "--loop",
               "--pub", "tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0", "--vmc", "127.0.0.1:39539"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        assert proc.stderr is not None
        for line in proc.stderr:  # the log: "ready in" once the sources play
            if "ready in" in line:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("serve did not get ready")
        else:
            raise RuntimeError(f"serve exited with {proc.wait()} before it was ready")
        time.sleep(3.0)  # playing, as a user would have it before stopping
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.stderr.read()  # drain the log to the end (its pipe must not fill while the process stops)
        code = proc.wait()
        took = time.monotonic() - signalled
        if code != 0:
            raise RuntimeError(f"serve exited with {code} after Ctrl-C")
        return took
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="stops measured per condition (default 3)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    for condition, burners in (("idle", 0), ("busy", os.cpu_count() or 1)):
        with CpuBurner(burners):
            results[condition] = []
            for i in range(args.runs):
                took = one_stop()
                results[condition].append(round(took, 3))
                print(f"{condition} ({burners} busy processes) run {i + 1}/{args.runs}: {took:.2f} s", flush=True)
        print(f"{condition}: {min(results[condition]):.2f}-{max(results[condition]):.2f} s from Ctrl-C to exit")
    OUT.write_text(json.dumps({"machine": machine(), "stop_s": results}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
