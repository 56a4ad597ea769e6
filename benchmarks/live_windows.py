"""How well does a checkpoint make a live hop's frame, by where its context comes from?

    python -m benchmarks.live_windows --checkpoint A.pt [--checkpoint B.pt ...] [--corpus data/corpus]

A `low-latency` hop is the first frame of an 8-frame window whose features stop 2 frames after it, made
by one DDIM step from pure noise (training.dataset.live_windows cuts the same window from a clip, tested
against the engine's own hop window). Its C context frames are, in a stream, the model's own earlier
frames. On windows of the held-out clips, each hop frame is made from two contexts: the teacher's frames
("teacher") and frames the model made hop by hop before it, as a stream does ("self",
training.train.own_context: the preset's head smoothing; ``--rollout`` frames, default C, after the
teacher's frames); the first frame of a training-shaped window (every feature) with the teacher's context
("whole window") is the reference, and the hop with no context known ("none", as at a stream's start) the
other bound. Reported: the mouth's mean absolute error against the teacher and the jawOpen correlation,
every hop with the window's reference style (another clip of its persona, as eval-stream gives streams),
over the same windows and noise for every checkpoint, all on one recogniser's features (``--recogniser``,
default the runtime's streaming one). The features are the model's live block schedule as cached for
training (100 ms blocks), not a `low-latency` stream's 1-frame blocks read early.

The gap between "teacher" and "self" is what a model gains by leaning on a context a stream does not have
(train --live-context, docs/STREAMING_RECOGNISER.md "Live windows"). Writes benchmarks/live_windows.json;
nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ksdiff_runtime import motion
from ksdiff_runtime.engine.presets import get_preset
from ksdiff_runtime.features.frontend import RECOGNISERS
from ksdiff_runtime.model.checkpoint import load_model
from ksdiff_runtime.training.dataset import WindowSampler, live_windows, load_clips
from ksdiff_runtime.training.train import live_hop, own_context, reference_style

ROOT = Path(__file__).resolve().parent.parent
MOUTH = list(motion.MOUTH_INDICES)
JAW = motion.index("jawOpen")
CONTEXTS = ("whole window", "teacher", "self", "none")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", type=Path, required=True, help="a checkpoint (repeatable)")
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder")
    ap.add_argument("--cache", type=Path, default=Path("cache/features"), help="feature cache folder")
    ap.add_argument("--windows", type=int, default=512, help="held-out windows scored (default 512)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--recogniser", choices=RECOGNISERS, default="streaming",
                    help="the phoneme recogniser whose features every checkpoint reads (default: the runtime's)")
    ap.add_argument("--rollout", type=int, default=None,
                    help="frames the model makes before the scored one in 'self', hop by hop (default C, the "
                         "context's length)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "live_windows.json")
    args = ap.parse_args()

    torch.set_num_threads(2)
    preset = get_preset("low-latency")
    shape = (preset.hop_frames, preset.window_frames, preset.model_lookahead_frames)  # (live_windows' cut)
    models = {str(path): load_model(path).float().eval() for path in args.checkpoint}
    # every checkpoint on the same features: the recogniser asked for (the runtime serves "streaming")
    configs = {name: dataclasses.replace(m.cfg, front_end=dataclasses.replace(m.cfg.front_end,
                                                                          recogniser=args.recogniser))
               for name, m in models.items()}
    cfg = next(iter(configs.values()))
    if any(c != cfg for c in configs.values()):
        raise SystemExit("error: the checkpoints have different model configs; score them apart")
    C = cfg.motion_context_frames
    clips = load_clips(args.corpus, args.cache, cfg, "test")
    R = C if args.rollout is None else args.rollout  # the hop frame is window frame R
    batch = WindowSampler(clips, cfg, seed=args.seed).batch(args.windows, live=True, lead=R)
    target = batch["expr"][:, C + R]
    # the hop frame as the first frame of a training window: every feature, the teacher's frames before it
    rest = batch["known"].shape[1] - C - R
    # (the C frames before the hop known, but those before a clip's start: the sampler's known)
    whole_known = np.concatenate([batch["known"][:, :C], np.ones((args.windows, R)), np.zeros((args.windows, rest))], 1)
    whole = {"feats": batch["feats"][:, R:], "prosody": batch["prosody"][:, R:], "text": batch["text"],
             "expr": batch["expr"][:, R:], "pose": batch["pose"][:, R:], "known": whole_known[:, R:].astype(np.float32)}

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, model in tqdm(models.items(), desc="checkpoints"):
        rows = {}
        for context in CONTEXTS:
            torch.manual_seed(args.seed)  # the same rollout noise for every checkpoint
            if context == "whole window":
                window = whole
            elif context == "teacher":  # the C frames before the hop, the teacher's, known
                known = batch["known"].copy()
                known[:, C : C + R] = 1.0
                window = live_windows(dict(batch, known=known), cfg, *shape, at=R)
            elif context == "none":  # no frame before the hop known (as at a stream's start)
                window = live_windows(batch, cfg, *shape, at=R)
                window["known"] = np.zeros_like(window["known"])
            else:
                window = own_context(model, batch, preset, frames=R)
            torch.manual_seed(args.seed + 1)  # the hop's own noise: the same after any rollout
            made = live_hop(model, window, reference_style(model, batch))[0][:, 0]
            rows[context] = {
                "mouth_mae": float(np.abs(made[:, MOUTH] - target[:, MOUTH]).mean()),
                "jaw_corr": float(np.corrcoef(made[:, JAW], target[:, JAW])[0, 1]),
            }
        results[name] = rows

    print(f"\n{args.windows} held-out hop frames ({args.corpus}, {args.recogniser} recogniser's features), "
          "low-latency window, 1 step: mouth MAE / jawOpen r")
    print("| checkpoint | whole window | teacher context | own context (a stream's) | no context |")
    print("| --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        cells = [f"{rows[c]['mouth_mae']:.4f} / {rows[c]['jaw_corr']:.3f}" for c in CONTEXTS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    args.out.write_text(json.dumps({"windows": args.windows, "corpus": str(args.corpus), "recogniser": args.recogniser,
                                    "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
