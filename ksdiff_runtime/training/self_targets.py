"""`python -m ksdiff_runtime.training.self_targets`: recorded prompts taught by a model's own bake.

The recorded prompts' teacher targets come from a forced aligner's phone times, and they teach the
lips a timing that the synthetic clips do not share (docs/REAL_VOICES.md): every fine-tune that used
them, or left them out, traded the recorded voice's closed bilabials against its open vowels. The model
shipped is on the good side of both. This writes a corpus whose recorded training prompts keep their
teacher targets everywhere but the mouth, where they take what ``bake`` outputs for them with a given
checkpoint and the prompt's transcript (training shows the network that transcript, or none, as it does
every clip's): its network at ``BAKE_STEPS`` with the null style, then the bilabial closure and the voice
gate, as ``bake`` applies them, or with ``--network-only`` the network alone (``bake`` and ``serve`` apply
the other two again after the fine-tuned model). A fine-tune on it is held to that checkpoint's behaviour
on recorded voices (self-distillation) while the synthetic clips teach whatever else it is fine-tuned for.
Only training prompts are touched: the held-out fifth stays the evaluation's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ksdiff_runtime import motion
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE, closure_for
from ksdiff_runtime.engine.gate import GateConfig
from ksdiff_runtime.engine.offline import bake_animations, clip_inputs
from ksdiff_runtime.motion import MOUTH_INDICES, take_frames

from .corpus import _save_npz
from .dataset import read_manifest
from .evaluate import load_for_eval
from .metrics import closure_span
from .real_eval import BAKE_STEPS
from .teacher import BILABIAL_PHONEMES, strip_stress

BATCH = 8  # prompts baked in one batch


def mouth_from(teacher: np.ndarray, baked: np.ndarray) -> np.ndarray:
    """The teacher's [T, 52] blendshapes with the mouth region's taken from ``baked`` (cut or padded with its
    last frame to T frames)."""
    out = np.array(teacher, dtype=np.float32, copy=True)
    mouth = list(MOUTH_INDICES)
    out[:, mouth] = take_frames(np.asarray(baked, np.float32), 0, len(out))[:, mouth]
    return out


def with_aligned_closures(taught: np.ndarray, teacher: np.ndarray, phonemes: np.ndarray, starts: np.ndarray,
                          durs: np.ndarray, fps: int = motion.FPS) -> np.ndarray:
    """``taught`` [T, 52] with the teacher's mouth on the frames where the teacher's lips are shut within an
    aligned /p b m/ (the frames the closure metric reads, ``metrics.closure_span``), and nowhere else."""
    inside = np.zeros(len(taught), bool)
    for p, s, d in zip(phonemes, starts, durs, strict=True):
        if strip_stress(str(p)) in BILABIAL_PHONEMES:
            a, b = closure_span(float(s), float(d), fps)
            inside[a:b] = True
    frames = inside & (motion.lip_aperture(teacher) < motion.LIP_CLOSED_THRESHOLD)
    out = np.array(taught, dtype=np.float32, copy=True)
    mouth = list(MOUTH_INDICES)
    out[np.ix_(frames, mouth)] = np.asarray(teacher, np.float32)[np.ix_(frames, mouth)]
    return out


def self_taught(corpus: Path, out: Path, checkpoint: Path, max_real: int = 0, seed: int = 0,
                network_only: bool = False, aligned_closures: bool = False) -> int:
    """Write ``out``: ``corpus``'s synthetic clips by reference (their cached features stay valid) and its
    recorded training prompts (the first ``max_real`` of them in manifest order when > 0) with their mouth
    targets as ``bake --text TRANSCRIPT --seed SEED --no-liveliness`` makes them with ``checkpoint`` (with
    ``network_only``, also ``--no-closure --no-voice-gate``); with ``aligned_closures``, the teacher's shut
    lips inside each aligned /p b m/ (``with_aligned_closures``). Non-speech and mixed clips are left out.
    Returns the prompts written."""
    corpus, out = Path(corpus), Path(out)
    if out.resolve() == corpus.resolve():
        raise ValueError(f"--out {out} is the source corpus: write the self-taught corpus beside it")
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
    closure = None if network_only else closure_for(model.cfg.front_end.name, DEFAULT_CLOSURE)
    gate = None if network_only else GateConfig()
    (out / "clips").mkdir(parents=True, exist_ok=True)
    clips = [dict(c, file=os.path.relpath(corpus / c["file"], out)) for c in synthetic]
    for i in tqdm(range(0, len(real), BATCH), desc="baking recorded prompts", unit="batch"):
        entries = real[i : i + BATCH]
        data = [dict(np.load(corpus / e["file"])) for e in entries]
        inputs = [clip_inputs(backend, d["audio"].astype(np.float32), e["text"] or None)
                  for e, d in zip(entries, data, strict=True)]
        baked = bake_animations(backend, inputs, steps=BAKE_STEPS, seeds=[seed] * len(inputs), closure=closure,
                                gate=gate)
        for e, d, b in zip(entries, data, baked, strict=True):
            taught = mouth_from(d["blendshapes"], b.blendshapes)
            if aligned_closures:
                taught = with_aligned_closures(taught, d["blendshapes"], d["phonemes"], d["phoneme_start"],
                                               d["phoneme_dur"])
            d["blendshapes"] = taught
            _save_npz(str(out / e["file"]), d)
            clips.append(dict(e))
    header = {k: v for k, v in manifest.items() if k not in ("clips", "real_world")}  # its non-speech is left out
    digest = hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest()
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(dict(header, clips=clips, self_taught={
        "checkpoint": str(checkpoint), "sha256": digest, "prompts": len(real), "seed": seed,
        "stages": ("network" if network_only else "network, closure, voice gate")
        + (", the teacher's aligned closures" if aligned_closures else "")})))
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
    p.add_argument("--network-only", action="store_true",
                   help="the network's mouth alone, without bake's bilabial closure and voice gate (which bake and "
                   "serve apply again after the fine-tuned model)")
    p.add_argument("--aligned-closures", action="store_true",
                   help="then the teacher's shut lips on the frames of each aligned /p b m/, and only there")
    args = p.parse_args(argv)
    try:
        n = self_taught(args.corpus, args.out, args.checkpoint, args.max_real, args.seed, args.network_only,
                        args.aligned_closures)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{args.out}: {n} recorded prompts with their mouths baked by {args.checkpoint}"
          f"{' (network only)' if args.network_only else ''}, synthetic clips by reference")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
