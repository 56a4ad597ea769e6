"""An audio file as a source: delivered in blocks at its own rate, paced like a microphone or fast."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ksdiff_runtime.inputs.guards import AudioInputError, open_audio_file, read_blocks
from ksdiff_runtime.inputs.stream import AudioFormat, BadAudioError

from .base import OnAudio, OnEnd

log = logging.getLogger(__name__)

# A real-time file this far behind its schedule (the process was stopped, the machine slept, the consumer stalled)
# plays on from where it was, as a player resumes, instead of delivering the time it missed at once.
RESUME_AFTER_S = 0.5


class FileSource:
    """An audio file delivered in blocks at its own rate and channels, paced like a microphone or
    as fast as the consumer takes it.

    Real time: block k (samples [k*B, end_k)) is delivered at ``t0 + end_k / rate`` on the
    monotonic clock, t0 being ``start()``: the instant a microphone would have captured its last
    sample, which is also its ``captured_ns``. The schedule is computed from sample counts, never
    from the previous wake-up, so it does not drift; only when it falls more than ``RESUME_AFTER_S`` behind (the
    process was stopped, the machine slept) does the schedule move on to now. Fast mode: no waiting, ``captured_ns``
    None. Unreadable files raise ``AudioInputError`` here, with ``load_audio``'s messages. The file is read a block at a
    time as it plays (an hour of 48 kHz stereo is 1.4 GB decoded); content that cannot be decoded further in ends
    the stream with an error naming the file.
    """

    kind = "file"

    def __init__(self, path: str | Path, realtime: bool = True, block_ms: float = 10.0, stream_id: str = "file",
                 loop: bool = False) -> None:
        if not block_ms > 0:
            raise ValueError(f"block_ms must be positive, got {block_ms}")
        self.path = Path(path)
        # open from here on, read as it plays: the file that was there, even if it is moved or replaced meanwhile
        self._file: Any = open_audio_file(self.path)
        f = self._file
        self.sample_rate, self.channels, self.num_samples = int(f.samplerate), int(f.channels), int(f.frames)
        self.blocksize = max(1, round(self.sample_rate * float(block_ms) / 1000))
        try:
            # content that cannot be decoded at all is refused here; the block read is the first one delivered (not
            # read again: libsndfile cannot seek in some formats, GSM 6.10 and G.72x ADPCM in WAV)
            self._head: np.ndarray | None = read_blocks(f, self.path, self.blocksize)
            AudioFormat(self.sample_rate, self.channels)  # what a stream takes: refused before the model loads
        except BadAudioError as exc:
            f.close()
            raise AudioInputError(f"{self.path}: {exc}; convert it (e.g. ffmpeg -i IN -ar 16000 -ac 1 OUT.wav)") \
                from None
        except BaseException:
            f.close()
            raise
        self.realtime = realtime
        self.mode = "live" if realtime else "line"
        self.block_ms = float(block_ms)
        self.stream_id = stream_id
        self.loop = loop
        self._short: np.ndarray | None = None  # a looped file shorter than a block: a second of it a pass, in memory
        if loop and 0 < self.num_samples < self.blocksize:  # (not a block of a sample or two a pass: a core's work)
            data = np.concatenate([self._head, read_blocks(f, self.path)])
            self._short = np.tile(data, (-(-self.sample_rate // max(1, len(data))), 1))
            f.close()
        # a looped file in a format libsndfile cannot seek in: the file as opened, decoded anew from its start each pass
        self._raw: BinaryIO | None = None
        if loop and self._short is None and not f.seekable():
            try:
                self._raw = open(self.path, "rb")  # noqa: SIM115 (open as long as the source plays; closed by _run)
            except OSError as exc:
                f.close()
                raise AudioInputError(f"cannot open audio file {self.path}: {exc.strerror or exc}") from None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def _blocks(self, f: Any) -> Iterator[np.ndarray]:
        """One pass over the file (``f``: it open, at its start or past the block read when it was opened; None: the
        short file in memory), a block at a time; ``AudioInputError`` when it cannot be decoded further in."""
        if f is None:
            assert self._short is not None
            for begin in range(0, len(self._short), self.blocksize):
                yield self._short[begin : begin + self.blocksize].copy()  # the consumer may keep it
            return
        if self._head is not None:
            head, self._head = self._head, None
            if not len(head):
                return
            yield head
        while len(block := read_blocks(f, self.path, self.blocksize)):
            yield block

    def _rewind(self, f: Any) -> Any:
        """The file open at its start again, for the next pass; ``AudioInputError`` when it cannot be."""
        import soundfile as sf

        try:
            if self._raw is None:
                f.seek(0)
                return f
            f.close()
            self._raw.seek(0)
            return sf.SoundFile(self._raw)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            raise AudioInputError(f"cannot read audio file {self.path} again from its start: {exc}") from None

    def _run(self, on_audio: OnAudio, on_end: OnEnd, t0: int) -> None:
        rate = self.sample_rate
        clock = 0  # samples delivered since start, across loops: the schedule's position
        f = None if self._short is not None else self._file
        try:
            while True:
                start = clock
                blocks = self._blocks(f)
                while True:
                    try:
                        block = next(blocks)
                    except StopIteration:
                        break
                    except AudioInputError as exc:  # the file could not be read further in: end, and say why
                        log.error("file source: %s", exc)
                        if not self._stop.is_set():
                            on_end(str(exc))
                        return
                    due_ns = t0 + (clock + len(block)) * 1_000_000_000 // rate
                    if self.realtime:
                        behind_ns = time.monotonic_ns() - due_ns
                        if behind_ns > RESUME_AFTER_S * 1e9:
                            log.warning("file source %s: %.1f s behind its schedule (the process was stopped or "
                                        "the machine slept); playing on from here", self.path, behind_ns / 1e9)
                            t0, due_ns = t0 + behind_ns, due_ns + behind_ns
                        elif behind_ns < 0 and self._stop.wait(-behind_ns / 1e9):
                            return
                    if self._stop.is_set():
                        return
                    on_audio(block, due_ns if self.realtime else None)  # a new array each block: the consumer's
                    clock += len(block)
                if not self.loop or clock == start:
                    break
                if f is not None:
                    try:
                        f = self._rewind(f)
                    except AudioInputError as exc:
                        log.error("file source: %s", exc)
                        if not self._stop.is_set():
                            on_end(str(exc))
                        return
        except Exception as exc:  # the consumer failed: end the stream and say why
            log.exception("file source %s: on_audio failed", self.path)
            if not self._stop.is_set():
                on_end(f"processing audio from {self.path} failed: {exc!r}")
            return
        finally:
            if f is not None:
                f.close()
            if self._raw is not None:
                self._raw.close()
        if not self._stop.is_set():
            on_end(None)
