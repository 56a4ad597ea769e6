"""Each mood's style vector for a checkpoint: how the network is told to speak sad, angry, happy or surprised.

    python -m ksdiff_runtime.training.mood_styles [--checkpoint ksdiff_runtime/assets/ksdiff.pt]

The procedural teacher speaks one fixed passage (the built-in style takes', ``style_refs``) in each mood's
style (``teacher.MOOD_STYLES``: a point of its style space), the checkpoint's own style encoder reads each
take (``KSDiff.style_of_take``), and the vectors are kept in the checkpoint (``mood_styles``). The runtime
feeds a stream's mood to the network as that style, scaled by the mood's intensity, with the mood guidance
scale (docs/ENGINE.md). The vectors belong to the weights: ``train --ship`` and ``training.blend`` add them to
the checkpoints they write; any other needs this run (then ``ksdiff-runtime export --ship`` for the bundled
one, whose export carries them).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.features.prosody import prosody
from ksdiff_runtime.model.checkpoint import load_model, write_mood_styles
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT
from ksdiff_runtime.model.ksdiff import KSDiff

from .speech import synthesize
from .style_refs import PASSAGE, VOICE
from .teacher import MOOD_STYLES, teach


def mood_vectors(model: KSDiff, seed: int = 0) -> dict[str, np.ndarray]:
    """Each mood's style vector [style_dim] from the model's style encoder over the teacher's take."""
    utt = synthesize(PASSAGE, VOICE, rate=160)
    pros = prosody(utt.audio)
    out = {}
    for mood in motion.MOODS:
        blend, head = teach(utt.phonemes, utt.start, utt.duration, len(utt.audio), pros, MOOD_STYLES[mood],
                            np.random.default_rng(seed))
        out[mood] = model.style_of_take(torch.from_numpy(blend), torch.from_numpy(head)).numpy()
    return out


def add_mood_styles(path: Path) -> dict[str, np.ndarray]:
    """Compute the moods' styles with the checkpoint at ``path`` (its weights as stored) and keep them in it."""
    vectors = mood_vectors(load_model(path))
    write_mood_styles(path, vectors)
    return vectors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ksdiff_runtime.training.mood_styles",
                                description="Compute each mood's style vector with a checkpoint's style encoder "
                                "and keep them in the checkpoint.")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help=f"the checkpoint, rewritten with its moods' styles (default {DEFAULT_CHECKPOINT})")
    args = p.parse_args(argv)
    vectors = add_mood_styles(args.checkpoint)
    null = load_model(args.checkpoint).style_null.detach().numpy()
    for mood, v in vectors.items():
        print(f"{mood:9s} cosine with the null style {float(v @ null / np.linalg.norm(null)):+.3f}")
    print(f"wrote the moods' styles into {args.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
