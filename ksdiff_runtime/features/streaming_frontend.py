"""The posteriorgram front-end with the streaming recogniser for live streams.

``PosteriorgramFrontEnd`` recognises each feature group's window of audio afresh (the preset's left
context, no right context at the window's edge). This front-end instead keeps one chunked
recogniser stream per live stream (``OnnxStreamingRecogniser``: each round computes only the new
chunks of every stream, batched) and reads the posteriorgram of a group's motion frames from the
frames that are final: with the distilled weights, frames close to the whole-utterance recogniser's
(docs/STREAMING_RECOGNISER.md). The log-mel part is computed as ``PosteriorgramFrontEnd`` does.

A group's features are a function of the stream's audio up to the group's end (``range_samples``)
and nothing else: the recogniser stream is fed exactly that audio before the group is read, and
recogniser frames not final by then hold the last final one. A request without a recogniser stream
(a line, a stream created without one) is computed the windowed way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ksdiff_runtime.features.frontend import (
    HAMA_BLANK,
    HAMA_CLASSES,
    HAMA_HOP,
    PPG_LOG_FLOOR,
    FrontEndConfig,
    PosteriorgramFrontEnd,
    _interp,
    ppg_features,
)
from ksdiff_runtime.features.streaming_recogniser_onnx import MIN_SAMPLES, OnnxStreamingRecogniser, RecogniserStream
from ksdiff_runtime.motion import FPS, SAMPLE_RATE, num_frames

# The distilled streaming recogniser's weights (training.streaming_distil; derived from hama's, Apache-2.0)
WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "streaming_recogniser.npz"
# Chunks of one 20 ms frame: a frame is final 22.5 ms after its centre (the low-latency preset reads the
# features of a motion frame 20 ms after its instant; longer chunks measured worse there, docs/STREAMING_RECOGNISER.md)
LOOKAHEAD = 0
# before a stream's first recogniser frame is final: a frame of pure blank (silence to a CTC recogniser)
BLANK_LOG_PROBS = np.full(HAMA_CLASSES, PPG_LOG_FLOOR, np.float32)
BLANK_LOG_PROBS[HAMA_BLANK] = 0.0


@dataclass
class PpgStream:
    """One live stream's recogniser stream; it started at sample ``origin`` (a multiple of 320: after a
    gap the engine skipped, a new one starts where the features resume)."""

    asr: RecogniserStream
    origin: int
    log_probs: np.ndarray  # final frames [first, first + n) on the stream's 20 ms grid
    first: int = 0

    @property
    def fed(self) -> int:
        return self.origin + self.asr.samples

    @property
    def final(self) -> int:
        """Recogniser frames final so far (absolute index of the next)."""
        return self.first + self.log_probs.shape[0]


class StreamingPosteriorgramFrontEnd(PosteriorgramFrontEnd):
    """``PosteriorgramFrontEnd`` whose live streams keep a streaming recogniser (see the module docstring)."""

    def __init__(self, config: FrontEndConfig | None = None, weights: Path | None = WEIGHTS,
                 recogniser_lookahead: int = LOOKAHEAD, parallel: int = 1, recogniser_threads: int = 1) -> None:
        """``weights``: a distilled student's (default: the shipped ones); None: hama's own, undistilled.
        ``parallel``: a round of many streams runs the recogniser in up to this many parts at once.
        ``recogniser_threads``: ONNX Runtime's threads a recogniser call uses. One for live rounds (their calls
        are small: a second thread splits and joins each small operator for nothing); a bake's whole clip in
        one call is large enough to gain from one per core (the 6.8 s sample: 29 -> 21 ms on 2 cores, the
        same log-probabilities: to the bit on a 2-core AMD EPYC)."""
        super().__init__(config)
        self.weights = weights
        self.recogniser_lookahead = recogniser_lookahead
        self._stream_asr = OnnxStreamingRecogniser(weights, lookahead=recogniser_lookahead, parallel=parallel,
                                                   threads=recogniser_threads)

    def close(self) -> None:
        """Stop the recogniser's threads (``parallel``); it still runs, on the calling thread."""
        self._stream_asr.close()

    def new_stream(self, origin: int = 0) -> PpgStream:
        """A live stream's recogniser state, starting at sample ``origin`` (a multiple of 320)."""
        if origin % HAMA_HOP:
            raise ValueError(f"a recogniser stream starts on the 20 ms grid, not at sample {origin}")
        return PpgStream(self._stream_asr.new_stream(), origin, np.zeros((0, HAMA_CLASSES), np.float32),
                         origin // HAMA_HOP)

    def grouped(self, audio16k: np.ndarray, group_frames: int) -> np.ndarray:
        """Whole-clip features as a live stream computes them in groups of ``group_frames`` motion frames: one
        recogniser stream, each group read once the audio up to its end (``range_samples``) has been fed, as
        the engine does."""
        if group_frames < 1:
            raise ValueError(f"group_frames must be >= 1, not {group_frames}")
        audio = np.asarray(audio16k, dtype=np.float32)
        ppg, total = self.new_stream(), num_frames(audio.size)
        groups = [self.many_range_features([(audio[: self.range_samples(f0, f0 + group_frames)[1]], f0,
                                             f0 + group_frames, 0, ppg)])[0] for f0 in range(0, total, group_frames)]
        return np.concatenate(groups)[:total] if groups else np.zeros((0, self.dim), np.float32)

    def _native_offline(self, audio: np.ndarray) -> tuple[np.ndarray, int, float]:
        """A whole clip (a bake, a line's first features): the streaming recogniser over all of it in one
        call, the frames a live stream of the clip gets once they are final."""
        if audio.size < MIN_SAMPLES:
            return super()._native_offline(audio)
        return self._with_mel(audio, self._stream_asr.whole(audio))

    def many_range_features(self, requests: list[tuple]) -> list[np.ndarray]:
        """As ``BlockwiseFrontEnd.many_range_features``; a request (audio, f0, f1, offset, ppg_stream) with a
        ``PpgStream`` reads its posteriorgram from that stream. A stream's requests are taken in order, all
        streams' recogniser chunks of a pass in one batched call."""
        out: list[np.ndarray | None] = [None] * len(requests)
        windowed = [i for i, r in enumerate(requests) if len(r) < 5 or r[4] is None]
        for i, feats in zip(windowed, super().many_range_features([requests[i][:4] for i in windowed]), strict=True):
            out[i] = feats
        pending = [i for i in range(len(requests)) if out[i] is None]
        while pending:  # one request per stream a pass, so each group sees only the audio up to its own end
            seen: set[int] = set()
            batch = []
            for i in pending:
                if id(requests[i][4]) not in seen:
                    seen.add(id(requests[i][4]))
                    batch.append(i)
            feeds = [self._feed(*requests[i]) for i in batch]
            new = self._stream_asr.step([requests[i][4].asr for i in batch])
            for i, lp in zip(batch, new, strict=True):  # kept before any group is read: none is lost
                ppg = requests[i][4]
                ppg.log_probs = np.concatenate([ppg.log_probs, lp]) if lp.shape[0] else ppg.log_probs
            for i, (f1, s0, s1) in zip(batch, feeds, strict=True):
                audio, f0, _, offset, ppg = requests[i]
                out[i] = self._read(ppg, np.asarray(audio, np.float32), offset, f0, f1, s0, s1)
            done = set(batch)
            pending = [i for i in pending if i not in done]
        return [o for o in out if o is not None]

    def _feed(self, audio: np.ndarray, f0: int, f1: int, offset: int, ppg: PpgStream) -> tuple[int, int, int]:
        """Bring the recogniser stream up to the group's audio end; returns the group's (f1, s0, s1)."""
        audio = np.asarray(audio, dtype=np.float32)
        s0, s1_nominal = self.range_samples(f0, f1)
        end = offset + audio.size
        s1 = min(end, s1_nominal)
        if end < s1_nominal:  # a finished stream's last group: the frames its audio holds
            f1 = min(f1, num_frames(end))
        if s0 < offset:
            raise ValueError(f"audio from sample {offset} on cannot give frames from {f0} (needs sample {s0})")
        if ppg.fed < offset:  # audio the recogniser never heard is gone (a gap the stream skipped): start afresh
            fresh = self.new_stream(s0)
            ppg.asr, ppg.origin, ppg.log_probs, ppg.first = fresh.asr, fresh.origin, fresh.log_probs, fresh.first
        if s1 > ppg.fed and not ppg.asr.ended:
            ppg.asr.push(audio[ppg.fed - offset : s1 - offset])
        if s1 < s1_nominal and not ppg.asr.ended and ppg.asr.samples >= 201:  # the stream ended inside the group
            ppg.asr.end()
        return f1, s0, s1

    def _read(self, ppg: PpgStream, audio: np.ndarray, offset: int, f0: int, f1: int, s0: int, s1: int) -> np.ndarray:
        """The group's features from the recogniser frames final now, and the log-mel of its segment [s0, s1)."""
        if f1 <= f0:
            return np.zeros((0, self.dim), np.float32)
        t = np.arange(f0, f1) * (SAMPLE_RATE / FPS)
        # the 20 ms grid frames that bracket the motion frames, as far as the segment reaches
        q0 = max(s0 // HAMA_HOP, int(t[0] // HAMA_HOP))
        q1 = max(q0 + 1, min((s1 - 1) // HAMA_HOP + 1, int(t[-1] // HAMA_HOP) + 2))
        lp = np.empty((q1 - q0, HAMA_CLASSES), np.float32)
        for j, q in enumerate(range(q0, q1)):  # a frame not final yet (or before this recogniser stream) holds
            k = min(q, ppg.final - 1) - ppg.first
            lp[j] = ppg.log_probs[k] if 0 <= k < ppg.log_probs.shape[0] else BLANK_LOG_PROBS
        ppg_feats = ppg_features(lp)
        # log-mel of the segment [s0, s1) (zeros outside it, as the windowed front-end), only at frames q0..:
        # from one grid frame before q0 (its window reaches back 256 samples) or the segment's start
        a = max(s0, HAMA_HOP * (q0 - 1))
        mel = self._mel.frames(audio[a - offset : s1 - offset], q1 - a // HAMA_HOP, hop=HAMA_HOP)[q0 - a // HAMA_HOP :]
        native = np.concatenate([ppg_feats, mel], axis=1)
        keep = max(0, ppg.log_probs.shape[0] - 4 * FPS)  # the frames a later group can still read
        ppg.log_probs, ppg.first = ppg.log_probs[keep:], ppg.first + keep
        return _interp(native, HAMA_HOP * np.arange(q0, q1), t)
