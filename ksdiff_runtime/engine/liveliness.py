"""Eyes and head that look alive: blinks, gaze micro-saccades and a head that stays centred and sways.

The shipped model learned its eyes and head from a teacher that rarely blinks and never looks
around, and each hop samples head motion afresh (issue 11's measurements): a looping live stream
showed 0 blinks in 8 minutes, and the head settled at +3.3 degrees pitch and +3.6 roll. People
blink 15-20 times a minute, more in the pauses between phrases, and their eyes never hold still.
Until a retrained model does this itself, this stage adds it to the model's output frames:

- **blinks** at ``blinks_per_minute`` on average outside pauses (a random process with a refractory
  time, so they never come in bursts), ``pause_factor`` times likelier in the first second of a pause (the
  mouth at rest after speech: people blink at phrase boundaries); each blink is a 270 ms
  close-and-open curve, taken as max(model, blink) on both eyeBlink weights;
- **gaze micro-saccades**: every so often (``saccades_per_second``) the eyes jump to a new small
  offset (``saccade_deg``, both eyes together) and hold it, added to the eyeLook weights;
- **head centring**: the head's slow average (time constant ``head_centring_s``) is taken out of
  its rotation, so no offset settles over minutes while every nod and turn stays. Until a stream is
  that old, the average is of the frames it has (a one-pole average from rest, divided by the weight it
  has gathered): the model's head drifts ~3 degrees in a stream's first seconds, the same way whatever
  the audio, and a 6 s average started at zero left the same +0.8 pitch, +1.1 roll at 2 s in every live
  stream; this leaves +0.4 and +0.6 (`python -m benchmarks.crowd`, the clips' mean head);
- **head steadiness**: a Butterworth low-pass (``head_smoothing_order``, ``head_smoothing_hz``) on the
  head's rotation. Each hop samples head motion afresh, so the model's head wobbles at the hop rate
  (9.3 direction changes a second in a looping stream, where the teacher makes 2.5). 3rd order at
  1.4 Hz keeps slow nods (0.5 Hz at 100 %, 0.8 Hz at 98 %), the head lags the model's by ~230 ms on
  slow motion, and 2.8 direction changes a second are left; 2nd order at 1 Hz lagged ~240 ms, kept a
  0.8 Hz nod at 84 % and left 3.3 (docs/ENGINE.md);
- **head sway**: the slow random drift of a speaking head (the teacher's: docs/TEACHER.md), which no model
  can hear in the audio: a model that animates a frame at a time (the ``low-latency`` preset's one-step
  sampler) puts out its mean, a head nearly still (0.1-0.2 degrees against the teacher's 0.9 pitch,
  1.7 yaw, 0.8 roll; benchmarks/head_steadiness.json). The stage draws it as the teacher does, at the
  teacher's band (``SWAY_BAND_HZ``) and amplitude (``SWAY_DEG``, times ``head_sway``), 40 % of it in
  silence rising smoothly to all of it while the mouth moves, and tops the head's own motion up to that
  amplitude: only what the model's head lacks of it, by its running variance (from the stream's or clip's
  first frame), so a livelier head (a bake's, sampled in 4 steps) gets less.

Like the voice gate it works on what goes out (the model's own context is untouched), on the
native 30 fps frames in order, from the stream's seed and those frames alone: the same frames and
seed give the same blinks however they are cut into hops (a bake applies it to its whole clip; its
frames, and so its pauses, differ a little from a live stream's).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.signal

from ksdiff_runtime import motion

# One blink at 30 fps: ~80 ms to close, then ~190 ms to open again
BLINK_CURVE = np.array([0.45, 0.9, 1.0, 0.8, 0.5, 0.25, 0.1, 0.03], np.float32)
BLINKS = [motion.index("eyeBlinkLeft"), motion.index("eyeBlinkRight")]
LOOK = {name: motion.index(name) for name in ("eyeLookOutLeft", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutRight",
                                              "eyeLookUpLeft", "eyeLookUpRight", "eyeLookDownLeft", "eyeLookDownRight")}
# each eyeLook weight moves with one gaze axis (0 yaw, 1 pitch) in one direction, over that direction's range
# (yaw > 0: toward the face's own left, motion.gaze_from_blendshapes; pitch > 0: down)
LOOK_MOVES = {"eyeLookOutLeft": (0, 1.0, motion.EYE_YAW_RANGE), "eyeLookInRight": (0, 1.0, motion.EYE_YAW_RANGE),
              "eyeLookInLeft": (0, -1.0, motion.EYE_YAW_RANGE), "eyeLookOutRight": (0, -1.0, motion.EYE_YAW_RANGE),
              "eyeLookDownLeft": (1, 1.0, motion.EYE_PITCH_DOWN_RANGE),
              "eyeLookDownRight": (1, 1.0, motion.EYE_PITCH_DOWN_RANGE),
              "eyeLookUpLeft": (1, -1.0, motion.EYE_PITCH_UP_RANGE),
              "eyeLookUpRight": (1, -1.0, motion.EYE_PITCH_UP_RANGE)}
LOOK_COLUMNS = np.array([LOOK[name] for name in LOOK_MOVES])
LOOK_AXIS = np.array([axis for axis, _, _ in LOOK_MOVES.values()])
LOOK_SIGN = np.array([sign for _, sign, _ in LOOK_MOVES.values()])
LOOK_RANGE = np.array([span for _, _, span in LOOK_MOVES.values()])
JAW = motion.index("jawOpen")
REST_JAW = 0.05  # the mouth rests below this jawOpen
PAUSE_FRAMES = (6, 36)  # a pause's first second: the mouth at rest for 200 ms, up to 1.2 s
SACCADE_FRAMES = 3  # a saccade reaches its new offset in about this many frames
# The teacher's head drift (training/teacher.py) for the mean persona, while speaking: each axis a sum of random
# sinusoids at 0.08-0.5 Hz times its rate scale (0.6-1.6, mean 1.1), of standard deviation 0.03, 0.07 and 0.03
# rad times its amplitude (0.9 for the mean persona) times 0.58 (the sum's); 40 % of it in silence.
SWAY_DEG = (0.89, 2.08, 0.89)  # pitch, yaw, roll
SWAY_BAND_HZ = (0.08, 0.55)
# the band-pass's order: on 10 minutes of band-passed noise, order 2 turns direction 5.2 times a second, order 3
# 2.3, order 4 1.6 (the teacher's sinusoids, clip by clip, 1.3); with the model's live head, order 3 makes 2.44
# against the teacher's 2.45 (`python -m benchmarks.head_steadiness`, docs/ENGINE.md)
SWAY_ORDER = 3
SWAY_SILENT = 0.4
# how fast the sway follows the mouth starting and stopping: two one-poles in a row (critically damped, as the
# teacher's), so the sway's gain turns without a corner and the head does not jerk as a phrase starts
SWAY_ACTIVITY_S = 0.15
SWAY_OWN_S = 10.0  # the time constant of the running variance of the model's own head motion


@dataclass(frozen=True)
class LivelinessConfig:
    # people blink 15-20 times a minute; with the pauses' extra blinks a looping stream of the sample
    # speech measured 18.5 a minute at 15 and 3.0, one minute in eight at 27 (benchmarks/liveliness.py)
    blinks_per_minute: float = 14.0
    pause_factor: float = 2.5  # blinks are this much likelier in the first second of a pause
    # no blink sooner than this after the last one; a longer refractory time makes the intervals more
    # regular (1.0 s: one minute in eight of a looping stream had 27 blinks, another 11)
    refractory_s: float = 1.5
    saccades_per_second: float = 0.7
    saccade_deg: float = 2.0  # standard deviation of each fixation's offset (yaw and pitch)
    head_centring_s: float = 6.0  # a head offset held longer than this goes back to centre (0: off)
    head_smoothing_hz: float = 1.4  # head motion faster than this is damped (0: off)
    # the low-pass's order: a steeper roll-off damps the hop-rate wobble more for the same lag on nods
    head_smoothing_order: int = 3
    # the head's slow random sway, topped up to this share of the teacher's amplitude (0: off)
    head_sway: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.blinks_per_minute <= 60:
            raise ValueError(f"blinks_per_minute must be in 0..60, got {self.blinks_per_minute}")
        if self.pause_factor < 1 or self.refractory_s < 0:
            raise ValueError("pause_factor must be >= 1 and refractory_s >= 0")
        if not 0 <= self.saccades_per_second <= 5 or not 0 <= self.saccade_deg <= 10:
            raise ValueError("saccades_per_second must be in 0..5 and saccade_deg in 0..10")
        if self.head_centring_s < 0:
            raise ValueError(f"head_centring_s must be >= 0, got {self.head_centring_s}")
        if not 0 <= self.head_smoothing_hz < motion.FPS / 2:
            raise ValueError(f"head_smoothing_hz must be in [0, {motion.FPS / 2}), got {self.head_smoothing_hz}")
        if not 1 <= self.head_smoothing_order <= 4:
            raise ValueError(f"head_smoothing_order must be in 1..4, got {self.head_smoothing_order}")
        if not 0 <= self.head_sway <= 3:
            raise ValueError(f"head_sway must be in 0..3 (a share of the teacher's sway), got {self.head_sway}")


class Liveliness:
    """One stream's blinks, gaze, head centring, steadiness and sway, frame after frame from its seed."""

    def __init__(self, config: LivelinessConfig, seed: int) -> None:
        self.config = config
        self._rng = np.random.default_rng([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, 0xB1])
        fps = motion.FPS
        # the blink hazard per frame: after the refractory time, intervals are exponential with the mean
        # that makes blinks_per_minute on average (without the pauses' extra blinks)
        rate = config.blinks_per_minute
        self._hazard = 1.0 / (fps * max(0.1, 60.0 / rate - config.refractory_s)) if rate else 0.0
        self._refractory = round(config.refractory_s * fps)
        self._blink = -1  # position in BLINK_CURVE (-1: eyes open)
        self._since_blink = self._refractory
        self._rest = 0  # frames the mouth has rested
        self._gaze = [0.0, 0.0]  # current (yaw, pitch) offset in radians
        self._target = [0.0, 0.0]
        self._next_saccade = 0
        # the head's filters, on each rotation axis frame after frame (Python floats: a hop has one or a few
        # frames, where scipy.signal's per-call cost was most of the stage's)
        self._head_a = float(1.0 - np.exp(-1.0 / (fps * config.head_centring_s))) if config.head_centring_s else 0.0
        self._head_mean = [0.0] * motion.NUM_HEAD  # the one-pole average from rest of each axis
        self._head_weight = 0.0  # the weight that average has gathered: 1 - (1 - a)^frames
        head_sos, sway_sos, self._sway_unit = _filters(config)
        self._head_sos: list[list[float]] = head_sos.tolist()  # the low-pass's sections, and their state, from rest
        self._head_zi = [[[0.0, 0.0] for _ in range(motion.NUM_HEAD)] for _ in self._head_sos]
        # the sway: white noise (its own generator: the blinks and gaze stay as they were) through a band-pass,
        # scaled to unit variance and started in its steady state (run over a minute of noise first)
        self._sway_rng = np.random.default_rng([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, 0x5A])
        self._sway_sos: list[list[float]] = []
        if config.head_sway:
            warm = self._sway_rng.standard_normal((60 * fps, motion.NUM_HEAD))
            _, zi = scipy.signal.sosfilt(sway_sos, warm, axis=0, zi=np.zeros((len(sway_sos), 2, motion.NUM_HEAD)))
            self._sway_sos = sway_sos.tolist()
            self._sway_zi = [[[float(z[0, k]), float(z[1, k])] for k in range(motion.NUM_HEAD)] for z in zi]
        self._sway_rad = [np.deg2rad(d) * config.head_sway for d in SWAY_DEG]
        self._activity = [0.0, 0.0]  # the mouth moving, smoothed twice (0 at rest .. 1)
        self._activity_a = float(1.0 - np.exp(-1.0 / (fps * SWAY_ACTIVITY_S)))
        # the running variance of the model's head as centred and low-passed: one-pole averages of it and of its
        # square from rest, over the weight they have gathered (a clip of a few seconds is measured as it is)
        self._own_a = float(1.0 - np.exp(-1.0 / (fps * SWAY_OWN_S)))
        self._own_weight = 0.0
        self._own_mean = [0.0] * motion.NUM_HEAD
        self._own_square = [0.0] * motion.NUM_HEAD

    def apply(self, values: np.ndarray) -> np.ndarray:
        """The next native frames [n, 55] (in order) with blinks, gaze offsets and the head centred, steadied and
        swaying."""
        out = np.array(values, np.float32, copy=True)
        n = len(out)
        if n == 0:
            return out
        # the per-frame decisions (sequential, scalars), then the weights changed for the whole block
        blink, yaw, pitch = np.zeros(n, np.float32), np.zeros(n), np.zeros(n)
        moving = [True] * n  # the mouth has moved in the last 200 ms (not in a pause)
        for j, resting in enumerate((out[:, JAW] < REST_JAW).tolist()):
            blink[j] = self._next_blink(resting)
            moving[j] = self._rest < PAUSE_FRAMES[0]
            yaw[j], pitch[j] = self._next_gaze()
        out[:, BLINKS] = np.maximum(out[:, BLINKS], blink[:, None])
        shift = np.maximum(np.stack([yaw, pitch], axis=1)[:, LOOK_AXIS] * LOOK_SIGN, 0.0) / LOOK_RANGE  # [n, 8]
        out[:, LOOK_COLUMNS] = np.clip(out[:, LOOK_COLUMNS] + shift, 0.0, 1.0)
        if self._head_a or self._head_sos or self._sway_sos:
            D = motion.NUM_BLENDSHAPES
            noise = self._sway_rng.standard_normal((n, motion.NUM_HEAD)).tolist() if self._sway_sos else []
            out[:, D:] = self._head(out[:, D:].astype(np.float64).tolist(), moving, noise)
        return out

    def _head(self, frames: list[list[float]], moving: list[bool], noise: list[list[float]]
              ) -> list[list[float]]:
        """Head rotations (in order) with their slow mean taken out (a one-pole low-pass continuing from the last
        frame, over the weight it has gathered), then low-passed, then with the sway that tops their motion up
        to the teacher's added (``noise``: a frame's white noise per axis; none: no sway)."""
        a, m, sections, zi = self._head_a, self._head_mean, self._head_sos, self._head_zi
        for j, frame in enumerate(frames):
            if a:
                self._head_weight += a * (1.0 - self._head_weight)
            if noise:
                act = self._activity
                act[0] += self._activity_a * (float(moving[j]) - act[0])
                act[1] += self._activity_a * (act[0] - act[1])
                gain = SWAY_SILENT + (1.0 - SWAY_SILENT) * act[1]
                self._own_weight += self._own_a * (1.0 - self._own_weight)
            for k, x in enumerate(frame):
                if a:
                    m[k] += a * (x - m[k])
                    x = x - m[k] / self._head_weight
                x = _sosfilt_step(sections, zi, k, x)
                if noise:
                    self._own_mean[k] += self._own_a * (x - self._own_mean[k])
                    self._own_square[k] += self._own_a * (x * x - self._own_square[k])
                    mean = self._own_mean[k] / self._own_weight
                    own = self._own_square[k] / self._own_weight - mean * mean
                    want = (gain * self._sway_rad[k]) ** 2
                    sway = _sosfilt_step(self._sway_sos, self._sway_zi, k, noise[j][k]) * self._sway_unit
                    x += sway * max(want - own, 0.0) ** 0.5
                frame[k] = x
        return frames

    def _next_blink(self, resting: bool) -> float:
        self._rest = self._rest + 1 if resting else 0
        self._since_blink += 1
        pause = PAUSE_FRAMES[0] <= self._rest < PAUSE_FRAMES[1]
        hazard = self._hazard * (self.config.pause_factor if pause else 1.0)
        draw = self._rng.random()
        if self._blink < 0 and self._since_blink >= self._refractory and draw < hazard:
            self._blink, self._since_blink = 0, 0
        if self._blink < 0:
            return 0.0
        value = float(BLINK_CURVE[self._blink])
        self._blink = self._blink + 1 if self._blink + 1 < len(BLINK_CURVE) else -1
        return value

    def _next_gaze(self) -> tuple[float, float]:
        """This frame's (yaw, pitch) offset in radians: a jump to a new target now and then, reached over
        SACCADE_FRAMES frames, held until the next."""
        if self.config.saccades_per_second and self._next_saccade <= 0:
            self._target = (np.deg2rad(self.config.saccade_deg) * self._rng.standard_normal(2)).tolist()
            wait = self._rng.exponential(motion.FPS / self.config.saccades_per_second)
            self._next_saccade = max(SACCADE_FRAMES * 2, round(wait))
        self._next_saccade -= 1
        self._gaze = [g + (t - g) / SACCADE_FRAMES for g, t in zip(self._gaze, self._target, strict=True)]
        return self._gaze[0], self._gaze[1]


@functools.lru_cache(maxsize=8)
def _filters(config: LivelinessConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """The head's low-pass and the sway's band-pass (second-order sections; none where off), and the scale that
    gives the sway unit variance: the same for every stream of a config, made once (a stream's start took 1.9 ms
    of the engine's thread with them; a client opening and ending streams in a loop kept it busy)."""
    fps = motion.FPS
    head = np.zeros((0, 6))
    if config.head_smoothing_hz:
        head = scipy.signal.butter(config.head_smoothing_order, config.head_smoothing_hz, fs=fps, output="sos")
    sway, unit = np.zeros((0, 6)), 1.0
    if config.head_sway:
        sway = scipy.signal.butter(SWAY_ORDER, SWAY_BAND_HZ, btype="bandpass", fs=fps, output="sos")
        impulse = np.zeros(120 * fps)
        impulse[0] = 1.0
        unit = float(1.0 / np.sqrt(np.sum(scipy.signal.sosfilt(sway, impulse) ** 2)))
    return head, sway, unit


def _sosfilt_step(sections: list[list[float]], state: list[list[list[float]]], k: int, x: float) -> float:
    """One sample of axis ``k`` through second-order sections (direct form II transposed, as scipy's sosfilt),
    their state updated in place."""
    for (b0, b1, b2, _, a1, a2), per_axis in zip(sections, state, strict=True):
        s = per_axis[k]
        y = b0 * x + s[0]
        s[0] = b1 * x - a1 * y + s[1]
        s[1] = b2 * x - a2 * y
        x = y
    return x
