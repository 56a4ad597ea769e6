"""The runtime under load, as users load it: more streams than fit, and other programs busy on the CPU.

    python -m benchmarks.load overload --minutes 15     8 live streams asked of the 2-core CPU
    python -m benchmarks.load busy-cores --minutes 2    one live stream, with 0, 1 and 2 cores kept busy
    python -m benchmarks.load soak --minutes 60         8 streams at 60 fps (quality preset) for an hour

Everything runs through the real command (`ksdiff-runtime serve` in its own process, real-time file
sources looping the bundled speech, 10 ms blocks) and a subscriber in this process (benchmarks/live.py).

overload: a single-stream run first (the reference), then serve asked for 8 file streams at once. The
runtime admits what its measured capacity holds and refuses the rest (logged); for the admitted
streams the run reports p95 capture-to-publish latency against the reference, the latency in every
minute (a backlog shows as latency that grows), frames shed, and the runtime's RSS over the run.

busy-cores: one live stream while `cores` other processes spin on the CPU (as OBS and a game do),
p95 latency and frames shed for each.

soak: 8 file streams at 60 fps output on the quality preset (NPC dialogue: the preset that fits 8
streams on this CPU) for an hour: seq gaps for a subscriber that keeps up, RSS growth, latency per
ten minutes.

Results go to benchmarks/load.json (+ load.png); nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.engine.capacity import ROOM_PATTERN
from ksdiff_runtime.inputs.guards import load_audio

from .live import CpuBurner, ServeProcess, Subscriber, machine, rss_mib, stream_figures

ROOT = Path(__file__).resolve().parent.parent
LOOP_SILENCE_S = 0.5  # between loops of the sample, so the streams also see pauses
WARM_S = 5.0  # the first seconds after a stream starts are not counted
RSS_EVERY_S = 10.0
STATS_ROOM = r"stats (\d+)s .*?" + ROOM_PATTERN  # serve's stats line: its uptime, and the room (capacity.py)


def stream_files(n: int, folder: Path) -> list[Path]:
    """n looping copies of the bundled speech, each starting at another place (streams do not move in step)."""
    audio, _ = load_audio(SAMPLE_SPEECH)
    loop = np.concatenate([audio, np.zeros(round(LOOP_SILENCE_S * motion.SAMPLE_RATE), np.float32)])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"voice{i}.wav"
        sf.write(str(path), np.roll(loop, -i * loop.size // max(n, 1)), motion.SAMPLE_RATE, subtype="FLOAT")
        paths.append(path)
    return paths


def live_run(files: list[Path], seconds: float, work: Path, label: str, extra: tuple[str, ...] = (),
             burn_cores: int = 0, preset: str = "low-latency", window_s: float = 60.0) -> dict[str, Any]:
    """serve playing ``files`` in real time (looped) for ``seconds``; figures per admitted stream."""
    args = ["--backend", "onnxruntime", "--preset", preset, "--loop", "--stats", "1", *extra,
            *(a for f in files for a in ("--file", str(f)))]
    sub = Subscriber()
    serve = ServeProcess(args, work / f"serve-{label}.log")
    with CpuBurner(burn_cores):
        serve.start(sub)
        rss: list[tuple[float, float]] = []
        t0 = time.monotonic_ns()
        end = time.monotonic() + WARM_S + seconds
        while time.monotonic() < end:
            rss.append(((time.monotonic_ns() - t0) / 1e9, rss_mib(serve.pid)))
            time.sleep(min(RSS_EVERY_S, max(0.0, end - time.monotonic())))  # the run's length, not a sync
        t1 = time.monotonic_ns()
        stop_s = serve.stop()
    sub.close()
    log = serve.log()
    refused = re.findall(r"file (\S+) not served: (.*)", log)
    start = t0 + int(WARM_S * 1e9)
    streams = {sid: stream_figures(r, start, t1, window_s) for sid, r in sorted(sub.streams.items())}
    shed = {sid: s["seq_gaps"] for sid, s in streams.items()}
    steady = [v for t, v in rss if t >= WARM_S]
    # the room the runtime says it has each second (its stats line) and what bounds it: the cores, and the engine
    # thread's round, which the rounds served rescale (engine/capacity.py)
    room = [(int(t), int(n), int(cores), int(rnd) if rnd else None, float(scale) if scale else None)
            for t, n, cores, rnd, scale in re.findall(STATS_ROOM, log)]
    return {
        "label": label, "preset": preset, "args": extra, "seconds": seconds, "streams_asked": len(files),
        "streams_admitted": len(streams),
        "refused": [{"stream": sid, "reason": why} for sid, why in refused],
        "cores_kept_busy": burn_cores,
        "ready_s": round(serve.ready_s, 2), "shutdown_s": round(stop_s, 2),
        "per_stream": streams,
        "p95_ms_worst": max((s["capture_to_publish_ms"]["p95"] or 0.0) for s in streams.values()) if streams else None,
        "shed_frames": shed,
        "rss_mib": {"first": round(steady[0], 1), "last": round(steady[-1], 1), "max": round(max(steady), 1),
                    "growth_pct": round(100 * (steady[-1] - steady[0]) / steady[0], 2)} if steady else None,
        "rss_series": [(round(t, 1), round(v, 1)) for t, v in rss],
        "room": {"first": room[0][1], "last": room[-1][1], "min": min(r[1] for r in room),
                 "max": max(r[1] for r in room), "round_scale_last": room[-1][4]} if room else None,
        "room_series": {"uptime_s": [r[0] for r in room], "room": [r[1] for r in room],
                        "by_cores": [r[2] for r in room], "by_round": [r[3] for r in room],
                        "round_scale": [r[4] for r in room]} if room else None,
    }


def overload(minutes: float, streams: int, work: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    files = stream_files(streams, work / "voices")
    print(f"reference: 1 stream for {min(minutes, 2.0):g} min ...", flush=True)
    reference = live_run(files[:1], 60 * min(minutes, 2.0), work, "reference", extra)
    print(f"overload: {streams} streams asked for {minutes:g} min ...", flush=True)
    loaded = live_run(files, 60 * minutes, work, "overload", extra)
    ref_p95 = reference["p95_ms_worst"]
    worst = loaded["p95_ms_worst"]
    windows = [w["p95"] for s in loaded["per_stream"].values() for w in s["latency_by_window"][1:]]
    return {
        "reference": reference, "overload": loaded,
        "targets": {
            "p95_within_1_5x_single": {"single_p95_ms": ref_p95, "admitted_worst_p95_ms": worst,
                                       "ratio": round(worst / ref_p95, 2) if worst and ref_p95 else None,
                                       "met": bool(worst and ref_p95 and worst <= 1.5 * ref_p95)},
            "no_backlog_growth": {"p95_ms_per_minute_range": [min(windows), max(windows)] if windows else None,
                                  "met": bool(windows) and max(windows) <= 1.5 * ref_p95},
            "rss_growth_below_5_pct": {"growth_pct": loaded["rss_mib"]["growth_pct"] if loaded["rss_mib"] else None,
                                       "met": bool(loaded["rss_mib"]) and loaded["rss_mib"]["growth_pct"] < 5.0},
        },
    }


def busy_cores(minutes: float, work: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    files = stream_files(1, work / "voices")
    runs = {}
    for cores in (0, 1, 2):
        print(f"one stream, {cores} core(s) kept busy, {minutes:g} min ...", flush=True)
        runs[str(cores)] = live_run(files, 60 * minutes, work, f"busy{cores}", extra, burn_cores=cores)
    p95 = {c: r["p95_ms_worst"] for c, r in runs.items()}
    return {"runs": runs, "targets": {
        "one_core_busy_p95_le_160ms": {"p95_ms": p95["1"], "met": bool(p95["1"] and p95["1"] <= 160)},
        "both_cores_busy_p95_le_250ms": {"p95_ms": p95["2"], "met": bool(p95["2"] and p95["2"] <= 250)},
    }}


def soak(minutes: float, streams: int, work: Path) -> dict[str, Any]:
    files = stream_files(streams, work / "voices")
    print(f"soak: {streams} streams at 60 fps, quality preset, {minutes:g} min ...", flush=True)
    run = live_run(files, 60 * minutes, work, "soak", extra=("--fps", "60"), preset="quality", window_s=600.0)
    gaps = sum(s["seq_gaps"] for s in run["per_stream"].values())
    return {"run": run, "targets": {
        "all_streams_admitted": {"admitted": run["streams_admitted"], "asked": streams,
                                 "met": run["streams_admitted"] == streams},
        "no_gaps": {"seq_gaps": gaps, "met": gaps == 0},
        "rss_growth_below_5_pct": {"growth_pct": run["rss_mib"]["growth_pct"] if run["rss_mib"] else None,
                                   "met": bool(run["rss_mib"]) and run["rss_mib"]["growth_pct"] < 5.0},
    }}


def plot(doc: dict[str, Any], path: Path) -> None:
    from ksdiff_runtime.cli.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
    if "overload" in doc:
        ax = axes[0]
        run = doc["overload"]["overload"]
        for sid, s in run["per_stream"].items():
            ax.plot([w["p95"] for w in s["latency_by_window"]], "o-", label=f"{sid} (admitted)")
        ref = doc["overload"]["reference"]["p95_ms_worst"]
        if ref:
            ax.axhline(ref, color="k", ls=":", label=f"1 stream alone: {ref:.0f} ms")
            ax.axhline(1.5 * ref, color="r", ls="--", lw=0.8, label="1.5x that (target)")
        ax.set_xlabel("minute of the run")
        ax.set_ylabel("p95 capture-to-publish (ms)")
        ax.set_title(f"{run['streams_asked']} streams asked, {run['streams_admitted']} admitted, "
                     f"{len(run['refused'])} refused")
        ax.legend(fontsize=7)
    if "busy_cores" in doc:
        ax = axes[1]
        for cores, run in doc["busy_cores"]["runs"].items():
            s = next(iter(run["per_stream"].values()))
            ax.bar(int(cores), s["capture_to_publish_ms"]["p95"], color="C0")
            ax.text(int(cores), s["capture_to_publish_ms"]["p95"], f"{s['capture_to_publish_ms']['p95']:.0f} ms\n"
                    f"shed {s['seq_gaps']}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks([0, 1, 2])
        ax.set_xlabel("cores kept busy by other processes")
        ax.set_ylabel("p95 capture-to-publish (ms)")
        ax.set_title("one low-latency stream")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="+", choices=("overload", "busy-cores", "soak"), help="the runs to do")
    p.add_argument("--minutes", type=float, default=15.0, help="length of the overload run (busy-cores: per run, "
                   "a fifth of it, at least 1)")
    p.add_argument("--streams", type=int, default=8, help="streams asked for in the overload run (default 8)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "load.json", help="results (and a .png beside)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "load", help="scratch: audio files, serve logs")
    p.add_argument("--serve-args", default="", metavar="FLAGS",
                   help="more flags for every serve of the overload and busy-cores runs, e.g. '--float32'")
    args = p.parse_args(argv)
    extra = tuple(args.serve_args.split())
    doc: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc["machine"] = machine()
    if "overload" in args.which:
        doc["overload"] = overload(args.minutes, args.streams, args.work, extra)
    if "busy-cores" in args.which:
        doc["busy_cores"] = busy_cores(max(1.0, args.minutes / 5), args.work, extra)
    if "soak" in args.which:
        doc["soak"] = soak(args.minutes, args.streams, args.work)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, args.out.with_suffix(".png"))
    for section in ("overload", "busy_cores", "soak"):
        for name, t in doc.get(section, {}).get("targets", {}).items():
            print(f"{section}: {name}: {'met' if t['met'] else 'MISSED'} {json.dumps(t)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
