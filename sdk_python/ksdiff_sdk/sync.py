"""Lips in sync with audio you play yourself (an NPC line): frames on the audio clock, playback delayed
by the latency the runtime states for the stream (protocol/SPEC.md 6, "You play the audio yourself").

    handle = client.open_stream("guard", 48_000, mode="line")
    sync = LineSync(handle, output_latency_s=0.03)  # your audio device's own delay
    handle.push(line_audio)                         # the clock starts with the first push
    sync.start_playback(lambda: speaker.play(line_audio))   # waits for the moment, then plays
    while game_running:
        pose = sync.pose()                          # the frame for what the speaker plays now
        if pose is not None:
            rig.apply(pose.blendshapes, pose.head, pose.gaze)

The runtime states, in its ``stream_opened`` reply, the latency it adds to the stream
(``StreamHandle.latency_ms``): frame ``i`` is published at most that long after the audio at its
instant reached it. So if the audio's sample 0 comes out of the speaker that long after it was pushed,
every frame is there before its instant. ``LineSync`` keeps that time (``play_at``), starts your
playback then (early by your device's output latency), and gives the pose for any moment by
interpolating between the two frames around it. A frame that still arrives late is shown as soon as it
comes (the audio never waits), and ``late`` counts them. Playback started later than ``play_at`` (a line
longer than the stream's ``max_ahead_s`` makes ``push`` wait for real time before it returns) moves the
line's clock with it: the frames follow the audio as it actually plays.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ksdiff_sdk import schema
from ksdiff_sdk.client import StreamHandle
from ksdiff_sdk.frame import Frame

DEFAULT_MARGIN_MS = 20.0  # on top of the stated latency: transport to this process and scheduling
FALLBACK_LATENCY_MS = 250.0  # a runtime that states none (protocol < 1.2)


@dataclass(frozen=True)
class Pose:
    """The face at one instant of the line: weights [52], head [3], gaze [4] (as ``Frame``), its time on the
    audio clock, and whether the line is over: its final frame has played (the ``last`` one; or, when that never
    arrived, dropped on the way, the latest that did once the stream ended), held from then on. A line that ended
    without any frame gives the rest pose (zeros), ended."""

    t_audio: float
    blendshapes: np.ndarray
    head: np.ndarray
    gaze: np.ndarray
    ended: bool


class LineSync:
    """Schedules one stream's frames against local playback of its audio (see the module docstring).

    ``output_latency_s``: how long your audio device takes from starting playback to sound (e.g. the
    latency your audio API reports); playback is started that much earlier. ``margin_ms``: added to the
    stated latency. Use from one thread (the game loop)."""

    def __init__(self, handle: StreamHandle, output_latency_s: float = 0.0,
                 margin_ms: float = DEFAULT_MARGIN_MS, clock: Callable[[], float] = time.monotonic) -> None:
        self.handle = handle
        self.output_latency_s = float(output_latency_s)
        stated = handle.latency_ms if handle.latency_ms is not None else FALLBACK_LATENCY_MS
        self.delay_s = (stated + margin_ms) / 1000.0  # from the first push to sample 0 at the speaker
        self._clock = clock
        self._indices: list[int] = []  # received frames by index, sorted
        self._frames: dict[int, Frame] = {}
        self._arrived: dict[int, float] = {}
        self._last_index: int | None = None
        self._over = False  # the stream ended (its stream_end came, or end()'s reply): no more frames will come
        self._started: float | None = None  # when sample 0 came out of the speaker, once start_playback played it

    @property
    def play_at(self) -> float | None:
        """When sample 0 comes out of the speaker (this clock): due ``delay_s`` after the first push, or, once
        ``start_playback`` played it, when it did (later than due if the game was late)."""
        return self._started if self._started is not None else self._due_at()

    def _due_at(self) -> float | None:
        t0 = self.handle.started_at
        return None if t0 is None else t0 + self.delay_s

    def start_playback(self, play: Callable[[], object], timeout: float | None = None) -> float:
        """Wait until ``play_at`` minus the output latency, then call ``play()`` (which starts your audio);
        returns the time it was called. Push the first audio before (the clock starts with it)."""
        at = self._due_at()
        if at is None:
            raise RuntimeError("push the line's first audio before starting playback: the clock starts with it")
        wait = at - self.output_latency_s - self._clock()
        if timeout is not None and wait > timeout:
            raise TimeoutError(f"playback is due in {wait:.2f} s, beyond the timeout")
        if wait > 0:
            time.sleep(wait)  # waiting for a moment on the clock, not for another thread
        called = self._clock()
        play()
        self._started = max(at, called + self.output_latency_s)  # the line's clock from now on: the audio's
        return called

    def _take(self) -> None:
        now = self._clock()
        h = self.handle
        over = h.end_reason is not None or h.ended  # read before the frames: they reach the handle before its end
        for frame in h.take_frames():
            if frame.index in self._frames:
                continue
            bisect.insort(self._indices, frame.index)
            self._frames[frame.index] = frame
            self._arrived[frame.index] = now
            if frame.last:
                self._last_index = frame.index
        self._over = self._over or (over and h.lost is None)

    def pose(self, now: float | None = None) -> Pose | None:
        """The pose for what the speaker plays at ``now`` (default: this instant): linear between the two
        received frames around it, the nearest one at the edges; None before any frame came (the rest pose,
        ended, for a stream that ended without one). ``ended`` once the final frame played: the ``last`` one, or,
        once the stream ended without it reaching this client, the latest that did. Raises the
        stream's ``StreamLost`` once it was lost (the runtime restarted, the connection dropped) and the frames
        that did arrive are played: its last frame will not come."""
        self._take()
        at = self.play_at
        lost = self.handle.lost
        if not self._indices or at is None:
            if lost is not None:
                raise lost
            if self._over:  # the line ended without a frame: nothing to wait for
                t = 0.0 if at is None else (self._clock() if now is None else now) - at
                return Pose(t, np.zeros(schema.NUM_BLENDSHAPES, np.float32), np.zeros(3, np.float32),
                            np.zeros(4, np.float32), True)
            return None
        t = (self._clock() if now is None else now) - at
        fps = self._frames[self._indices[0]].fps
        pos = t * fps
        if lost is not None and self._last_index is None and pos >= self._indices[-1]:
            raise lost
        k = bisect.bisect_right(self._indices, pos)
        if k == 0:
            f = self._frames[self._indices[0]]
            return Pose(t, f.blendshapes, f.head, f.gaze, False)
        a = self._frames[self._indices[k - 1]]
        if k == len(self._indices):  # past the latest frame received: the final one once the stream ended
            ended = self._over or (self._last_index is not None and a.index == self._last_index)
            return Pose(t, a.blendshapes, a.head, a.gaze, ended)
        b = self._frames[self._indices[k]]
        w = np.float32((pos - a.index) / (b.index - a.index))
        return Pose(t, a.blendshapes + w * (b.blendshapes - a.blendshapes), a.head + w * (b.head - a.head),
                    a.gaze + w * (b.gaze - a.gaze), False)

    @property
    def frames(self) -> list[Frame]:
        """The frames received so far, by index."""
        return [self._frames[i] for i in self._indices]

    @property
    def late(self) -> int:
        """Frames that arrived (were taken by ``pose``) after their instant had played."""
        return sum(slack < 0 for slack in self.arrival_slack_s())

    def arrival_slack_s(self) -> list[float]:
        """For each frame received, by index: how long before its instant played it arrived (negative: late)."""
        at = self.play_at
        if at is None:
            return []
        return [at + self._frames[i].t_audio - self._arrived[i] for i in self._indices]
