"""`python -m ksdiff_runtime.training.blend BASE TUNED --weight W --out PATH`: a fine-tune blended with its base.

Every floating-point tensor of the two checkpoints is interpolated, (1 - W) * base + W * tuned (weight-space
ensembling of a fine-tune with the model it started from; Wortsman et al. 2022, "WiSE-FT"). A fine-tune on
the synthetic corpus gains there and loses some of what the base did on real voices; a blend keeps part of
both (docs/STREAMING_RECOGNISER.md, "Blending the fine-tune with the shipped model"). The two must be the same
network: the tuned checkpoint's config is written, and a blend of models of other shapes is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ksdiff_runtime.model.checkpoint import CheckpointError, load_model, save_checkpoint
from ksdiff_runtime.model.ksdiff import KSDiff

from .mood_styles import add_mood_styles


def blend(base: KSDiff, tuned: KSDiff, weight: float) -> KSDiff:
    """``tuned`` with every floating-point tensor set to (1 - weight) * base's + weight * its own."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the blend weight is in 0..1 (0: the base, 1: the fine-tune), not {weight}")
    a, b = base.state_dict(), tuned.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in b):
        raise CheckpointError("the two checkpoints are not the same network (their tensors differ in names or shapes)")
    tuned.load_state_dict({k: (1.0 - weight) * a[k] + weight * b[k] if b[k].is_floating_point() else b[k] for k in b})
    return tuned


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ksdiff_runtime.training.blend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="the checkpoint the fine-tune started from")
    p.add_argument("tuned", type=Path, help="the fine-tuned checkpoint")
    p.add_argument("--weight", type=float, required=True, help="the fine-tune's share, 0..1")
    p.add_argument("--out", type=Path, required=True, help="where the blend is written")
    p.add_argument("--half", action="store_true", help="write float16 weights, as `train --ship` ships them")
    args = p.parse_args(argv)
    save_checkpoint(args.out, blend(load_model(args.base), load_model(args.tuned), args.weight), half=args.half)
    add_mood_styles(args.out)  # the blend's own (the tuned checkpoint's would not match its weights)
    print(f"{args.out}: {1.0 - args.weight:g} x {args.base} + {args.weight:g} x {args.tuned}, with its moods' styles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
