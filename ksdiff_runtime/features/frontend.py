"""Acoustic front-ends: 16 kHz mono audio -> per-motion-frame features [T, dim] at ``motion.FPS``.

Features are computed in numpy outside the neural network, so the exported graph takes feature
tensors and any backend (torch, ONNX Runtime, TensorRT) sees the same numbers.

Every front-end here is *blockwise*: the stream is cut into blocks of ``block_ms`` aligned to the
stream start, and the features of a block's motion frames are computed from the audio
[block_start - left_context_ms, block_end + lookahead_ms] (clamped to what exists). The
whole-clip call is literally the concatenation of those blocks, so features seen in training
are bit-for-bit the features the streaming engine computes, provided the engine calls
``block_features(audio_so_far, k)`` only once ``len(audio_so_far) >= samples_needed(k)`` or
the stream has ended (then ``audio_so_far`` is the whole stream).

Native frames are interpolated to motion frame times i / FPS (linear; a time before the first
or after the last native frame of the block takes the edge value).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.signal

from ksdiff_runtime.motion import FPS, SAMPLE_RATE, num_frames

# hama's recogniser: STFT hop 160 subsampled by 2 -> one output frame per 320 samples (20 ms),
# frame q centred on sample 320 q (centred STFT).
HAMA_HOP = 320
HAMA_CLASSES = 191
HAMA_BLANK = HAMA_CLASSES - 1  # the CTC blank: the last class (<wb> and <blank> close hama's inventory)
# Log-probabilities below this carry no information but would dominate the feature's range.
PPG_LOG_FLOOR = -10.0
# /p/, /b/ and /m/ in hama's inventory (hama.vocab.Vocabulary's decoder; tests check it against hama), for what
# reads the recogniser's bilabials from the features without hama (engine/closure.py)
HAMA_BILABIALS = {"p": 35, "b": 10, "m": 31}
# Offline (bake) recognition of clips longer than 2 pieces of OFFLINE_MIN_PIECE_S runs in pieces
# on all cores, each with this much audio context on both sides.
OFFLINE_MIN_PIECE_S = 1
OFFLINE_PIECE_CONTEXT_MS = 500
# ... and in pieces of at most this long, however few cores: whole-utterance attention takes memory with the square
# of a piece's length (a 240 s bake in 2 pieces peaked at 5.7 GB). libhama itself read at most 30 s at once.
OFFLINE_MAX_PIECE_S = 30
# Streams' segments recognised in one call (an engine round): at most this many at once
RECOGNISER_BATCH = 32

MEL_N_FFT = 512
MEL_WIN = 400
MEL_HOP = 160
# log10 mel power floor (-80 dB): digital silence maps to a finite value.
MEL_LOG_FLOOR = -8.0
# Fixed affine map of log10 mel power to ~[-1, 1]: speech at normal level spans about
# -8 .. +1 (measured on espeak-ng and noise), so (x + 4) / 4 puts silence at -1 and loud
# speech near +1. Fixed, not per-clip, so streaming and whole-clip features agree.
MEL_LOG_CENTER = -4.0
MEL_LOG_SCALE = 4.0
# FrontEndConfig.recogniser's values
RECOGNISERS = ("full-context", "streaming")
# A group's lookahead is counted from the end of its last frame's period (frame f at f / FPS s holds until
# (f + 1) / FPS s). It may be negative, down to (not including) minus one period: the group is then read
# before its last frame's period has all been heard, but never before its instant (docs/ENGINE.md,
# "Reading a frame early").
FRAME_PERIOD_MS = 1000.0 / FPS


@dataclass(frozen=True)
class FrontEndConfig:
    """Front-end choice and its blockwise schedule (all times in ms).

    Defaults from ``ksdiff-runtime frontend-study`` (benchmarks/frontend_stability.json): 60 ms
    lookahead is the knee (0 -> 60 ms buys most of the agreement with the whole-utterance PPG;
    more costs latency for little), and 500 ms of left context keeps the recogniser at ~0.3 of
    one core per stream (1000 ms agrees a little better at ~1.7x the CPU).
    """

    name: str = "ppg"
    block_ms: int = 100
    left_context_ms: int = 500
    lookahead_ms: int = 60
    n_mels: int = 40
    # Wav2Vec2FrontEnd only: local model directory and which hidden state to take.
    model_dir: str | None = None
    layer: int = -1
    # PosteriorgramFrontEnd only: the recogniser a model's training features come from, one of RECOGNISERS:
    # hama's full-context one over each window (and the whole clip), or the distilled streaming one
    # (features/streaming_frontend.py). The runtime may serve either (engine's streaming_recogniser).
    recogniser: str = "full-context"

    def __post_init__(self) -> None:
        if self.recogniser not in RECOGNISERS:
            raise ValueError(f"unknown recogniser {self.recogniser!r}; known: {', '.join(RECOGNISERS)}")
        if self.recogniser != "full-context" and self.name != "ppg":
            raise ValueError(f"recogniser {self.recogniser!r} is for the 'ppg' front-end, not {self.name!r}")


def _ms_to_samples(ms: float) -> int:
    return round(ms * SAMPLE_RATE / 1000)


class BlockwiseFrontEnd:
    """Shared blockwise schedule; subclasses provide ``_native(segment) -> (frames, hop, offset)``.

    ``_native`` returns native frames [N, dim] for a segment of audio, with native frame q of
    the segment centred on segment sample ``offset + q * hop``.
    """

    name: ClassVar[str] = ""
    dim: int
    # Segment starts must sit on this many samples so native frames land on the same absolute
    # times whatever the segment start (otherwise the blockwise grid would jitter).
    segment_align: int = 1

    def __init__(self, config: FrontEndConfig) -> None:
        if config.block_ms <= 0 or config.block_ms % 100:
            # 100 ms is the smallest span holding a whole number of 30 fps frames (3) and of
            # 20 ms recogniser frames (5).
            raise ValueError(f"block_ms must be a positive multiple of 100, got {config.block_ms}")
        if config.left_context_ms < 0:
            raise ValueError("left_context_ms must be >= 0")
        if config.lookahead_ms <= -FRAME_PERIOD_MS:
            # a group is read at the earliest once the audio at its last frame's instant is there
            raise ValueError(f"lookahead_ms must be > -{FRAME_PERIOD_MS:.1f} (a frame's period), "
                             f"got {config.lookahead_ms}")
        self.config = config
        self.block_samples = _ms_to_samples(config.block_ms)
        self.frames_per_block = config.block_ms * FPS // 1000
        left = _ms_to_samples(config.left_context_ms)
        # Round the left context up to the alignment so the segment start stays on the grid.
        self.left_samples = -(-left // self.segment_align) * self.segment_align
        self.lookahead_samples = _ms_to_samples(config.lookahead_ms)

    # --- the streaming interface -------------------------------------------------------------
    def num_blocks(self, num_samples: int) -> int:
        """Blocks covering the motion frames of a clip of ``num_samples``."""
        return -(-num_frames(num_samples) // self.frames_per_block)

    def samples_needed(self, block_index: int) -> int:
        """Audio samples that must exist (unless the stream ended) before computing a block."""
        return (block_index + 1) * self.block_samples + self.lookahead_samples

    def block_features(self, audio: np.ndarray, block_index: int) -> np.ndarray:
        """Features [n, dim] of the motion frames in block ``block_index``.

        ``audio`` is the stream so far (16 kHz mono float32, sample 0 = stream start); ``n`` is
        ``frames_per_block`` except for the last block of a finished stream.
        """
        f0 = block_index * self.frames_per_block
        return self.range_features(audio, f0, f0 + self.frames_per_block)

    # A block is one case of a frame range: block k is frames [k * fpb, (k + 1) * fpb). The
    # streaming engine may use shorter ranges (fewer frames per front-end call = lower latency,
    # at the cost of more calls); with whole blocks the result is bit for bit the block's.
    def range_samples(self, f0: int, f1: int) -> tuple[int, int]:
        """Audio span [s0, s1) (absolute samples, s0 >= 0) the features of frames [f0, f1) come from."""
        start = round(f0 * SAMPLE_RATE / FPS)
        s0 = max(0, (start - self.left_samples) // self.segment_align * self.segment_align)
        # ceil: the first sample count at which frame f1 - 1 exists (num_frames); exact for whole blocks
        return s0, -(-f1 * SAMPLE_RATE // FPS) + self.lookahead_samples

    def range_features(self, audio: np.ndarray, f0: int, f1: int, offset: int = 0) -> np.ndarray:
        """Features [n, dim] of motion frames [f0, f1) (fewer at the end of a finished stream).

        ``audio`` holds the stream from absolute sample ``offset`` on (a streaming engine keeps
        only recent audio); it must reach ``range_samples(f0, f1)[1]`` unless the stream ended.
        """
        return self.many_range_features([(audio, f0, f1, offset)])[0]

    def many_range_features(self, requests: list[tuple[np.ndarray, int, int, int]]) -> list[np.ndarray]:
        """``range_features`` of several (audio, f0, f1, offset) requests, e.g. one per stream of an engine
        round: a front-end with a network runs it once over all their segments (``_natives``)."""
        spans = []
        for audio, f0, f1, offset in requests:
            audio = np.asarray(audio, dtype=np.float32)
            s0, s1 = self.range_samples(f0, f1)  # from the nominal range, as the stream's audio allows
            if offset + audio.size < s1:  # a finished stream's last range: the frames its audio holds
                f1 = min(f1, num_frames(offset + audio.size))
            if f1 > f0 and s0 < offset:
                raise ValueError(f"audio from sample {offset} on cannot give frames from {f0} (needs sample {s0})")
            s1 = min(offset + audio.size, s1)
            spans.append((f0, f1, s0, audio[s0 - offset : s1 - offset] if f1 > f0 else None))
        natives = iter(self._natives([seg for _, _, _, seg in spans if seg is not None]))
        out = []
        for f0, f1, s0, seg in spans:
            if seg is None:
                out.append(np.zeros((0, self.dim), dtype=np.float32))
                continue
            native, hop, native_offset = next(natives)
            # Keep the native frames that bracket the range's motion frame times.
            centers = s0 + native_offset + hop * np.arange(native.shape[0])
            t = np.arange(f0, f1) * (SAMPLE_RATE / FPS)  # motion frame times in samples
            q0 = min(max(0, math.floor((t[0] - s0 - native_offset) / hop)), native.shape[0] - 1)
            q1 = min(native.shape[0], math.floor((t[-1] - s0 - native_offset) / hop) + 2)
            out.append(_interp(native[q0:q1], centers[q0:q1], t))
        return out

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        """Whole-clip features [num_frames(len(audio)), dim]: exactly the blockwise procedure."""
        return self.grouped(audio16k, self.frames_per_block)

    def grouped(self, audio16k: np.ndarray, group_frames: int) -> np.ndarray:
        """Whole-clip features [num_frames(len(audio)), dim] as a live stream computes them in groups of
        ``group_frames`` motion frames (a preset's ``feature_block_frames``; whole blocks: ``__call__``), each
        group from the audio up to its end (``range_samples``) and nothing after it."""
        if group_frames < 1:
            raise ValueError(f"group_frames must be >= 1, not {group_frames}")
        audio = np.asarray(audio16k, dtype=np.float32)
        total = num_frames(audio.size)
        groups = [self.range_features(audio, f0, f0 + group_frames) for f0 in range(0, total, group_frames)]
        if not groups:
            return np.zeros((0, self.dim), dtype=np.float32)
        # (a negative lookahead gives the last group a frame the clip does not have when it ends in that
        # frame's last moments)
        return np.concatenate(groups, axis=0)[:total]

    def offline(self, audio16k: np.ndarray) -> np.ndarray:
        """Whole-clip features from one pass over the whole clip (the offline schedule).

        Several times cheaper than the blockwise schedule (no overlapping segments) and with
        full context, so offline bakes use it; the model is trained on both schedules.
        """
        audio = np.asarray(audio16k, dtype=np.float32)
        total = num_frames(audio.size)
        if total == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        native, hop, offset = self._native_offline(audio)
        centers = offset + hop * np.arange(native.shape[0])
        return _interp(native, centers, np.arange(total) * (SAMPLE_RATE / FPS))

    def _native(self, segment: np.ndarray) -> tuple[np.ndarray, int, float]:
        raise NotImplementedError

    def _natives(self, segments: list[np.ndarray]) -> list[tuple[np.ndarray, int, float]]:
        """``_native`` of several segments; a front-end may batch them."""
        return [self._native(segment) for segment in segments]

    def _native_offline(self, audio: np.ndarray) -> tuple[np.ndarray, int, float]:
        """Native frames of a whole clip for ``offline``; a front-end may parallelise this."""
        return self._native(audio)


def _interp(native: np.ndarray, centers: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation of native frames [N, D] at times ``centers`` to times ``t``; edges held."""
    if native.shape[0] == 1:
        return np.repeat(native, t.size, axis=0).astype(np.float32)
    pos = np.interp(t, centers, np.arange(centers.size, dtype=np.float64))
    i0 = np.minimum(np.floor(pos).astype(np.int64), centers.size - 2)
    w = (pos - i0)[:, None]
    return ((1.0 - w) * native[i0] + w * native[i0 + 1]).astype(np.float32)


# --- log-mel --------------------------------------------------------------------------------
def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), (200.0 / 3) * mel)


def mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32 triangular filters from 0 Hz to sr / 2 on Slaney's mel scale, each of
    unit area (Slaney norm): ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)``, computed here
    because importing librosa's filters module compiles numba code on a new install (~20 s on 2 cores).
    tests/test_audio.py checks it against librosa."""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


class LogMelFrontEnd(BlockwiseFrontEnd):
    """40 log-mel bands (25 ms window, 10 ms hop), fixed affine normalisation.

    Framing is done here rather than by ``librosa.feature.melspectrogram`` so that a frame is a
    pure function of its absolute window (zeros outside the audio), which is what makes the
    blockwise and whole-clip results identical; the numbers match librosa's ``center=True,
    pad_mode="constant"`` output.
    """

    name = "logmel"
    segment_align = MEL_HOP

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        config = config or FrontEndConfig(name="logmel", left_context_ms=0, lookahead_ms=0)
        super().__init__(config)
        self.dim = config.n_mels
        self._fb = mel_filterbank(SAMPLE_RATE, MEL_N_FFT, config.n_mels)
        window = scipy.signal.get_window("hann", MEL_WIN, fftbins=True)  # periodic, as librosa's
        left = (MEL_N_FFT - MEL_WIN) // 2
        self._window = np.pad(window, (left, MEL_N_FFT - MEL_WIN - left)).astype(np.float32)  # centred

    def frames(self, audio: np.ndarray, n: int, hop: int = MEL_HOP) -> np.ndarray:
        """``n`` normalised log-mel frames, frame j centred on sample j * hop (0 outside the audio)."""
        half = MEL_N_FFT // 2
        lo = -half
        hi = (n - 1) * hop + half
        # Zero-pad so every window is complete: the result depends only on the window's samples.
        padded = np.zeros(max(0, hi - lo), dtype=np.float32)
        a0, a1 = max(lo, 0), min(hi, audio.size)
        if a1 > a0:
            padded[a0 - lo : a1 - lo] = audio[a0:a1]
        idx = np.arange(MEL_N_FFT)[None, :] + hop * np.arange(n)[:, None]
        spec = np.fft.rfft(padded[idx] * self._window, axis=1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        mel = power @ self._fb.T
        log = np.log10(np.maximum(mel, 10.0**MEL_LOG_FLOOR))
        return ((log - MEL_LOG_CENTER) / MEL_LOG_SCALE).astype(np.float32)

    def _native(self, segment: np.ndarray) -> tuple[np.ndarray, int, float]:
        n = segment.size // MEL_HOP + 1  # as librosa with center=True
        return self.frames(segment, n), MEL_HOP, 0.0


# --- phonetic posteriorgram -----------------------------------------------------------------
PPG_SCALE = 5.0  # log-probabilities [PPG_LOG_FLOOR, 0] -> features [-1, 1]: (lp + PPG_SCALE) / PPG_SCALE


def ppg_features(log_probs: np.ndarray) -> np.ndarray:
    """The posteriorgram features of recogniser log-probabilities: floored at PPG_LOG_FLOOR, mapped to [-1, 1]."""
    return (np.maximum(log_probs, PPG_LOG_FLOOR) + PPG_SCALE) / PPG_SCALE


def ppg_probabilities(ppg: np.ndarray) -> np.ndarray:
    """The probabilities posteriorgram features stand for (``ppg_features`` undone; the floor stays)."""
    return np.exp(PPG_SCALE * np.asarray(ppg, np.float32) - PPG_SCALE)


class PosteriorgramFrontEnd(BlockwiseFrontEnd):
    """hama phoneme-recogniser posteriorgram (191) + log-mel (n_mels).

    The recogniser is the ONNX Runtime port (``features/recogniser_onnx.py``, docs/RECOGNISER.md)
    with hama's weights; libhama is not used.

    The PPG is the recogniser's log-probabilities, floored at -10 and mapped to [-1, 1]
    ((lp + 5) / 5), not probabilities: CTC output is peaky (blank ~1 between one-frame phoneme
    spikes), so probabilities are near one-hot and say nothing between spikes, while the
    log-probabilities keep the runner-up phonemes (which mouth shape is coming or fading),
    and the floor removes the unbounded tail that carries no information.
    The log-mel part adds what phoneme classes lose: loudness and spectral shape.
    """

    name = "ppg"
    segment_align = HAMA_HOP

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        from ksdiff_runtime.features.recogniser_onnx import shared_recogniser  # local: only this front-end needs it

        config = config or FrontEndConfig()
        super().__init__(config)
        self._mel = LogMelFrontEnd(config)
        self.dim = HAMA_CLASSES + self._mel.dim
        self._asr = shared_recogniser()  # ONNX Runtime, weights from the installed hama; shared by all threads
        self.offline_workers = os.cpu_count() or 1

    def log_probs(self, segment: np.ndarray) -> np.ndarray:
        """Raw recogniser log-probabilities [segment.size // 320 + 1, 191] of one utterance."""
        return self._asr.log_probs(segment)

    def _native(self, segment: np.ndarray) -> tuple[np.ndarray, int, float]:
        return self._with_mel(segment, self.log_probs(segment))

    def _natives(self, segments: list[np.ndarray]) -> list[tuple[np.ndarray, int, float]]:
        """The recogniser once over several segments (an engine round's streams), zero-padded to the longest
        of a batch with their lengths (a clip's output does not depend on its batch: docs/RECOGNISER.md);
        batches of similar lengths, at most RECOGNISER_BATCH clips each."""
        if len(segments) < 2:
            return [self._native(segment) for segment in segments]
        order = sorted(range(len(segments)), key=lambda i: segments[i].size)
        out: list = [None] * len(segments)
        for k in range(0, len(order), RECOGNISER_BATCH):
            part = order[k : k + RECOGNISER_BATCH]
            log_probs = self._asr.many_log_probs([segments[i] for i in part])
            for i, lp in zip(part, log_probs, strict=True):
                out[i] = self._with_mel(segments[i], lp)
        return out

    def _with_mel(self, segment: np.ndarray, log_probs: np.ndarray) -> tuple[np.ndarray, int, float]:
        ppg = ppg_features(log_probs)
        # Log-mel on hama's 20 ms grid (every other mel frame): one grid, one interpolation.
        mel = self._mel.frames(segment, ppg.shape[0], hop=HAMA_HOP)
        return np.concatenate([ppg, mel], axis=1), HAMA_HOP, 0.0

    def _native_offline(self, audio: np.ndarray) -> tuple[np.ndarray, int, float]:
        """The recogniser over a long clip in pieces on every core (one intra-op thread per call):
        each piece is recognised with OFFLINE_PIECE_CONTEXT_MS of audio on both sides and keeps
        only its own frames, so a bake runs ~cores times faster at the cost of context beyond 1 s.
        A piece is at most OFFLINE_MAX_PIECE_S long (its memory grows with the square of its length)."""
        n_native = audio.size // HAMA_HOP + 1
        pieces = max(min(self.offline_workers, audio.size // (OFFLINE_MIN_PIECE_S * SAMPLE_RATE)),
                     -(-audio.size // (OFFLINE_MAX_PIECE_S * SAMPLE_RATE)))
        if pieces <= 1:
            return self._native(audio)
        bounds = np.linspace(0, n_native, pieces + 1).round().astype(int)
        ctx = _ms_to_samples(OFFLINE_PIECE_CONTEXT_MS) // HAMA_HOP

        def piece(i: int) -> np.ndarray:
            q0, q1 = int(bounds[i]), int(bounds[i + 1])
            c0, c1 = max(0, q0 - ctx), min(n_native, q1 + ctx)
            # native frame q is centred on sample q * HAMA_HOP, so a segment from sample c0 * HAMA_HOP
            # puts whole-clip frame c0 + j at its frame j
            lp = self.log_probs(audio[c0 * HAMA_HOP : c1 * HAMA_HOP])
            return lp[q0 - c0 : q1 - c0]

        with ThreadPoolExecutor(min(pieces, self.offline_workers)) as pool:
            log_probs = np.concatenate(list(pool.map(piece, range(pieces))))
        return self._with_mel(audio, log_probs)


# --- wav2vec2 / HuBERT ----------------------------------------------------------------------
class Wav2Vec2FrontEnd(BlockwiseFrontEnd):
    """Frozen wav2vec2/HuBERT hidden states from a local model directory (never downloaded)."""

    name = "wav2vec2"
    segment_align = 320

    def __init__(self, model_dir: str | Path | None = None, config: FrontEndConfig | None = None) -> None:
        config = config or FrontEndConfig(name="wav2vec2", model_dir=None if model_dir is None else str(model_dir))
        model_dir = model_dir if model_dir is not None else config.model_dir
        if model_dir is None:
            raise ValueError("Wav2Vec2FrontEnd needs model_dir: a local directory with a saved model")
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a saved transformers model directory (no config.json)")
        try:
            import torch
            from transformers import AutoConfig, AutoModel
        except ImportError as exc:
            raise ImportError("Wav2Vec2FrontEnd needs transformers: pip install 'ksdiff-runtime[ssl]'") from exc
        model_config = AutoConfig.from_pretrained(path, local_files_only=True)
        strides = list(getattr(model_config, "conv_stride", []))
        kernels = list(getattr(model_config, "conv_kernel", []))
        if not strides or not kernels:
            raise ValueError(f"{path}: not a wav2vec2-style model (no conv_stride/conv_kernel in its config)")
        # The conv feature encoder's hop and receptive field give each output frame's centre.
        hop = int(np.prod(strides))
        receptive, jump = 1, 1
        for k, s in zip(kernels, strides, strict=True):
            receptive += (k - 1) * jump
            jump *= s
        self.segment_align = hop
        super().__init__(config)
        self._torch = torch
        self._hop = hop
        self._receptive = receptive
        self._model: Any = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.layer = config.layer
        self.dim = int(model_config.hidden_size)
        self._normalize = False
        preprocessor = path / "preprocessor_config.json"
        if preprocessor.is_file():
            import json

            self._normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", False))

    def _native(self, segment: np.ndarray) -> tuple[np.ndarray, int, float]:
        x = segment.astype(np.float32)
        if x.size < self._receptive:
            # Shorter than one conv window: pad with silence so the model emits one frame.
            x = np.pad(x, (0, self._receptive - x.size))
        if self._normalize:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        with self._torch.no_grad():
            out = self._model(self._torch.from_numpy(x)[None], output_hidden_states=True)
        hidden = out.hidden_states[self.layer][0].numpy().astype(np.float32)
        return hidden, self._hop, (self._receptive - 1) / 2.0


FRONT_ENDS: dict[str, type[BlockwiseFrontEnd]] = {
    LogMelFrontEnd.name: LogMelFrontEnd,
    PosteriorgramFrontEnd.name: PosteriorgramFrontEnd,
    Wav2Vec2FrontEnd.name: Wav2Vec2FrontEnd,
}


def make_front_end(config: FrontEndConfig) -> BlockwiseFrontEnd:
    """The front-end named by ``config.name`` (one of ``FRONT_ENDS``), with the recogniser ``config.recogniser``."""
    if config.name not in FRONT_ENDS:
        raise ValueError(f"unknown front-end {config.name!r}; known: {', '.join(FRONT_ENDS)}")
    if config.name == Wav2Vec2FrontEnd.name:
        return Wav2Vec2FrontEnd(config.model_dir, config)
    if config.recogniser == "streaming":
        from ksdiff_runtime.features.streaming_frontend import StreamingPosteriorgramFrontEnd

        return StreamingPosteriorgramFrontEnd(config)
    return FRONT_ENDS[config.name](config)
