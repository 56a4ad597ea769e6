"""`ksdiff-runtime demo`: the runtime as a user meets it, in one command.

Starts `ksdiff-runtime serve` in its own process, playing the bundled sample speech in real time
(looped, as a stand-in for a microphone), connects an SDK client, prints the frames/s and
latency it receives each second, writes a plot of what it received, and stops the server with
SIGINT (the client sees the stream end with reason "shutdown"). Meanwhile serve's live preview
page is on: its URL is printed first, to watch the face in a browser.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.cli.plots import pyplot
from ksdiff_runtime.outputs.preview import DEFAULT_PORT as PREVIEW_PORT

if TYPE_CHECKING:
    from ksdiff_sdk import Client

STREAM = "sample_speech"  # serve names a file's stream after the file
READY_TIMEOUT_S = 120.0  # how long demo waits for serve's first hello (serve loads the model first)
READY_SLICE_S = 0.5  # the wait for that hello checks this often whether serve is still running
STOP_TIMEOUT_S = 30.0  # how long serve has to exit after SIGINT before demo kills it
STDERR_LINES = 20  # how many of serve's last stderr lines demo keeps for its error message


class DemoError(Exception):
    """A reason the demo could not run to the end, printed as one `error: ...` line."""


class ServeOutput:
    """serve's stderr: each line is passed on to demo's stderr as it comes, and the last lines are kept.

    A thread reads the pipe to its end, so serve never blocks on a full pipe."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: deque[str] = deque(maxlen=STDERR_LINES)
        self._thread = threading.Thread(target=self._pump, args=(stream,), name="serve-stderr", daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self.lines.append(line.rstrip("\n"))
                sys.stderr.write(line)
                sys.stderr.flush()

    def last_line(self, timeout: float = 2.0) -> str:
        """serve's last non-blank stderr line; waits up to <timeout> s for the pipe's end (serve has exited)."""
        self._thread.join(timeout)
        for line in reversed(list(self.lines)):
            if line.strip():
                return line.strip().removeprefix("error: ")  # demo's own line starts with "error: " already
        return "it wrote nothing to stderr"


def configure_demo(p: argparse.ArgumentParser) -> None:
    p.description = ("Start `ksdiff-runtime serve` on the bundled sample speech (played in real time, looped), "
        "receive its frames with the Python SDK, print frames/s and latency every second, write a plot, "
        "then stop the server cleanly. The live preview page is on meanwhile: its URL is printed first.")
    p.add_argument("--seconds", type=seconds, default=8.0, help="how long to receive frames (default 8)")
    p.add_argument("--out", type=Path, default=Path("out/demo.png"), help="plot to write (default out/demo.png)")
    p.add_argument("--backend", default="auto", help="inference backend for serve (default auto)")
    p.add_argument("--preset", default="low-latency", help="serve preset (default low-latency)")
    p.add_argument("--threads", type=int, default=1, help="serve's ONNX Runtime threads on the CPU (default 1)")
    p.set_defaults(func=run_demo)


def seconds(text: str) -> float:
    """--seconds: a number above 0 (0, a negative number or nan received nothing and said "no frames")."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:  # nan too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def plot_folder(out: Path) -> None:
    """Make the plot's folder, or DemoError saying why the plot cannot be written there: checked before serve
    starts, not found after the whole run."""
    if out.is_dir():
        raise DemoError(f"--out {out} is a folder; give the plot's file name, e.g. {out / 'demo.png'}")
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:  # a light install: no plot, said after the run
        pass
    else:
        kinds = FigureCanvasBase.get_supported_filetypes()
        if out.suffix and out.suffix[1:].lower() not in kinds:
            raise DemoError(f"--out {out}: matplotlib cannot write {out.suffix} files; use one of "
                            f"{', '.join('.' + k for k in sorted(kinds))}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where a folder goes
        raise DemoError(f"cannot write the plot {out}: {exc.filename} is not a folder") from exc
    except OSError as exc:
        raise DemoError(f"cannot write the plot {out}: {exc.strerror or exc} ({exc.filename or out.parent})") from exc
    if not os.access(out.parent, os.W_OK):
        raise DemoError(f"cannot write the plot {out}: its folder {out.parent} is not writable")
    try:
        # a file made there and dropped, as the plot will be: os.access passes for root, and a folder of /proc or
        # a full disk refuses files to anyone, which was found only after the whole run
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as exc:
        raise DemoError(f"cannot write the plot {out}: cannot make files in {out.parent} "
                        f"({exc.strerror or exc})") from exc


def free_port(preferred: int) -> int:
    """<preferred> when that port of 127.0.0.1 is free, else a free ephemeral port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")


def free_endpoint(preferred: int) -> str:
    """tcp://127.0.0.1:<preferred> when that port is free, else a free ephemeral port."""
    return f"tcp://127.0.0.1:{free_port(preferred)}"


def ended(code: int) -> str:
    """How a child process ended, from its return code (negative: the signal that killed it)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def wait_for_serve(client: Client, server: subprocess.Popen, output: ServeOutput, timeout: float) -> dict:
    """serve's hello, waited for in slices of READY_SLICE_S s; DemoError when serve exits first or
    <timeout> s pass."""
    deadline = time.monotonic() + timeout
    while True:
        code = server.poll()
        if code is not None:
            raise DemoError(f"serve {ended(code)} before the runtime was ready; its last stderr line: "
                            f"{output.last_line()}")
        left = deadline - time.monotonic()
        if left <= 0:
            got = (f"its ROUTER answered but nothing arrived on its PUB {client.pub_endpoint}" if client.hello
                   else f"no hello on {client.router_endpoint}")
            raise DemoError(f"serve was running but not ready within {timeout:g} s ({got}); stopped it")
        try:
            return client.wait_for_runtime(timeout=min(READY_SLICE_S, left))
        except TimeoutError:
            continue


def run_demo(args: argparse.Namespace) -> int:
    try:
        return demo(args)
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def demo(args: argparse.Namespace) -> int:
    from ksdiff_sdk import Client

    plot_folder(args.out)
    pub, router = free_endpoint(5555), free_endpoint(5556)
    preview_port = free_port(PREVIEW_PORT)
    cmd = [sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--file", str(SAMPLE_SPEECH), "--loop",
           "--pub", pub, "--router", router, "--backend", args.backend, "--preset", args.preset,
           "--threads", str(args.threads), "--preview", str(preview_port)]
    print("$", " ".join(cmd[2:]), flush=True)
    print(f"live preview: http://127.0.0.1:{preview_port}/ (open it in a browser while the demo runs; "
          "--seconds N runs longer)", flush=True)
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    assert server.stderr is not None
    output = ServeOutput(server.stderr)
    frames = []
    try:
        with Client(pub, router, streams=STREAM) as client:
            hello = wait_for_serve(client, server, output, READY_TIMEOUT_S)
            print(f"connected: runtime {hello['runtime']}, {len(hello['blendshapes'])} blendshapes at "
                  f"{hello['fps']} fps; receiving stream {STREAM!r} for {args.seconds:.0f} s")
            start = time.monotonic()
            window: list = []
            next_line = start + 1.0
            while time.monotonic() - start < args.seconds:
                code = server.poll()
                if code is not None:
                    raise DemoError(f"serve {ended(code)} {time.monotonic() - start:.1f} s into the demo; "
                                    f"its last stderr line: {output.last_line()}")
                try:
                    frame = client.recv(timeout=max(0.01, next_line - time.monotonic()))
                    frames.append(frame)
                    window.append(frame)
                except TimeoutError:
                    pass
                if time.monotonic() >= next_line:
                    lat = [f.latency_ms for f in window if f.latency_ms is not None]
                    p50, p95 = (np.percentile(lat, 50), np.percentile(lat, 95)) if lat else (float("nan"),) * 2
                    print(f"t={next_line - start:4.1f}s  {len(window):3d} frames/s  latency p50 {p50:5.1f} ms  "
                          f"p95 {p95:5.1f} ms  jawOpen {window[-1]['jawOpen'] if window else 0:.2f}  "
                          f"missed {client.missed}", flush=True)
                    window = []
                    next_line += 1.0
            server.send_signal(signal.SIGINT)
            # the runtime ends its streams with reason "shutdown" before it exits
            try:
                code = server.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise DemoError(f"serve did not exit within {STOP_TIMEOUT_S:g} s of SIGINT; killed it") from None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        output.last_line()  # the rest of serve's stderr is passed on before demo prints anything more
    if not frames:
        print("error: no frames received", file=sys.stderr)
        return 1
    lat = np.array([f.latency_ms for f in frames if f.latency_ms is not None])
    seconds = (frames[-1].published_ns - frames[0].published_ns) / 1e9
    print(f"received {len(frames)} frames in {seconds:.1f} s ({(len(frames) - 1) / max(seconds, 1e-9):.1f} frames/s); "
          f"latency p50 {np.percentile(lat, 50):.1f} / p95 {np.percentile(lat, 95):.1f} / "
          f"max {lat.max():.1f} ms (capture to publish); server exited with {code}")
    try:
        plot(args.out, frames)
        print(f"plot -> {args.out}")
    except SystemExit as e:  # a light install has no matplotlib: the run itself was fine
        print(f"no plot: {e}")
    except OSError as exc:  # the disk filled up, or the folder went, during the run
        print(f"error: cannot write the plot {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0 if code == 0 else 1


def plot(path: Path, frames: list) -> None:
    """Mouth and eye curves, head angles and latency of the received frames, on the audio clock."""
    plt = pyplot()
    t = np.array([f.t_audio for f in frames])
    fig, axes = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    for name in ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "eyeBlinkLeft"):
        axes[0].plot(t, [f[name] for f in frames], label=name, lw=1.2)
    axes[0].set_ylabel("weight")
    axes[0].legend(loc="upper right", fontsize=8, ncol=5)
    axes[0].set_title(f"stream {STREAM!r} as received by the SDK client")
    head = np.degrees(np.array([f.head for f in frames]))
    for i, name in enumerate(("pitch", "yaw", "roll")):
        axes[1].plot(t, head[:, i], label=name, lw=1.2)
    axes[1].set_ylabel("head (deg)")
    axes[1].legend(loc="upper right", fontsize=8, ncol=3)
    axes[2].plot(t, [f.latency_ms if f.latency_ms is not None else np.nan for f in frames], ".", ms=3)
    axes[2].set_ylabel("latency (ms)\ncapture to publish")
    axes[2].set_xlabel("audio time of the frame (s)")
    fig.tight_layout()
    # written beside it, then renamed: a failed write never leaves a broken plot over the last one
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp, dpi=110, format=path.suffix[1:].lower() or plt.rcParams["savefig.format"])
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
