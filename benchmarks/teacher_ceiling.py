"""How much of the teacher can any audio-driven model predict? (ceilings for issue 11's synthetic targets)

    python -m benchmarks.teacher_ceiling [--corpus data/corpus] [--clips 240] [--draws 9]

The procedural teacher (training/teacher.py, docs/TEACHER.md) draws part of its motion at random: the head's
drift (random sinusoids), which accents get a nod, blinks, saccades and the smile's slow wander. A model hears
the audio, not the teacher's random draws, so what it can match is bounded by how much of the motion the
words, timing, prosody and persona decide. This measures that bound on the held-out clips, without any model:

- each clip's inputs (phonemes and their times, prosody of the clip's audio, the persona's style) are given
  to the teacher ``--draws`` times with different random draws;
- **keyframe F1 ceiling**: the best predictor of a draw's keyframes (training/keyframes.py) from everything
  the words decide is, for each frame, the chance that a draw has a keyframe within a frame of it, estimated
  by the other draws; keyframes are picked from it as the evaluation picks them from KEL's probabilities
  (``metrics.pick_keyframes``), at the threshold that is best on training clips, and scored against the
  left-out draw (F1 at +-1 frame, as ``eval``). Also reported: one draw scored against another (a
  sampler that draws its own keyframes);
- **mouth MAE ceiling**: the mean of the other draws against the left-out draw, over the mean-pose baseline
  (the training clips' mean face), as ``eval`` reports MAE / baseline.

The figures are ceilings for a model that knew everything the words decide; the audio tells a model less
(the phonemes must be recognised, the persona guessed from a reference take). The clips' audio is the
corpus's augmented audio, whose prosody differs a little from the clean speech the corpus's targets read;
every draw here reads the same prosody, so the spread between draws is the teacher's own.

Writes benchmarks/teacher_ceiling.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ksdiff_runtime import motion
from ksdiff_runtime.features.prosody import prosody
from ksdiff_runtime.training import metrics as M
from ksdiff_runtime.training.keyframes import expression_keyframes, keyframe_f1, pose_keyframes
from ksdiff_runtime.training.teacher import teach

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("expression", "pose")
THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)  # the evaluation's THRESHOLDS, and 0.05 and 0.95


def clips_of(corpus: Path, split: str, n: int) -> list[dict[str, Any]]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    chosen = [c for c in manifest["clips"] if c.get("split") == split and not c.get("kind")][: n or None]
    out = []
    for c in chosen:
        with np.load(corpus / c["file"]) as z:
            out.append({k: z[k] for k in ("audio", "blendshapes", "phonemes", "phoneme_start", "phoneme_dur",
                                          "style")})
    return out


def draws(clip: dict[str, Any], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` teacher draws for one clip's inputs: [(blendshapes [T, 52], head [T, 3])]."""
    pros = prosody(clip["audio"])
    return [teach(clip["phonemes"], clip["phoneme_start"], clip["phoneme_dur"], len(clip["audio"]), pros,
                  clip["style"], np.random.default_rng(seed)) for seed in range(n)]


def key_chances(keys: np.ndarray, leave_out: int) -> np.ndarray:
    """[T]: the share of the other draws with a keyframe within +-1 frame of each frame (keys [draws, T]): the
    chance that a keyframe predicted there is matched, as the F1 matches."""
    others = np.delete(keys, leave_out, axis=0)
    near = others.copy()
    near[:, 1:] |= others[:, :-1]
    near[:, :-1] |= others[:, 1:]
    return near.mean(axis=0)


class ClipDraws:
    """One clip's draws, their keyframes per path, and the mouth channels."""

    def __init__(self, clip: dict[str, Any], n: int) -> None:
        taken = draws(clip, n)
        self.blend = np.stack([b for b, _ in taken])
        self.keys = {"expression": np.stack([expression_keyframes(b) for b, _ in taken]),
                     "pose": np.stack([pose_keyframes(h) for _, h in taken])}

    def f1_from_chances(self, path: str, threshold: float) -> float:
        keys = self.keys[path]
        return float(np.mean([M.kel_f1(key_chances(keys, k), keys[k], threshold) for k in range(len(keys))]))

    def f1_draw_vs_draw(self, path: str) -> float:
        keys = self.keys[path]
        return float(np.mean([keyframe_f1(keys[k], keys[(k + 1) % len(keys)]) for k in range(len(keys))]))

    def mouth_mae(self, baseline: np.ndarray) -> tuple[float, float]:
        """(MAE of the other draws' mean against each draw, MAE of the baseline face), over the mouth."""
        n = len(self.blend)
        ceiling = np.mean([M.mouth_mae(np.delete(self.blend, k, axis=0).mean(axis=0), self.blend[k]) for k in range(n)])
        base = np.mean([M.mouth_mae(np.broadcast_to(baseline, self.blend[k].shape), self.blend[k]) for k in range(n)])
        return float(ceiling), float(base)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus", help="corpus made by `corpus`")
    ap.add_argument("--clips", type=int, default=240, help="held-out clips (0: all)")
    ap.add_argument("--train-clips", type=int, default=48, help="training clips the thresholds are chosen on")
    ap.add_argument("--draws", type=int, default=9, help="teacher draws per clip")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "teacher_ceiling.json")
    args = ap.parse_args(argv)
    if args.draws < 3:
        ap.error("--draws must be at least 3")

    train = clips_of(args.corpus, "train", args.train_clips)
    test = clips_of(args.corpus, "test", args.clips)
    if not train or not test:
        raise SystemExit(f"no clips in {args.corpus}: run `ksdiff-runtime corpus` first")
    baseline = np.concatenate([c["blendshapes"] for c in train]).mean(axis=0)
    train_draws = [ClipDraws(c, args.draws) for c in tqdm(train, desc="teacher draws (train)", unit="clip")]
    test_draws = [ClipDraws(c, args.draws) for c in tqdm(test, desc="teacher draws (held out)", unit="clip")]

    result: dict[str, Any] = {"held_out_clips": len(test), "train_clips": len(train), "draws": args.draws}
    for path in PATHS:
        by_threshold = [np.mean([d.f1_from_chances(path, th) for d in train_draws]) for th in THRESHOLDS]
        threshold = float(THRESHOLDS[int(np.argmax(by_threshold))])
        result[path] = {
            "threshold": threshold,
            "f1_ceiling": float(np.mean([d.f1_from_chances(path, threshold) for d in test_draws])),
            "f1_draw_vs_draw": float(np.mean([d.f1_draw_vs_draw(path) for d in test_draws])),
            "keyframes_per_s": float(np.mean([d.keys[path].mean() for d in test_draws]) * motion.FPS),
        }
    maes = np.array([d.mouth_mae(baseline) for d in test_draws])
    result["mouth_mae_ceiling"] = float(maes[:, 0].mean())
    result["mouth_mae_baseline"] = float(maes[:, 1].mean())
    result["mae_vs_baseline_ceiling"] = result["mouth_mae_ceiling"] / result["mouth_mae_baseline"]

    for path in PATHS:
        r = result[path]
        print(f"{path:10s} keyframe F1 ceiling {r['f1_ceiling']:.3f} (threshold {r['threshold']:.2f}); "
              f"one draw against another {r['f1_draw_vs_draw']:.3f}; {r['keyframes_per_s']:.2f} keyframes/s")
    print(f"mouth MAE ceiling {result['mouth_mae_ceiling']:.4f} against the mean face's "
          f"{result['mouth_mae_baseline']:.4f}: {result['mae_vs_baseline_ceiling']:.3f} of the baseline")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
