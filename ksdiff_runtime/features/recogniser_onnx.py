"""hama's phoneme recogniser in ONNX Runtime: the recogniser the runtime runs (no torch, no libhama).

The graph ``ksdiff_runtime/assets/recogniser.onnx`` is the PyTorch port
(``ksdiff_runtime.features.recogniser``) exported without its weights (``export_onnx``;
``ksdiff-runtime export --recogniser`` rewrites it): every weight is an initializer named as the
module's state dict, marked external, with no data. At load time the weights are read from the
installed hama's ``asr_waveform.hama`` with numpy (``hama_weights``), widened to float32 and given
to the session as those initializers (``add_external_initializers``), so ONNX Runtime treats them
as constants: folded and pre-packed once, not re-laid-out on every call (as graph inputs they cost
~1.5 ms a call). The weights never enter this repository; hama is not imported and its native
library is not loaded.

One ``OnnxRecogniser`` serves every thread: ONNX Runtime sessions may run concurrently, and each
call computes on its calling thread (one intra-op thread by default, as libhama did), so a
front-end's pool of threads runs that many clips at once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ksdiff_runtime.features.hama_weights import (
    HamaFormatError,
    format_error,
    hama_weights_path,
    recogniser_weights,
)

GRAPH = Path(__file__).resolve().parent.parent / "assets" / "recogniser.onnx"
HOP = 320  # samples per output frame (20 ms): out_lengths = lengths // HOP + 1
CLASSES = 191
MIN_SAMPLES = 201  # the STFT's reflect padding needs more than n_fft / 2 samples


class OnnxRecogniser:
    """waveform [B, N] (16 kHz, zero-padded) + lengths [B] -> log-probabilities [B, N // 320 + 1, 191]
    and out_lengths [B]; frames at or past a clip's out_length are 0."""

    def __init__(self, weights: Path | None = None, graph: Path = GRAPH, threads: int = 1) -> None:
        import onnxruntime as ort

        path = hama_weights_path() if weights is None else Path(weights)
        arrays = recogniser_weights(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        names = sorted(arrays)
        self._weights = [ort.OrtValue.ortvalue_from_numpy(arrays[n]) for n in names]
        opts.add_external_initializers(names, self._weights)
        try:
            self.session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # a tensor missing, unknown to the graph, of another shape or type
            if not any(word in str(e) for word in ("nitializ", "Replacement tensor", "xternal data")):
                raise
            raise format_error(path, f"tensors do not match the recogniser (ONNX Runtime: {e})") from None
        self._arrays = arrays  # the session's weights (self._weights) point into these
        self.path = path

    def __call__(self, waveform: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        waveform = np.ascontiguousarray(waveform, dtype=np.float32)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        if lengths.size and int(lengths.min()) < MIN_SAMPLES:
            raise ValueError(f"clips need at least {MIN_SAMPLES} samples for the STFT's reflect padding")
        log_probs, out_lengths = self.session.run(["log_probs", "out_lengths"],
                                                  {"waveform": waveform, "lengths": lengths})
        return log_probs, out_lengths

    def log_probs(self, segment: np.ndarray) -> np.ndarray:
        """Log-probabilities [segment.size // 320 + 1, 191] of one clip. A clip shorter than the
        STFT's padding (under 201 samples: one frame) is zero-padded to 201 samples first."""
        return self.many_log_probs([segment])[0]

    def many_log_probs(self, segments: list[np.ndarray]) -> list[np.ndarray]:
        """``log_probs`` of several clips in one call (zero-padded to the longest, with their lengths)."""
        clips = []
        for segment in segments:
            wav = np.asarray(segment, dtype=np.float32).reshape(-1)
            clips.append(np.pad(wav, (0, MIN_SAMPLES - wav.size)) if wav.size < MIN_SAMPLES else wav)
        lengths = np.array([c.size for c in clips], dtype=np.int64)
        batch = np.zeros((len(clips), int(lengths.max())), np.float32)
        for i, c in enumerate(clips):
            batch[i, : c.size] = c
        log_probs, out_lengths = self(batch, lengths)
        return [log_probs[i, : int(n)] for i, n in enumerate(out_lengths)]


_SHARED: dict[Path, OnnxRecogniser] = {}
_SHARED_LOCK = threading.Lock()


def shared_recogniser() -> OnnxRecogniser:
    """The process's recogniser with the installed hama's weights, loaded on first use."""
    path = hama_weights_path()
    with _SHARED_LOCK:
        if path not in _SHARED:
            _SHARED[path] = OnnxRecogniser(path)
        return _SHARED[path]


__all__ = ["CLASSES", "GRAPH", "HOP", "HamaFormatError", "OnnxRecogniser", "shared_recogniser"]
