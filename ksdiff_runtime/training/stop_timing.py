"""`python -m ksdiff_runtime.training.stop_timing`: where a corpus's /p b/ closures sit in time.

A stop's closure is silence in the audio and closed lips in the teacher's targets. For each /p/ and
/b/ of the training clips of each kind (synthetic voices with espeak-ng's own phone times; recorded
prompts with PocketSphinx's), this finds, within 80 ms of the phone's centre, the audio's quietest
5 ms frame and the teacher's smallest lip aperture, and reports their offsets from the centre. Where
the two kinds disagree, the model is taught two timings of the same acoustic event (docs/REAL_VOICES.md).
``--retime-ms`` writes a corpus whose recorded prompts have their phone times moved (the ablation there).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_runtime.training.metrics import strip_stress

STOPS = ("p", "b")
SEARCH_S = 0.08
HOP = 80  # 5 ms energy frames
WINDOW = 320  # 20 ms


def stop_offsets(clip: dict[str, np.ndarray]) -> list[tuple[float, float]]:
    """(quietest audio frame, smallest teacher aperture) offsets from each /p b/'s centre, in seconds."""
    y = np.asarray(clip["audio"], np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, (WINDOW // 2, WINDOW // 2)), WINDOW)[::HOP]
    db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    aperture = motion.lip_aperture(clip["blendshapes"])
    out = []
    for phone, start, dur in zip(clip["phonemes"], clip["phoneme_start"], clip["phoneme_dur"], strict=True):
        if strip_stress(str(phone)) not in STOPS:
            continue
        centre = float(start + dur / 2)
        i0 = max(0, int((centre - SEARCH_S) * SAMPLE_RATE / HOP))
        i1 = min(len(db), int((centre + SEARCH_S) * SAMPLE_RATE / HOP))
        j0 = max(0, int(np.floor((centre - SEARCH_S) * motion.FPS)))
        j1 = min(len(aperture), int(np.ceil((centre + SEARCH_S) * motion.FPS)))
        if i1 - i0 < 5 or j1 <= j0:
            continue
        quiet = (i0 + int(np.argmin(db[i0:i1]))) * HOP / SAMPLE_RATE - centre
        closed = (j0 + int(np.argmin(aperture[j0:j1]))) / motion.FPS - centre
        out.append((quiet, closed))
    return out


def stop_timing(corpus: Path, max_clips: int = 400) -> dict[str, dict[str, float]]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    found: dict[str, list[tuple[float, float]]] = {}
    clips: dict[str, int] = {}
    for entry in manifest["clips"]:
        kind = entry.get("kind") or "synthetic"
        if entry["split"] != "train" or kind not in ("synthetic", "real") or clips.get(kind, 0) >= max_clips:
            continue
        clips[kind] = clips.get(kind, 0) + 1
        with np.load(corpus / entry["file"]) as z:
            found.setdefault(kind, []).extend(stop_offsets({k: z[k] for k in z.files}))
    result = {}
    for kind, pairs in found.items():
        a = 1000.0 * np.array(pairs)
        result[kind] = {"clips": clips[kind], "stops": len(a), "quiet_ms_median": float(np.median(a[:, 0])),
                        "quiet_ms_iqr": [float(np.percentile(a[:, 0], q)) for q in (25, 75)],
                        "closed_ms_median": float(np.median(a[:, 1])),
                        "closed_minus_quiet_ms_median": float(np.median(a[:, 1] - a[:, 0]))}
    return result


def retime_real(corpus: Path, out: Path, shift_ms: float) -> int:
    """A corpus in ``out`` of ``corpus``'s synthetic clips (by reference: their features stay cached) and its
    recorded prompts with their phone times moved by ``shift_ms`` and the teacher's targets made again from
    them (the clip's own phones, prosody and style). Returns the prompts retimed."""
    from ksdiff_runtime.features.prosody import prosody

    from .realworld import _write
    from .teacher import teach

    manifest = json.loads((corpus / "manifest.json").read_text())
    (out / "clips").mkdir(parents=True, exist_ok=True)
    clips, real = [], 0
    for entry in manifest["clips"]:
        if entry.get("kind") is None:
            clips.append(dict(entry, file=os.path.relpath(corpus / entry["file"], out)))
        elif entry["kind"] == "real":
            with np.load(corpus / entry["file"]) as z:
                clip = {k: z[k] for k in z.files}
            names = [str(p) for p in clip["phonemes"]]
            start = clip["phoneme_start"].astype(np.float64) + shift_ms / 1000.0
            dur = clip["phoneme_dur"].astype(np.float64)
            rng = np.random.default_rng([int(entry["id"][1:]), 7])
            blend, head = teach(names, start, dur, clip["audio"].size, prosody(clip["audio"]), clip["style"], rng)
            clips.append(_write(out, dict(entry), clip["audio"], blend, head, names, start, dur, clip["style"]))
            real += 1
    (out / "manifest.json").write_text(json.dumps(dict(manifest, clips=clips)))
    return real


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ksdiff_runtime.training.stop_timing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="corpus folder (with --real-world clips)")
    p.add_argument("--max-clips", type=int, default=400, help="training clips per kind (default 400)")
    p.add_argument("--retime-ms", type=float, help="instead: write --out, the corpus's synthetic clips and its "
                   "recorded prompts with their phone times moved by this much and their targets made again")
    p.add_argument("--out", type=Path, default=Path("data/corpus_realshift"), help="with --retime-ms: the new corpus")
    args = p.parse_args(argv)
    if args.retime_ms is not None:
        n = retime_real(args.corpus, args.out, args.retime_ms)
        print(f"{args.out}: {n} recorded prompts retimed by {args.retime_ms:+g} ms, synthetic clips by reference")
        return 0
    for kind, r in stop_timing(args.corpus, args.max_clips).items():
        print(f"{kind}: {r['stops']} stops in {r['clips']} clips; from the phone's centre, the audio's quietest frame "
              f"{r['quiet_ms_median']:+.0f} ms (IQR {r['quiet_ms_iqr'][0]:+.0f}..{r['quiet_ms_iqr'][1]:+.0f}), the "
              f"teacher's closed lips {r['closed_ms_median']:+.0f} ms; lips minus quiet "
              f"{r['closed_minus_quiet_ms_median']:+.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
