"""Do NPCs speaking at once move in lockstep? Head-angle correlation between different lines.

    python -m benchmarks.crowd [--corpus data/corpus] [--clips 12]

Held-out clips of the corpus (different voices and lines) are animated as NPC lines (mode "line", pushed
whole) and as live streams, through the engine (ONNX Runtime, low-latency, bilabial closure, voice gate and
liveliness on, as `serve`),
each stream either with one seed shared by all (what a stream opened without a seed got before protocol
1.4: 0) or with the seed a stream without one gets now (``sessions.stream_seed`` of its id). Reported:
the mean and 90th percentile over every pair of clips and head axis of the Pearson correlation of their
head angles over the frames every clip has; the clips' mean head over those frames (motion every stream
makes, whatever its audio) and the correlation left with it taken out. Motion that audio does not
decide (the head's sampled drift) correlates when the noise is shared.

Writes benchmarks/crowd.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime.server.runtime import build_engine
from ksdiff_runtime.sessions import stream_seed

from .live import machine
from .style import held_out

ROOT = Path(__file__).resolve().parent.parent


def mean_r(heads: list[np.ndarray], n: int) -> list[float]:
    rs = []
    for a, b in combinations(heads, 2):
        for axis in range(a.shape[1]):
            x, y = a[:n, axis], b[:n, axis]
            if x.std() > 0 and y.std() > 0:
                rs.append(float(np.corrcoef(x, y)[0, 1]))
    return rs


def head_correlation(heads: list[np.ndarray]) -> dict[str, Any]:
    """Pairwise correlation over the frames every clip has; and what the clips' mean head (the motion they
    share) does, and the correlation left with it taken out."""
    n = min(len(h) for h in heads)
    rs = mean_r(heads, n)
    common = np.mean([h[:n] for h in heads], axis=0)
    rest = mean_r([h[:n] - common for h in heads], n)
    return {"mean_r": round(float(np.mean(rs)), 3), "p90_r": round(float(np.percentile(rs, 90)), 3), "pairs": len(rs),
            "frames": n, "common_deg_at_1_2_s": {axis: [round(float(np.rad2deg(common[min(n - 1, t * 30), k])), 2)
                                                       for t in (1, 2)]
                                                 for k, axis in enumerate(("pitch", "yaw", "roll"))},
            "mean_r_without_common": round(float(np.mean(rest)), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.crowd", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus", help="a corpus (its held-out clips)")
    p.add_argument("--clips", type=int, default=12, help="held-out clips, one NPC each")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "crowd.json", help="the figures (JSON)")
    args = p.parse_args(argv)
    clips = held_out(args.corpus, args.clips)
    engine = build_engine("onnxruntime", "low-latency")
    result: dict[str, Any] = {"machine": machine(), "clips": len(clips)}
    try:
        for mode in ("line", "live"):
            for seeds in ("shared", "own"):
                heads = []
                for i, c in enumerate(clips):
                    seed = 0 if seeds == "shared" else stream_seed(f"npc-{i}")
                    chunks = (c["audio"].size,) if mode == "line" else ()
                    frames = engine.stream_clip(c["audio"], chunks=chunks, seed=seed, mode=mode)
                    heads.append(np.stack([f.head for f in frames]))
                r = head_correlation(heads)
                result[f"{mode}, {seeds} seed"] = r
                print(f"{mode:>4}, {seeds:>6} seed: head correlation between NPCs, mean {r['mean_r']:.3f}, "
                      f"90th percentile {r['p90_r']:.3f} ({r['pairs']} pairs and axes, first {r['frames']} frames); "
                      f"their mean head at 1 and 2 s {r['common_deg_at_1_2_s']} deg; without it, mean r "
                      f"{r['mean_r_without_common']:.3f}", flush=True)
    finally:
        engine.close()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
