"""Style: a reference take of a face sets how much the head moves, how lively the brows are and how far
the mouth goes.

A reference is a motion clip: a Live Link Face CSV (what the iPhone app records and what ``bake``
writes; columns matched by name) or a ``bake`` JSON, at least ``MIN_REFERENCE_S`` long, or one of the
built-in references (``STYLES``, least motion to most, in ``assets/styles``). Its ``StyleProfile``
is three numbers measured on it:

    head          how much the head moves: the RMS of pitch, yaw and roll about their level (a one-pole
                  average over ``LEVEL_S``: posture held or drifting over seconds does not count), averaged
    expression    how much the brows raise: the RMS of browInnerUp and browOuterUp above their floor (it
                  drops with them at once and rises over ``LEVEL_S``: a raise held for seconds does not
                  count), averaged
    articulation  how far the jaw goes: the 95th percentile of jawOpen

A stream's style scales its regions' motion by the reference's profile over the model's own
(``MODEL_PROFILES``: what the bundled model puts out with no style, live, as a line and baked,
measured on held-out speech by ``python -m benchmarks.style``), so a take that moves its head twice as
much as the model does gets a head that moves twice as much: head -> the head region, about its level;
expression -> the brows, above their floor (a held tilt or raise stays as it is); articulation -> the
jaw and mouth together, about the rest pose, the lips' shapes kept as the model has them where it
closes the lips (``keep_closed``: a style never opens them, as a mood's expression never does). Gains are
bounded (``GAIN_BOUNDS``): a frozen take does not freeze the face, and a take with the jaw opened wide does
not make the mouth shout.

With the network style on (``serve --network-style``, ``bake --network-style``: engine/network_style.py) a take
also reaches the network's own style input, as a mood does (engine/sampling.py; docs/STYLE.md says what that
input does): its style vector from the model's style encoder. The network then moves toward the take by itself,
and the gains are measured against the model's profile with that vector (``NetworkStyle.response``), so the
output still aims at the take's profile (less exactly: docs/STYLE.md).

No style means no change, and a style never moves the rest pose. The controls (engine/controls.py) hold
a stream's style and apply the gains first, before a mood; over the protocol a stream names a built-in
style (or the server's configured take, by its file name), while a file is for the server's own config,
``bake`` and the Python API.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.signal

from ksdiff_runtime import motion

STYLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "styles"
NO_STYLE = motion.DEFAULT_STYLE  # "none"
STYLES: tuple[str, ...] = tuple(s for s in motion.STYLES if s != NO_STYLE)  # the built-in takes, least motion to most
MIN_REFERENCE_S = 2.0
LEVEL_S = 3.0  # time constant of the level head and brow motion is measured and scaled about
# bounds of the gains: the head's, the brows' and the jaw and mouth's (articulation)
GAIN_BOUNDS: dict[str, tuple[float, float]] = {"head": (0.25, 12.0), "brows": (0.25, 6.0), "articulation": (0.5, 2.0)}
_BROW_RAISES = tuple(motion.BLENDSHAPE_INDEX[n] for n in ("browInnerUp", "browOuterUpLeft", "browOuterUpRight"))
_JAW_OPEN = motion.BLENDSHAPE_INDEX["jawOpen"]
# the shapes motion.lip_aperture reads: where the model closes the lips they keep the model's weights
LIP_SHAPES = np.array([motion.BLENDSHAPE_INDEX[n] for n in (
    "jawOpen", "mouthClose", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "mouthFunnel", "mouthPressLeft", "mouthPressRight", "mouthRollLower", "mouthRollUpper")])


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

        def motion_rms(x: np.ndarray, floor: bool) -> float:
            return float(np.sqrt(np.mean((x - Level(motion.FPS, floor).follow(x)) ** 2, axis=0)).mean())

        return cls(head=motion_rms(h, floor=False), expression=motion_rms(b[:, _BROW_RAISES], floor=True),
                   articulation=float(np.percentile(b[:, _JAW_OPEN], 95)))

    def to_dict(self) -> dict[str, float]:
        return {"head": self.head, "expression": self.expression, "articulation": self.articulation}


class Level:
    """The level motion is measured and scaled about, frame after frame, continuing from call to call and
    starting at the first frame: a one-pole low-pass (time constant ``LEVEL_S``) for motion both ways (the
    head's angles), or with ``floor`` a floor under motion up from a rest (the brows' raises): it drops with
    the motion at once and rises toward it like the low-pass."""

    def __init__(self, fps: float, floor: bool = False) -> None:
        self._a = 1.0 - math.exp(-1.0 / (LEVEL_S * fps))
        self._floor = floor
        self._z: np.ndarray | None = None  # the low-pass's state, or the floor

    def follow(self, x: np.ndarray) -> np.ndarray:
        """The level under frames ``x`` [n, k] (in order)."""
        x = np.asarray(x, np.float64)
        if not len(x):
            return x
        if self._floor:
            z = x[0].copy() if self._z is None else self._z
            level = np.empty_like(x)
            for i, row in enumerate(x):
                z = np.minimum(row, z + self._a * (row - z))
                level[i] = z
            self._z = z
            return level
        if self._z is None:
            self._z = (1.0 - self._a) * x[:1]
        level, self._z = scipy.signal.lfilter([self._a], [1.0, self._a - 1.0], x, axis=0, zi=self._z)
        return level


# The bundled model's own profile with no style, the denominator of every gain, by how the motion is made: a
# live stream's hops ("live", the low-latency preset: 40 held-out clips as one 3.5-minute stream, past its first
# 10 s, where the head settles), a line's whole windows ("line") and a bake ("bake", each clip alone). Voice gate
# and liveliness on (its sway is most of a live head's motion: engine/liveliness.py), the mean over seeds 0-2;
# `python -m benchmarks.style` measures them (benchmarks/style.json, "model_profiles").
MODEL_PROFILES: dict[str, StyleProfile] = {
    "live": StyleProfile(head=0.01928, expression=0.0751, articulation=0.258),
    "line": StyleProfile(head=0.02131, expression=0.0514, articulation=0.276),
    "bake": StyleProfile(head=0.02074, expression=0.0505, articulation=0.311),
}


@dataclass(frozen=True)
class NetworkStyle:
    """A take's style as the network's style input gets it: the take's style vector, and what it does to the
    model's motion, the model's profile with the vector over its profile with the null style on the same speech
    (ratios: head, expression, articulation), baked and streamed live (engine/network_style.py measures them)."""

    vector: np.ndarray = field(repr=False)  # [style_dim], unit norm
    baked: StyleProfile  # the response of whole windows: lines and bakes
    live: StyleProfile  # the response of a live stream (the bake's where it was not measured live)

    def response(self, made: str) -> StyleProfile:
        """The response for motion made "live", as a "line" or a "bake" (``MODEL_PROFILES``' keys)."""
        return self.live if made == "live" else self.baked


@dataclass(frozen=True)
class Style:
    """A stream's style: where it came from (a built-in name or a file), its reference's profile, the take's
    frames (blendshapes [T, 52], head [T, 3]; what the network's style vector is made from), and that vector
    once the network style is on (``network``; None: the style is on the output only)."""

    name: str
    profile: StyleProfile
    take: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)
    network: NetworkStyle | None = field(default=None, compare=False, repr=False)

    def gains(self, model: StyleProfile, made: str = "live") -> dict[str, float]:
        """Region -> multiplier on its motion (regions of engine/controls.py). ``model``: the model's own profile
        with no style, for motion ``made`` as ``MODEL_PROFILES`` says; with the network style on, the network's
        response to the take for that motion scales it first."""
        if self.network is not None:
            r = self.network.response(made)
            model = StyleProfile(model.head * r.head, model.expression * r.expression,
                                 model.articulation * r.articulation)

        def ratio(ref: float, own: float, bounds: tuple[float, float]) -> float:
            return float(np.clip(ref / own if own > 0 else 1.0, *bounds))

        art = ratio(self.profile.articulation, model.articulation, GAIN_BOUNDS["articulation"])
        return {"head": ratio(self.profile.head, model.head, GAIN_BOUNDS["head"]),
                "brows": ratio(self.profile.expression, model.expression, GAIN_BOUNDS["brows"]),
                "jaw": art, "mouth": art}


def keep_closed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Weights ``after`` [n, 52] (the jaw and mouth scaled up from ``before``) with the lips kept as the model
    closes them: where ``before``'s lip aperture is at most the closed threshold, the lips' shapes
    (``LIP_SHAPES``) keep ``before``'s weights; above it, less and less, and not at all from twice the
    threshold, where the scaled weights stand."""
    T = motion.LIP_CLOSED_THRESHOLD
    keep = np.clip((2 * T - motion.lip_aperture(before)) / T, 0.0, 1.0)[:, None]
    out = np.array(after, np.float32, copy=True)
    out[:, LIP_SHAPES] = keep * before[:, LIP_SHAPES] + (1.0 - keep) * after[:, LIP_SHAPES]
    return out


def style_for(spec: str, allow_files: bool = False) -> Style | None:
    """A built-in style by name, ``"none"`` (None: no style), or, with ``allow_files``, a reference file."""
    if not isinstance(spec, str) or not spec:
        raise StyleError(f"style must be one of {', '.join((NO_STYLE, *STYLES))}"
                         f"{' or a reference file (.csv, .json)' if allow_files else ''}; got {spec!r}")
    if spec == NO_STYLE:
        return None
    if spec in STYLES:
        return _built_in(spec)
    if allow_files and Path(spec).suffix.lower() in (".csv", ".json"):
        take = read_reference(Path(spec))
        return Style(spec, StyleProfile.of(*take), take)
    files = ", or a reference take (.csv as Live Link Face records it, or a bake .json)" if allow_files else ""
    raise StyleError(f"unknown style {spec!r}; built-in styles: {', '.join((NO_STYLE, *STYLES))}{files}")


@functools.cache
def _built_in(name: str) -> Style:
    take = read_reference(STYLE_DIR / f"{name}.csv")
    return Style(name, StyleProfile.of(*take), take)


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
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError) as e:
        if isinstance(e, StyleError):
            raise
        raise StyleError(f"style reference {path}: cannot read it ({e})") from None
    if not (math.isfinite(fps) and fps > 0):
        raise StyleError(f"style reference {path}: its frame rate must be a positive number, got {fps!r}")
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
    if not isinstance(doc, dict) or list(doc.get("blendshape_names", [])) != list(motion.BLENDSHAPES):
        raise StyleError(f"style reference {path}: not a bake JSON (blendshape_names must list the 52 ARKit names "
                         "in ksdiff-runtime's order)")
    frames = doc["frames"]
    blendshapes = np.array([f["blendshapes"] for f in frames], np.float64).reshape(-1, motion.NUM_BLENDSHAPES)
    head = np.array([f["head"] for f in frames], np.float64).reshape(-1, motion.NUM_HEAD)
    return blendshapes, head, float(doc["fps"])


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    from ksdiff_runtime.outputs import livelink  # the Live Link Face convention, written once

    with path.open(newline="", encoding="utf-8-sig") as f:  # a BOM, as a spreadsheet saves it
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
    """Frames per second of a Live Link Face CSV: the most rows sharing one timecode second (HH:MM:SS:FF.mmm,
    or HH:MM:SS;FF drop-frame; a partial second at either end only has fewer); 30 without timecodes."""
    counts: dict[str, int] = {}
    for tc in timecodes:
        tc = tc.strip().replace(";", ":")
        if tc.count(":") == 3:
            second = tc.rsplit(":", 1)[0]
            counts[second] = counts.get(second, 0) + 1
    return float(max(counts.values(), default=motion.FPS))
