"""`python -m ksdiff_runtime.training.blend BASE TUNED --weight W --out PATH`: a fine-tune blended with its base.

Every floating-point tensor of the two checkpoints is interpolated, (1 - W) * base + W * tuned (weight-space
ensembling of a fine-tune with the model it started from; Wortsman et al. 2022, "WiSE-FT"). A fine-tune on
the synthetic corpus gains there and loses some of what the base did on real voices; a blend keeps part of
both (docs/STREAMING_RECOGNISER.md, "Blending the fine-tune with the shipped model"). The two must be the same
network: the tuned checkpoint's config is written, and a blend of models of other shapes is refused.

The head has its own branch (the encoder's pose path, the pose keyframe predictor and the pose denoiser, all
reading the shared trunk's features), and ``--pose-weight`` gives it a share of its own: a fine-tune whose
mouth gains come with a restless head can lend its mouth and keep the base's head.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ksdiff_runtime.model.checkpoint import CheckpointError, load_model, save_checkpoint
from ksdiff_runtime.model.ksdiff import HEAD_BUFFERS, HEAD_MODULES, KSDiff

from .mood_styles import add_mood_styles

# The tensors only the head's branch reads (model/ksdiff.py's HEAD_MODULES and HEAD_BUFFERS), as state-dict names.
POSE_BRANCH = tuple(f"{m}." for m in HEAD_MODULES) + HEAD_BUFFERS


def is_pose_branch(name: str) -> bool:
    return name.startswith(POSE_BRANCH)


def blend(base: KSDiff, tuned: KSDiff, weight: float, pose_weight: float | None = None) -> KSDiff:
    """``tuned`` with every floating-point tensor set to (1 - w) * base's + w * its own.

    ``w`` is ``weight``, or ``pose_weight`` for the head's branch (``POSE_BRANCH``) when it is given."""
    pose_weight = weight if pose_weight is None else pose_weight
    for name, w in (("blend weight", weight), ("pose weight", pose_weight)):
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"the {name} is in 0..1 (0: the base, 1: the fine-tune), not {w}")
    a, b = base.state_dict(), tuned.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in b):
        raise CheckpointError("the two checkpoints are not the same network (their tensors differ in names or shapes)")
    mixed = {}
    for k in b:
        w = pose_weight if is_pose_branch(k) else weight
        mixed[k] = (1.0 - w) * a[k] + w * b[k] if b[k].is_floating_point() else b[k]
    tuned.load_state_dict(mixed)
    return tuned


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ksdiff_runtime.training.blend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, help="the checkpoint the fine-tune started from")
    p.add_argument("tuned", type=Path, help="the fine-tuned checkpoint")
    p.add_argument("--weight", type=float, required=True, help="the fine-tune's share, 0..1")
    p.add_argument("--pose-weight", type=float, default=None,
                   help="the fine-tune's share in the head's branch, 0..1 (default: --weight)")
    p.add_argument("--out", type=Path, required=True, help="where the blend is written")
    p.add_argument("--half", action="store_true", help="write float16 weights, as `train --ship` ships them")
    args = p.parse_args(argv)
    save_checkpoint(args.out, blend(load_model(args.base), load_model(args.tuned), args.weight, args.pose_weight),
                    half=args.half)
    add_mood_styles(args.out)  # the blend's own (the tuned checkpoint's would not match its weights)
    head = "" if args.pose_weight is None else f" ({args.pose_weight:g} of it in the head's branch)"
    print(f"{args.out}: {1.0 - args.weight:g} x {args.base} + {args.weight:g} x {args.tuned}{head},"
          " with its moods' styles")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
