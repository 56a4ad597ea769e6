"""`python -m ksdiff_runtime.training.self_targets`: recorded prompts taught by a model's own bake.

The recorded prompts' teacher targets come from a forced aligner's phone times, and they teach the
lips a timing that the synthetic clips do not share (docs/REAL_VOICES.md): every fine-tune that used
them, or left them out, traded the recorded voice's closed bilabials against its open vowels. The model
shipped is on the good side of both. This writes a corpus whose recorded training prompts keep their
teacher targets everywhere but the mouth, where they take what ``bake`` outputs for them with a given
checkpoint: its network at ``BAKE_STEPS``, then the bilabial closure and the voice gate, as ``bake`` applies
them. A fine-tune on it is held to that checkpoint's behaviour on recorded voices (self-distillation)
while the synthetic clips teach whatever else it is fine-tuned for. Only training prompts are touched: the
held-out fifth stays the evaluation's.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE, closure_for
from ksdiff_runtime.engine.gate import GateConfig
from ksdiff_runtime.motion import MOUTH_INDICES, take_frames

from .corpus import _save_npz
from .dataset import read_manifest
from .evaluate import load_for_eval
from .real_eval import BATCH, bake_frames, closed_bakes, gated

KEPT_KINDS = (None, "real")  # the synthetic clips (by reference) and the recorded prompts (re-taught)


def mouth_from(teacher: np.ndarray, baked: np.ndarray) -> np.ndarray:
    """The teacher's [T, 52] blendshapes with the mouth region's taken from ``baked`` (cut or padded with its
    last frame to T frames)."""
    out = np.array(teacher, dtype=np.float32, copy=True)
    mouth = list(MOUTH_INDICES)
    out[:, mouth] = take_frames(np.asarray(baked, np.float32), 0, len(out))[:, mouth]
    return out


def self_taught(corpus: Path, out: Path, checkpoint: Path, max_real: int = 0, seed: int = 0) -> int:
    """Write ``out``: ``corpus``'s synthetic clips by reference (their cached features stay valid) and its
    recorded training prompts (the first ``max_real`` of them in manifest order when > 0) with their mouth
    targets baked by ``checkpoint``. Non-speech and mixed clips are left out. Returns the prompts written."""
    corpus, out = Path(corpus), Path(out)
    manifest = read_manifest(corpus)
    synthetic = [c for c in manifest["clips"] if c.get("kind") is None]
    real = [c for c in manifest["clips"] if c.get("kind") == "real" and c["split"] == "train"]
    if max_real:
        real = real[:max_real]
    if not real:
        raise ValueError(f"{corpus} has no recorded training prompts (make them with `ksdiff-runtime corpus "
                         "--real-world`)")
    model = load_for_eval(Path(checkpoint))
    backend = TorchBackend(model)
    closure = closure_for(model.cfg.front_end.name, DEFAULT_CLOSURE)
    gate = GateConfig()
    (out / "clips").mkdir(parents=True, exist_ok=True)
    clips = [dict(c, file=os.path.relpath(corpus / c["file"], out)) for c in synthetic]
    for i in tqdm(range(0, len(real), BATCH), desc="baking recorded prompts", unit="batch"):
        entries = real[i : i + BATCH]
        data = [dict(np.load(corpus / e["file"])) for e in entries]
        audios = [d["audio"].astype(np.float32) for d in data]
        baked = bake_frames(backend, audios, seed)
        if closure is not None:
            baked = closed_bakes(backend, baked, audios, closure)
        baked = gated(baked, audios, gate)
        for e, d, b in zip(entries, data, baked, strict=True):
            d["blendshapes"] = mouth_from(d["blendshapes"], b)
            _save_npz(str(out / e["file"]), d)
            clips.append(dict(e))
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(dict(manifest, clips=clips, self_taught={"checkpoint": str(checkpoint),
                                                                        "prompts": len(real), "seed": seed})))
    os.replace(tmp, out / "manifest.json")
    return len(real)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ksdiff_runtime.training.self_targets", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="the model whose bake teaches the prompts' mouths")
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (with --real-world clips)")
    p.add_argument("--out", type=Path, default=Path("data/corpus_self"), help="the new corpus")
    p.add_argument("--max-real", type=int, default=0, help="at most this many recorded prompts (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the bake's noise seed (default 0)")
    args = p.parse_args(argv)
    n = self_taught(args.corpus, args.out, args.checkpoint, args.max_real, args.seed)
    print(f"{args.out}: {n} recorded prompts with their mouths baked by {args.checkpoint}, "
          "synthetic clips by reference")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
