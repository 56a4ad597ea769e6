"""Is the live stream's extra mouth error a damped mouth? (issue 11: `low-latency` within 5 % of whole clips)

    python -m benchmarks.live_amplitude [--corpus data/corpus] [--clips 120]

Held-out clips are animated as whole clips (4 steps, what `eval` and `bake` compute) and streamed live
(`low-latency` on ONNX Runtime, each clip's reference style, the model alone: as `eval-stream` runs them).
Per mouth shape: the spread (standard deviation over frames) of the teacher, the whole clips and the live
streams, and each one's error against the teacher. Then two ways an output gain could close the gap, each
measured on the even clips and scored on the odd ones, every gain scaling a shape about its rest (the
teacher's median in silence):

- amplitude: each live shape scaled so its spread matches the whole clips' (what a damped stream needs);
- best fit: each shape's gain (0.7-1.6) that minimises its own error, for the live streams and for the whole
  clips alike (a gain under 1 pulls a shape the model gets wrong towards rest, which lowers the error of any
  output by flattening it, so the fair comparison gives both the same chance), then its gains under 1 alone
  and over 1 alone.

And the jaw's lag against the teacher (the cross-correlation's peak within +-4 frames) for both.
Writes benchmarks/live_amplitude.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import CHECKPOINT
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.training import metrics as M
from ksdiff_runtime.training.evaluate import animate_model, held_out, model_inputs
from ksdiff_runtime.training.stream_eval import all_at_once, stream_animations

GAIN_GRID = np.linspace(0.7, 1.6, 91)
MAX_LAG = 4  # frames either way
ACTIVE_STD = 0.02  # shapes the teacher moves at least this much (the others stay at gain 1 for amplitude)


def scale_about(blendshapes: np.ndarray, gains: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """The mouth shapes scaled by ``gains`` about ``rest`` (both per mouth shape), clipped to 0..1."""
    out = blendshapes.copy()
    out[:, M.MOUTH] = np.clip(rest + gains * (blendshapes[:, M.MOUTH] - rest), 0.0, 1.0)
    return out


def amplitude_gains(pred: np.ndarray, ref: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """Per mouth shape, the gain that gives ``pred`` the spread of ``ref`` (frames stacked), where the teacher
    moves the shape at all; 1 elsewhere."""
    p, r, t = (x[:, M.MOUTH].std(axis=0) for x in (pred, ref, teacher))
    return np.where(t > ACTIVE_STD, r / np.maximum(p, 1e-6), 1.0)


def best_fit_gains(pred: np.ndarray, teacher: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """Per mouth shape, the gain on GAIN_GRID with the least mean absolute error against the teacher."""
    gains = np.ones(len(M.MOUTH))
    for k, s in enumerate(M.MOUTH):
        errs = [np.abs(rest[k] + g * (pred[:, s] - rest[k]) - teacher[:, s]).mean() for g in GAIN_GRID]
        gains[k] = GAIN_GRID[int(np.argmin(errs))]
    return gains


def best_lag(pred: np.ndarray, teacher: np.ndarray, max_lag: int = MAX_LAG) -> int:
    """Frames by which ``pred`` follows ``teacher`` (positive: later), the cross-correlation's peak."""
    a, b = pred - pred.mean(), teacher - teacher.mean()
    corr = [np.dot(a[max(0, s) : len(a) + min(0, s)], b[max(0, -s) : len(b) - max(0, s)])
            for s in range(-max_lag, max_lag + 1)]
    return int(np.argmax(corr)) - max_lag


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.live_amplitude", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (default data/corpus)")
    p.add_argument("--cache", type=Path, default=Path("cache/features"), help="feature cache (default cache/features)")
    p.add_argument("--clips", type=int, default=120, help="held-out clips (default 120, as eval-stream's figures)")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="model (default: the bundled one)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "live_amplitude.json",
                   help="results file")
    args = p.parse_args(argv)

    from ksdiff_runtime.model.checkpoint import load_model

    model = load_model(args.checkpoint)
    held = held_out(model, args.corpus, args.cache, args.clips)
    clips = held.clips
    whole = [a.blendshapes for a in animate_model(model, model_inputs(clips), steps=4, style=held.style)]
    engine = StreamingEngine(load_backend("onnxruntime-cpu", args.checkpoint), "low-latency",
                             sessions=all_at_once(clips))
    live = [a.blendshapes for a in stream_animations(engine, clips, held.style.numpy(), np.random.default_rng(1))]
    engine.close()
    teacher = [c.expr for c in clips]

    fit, score = range(0, len(clips), 2), range(1, len(clips), 2)

    def stack(xs: list[np.ndarray], idx: range) -> np.ndarray:
        return np.concatenate([xs[i] for i in idx])

    silent = np.concatenate([clips[i].silent[: len(teacher[i])] for i in fit]).astype(bool)
    T, W, L = stack(teacher, fit), stack(whole, fit), stack(live, fit)
    rest = np.median(T[silent][:, M.MOUTH], axis=0) if silent.any() else np.zeros(len(M.MOUTH))

    def mae(xs: list[np.ndarray], gains: np.ndarray | None = None) -> float:
        return float(np.mean([M.mouth_mae(xs[i] if gains is None else scale_about(xs[i], gains, rest), teacher[i])
                              for i in score]))

    amp = amplitude_gains(L, W, T)
    fit_live, fit_whole = best_fit_gains(L, T, rest), best_fit_gains(W, T, rest)
    rows = {"as streamed": (mae(whole), mae(live)),
            "live scaled to the whole clips' spread": (mae(whole), mae(live, amp)),
            "each given its best-fit gains": (mae(whole, fit_whole), mae(live, fit_live)),
            # which of the live stream's fitted gains lower its error: those pulling shapes towards rest, or not
            "best-fit gains under 1 only": (mae(whole, np.minimum(fit_whole, 1.0)),
                                            mae(live, np.minimum(fit_live, 1.0))),
            "best-fit gains over 1 only": (mae(whole, np.maximum(fit_whole, 1.0)),
                                           mae(live, np.maximum(fit_live, 1.0)))}
    jaw = motion.index("jawOpen")
    lags = {name: np.bincount([best_lag(xs[i][:, jaw], teacher[i][:, jaw]) + MAX_LAG for i in score],
                              minlength=2 * MAX_LAG + 1).tolist() for name, xs in (("whole", whole), ("live", live))}
    shapes = {}
    for k, s in enumerate(M.MOUTH):
        err = {name: float(np.mean([np.abs(xs[i][:, s] - teacher[i][:, s]).mean() for i in score]))
               for name, xs in (("whole", whole), ("live", live))}
        shapes[motion.BLENDSHAPES[s]] = {
            "std": {"teacher": float(T[:, s].std()), "whole": float(W[:, s].std()), "live": float(L[:, s].std())},
            "mae": err, "amplitude_gain": float(amp[k]),
            "best_fit_gain": {"whole": float(fit_whole[k]), "live": float(fit_live[k])}}

    print(f"{len(clips)} held-out clips; gains measured on {len(fit)}, scored on {len(score)}")
    print("mouth MAE: whole clip / live low-latency (live over whole)")
    result_rows = {}
    for name, (w, v) in rows.items():
        print(f"  {name:40s} {w:.5f} / {v:.5f} ({100 * (v / w - 1):+.1f} %)")
        result_rows[name] = {"whole": w, "live": v, "live_over_whole": v / w - 1}
    print("spread (std) and error of the shapes the live stream misses most: teacher / whole / live")
    for name, s in sorted(shapes.items(), key=lambda kv: kv[1]["mae"]["whole"] - kv[1]["mae"]["live"])[:8]:
        print(f"  {name:20s} std {s['std']['teacher']:.3f} / {s['std']['whole']:.3f} / {s['std']['live']:.3f}"
              f"   MAE {s['mae']['whole']:.4f} / {s['mae']['live']:.4f}")
    for name, counts in lags.items():
        print(f"jawOpen lag against the teacher, {name}: clips per lag -{MAX_LAG}..+{MAX_LAG} frames {counts}")
    doc = {"checkpoint": str(args.checkpoint), "clips": len(clips), "preset": "low-latency", "style": "reference",
           "rows": result_rows, "jaw_lag_clips": lags, "lags": list(range(-MAX_LAG, MAX_LAG + 1)), "shapes": shapes}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
