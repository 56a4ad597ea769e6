"""Does `ksdiff-runtime serve` keep growing over hours of NPC line bursts? A soak of line bursts, RSS after each.

    python -m benchmarks.line_soak [--bursts 60] [--lines 8] [--min-s 2] [--max-s 6] [--gap 2] [--plot]

`ksdiff-runtime serve` (its own process, free loopback ports, as benchmarks/line_burst.py) plays the bundled speech
as a looping real-time file: the live stream. One SDK client (a game's, kept for the whole soak) then sends
`--bursts` bursts: each opens `--lines` lines (mode "line") of `--min-s`..`--max-s` seconds of the sample speech
with ids never used before (`b<burst>-npc<k>`, as a game names its lines), pushes each whole, ends it, waits until
every line has ended (its `stream_end`), takes its frames and lets its handle go; then waits `--gap` seconds (the
game's pause between scenes) and samples serve's RSS (psutil when installed, else /proc/PID/status VmRSS), its
threads and open files. The peak RSS over each burst and its gap is sampled too (every 0.2 s).

A runtime that keeps something per stream (records keyed by stream id, per-stream stats, buffers) grows by about
the same amount each burst; allocator arenas and caches rise and then stay level. The table and
benchmarks/line_soak.json say which (`slope_kib_per_burst` over the second half of the bursts). `--plot` writes
benchmarks/line_soak.png. `--malloc-arena-max N` runs serve with MALLOC_ARENA_MAX=N (glibc) to see how much of the
rise is per-thread malloc arenas; `--trim` starts serve with a SIGUSR1 handler that calls glibc's malloc_trim(0), sends
it after the last burst and says how much RSS that gave back (memory freed but kept by the allocator, not held by the
runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_sdk import Client, StreamHandle, StreamLost

from .live import ServeProcess, Subscriber, machine, rss_mib

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).with_name("line_soak.json")
LIVE = SAMPLE_SPEECH.stem  # the stream id serve gives the looping file
LINE_END_TIMEOUT_S = 300.0  # a burst whose lines have not all ended by then is counted as stuck, and the soak goes on
PEAK_SAMPLE_S = 0.2  # how often the peak RSS is sampled during a burst

try:  # psutil's figure is the same VmRSS; it is optional
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - depends on the environment
    tqdm = None


def serve_rss_mib(pid: int) -> float:
    if psutil is not None:
        return psutil.Process(pid).memory_info().rss / 2**20
    return rss_mib(pid)


def proc_counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of a process (Linux /proc)."""
    threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


class PeakSampler:
    """Samples a process's RSS every PEAK_SAMPLE_S on a thread; ``take()`` returns the peak since the last take."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PEAK_SAMPLE_S):
            try:
                rss = serve_rss_mib(self.pid)
            except (OSError, ValueError):
                return  # the process is gone
            with self._lock:
                self._peak = max(self._peak, rss)

    def take(self) -> float:
        with self._lock:
            peak, self._peak = self._peak, 0.0
        return peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run_burst(client: Client, burst: int, lengths: list[float], speech: np.ndarray) -> tuple[int, int, int]:
    """Open, push whole and end one line per length; wait until each has ended. (lines ended, lost, frames)."""
    handles: list[StreamHandle] = []
    for k, seconds in enumerate(lengths):
        handle = client.open_stream(f"b{burst}-npc{k}", mode="line", max_frames=None)
        handle.push(np.resize(speech, round(seconds * motion.SAMPLE_RATE)).astype(np.float32))
        handle.end(wait=False)
        handles.append(handle)
    frames = ended = lost = 0
    for handle in handles:
        try:
            # frames() yields until the line's last frame or its stream_end, bounded by the timeout; end() then
            # takes the runtime's stream_ended reply (already there for a line that has ended)
            frames += sum(1 for _ in handle.frames(LINE_END_TIMEOUT_S))
            handle.end(LINE_END_TIMEOUT_S)
            ended += 1
        except (StreamLost, TimeoutError):
            lost += 1
        handle.close()
    return ended, lost, frames


# serve as `python -m ksdiff_runtime.cli`, but with SIGUSR1 calling glibc's malloc_trim(0) (serve's main thread waits
# in short Event waits, so the handler runs at once), which then creates the file named by KSDIFF_SOAK_TRIMMED
TRIM_WRAPPER = """
import ctypes, os, pathlib, runpy, signal, sys
libc = ctypes.CDLL("libc.so.6")
def trim(*_):
    libc.malloc_trim(0)
    pathlib.Path(os.environ["KSDIFF_SOAK_TRIMMED"]).touch()
signal.signal(signal.SIGUSR1, trim)
sys.argv = ["ksdiff-runtime", *sys.argv[1:]]
runpy.run_module("ksdiff_runtime.cli", run_name="__main__")
"""
TRIM_TIMEOUT_S = 30.0


def malloc_trim_in(serve: ServeProcess, marker: Path) -> bool:
    """Have serve (started with TRIM_WRAPPER) call malloc_trim(0); False if it did not say so within TRIM_TIMEOUT_S."""
    marker.unlink(missing_ok=True)
    assert serve.proc is not None
    serve.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + TRIM_TIMEOUT_S
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the handler's file, bounded by TRIM_TIMEOUT_S
    return marker.exists()


def slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (NaN with fewer than 2 points)."""
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def plot(rows: list[dict[str, Any]], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    bursts = [r["burst"] for r in rows]
    ax.plot(bursts, [r["rss_mib"] for r in rows], marker=".", label="RSS after the burst and its gap")
    ax.plot(bursts, [r["peak_mib"] for r in rows], alpha=0.5, label="peak RSS over the burst and its gap")
    ax.axhline(baseline, color="grey", linestyle="--", label="before the first burst")
    ax.set_xlabel("burst")
    ax.set_ylabel("serve RSS (MiB)")
    ax.set_title("ksdiff-runtime serve: RSS over NPC line bursts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.line_soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bursts", type=int, default=60, help="bursts of lines (default 60)")
    p.add_argument("--lines", type=int, default=8, help="lines in each burst (default 8)")
    p.add_argument("--min-s", type=float, default=2.0, help="shortest line in seconds (default 2)")
    p.add_argument("--max-s", type=float, default=6.0, help="longest line in seconds (default 6)")
    p.add_argument("--gap", type=float, default=2.0, help="seconds from a burst's end to the RSS sample (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the lines' lengths (default 0)")
    p.add_argument("--no-live", action="store_true", help="no looping live file beside the lines")
    p.add_argument("--malloc-arena-max", type=int, default=None,
                   help="run serve with MALLOC_ARENA_MAX=N (glibc's per-thread malloc arenas)")
    p.add_argument("--trim", action="store_true",
                   help="after the last burst, have serve call malloc_trim(0) (SIGUSR1); RSS before and after")
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON written (default {OUT.relative_to(ROOT)})")
    p.add_argument("--plot", action="store_true", help="also write a PNG next to the JSON")
    args = p.parse_args(argv)
    if args.bursts < 1 or args.lines < 1 or not 0 < args.min_s <= args.max_s:
        p.error("--bursts and --lines must be >= 1 and 0 < --min-s <= --max-s")

    speech, _ = load_audio(SAMPLE_SPEECH)
    rng = np.random.default_rng(args.seed)
    if args.malloc_arena_max is not None:
        os.environ["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)  # inherited by serve's process
    serve_args = [] if args.no_live else ["--file", str(SAMPLE_SPEECH), "--loop"]
    sub = Subscriber()
    serve = ServeProcess([*serve_args, "--no-admission"], ROOT / "runs" / "bench" / "line_soak_serve.log")
    marker = ROOT / "runs" / "bench" / f"line_soak_trimmed.{os.getpid()}"
    if args.trim:
        os.environ["KSDIFF_SOAK_TRIMMED"] = str(marker)
        at = serve.args.index("-m")
        serve.args[at : at + 2] = ["-c", TRIM_WRAPPER]
    serve.start(sub)
    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        with Client(pub=serve.pub, router=serve.router, streams=(), timeout=60) as client:
            client.wait_for_runtime(60)
            baseline = serve_rss_mib(serve.pid)
            sampler = PeakSampler(serve.pid)
            bursts = range(1, args.bursts + 1)
            progress = tqdm(bursts, unit="burst") if tqdm is not None else bursts
            for burst in progress:
                lengths = [float(x) for x in rng.uniform(args.min_s, args.max_s, args.lines)]
                t0 = time.monotonic()
                ended, lost, frames = run_burst(client, burst, lengths, speech)
                took = time.monotonic() - t0
                time.sleep(args.gap)  # the game's pause between scenes, not synchronisation
                threads, fds = proc_counts(serve.pid)
                live = sub.streams.get(LIVE)
                row = {"burst": burst, "rss_mib": round(serve_rss_mib(serve.pid), 2),
                       "peak_mib": round(max(sampler.take(), 0.0), 2), "took_s": round(took, 2), "ended": ended,
                       "lost": lost, "frames": frames, "threads": threads, "fds": fds,
                       "live_frames": len(live.seq) if live is not None else 0,
                       "elapsed_s": round(time.monotonic() - started, 1), "load1": round(os.getloadavg()[0], 2)}
                rows.append(row)
                if tqdm is not None:
                    progress.set_postfix(rss=f"{row['rss_mib']:.0f} MiB")
            sampler.close()
            trim = None
            if args.trim:
                rss_before = serve_rss_mib(serve.pid)
                if malloc_trim_in(serve, marker):
                    trim = {"before_mib": round(rss_before, 2), "after_mib": round(serve_rss_mib(serve.pid), 2)}
    finally:
        serve.stop()
        sub.close()
        marker.unlink(missing_ok=True)

    print(f"serve RSS before the first burst: {baseline:.1f} MiB; load average before {load_before[0]:.2f}")
    print("burst  RSS MiB  peak MiB  took s  ended  lost  frames  threads  fds  live frames  load1")
    for r in rows:
        print(f"{r['burst']:5d}  {r['rss_mib']:7.1f}  {r['peak_mib']:8.1f}  {r['took_s']:6.1f}  {r['ended']:5d}  "
              f"{r['lost']:4d}  {r['frames']:6d}  {r['threads']:7d}  {r['fds']:3d}  {r['live_frames']:11d}  "
              f"{r['load1']:5.2f}")
    half = rows[len(rows) // 2 :]
    second_half = slope([r["burst"] for r in half], [r["rss_mib"] for r in half]) * 1024
    whole = slope([r["burst"] for r in rows], [r["rss_mib"] for r in rows]) * 1024
    print(f"RSS slope: {whole:.0f} KiB a burst over all bursts, {second_half:.0f} KiB a burst over the second half; "
          f"{rows[-1]['rss_mib'] - baseline:+.1f} MiB after {len(rows)} bursts")
    if args.trim:
        print("malloc_trim(0) in serve: " + (f"RSS {trim['before_mib']:.1f} -> {trim['after_mib']:.1f} MiB"
                                             if trim else "serve did not say it ran"))
    result = {
        "machine": machine(), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "psutil": psutil is not None, "load_before": [round(x, 2) for x in load_before],
        "baseline_rss_mib": round(baseline, 2), "slope_kib_per_burst": round(whole, 1),
        "slope_kib_per_burst_second_half": round(second_half, 1), "malloc_trim": trim, "bursts": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.plot:
        png = args.out.with_suffix(".png")
        plot(rows, baseline, png)
        print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
