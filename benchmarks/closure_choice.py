"""How the bilabial closure's settings were chosen: on recorded prompts of the training fifths, never the held-out.

    python -m benchmarks.closure_choice [--prompts 300]

The closure (engine/closure.py) seals the lips where the recogniser hears /p b m/: frame i by the largest
w = clip((P - start) / (full - start), 0, 1) of the features' rows i + ahead - hold + 1 .. i + ahead. This
bakes ``--prompts`` recorded English prompts of the training fifths (``real_eval.aligned_prompts("train")``,
aligned by PocketSphinx as the evaluation's) with the shipped model, then for each setting counts what it
gains and costs against the model alone (``real_eval``'s measures), on the 30 fps frames and on the same
frames resampled to 24 fps (as `bake --fps 24` and a 24 fps engine output them; a one-frame seal can fall
between 24 fps frames):

- medial /p b m/ the lips now close on;
- vowels it shuts (lips closed on some frame of their middle half), beside a /p b m/ and elsewhere.

Also reported: how late the recogniser's bilabial peak comes, in frames after the aligned phone's centre (the
reason to read ahead). The setting kept is the one with the most closures gained less vowels shut, summed
over 30 and 24 fps (ClosureConfig's defaults). Writes benchmarks/closure_choice.json; nothing is asserted,
every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.engine.closure import BILABIAL_COLUMNS, DEFAULT_CLOSURE, ClosureConfig
from ksdiff_runtime.engine.offline import clip_inputs
from ksdiff_runtime.features.frontend import ppg_probabilities
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT
from ksdiff_runtime.outputs.files import resample_frames
from ksdiff_runtime.training import real_eval as R

ROOT = Path(__file__).resolve().parent.parent
AHEAD = (0, 1, 2)
HOLD = (1, 2)
RAMPS = ((0.05, 0.25), (0.1, 0.3), (0.2, 0.4), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9))
RATES = (motion.FPS, 24)  # the frames as made, and resampled as a 24 fps output gets them
KEYS = ("medial_closed", "vowels_shut_beside", "vowels_shut_elsewhere")


def counts(frames: list[np.ndarray], prompts: list[R.Prompt]) -> dict[str, int]:
    """Medial bilabials closed, and vowels shut beside a bilabial and elsewhere, at each of RATES (keys
    ``<measure>@<fps>``)."""
    out = {}
    for fps in RATES:
        at = frames if fps == motion.FPS else [
            resample_frames(f, motion.FPS, fps, len(f) * fps // motion.FPS) for f in frames]
        closed = sum(c for f, p in zip(at, prompts, strict=True) for _, medial, c in R.bilabials(f, p.phones, fps)
                     if medial)
        shut = R.vowels_shut(at, prompts, fps)
        values = (int(closed), shut["beside a bilabial"]["shut"], shut["elsewhere"]["shut"])
        out |= {f"{k}@{fps}": v for k, v in zip(KEYS, values, strict=True)}
    return out


def peak_lag_frames(prompts: list[R.Prompt], feats: list[np.ndarray]) -> dict[str, float]:
    """Median frames from each medial /p b m/'s aligned centre to the recogniser's bilabial peak (within +-4)."""
    lags: dict[str, list[float]] = {b: [] for b in R.BILABIALS}
    for p, x in zip(prompts, feats, strict=True):
        prob = ppg_probabilities(x[:, BILABIAL_COLUMNS]).sum(axis=1)
        for i, medial in R.bilabial_phones(p.phones):
            centre = (p.phones[i].start + 0.5 * p.phones[i].dur) * motion.FPS
            a, b = int(centre) - 4, int(centre) + 5
            if medial and a >= 0 and b <= len(prob):
                lags[p.phones[i].name].append(a + int(np.argmax(prob[a:b])) - centre)
    return {b: round(float(np.median(v)), 2) for b, v in lags.items() if v}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=300, help="training prompts (0: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "closure_choice.json")
    args = ap.parse_args(argv)

    prompts, _ = R.aligned_prompts("train", args.prompts)
    if not prompts:
        raise SystemExit("no recorded prompts: apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-wav")
    backend = load_backend("onnxruntime-cpu", DEFAULT_CHECKPOINT)
    audios = [p.audio for p in prompts]
    frames = R.model_frames("bake", backend, None, audios, 0, "bake")
    feats = [clip_inputs(backend, a).feats for a in audios]
    medial = sum(1 for f, p in zip(frames, prompts, strict=True) for _, m, _ in R.bilabials(f, p.phones) if m)
    model = counts(frames, prompts)
    rows = []
    for ahead in AHEAD:
        for hold in (h for h in HOLD if h <= ahead + 1):
            for start, full in RAMPS:
                config = ClosureConfig(start=start, full=full, ahead_frames=ahead, hold_frames=hold)
                c = counts([config.apply(f, x, 0) for f, x in zip(frames, feats, strict=True)], prompts)
                gained = {k: c[k] - model[k] for k in c}
                net = {fps: gained[f"medial_closed@{fps}"] - gained[f"vowels_shut_beside@{fps}"]
                       - gained[f"vowels_shut_elsewhere@{fps}"] for fps in RATES}
                rows.append({"ahead_frames": ahead, "hold_frames": hold, "start": start, "full": full, **gained,
                             **{f"net@{fps}": v for fps, v in net.items()}, "net": sum(net.values())})
    best = max(rows, key=lambda r: r["net"])
    shipped = {"ahead_frames": DEFAULT_CLOSURE.ahead_frames, "hold_frames": DEFAULT_CLOSURE.hold_frames,
               "start": DEFAULT_CLOSURE.start, "full": DEFAULT_CLOSURE.full}
    result = {"prompts": len(prompts), "medial_bilabials": medial, "model": model,
              "peak_lag_frames": peak_lag_frames(prompts, feats), "settings": rows, "best": best, "shipped": shipped}
    print(f"{len(prompts)} training prompts, {medial} medial /p b m/; the model alone closes "
          f"{model['medial_closed@30']}, shuts {model['vowels_shut_beside@30']} vowels beside them and "
          f"{model['vowels_shut_elsewhere@30']} elsewhere (30 fps); the recogniser's bilabial peak comes "
          f"{result['peak_lag_frames']} frames after the aligned centre (median)")
    print("ahead hold  start..full  | 30 fps: closures  vowels beside  elsewhere  net | 24 fps: the same | net")
    for r in rows:
        cells = "  |".join(f"{r[f'medial_closed@{fps}']:+6d} {r[f'vowels_shut_beside@{fps}']:+6d} "
                           f"{r[f'vowels_shut_elsewhere@{fps}']:+5d} {r[f'net@{fps}']:+5d}" for fps in RATES)
        setting = f"{r['ahead_frames']:5d} {r['hold_frames']:4d}  {r['start']:.2f}..{r['full']:.2f}"
        print(f"{setting}  |{cells}  | {r['net']:+4d}")
    print(f"best: {({k: best[k] for k in shipped})}; shipped: {shipped}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
