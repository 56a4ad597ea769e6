"""What one call of the stream conditioner costs in ONNX Runtime, as live rounds make it.

    python -m benchmarks.conditioner_step [--graph OTHER.onnx] [--batches 1 3 6 12] [--calls 300]

A live round's call (``OnnxRuntimeBackend.condition_stream``): B streams' hops in one ``session.run``, each
row a hop of the preset's shape as a stream keeping up makes it (``StreamState.hop_window``: the window's N
new frames, the first H committed; ``low-latency``: N = 8, H = 1; ``quality``: N = 19, H = 15),
random features and state of the graph's shapes (a call's cost does not depend on its numbers). The engine
cuts a round's call into one part per core, so a 12-stream round on 2 cores makes two 6-stream calls. One
intra-op thread, as `serve` runs it. ``--graph`` times another export of the stream conditioner of the same
checkpoint (e.g. an earlier commit's: ``git show REV:ksdiff_runtime/assets/export/conditioner_stream.onnx >
old.onnx``), the runs of the two graphs alternated (``--rounds``) so the machine's drift falls on both alike;
their outputs are compared on the same inputs.

Writes benchmarks/conditioner_step.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from benchmarks.graph_calls import report, time_calls
from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT, load_export
from ksdiff_runtime.backends.export import stream_conditioner_inputs
from ksdiff_runtime.engine.presets import get_preset

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("low-latency", "quality")


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--graph", type=Path, help="another export of the stream conditioner, timed beside the shipped one")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 3, 6, 12], help="streams in a call")
    ap.add_argument("--calls", type=int, default=300, help="calls timed per batch and round")
    ap.add_argument("--rounds", type=int, default=2, help="times every graph is timed, the graphs alternated")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "conditioner_step.json")
    args = ap.parse_args(argv)
    cfg, _, manifest = load_export(SHIPPED_EXPORT)
    shipped = SHIPPED_EXPORT / manifest["graphs"]["stream_conditioner"]["file"]
    graphs = {"shipped": shipped} | ({"other": args.graph} if args.graph else {})
    sessions = {g: session(path) for g, path in graphs.items()}
    fed = {i.name for i in sessions["shipped"].get_inputs()}
    outputs = [o.name for o in sessions["shipped"].get_outputs()]
    cases = []
    for name in PRESETS:
        p = get_preset(name)
        for b in args.batches:
            feeds = stream_conditioner_inputs(cfg, b, p.window_frames, p.hop_frames, 1, seed=b)
            # a stream keeping up: its hop's N new frames, the first H of them committed (stream.hop_window)
            for name_in in ("feats", "prosody"):
                feeds[name_in] = np.ascontiguousarray(feeds[name_in][:, : p.window_frames])
            cases.append((f"{name}, B={b}", {k: v for k, v in feeds.items() if k in fed}))
    ms: dict[str, dict[str, list[float]]] = {name: {g: [] for g in graphs} for name, _ in cases}
    with tqdm(total=args.rounds * len(graphs) * len(cases), unit="case", desc="stream conditioner calls") as bar:
        for _ in range(args.rounds):
            for name, feeds in cases:
                for g in graphs:
                    run = partial(sessions[g].run, outputs, feeds)
                    ms[name][g].append(float(np.median(time_calls(run, args.calls))))
                    bar.update()
    differ: dict[str, float] = {}
    if "other" in graphs:
        for name, feeds in cases:
            a, b = (sessions[g].run(outputs, feeds) for g in ("shipped", "other"))
            differ[name] = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    return report(graphs, args.rounds, ms, differ, "outputs_max_abs_diff", "outputs", args.out)


if __name__ == "__main__":
    main()
