"""How steady is the warm-up's capacity probe? (what admission believes before any stream is served)

    python -m benchmarks.capacity_probe [--warm-ups 8] [--repeats 1 3]

`serve` builds its engine (engine/engine.py ``warm_up``) and measures, on 0.6 s of the bundled speech (``PROBE_S``)
run as `serve` runs live streams (a hop of audio a round, a round every hop, the streams staggered), what one live
stream and ``ROUND_PROBE`` at once cost: the CPU a stream adds, the rounds' fixed part, and the engine thread's
round. Admission starts from those figures
(engine/capacity.py) until the streams served refresh them. One probe reads little audio, so a hiccup of the
machine moves it; the warm-up keeps the median of
``PROBE_REPEATS`` probes. This builds one engine as `serve` does (ONNX Runtime on the CPU, `low-latency`,
voice gate and liveliness on) and warms it up ``--warm-ups`` times with each probe count, in turn, reporting
each figure's spread (min, median, max, and the coefficient of variation) and the streams an idle machine
would be said to have room for (the cores other programs use set to 0, so runs on a busy machine compare),
with the machine's load average before and after.

Writes benchmarks/capacity_probe.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.live import machine
from ksdiff_runtime.server.runtime import build_engine

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("stream_cores", "fixed_cores", "round_ms_per_stream", "room_idle")


def probe(engine: Any, repeats: int) -> dict[str, float]:
    t0 = time.perf_counter()
    engine.warm_up(probe_repeats=repeats)
    seconds = time.perf_counter() - t0
    r = engine.capacity.reading()
    return {"stream_cores": r.stream_cores, "fixed_cores": r.fixed_cores,
            "round_ms_per_stream": r.rounds.per_stream_ms if r.rounds else float("nan"),
            "room_idle": float(dataclasses.replace(r, other_cores=0.0).streams_that_fit()),
            "warm_up_s": seconds}


def spread(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, float)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max()),
            "cv": float(v.std() / v.mean()) if v.mean() else 0.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--warm-ups", type=int, default=8, help="warm-ups per probe count")
    ap.add_argument("--repeats", type=int, nargs="+", default=[1, 3], help="probe counts to compare")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "capacity_probe.json")
    args = ap.parse_args(argv)

    load_before = os.getloadavg()[0]
    engine = build_engine("onnxruntime-cpu")
    readings: dict[int, list[dict[str, float]]] = {r: [] for r in args.repeats}
    for _ in tqdm(range(args.warm_ups), desc="warm-ups", unit="round"):
        for repeats in args.repeats:  # interleaved, so a change in the machine's load touches both
            readings[repeats].append(probe(engine, repeats))
    engine.close()

    # the machine's load (1-minute average, before and after): another program's load widens the spread
    result: dict[str, Any] = {"machine": machine(), "load_average": [load_before, os.getloadavg()[0]],
                              "warm_ups": args.warm_ups, "by_probe_repeats": {}}
    for repeats, rows in readings.items():
        summary = {f: spread([row[f] for row in rows]) for f in (*FIGURES, "warm_up_s")}
        result["by_probe_repeats"][str(repeats)] = {"summary": summary, "readings": rows}
        print(f"{repeats} probe(s): " + "; ".join(
            f"{f} {s['min']:.3g}-{s['max']:.3g} (median {s['median']:.3g}, cv {s['cv']:.1%})"
            for f, s in summary.items()))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
