"""A whole stream's frames as arrays: what ``Client.animate`` returns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ksdiff_sdk import schema
from ksdiff_sdk.frame import Frame, _unknown_name


@dataclass(eq=False)
class Animation:
    """The frames of one stream ordered by ``index``, and the same data as arrays.

    ``t_audio`` float64 [T] (s from the clip's first sample), ``blendshapes`` float32 [T, 52]
    (canonical ARKit order), ``head`` float32 [T, 3], ``gaze`` float32 [T, 4]. ``expected_frames``
    is the runtime's count for the stream; ``missing`` > 0 means frames were dropped on the way."""

    stream: str
    fps: int
    frames: list[Frame]
    t_audio: np.ndarray
    blendshapes: np.ndarray
    head: np.ndarray
    gaze: np.ndarray
    expected_frames: int

    @classmethod
    def from_frames(
        cls, stream: str, fps: int, frames: Iterable[Frame], expected_frames: int | None = None
    ) -> Animation:
        """Order by index (a repeated index keeps the later frame) and stack the arrays."""
        by_index = {f.index: f for f in frames}
        ordered = [by_index[i] for i in sorted(by_index)]
        return cls(
            stream=stream,
            fps=fps,
            frames=ordered,
            t_audio=np.array([f.t_audio for f in ordered], dtype=np.float64),
            blendshapes=np.array([f.blendshapes for f in ordered], np.float32).reshape(-1, schema.NUM_BLENDSHAPES),
            head=np.array([f.head for f in ordered], np.float32).reshape(-1, schema.NUM_HEAD),
            gaze=np.array([f.gaze for f in ordered], np.float32).reshape(-1, len(schema.GAZE)),
            expected_frames=len(ordered) if expected_frames is None else expected_frames,
        )

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def missing(self) -> int:
        """Frames the runtime published that did not arrive."""
        return max(0, self.expected_frames - len(self.frames))

    def __getitem__(self, name: str) -> np.ndarray:
        """One blendshape's curve over time, float32 [T] (``anim["jawOpen"]``); head and gaze angles (radians) by
        their names too, as a frame's (``anim["headYaw"]``)."""
        for names, values in ((schema.BLENDSHAPES, self.blendshapes), (schema.HEAD_ROTATION, self.head),
                              (schema.GAZE, self.gaze)):
            if name in names:
                return values[:, names.index(name)]
        raise _unknown_name(name)
