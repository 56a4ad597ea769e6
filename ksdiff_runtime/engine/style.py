"""Style: a reference take of a face sets how much the head moves, how lively the brows are and how far
the mouth goes.

A reference is a motion clip: a Live Link Face CSV (what the iPhone app records and what ``bake``
writes; columns matched by name) or a ``bake`` JSON, at least ``MIN_REFERENCE_S`` long, or one of the
built-in references (``STYLES``, least motion to most, in ``assets/styles``). Its ``StyleProfile``
is three numbers measured on it:

    head          the head angles' spread: the std of pitch, yaw and roll, averaged (radians)
    expression    the brows' activity: the std of the brow shapes, averaged
    articulation  how far the jaw goes: the 95th percentile of jawOpen

A stream's style scales its regions' motion by the reference's profile over the model's own
(``MODEL_PROFILE``: what the bundled model puts out with no reference, measured on held-out speech
by ``python -m benchmarks.style``), so a take that moves its head twice as much as the
model does gets a head that moves twice as much: head -> the head region, expression -> the brows,
articulation -> the jaw and mouth together (the lips' aperture scales as one, and ``keep_closed``
leaves lips the model closes closed, as a mood never opens them). Gains are bounded (``GAIN_BOUNDS``): a frozen take does not freeze the face, and a take
with the jaw opened wide does not make the mouth shout. The network's own style input is not used:
it ignores the head's amplitude (docs/STYLE.md).

No style means no change. The controls (engine/controls.py) hold a stream's style and apply the
gains with the other region strengths; over the protocol a stream names a built-in style, while a
file is for the server's own config, ``bake`` and the Python API.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion

STYLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "styles"
NO_STYLE = motion.DEFAULT_STYLE  # "none"
STYLES: tuple[str, ...] = tuple(s for s in motion.STYLES if s != NO_STYLE)  # the built-in takes, least motion to most
MIN_REFERENCE_S = 2.0
# bounds of the gains: the head's, the brows' and the jaw and mouth's (articulation)
GAIN_BOUNDS: dict[str, tuple[float, float]] = {"head": (0.25, 6.0), "brows": (0.25, 6.0), "articulation": (0.5, 2.0)}
_BROWS = tuple(motion.BLENDSHAPE_INDEX[n] for n in motion.REGIONS["brows"])
_JAW_OPEN = motion.BLENDSHAPE_INDEX["jawOpen"]
_MOUTH_CLOSE = motion.BLENDSHAPE_INDEX["mouthClose"]


class StyleError(ValueError):
    """A style the runtime cannot use; the message names the style or file and what is allowed."""


@dataclass(frozen=True)
class StyleProfile:
    head: float  # radians
    expression: float
    articulation: float

    def __post_init__(self) -> None:
        for name in ("head", "expression", "articulation"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise StyleError(f"style profile {name} must be a finite number >= 0, got {v!r}")

    @classmethod
    def of(cls, blendshapes: np.ndarray, head: np.ndarray) -> StyleProfile:
        """The profile of frames [T, 52] and [T, 3] (radians, ``motion``'s convention) at 30 fps."""
        b, h = np.asarray(blendshapes, np.float64), np.asarray(head, np.float64)
        return cls(head=float(h.std(axis=0).mean()), expression=float(b[:, _BROWS].std(axis=0).mean()),
                   articulation=float(np.percentile(b[:, _JAW_OPEN], 95)))

    def to_dict(self) -> dict[str, float]:
        return {"head": self.head, "expression": self.expression, "articulation": self.articulation}


# The bundled model's own profile with no style: live `low-latency` streams (voice gate and liveliness on) of
# 40 held-out synthetic clips; the denominator of every gain. Measured by `python -m benchmarks.style`
# (benchmarks/style.json, "model_profile_measured"), which also shows it baked.
MODEL_PROFILE = StyleProfile(head=0.00905, expression=0.01472, articulation=0.2965)


@dataclass(frozen=True)
class Style:
    """A stream's style: where it came from (a built-in name or a file) and its reference's profile."""

    name: str
    profile: StyleProfile

    def gains(self, model: StyleProfile = MODEL_PROFILE) -> dict[str, float]:
        """Region -> multiplier on its motion (regions of engine/controls.py)."""

        def ratio(ref: float, own: float, bounds: tuple[float, float]) -> float:
            return float(np.clip(ref / own if own > 0 else 1.0, *bounds))

        art = ratio(self.profile.articulation, model.articulation, GAIN_BOUNDS["articulation"])
        return {"head": ratio(self.profile.head, model.head, GAIN_BOUNDS["head"]),
                "brows": ratio(self.profile.expression, model.expression, GAIN_BOUNDS["brows"]),
                "jaw": art, "mouth": art}


def keep_closed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Weights ``after`` [n, 52] (the jaw and mouth scaled up from ``before``) with the lips kept as closed as
    they were: where ``before``'s lip aperture is at most the closed threshold, mouthClose rises by what the
    scaling opened them; above it, less and less, and not at all from twice the threshold."""
    a0, a1 = motion.lip_aperture(before), motion.lip_aperture(after)
    T = motion.LIP_CLOSED_THRESHOLD
    keep = np.clip((2 * T - a0) / T, 0.0, 1.0)
    out = np.array(after, np.float32, copy=True)
    out[:, _MOUTH_CLOSE] = np.clip(out[:, _MOUTH_CLOSE] + keep * np.maximum(a1 - a0, 0.0), 0.0, 1.0)
    return out


def style_for(spec: str, allow_files: bool = False) -> Style | None:
    """A built-in style by name, ``"none"`` (None: no style), or, with ``allow_files``, a reference file."""
    if not isinstance(spec, str) or not spec:
        raise StyleError(f"style must be one of {', '.join((NO_STYLE, *STYLES))}"
                         f"{' or a reference file (.csv, .json)' if allow_files else ''}; got {spec!r}")
    if spec == NO_STYLE:
        return None
    if spec in STYLES:
        return Style(spec, StyleProfile.of(*read_reference(STYLE_DIR / f"{spec}.csv")))
    if allow_files and Path(spec).suffix.lower() in (".csv", ".json"):
        return Style(spec, StyleProfile.of(*read_reference(Path(spec))))
    files = ", or a reference take (.csv as Live Link Face records it, or a bake .json)" if allow_files else ""
    raise StyleError(f"unknown style {spec!r}; built-in styles: {', '.join((NO_STYLE, *STYLES))}{files}")


def read_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A reference take's blendshapes [T, 52] and head [T, 3] (radians, ours) at 30 fps, from a Live Link
    Face CSV (columns by name, any order; its timecodes give the rate) or a ``bake`` JSON."""
    if not path.is_file():
        raise StyleError(f"style reference {path} does not exist")
    try:
        if path.suffix.lower() == ".json":
            blendshapes, head, fps = _read_json(path)
        else:
            blendshapes, head, fps = _read_csv(path)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        if isinstance(e, StyleError):
            raise
        raise StyleError(f"style reference {path}: cannot read it ({e})") from None
    if not (np.isfinite(blendshapes).all() and np.isfinite(head).all()):
        raise StyleError(f"style reference {path} has non-finite values")
    if len(blendshapes) < MIN_REFERENCE_S * fps:
        raise StyleError(f"style reference {path} is {len(blendshapes) / fps:.2f} s long; a take of at least "
                         f"{MIN_REFERENCE_S:g} s is needed")
    if fps != motion.FPS:
        n = int(len(blendshapes) * motion.FPS / fps)
        t_out, t_in = np.arange(n) / motion.FPS, np.arange(len(blendshapes)) / fps
        blendshapes = np.stack([np.interp(t_out, t_in, c) for c in blendshapes.T], axis=1)
        head = np.stack([np.interp(t_out, t_in, c) for c in head.T], axis=1)
    return blendshapes.astype(np.float32), head.astype(np.float32)


def _read_json(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    doc = json.loads(path.read_text())
    if list(doc.get("blendshape_names", [])) != list(motion.BLENDSHAPES):
        raise StyleError(f"style reference {path}: not a bake JSON (blendshape_names must list the 52 ARKit names "
                         "in ksdiff-runtime's order)")
    frames = doc["frames"]
    blendshapes = np.array([f["blendshapes"] for f in frames], np.float64).reshape(-1, motion.NUM_BLENDSHAPES)
    head = np.array([f["head"] for f in frames], np.float64).reshape(-1, motion.NUM_HEAD)
    return blendshapes, head, float(doc["fps"])


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    from ksdiff_runtime.outputs import livelink  # the Live Link Face convention, written once

    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise StyleError(f"style reference {path} is empty")
    columns = {name.strip().lower(): i for i, name in enumerate(rows[0])}
    wanted = [n.lower() for n in (*livelink.BLENDSHAPE_NAMES, "HeadYaw", "HeadPitch", "HeadRoll")]
    missing = [n for n in (*livelink.BLENDSHAPE_NAMES, "HeadYaw", "HeadPitch", "HeadRoll") if n.lower() not in columns]
    if missing:
        raise StyleError(f"style reference {path}: not a Live Link Face CSV; missing column(s) "
                         f"{', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}")
    data = np.array([[float(r[columns[n]]) for n in wanted] for r in rows[1:] if r], np.float64)
    data = data.reshape(-1, len(wanted))
    blendshapes = data[:, : motion.NUM_BLENDSHAPES]
    llf_yaw, llf_pitch, llf_roll = data[:, motion.NUM_BLENDSHAPES :].T
    head = np.stack([llf_pitch, -llf_yaw, -llf_roll], axis=1)  # livelink.values' head, inverted
    fps = _csv_rate([r[columns["timecode"]] for r in rows[1:] if r]) if "timecode" in columns else motion.FPS
    return blendshapes, head, fps


def _csv_rate(timecodes: list[str]) -> float:
    """Frames per second of a Live Link Face CSV: from its timecodes (HH:MM:SS:FF.mmm), the frames counted
    in its longest whole second; 30 when the timecodes say nothing."""
    seconds = [tc.rsplit(":", 1)[0] for tc in timecodes if tc.count(":") == 3]
    if len(seconds) < 2:
        return float(motion.FPS)
    counts: dict[str, int] = {}
    for s in seconds:
        counts[s] = counts.get(s, 0) + 1
    inner = list(counts.values())[1:-1]  # the first and last second may be partial
    return float(max(inner)) if inner else float(motion.FPS)
