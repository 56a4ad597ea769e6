"""The head's low-pass in the liveliness stage (engine/liveliness.py) at several orders and cutoffs, on
held-out clips, with the stage's sway (and once without it).

    python -m benchmarks.head_steadiness [--corpus data/corpus] [--clips 40] [--filters 2:1,3:1.4] [--checkpoint K]

Held-out synthetic clips (the corpus's test split, synthetic voices) are streamed live through the
engine (ONNX Runtime, low-latency preset, the voice gate on, liveliness off) once; the liveliness stage
is then applied to those frames (each clip with its own seed, its index, as streams each get their own),
as shipped but without the head sway, and with each low-pass (order:cutoff in Hz) and the sway. Reported
against the teacher's head on the same clips: the head's standard deviation (degrees, pitch / yaw / roll),
motion beats a second (metrics.motion_beats) and BeatAlign with the audio's onsets. Needs the corpus
(`ksdiff-runtime corpus`). Writes benchmarks/head_steadiness.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ksdiff_runtime import motion
from ksdiff_runtime.engine.liveliness import Liveliness, LivelinessConfig
from ksdiff_runtime.server.runtime import build_engine
from ksdiff_runtime.training.metrics import audio_beats, beat_align, motion_beats

from .live import machine

ROOT = Path(__file__).resolve().parent.parent
D = motion.NUM_BLENDSHAPES


def figures(heads: list[np.ndarray], audios: list[np.ndarray]) -> dict:
    seconds = sum(len(h) for h in heads) / motion.FPS
    return {
        "head_std_deg": [round(float(x), 2) for x in np.mean([np.rad2deg(h).std(axis=0) for h in heads], axis=0)],
        "beats_per_s": round(sum(len(motion_beats(h)) for h in heads) / seconds, 2),
        "beat_align": round(float(np.mean([beat_align(audio_beats(a), motion_beats(h))
                                           for a, h in zip(audios, heads, strict=True)])), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.head_steadiness", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus", help="corpus folder")
    p.add_argument("--clips", type=int, default=40, help="held-out synthetic clips (default 40)")
    p.add_argument("--filters", default="2:2,2:1.5,2:1.2,2:1,3:1.2,3:1.3,3:1.4,4:1.4",
                   help="head low-passes as ORDER:CUTOFF_HZ, comma-separated (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: the bundled one)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "head_steadiness.json", help="results (JSON)")
    args = p.parse_args(argv)
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    clips = [c for c in manifest["clips"] if c.get("kind") is None and c["split"] == "test"][: args.clips]
    teacher, audios = [], []
    for c in clips:
        z = np.load(args.corpus / c["file"])
        teacher.append(z["head"])
        audios.append(z["audio"].astype(np.float32))
    engine = build_engine("onnxruntime", "low-latency", checkpoint=args.checkpoint, liveliness=False)
    try:
        model = [np.stack([np.concatenate([f.blendshapes, f.head]) for f in engine.stream_clip(a, seed=3)])
                 .astype(np.float32) for a in tqdm(audios, desc="live", unit="clip")]
    finally:
        engine.close()
    rows = {"teacher": figures(teacher, audios), "model alone": figures([v[:, D:] for v in model], audios)}
    rows["liveliness as shipped, without the sway"] = figures(
        [Liveliness(LivelinessConfig(head_sway=0.0), i).apply(v.copy())[:, D:] for i, v in enumerate(model)], audios)
    for spec in args.filters.split(","):
        order, hz = spec.split(":")
        config = dataclasses.replace(LivelinessConfig(), head_smoothing_order=int(order), head_smoothing_hz=float(hz))
        rows[f"liveliness, order {order} at {float(hz):g} Hz"] = figures(
            [Liveliness(config, i).apply(v.copy())[:, D:] for i, v in enumerate(model)], audios)
    for label, r in rows.items():
        print(f"{label:>32}: head std {r['head_std_deg']} deg, beats {r['beats_per_s']}/s, "
              f"BeatAlign {r['beat_align']}")
    args.out.write_text(json.dumps({"machine": machine(), "clips": len(clips), "rows": rows}, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
