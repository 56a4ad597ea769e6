"""The built-in style references (``engine/style.py``'s ``STYLES``): takes of the procedural teacher on one
fixed passage, from little motion to much, written as Live Link Face CSVs to ``ksdiff_runtime/assets/styles``.

    python -m ksdiff_runtime.training.style_refs

Each style sets the teacher's expressiveness, head amplitude and articulation to one level (its head rate,
smile and blink rate stay at the neutral 0.5); the passage, voice and random seed are fixed, so the takes
differ only in style. The references are read like any user's take: the runtime measures their profile.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.engine.style import STYLE_DIR, STYLES, StyleProfile
from ksdiff_runtime.features.prosody import prosody
from ksdiff_runtime.outputs import files

from .speech import synthesize
from .teacher import NEUTRAL_STYLE, STYLE_NAMES, teach

PASSAGE = ("Good evening, everyone, and welcome back to the stream. Tonight we are trying the new map, "
           "so bring snacks. Maybe we win, maybe we do not, but it will be fun either way.")
VOICE = "en-us+m3"
LEVELS: dict[str, float] = dict(zip(STYLES, (0.0, 0.25, 0.5, 0.75, 1.0), strict=True))
VARIED = ("expressiveness", "head_amplitude", "articulation")


def teacher_style(level: float) -> np.ndarray:
    style = NEUTRAL_STYLE.copy()
    for name in VARIED:
        style[STYLE_NAMES.index(name)] = level
    return style


def write_references(out: Path = STYLE_DIR, seed: int = 0) -> dict[str, StyleProfile]:
    utt = synthesize(PASSAGE, VOICE, rate=160)
    pros = prosody(utt.audio)
    out.mkdir(parents=True, exist_ok=True)
    profiles = {}
    for name, level in LEVELS.items():
        blend, head = teach(utt.phonemes, utt.start, utt.duration, len(utt.audio), pros, teacher_style(level),
                            np.random.default_rng(seed))
        files.write_csv(out / f"{name}.csv", blend, head, motion.gaze_from_blendshapes(blend), motion.FPS)
        profiles[name] = StyleProfile.of(blend, head)
    return profiles


def main() -> None:
    p = argparse.ArgumentParser(description="Write the built-in style references (Live Link Face CSVs): the "
                                "teacher's takes of one passage at five style levels.")
    p.add_argument("--out", type=Path, default=STYLE_DIR, help=f"folder (default {STYLE_DIR})")
    args = p.parse_args()
    for name, prof in write_references(args.out).items():
        print(f"{name:9s} head {np.degrees(prof.head):.2f} deg, brows {prof.expression:.3f}, "
              f"jaw p95 {prof.articulation:.3f} -> {args.out / (name + '.csv')}")


if __name__ == "__main__":
    main()
