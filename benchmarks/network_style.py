"""Does the network's own style input move the face? (the style encoder and the denoisers' style vector)

    python -m benchmarks.network_style [--corpus data/corpus] [--clips 16]

The runtime runs the network with the null style (a mood's style for a stream in a mood:
training/mood_styles.py) and puts a stream's style on its output (engine/style.py, docs/STYLE.md). This asks
what the network itself does with a style vector: the procedural teacher makes takes of one passage
(``training.style_refs``) with one style parameter moved from its neutral 0.5 to 0 or 1; the style encoder
reads each take in half-overlapping windows of its clip length and the mean (normalised) is the style vector;
held-out clips are then animated at 4 steps (whole clips, torch) with that vector at style guidance 1, 2 and
3, and with the null style. Reported: the mean smile (mouthSmileLeft), cheek squint, inner-brow raise,
jawOpen's 95th percentile and the head's std (degrees).

Writes benchmarks/network_style.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.offline import animate, clip_inputs
from ksdiff_runtime.engine.sampling import Guidance
from ksdiff_runtime.features.prosody import prosody
from ksdiff_runtime.model.checkpoint import load_model
from ksdiff_runtime.training.speech import synthesize
from ksdiff_runtime.training.style_refs import PASSAGE, VOICE
from ksdiff_runtime.training.teacher import NEUTRAL_STYLE, STYLE_NAMES, teach

from .live import machine
from .style import held_out

ROOT = Path(__file__).resolve().parent.parent
TAKES: dict[str, dict[str, float]] = {  # a take's style parameters moved from the neutral 0.5
    "smile 0": {"smile_bias": 0.0}, "smile 1": {"smile_bias": 1.0},
    "expressiveness 0": {"expressiveness": 0.0}, "expressiveness 1": {"expressiveness": 1.0},
    "articulation 0": {"articulation": 0.0}, "articulation 1": {"articulation": 1.0},
}
GUIDANCE = (1.0, 2.0, 3.0)


def style_vector(model: Any, utt: Any, pros: np.ndarray, params: dict[str, float]) -> np.ndarray:
    style = NEUTRAL_STYLE.copy()
    for name, value in params.items():
        style[STYLE_NAMES.index(name)] = value
    blend, head = teach(utt.phonemes, utt.start, utt.duration, len(utt.audio), pros, style, np.random.default_rng(0))
    return model.style_of_take(torch.from_numpy(blend), torch.from_numpy(head)).numpy()


def figures(anims: list[Any]) -> dict[str, float]:
    b = np.concatenate([a.blendshapes for a in anims])
    h = np.concatenate([a.head for a in anims])
    i = motion.BLENDSHAPE_INDEX
    return {"smile": float(b[:, i["mouthSmileLeft"]].mean()),
            "cheek_squint": float(b[:, i["cheekSquintLeft"]].mean()),
            "brow_inner_up": float(b[:, i["browInnerUp"]].mean()),
            "jaw_p95": float(np.percentile(b[:, i["jawOpen"]], 95)),
            "head_std_deg": float(np.rad2deg(np.mean([a.head.std(axis=0).mean() for a in anims]))),
            "head_std_deg_pooled": float(np.rad2deg(h.std(axis=0).mean()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.network_style", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus", help="a corpus (its held-out clips)")
    p.add_argument("--clips", type=int, default=16, help="held-out clips animated")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "network_style.json", help="the figures (JSON)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_model().eval()
    backend = TorchBackend(model)
    utt = synthesize(PASSAGE, VOICE, rate=160)
    pros = prosody(utt.audio)
    clips = held_out(args.corpus, args.clips)
    inputs = [clip_inputs(backend, c["audio"], None) for c in clips]
    seeds = [0] * len(inputs)
    result: dict[str, Any] = {"machine": machine(), "clips": len(inputs), "steps": 4,
                              "null style": figures(animate(backend, inputs, steps=4, seeds=seeds))}
    print("null style", {k: round(v, 4) for k, v in result["null style"].items()}, flush=True)
    for name, params in TAKES.items():
        v = np.repeat(style_vector(model, utt, pros, params)[None], len(inputs), axis=0)
        result[name] = {}
        for g in GUIDANCE:
            r = figures(animate(backend, inputs, steps=4, seeds=seeds, style=v, guidance=Guidance(style=g)))
            result[name][f"guidance {g:g}"] = r
            print(name, f"guidance {g:g}", {k: round(x, 4) for k, x in r.items()}, flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
