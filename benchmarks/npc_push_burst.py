"""`python -m benchmarks.npc_push_burst`: many NPC lines pushed whole at once through one SDK client.

A game's crowd scene: `--lines` lines (default 24) of 10 s of the bundled sample speech at 48 kHz stereo float32
(what a game engine's audio clips are), each opened in mode `line` and pushed whole at once through one client, then
ended; `ksdiff-runtime serve` in its own process. Counts the lines that got every frame: a client past its share of
the runtime's io thread has its requests dropped unread (protocol/SPEC.md 4.6, "A client past its share"), and a
line whose audio was dropped gets no frame for it.

Prints the lines complete, the frames of each, the client's `busy` errors and the messages it sent again, and writes
benchmarks/npc_push_burst.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from benchmarks.live import machine
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.engine.controls import stream_frames
from ksdiff_sdk import Client

OUT = Path(__file__).with_name("npc_push_burst.json")
LINE_S = 10


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def line_audio() -> np.ndarray:
    """LINE_S seconds of the sample speech as 48 kHz stereo float32."""
    speech, rate = sf.read(SAMPLE_SPEECH, dtype="float32")
    x = resample_poly(speech, 48_000 // rate, 1).astype(np.float32)
    x = np.resize(x, 48_000 * LINE_S)
    return np.stack([x, 0.9 * x], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=24, help="lines pushed at once (default 24)")
    args = parser.parse_args()
    pub, router = free_endpoint(), free_endpoint()
    serve = subprocess.Popen([sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--pub", pub, "--router", router],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    audio = line_audio()
    expected = stream_frames(16_000 * LINE_S, 30)
    try:
        with Client(pub, router, timeout=30) as client:
            client.wait_for_runtime(240)
            lines = [client.open_stream(f"npc{i}", sample_rate=48_000, channels=2, mode="line")
                     for i in range(args.lines)]
            started = time.monotonic()
            for line in lines:
                line.push(audio)
            for line in lines:
                line.end(wait=False)
            pushed_s = time.monotonic() - started
            while time.monotonic() - started < 120 and not all(line.ended or line.lost for line in lines):
                time.sleep(0.1)
            frames = [len(line.take_frames()) for line in lines]
            busy = sum(1 for e in client.errors if e.code == "busy")
            resent = client.resent
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(30)
    complete = sum(1 for n in frames if n >= expected)
    print(f"{args.lines} lines of {LINE_S} s at 48 kHz stereo pushed in {pushed_s:.2f} s: {complete} got every frame "
          f"({expected}); frames per line {sorted(frames)}; busy {busy}, sent again {resent}")
    OUT.write_text(json.dumps({"machine": machine(), "lines": args.lines, "complete": complete, "frames": frames,
                               "expected_frames": expected, "busy": busy, "resent": resent}, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
