"""`python -m benchmarks.default_style`: would one fixed network style serve better than the null style?

`serve` gives the network the null style for a neutral stream (engine/style.py; a mood's style for one in a
mood); a stream given a reference style from another clip of its own persona (as `eval-stream` and the SDK
can) has a clearly better mouth. This asks whether that gain needs the persona, or whether any ordinary style
vector would do: the held-out clips streamed live (`low-latency`, ONNX Runtime, all at once as in
`eval-stream`) with the null style, with the mean of the training clips' style vectors, with the training
style nearest that mean (a real persona's), and with each clip's own reference. Writes
benchmarks/default_style.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.model.checkpoint import DEFAULT_CHECKPOINT, load_model
from ksdiff_runtime.training.dataset import load_clips
from ksdiff_runtime.training.evaluate import held_out, score
from ksdiff_runtime.training.stream_eval import METRICS, all_at_once, stream_animations


def training_styles(model, corpus: Path, cache: Path) -> np.ndarray:
    """[N, style_dim]: the style vector of every training clip's first window, as references are taken."""
    clips = load_clips(corpus, cache, model.cfg, "train")
    L = model.cfg.style_clip_frames
    expr = np.stack([motion.take_frames(c.expr, 0, L) for c in clips])
    pose = np.stack([motion.take_frames(c.pose, 0, L) for c in clips])
    with torch.no_grad():
        return model.style_of(torch.from_numpy(expr), torch.from_numpy(pose)).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.default_style", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="model checkpoint")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="a corpus made by `ksdiff-runtime corpus`")
    p.add_argument("--cache", type=Path, default=Path("cache/features"), help="feature cache folder")
    p.add_argument("--max-clips", type=int, default=120, help="held-out clips streamed (0: all)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "default_style.json",
                   help="results file")
    args = p.parse_args(argv)
    model = load_model(args.checkpoint).float().eval()
    held = held_out(model, args.corpus, args.cache, args.max_clips)
    train = training_styles(model, args.corpus, args.cache)
    mean = train.mean(0)
    nearest = train[np.argmin(((train - mean) ** 2).sum(1))]
    n = len(held.clips)
    styles = {"null style (serve)": None, "mean of training styles": np.repeat(mean[None], n, 0),
              "training style nearest the mean": np.repeat(nearest[None], n, 0),
              "each clip's own reference": held.style.numpy()}
    backend = load_backend("onnxruntime-cpu", args.checkpoint)
    rows = {}
    for name, vectors in styles.items():
        engine = StreamingEngine(backend, "low-latency", sessions=all_at_once(held.clips))
        rows[name] = score(held.clips, stream_animations(engine, held.clips, vectors, np.random.default_rng(1)),
                           held.beats_audio, (0.5, 0.5))
        engine.close()
    keys = [(k, label) for k, label, _ in METRICS]
    print(f"\n{n} held-out clips streamed live (low-latency):")
    print("| network style | " + " | ".join(label for _, label in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.4f}" for k, _ in keys) + " |")
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "clips": n, "training_clips": len(train),
                                    "rows": rows}, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
