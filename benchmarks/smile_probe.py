"""Where a model's mouth error comes from: the smile a style tells, timing, sampling noise (issue 11's mouth MAE).

    python -m benchmarks.smile_probe [--checkpoint ksdiff_runtime/assets/ksdiff.pt] [--clips 80]

On held-out clips animated as ``eval`` animates them (whole clips, 4 DDIM steps, each clip's reference style
from another clip of its persona), it reports:

- **the smile**: each clip's mean smile (mouthSmileLeft/Right) against the teacher's, a persona's smile bias
  that the words do not carry and the reference style does: their correlation over the clips, on whole clips
  and on each clip's first training window only (where a model has no previous frames to copy it from), and
  their spreads; how well a ridge regression from the style vectors the denoisers get predicts the teacher's
  (leave one clip out): what the style input holds; the smile shapes' share of the mouth error, and the MAE /
  baseline without them;
- **timing**: MAE / baseline with the output shifted by -2..2 frames against the teacher (lowest at 0 if the
  model is on time);
- **sampling noise**: MAE / baseline at 1, 2 and 4 steps, and of the mean of ``--seeds`` 4-step draws;
- and eval's scores of the 4-step row on these clips (closure, rest in silence, jawOpen r).

Writes benchmarks/smile_probe.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends.select import DEFAULT_CHECKPOINT
from ksdiff_runtime.training import evaluate as E
from ksdiff_runtime.training import metrics as M

ROOT = Path(__file__).resolve().parent.parent
SMILE = [motion.index("mouthSmileLeft"), motion.index("mouthSmileRight")]
SHIFTS = (-2, -1, 0, 1, 2)


def loo_ridge_r(x: np.ndarray, y: np.ndarray, alpha: float = 1e-2) -> float | None:
    """Correlation of ``y`` [n] with its leave-one-out ridge predictions from ``x`` [n, d] (None below 3)."""
    n = len(y)
    if n < 3:
        return None
    a = np.c_[x, np.ones(n)]
    pred = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        w = np.linalg.solve(a[keep].T @ a[keep] + alpha * np.eye(a.shape[1]), a[keep].T @ y[keep])
        pred[i] = a[i] @ w
    return M.correlation(pred, y)


def shifted_mae(blendshapes: list[np.ndarray], truth: list[np.ndarray], shift: int) -> float:
    """Mouth MAE with each output ``shift`` frames late (> 0) or early (< 0) against its truth."""
    errs = []
    for p, t in zip(blendshapes, truth, strict=True):
        if shift > 0:
            p, t = p[shift:], t[:-shift]
        elif shift < 0:
            p, t = p[:shift], t[-shift:]
        errs.append(M.mouth_mae(p, t))
    return float(np.mean(errs))


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it (as the JSON records it)."""
    full = path.resolve()
    return full.relative_to(ROOT) if full.is_relative_to(ROOT) else path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.smile_probe", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the model")
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus", help="a corpus made by `corpus`")
    p.add_argument("--cache", type=Path, default=ROOT / "cache" / "features", help="feature cache folder")
    p.add_argument("--clips", type=int, default=80, help="held-out clips, as `eval --max-clips` draws them")
    p.add_argument("--seeds", type=int, default=4, help="4-step draws averaged for the noise-free figure")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "smile_probe.json", help="the figures")
    args = p.parse_args(argv)

    model = E.load_for_eval(args.checkpoint)
    held = E.held_out(model, args.corpus, args.cache, args.clips)
    clips, inputs = held.clips, E.model_inputs(held.clips)
    truth = [c.expr for c in clips]
    base = float(np.mean([M.mouth_mae(np.tile(model.expr_mean.numpy(), (len(t), 1)), t) for t in truth]))
    with torch.no_grad():
        runs = {steps: E.animate_model(model, inputs, steps=steps, style=held.style) for steps in (1, 2, 4)}
        draws = [runs[4]] + [E.animate_model(model, inputs, steps=4, style=held.style, seeds=[s] * len(inputs))
                             for s in range(1, args.seeds)]
    made = [a.blendshapes for a in runs[4]]
    mean_of_draws = [np.mean([d[i].blendshapes for d in draws], axis=0) for i in range(len(clips))]

    window = model.cfg.train_window_frames
    smile_t = np.array([t[:, SMILE].mean() for t in truth])
    smile_m = np.array([m[:, SMILE].mean() for m in made])
    first_t = np.array([t[:window, SMILE].mean() for t in truth])
    first_m = np.array([m[:window, SMILE].mean() for m in made])
    shape_err = np.mean([np.abs(m[:, M.MOUTH] - t[:, M.MOUTH]).mean(axis=0) for m, t in zip(made, truth, strict=True)],
                        axis=0)
    shape_base = np.mean([np.abs(model.expr_mean.numpy()[M.MOUTH] - t[:, M.MOUTH]).mean(axis=0) for t in truth],
                         axis=0)
    is_smile = np.isin(M.MOUTH, SMILE)
    result = {
        "checkpoint": str(_shown(args.checkpoint)), "clips": len(clips), "baseline_mouth_mae": base,
        "smile": {
            "clip_mean_r": M.correlation(smile_m, smile_t),
            "first_window_r": M.correlation(first_m, first_t), "first_window_frames": window,
            "clip_mean_std": {"model": float(smile_m.std()), "teacher": float(smile_t.std())},
            "from_style_vector_r": loo_ridge_r(held.style.numpy(), smile_t),
            "mae": {"model": float(shape_err[is_smile].mean()), "baseline": float(shape_base[is_smile].mean())},
            "share_of_mouth_error": float(shape_err[is_smile].sum() / shape_err.sum()),
            "mae_vs_baseline_without_smile": float(shape_err[~is_smile].sum() / shape_base[~is_smile].sum()),
        },
        "mae_vs_baseline_by_shift": {str(s): shifted_mae(made, truth, s) / base for s in SHIFTS},
        "mae_vs_baseline_by_steps": {str(k): shifted_mae([a.blendshapes for a in v], truth, 0) / base
                                     for k, v in runs.items()},
        "mae_vs_baseline_mean_of_draws": shifted_mae(mean_of_draws, truth, 0) / base, "draws": args.seeds,
        # eval's 4-step row on these clips (the KEL thresholds eval chose for the shipped model)
        "scores_4_steps": {k: v for k, v in E.score(clips, runs[4], held.beats_audio, (0.5, 0.3)).items()
                           if k != "mouth_mae_by_shape"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    s = result["smile"]
    print(f"{_shown(args.checkpoint)}, {len(clips)} held-out clips, 4 steps")
    print(f"smile: clip means r {s['clip_mean_r']:.3f} (first window {s['first_window_r']:.3f}); spread "
          f"{s['clip_mean_std']['model']:.3f} vs the teacher's {s['clip_mean_std']['teacher']:.3f}; from the style "
          f"vector (ridge, leave one out) r {s['from_style_vector_r'] or float('nan'):.3f}")
    print(f"smile MAE {s['mae']['model']:.4f} vs baseline {s['mae']['baseline']:.4f}: {s['share_of_mouth_error']:.0%} "
          f"of the mouth error; MAE / baseline without it {s['mae_vs_baseline_without_smile']:.3f}")
    print("MAE / baseline by shift (frames): " + ", ".join(
        f"{k}: {v:.3f}" for k, v in result["mae_vs_baseline_by_shift"].items()))
    print("by steps: " + ", ".join(f"{k}: {v:.3f}" for k, v in result["mae_vs_baseline_by_steps"].items())
          + f"; mean of {args.seeds} draws at 4 steps: {result['mae_vs_baseline_mean_of_draws']:.3f}")
    sc = result["scores_4_steps"]
    print(f"4 steps: p/b/m closed {sc['bilabial_closure']:.3f}, rest {sc['rest_share']:.3f}, jawOpen r "
          f"{sc['jaw_corr']:.3f}")
    print(f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
