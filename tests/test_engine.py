"""The streaming engine: chunking never changes frames, streams come and go, bad input is contained."""

from __future__ import annotations

import itertools
import logging
import time

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from ksdiff_runtime import motion
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.presets import PRESETS, Preset
from ksdiff_runtime.engine.sampling import WindowBatch, sample_windows
from ksdiff_runtime.features.frontend import FrontEndConfig
from ksdiff_runtime.inputs.guards import AudioInputError
from ksdiff_runtime.model.checkpoint import DEFAULT_CHECKPOINT, load_model
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.model.ksdiff import Guidance, KSDiff
from ksdiff_runtime.motion import SAMPLE_RATE


@pytest.fixture(scope="module")
def tiny_backend() -> TorchBackend:
    """A tiny random model on the log-mel front-end: fast, and every engine path is the same."""
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL, feature_dim=40,
                      front_end=FrontEndConfig(name="logmel", left_context_ms=250, lookahead_ms=60))
    return TorchBackend(KSDiff(cfg).eval())


@pytest.fixture(scope="module")
def shipped_backend() -> TorchBackend:
    return TorchBackend(load_model(DEFAULT_CHECKPOINT))


def run_stream(engine: StreamingEngine, chunks: list[np.ndarray], seed: int = 0, **open_kw) -> list:
    sid = engine.open_stream(seed=seed, **open_kw)
    frames = []
    for c in chunks:
        engine.push(sid, c)
        frames += engine.step().frames
    engine.end_stream(sid)
    result = engine.step()
    assert sid in result.finished
    return frames + result.frames


def random_chunks(audio: np.ndarray, rng: np.random.Generator, max_size: int) -> list[np.ndarray]:
    cuts = [0]
    while cuts[-1] < audio.size:
        cuts.append(cuts[-1] + int(rng.integers(1, max_size + 1)))
    return [audio[a:b] for a, b in itertools.pairwise(cuts)]


def as_arrays(frames: list) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([f.blendshapes for f in frames]), np.stack([f.head for f in frames])


def test_sampler_matches_the_models_own_sampling(shipped_backend):
    model = shipped_backend.model
    rng = np.random.default_rng(0)
    B, N, C = 3, 6, model.cfg.motion_context_frames
    S = model.cfg.encoder_context_frames + N + model.cfg.lookahead_frames
    batch = WindowBatch(
        rng.normal(size=(B, S, 231)).astype(np.float32), rng.normal(size=(B, S, 2)).astype(np.float32),
        rng.uniform(size=(B, C, 52)).astype(np.float32), (rng.normal(size=(B, C, 3)) * 0.1).astype(np.float32),
        np.array([[1] * C, [0] * C, [0] * 4 + [1] * 4], np.float32), rng.normal(size=(B, N, 55)).astype(np.float32),
    )
    t = torch.from_numpy
    for guidance in (None, Guidance(audio=2.0, style=1.5)):
        got = sample_windows(shipped_backend, batch, 4, guidance)
        ref = model.sample_window(t(batch.feats), t(batch.prosody), torch.zeros(B, 1, dtype=torch.long),
                                  torch.zeros(B), t(batch.prev_expr), t(batch.prev_pose), t(batch.known), None,
                                  t(batch.noise[..., :52]), t(batch.noise[..., 52:]), 4, guidance)
        assert np.abs(got.expr - ref["expr"].numpy()).max() < 1e-5
        assert np.abs(got.pose - ref["pose"].numpy()).max() < 1e-5


@pytest.mark.parametrize("preset", list(PRESETS))
def test_same_frames_whether_audio_arrives_whole_or_in_random_chunks(shipped_backend, speech_16k, preset):
    engine = StreamingEngine(shipped_backend, preset)
    whole = run_stream(engine, [speech_16k], seed=7)
    rng = np.random.default_rng(3)
    # single samples first (the smallest chunk there is), then anything up to 0.3 s
    tiny = [speech_16k[i : i + 1] for i in range(600)]
    chunked = run_stream(engine, tiny + random_chunks(speech_16k[600:], rng, 5000), seed=7)
    assert len(whole) == len(chunked) == motion.num_frames(speech_16k.size)
    (b1, h1), (b2, h2) = as_arrays(whole), as_arrays(chunked)
    assert np.array_equal(b1, b2) and np.array_equal(h1, h2)
    assert [f.index for f in whole] == list(range(len(whole)))
    assert whole[-1].last and not any(f.last for f in whole[:-1])
    # the seed matters: another seed gives other (but still valid) motion
    other, _ = as_arrays(run_stream(engine, [speech_16k], seed=8))
    assert not np.array_equal(b1, other)
    assert b1.min() >= 0.0 and b1.max() <= 1.0 and np.isfinite(h1).all()


def test_the_mouth_follows_the_voice(shipped_backend, speech_16k):
    """Shipped model through the low-latency engine: the jaw opens during speech, rests in silence."""
    engine = StreamingEngine(shipped_backend, "low-latency")
    silence = np.zeros(SAMPLE_RATE, np.float32)
    frames = run_stream(engine, [silence, speech_16k, silence])
    jaw = as_arrays(frames)[0][:, motion.index("jawOpen")]
    n_sil = motion.num_frames(SAMPLE_RATE)
    speech = jaw[n_sil + 5 : n_sil + motion.num_frames(speech_16k.size) - 5]
    assert speech.max() > 0.15  # (whole-clip animation of this cut peaks at 0.25)
    assert jaw[: n_sil - 5].max() < 0.05 and jaw[-n_sil + 10 :].max() < 0.05


def test_batched_streams_get_the_frames_they_would_get_alone(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    alone = [as_arrays(run_stream(engine, [speech_16k * g], seed=s))[0] for s, g in ((1, 1.0), (2, 0.5))]
    ids = [engine.open_stream(seed=1), engine.open_stream(seed=2)]
    frames: dict[str, list] = {i: [] for i in ids}
    rng = np.random.default_rng(0)
    chunks = [random_chunks(speech_16k * g, rng, 3000) for g in (1.0, 0.5)]
    ticks = 0
    for k in range(max(map(len, chunks))):
        for sid, cs in zip(ids, chunks, strict=True):
            if k < len(cs):
                engine.push(sid, cs[k])
        result = engine.step()
        ticks += result.ticks
        for f in result.frames:
            frames[f.stream_id].append(f)
    for sid in ids:
        engine.end_stream(sid)
    for f in engine.step().frames:
        frames[f.stream_id].append(f)
    for sid, ref in zip(ids, alone, strict=True):
        np.testing.assert_allclose(as_arrays(frames[sid])[0], ref, atol=1e-4)
    # both streams' hops shared inference calls
    hops = 2 * -(-motion.num_frames(speech_16k.size) // engine.preset.hop_frames)
    assert ticks < hops


def test_front_ends_of_many_streams_run_on_threads_with_the_same_features(shipped_backend, speech_16k):
    """Three streams' recognisers run on the engine's thread pool (each thread its own hama
    session); every stream gets what it gets alone."""
    engine = StreamingEngine(shipped_backend, "quality", front_end_threads=3)
    assert engine._pool is not None
    gains = (1.0, 0.6, 0.3)
    alone = [as_arrays(run_stream(engine, [speech_16k * g], seed=i))[0] for i, g in enumerate(gains)]
    ids = [engine.open_stream(seed=i) for i in range(len(gains))]
    for sid, g in zip(ids, gains, strict=True):
        engine.push(sid, speech_16k * g)
        engine.end_stream(sid)
    result = engine.step()
    engine.close()
    assert sorted(result.finished) == sorted(ids)
    for sid, ref in zip(ids, alone, strict=True):
        got = as_arrays([f for f in result.frames if f.stream_id == sid])[0]
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_streams_join_and_leave_at_any_time(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    a = engine.open_stream("a")
    engine.push("a", speech_16k[:8000])
    first = engine.step()
    assert {f.stream_id for f in first.frames} == {"a"}
    b = engine.open_stream("b")
    engine.push(b, speech_16k)
    engine.push(a, speech_16k[8000:12000])
    engine.end_stream(a)  # a leaves while b is mid-stream
    second = engine.step()
    assert "a" in second.finished and "b" not in second.finished
    n_a = len([f for f in first.frames + second.frames if f.stream_id == "a"])
    assert n_a == motion.num_frames(12000)
    assert engine.stream_ids == ["b"]
    with pytest.raises(KeyError, match="no open stream 'a'"):
        engine.push("a", speech_16k[:100])
    with pytest.raises(ValueError, match="already open"):
        engine.open_stream("b")


def test_a_stream_that_stops_without_ending_times_out_and_is_freed(tiny_backend, speech_16k, caplog):
    engine = StreamingEngine(tiny_backend, "low-latency", stream_timeout_s=5.0)
    engine.open_stream("quiet")
    engine.push("quiet", speech_16k[:4000])
    engine.open_stream("done")
    engine.push("done", speech_16k[:4000])
    engine.end_stream("done")
    with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.engine"):
        result = engine.step(now_ns=time.monotonic_ns() + 6_000_000_000)  # 6 s later, without waiting
    assert result.timed_out == ["quiet"] and "done" in result.finished
    assert engine.stream_ids == []
    assert "no audio for" in caplog.text


def test_nan_and_inf_become_silence_and_the_stream_goes_on(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    bad = speech_16k.copy()
    bad[3000:3100] = np.nan
    bad[5000] = np.inf
    clean = speech_16k.copy()
    clean[3000:3100] = 0.0
    clean[5000] = 0.0
    b_bad = as_arrays(run_stream(engine, [bad]))[0]
    b_clean = as_arrays(run_stream(engine, [clean]))[0]
    assert np.isfinite(b_bad).all()
    np.testing.assert_array_equal(b_bad, b_clean)


def test_unusable_input_is_refused_without_touching_other_streams(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    engine.open_stream("good")
    engine.open_stream("bad")
    with pytest.raises(AudioInputError, match="numeric"):
        engine.push("bad", np.array(["not", "audio"]))
    with pytest.raises(AudioInputError):
        engine.push("bad", np.zeros((2, 2, 2), np.float32))
    engine.push("good", speech_16k)
    engine.end_stream("good")
    result = engine.step()
    assert len([f for f in result.frames if f.stream_id == "good"]) == motion.num_frames(speech_16k.size)
    assert engine.stream_ids == ["bad"]  # still open and usable
    with pytest.raises(ValueError, match="style"):
        engine.open_stream("styled", style=np.full(3, np.nan))


def test_gaps_are_filled_with_silence_and_repeats_dropped(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    explicit = np.concatenate([speech_16k[:4000], np.zeros(2000, np.float32), speech_16k[4000:8000]])
    ref = as_arrays(run_stream(engine, [explicit]))[0]
    sid = engine.open_stream()
    engine.push(sid, speech_16k[:4000], at_sample=0)
    engine.push(sid, speech_16k[4000:8000], at_sample=6000)  # 2000 samples lost in transit
    engine.push(sid, speech_16k[7000:8000], at_sample=9000)  # a resend of the last 1000
    engine.end_stream(sid)
    got = as_arrays(engine.step().frames)[0]
    np.testing.assert_array_equal(got, ref)
    # a gap of minutes is not filled with silence: that stream fails clearly, another goes on
    engine.open_stream("paused")
    engine.open_stream("other")
    engine.push("paused", speech_16k[:1000], at_sample=0)
    engine.push("paused", speech_16k[:1000], at_sample=SAMPLE_RATE * 600)
    engine.push("other", speech_16k)
    engine.end_stream("other")
    result = engine.step()
    assert "paused" in result.failed and "599.9 s of audio missing" in result.failed["paused"]
    assert "other" in result.finished and len(result.frames) == motion.num_frames(speech_16k.size)


def test_output_at_60_fps_interpolates_the_30_fps_frames(tiny_backend, speech_16k):
    b30 = as_arrays(run_stream(StreamingEngine(tiny_backend, "low-latency", fps=30), [speech_16k]))[0]
    f60 = run_stream(StreamingEngine(tiny_backend, "low-latency", fps=60), random_chunks(
        speech_16k, np.random.default_rng(0), 2000))
    b60 = as_arrays(f60)[0]
    assert len(f60) == 2 * len(b30) - 1  # the last 30 fps frame has no successor to interpolate towards
    np.testing.assert_allclose(b60[::2], b30, atol=1e-6)
    np.testing.assert_allclose(b60[1::2], (b30[:-1] + b30[1:]) / 2, atol=1e-6)
    assert np.allclose([f.t_audio for f in f60], np.arange(len(f60)) / 60)


def test_frames_carry_their_audio_capture_time(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    sid = engine.open_stream()
    t0 = time.monotonic_ns()
    frames = []
    for start in range(0, speech_16k.size, 160):  # 10 ms chunks, as a sound card delivers them
        end = min(start + 160, speech_16k.size)
        engine.push(sid, speech_16k[start:end], captured_ns=t0 + round(end * 1e9 / SAMPLE_RATE))
        frames += engine.step().frames
    assert frames
    for f in frames:
        expected = t0 + round(f.t_audio * 1e9)  # when the sample at t_audio was captured
        assert abs(f.captured_ns - expected) < 1_000_000
        assert f.emitted_ns >= f.captured_ns - 20_000_000_000  # same clock


def test_long_streams_keep_bounded_state(tiny_backend):
    engine = StreamingEngine(tiny_backend, "quality")
    sid = engine.open_stream()
    rng = np.random.default_rng(0)
    for _ in range(30):  # 30 s of noise in 1 s chunks
        engine.push(sid, (rng.normal(size=SAMPLE_RATE) * 0.05).astype(np.float32))
        engine.step()
    state = engine._streams[sid]
    assert state._audio.size < 3 * SAMPLE_RATE
    assert len(state._feats) < 3 * motion.FPS + tiny_backend.constants.cfg.encoder_context_frames + 30


def test_presets_are_validated():
    with pytest.raises(ValueError, match="hop_frames"):
        Preset("x", hop_frames=0, window_frames=4, model_lookahead_frames=0, steps=2, crossfade_frames=0,
               feature_block_frames=1, feature_lookahead_ms=0)
    with pytest.raises(ValueError, match="crossfade"):
        Preset("x", hop_frames=4, window_frames=4, model_lookahead_frames=0, steps=2, crossfade_frames=2,
               feature_block_frames=1, feature_lookahead_ms=0)
    assert PRESETS["low-latency"].latency_budget_ms() < PRESETS["quality"].latency_budget_ms()


def test_eval_stream_variants_name_preset_fields():
    from ksdiff_runtime.cli.training import parse_variant

    v = parse_variant("low-latency:hop_frames=2,feature_block_frames=2,feature_left_context_ms=none")
    assert (v.hop_frames, v.feature_block_frames, v.feature_left_context_ms) == (2, 2, None)
    assert v.steps == PRESETS["low-latency"].steps and v.name.startswith("low-latency[")
    with pytest.raises(SystemExit, match="not FIELD=VALUE"):
        parse_variant("low-latency:hops=2")
    with pytest.raises(ValueError, match="unknown preset"):
        parse_variant("fast")
