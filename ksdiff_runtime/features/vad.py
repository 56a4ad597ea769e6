"""Voice activity: Silero VAD in ONNX Runtime, read from the installed silero-vad package.

Silero VAD (MIT licence, the ``silero-vad`` package on PyPI) is a small recurrent network that
gives the probability that a 32 ms chunk of 16 kHz audio (512 samples) holds speech. It is made
for telling voices from music, noise and clicks, which is what the runtime's voice gate needs
(``ksdiff_runtime.engine.gate``).

The package's Python code imports torch, which the runtime does not need, so it is not imported:
its ONNX model is read from the installed distribution's data folder (install it with
``pip install --no-deps silero-vad==6.2.3``; ``make`` does). Of the package's graphs the runtime
two, the same network with the same LSTM state (identical probabilities on the bundled speech):
the sequence one (``silero_vad_16k_sequence.onnx``) takes any number of one stream's chunks in one
call, so a line or a stream catching up costs one call, not one per 32 ms; the batched one
(``silero_vad_16k_op15.onnx``) takes one chunk of each of many streams, so a round of live streams,
each with a chunk of new audio, costs one call (``advance_many``), not one per stream. Each row is
64 samples of the previous chunk then the chunk's 512; the LSTM state (h, c) goes from call to
call. ``VadTrack`` keeps it for one stream and runs every whole chunk as its audio comes.
"""

from __future__ import annotations

import importlib.metadata
import threading
from pathlib import Path

import numpy as np

SUPPORTED_SILERO = "6.2.3"
MODEL_FILE = "silero_vad/data/silero_vad_16k_sequence.onnx"
BATCH_MODEL_FILE = "silero_vad/data/silero_vad_16k_op15.onnx"
CHUNK = 512  # samples per probability (32 ms of the runtime's 16 kHz audio; the graph is for 16 kHz only)
CONTEXT = 64  # samples of the previous chunk each call sees first
STATE_SHAPE = (1, 1, 128)  # each of the LSTM's h and c, per stream


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
    for file in (MODEL_FILE, BATCH_MODEL_FILE):
        if not Path(str(dist.locate_file(file))).is_file():
            raise VadUnavailableError(f"silero-vad {dist.version} is installed but has no {file} "
                                      f"(supported: silero-vad {SUPPORTED_SILERO})")
    return Path(str(dist.locate_file(MODEL_FILE)))


class SileroVad:
    """Silero VAD's two graphs, each one session serving every thread. Called: one stream's rows [n, 576]
    (each the previous chunk's last 64 samples, then a chunk's 512) and its LSTM state (h, c) -> speech
    probabilities [n] and the next state (the sequence graph). ``many``: one row of each of B streams
    and their states (the batched graph)."""

    def __init__(self, path: Path | None = None) -> None:
        """``path``: the sequence graph (default: the installed package's); the batched graph must be beside it
        (``BATCH_MODEL_FILE``'s name), or VadUnavailableError says it is missing."""
        path = vad_model_path() if path is None else Path(path)
        self.session = _load(path, {"input", "h", "c"})
        self.batched = _load(path.parent / Path(BATCH_MODEL_FILE).name, {"input", "state", "sr"})
        self.path = path

    def __call__(self, rows: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One stream's consecutive chunks."""
        probs, h, c = self.session.run(["speech_probs", "hn", "cn"], {
            "input": np.ascontiguousarray(rows, np.float32), "h": h, "c": c})
        return probs, h, c

    def many(self, rows: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One chunk of each of B streams: rows [B, 576] and their states [2, B, 128] (h then c) -> speech
        probabilities [B] and the next states."""
        probs, state = self.batched.run(None, {"input": np.ascontiguousarray(rows, np.float32),
                                               "state": np.ascontiguousarray(state, np.float32),
                                               "sr": np.array(16000, np.int64)})
        return probs.reshape(-1), state


def _load(path: Path, inputs: set[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the graphs carry a few unused initializers ONNX Runtime warns about
    if not path.is_file():
        raise VadUnavailableError(f"{path}: no such file (silero-vad {SUPPORTED_SILERO} ships it)")
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise VadUnavailableError(f"{path}: not a model ONNX Runtime can load ({e})") from None
    names = {i.name for i in session.get_inputs()}
    if names != inputs:
        raise VadUnavailableError(f"{path}: inputs {sorted(names)}, expected {', '.join(sorted(inputs))} "
                                  f"(supported: silero-vad {SUPPORTED_SILERO})")
    return session


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
        self._h = np.zeros(STATE_SHAPE, np.float32)
        self._c = np.zeros(STATE_SHAPE, np.float32)
        self._context = np.zeros(CONTEXT, np.float32)

    def advance(self, audio: np.ndarray, offset: int, samples: int, ended: bool = False) -> None:
        """Compute every whole chunk in audio samples [.., samples), in one call; ``audio`` holds the stream
        from absolute sample ``offset`` on. ``ended``: the last partial chunk too, padded with silence.
        Chunks whose audio is no longer held (a stream that shed frames) count as silence."""
        rows = self.new_rows(audio, offset, samples, ended)
        if len(rows):
            self.compute(rows)

    def compute(self, rows: np.ndarray) -> None:
        """The probabilities of ``new_rows``' chunks, in one call of the sequence graph."""
        probs, self._h, self._c = self.model(rows, self._h, self._c)
        self.take(np.asarray(probs, np.float32).reshape(-1), rows)

    def new_rows(self, audio: np.ndarray, offset: int, samples: int, ended: bool = False) -> np.ndarray:
        """The model's rows [k, 576] of the chunks ``advance`` would compute now (``compute`` them, or ``take``
        their probabilities from a batched call). Chunks whose audio is gone are counted as silence here, and
        the state starts again after them."""
        end_chunk = -(-samples // CHUNK) if ended else samples // CHUNK
        if end_chunk <= self.chunks:
            return np.zeros((0, CONTEXT + CHUNK), np.float32)
        lost = max(0, -(-offset // CHUNK) - self.chunks)
        if lost:  # their audio was dropped: no speech there, and the state starts again after them
            self._append(np.zeros(min(lost, end_chunk - self.chunks), np.float32))
            self._h[:] = 0.0
            self._c[:] = 0.0
            self._context[:] = 0.0
            if end_chunk <= self.chunks:
                return np.zeros((0, CONTEXT + CHUNK), np.float32)
        s0, s1 = self.chunks * CHUNK - offset, end_chunk * CHUNK - offset
        new = np.asarray(audio[s0:s1], np.float32)
        new = np.concatenate([self._context, new, np.zeros(s1 - s0 - new.size, np.float32)])
        return np.lib.stride_tricks.sliding_window_view(new, CONTEXT + CHUNK)[::CHUNK]

    def take(self, probs: np.ndarray, rows: np.ndarray) -> None:
        """The probabilities of ``new_rows``' chunks (the model's state already moved past them)."""
        self._context = rows[-1, -CONTEXT:].copy()
        self._append(probs)

    @property
    def state(self) -> np.ndarray:
        """The LSTM state as the batched graph takes it: [2, 1, 128] (h then c)."""
        return np.concatenate([self._h, self._c])

    @state.setter
    def state(self, value: np.ndarray) -> None:
        self._h, self._c = value[:1].copy(), value[1:].copy()

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


def advance_many(tracks: list[VadTrack], audio: list[tuple[np.ndarray, int, int, bool]]) -> None:
    """``track.advance(*args)`` for each track and its audio args (the tracks share one model): the tracks
    with one new chunk (a round of live streams) in one batched call, the others (a stream catching up, a
    line) each in its own call, as ``advance`` computes them."""
    rows = [(track, track.new_rows(*args)) for track, args in zip(tracks, audio, strict=True)]
    single = [(track, r) for track, r in rows if len(r) == 1]
    if single:
        model = single[0][0].model
        probs, state = model.many(np.concatenate([r for _, r in single]),
                                  np.concatenate([track.state for track, _ in single], axis=1))
        for i, (track, r) in enumerate(single):
            track.state = state[:, i : i + 1]
            track.take(probs[i : i + 1].astype(np.float32), r)
    for track, r in rows:
        if len(r) > 1:
            track.compute(r)


def speech_probabilities(audio: np.ndarray, model: SileroVad | None = None) -> np.ndarray:
    """Speech probability of every 32 ms chunk of a whole 16 kHz clip (the last one padded)."""
    track = VadTrack(model or shared_vad())
    audio = np.asarray(audio, np.float32).reshape(-1)
    track.advance(audio, 0, audio.size, ended=True)
    return track.probs(0, track.chunks)
