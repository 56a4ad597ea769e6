"""`python -m benchmarks.closure_seeds`: is a change in real-voice closure more than a redraw?

`ksdiff-runtime eval --real` scores lip closure on the medial /p/, /b/ and /m/ of held-out recorded
prompts with one seed (the room noise under the prompts and the sampler's noise). A few bilabials
either way between two checkpoints can be that draw. This animates the same prompts with each
checkpoint under several seeds, by `eval --real`'s method (`--mode bake`: whole clips at 4 steps, as
`bake` does; `--mode live`: streamed through the `low-latency` preset), and prints, per seed and per
phone: each checkpoint's closure, and the paired comparison of every checkpoint with the first one on
the same bilabials (closed by the first only / by the other only) with McNemar's exact two-sided p.
Writes benchmarks/closure_seeds.json; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from ksdiff_runtime.backends.select import DEFAULT_CHECKPOINT, load_backend
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.training.real_eval import (
    BILABIALS,
    LIVE_PRESET,
    MODES,
    bilabials,
    held_out_prompts,
    model_frames,
)

KINDS = ("medial", *BILABIALS)


def medial_flags(frames: list[np.ndarray], prompts: list) -> dict[str, np.ndarray]:
    """For each kind (all medial, then each phone): [n] bool, closed, over every medial bilabial in order."""
    flags = [(ph, c) for f, p in zip(frames, prompts, strict=True) for ph, med, c in bilabials(f, p.phones) if med]
    return {k: np.array([c for ph, c in flags if k == "medial" or ph == k], bool) for k in KINDS}


def mcnemar(first: np.ndarray, other: np.ndarray) -> dict[str, float | int]:
    """Paired closures: closed by the first checkpoint only, by the other only, exact two-sided p."""
    if first.size != other.size:  # the same audio and mode align the same bilabials in the same order
        raise ValueError(f"the two checkpoints were scored on {first.size} and {other.size} bilabials")
    only_first, only_other = int((first & ~other).sum()), int((other & ~first).sum())
    n = only_first + only_other
    p = binomtest(only_other, n, 0.5).pvalue if n else 1.0
    return {"first_only": only_first, "other_only": only_other, "p": round(float(p), 4)}


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.closure_seeds", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", type=Path, default=[],
                   help="checkpoint to animate with (repeatable; the first is the one the others are compared with; "
                   "default: the shipped model)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (room noise and sampler)")
    p.add_argument("--mode", choices=MODES, default="bake", help="bake (whole clips) or live (streamed)")
    p.add_argument("--max-prompts", type=int, default=0, help="held-out prompts used (0: all)")
    p.add_argument("--backend", default="onnxruntime", help="backend that runs each checkpoint")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default benchmarks/closure_seeds.json, closure_seeds_live.json for live)")
    args = p.parse_args(argv)
    checkpoints = args.checkpoint or [DEFAULT_CHECKPOINT]
    out = args.out or Path(__file__).resolve().parent / ("closure_seeds.json" if args.mode == "bake"
                                                         else "closure_seeds_live.json")
    backends = {str(c): load_backend(args.backend, c) for c in checkpoints}
    engines = ({name: StreamingEngine(b, LIVE_PRESET, front_end_threads=1) for name, b in backends.items()}
               if args.mode == "live" else {})
    runs = []
    for seed in args.seeds:
        prompts, _ = held_out_prompts(args.max_prompts, seed)
        audios = [q.audio for q in prompts]
        flags = {}
        for name, backend in backends.items():
            frames = model_frames(args.mode, backend, engines.get(name), audios, seed,
                                  f"seed {seed}: {Path(name).name}")
            flags[name] = medial_flags(frames, prompts)
        first = next(iter(flags.values()))
        runs.append({
            "seed": seed,
            "n": {k: int(first[k].size) for k in KINDS},
            "closed": {name: {k: round(float(f[k].mean()), 4) if f[k].size else None for k in KINDS}
                       for name, f in flags.items()},
            "paired": {name: {k: mcnemar(first[k], f[k]) for k in KINDS} for name, f in list(flags.items())[1:]},
        })
    for engine in engines.values():
        engine.close()
    names = list(backends)
    print(f"\nMedial bilabial closure on real prompts, {args.mode}, by seed (n: {runs[0]['n']})")
    for r in runs:
        for name in names:
            row = "  ".join(f"{k} {rate(r['closed'][name][k])}" for k in KINDS)
            print(f"seed {r['seed']}  {name:>40}  {row}")
        for name in names[1:]:
            row = "  ".join(f"{k} -{m['first_only']}/+{m['other_only']} (p {m['p']:.2f})"
                            for k, m in r["paired"][name].items())
            print(f"seed {r['seed']}  {'vs first: ' + Path(name).name:>40}  {row}")
    def over_seeds(name: str, k: str) -> list[float]:
        return [r["closed"][name][k] for r in runs if r["closed"][name][k] is not None]

    # the mean of the seeds' rates (each seed's prompts may differ by a few: the aligner runs on each draw)
    mean = {name: {k: round(float(np.mean(v)), 4) if (v := over_seeds(name, k)) else None for k in KINDS}
            for name in names}
    spread = {name: {k: [min(v), max(v)] if (v := over_seeds(name, k)) else None for k in KINDS} for name in names}
    for name in names:
        print(f"mean over seeds  {name:>40}  " + "  ".join(f"{k} {rate(mean[name][k])}" for k in KINDS))
    out.write_text(json.dumps({"checkpoints": names, "mode": args.mode, "seeds": args.seeds, "runs": runs,
                               "mean": mean, "range": spread}, indent=1) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
