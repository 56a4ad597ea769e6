"""The procedural articulation teacher: phoneme timings + prosody + style -> ARKit curves and head pose.

The model is trained only on what this produces, so its rules are the model's prior:

- Visemes: every espeak-ng English phoneme mnemonic maps to one of 15 visemes (OVRLipSync's
  set: sil PP FF TH DD kk CH SS nn RR aa E ih oh ou); diphthongs are two visemes in sequence.
  Each viseme is a target vector over the 52 ARKit blendshapes.
- Coarticulation: Cohen-Massaro dominance blending. Each phoneme segment pulls every channel
  toward its target with a dominance alpha * exp(-|tau| / spread) around the segment; the
  blend is the dominance-weighted mean. Lip rounding (pucker/funnel) is a separate blend in
  which only rounding-relevant segments have a say and rounded segments reach ~150 ms ahead,
  so rounding anticipates the vowel across the consonants before it.
- Dynamics: a critically damped second-order system run forward and backward (no lag) at
  120 Hz, jaw slower than lips, then sampled at motion.FPS.
- Bilabials /p b m/ always close: after smoothing, the frames in the middle of each bilabial
  get mouthClose = jawOpen and no lip-parting shapes, so motion.lip_aperture is 0 there.
- Pauses pull to rest with a dominant "sil" target; the mouth reaches rest in ~100 ms.
- Head: nods (pitch, positive = chin down) on stressed syllables scaled by F0/energy accent,
  plus slow drift in pitch/yaw/roll (a few random low-frequency sinusoids), more during speech.
- Eyes: blinks (more likely in pauses), small saccades through eyeLook*; brows rise on pitch
  accents; smile bias lifts mouth corners and cheeks.

Run ``python -m ksdiff_runtime.training.teacher --plot docs/teacher_curves.png`` for a picture.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ksdiff_runtime.motion import (
    BLENDSHAPE_INDEX,
    FPS,
    LIP_CLOSED_THRESHOLD,
    MOODS,
    NUM_BLENDSHAPES,
    NUM_HEAD,
    SAMPLE_RATE,
    num_frames,
)

STYLE_NAMES: tuple[str, ...] = (
    "expressiveness",
    "head_amplitude",
    "head_rate",
    "smile_bias",
    "blink_rate",
    "articulation",
)
NUM_STYLE = len(STYLE_NAMES)
NEUTRAL_STYLE = np.full(NUM_STYLE, 0.5, dtype=np.float32)

# How each mood (motion.MOODS) speaks, in the teacher's style space (STYLE_NAMES): a sad voice barely moves
# its face and head, an angry one articulates hard with quick head moves and no smile, a surprised one
# raises its brows and opens wide, a happy one smiles and moves more. The model's style encoder reads a
# take in each (training/mood_styles.py) and the runtime feeds the network that style for a stream's mood;
# the mood's held expression (motion.MOOD_EXPRESSIONS) is the controls' layer on top.
_MOOD_PARAMETERS: dict[str, dict[str, float]] = {
    "neutral": dict(zip(STYLE_NAMES, NEUTRAL_STYLE.tolist(), strict=True)),
    "happy": dict(expressiveness=0.8, head_amplitude=0.7, head_rate=0.6, smile_bias=1.0, blink_rate=0.5,
                  articulation=0.6),
    "sad": dict(expressiveness=0.1, head_amplitude=0.15, head_rate=0.2, smile_bias=0.0, blink_rate=0.3,
                articulation=0.15),
    "angry": dict(expressiveness=0.9, head_amplitude=0.6, head_rate=0.8, smile_bias=0.0, blink_rate=0.4,
                  articulation=0.95),
    "surprised": dict(expressiveness=1.0, head_amplitude=0.8, head_rate=0.5, smile_bias=0.5, blink_rate=0.2,
                      articulation=0.85),
}
assert tuple(_MOOD_PARAMETERS) == MOODS and all(set(p) == set(STYLE_NAMES) for p in _MOOD_PARAMETERS.values())
MOOD_STYLES: dict[str, np.ndarray] = {
    mood: np.array([p[name] for name in STYLE_NAMES], np.float32) for mood, p in _MOOD_PARAMETERS.items()
}

VISEMES: tuple[str, ...] = (
    "sil",
    "PP",
    "FF",
    "TH",
    "DD",
    "kk",
    "CH",
    "SS",
    "nn",
    "RR",
    "aa",
    "E",
    "ih",
    "oh",
    "ou",
)

# espeak-ng English mnemonics (stress marks stripped) -> viseme, or two visemes for diphthongs.
_PHONEME_VISEMES: dict[str, tuple[str, ...]] = {
    # pauses
    "_": ("sil",), "_:": ("sil",), "_!": ("sil",), "_|": ("sil",), "_^_": ("sil",), "||": ("sil",),
    "|": ("sil",), "": ("sil",),
    # consonants
    "p": ("PP",), "b": ("PP",), "m": ("PP",), "m-": ("PP",),
    "f": ("FF",), "v": ("FF",),
    "T": ("TH",), "D": ("TH",),
    "t": ("DD",), "d": ("DD",), "t#": ("DD",), "d#": ("DD",), "t2": ("DD",), "d2": ("DD",), "?": ("DD",),
    "k": ("kk",), "g": ("kk",), "N": ("kk",), "x": ("kk",), "h": ("kk",), "k#": ("kk",),
    "tS": ("CH",), "dZ": ("CH",), "S": ("CH",), "Z": ("CH",), "S;": ("CH",),
    "s": ("SS",), "z": ("SS",), "z#": ("SS",), "j": ("ih",),
    "n": ("nn",), "n-": ("nn",), "l": ("nn",), "l/": ("nn",), "L": ("nn",), "l#": ("nn",), "n#": ("nn",),
    "r": ("RR",), "r-": ("RR",), "*": ("DD",), "w": ("ou",), "hw": ("ou",), "W": ("ou",),
    # monophthong vowels
    "a": ("aa",), "a#": ("aa",), "A:": ("aa",), "A": ("aa",), "aa": ("aa",), "A@": ("aa",), "V": ("aa",),
    "E": ("E",), "e": ("E",), "e@": ("E",), "E2": ("E",), "3": ("E",), "3:": ("E",), "@": ("E",),
    "@-": ("E",), "@2": ("E",), "@5": ("ou",), "@L": ("nn",), "a2": ("E",),
    "i": ("ih",), "i:": ("ih",), "I": ("ih",), "I#": ("ih",), "I2": ("ih",), "i@": ("ih", "E"),
    "i@3": ("ih", "E"),
    "0": ("oh",), "O": ("oh",), "O:": ("oh",), "O@": ("oh",), "o@": ("oh",), "O2": ("oh",), "o": ("oh",),
    "u": ("ou",), "u:": ("ou",), "U": ("ou",), "U@": ("ou", "E"), "u@": ("ou", "E"),
    # diphthongs: onset then offglide
    "aI": ("aa", "ih"), "aI@": ("aa", "ih"), "aI3": ("aa", "ih"), "aU": ("aa", "ou"), "aU@": ("aa", "ou"),
    "eI": ("E", "ih"), "oU": ("oh", "ou"), "OI": ("oh", "ih"), "oU#": ("oh", "ou"),
}  # fmt: skip

BILABIAL_PHONEMES: frozenset[str] = frozenset({"p", "b", "m", "m-"})
ROUNDED_VISEMES: frozenset[str] = frozenset({"ou", "oh", "CH", "RR"})
VOWEL_VISEMES: frozenset[str] = frozenset({"aa", "E", "ih", "oh", "ou"})
_STRESS_CHARS = "',%=!"


def _w(**weights: float) -> dict[str, float]:
    """A viseme target; "X_" expands to the Left and Right blendshapes of X."""
    out: dict[str, float] = {}
    for name, v in weights.items():
        if name.endswith("_"):
            out[name[:-1] + "Left"] = v
            out[name[:-1] + "Right"] = v
        else:
            out[name] = v
    return out


_TARGETS: dict[str, dict[str, float]] = {
    "sil": _w(),
    "PP": _w(jawOpen=0.06, mouthClose=0.06, mouthPress_=0.35, mouthRollLower=0.1, mouthRollUpper=0.1),
    "FF": _w(jawOpen=0.1, mouthClose=0.03, mouthRollLower=0.5, mouthUpperUp_=0.3, mouthShrugUpper=0.15),
    "TH": _w(jawOpen=0.18, tongueOut=0.35, mouthLowerDown_=0.12, mouthUpperUp_=0.05),
    "DD": _w(jawOpen=0.17, mouthStretch_=0.12, mouthLowerDown_=0.1, mouthUpperUp_=0.05),
    "kk": _w(jawOpen=0.22, mouthStretch_=0.1, mouthLowerDown_=0.08),
    "CH": _w(jawOpen=0.12, mouthFunnel=0.45, mouthPucker=0.25, mouthUpperUp_=0.2, mouthLowerDown_=0.15),
    "SS": _w(jawOpen=0.07, mouthStretch_=0.3, mouthSmile_=0.12, mouthUpperUp_=0.12, mouthLowerDown_=0.1),
    "nn": _w(jawOpen=0.15, mouthLowerDown_=0.06, mouthStretch_=0.05),
    "RR": _w(jawOpen=0.15, mouthFunnel=0.3, mouthPucker=0.25, mouthUpperUp_=0.05),
    "aa": _w(jawOpen=0.6, mouthLowerDown_=0.35, mouthUpperUp_=0.12, mouthStretch_=0.05),
    "E": _w(jawOpen=0.33, mouthStretch_=0.22, mouthLowerDown_=0.22, mouthSmile_=0.08, mouthUpperUp_=0.08),
    "ih": _w(jawOpen=0.18, mouthStretch_=0.35, mouthSmile_=0.22, mouthUpperUp_=0.12, mouthLowerDown_=0.1),
    "oh": _w(jawOpen=0.42, mouthFunnel=0.55, mouthPucker=0.3, mouthLowerDown_=0.1),
    "ou": _w(jawOpen=0.14, mouthPucker=0.8, mouthFunnel=0.35),
}
# Dominance strength and spread (s) per viseme: closures and labiodentals are strong and tight,
# tongue-only consonants (t, k, n) are weak so their lip shape comes from the neighbouring vowels.
_DOMINANCE: dict[str, tuple[float, float]] = {
    "sil": (1.0, 0.035),
    "PP": (3.0, 0.03),
    "FF": (2.0, 0.03),
    "TH": (0.8, 0.03),
    "DD": (0.35, 0.03),
    "kk": (0.3, 0.03),
    "CH": (1.2, 0.035),
    "SS": (0.8, 0.03),
    "nn": (0.35, 0.03),
    "RR": (0.8, 0.04),
    "aa": (1.0, 0.045),
    "E": (0.7, 0.045),
    "ih": (0.8, 0.045),
    "oh": (1.0, 0.05),
    "ou": (1.2, 0.05),
}
_ROUND_CHANNELS = tuple(BLENDSHAPE_INDEX[n] for n in ("mouthPucker", "mouthFunnel"))
_JAW = BLENDSHAPE_INDEX["jawOpen"]
_MOUTH_CHANNELS = tuple(i for i, n in enumerate(BLENDSHAPE_INDEX) if n.startswith(("jaw", "mouth", "tongue")))
_LIP_PARTING = tuple(
    BLENDSHAPE_INDEX[n]
    for n in (
        "mouthFunnel",
        "mouthLowerDownLeft",
        "mouthLowerDownRight",
        "mouthUpperUpLeft",
        "mouthUpperUpRight",
        "tongueOut",
    )
)
_INTERNAL_RATE = 4 * FPS  # targets are blended and smoothed at 120 Hz, then sampled at FPS
_ROUND_ANTICIPATION_S = 0.07  # rounding spread before a rounded segment: ~10 % left at 150 ms
_LIP_TAU_S = 0.018  # critically damped time constants (1/omega); the jaw is heavier
_JAW_TAU_S = 0.035


def strip_stress(phoneme: str) -> str:
    return phoneme.strip(_STRESS_CHARS)


def _visemes_of(phoneme: str) -> tuple[str, ...]:
    p = strip_stress(phoneme)
    if p in _PHONEME_VISEMES:
        return _PHONEME_VISEMES[p]
    # Unknown mnemonic: fall back on its leading character (espeak variants like "t3", "l^"), then
    # treat anything else as a neutral vowel, which is harmless where a consonant was meant.
    for k in range(len(p) - 1, 0, -1):
        if p[:k] in _PHONEME_VISEMES:
            return _PHONEME_VISEMES[p[:k]]
    return ("E",)


def viseme_of(phoneme: str) -> str:
    """The viseme of an espeak mnemonic (stress marks allowed); a diphthong gives its onset."""
    return _visemes_of(phoneme)[0]


def is_pause(phoneme: str) -> bool:
    return viseme_of(phoneme) == "sil"


def silent_frames(
    phonemes: Sequence[str], start: np.ndarray, duration: np.ndarray, n_frames: int, fps: int = FPS
) -> np.ndarray:
    """bool [n_frames]: frame time is inside no speech phoneme (pauses and outside count as silent)."""
    t = np.arange(n_frames) / fps
    silent = np.ones(n_frames, dtype=bool)
    for p, s, d in zip(phonemes, start, duration, strict=True):
        if not is_pause(p):
            silent &= ~((t >= s) & (t < s + d))
    return silent


def _segments(
    phonemes: Sequence[str], start: np.ndarray, duration: np.ndarray, total_s: float
) -> list[tuple[str, float, float, int]]:
    """(viseme, start, end, phoneme index) with diphthongs split and silence padded around speech."""
    segs: list[tuple[str, float, float, int]] = []
    cursor = 0.0
    for k, (p, s, d) in enumerate(zip(phonemes, start, duration, strict=True)):
        s, d = float(s), float(d)
        if s > cursor + 1e-3:
            segs.append(("sil", cursor, s, -1))
        vis = _visemes_of(p)
        if len(vis) == 2:
            segs.append((vis[0], s, s + 0.55 * d, k))
            segs.append((vis[1], s + 0.55 * d, s + d, k))
        else:
            segs.append((vis[0], s, s + d, k))
        cursor = max(cursor, s + d)
    if total_s > cursor:
        segs.append(("sil", cursor, total_s + 1.0, -1))
    return segs


def _critically_damped(x: np.ndarray, tau_s: float, rate: float) -> np.ndarray:
    """Critically damped 2nd-order low-pass of x [N, C] run forward then backward (zero lag)."""

    def one_pass(u: np.ndarray) -> np.ndarray:
        omega = 1.0 / tau_s
        sub = 4  # sub-steps keep semi-implicit Euler stable and accurate at omega * dt ~ 0.5
        dt = 1.0 / (rate * sub)
        pos = u[0].copy()
        vel = np.zeros_like(pos)
        out = np.empty_like(u)
        for i in range(len(u)):
            for _ in range(sub):
                acc = omega * omega * (u[i] - pos) - 2.0 * omega * vel
                vel = vel + acc * dt
                pos = pos + vel * dt
            out[i] = pos
        return out

    return one_pass(one_pass(x)[::-1])[::-1]


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, rate_scale: float, n: int = 3) -> np.ndarray:
    """Slow drift in [-1, 1]-ish: a sum of a few random sinusoids between 0.08 and 0.5 Hz."""
    out = np.zeros_like(t)
    for _ in range(n):
        f = rng.uniform(0.08, 0.5) * rate_scale
        out += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) / n
    return out * np.sqrt(2.0)


def _bump(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def teach(
    phonemes: Sequence[str],
    start: np.ndarray,
    duration: np.ndarray,
    num_samples: int,
    prosody: np.ndarray | None = None,
    style: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[np.ndarray, np.ndarray]:
    """Blendshapes [T, 52] in [0, 1] and head [T, 3] radians for T = num_frames(num_samples).

    ``prosody`` is prosody.prosody() of the clean audio ([T, 2] F0 Hz, energy dB), ``style`` the
    6 STYLE_NAMES values in [0, 1], ``rng`` drives blinks, saccades and drift.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    style = np.asarray(style if style is not None else NEUTRAL_STYLE, dtype=np.float64)
    expr, head_amp, head_rate, smile, blink_rate, artic = (float(v) for v in style)
    T = num_frames(num_samples, sample_rate)
    total_s = num_samples / sample_rate
    start = np.asarray(start, dtype=np.float64)
    duration = np.asarray(duration, dtype=np.float64)
    blend = np.zeros((T, NUM_BLENDSHAPES), dtype=np.float64)
    head = np.zeros((T, NUM_HEAD), dtype=np.float64)
    if T == 0:
        return blend.astype(np.float32), head.astype(np.float32)
    t = np.arange(T) / FPS
    ti = np.arange(T * 4 + 4) / _INTERNAL_RATE  # internal 120 Hz grid, a little past the last frame

    # --- mouth: dominance-blended targets ---------------------------------------------------
    segs = _segments(phonemes, start, duration, total_s)
    strength = 0.6 + 0.7 * artic  # articulation scales how far the mouth goes
    targets = np.zeros((len(segs), NUM_BLENDSHAPES))
    dom = np.zeros((len(ti), len(segs)))
    dom_round = np.zeros((len(ti), len(segs)))
    for k, (vis, s, e, _) in enumerate(segs):
        for name, v in _TARGETS[vis].items():
            targets[k, BLENDSHAPE_INDEX[name]] = v if vis == "PP" else min(1.0, v * strength)
        alpha, spread = _DOMINANCE[vis]
        # Distance from the segment's held core (its central 60 %, or all but the last 40 ms at
        # each end for long segments), so long segments and pauses hold their target to the edge.
        c, half = 0.5 * (s + e), max(0.3 * (e - s), 0.5 * (e - s) - 0.04)
        tau = np.maximum(np.abs(ti - c) - half, 0.0)
        dom[:, k] = alpha * np.exp(-tau / spread)
        # Rounding: only rounded segments, labials and pauses constrain the lips' rounding; rounded
        # ones reach far ahead (anticipatory rounding over the preceding consonants).
        if vis in ROUNDED_VISEMES:
            before = ti < c
            r_spread = np.where(before, _ROUND_ANTICIPATION_S, spread)
            dom_round[:, k] = alpha * np.exp(-tau / r_spread)
        elif vis in ("PP", "FF", "sil") or vis in VOWEL_VISEMES:
            dom_round[:, k] = alpha * np.exp(-tau / spread)
        else:
            dom_round[:, k] = 0.02 * alpha * np.exp(-tau / spread)
    mouth = dom @ targets / np.maximum(dom.sum(1, keepdims=True), 1e-9)
    rounding = dom_round @ targets[:, _ROUND_CHANNELS] / np.maximum(dom_round.sum(1, keepdims=True), 1e-9)
    mouth[:, _ROUND_CHANNELS] = rounding

    # --- dynamics: lips fast, jaw slower ---------------------------------------------------
    smoothed = _critically_damped(mouth, _LIP_TAU_S, _INTERNAL_RATE)
    smoothed[:, _JAW] = _critically_damped(mouth[:, [_JAW]], _JAW_TAU_S, _INTERNAL_RATE)[:, 0]
    blend[:] = smoothed[: 4 * T : 4]

    # --- bilabial closure: guaranteed in the middle of every /p b m/ -------------------------
    close = BLENDSHAPE_INDEX["mouthClose"]
    press = (BLENDSHAPE_INDEX["mouthPressLeft"], BLENDSHAPE_INDEX["mouthPressRight"])
    for p, s, d in zip(phonemes, start, duration, strict=True):
        if strip_stress(p) not in BILABIAL_PHONEMES:
            continue
        c = s + 0.5 * d
        frames = {round(c * FPS)} | {i for i in range(T) if abs(t[i] - c) <= 0.3 * d}
        for i in frames:
            if 0 <= i < T:
                blend[i, _JAW] = min(blend[i, _JAW], 0.12)
                blend[i, close] = blend[i, _JAW]  # lips sealed against whatever jaw remains
                blend[i, list(_LIP_PARTING)] = 0.0
                for j in press:
                    blend[i, j] = max(blend[i, j], 0.25)

    # --- prosody: accents from stressed vowels, weighted by F0 and energy --------------------
    f0 = np.zeros(T)
    energy = np.full(T, -100.0)
    if prosody is not None and len(prosody) >= T:
        f0, energy = np.asarray(prosody[:T, 0], float), np.asarray(prosody[:T, 1], float)
    voiced = f0 > 0
    median_st = np.median(12 * np.log2(f0[voiced] / 100.0)) if voiced.any() else 0.0
    peak_db = energy.max() if T else -100.0
    accents: list[tuple[float, float]] = []  # (time, strength ~0.3..1.5)
    for p, s, d in zip(phonemes, start, duration, strict=True):
        if "'" not in p or viseme_of(p) not in VOWEL_VISEMES:
            continue
        lo, hi = int(s * FPS), max(int((s + d) * FPS), int(s * FPS) + 1)
        seg_f0 = f0[lo:hi][f0[lo:hi] > 0]
        pitch_rise = (12 * np.log2(seg_f0.max() / 100.0) - median_st) if len(seg_f0) else 0.0
        loud = (energy[lo:hi].max() - peak_db) if hi > lo and lo < T else -20.0
        accents.append((s + 0.5 * d, float(np.clip(0.7 + pitch_rise / 6.0 + loud / 30.0, 0.3, 1.5))))

    speaking = ~silent_frames(phonemes, start, duration, T)
    activity = _critically_damped(speaking[:, None].astype(float), 0.15, FPS)[:, 0]

    # --- head: nods on accents + slow drift, more while speaking -------------------------------
    rate_scale = 0.6 + 1.0 * head_rate
    amp = (0.3 + 1.2 * head_amp) * (0.6 + 0.8 * expr)
    for c, a in accents:
        if rng.random() < 0.35 + 0.5 * head_rate:  # not every accent gets a nod
            head[:, 0] += 0.035 * amp * a * _bump(t, c + 0.06, 0.11 / rate_scale)
    drift_gain = 0.4 + 0.6 * activity
    head[:, 0] += 0.03 * amp * drift_gain * _smooth_noise(rng, t, rate_scale)
    head[:, 1] += 0.07 * amp * drift_gain * _smooth_noise(rng, t, rate_scale)
    head[:, 2] += 0.03 * amp * drift_gain * _smooth_noise(rng, t, rate_scale)

    # --- brows on pitch accents, smile bias, cheeks ------------------------------------------------
    brow_inner, brow_outer = BLENDSHAPE_INDEX["browInnerUp"], ("browOuterUpLeft", "browOuterUpRight")
    brows = np.zeros(T)
    for c, a in accents:
        if a > 0.8:
            brows += (a - 0.6) * _bump(t, c, 0.15)
    brows = np.clip(brows * (0.2 + 0.6 * expr), 0.0, 0.8)
    blend[:, brow_inner] += brows
    for name in brow_outer:
        blend[:, BLENDSHAPE_INDEX[name]] += 0.7 * brows
    smile_level = 0.45 * smile * (0.5 + 0.5 * expr) * (1.0 + 0.1 * _smooth_noise(rng, t, 0.5))
    for side in ("Left", "Right"):
        blend[:, BLENDSHAPE_INDEX["mouthSmile" + side]] += smile_level
        blend[:, BLENDSHAPE_INDEX["cheekSquint" + side]] += 0.5 * smile_level * expr
        blend[:, BLENDSHAPE_INDEX["eyeSquint" + side]] += 0.25 * smile_level * expr

    # --- eyes: blinks (likelier in pauses) and small saccades --------------------------------------
    per_s = (6.0 + 24.0 * blink_rate) / 60.0
    blink = np.zeros(T)
    next_ok = 0.3
    for i in range(T):
        p = per_s / FPS * (3.0 if not speaking[i] else 0.7)
        if t[i] >= next_ok and rng.random() < p:
            length = rng.uniform(0.15, 0.25)
            closing = 0.35 * length  # eyelids close faster than they open
            x = t - t[i]
            shape = np.where(x < closing, x / closing, 1.0 - (x - closing) / (length - closing))
            blink = np.maximum(blink, np.clip(np.where(x >= 0, shape, 0.0), 0.0, 1.0))
            next_ok = t[i] + length + rng.uniform(0.8, 2.0)
    asym = rng.uniform(0.9, 1.0)
    blend[:, BLENDSHAPE_INDEX["eyeBlinkLeft"]] += blink
    blend[:, BLENDSHAPE_INDEX["eyeBlinkRight"]] += blink * asym
    gaze_yaw = np.zeros(T)
    gaze_pitch = np.zeros(T)
    i = 0
    while i < T:
        hold = int(rng.uniform(0.5, 2.5) * FPS)
        gaze_yaw[i : i + hold] = rng.normal(0.0, 0.08)
        gaze_pitch[i : i + hold] = rng.normal(0.02, 0.05)
        i += max(hold, 1)
    for side, yaw_sign in (("Left", 1.0), ("Right", -1.0)):
        # Positive yaw = toward the face's own left: out for the left eye, in for the right eye.
        y = gaze_yaw * yaw_sign
        blend[:, BLENDSHAPE_INDEX["eyeLookOut" + side]] += np.clip(y, 0, None)
        blend[:, BLENDSHAPE_INDEX["eyeLookIn" + side]] += np.clip(-y, 0, None)
        blend[:, BLENDSHAPE_INDEX["eyeLookDown" + side]] += np.clip(gaze_pitch, 0, None) + 0.5 * blink
        blend[:, BLENDSHAPE_INDEX["eyeLookUp" + side]] += np.clip(-gaze_pitch, 0, None)

    return np.clip(blend, 0.0, 1.0).astype(np.float32), head.astype(np.float32)


def plot_curves(path: str, text: str = "Bob bought a blue map, who knew?", voice: str = "en-us+m3") -> None:
    """Plot the teacher's main curves for one synthesised sentence, phoneme labels along the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ksdiff_runtime.features.prosody import prosody as compute_prosody
    from ksdiff_runtime.motion import lip_aperture
    from ksdiff_runtime.training.speech import synthesize

    utt = synthesize(text, voice, rate=150, pitch=50, pitch_range=60)
    pros = compute_prosody(utt.audio)
    style = np.array([0.8, 0.7, 0.5, 0.3, 0.7, 0.6], dtype=np.float32)
    blend, head = teach(
        utt.phonemes, utt.start, utt.duration, len(utt.audio), pros, style, np.random.default_rng(3)
    )
    T = len(blend)
    t = np.arange(T) / FPS

    def b(name: str) -> np.ndarray:
        return blend[:, BLENDSHAPE_INDEX[name]]

    rows = [
        ("jaw / lips", [("jawOpen", b("jawOpen")), ("mouthClose", b("mouthClose")),
                        ("lip aperture", lip_aperture(blend))]),
        ("rounding", [("mouthPucker", b("mouthPucker")), ("mouthFunnel", b("mouthFunnel"))]),
        ("head (rad)", [("pitch", head[:, 0]), ("yaw", head[:, 1]), ("roll", head[:, 2])]),
        ("eyes / brows", [("eyeBlinkLeft", b("eyeBlinkLeft")), ("browInnerUp", b("browInnerUp"))]),
    ]  # fmt: skip
    fig, axes = plt.subplots(len(rows) + 1, 1, figsize=(14, 11), sharex=True)
    ta = np.arange(len(utt.audio)) / SAMPLE_RATE
    axes[0].plot(ta, utt.audio, lw=0.4, color="0.4")
    axes[0].set_ylabel("audio")
    axes[0].set_title(f'Teacher curves: "{text}" ({voice})')
    for ax, (label, curves) in zip(axes[1:], rows, strict=True):
        for name, y in curves:
            ax.plot(t, y, label=name)
        ax.set_ylabel(label)
        ax.legend(loc="upper right", fontsize=8)
    axes[1].axhline(LIP_CLOSED_THRESHOLD, color="k", ls=":", lw=0.8)
    for ax in axes:
        for p, s, d in zip(utt.phonemes, utt.start, utt.duration, strict=True):
            if strip_stress(p) in BILABIAL_PHONEMES:
                ax.axvspan(s, s + d, color="tab:red", alpha=0.12)
            else:
                ax.axvline(s, color="0.85", lw=0.5)
    for p, s, d in zip(utt.phonemes, utt.start, utt.duration, strict=True):
        if not is_pause(p):
            axes[-1].text(
                s + d / 2,
                -0.02,
                p,
                transform=axes[-1].get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
            )
    axes[-1].set_xlabel("time (s); red = bilabial /p b m/ (lips must close)", labelpad=18)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
