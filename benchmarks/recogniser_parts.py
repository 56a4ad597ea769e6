"""Whether a round's streaming recogniser call is cheaper cut into one part per core or whole, in live rounds.

    python -m benchmarks.recogniser_parts [--streams 4 8 12 16] [--block 100] [--repeats 4]

B low-latency streams of the bundled speech (each from another place), in the engine as `serve` builds it (ONNX
Runtime, the voice gate, closure and liveliness on), fed a frame of audio each per round and paced a round every
33 ms, as live audio starts `serve`'s rounds. Blocks of ``--block`` rounds alternate the recogniser's call whole
(one part) and cut into one part per core, ``--repeats`` times each, in one process, so the machine's drift falls
on both alike. For each: the round's wall time (median and mean of a block, the median over blocks), the
recogniser's share of it (``OnnxStreamingRecogniser.step``) and its calls a round. The shipped rule cuts a call into
parts of ``MIN_PART_STREAMS`` streams or more, one per core at most (``shipped_parts``); this benchmark forces
either way.

Writes benchmarks/recogniser_parts.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.live import machine
from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features.streaming_recogniser_onnx import MIN_PART_STREAMS
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_runtime.parallel import row_parts
from ksdiff_runtime.server.runtime import build_engine

ROOT = Path(__file__).resolve().parent.parent
HOP_SAMPLES = motion.SAMPLE_RATE // motion.FPS + 1  # a frame of audio a round (a little over)
SETTLE = 10  # rounds at the start of a block not counted (the switch from the other way)


def measure(streams: int, block: int, repeats: int, bar: tqdm) -> dict[str, Any]:
    engine = build_engine("onnxruntime-cpu")
    try:
        return _alternate(engine, streams, block, repeats, bar)
    finally:
        engine.close()


def _alternate(engine: Any, streams: int, block: int, repeats: int, bar: tqdm) -> dict[str, Any]:
    recogniser = engine.front_end._stream_asr
    cores = recogniser.parallel
    spent, calls = [0.0], [0]
    step, run = recogniser.step, recogniser.session.run

    def timed_step(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    def counted_run(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return run(*args, **kwargs)

    recogniser.step, recogniser.session.run = timed_step, counted_run
    audio, _ = load_audio(SAMPLE_SPEECH)
    audio = np.tile(audio, -(-(2 * repeats + 1) * block * HOP_SAMPLES // audio.size) + 2)
    ids = [engine.open_stream(seed=i) for i in range(streams)]
    fed = 0

    def run_block(parts: int) -> tuple[float, float, float, float]:
        nonlocal fed
        recogniser.parallel, recogniser.min_part_streams = parts, 1
        walls, recogniser_s, recogniser_calls = [], 0.0, 0
        next_round = time.perf_counter()
        for k in range(block):
            next_round += 1 / motion.FPS
            time.sleep(max(0.0, next_round - time.perf_counter()))  # the hop's pace, as live audio arrives
            for i, sid in enumerate(ids):
                start = i * 7919 + fed * HOP_SAMPLES
                engine.push(sid, audio[start : start + HOP_SAMPLES])
            fed += 1
            spent[0], calls[0] = 0.0, 0
            t = time.perf_counter()
            while engine.has_work():
                engine.step()
            if k >= SETTLE:
                walls.append(time.perf_counter() - t)
                recogniser_s += spent[0]
                recogniser_calls += calls[0]
        counted = block - SETTLE
        return (1000 * float(np.median(walls)), 1000 * float(np.mean(walls)), 1000 * recogniser_s / counted,
                recogniser_calls / counted)

    run_block(cores)  # warm
    blocks: dict[str, list[tuple[float, float, float, float]]] = {"whole": [], "parts": []}
    for _ in range(repeats):
        for way, parts in (("whole", 1), ("parts", cores)):
            blocks[way].append(run_block(parts))
            bar.update()
    row: dict[str, Any] = {"streams": streams, "cores": cores,
                           "shipped_parts": len(row_parts(streams, cores, MIN_PART_STREAMS))}
    for way, got in blocks.items():
        a = np.array(got)
        row[way] = {"round_p50_ms": round(float(np.median(a[:, 0])), 2),
                    "round_p50_ms_range": [round(float(a[:, 0].min()), 2), round(float(a[:, 0].max()), 2)],
                    "round_mean_ms": round(float(np.median(a[:, 1])), 2),
                    "recogniser_ms": round(float(np.median(a[:, 2])), 2),
                    "recogniser_ms_range": [round(float(a[:, 2].min()), 2), round(float(a[:, 2].max()), 2)],
                    "recogniser_calls_per_round": round(float(np.median(a[:, 3])), 2)}
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[4, 8, 12, 16], help="live streams in the rounds")
    ap.add_argument("--block", type=int, default=100, help=f"rounds a block (the first {SETTLE} not counted)")
    ap.add_argument("--repeats", type=int, default=4, help="blocks each way, alternated")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "recogniser_parts.json")
    args = ap.parse_args(argv)
    if args.block <= SETTLE or args.repeats < 1 or min(args.streams) < 1:
        ap.error(f"--block must be over {SETTLE}, --repeats and --streams at least 1")
    rows = []
    with tqdm(total=len(args.streams) * 2 * args.repeats, unit="block", desc="paced rounds") as bar:
        for n in args.streams:
            rows.append(measure(n, args.block, args.repeats, bar))
    doc = {"machine": machine(), "min_part_streams": MIN_PART_STREAMS, "block": args.block, "repeats": args.repeats,
           "load_average_at_end": list(os.getloadavg()[:2]), "rows": rows}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for r in rows:
        w, p = r["whole"], r["parts"]
        print(f"{r['streams']:3d} streams: recogniser whole {w['recogniser_ms']:.2f} ms, in {r['cores']} parts "
              f"{p['recogniser_ms']:.2f}; round mean {w['round_mean_ms']:.2f} against {p['round_mean_ms']:.2f} ms "
              f"(shipped: {r['shipped_parts']} part{'s' * (r['shipped_parts'] > 1)})")
    return doc


if __name__ == "__main__":
    main()
