"""Animation files: a baked line as a CSV laid out like a Live Link Face recording, or as JSON.

The CSV has Timecode, BlendShapeCount, then one column per curve by name, then head and eye
rotations, with the values of ``livelink.values`` (the same numbers a live Live Link stream
carries), so tools that import Live Link Face recordings read it. Import by column name, never
by position. The JSON carries the same frames with their audio time and the canonical names.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion

from . import livelink


def resample_frames(x: np.ndarray, fps_in: int, fps_out: int, n_out: int) -> np.ndarray:
    """Frames [T, D] at fps_in -> ``n_out`` frames at fps_out by linear interpolation on the audio clock."""
    if len(x) == 0:
        return x[:n_out]
    t_out = np.arange(n_out) / fps_out
    t_in = np.arange(len(x)) / fps_in
    return np.stack([np.interp(t_out, t_in, x[:, d]) for d in range(x.shape[1])], axis=1).astype(np.float32)


# a Live Link Face timecode numbers a second's frames in two digits (00..99): the most frames a second it can write
MAX_TIMECODE_FPS = 100


def timecode(frame: int, fps: int) -> str:
    """HH:MM:SS:FF.mmm of ``frame`` at ``fps`` (at most MAX_TIMECODE_FPS), as Live Link Face records it."""
    if not 1 <= fps <= MAX_TIMECODE_FPS:
        raise ValueError(f"a timecode is written at 1 to {MAX_TIMECODE_FPS} frames a second, not {fps}")
    seconds, ff = divmod(frame, fps)
    minutes, ss = divmod(seconds, 60)
    hh, mm = divmod(minutes, 60)
    return f"{hh:02d}:{mm:02d}:{ss:02d}:{ff:02d}.000"


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A file beside ``path`` to write, moved onto ``path`` once the block ends: a full disk, an error or Ctrl-C
    leaves the file that was there (or none), never part of one. A symbolic link's target is what is replaced (the
    link stays), with the permissions the file had; a path that is not a regular file (a device, a pipe) is written
    in place."""
    target = Path(os.path.realpath(path))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        yield target
        return
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        yield part
        if mode is not None:
            os.chmod(part, stat.S_IMODE(mode))
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _write_text(path: Path, write) -> None:
    """``write(f)`` into a text file that appears at ``path`` whole, on disk (``written_whole``)."""
    with written_whole(path) as part, part.open("w", newline="", encoding="utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_csv(path: Path, blendshapes: np.ndarray, head: np.ndarray, gaze: np.ndarray, fps: int) -> None:
    """Frames [T, 52], [T, 3], [T, 4] as a Live Link Face CSV (the values ``livelink.values`` gives)."""
    header = ["Timecode", "BlendShapeCount", *livelink.VALUE_NAMES]
    rows = livelink.values(blendshapes, head, gaze)

    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(header)
        for i, row in enumerate(rows):
            w.writerow([timecode(i, fps), len(header) - 2, *(f"{v:.5f}" for v in row)])

    _write_text(path, write)


def write_json(path: Path, blendshapes: np.ndarray, head: np.ndarray, gaze: np.ndarray, fps: int,
               source: str) -> None:
    doc = {
        "source": source,
        "fps": fps,
        "blendshape_names": list(motion.BLENDSHAPES),
        "head_rotation_names": list(motion.HEAD_ROTATION),
        "head_rotation_units": "radians; pitch + = chin down, yaw + = toward the face's left, roll + = toward "
        "the right shoulder (see ksdiff_runtime/motion.py)",
        "gaze_names": list(motion.GAZE),
        "frames": [
            {
                "t_audio": round(i / fps, 6),
                "blendshapes": [round(float(v), 5) for v in blendshapes[i]],
                "head": [round(float(v), 5) for v in head[i]],
                "gaze": [round(float(v), 5) for v in gaze[i]],
            }
            for i in range(len(blendshapes))
        ],
    }
    _write_text(path, lambda f: json.dump(doc, f))
