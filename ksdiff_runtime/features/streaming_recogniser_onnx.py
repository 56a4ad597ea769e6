"""The streaming recogniser in ONNX Runtime: a chunk of every ready stream in one call, state explicit.

The graph ``ksdiff_runtime/assets/streaming_recogniser.onnx`` is ``StreamStep``
(``features/streaming_recogniser.py``; ``ksdiff-runtime export --recogniser`` rewrites it) exported
without weights, as ``recogniser.onnx``: every weight an external initializer with no data, supplied
here at load time. Its inputs are whole chunks of output frames (``lookahead + 1`` frames of 20 ms a
chunk) of B streams and each stream's state after its previous frames; its outputs their
log-probabilities and the state after them. ``step`` gives every ready stream all of its ready
chunks in a call (streams with as many chunks ready share it); ``whole`` gives a whole clip all of its
chunks in one call. All of a stream's state lives in its ``RecogniserStream`` (numpy arrays on the
host), so a batch row is a stream only for the length of one
call: nothing of one stream can reach another, whatever rows they are given.

A stream's frames equal the chunked recogniser's over the whole clip (``StreamingRecogniser
.forward_chunked``, tests/test_streaming_recogniser_onnx.py): frame q is final once the stream holds
``320 (e + 1) + 40`` samples, e the last frame of q's chunk, or once it has ended.

Weights: hama's (``hama_weights``; chunked, undistilled: a different function from the full model) or
a distilled student's (``training.streaming_distil --export-weights``): an ``.npz`` of the trained
tensors, hama's STFT kernels and mel filterbank read from the installed hama as always.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ksdiff_runtime.features.hama_weights import format_error, hama_weights_path, recogniser_weights
from ksdiff_runtime.parallel import row_parts

STEP_GRAPH = Path(__file__).resolve().parent.parent / "assets" / "streaming_recogniser.onnx"
HOP = 320  # samples per output frame (20 ms)
N_FFT = 400
REACH = 40  # samples past a chunk's last frame's end the STFT reads (360 past its centre)
MAX_LOOKAHEAD = 3
MIN_SAMPLES = 201  # the STFT's reflect padding needs more than n_fft / 2 samples
STEP_BATCH = 64  # streams in one call at most
MAX_CHUNKS = 25  # chunks of one stream in one call at most (a stream catching up takes several calls)
# frames of a whole clip in one call at most (``whole``): a call's attention scores are frames x (left context +
# frames), so a clip in one call took memory with the square of its length (120 s: 3.1 GB, 20 min did not fit in
# 24 GB); in pieces of this many it grows with the length, and a piece is long enough to keep the calls few
WHOLE_FRAMES = 1500
# streams a part of a ``parallel`` call has at least: a call of fewer than twice this many runs whole. Since the
# graph computes frames in rows, a second part costs more than it saves below a dozen streams, about what it saves
# at 12, and less from 16: in paced live rounds on the 2-core EPYC (benchmarks/recogniser_parts.py) the call whole
# against two parts took 4 streams 2.26 / 2.75 ms, 8: 3.53 / 3.89, 10: 4.29 / 4.84, 12: 4.88 / 5.02 (their blocks'
# ranges overlapping), 16: 6.23 / 5.77 (docs/STREAMING_RECOGNISER.md)
MIN_PART_STREAMS = 6


@dataclass
class RecogniserStream:
    """One stream's audio and recogniser state (``OnnxStreamingRecogniser.new_stream``)."""

    chunk: int
    keys: np.ndarray  # [blocks, heads, left_frames, 36]
    values: np.ndarray
    conv: np.ndarray  # [blocks, 15, 144]
    cache_valid: np.ndarray  # [left_frames]
    audio: np.ndarray  # samples [audio_start, samples)
    audio_start: int = 0
    samples: int = 0
    ended: bool = False
    frames_out: int = 0  # frames computed (the next chunk's first frame)
    # log-probabilities computed and not yet handed out by ``step`` (kept with the state they came with, so
    # a step that fails part-way loses nothing: the next one hands them out)
    computed: list[np.ndarray] = field(default_factory=list)

    def push(self, samples: np.ndarray) -> None:
        """The stream's next samples (16 kHz mono)."""
        if self.ended:
            raise ValueError("the stream has ended")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.audio = np.concatenate([self.audio, samples])
        self.samples += samples.size

    def end(self) -> None:
        """No more audio: the last chunk is computed as the whole clip's (reflect padding at the end)."""
        if self.samples < MIN_SAMPLES:
            raise ValueError(f"a stream needs at least {MIN_SAMPLES} samples for the STFT's reflect padding")
        self.ended = True

    @property
    def total_frames(self) -> int | None:
        """The stream's frames once it has ended (as the whole clip's), else None."""
        return self.samples // HOP + 1 if self.ended else None

    def ready(self) -> bool:
        """Its next chunk can be computed."""
        return self.ready_chunks() > 0

    def ready_chunks(self) -> int:
        """How many of its next chunks can be computed now (all of its remaining ones once it has ended)."""
        if self.ended:
            return -(-max(0, self.samples // HOP + 1 - self.frames_out) // self.chunk)
        return max(0, ((self.samples - REACH) // HOP - self.frames_out) // self.chunk)

    def final_samples(self, frame: int) -> int:
        """Samples the stream must hold (unless it ended) before frame ``frame`` is final."""
        return HOP * ((frame // self.chunk + 1) * self.chunk) + REACH

    def window(self, frames: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The inputs of the next ``frames`` frames (default: one chunk; a whole number of chunks): audio
        [320 K + 400], mel_mask [2 K + 1], frame_mask [K]."""
        K, q0, n = frames or self.chunk, self.frames_out, self.samples
        idx = np.abs(np.arange(HOP * q0 - HOP - REACH, HOP * (q0 + K) + REACH))  # reflect at the start
        mel = np.arange(2 * q0 - 1, 2 * (q0 + K))
        mel_mask = mel >= 0
        frame_mask = np.ones(K, bool)
        if self.ended:
            idx = np.abs(np.where(idx >= n, 2 * (n - 1) - idx, idx))  # reflect at the end
            mel_mask &= mel <= n // (HOP // 2)
            frame_mask = np.arange(q0, q0 + K) < n // HOP + 1
        rel = np.clip(idx, 0, n - 1) - self.audio_start
        if rel.size and rel.min() < 0:  # cannot happen with the trimming in ``advance``; never read wrapped audio
            raise RuntimeError(f"stream audio from sample {self.audio_start} on cannot give frame {q0}")
        return self.audio[rel], mel_mask.astype(np.float32), frame_mask.astype(np.float32)

    def advance(self, keys: np.ndarray, values: np.ndarray, conv: np.ndarray, cache_valid: np.ndarray,
                frames: int | None = None) -> None:
        """Take the state after the ``frames`` frames just computed (default: one chunk); forget audio no later
        chunk reads."""
        self.keys, self.values, self.conv, self.cache_valid = keys, values, conv, cache_valid
        self.frames_out += frames or self.chunk
        # the next window starts 360 samples before its frame; an end's reflection reads back 320 K + 400
        keep = max(0, min(HOP * self.frames_out - HOP - REACH, self.samples - HOP * (MAX_LOOKAHEAD + 1) - N_FFT))
        if keep - self.audio_start > 16000:
            self.audio = self.audio[keep - self.audio_start :].copy()
            self.audio_start = keep


class OnnxStreamingRecogniser:
    """The chunked recogniser over many streams: ``new_stream``, ``push`` audio into streams, then ``step``
    computes every final chunk of them, the streams with as many chunks ready batched in one call."""

    def __init__(self, weights: Path | None = None, lookahead: int = 2, graph: Path = STEP_GRAPH,
                 threads: int = 1, providers: tuple[str, ...] = ("CPUExecutionProvider",), parallel: int = 1) -> None:
        """``weights``: a distilled student's ``.npz`` (None: hama's own weights, chunked but undistilled);
        ``providers``: ONNX Runtime's execution providers (the CPU's by default; CUDA's on a GPU);
        ``parallel``: a call of many streams (MIN_PART_STREAMS a part at least) is cut into up to this many parts
        run at once (ksdiff_runtime.parallel: on the CPU, one part per core)."""
        import onnxruntime as ort

        if not 0 <= lookahead <= MAX_LOOKAHEAD:
            raise ValueError(f"lookahead must be 0..{MAX_LOOKAHEAD} output frames, got {lookahead}")
        hama = hama_weights_path()
        arrays = recogniser_weights(hama)
        if weights is not None:
            arrays.update(distilled_weights(Path(weights), arrays))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        names = sorted(arrays)
        self._weights = [ort.OrtValue.ortvalue_from_numpy(arrays[n]) for n in names]
        opts.add_external_initializers(names, self._weights)
        try:
            self.session = ort.InferenceSession(str(graph), opts, providers=list(providers))
        except Exception as e:  # a tensor missing, unknown to the graph, of another shape or type
            if not any(word in str(e) for word in ("nitializ", "Replacement tensor", "xternal data")):
                raise
            raise format_error(hama, f"tensors do not match the streaming recogniser (ONNX Runtime: {e})") from None
        self._arrays = arrays  # the session's weights point into these
        self.chunk = lookahead + 1
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self._keys_shape = tuple(shapes["keys"][1:])
        self._conv_shape = tuple(shapes["conv"][1:])
        self.left_frames = int(shapes["cache_valid"][1])
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.parallel = parallel
        self.min_part_streams = MIN_PART_STREAMS
        self._pool = ThreadPoolExecutor(parallel - 1, thread_name_prefix="ksdiff-recogniser") if parallel > 1 else None

    def new_stream(self) -> RecogniserStream:
        """A fresh stream (its state zeros: no cached frame is real)."""
        return RecogniserStream(self.chunk, np.zeros(self._keys_shape, np.float32),
                                np.zeros(self._keys_shape, np.float32), np.zeros(self._conv_shape, np.float32),
                                np.zeros(self.left_frames, np.float32), np.zeros(0, np.float32))

    def step(self, streams: list[RecogniserStream]) -> list[np.ndarray]:
        """Every chunk the streams can compute now; returns each stream's new frames' log-probabilities [n, 191].
        Streams with the same number of chunks ready share a call that computes all of them (a stream's
        chunks in one call are exactly its chunks one by one: each frame sees the same frames): a round
        whose streams have 1 or 2 new frames makes a call for each count, not a second call for every
        stream with two, and each stream's cached state crosses into the graph and back once. If a call
        fails, the frames of the calls before it stay with their streams for the next step."""
        while True:
            by_chunks: dict[int, list[RecogniserStream]] = {}
            for s in streams:
                if (n := min(s.ready_chunks(), MAX_CHUNKS)) > 0:
                    by_chunks.setdefault(n, []).append(s)
            if not by_chunks:
                break
            for n, ready in sorted(by_chunks.items()):
                for k in range(0, len(ready), STEP_BATCH):
                    self._run(ready[k : k + STEP_BATCH], n * self.chunk)
        out = []
        for s in streams:
            out.append(np.concatenate(s.computed) if s.computed else np.zeros((0, 191), np.float32))
            s.computed = []
        return out

    def whole(self, audio: np.ndarray) -> np.ndarray:
        """A whole clip's log-probabilities [n // 320 + 1, 191], in calls of up to WHOLE_FRAMES frames (a short
        clip in one): what a stream fed the clip gives, for a bake or a line. Needs at least 201 samples."""
        stream = self.new_stream()
        stream.push(audio)
        stream.end()
        total = stream.samples // HOP + 1
        piece = max(1, WHOLE_FRAMES // self.chunk) * self.chunk
        while stream.frames_out < total:
            left = -(-(total - stream.frames_out) // self.chunk) * self.chunk  # whole chunks; past the end masked
            self._run([stream], min(piece, left))
        return np.concatenate(stream.computed)[:total]

    def _run(self, streams: list[RecogniserStream], frames: int) -> None:
        """``frames`` (whole chunks) of each stream in one call (or in parts run at once, ``parallel``); each
        stream's state and new log-probabilities are taken only once every part is done."""
        windows = [s.window(frames) for s in streams]
        parts = row_parts(len(streams), self.parallel, self.min_part_streams)
        calls = [self._feeds(streams[a:b], windows[a:b]) for a, b in parts]
        names = ["log_probs", "keys_out", "values_out", "conv_out", "cache_valid_out"]
        later = [self._pool.submit(self.session.run, names, feeds) for feeds in calls[1:]] if self._pool else []
        try:
            results = [self.session.run(names, calls[0])] + [f.result() for f in later]
        finally:
            wait(later)  # no part still running once this returns or raises
        for (a, _), (log_probs, keys, values, conv, valid) in zip(parts, results, strict=True):
            for j in range(len(log_probs)):
                s, n = streams[a + j], int(windows[a + j][2].sum())
                s.computed.append(log_probs[j, :n])
                s.advance(keys[j], values[j], conv[j], valid[j], frames)

    def close(self) -> None:
        """Stop the threads of ``parallel`` calls (the recogniser still runs, on the calling thread)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.parallel = 1

    def _feeds(self, streams: list[RecogniserStream], windows: list[tuple]) -> dict[str, np.ndarray]:
        """The graph's inputs: each stream's window and state, one row per stream."""
        return {
            "audio": np.stack([w[0] for w in windows]),
            "mel_mask": np.stack([w[1] for w in windows]),
            "frame_mask": np.stack([w[2] for w in windows]),
            "chunk": np.array(self.chunk, np.int64),
            "keys": np.stack([s.keys for s in streams]),
            "values": np.stack([s.values for s in streams]),
            "conv": np.stack([s.conv for s in streams]),
            "cache_valid": np.stack([s.cache_valid for s in streams]),
        }


def distilled_weights(path: Path, hama: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A distilled student's trained tensors (an ``.npz`` written by ``streaming_distil --export-weights``),
    as float32, checked against hama's names and shapes."""
    try:
        with np.load(path) as f:
            arrays = {name: f[name].astype(np.float32) for name in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a streaming recogniser weights file ({e})") from None
    unknown = sorted(set(arrays) - set(hama))
    wrong = sorted(n for n in set(arrays) & set(hama) if arrays[n].shape != hama[n].shape)
    if unknown or wrong or not arrays:
        raise ValueError(f"{path}: not the recogniser's tensors (unknown {unknown[:3]}, other shapes {wrong[:3]})")
    return arrays


__all__ = ["STEP_GRAPH", "OnnxStreamingRecogniser", "RecogniserStream", "distilled_weights"]
