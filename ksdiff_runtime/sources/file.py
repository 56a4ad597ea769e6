"""An audio file as a source: delivered in blocks at its own rate, paced like a microphone or fast."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from ksdiff_runtime.inputs.guards import AudioInputError, read_audio_file
from ksdiff_runtime.inputs.stream import AudioFormat, BadAudioError

from .base import OnAudio, OnEnd

log = logging.getLogger(__name__)


class FileSource:
    """An audio file delivered in blocks at its own rate and channels, paced like a microphone or
    as fast as the consumer takes it.

    Real time: block k (samples [k*B, end_k)) is delivered at ``t0 + end_k / rate`` on the
    monotonic clock, t0 being ``start()``: the instant a microphone would have captured its last
    sample, which is also its ``captured_ns``. The schedule is computed from sample counts, never
    from the previous wake-up, so it does not drift. Fast mode: no waiting, ``captured_ns`` None.
    Unreadable files raise ``AudioInputError`` here, with ``load_audio``'s messages.
    """

    kind = "file"

    def __init__(self, path: str | Path, realtime: bool = True, block_ms: float = 10.0, stream_id: str = "file",
                 loop: bool = False) -> None:
        if not block_ms > 0:
            raise ValueError(f"block_ms must be positive, got {block_ms}")
        self.path = Path(path)
        self._data, self.sample_rate = read_audio_file(self.path)
        self.channels = int(self._data.shape[1])
        try:  # what a stream takes: refused here, before anything starts (the model loads after the sources)
            AudioFormat(self.sample_rate, self.channels)
        except BadAudioError as exc:
            raise AudioInputError(f"{self.path}: {exc}; convert it (e.g. ffmpeg -i IN -ar 16000 -ac 1 OUT.wav)") \
                from None
        self.realtime = realtime
        self.mode = "live" if realtime else "line"
        self.block_ms = float(block_ms)
        self.stream_id = stream_id
        self.loop = loop
        self.blocksize = max(1, round(self.sample_rate * self.block_ms / 1000))
        if loop and 0 < len(self._data) < self.blocksize:  # a second of it a pass, not a block per sample or two
            self._data = np.tile(self._data, (-(-self.sample_rate // len(self._data)), 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def num_samples(self) -> int:
        return int(self._data.shape[0])

    def start(self, on_audio: OnAudio, on_end: OnEnd) -> None:
        if self._thread is not None or self._stop.is_set():
            raise RuntimeError("a FileSource starts once")
        t0 = time.monotonic_ns()  # the schedule's origin, as a microphone started now (a late thread catches up)
        self._thread = threading.Thread(target=self._run, args=(on_audio, on_end, t0),
                                        name=f"file-source-{self.stream_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # also wakes the pacing wait
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # a callback in flight finishes before stop() returns

    def _run(self, on_audio: OnAudio, on_end: OnEnd, t0: int) -> None:
        data, rate, size = self._data, self.sample_rate, self.blocksize
        clock = 0  # samples delivered since start, across loops: the schedule's position
        try:
            while True:
                for begin in range(0, len(data), size):
                    block = data[begin : begin + size]
                    due_ns = t0 + (clock + len(block)) * 1_000_000_000 // rate
                    if self.realtime:
                        wait_s = (due_ns - time.monotonic_ns()) / 1e9
                        if wait_s > 0 and self._stop.wait(wait_s):
                            return
                    if self._stop.is_set():
                        return
                    on_audio(block.copy(), due_ns if self.realtime else None)  # copy: the consumer may keep it
                    clock += len(block)
                if not self.loop or len(data) == 0:
                    break
        except Exception as exc:  # the consumer failed: end the stream and say why
            log.exception("file source %s: on_audio failed", self.path)
            if not self._stop.is_set():
                on_end(f"processing audio from {self.path} failed: {exc!r}")
            return
        if not self._stop.is_set():
            on_end(None)
