"""Artists' controls: how strongly each part of the face moves, per-shape gain and clamp, smoothing, timing.

    strength        per region (mouth, jaw, brows, eyes, head): a multiplier on its motion
    shapes          per ARKit blendshape: weight * gain + offset, clamped to [min, max]
    smoothing_ms    per region: a one-pole low-pass with this time constant (0: off)
    timing_offset_ms   the animation later (> 0) or earlier (< 0, anticipation: costs that much latency)

The defaults change nothing. The engine applies a stream's controls in one place, as it builds the
stream's wire frames (so every output, the ZeroMQ PUB, Live Link, VMC, shows the same numbers), in
this order: timing (when the frame is sampled from the motion), strength, shape gain and offset,
clamp, smoothing. Controls come from the server's config (``[controls]``, every stream) and can be
changed live per stream (protocol request ``set_controls``). Like a preset, a ``Controls`` is frozen
and checked when made; a bad value is an error naming it and the allowed range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ksdiff_runtime import motion

REGION_NAMES: tuple[str, ...] = (*motion.REGIONS, motion.HEAD_REGION)
STRENGTH_RANGE = (0.0, 3.0)
GAIN_RANGE = (0.0, 10.0)
OFFSET_RANGE = (-1.0, 1.0)
SMOOTHING_RANGE_MS = (0.0, 1000.0)
TIMING_RANGE_MS = (-500.0, 500.0)


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
        unknown = sorted(set(d) - {"gain", "offset", "min", "max"})
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

    @classmethod
    def from_dict(cls, d: Any) -> Controls:
        """From a TOML table or a protocol map: ``{strength: {mouth: 1.2}, shapes: {jawOpen: {gain: 1.1}},
        smoothing_ms: {head: 80}, timing_offset_ms: -30}``, every key optional."""
        return cls().merged(d)

    def merged(self, d: Any) -> Controls:
        """These controls with the settings ``d`` gives changed (a live ``set_controls`` changes some)."""
        if not isinstance(d, dict):
            raise ControlsError(f"controls must be a table/map, got {type(d).__name__}")
        unknown = sorted(set(d) - {"strength", "shapes", "smoothing_ms", "timing_offset_ms"})
        if unknown:
            raise ControlsError(f"unknown control(s) {', '.join(map(str, unknown))}; known: strength, shapes, "
                                "smoothing_ms, timing_offset_ms")
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
        return replace(self, strength=strength, shapes=shapes, smoothing_ms=smoothing, timing_offset_ms=timing)

    def to_dict(self) -> dict[str, Any]:
        return {"strength": {r: self.strength.get(r, 1.0) for r in REGION_NAMES},
                "shapes": {n: vars(s).copy() for n, s in self.shapes.items()},
                "smoothing_ms": {r: self.smoothing_ms.get(r, 0.0) for r in REGION_NAMES},
                "timing_offset_ms": self.timing_offset_ms}

    @property
    def changes_values(self) -> bool:
        """Whether anything but timing differs from the defaults (the values pass need not run otherwise)."""
        return (any(v != 1.0 for v in self.strength.values()) or any(v > 0 for v in self.smoothing_ms.values())
                or any(s != ShapeControl() for s in self.shapes.values()))


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
_COLUMN_REGION = np.array([next(r for r, names in motion.REGIONS.items() if n in names) for n in motion.BLENDSHAPES]
                          + [motion.HEAD_REGION] * motion.NUM_HEAD)


class ControlState:
    """One stream's controls and their memory (the smoothing's last output)."""

    def __init__(self, controls: Controls, fps: int) -> None:
        self.fps = fps
        self.controls = controls
        self._last: np.ndarray | None = None  # the last frame's values after smoothing

    def set(self, controls: Controls) -> None:
        self.controls = controls

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Frames [n, 55] (52 weights, then head) -> the same with the controls applied."""
        c = self.controls
        if not c.changes_values:
            self._last = values[-1].copy() if len(values) else self._last
            return values
        D = motion.NUM_BLENDSHAPES
        out = values.astype(np.float32).copy()
        scale = np.array([c.strength.get(r, 1.0) for r in _COLUMN_REGION], np.float32)
        out *= scale
        for name, s in c.shapes.items():
            i = motion.BLENDSHAPE_INDEX[name]
            out[:, i] = out[:, i] * s.gain + s.offset
        lo = np.zeros(D, np.float32)
        hi = np.ones(D, np.float32)
        for name, s in c.shapes.items():
            lo[motion.BLENDSHAPE_INDEX[name]], hi[motion.BLENDSHAPE_INDEX[name]] = s.min, s.max
        out[:, :D] = np.clip(out[:, :D], lo, hi)
        if any(v > 0 for v in c.smoothing_ms.values()):
            tau = np.array([c.smoothing_ms.get(r, 0.0) for r in _COLUMN_REGION], np.float32)
            a = np.where(tau > 0, 1.0 - np.exp(-1000.0 / (self.fps * np.maximum(tau, 1e-6))), 1.0).astype(np.float32)
            prev = out[0] if self._last is None else self._last
            for j in range(len(out)):
                prev = prev + a * (out[j] - prev)
                out[j] = prev
        if len(out):
            self._last = out[-1].copy()
        return out
