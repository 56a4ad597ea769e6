"""What one call of the streaming recogniser costs in ONNX Runtime, as live rounds and bakes make it.

    python -m benchmarks.recogniser_step [--graph OTHER.onnx] [--batches 1 3 6 12] [--calls 300]

Live: B streams, each with 2.9 s of the bundled speech behind it (its cache full), given their next chunk (one
20 ms frame at the live lookahead, 0; three frames at lookahead 2) in one ``session.run``, the call a round
makes (``OnnxStreamingRecogniser.step``; the engine cuts a round's call into one part per core, so a
12-stream round on 2 cores makes two 6-stream calls). Whole clips: ``whole``, a bake's one call over a
clip of 2, 5, 10 and 20 s. One intra-op thread, as `serve` runs it. ``--graph`` times another export of
``StreamStep`` with the same weights (e.g. the graph of an earlier commit: ``git show
REV:ksdiff_runtime/assets/streaming_recogniser.onnx > old.onnx``), the runs of the two graphs alternated
(``--rounds``) so the machine's drift falls on both alike; the log-probabilities of each graph are compared
with the shipped one's on the same audio.

Writes benchmarks/recogniser_step.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.graph_calls import report, time_calls
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features.streaming_frontend import WEIGHTS
from ksdiff_runtime.features.streaming_recogniser_onnx import STEP_GRAPH, OnnxStreamingRecogniser
from ksdiff_runtime.inputs.guards import load_audio

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ["log_probs", "keys_out", "values_out", "conv_out", "cache_valid_out"]
HISTORY_S = 2.9  # audio behind each stream: more than the 2 s of cached keys and values
WHOLE_S = (2, 5, 10, 20)


def live_feeds(rec: OnnxStreamingRecogniser, audio: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """The inputs of a round's call: ``batch`` streams, each from another place in the speech, their caches full,
    given their next chunk."""
    streams = []
    for b in range(batch):
        s = rec.new_stream()
        start = (b * 7919) % (audio.size - int(HISTORY_S * 16000) - 16000)
        s.push(audio[start : start + int(HISTORY_S * 16000)])
        rec.step([s])
        s.push(audio[start + int(HISTORY_S * 16000) : start + int(HISTORY_S * 16000) + 16000])
        streams.append(s)
    return rec._feeds(streams, [s.window() for s in streams])


def whole_feeds(rec: OnnxStreamingRecogniser, clip: np.ndarray) -> dict[str, np.ndarray]:
    s = rec.new_stream()
    s.push(clip)
    s.end()
    frames = -(-(s.samples // 320 + 1) // rec.chunk) * rec.chunk
    return rec._feeds([s], [s.window(frames)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--graph", type=Path, help="another export of StreamStep to time beside the shipped one")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3, 6, 12], help="streams in a live call")
    ap.add_argument("--lookaheads", type=int, nargs="+", default=[0, 2], help="recogniser lookaheads (frames)")
    ap.add_argument("--calls", type=int, default=300, help="live calls timed per batch and round")
    ap.add_argument("--whole-calls", type=int, default=5, help="calls timed per whole clip and round")
    ap.add_argument("--rounds", type=int, default=2, help="times every graph is timed, the graphs alternated")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "recogniser_step.json")
    args = ap.parse_args(argv)
    graphs = {"shipped": STEP_GRAPH} | ({"other": args.graph} if args.graph else {})
    audio, _ = load_audio(SAMPLE_SPEECH)
    audio = np.tile(audio, 4)
    recs = {(g, la): OnnxStreamingRecogniser(WEIGHTS, lookahead=la, graph=path)
            for g, path in graphs.items() for la in args.lookaheads}
    # each graph's own inputs (its streams fed the same audio: the state's layout may differ between exports)
    cases = [(f"live, lookahead {la}, B={b}", la, {g: live_feeds(recs[g, la], audio, b) for g in graphs}, args.calls)
             for la in args.lookaheads for b in args.batches]
    cases += [(f"whole clip {s} s", 0, {g: whole_feeds(recs[g, 0], audio[: s * 16000]) for g in graphs},
               args.whole_calls) for s in WHOLE_S]
    ms: dict[str, dict[str, list[float]]] = {name: {g: [] for g in graphs} for name, *_ in cases}
    differ: dict[str, float] = {}
    with tqdm(total=args.rounds * len(graphs) * len(cases), unit="case", desc="recogniser calls") as bar:
        for _ in range(args.rounds):
            for name, la, feeds, calls in cases:
                for g in graphs:
                    run = partial(recs[g, la].session.run, OUTPUTS, feeds[g])
                    ms[name][g].append(float(np.median(time_calls(run, calls))))
                    bar.update()
    for name, la, feeds, _ in cases:
        if "other" in graphs:
            a, b = (recs[g, la].session.run(OUTPUTS[:1], feeds[g])[0] for g in ("shipped", "other"))
            differ[name] = float(np.abs(a - b).max())
    return report(graphs, args.rounds, ms, differ, "log_probs_max_abs_diff", "log-probabilities", args.out)


if __name__ == "__main__":
    main()
