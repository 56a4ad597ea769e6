"""Bilabial closure: the lips seal where the phoneme recogniser hears /p/, /b/ or /m/.

On real voices the model closes the lips on 89 % of medial bilabials, and on only 80 % of /b/s, while the
recogniser the model reads hears 92 % of those /b/s (docs/REAL_VOICES.md): the cue is in the features and
the model does not always act on it. This stage acts on it, on what goes out (the model's own context stays
as it made it): frame i's lips close by

    w = clip((P - start) / (full - start), 0, 1)

where P is the recogniser's probability of p, b or m (summed) in the features of frame i + ``ahead_frames``
(the largest over ``hold_frames`` rows ending there). The recogniser's CTC spikes come after the sound (on
recorded prompts its bilabial peak is a median 1.55-1.7 frames after the aligned phone's centre:
benchmarks/closure_choice.json), and the model already waits for the features that far ahead, so reading
them costs no latency. Closing means: the jaw eased to at most ``jaw_cap`` (the teacher's jaw in a
closure), mouthClose up to the jaw (lips together against it), and the shapes that part the lips
(motion.LIP_GAP_COEFFICIENTS' positive ones) to 0; w blends from the model's frame. The stage only ever
closes a mouth, so it cannot make one talk on music or noise (the voice gate rests those).

Measured (docs/ENGINE.md, "Bilabial closure"): on 232 held-out recorded prompts, baked, medial closure
89.2 -> 94.4 % and /b/ 79.5 -> 91.0 % (live 88.9 -> 93.1 %, 80.8 -> 91.0 %), for 9 more of 1625 vowels shut
in their middle (15 live), most of them beside a bilabial; on synthetic held-out clips streamed live,
closure 89.9 -> 93.2 % for +0.9 % mouth MAE. The settings were chosen on training prompts
(benchmarks/closure_choice.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.features.frontend import HAMA_BILABIALS, PosteriorgramFrontEnd, ppg_probabilities

log = logging.getLogger(__name__)

JAW = motion.index("jawOpen")
CLOSE = motion.index("mouthClose")
# the shapes that part the lips, beside the jaw (one definition of the lips' gap: motion.py)
PARTING = np.array([motion.index(n) for n, c in motion.LIP_GAP_COEFFICIENTS.items() if c > 0 and n != "jawOpen"])
BILABIAL_COLUMNS = np.array(sorted(HAMA_BILABIALS.values()))


@dataclass(frozen=True)
class ClosureConfig:
    # Chosen on 300 of the training fifths' recorded prompts (never the held-out ones), for the most medial
    # bilabials closed less the vowels shut in their middle, at 30 and at 24 fps (benchmarks/closure_choice.json,
    # docs/REAL_VOICES.md): 2 frames ahead shut fewer vowels than 1 or 0 at every threshold, 0.1..0.3 came out
    # best (+27 closures of 370, +17 vowels; 0.3..0.5: +20, +11), and holding a seal 2 frames shut 3 times the
    # vowels beside a bilabial (+51)
    start: float = 0.1  # bilabial probability where the lips begin to close
    full: float = 0.3  # and where they are sealed
    ahead_frames: int = 2  # the features of the frame this many frames later (at most the model's lookahead)
    # a frame takes the largest weight of the rows [i + ahead - hold + 1, i + ahead]: the lips stay shut at least
    # this many frames. One frame's seal can fall between the frames of a 24 or 25 fps output (at 24 fps 16 of
    # the 27 closures gained remain); two reach every rate, at the vowels' cost above
    hold_frames: int = 1
    jaw_cap: float = 0.12  # the jaw in a closure: at most this open

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < self.full <= 1.0:
            raise ValueError(f"closure needs 0 <= start < full <= 1, got start {self.start}, full {self.full}")
        if self.ahead_frames < 0:
            raise ValueError(f"closure ahead_frames must be >= 0, got {self.ahead_frames}")
        if not 1 <= self.hold_frames <= self.ahead_frames + 1:
            raise ValueError(f"closure hold_frames must be in 1..ahead_frames + 1, got {self.hold_frames}")
        if not 0.0 <= self.jaw_cap <= 1.0:
            raise ValueError(f"closure jaw_cap must be in [0, 1], got {self.jaw_cap}")

    def weights(self, feats: np.ndarray) -> np.ndarray:
        """[n]: how closed each frame's lips are made, from the features [n, F] of the frames it reads."""
        if len(feats) == 0:
            return np.zeros(0, np.float32)
        p = ppg_probabilities(feats[:, BILABIAL_COLUMNS]).sum(axis=1)
        return np.clip((p - self.start) / (self.full - self.start), 0.0, 1.0).astype(np.float32)

    def close(self, values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Frames [n, >=52] with the lips closed by ``weights`` [n] (0: the frame as it is; 1: sealed; clipped to
        0..1)."""
        weights = np.clip(np.asarray(weights, np.float32), 0.0, 1.0)
        if not np.any(weights > 0):
            return values
        out = np.array(values, np.float32, copy=True)
        jaw = out[:, JAW].copy()
        out[:, JAW] = jaw + weights * (np.minimum(jaw, self.jaw_cap) - jaw)
        out[:, CLOSE] += weights * (np.maximum(out[:, CLOSE], out[:, JAW]) - out[:, CLOSE])
        out[:, PARTING] *= 1.0 - weights[:, None]
        return out

    def apply(self, values: np.ndarray, feats: np.ndarray, first: int) -> np.ndarray:
        """Frames [first, first + n) [n, >=52] closed from ``feats``, the features of frames [0, ...) that exist
        (rows past its end read as no bilabial: the audio has ended, or not come). Reads rows
        [first + ahead - hold + 1, first + n + ahead): never before ``first``."""
        n, hold = len(values), self.hold_frames
        lo = first + self.ahead_frames - hold + 1
        w = np.zeros(n + hold - 1, np.float32)
        rows = self.weights(feats[lo : lo + len(w)])
        w[: len(rows)] = rows
        held = np.max([w[k : k + n] for k in range(hold)], axis=0) if n else w[:0]
        return self.close(values, held)


DEFAULT_CLOSURE = ClosureConfig()  # serve's and bake's


def closure_for(front_end: str, config: ClosureConfig | None, lookahead_frames: int | None = None
                ) -> ClosureConfig | None:
    """``config`` for a model whose features carry the recogniser's posteriorgram, read by hops that wait for
    ``lookahead_frames`` frames of features past their own (a preset's model lookahead; None: a bake, which has
    them all). None when ``config`` is None (off), and with a warning for another front-end (no bilabial to
    read) or a shorter lookahead (reading nearer frames shut more vowels than it closed bilabials:
    benchmarks/closure_choice.json)."""
    if config is None:
        return None
    if front_end != PosteriorgramFrontEnd.name:
        log.warning("bilabial closure off: the model reads no phoneme posteriorgram (its front-end is %r)", front_end)
        return None
    if lookahead_frames is not None and lookahead_frames < config.ahead_frames:
        log.warning("bilabial closure off: the preset's hops wait for %d frame(s) of features ahead, the closure "
                    "reads %d", lookahead_frames, config.ahead_frames)
        return None
    return config
