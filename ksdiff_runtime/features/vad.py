"""Voice activity: Silero VAD in ONNX Runtime, read from the installed silero-vad package.

Silero VAD (MIT licence, the ``silero-vad`` package on PyPI) is a small recurrent network that
gives the probability that a 32 ms chunk of 16 kHz audio (512 samples) holds speech. It is made
for telling voices from music, noise and clicks, which is what the runtime's voice gate needs
(``ksdiff_runtime.engine.gate``).

The package's Python code imports torch, which the runtime does not need, so it is not imported:
its ONNX model is read from the installed distribution's data folder (install it with
``pip install --no-deps silero-vad==6.2.3``; ``make`` does). The model is stateful: each call
takes 64 samples of the previous chunk before the chunk's 512, and the recurrent state [2, B, 128]
the previous call returned. ``VadTrack`` keeps that state for one stream and runs every whole
chunk as its audio comes; a batch row per stream lets many streams share one call.
"""

from __future__ import annotations

import importlib.metadata
import threading
from pathlib import Path

import numpy as np

from ksdiff_runtime.motion import SAMPLE_RATE

SUPPORTED_SILERO = "6.2.3"
MODEL_FILE = "silero_vad/data/silero_vad.onnx"
CHUNK = 512  # samples per probability (32 ms at 16 kHz)
CONTEXT = 64  # samples of the previous chunk each call sees first
STATE_SHAPE = (2, 128)  # recurrent state per stream: [2, B, 128]


class VadUnavailableError(RuntimeError):
    """The silero-vad package (its ONNX model) is not installed or not readable."""


def vad_model_path() -> Path:
    """The installed silero-vad's ONNX model, or VadUnavailableError saying how to install it."""
    try:
        dist = importlib.metadata.distribution("silero-vad")
    except importlib.metadata.PackageNotFoundError:
        raise VadUnavailableError(
            f"the voice gate needs Silero VAD's model from the silero-vad package, which is not installed: "
            f"pip install --no-deps silero-vad=={SUPPORTED_SILERO} (--no-deps: its Python code, which needs "
            "torch, is not used)"
        ) from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise VadUnavailableError(f"silero-vad {dist.version} is installed but has no {MODEL_FILE} "
                             f"(supported: silero-vad {SUPPORTED_SILERO})")
    return path


class SileroVad:
    """chunks [B, 576] (the previous 64 samples, then 512 new ones) and state [2, B, 128] ->
    speech probabilities [B] and the next state. One session serves every thread."""

    def __init__(self, path: Path | None = None) -> None:
        import onnxruntime as ort

        path = vad_model_path() if path is None else Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise VadUnavailableError(f"{path}: not a model ONNX Runtime can load ({e})") from None
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise VadUnavailableError(f"{path}: inputs {sorted(names)}, expected input, state and sr "
                                 f"(supported: silero-vad {SUPPORTED_SILERO})")
        self.path = path
        self._sr = np.array(SAMPLE_RATE, np.int64)

    def __call__(self, chunks: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, state = self.session.run(["output", "stateN"], {
            "input": np.ascontiguousarray(chunks, np.float32), "state": np.ascontiguousarray(state, np.float32),
            "sr": self._sr})
        return out[:, 0], state


_SHARED: list[SileroVad] = []
_SHARED_LOCK = threading.Lock()


def shared_vad() -> SileroVad:
    """The process's Silero VAD session, loaded on first use (VadUnavailableError when not installed)."""
    with _SHARED_LOCK:
        if not _SHARED:
            _SHARED.append(SileroVad())
        return _SHARED[0]


class VadTrack:
    """One stream's voice activity: chunk k (samples [512 k, 512 k + 512)) gets a speech probability once
    its audio is there, in order, with the model's state carried from chunk to chunk. Only recent
    probabilities are kept (``forget_before``)."""

    def __init__(self, model: SileroVad) -> None:
        self.model = model
        self.chunks = 0  # chunks computed: the next starts at sample CHUNK * chunks
        self.first = 0  # probabilities of chunks [first, chunks) are kept
        self._probs = np.zeros(0, np.float32)
        self._state = np.zeros((STATE_SHAPE[0], 1, STATE_SHAPE[1]), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)

    def advance(self, audio: np.ndarray, offset: int, samples: int, ended: bool = False) -> None:
        """Compute every whole chunk in audio samples [.., samples); ``audio`` holds the stream from
        absolute sample ``offset`` on. ``ended``: the last partial chunk too, padded with silence.
        Chunks whose audio is no longer held (a stream that shed frames) count as silence."""
        end_chunk = -(-samples // CHUNK) if ended else samples // CHUNK
        if end_chunk <= self.chunks:
            return
        lost = max(0, offset // CHUNK + (offset % CHUNK > 0) - self.chunks)
        if lost:  # their audio was dropped: no speech there, and the state starts again after them
            self._append(np.zeros(min(lost, end_chunk - self.chunks), np.float32))
            self._state[:] = 0.0
            self._context[:] = 0.0
        rows = []
        for k in range(self.chunks, end_chunk):
            s0 = k * CHUNK - offset
            chunk = audio[s0 : s0 + CHUNK]
            if chunk.size < CHUNK:
                chunk = np.pad(chunk, (0, CHUNK - chunk.size))
            x = np.concatenate([self._context, chunk])
            prob, self._state = self.model(x[None], self._state)
            self._context = chunk[-CONTEXT:].astype(np.float32)
            rows.append(float(prob[0]))
        self._append(np.asarray(rows, np.float32))

    def _append(self, probs: np.ndarray) -> None:
        self._probs = np.concatenate([self._probs, probs])
        self.chunks += probs.size

    def probs(self, k0: int, k1: int) -> np.ndarray:
        """Probabilities of chunks [k0, k1) (clipped to what is computed and kept)."""
        k0, k1 = max(k0, self.first), min(k1, self.chunks)
        return self._probs[k0 - self.first : max(k0, k1) - self.first]

    def forget_before(self, chunk: int) -> None:
        """Drop the probabilities of chunks before ``chunk`` (in steps, not on every call)."""
        if chunk - self.first > 64:
            cut = min(chunk, self.chunks) - self.first
            self._probs = self._probs[cut:].copy()
            self.first += cut


def speech_probabilities(audio: np.ndarray, model: SileroVad | None = None) -> np.ndarray:
    """Speech probability of every 32 ms chunk of a whole 16 kHz clip (the last one padded)."""
    track = VadTrack(model or shared_vad())
    audio = np.asarray(audio, np.float32).reshape(-1)
    track.advance(audio, 0, audio.size, ended=True)
    return track.probs(0, track.chunks)
