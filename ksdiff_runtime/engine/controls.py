"""What happens to a stream's motion between the model and every output: artists' controls, and the
ease to rest when the stream ends.

Controls:

    mood              neutral, happy, sad, angry or surprised (motion.MOOD_EXPRESSIONS): a pose held
                      through speech and silence, gains on the regions' motion, a head pitch
    mood_intensity    0..1: how much of the mood (default 1)
    style             a reference take's style (engine/style.py): a built-in name, or a file where the
                      caller is trusted with the server's files; it scales the head, the brows and the
                      jaw and mouth by the take's motion over the model's own (default none)
    strength          per region (mouth, jaw, brows, eyes, head): a multiplier on its motion
    shapes            per ARKit blendshape: weight * gain + offset, clamped to [min, max]
    smoothing_ms      per region: a one-pole low-pass with this time constant (0: off)
    timing_offset_ms  the animation later (> 0) or earlier (< 0: anticipation, which costs that much
                      latency, since a frame waits for the motion it shows)

The defaults change nothing. Controls come from the server's config (``[controls]``, every stream)
and can be changed live per stream (protocol request ``set_controls``). Like a preset, a
``Controls`` is frozen and checked when made; a bad value is an error naming it and what is allowed.

``ControlStage`` is the one place they are applied: the engine passes each hop's output frames
through its stream's stage before building the wire frames, so the ZeroMQ PUB, Live Link, VMC and
every other output show the same numbers. Order: timing (where on the motion a frame is sampled),
style, mood, strength, shape gain and offset, clamp, smoothing. A mood's eye poses give way to a blink (an
eye's pose is scaled by 1 - its eyeBlink), so a wide-eyed face still closes its eyes.

The ease to rest: however a stream ends (its audio ended, an idle timeout, an error, a shutdown),
``ease_frames(fps)`` more frames follow its last one on the audio clock, easing to the neutral
pose (the controls applied to a zero motion) over at most ``EASE_S``; the final one is exactly
neutral and carries ``last``. A receiver that holds the last frame it saw never freezes mid-word.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion

from .stream import Emitted, output_frames
from .style import MODEL_PROFILES, NO_STYLE, Level, Style, StyleError, keep_closed, style_for

REGION_NAMES: tuple[str, ...] = (*motion.REGIONS, motion.HEAD_REGION)
STRENGTH_RANGE = (0.0, 3.0)
GAIN_RANGE = (0.0, 10.0)
OFFSET_RANGE = (-1.0, 1.0)
SMOOTHING_RANGE_MS = (0.0, 1000.0)
TIMING_RANGE_MS = (-500.0, 500.0)
MOOD_INTENSITY_RANGE = (0.0, 1.0)
EASE_S = 0.15  # a stream's last frame is at most this long after its last motion frame


class ControlsError(ValueError):
    """Controls the runtime cannot apply; the message names the setting and what is allowed."""


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ControlsError(f"{name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ControlsError(f"{name} must be in [{lo:g}, {hi:g}], got {value:g}")
    return float(value)


@dataclass(frozen=True)
class ShapeControl:
    gain: float = 1.0
    offset: float = 0.0
    min: float = 0.0
    max: float = 1.0

    @classmethod
    def from_dict(cls, name: str, d: Any) -> ShapeControl:
        if not isinstance(d, dict):
            raise ControlsError(f"shapes.{name} must be a table of gain, offset, min, max; got {d!r}")
        unknown = sorted(set(d) - {"gain", "offset", "min", "max"}, key=str)
        if unknown:
            raise ControlsError(f"shapes.{name}: unknown setting(s) {', '.join(map(str, unknown))}; known: gain, "
                                "offset, min, max")
        s = cls(_number(f"shapes.{name}.gain", d.get("gain", 1.0), *GAIN_RANGE),
                _number(f"shapes.{name}.offset", d.get("offset", 0.0), *OFFSET_RANGE),
                _number(f"shapes.{name}.min", d.get("min", 0.0), 0.0, 1.0),
                _number(f"shapes.{name}.max", d.get("max", 1.0), 0.0, 1.0))
        if s.min > s.max:
            raise ControlsError(f"shapes.{name}: min {s.min:g} is above max {s.max:g}")
        return s


@dataclass(frozen=True)
class Controls:
    strength: dict[str, float] = field(default_factory=dict)  # region -> multiplier; absent: 1
    shapes: dict[str, ShapeControl] = field(default_factory=dict)  # ARKit name -> its control
    smoothing_ms: dict[str, float] = field(default_factory=dict)  # region -> time constant; absent: 0
    timing_offset_ms: float = 0.0
    mood: str = motion.DEFAULT_MOOD
    mood_intensity: float = 1.0
    style: Style | None = None  # None: no style reference

    @classmethod
    def from_dict(cls, d: Any, allow_files: bool = False) -> Controls:
        """From a TOML table or a protocol map: ``{strength: {mouth: 1.2}, shapes: {jawOpen: {gain: 1.1}},
        smoothing_ms: {head: 80}, timing_offset_ms: -30, style: "lively"}``, every key optional.
        ``allow_files``: ``style`` may name a reference file (the server's config, bake, the Python API;
        never a client's request)."""
        return cls().merged(d, allow_files)

    def merged(self, d: Any, allow_files: bool = False, known: tuple[Style, ...] = ()) -> Controls:
        """These controls with the settings ``d`` gives changed (a live ``set_controls`` changes some). A style
        named as ``to_dict`` shows this one or one of ``known`` (the server's configured style) is that style,
        not read again."""
        if not isinstance(d, dict):
            raise ControlsError(f"controls must be a table/map, got {type(d).__name__}")
        unknown = sorted(set(d) - set(CONTROL_KEYS), key=str)
        if unknown:
            raise ControlsError(f"unknown control(s) {', '.join(map(str, unknown))}; known: {', '.join(CONTROL_KEYS)}")
        strength = dict(self.strength) | _regions("strength", d.get("strength", {}), STRENGTH_RANGE)
        smoothing = dict(self.smoothing_ms) | _regions("smoothing_ms", d.get("smoothing_ms", {}), SMOOTHING_RANGE_MS)
        shapes = dict(self.shapes)
        given = d.get("shapes", {})
        if not isinstance(given, dict):
            raise ControlsError(f"shapes must be a table of ARKit blendshape names, got {given!r}")
        for name, value in given.items():
            if name not in motion.BLENDSHAPE_INDEX:
                raise ControlsError(f"shapes: unknown blendshape {name!r}; ARKit names: "
                                    f"{', '.join(motion.BLENDSHAPES)}")
            shapes[name] = ShapeControl.from_dict(name, value)
        timing = self.timing_offset_ms
        if "timing_offset_ms" in d:
            timing = _number("timing_offset_ms", d["timing_offset_ms"], *TIMING_RANGE_MS)
        mood = self.mood
        if "mood" in d:
            mood = d["mood"]
            if not isinstance(mood, str) or mood not in motion.MOODS:
                raise ControlsError(f"mood must be one of {', '.join(motion.MOODS)}; got {mood!r}")
        intensity = self.mood_intensity
        if "mood_intensity" in d:
            intensity = _number("mood_intensity", d["mood_intensity"], *MOOD_INTENSITY_RANGE)
        style = self.style
        if "style" in d:
            same = [s for s in (self.style, *known) if s is not None and d["style"] == _shown(s)]
            try:
                style = same[0] if same else style_for(d["style"], allow_files)
            except StyleError as e:
                raise ControlsError(str(e)) from None
        return replace(self, strength=strength, shapes=shapes, smoothing_ms=smoothing, timing_offset_ms=timing,
                       mood=mood, mood_intensity=intensity, style=style)

    def to_dict(self) -> dict[str, Any]:
        return {"strength": {r: self.strength.get(r, 1.0) for r in REGION_NAMES},
                "shapes": {n: vars(s).copy() for n, s in self.shapes.items()},
                "smoothing_ms": {r: self.smoothing_ms.get(r, 0.0) for r in REGION_NAMES},
                "timing_offset_ms": self.timing_offset_ms, "mood": self.mood, "mood_intensity": self.mood_intensity,
                "style": NO_STYLE if self.style is None else _shown(self.style)}

    @property
    def changes_values(self) -> bool:
        """Whether anything but timing differs from the defaults (the values pass need not run otherwise)."""
        return (any(v != 1.0 for v in self.strength.values()) or any(v > 0 for v in self.smoothing_ms.values())
                or any(s != ShapeControl() for s in self.shapes.values()) or self.has_mood or self.style is not None)

    @property
    def has_mood(self) -> bool:
        return self.mood != motion.DEFAULT_MOOD and self.mood_intensity > 0


CONTROL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Controls))


def _shown(style: Style) -> str:
    """A style as clients see it: a built-in one by name, a take file by its file name (not the server's path)."""
    return Path(style.name).name


def _regions(what: str, d: Any, bounds: tuple[float, float]) -> dict[str, float]:
    if not isinstance(d, dict):
        raise ControlsError(f"{what} must be a table of regions ({', '.join(REGION_NAMES)}), got {d!r}")
    out = {}
    for region, value in d.items():
        if region not in REGION_NAMES:
            raise ControlsError(f"{what}: unknown region {region!r}; regions: {', '.join(REGION_NAMES)}")
        out[region] = _number(f"{what}.{region}", value, *bounds)
    return out


# per-column region of the 55 motion values (52 blendshapes, then head pitch, yaw, roll)
_COLUMN_REGION = [next(r for r, names in motion.REGIONS.items() if n in names) for n in motion.BLENDSHAPES] + \
    [motion.HEAD_REGION] * motion.NUM_HEAD
_VALUES = motion.NUM_BLENDSHAPES + motion.NUM_HEAD
_PITCH = motion.NUM_BLENDSHAPES + motion.HEAD_ROTATION.index("headPitch")
_HEAD = np.flatnonzero(np.array(_COLUMN_REGION) == motion.HEAD_REGION)
_BROWS = np.flatnonzero(np.array(_COLUMN_REGION) == "brows")


def _blink_column(name: str) -> int:
    """The eyeBlink column of an eye shape's side (every eye shape is a Left or Right one); -1 otherwise."""
    if not name.startswith("eye"):
        return -1
    return motion.BLENDSHAPE_INDEX["eyeBlinkLeft" if name.endswith("Left") else "eyeBlinkRight"]


_BLINK_OF = np.array([_blink_column(n) for n in motion.BLENDSHAPES], np.int64)  # a mood's eye poses give way


def ease_frames(fps: int) -> int:
    """Frames a stream's ease to rest takes at ``fps``: the most that fit in EASE_S (at least 1)."""
    return max(1, math.floor(EASE_S * fps + 1e-9))


def stream_frames(samples: int, fps: int) -> int:
    """Frames a stream of ``samples`` (16 kHz) that ends with its audio yields at ``fps``: one per started
    frame period, then its ease to rest (protocol/SPEC.md 4.2). None for no audio."""
    n = output_frames(samples, fps)
    return n + ease_frames(fps) if n else 0


class ControlStage:
    """One stream's controls applied to its output frames, in order, and its ease to rest.

    ``apply`` takes each hop's frames (``Emitted``, at the output rate) and returns the frames ready to
    publish: with a negative timing offset a frame waits until the motion it shows exists. The hop that
    holds the stream's final motion frame releases everything and appends the ease; ``closing`` gives
    the ease after the frames published so far, for a stream cut short."""

    def __init__(self, controls: Controls, fps: int, made: str = "live") -> None:
        """``made``: how the model made the motion ("live" hop after hop, a "line" in whole windows, a "bake"),
        which decides the model's own profile a style is measured against (style.MODEL_PROFILES)."""
        self.controls = controls
        self.fps = fps
        self.made = made
        self.model_profile = MODEL_PROFILES[made]
        self._head_level, self._brow_floor = Level(fps), Level(fps, floor=True)  # what a style scales motion about
        self._alpha: np.ndarray | None = None  # per-column smoothing coefficient (None: no smoothing)
        self._scale = self._lo = self._hi = self._gain = self._offset = np.zeros(0, np.float32)
        self._mood_gain = self._mood_pose = self._style = np.zeros(0, np.float32)
        self._mood_eyes = np.zeros(0, np.int64)
        self._compile()
        # timing: recent motion rows by output index, and frames waiting for the motion they show
        self._hist_index = np.zeros(0, np.int64)
        self._hist = np.zeros((0, _VALUES), np.float32)
        self._waiting: list[tuple[int, int | None]] = []  # (index, captured_ns)
        self._keep = math.ceil(-TIMING_RANGE_MS[0] / 1000 * fps) + 2  # rows of history kept
        # the last frame put out (after the controls): smoothing continues from it, the ease starts at it
        self._last: np.ndarray | None = None
        self.next_index = 0  # the index after the last frame put out

    def set(self, controls: Controls) -> None:
        if controls is not self.controls:
            if controls.style is None:  # a style set later starts from the frames it then sees
                self._head_level, self._brow_floor = Level(self.fps), Level(self.fps, floor=True)
            self.controls = controls
            self._compile()

    def _compile(self) -> None:
        c = self.controls
        self._scale = np.array([c.strength.get(r, 1.0) for r in _COLUMN_REGION], np.float32)
        style = {} if c.style is None else c.style.gains(self.model_profile, self.made)
        self._style = np.array([style.get(r, 1.0) for r in _COLUMN_REGION], np.float32)
        self._style_opens = style.get("mouth", 1.0) > 1.0
        D = motion.NUM_BLENDSHAPES
        self._gain, self._offset = np.ones(D, np.float32), np.zeros(D, np.float32)
        self._lo, self._hi = np.zeros(D, np.float32), np.ones(D, np.float32)
        for name, s in c.shapes.items():
            i = motion.BLENDSHAPE_INDEX[name]
            self._gain[i], self._offset[i], self._lo[i], self._hi[i] = s.gain, s.offset, s.min, s.max
        mood, k = motion.MOOD_EXPRESSIONS[c.mood], c.mood_intensity
        self._mood_gain = np.array([1.0 + k * (mood.gain.get(r, 1.0) - 1.0) for r in _COLUMN_REGION], np.float32)
        for name, gain in mood.shape_gain.items():
            self._mood_gain[motion.BLENDSHAPE_INDEX[name]] *= 1.0 + k * (gain - 1.0)
        self._mood_pose = np.zeros(_VALUES, np.float32)
        for name, weight in mood.pose.items():
            self._mood_pose[motion.BLENDSHAPE_INDEX[name]] = k * weight
        self._mood_pose[_PITCH] = k * mood.head_pitch
        self._mood_eyes = np.flatnonzero((self._mood_pose[:D] != 0) & (_BLINK_OF >= 0))
        tau = np.array([c.smoothing_ms.get(r, 0.0) for r in _COLUMN_REGION], np.float64)
        self._alpha = None
        if (tau > 0).any():
            self._alpha = np.where(tau > 0, 1.0 - np.exp(-1000.0 / (self.fps * np.maximum(tau, 1e-9))),
                                   1.0).astype(np.float32)

    # --- frames --------------------------------------------------------------------------------
    def apply(self, em: Emitted, controls: Controls | None = None) -> Emitted:
        """A hop's frames -> the frames to publish now (``controls``: the stream's current controls)."""
        if controls is not None:
            self.set(controls)
        final = any(em.last)
        if self.controls.timing_offset_ms == 0.0 and not self._waiting:
            index, captured, values = list(em.index), list(em.captured_ns), em.values
            self._remember(em.index, em.values)
        else:
            index, captured, values = self._retimed(em, final)
        out = Emitted(index, self._values(values), captured, [False] * len(index), em.shed, em.level)
        if index:
            self._last = out.values[-1].copy()
            self.next_index = index[-1] + 1
        if final:
            out = _concat(out, self.closing())
        return out

    def _remember(self, index: list[int], values: np.ndarray) -> None:
        if index:
            self._hist_index = np.concatenate([self._hist_index, np.asarray(index, np.int64)])[-self._keep :]
            self._hist = np.concatenate([self._hist, values.astype(np.float32)])[-self._keep :]

    def _retimed(self, em: Emitted, final: bool) -> tuple[list[int], list[int | None], np.ndarray]:
        """The waiting frames whose motion exists, each sampled ``timing_offset_ms`` earlier on the motion
        (linear between neighbouring frames; clamped to the first and last frame of the stream). Sampled on the
        history and the whole hop: a line's hop holds hundreds of frames, far more than the history kept."""
        motion_index = np.concatenate([self._hist_index, np.asarray(em.index, np.int64)])
        motion_rows = np.concatenate([self._hist, em.values.astype(np.float32)])
        self._remember(em.index, em.values)
        self._waiting += list(zip(em.index, em.captured_ns, strict=True))
        shift = self.controls.timing_offset_ms * self.fps / 1000.0
        newest = int(motion_index[-1]) if motion_index.size else -1
        ready = self._waiting if final else [w for w in self._waiting if w[0] - shift <= newest + 1e-9]
        self._waiting = self._waiting[len(ready):]
        if not ready:
            return [], [], np.zeros((0, _VALUES), np.float32)
        pos = np.array([i for i, _ in ready], np.float64) - shift
        values = np.stack([np.interp(pos, motion_index, motion_rows[:, k]) for k in range(_VALUES)], axis=1)
        return [i for i, _ in ready], [c for _, c in ready], values.astype(np.float32)

    def shape(self, values: np.ndarray) -> np.ndarray:
        """Rows of 55 values (consecutive frames, e.g. a whole bake) through every control but timing."""
        out = self._values(values)
        if len(out):
            self._last = out[-1].copy()
        return out

    def _values(self, values: np.ndarray, rest: bool = False) -> np.ndarray:
        """Style, mood, strength, shape gain and offset, clamp, then smoothing, on rows of 55 values (``rest``:
        the rest pose, which no style or smoothing touches and which leaves no state behind)."""
        c = self.controls
        if not c.changes_values or not len(values):
            return np.asarray(values, np.float32)
        D = motion.NUM_BLENDSHAPES
        out = values.astype(np.float32)
        if c.style is not None and not rest:  # the model's motion, before a mood adds its pose
            out = self._styled(out)
        if c.has_mood:
            pose = np.repeat(self._mood_pose[None], len(out), axis=0)
            pose[:, self._mood_eyes] *= 1.0 - np.clip(out[:, _BLINK_OF[self._mood_eyes]], 0.0, 1.0)
            out = out * self._mood_gain + pose
        out = out * self._scale
        out[:, :D] = np.clip(out[:, :D] * self._gain + self._offset, self._lo, self._hi)
        if not rest and self._alpha is not None:
            prev = out[0] if self._last is None else self._last
            for j in range(len(out)):
                prev = prev + self._alpha * (out[j] - prev)
                out[j] = prev
        return out

    def _styled(self, values: np.ndarray) -> np.ndarray:
        """The style's gains on rows of 55 values: the jaw and mouth about the rest pose (lips the model closes
        kept so), the head about its level and the brows above their floor (a held tilt or raise is not the
        style's to scale)."""
        out = values * self._style
        for cols, level in ((_HEAD, self._head_level), (_BROWS, self._brow_floor)):
            under = level.follow(values[:, cols])
            out[:, cols] = under + self._style[cols] * (values[:, cols] - under)
        if self._style_opens:
            out[:, : motion.NUM_BLENDSHAPES] = keep_closed(values[:, : motion.NUM_BLENDSHAPES],
                                                           out[:, : motion.NUM_BLENDSHAPES])
        return out

    # --- the ease to rest -------------------------------------------------------------------------
    def neutral(self) -> np.ndarray:
        """The rest pose with these controls: a zero motion through them (an offset stays), unsmoothed."""
        return self._values(np.zeros((1, _VALUES), np.float32), rest=True)[0]

    def closing(self) -> Emitted:
        """The ease from the last frame put out to the neutral pose: ``ease_frames`` frames on the audio
        clock right after it (smoothstep), the final one exactly neutral with ``last``. Frames still
        waiting for their motion are left out. Empty when no frame was put out."""
        self._waiting = []
        if self._last is None:
            return Emitted([], np.zeros((0, _VALUES), np.float32), [], [])
        k = ease_frames(self.fps)
        x = np.arange(1, k + 1, dtype=np.float32) / k
        keep = (1.0 - x * x * (3.0 - 2.0 * x))[:, None]  # 1 -> 0, flat at both ends
        rest = self.neutral()
        values = (rest + keep * (self._last - rest)).astype(np.float32)
        values[-1] = rest
        index = list(range(self.next_index, self.next_index + k))
        self._last, self.next_index = None, self.next_index + k  # nothing follows the ease
        return Emitted(index, values, [None] * k, [False] * (k - 1) + [True])


def _concat(a: Emitted, b: Emitted) -> Emitted:
    return Emitted(a.index + b.index, np.concatenate([a.values, b.values]), a.captured_ns + b.captured_ns,
                   a.last + b.last, a.shed, a.level)
