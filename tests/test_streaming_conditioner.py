"""The stream conditioner (model/streaming.py): a live stream's hop encodes only its new frames.

Checked against the whole-sequence encoder (exact, fed in any pieces, for every guidance row), its ONNX
export against torch, and in the engine: frames close to window-by-window conditioning, one stream's
state never reaching another stream (a batch slot freed and taken mid-stream), a restart after shedding.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT
from ksdiff_runtime.backends.export import stream_conditioner_inputs
from ksdiff_runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.sampling import Guidance
from ksdiff_runtime.model.checkpoint import DEFAULT_CHECKPOINT, load_model
from ksdiff_runtime.model.io import STREAM_CONDITIONER_OUTPUTS
from ksdiff_runtime.model.ksdiff import KSDiff
from ksdiff_runtime.model.streaming import StreamingConditioner
from ksdiff_runtime.motion import SAMPLE_RATE


@pytest.fixture(scope="module")
def model():
    return load_model(DEFAULT_CHECKPOINT).float().eval()


def frames_of(engine: StreamingEngine, audio: np.ndarray, seed: int = 0) -> np.ndarray:
    frames = engine.stream_clip(audio, seed=seed)
    return np.stack([np.concatenate([f.blendshapes, f.head]) for f in frames])


@torch.no_grad()
def test_a_stream_fed_in_any_pieces_gets_the_whole_sequence_encoders_features(model):
    """Hop by hop (random commit sizes, a provisional tail of the last frame repeated), the window's path
    features equal the whole-sequence encoder's over the same frames: for the conditional row, a
    no-audio guidance row and a row with a transcript."""
    cfg = model.cfg
    sc = StreamingConditioner(model)
    torch.manual_seed(0)
    B, S, N, C, L = 3, 170, 8, cfg.motion_context_frames, cfg.lookahead_frames
    feats, pros = torch.randn(B, S, cfg.feature_dim), torch.randn(B, S, cfg.prosody_dim)
    text = torch.randint(1, cfg.text_vocab, (B, 6))
    audio_keep, text_keep = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 1.0])
    state = [torch.zeros(B, *shape) for shape in cfg.stream_state_shapes().values()]
    motion_ctx = (torch.zeros(B, C, cfg.expr_dim), torch.zeros(B, C, cfg.pose_dim), torch.zeros(B, C))
    rng = np.random.default_rng(1)
    pos, compared = 0, 0
    while pos < S - 12:
        K = int(rng.integers(1, 12)) if pos else 60
        end = pos + K
        tail = N - 1
        f = torch.cat([feats[:, pos:end], feats[:, end - 1 : end].expand(B, tail, -1)], 1)
        p = torch.cat([pros[:, pos:end], pros[:, end - 1 : end].expand(B, tail, -1)], 1)
        out = sc(f, p, text, audio_keep, text_keep, *motion_ctx, torch.zeros(N), torch.zeros(K), *state)
        state = list(out[6:])
        whole_f = torch.cat([feats[:, :end], feats[:, end - 1 : end].expand(B, tail, -1)], 1)
        whole_p = torch.cat([pros[:, :end], pros[:, end - 1 : end].expand(B, tail, -1)], 1)
        ref_e, ref_h = model.encoder(whole_f, whole_p, text, audio_keep, text_keep)
        # frames whose pooling windows lie inside the sequence (before that the whole-sequence encoder
        # pads by replication where the stream's state holds zeros)
        if end + tail - L - (C + N) >= cfg.long_window:
            torch.testing.assert_close(out[0], ref_e[:, -(C + N) :], atol=1e-4, rtol=0)
            torch.testing.assert_close(out[1], ref_h[:, -(C + N) :], atol=1e-4, rtol=0)
            compared += 1
        pos = end
    assert compared >= 5


def test_the_export_runs_the_stream_conditioner_as_torch_does(model):
    ort_backend = OnnxRuntimeBackend(SHIPPED_EXPORT)
    torch_backend = TorchBackend(model)
    for B, N, K in ((1, 8, 1), (5, 8, 3), (2, 32, 32)):
        feeds = stream_conditioner_inputs(model.cfg, B, N, K, 4, seed=B)
        got, ref = ort_backend.condition_stream(feeds), torch_backend.condition_stream(feeds)
        for name in STREAM_CONDITIONER_OUTPUTS:
            assert got[name].shape == ref[name].shape, name
            np.testing.assert_allclose(got[name], ref[name], atol=1e-4, err_msg=name)


@pytest.mark.parametrize("guidance", [None, Guidance(audio=2.0)])
def test_streamed_hops_give_the_frames_windowed_hops_give_up_to_a_longer_memory(model, speech_16k, guidance):
    """The same stream conditioned hop by hop from the cached state and window by window: the first hop's
    window sees the same features; later ones remember further back. The face's paths pool a few frames and
    do not move; the head's pools 48, so the head moves a little (the bundled speech looped 3 times, the model
    shipped since 4 December 2026: face within 1e-4 at both guidances; head up to 0.0022 rad at both). Audio
    guidance guides the face only; when it guided the head too, the head moved 0.038 rad (2.2 degrees of
    roll) at guidance 2: each hop's push carried into the next, as a live head settling off centre."""
    backend = TorchBackend(model)
    audio = np.tile(speech_16k, 3)
    streamed = frames_of(StreamingEngine(backend, "low-latency", guidance=guidance, front_end_threads=1), audio)
    windowed = frames_of(StreamingEngine(backend, "low-latency", guidance=guidance, front_end_threads=1,
                                         stream_conditioner=False), audio)
    assert streamed.shape == windowed.shape
    face = motion.NUM_BLENDSHAPES
    assert np.abs(streamed[:, :face] - windowed[:, :face]).max() < 0.01
    assert np.abs(streamed[:, face:] - windowed[:, face:]).max() < 0.01  # radians (0.6 degrees)
    jaw = motion.index("jawOpen")
    assert np.corrcoef(streamed[:, jaw], windowed[:, jaw])[0, 1] > 0.995


def test_an_ended_streams_state_never_reaches_the_stream_that_takes_its_batch_slot(tiny_backend, speech_16k):
    """A and B share rounds; A ends mid-way and C opens in the next round, taking A's place in the batch:
    C's frames are exactly those C gets alone, and B's those B gets alone."""
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    a_audio, b_audio, c_audio = speech_16k, speech_16k[::-1].copy(), 0.5 * np.roll(speech_16k, 4000)
    alone = {name: frames_of(engine, audio, seed=seed)
             for name, audio, seed in (("b", b_audio, 2), ("c", c_audio, 3))}
    engine.open_stream("a", seed=1)
    engine.open_stream("b", seed=2)
    got: dict[str, list] = {"a": [], "b": [], "c": []}
    step = 800
    for k in range(0, b_audio.size, step):
        engine.push("b", b_audio[k : k + step])
        if k < 8000:
            engine.push("a", a_audio[k : k + step])
        elif "a" in engine.stream_ids:
            engine.end_stream("a")
        if k == 8000 + step:  # the round after A's end was taken: A's slot is free
            engine.open_stream("c", seed=3)
        if k >= 8000 + step:
            j = k - (8000 + step)
            if j < c_audio.size:
                engine.push("c", c_audio[j : j + step])
        while engine.has_work():
            for f in engine.step().frames:
                got[f.stream].append(f)
    engine.end_stream("b")
    j = b_audio.size - (8000 + step)
    engine.push("c", c_audio[j:])
    engine.end_stream("c")
    while engine.has_work():
        for f in engine.step().frames:
            got[f.stream].append(f)
    assert got["a"] and "a" not in engine.stream_ids
    for name in ("b", "c"):
        frames = np.stack([np.concatenate([f.blendshapes, f.head]) for f in sorted(got[name], key=lambda f: f.index)])
        np.testing.assert_allclose(frames, alone[name], atol=1e-5, err_msg=name)


def test_a_stream_that_shed_more_than_the_encoder_context_starts_its_state_again(tiny_backend, speech_16k):
    """A stream runs in real time, then its engine stalls for 3 s: it sheds and catches up, and its state
    restarts at the windowed span of the catch-up hop (the skipped frames are not encoded), then moves
    one hop at a time again. The test drives the clock; rounds take no time on it (a frozen round clock),
    so a busy test machine sheds nothing of its own."""
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1, round_clock=lambda: 0)
    sid = engine.open_stream()
    t0 = time.monotonic_ns()
    audio = np.tile(speech_16k, 3)[: 4 * SAMPLE_RATE]
    L, E = engine.cfg.lookahead_frames, engine.cfg.encoder_context_frames
    state = None
    for start in range(0, audio.size, 160):
        at = t0 + round((start + 160) * 1e9 / SAMPLE_RATE)
        engine.push(sid, audio[start : start + 160], captured_ns=at)
        if start < SAMPLE_RATE:  # the first second in real time, a round per 10 ms block
            engine.step(now_ns=at)
            state = engine.sessions.get(sid).state
            assert not state.hops or state.enc_pos == state.emitted + L
    before = state.enc_pos
    now = t0 + 4_000_000_000  # the engine stalled for the last 3 s
    result = engine.step(now_ns=now)
    assert result.shed[sid] > E and result.frames
    assert state.enc_pos == state.emitted + L and state.enc_pos - before > E + L
    for k in range(10):
        at = now + (k + 1) * 34_000_000
        engine.push(sid, speech_16k[k * 544 : (k + 1) * 544], captured_ns=at)
        engine.step(now_ns=at)
        assert state.enc_pos == state.emitted + L
    assert all(np.isfinite(v).all() for v in state.enc_state.values())


def test_a_model_whose_layers_the_steps_do_not_read_is_refused_naming_them(model):
    """The MSDC step reads a branch's 2 outputs per channel in the group norm's groups of whole channels: a
    width whose channels the 8 groups cut (12: groups of 1.5 channels) gets an error, not wrong numbers."""
    odd = KSDiff(dataclasses.replace(model.cfg, d_model=12))
    with pytest.raises(ValueError, match="8 groups of whole channels; got kernel 3, dilation 1, 12 -> 24"):
        StreamingConditioner(odd)
    StreamingConditioner(KSDiff(dataclasses.replace(model.cfg, d_model=16)))  # 8 groups of 2 channels: fine
