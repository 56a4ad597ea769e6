"""`python -m ksdiff_runtime.training.stop_timing`: where a corpus's /p b/ closures sit in time.

A stop's closure is silence in the audio and closed lips in the teacher's targets. For each /p/ and
/b/ of the training clips of each kind (synthetic voices with espeak-ng's own phone times; recorded
prompts with PocketSphinx's), this finds, within 80 ms of the phone's centre, the audio's quietest
5 ms frame and the teacher's smallest lip aperture, and reports their offsets from the centre. Where
the two kinds disagree, the model is taught two timings of the same acoustic event (docs/REAL_VOICES.md).
``--retime-ms`` writes a corpus whose recorded prompts have their phone times moved by one constant (the
ablation there); ``--snap-stops`` moves each recorded /p b/ on its own closure's silence instead (``snap_stops``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_runtime.training.metrics import strip_stress
from ksdiff_runtime.training.teacher import is_pause

STOPS = ("p", "b")
SEARCH_S = 0.08
HOP = 80  # 5 ms energy frames
WINDOW = 320  # 20 ms
# Where espeak-ng puts a /p b/ against its own audio: the quietest frame sits this far from the phone's
# start (median over 4459 synthetic training stops: `python -m ksdiff_runtime.training.stop_timing
# --max-clips 1000`). The teacher shuts the lips by a stop's start (+18 ms on synthetic stops, +13 ms on
# recorded ones as aligned), so a recorded stop whose start is snapped to this convention is taught as the
# synthetic ones are.
SYNTHETIC_QUIET_FROM_START_S = -0.008
MIN_PHONE_S = 0.01  # a phone that a snap shortens keeps at least this
# A retiming of a recorded prompt's phones: (audio, phonemes, start, dur) -> (start, dur), in seconds.
Retime = Callable[[np.ndarray, list[str], np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def energy_db(audio: np.ndarray) -> np.ndarray:
    """The audio's level in 20 ms windows every 5 ms (frame i centred on sample i * HOP), in dB."""
    y = np.asarray(audio, np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, (WINDOW // 2, WINDOW // 2)), WINDOW)[::HOP]
    return 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-10)


def quietest(db: np.ndarray, centre: float) -> float | None:
    """The time (s) of the quietest 5 ms frame within SEARCH_S of ``centre`` (the middle of the run of frames
    within 1 dB of it, where the silence is flat); None where too little is there."""
    i0 = max(0, int((centre - SEARCH_S) * SAMPLE_RATE / HOP))
    i1 = min(len(db), int((centre + SEARCH_S) * SAMPLE_RATE / HOP))
    if i1 - i0 < 5:
        return None
    lo = hi = i0 + int(np.argmin(db[i0:i1]))
    floor = db[lo] + 1.0
    while lo > i0 and db[lo - 1] <= floor:
        lo -= 1
    while hi + 1 < i1 and db[hi + 1] <= floor:
        hi += 1
    return (lo + hi) / 2 * HOP / SAMPLE_RATE


def stop_offsets(clip: dict[str, np.ndarray]) -> list[tuple[float, float, float]]:
    """(quietest audio frame, smallest teacher aperture) offsets from each /p b/'s centre, and its length, in
    seconds."""
    db = energy_db(clip["audio"])
    aperture = motion.lip_aperture(clip["blendshapes"])
    out = []
    for phone, start, dur in zip(clip["phonemes"], clip["phoneme_start"], clip["phoneme_dur"], strict=True):
        if strip_stress(str(phone)) not in STOPS:
            continue
        centre = float(start + dur / 2)
        quiet = quietest(db, centre)
        j0 = max(0, int(np.floor((centre - SEARCH_S) * motion.FPS)))
        j1 = min(len(aperture), int(np.ceil((centre + SEARCH_S) * motion.FPS)))
        if quiet is None or j1 <= j0:
            continue
        closed = (j0 + int(np.argmin(aperture[j0:j1]))) / motion.FPS - centre
        out.append((quiet - centre, closed, float(dur)))
    return out


def snap_stops(audio: np.ndarray, phonemes: list[str], start: np.ndarray,
               dur: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Each /p b/ moved so that its own closure's silence (the quietest frame near it) sits where espeak-ng
    puts it (SYNTHETIC_QUIET_FROM_START_S from the stop's start); the phones either side give or take the
    time, each keeping MIN_PHONE_S. A stop beside a pause or another stop is left where it is: its closure's
    silence is the pause's, or shared. The search is ``quietest``'s, around the stop's aligned centre.
    Returns (start, dur, stops moved)."""
    start = np.array(start, np.float64)
    dur = np.array(dur, np.float64)
    db = energy_db(audio)
    moved = 0
    for k, phone in enumerate(phonemes):
        if strip_stress(phone) not in STOPS or k == 0 or k + 1 == len(phonemes):
            continue
        neighbours = (phonemes[k - 1], phonemes[k + 1])
        if any(is_pause(p) or strip_stress(p) in STOPS for p in neighbours):
            continue
        centre = start[k] + dur[k] / 2
        quiet = quietest(db, centre)
        if quiet is None:
            continue
        earliest, latest = MIN_PHONE_S - dur[k - 1], dur[k + 1] - MIN_PHONE_S  # the neighbours keep their minimum
        shift = float(np.clip(quiet - SYNTHETIC_QUIET_FROM_START_S - start[k], min(earliest, 0.0), max(latest, 0.0)))
        if abs(shift) < 1e-6:
            continue
        dur[k - 1] += shift
        start[k] += shift
        start[k + 1] += shift
        dur[k + 1] -= shift
        moved += 1
    return start, dur, moved


def stop_timing(corpus: Path, max_clips: int = 400) -> dict[str, dict]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    found: dict[str, list[tuple[float, float, float]]] = {}
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
                        "closed_minus_quiet_ms_median": float(np.median(a[:, 1] - a[:, 0])),
                        "quiet_from_start_ms_median": float(np.median(a[:, 0] + a[:, 2] / 2)),
                        "closed_from_start_ms_median": float(np.median(a[:, 1] + a[:, 2] / 2)),
                        "dur_ms_median": float(np.median(a[:, 2]))}
    return result


def shifted(shift_ms: float) -> Retime:
    """Every phone moved by ``shift_ms``."""
    return lambda audio, names, start, dur: (start + shift_ms / 1000.0, dur)


def snapped(audio: np.ndarray, names: list[str], start: np.ndarray, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each /p b/ on its own closure's silence (``snap_stops``)."""
    return snap_stops(audio, names, start, dur)[:2]


def retime_real(corpus: Path, out: Path, retime: Retime) -> int:
    """A corpus in ``out`` of ``corpus``'s synthetic clips (by reference: their features stay cached) and its
    recorded prompts with their phone times moved by ``retime`` and the teacher's targets made again from
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
            start, dur = retime(clip["audio"], names, clip["phoneme_start"].astype(np.float64),
                                clip["phoneme_dur"].astype(np.float64))
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
    p.add_argument("--snap-stops", action="store_true", help="instead: write --out, the corpus's synthetic clips "
                   "and its recorded prompts with each /p b/ moved onto its own closure's silence, targets made again")
    p.add_argument("--out", type=Path, default=Path("data/corpus_realshift"),
                   help="with --retime-ms or --snap-stops: the new corpus")
    args = p.parse_args(argv)
    if args.retime_ms is not None and args.snap_stops:
        p.error("--retime-ms and --snap-stops are two different corpora: give one")
    if args.retime_ms is not None or args.snap_stops:
        how = snapped if args.snap_stops else shifted(args.retime_ms)
        n = retime_real(args.corpus, args.out, how)
        said = "with their /p b/ snapped" if args.snap_stops else f"retimed by {args.retime_ms:+g} ms"
        print(f"{args.out}: {n} recorded prompts {said}, synthetic clips by reference")
        return 0
    for kind, r in stop_timing(args.corpus, args.max_clips).items():
        print(f"{kind}: {r['stops']} stops in {r['clips']} clips; from the phone's centre, the audio's quietest frame "
              f"{r['quiet_ms_median']:+.0f} ms (IQR {r['quiet_ms_iqr'][0]:+.0f}..{r['quiet_ms_iqr'][1]:+.0f}), the "
              f"teacher's closed lips {r['closed_ms_median']:+.0f} ms; lips minus quiet "
              f"{r['closed_minus_quiet_ms_median']:+.0f} ms; from the phone's start (median length "
              f"{r['dur_ms_median']:.0f} ms), the quietest frame {r['quiet_from_start_ms_median']:+.0f} ms, the lips "
              f"{r['closed_from_start_ms_median']:+.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
