"""How the bilabial closure's settings were chosen: on recorded prompts of the training fifths, never the held-out.

    python -m benchmarks.closure_choice [--prompts 300]

The closure (engine/closure.py) seals the lips where the recogniser hears /p b m/, reading the features
``ahead_frames`` later, by w = clip((P - start) / (full - start), 0, 1). This bakes ``--prompts`` recorded
English prompts of the training fifths (``real_eval.aligned_prompts("train")``, aligned by PocketSphinx as
the evaluation's) with the shipped model, then for each setting counts what it gains and costs against the
model alone (``real_eval``'s measures):

- medial /p b m/ the lips now close on;
- vowels it shuts (lips closed on some frame of their middle half), beside a /p b m/ and elsewhere.

The setting kept is the one with the most closures gained less vowels shut (ClosureConfig's defaults).
Writes benchmarks/closure_choice.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE, ClosureConfig
from ksdiff_runtime.engine.offline import clip_inputs
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT
from ksdiff_runtime.training import real_eval as R

ROOT = Path(__file__).resolve().parent.parent
AHEAD = (0, 1, 2)
RAMPS = ((0.05, 0.25), (0.1, 0.3), (0.2, 0.4), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9))


def counts(frames: list[np.ndarray], prompts: list[R.Prompt]) -> dict[str, int]:
    """Medial bilabials closed, and vowels shut beside a bilabial and elsewhere."""
    closed = sum(c for f, p in zip(frames, prompts, strict=True) for _, medial, c in R.bilabials(f, p.phones)
                 if medial)
    shut = R.vowels_shut(frames, prompts)
    return {"medial_closed": int(closed), "vowels_shut_beside": shut["beside a bilabial"]["shut"],
            "vowels_shut_elsewhere": shut["elsewhere"]["shut"]}


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
        for start, full in RAMPS:
            config = ClosureConfig(start=start, full=full, ahead_frames=ahead)
            c = counts([config.apply(f, x, 0) for f, x in zip(frames, feats, strict=True)], prompts)
            gained = {k: c[k] - model[k] for k in c}
            net = gained["medial_closed"] - gained["vowels_shut_beside"] - gained["vowels_shut_elsewhere"]
            rows.append({"ahead_frames": ahead, "start": start, "full": full, **gained, "net": net})
    best = max(rows, key=lambda r: r["net"])
    result = {"prompts": len(prompts), "medial_bilabials": medial, "model": model, "settings": rows, "best": best,
              "shipped": {"ahead_frames": DEFAULT_CLOSURE.ahead_frames, "start": DEFAULT_CLOSURE.start,
                          "full": DEFAULT_CLOSURE.full}}
    print(f"{len(prompts)} training prompts, {medial} medial /p b m/; the model alone closes {model['medial_closed']}, "
          f"shuts {model['vowels_shut_beside']} vowels beside them and {model['vowels_shut_elsewhere']} elsewhere")
    print("ahead  start..full  closures  vowels beside  elsewhere  net")
    for r in rows:
        print(f"{r['ahead_frames']:5d}  {r['start']:.2f}..{r['full']:.2f}  {r['medial_closed']:+8d}  "
              f"{r['vowels_shut_beside']:+13d}  {r['vowels_shut_elsewhere']:+9d}  {r['net']:+4d}")
    print(f"best: ahead {best['ahead_frames']}, {best['start']}..{best['full']}; shipped: {result['shipped']}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
