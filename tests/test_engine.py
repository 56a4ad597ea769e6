"""The streaming engine: chunking never changes frames, streams come and go, bad input is contained,
and a stream that falls behind real time sheds frames and catches up instead of drifting."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.controls import ease_frames, stream_frames
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.presets import MAX_LAG_HOPS, MIN_LAG_MS, PRESETS, Preset
from ksdiff_runtime.engine.stream import frame_sample, output_frames
from ksdiff_runtime.inputs.guards import AudioInputError
from ksdiff_runtime.inputs.stream import AudioFormat, BadAudioError
from ksdiff_runtime.model.checkpoint import load_model
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT
from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_runtime.sessions import SOURCE_QUEUE_S, RefusedError

MS = 1_000_000


@pytest.fixture(scope="module")
def shipped_backend() -> TorchBackend:
    return TorchBackend(load_model(DEFAULT_CHECKPOINT))


def finish(engine: StreamingEngine, *sids: str, now_ns: int | None = None) -> tuple[list, dict]:
    """Step until every stream in ``sids`` has ended: (their frames, stream id -> Ended)."""
    frames, ended = [], {}
    for _ in range(100_000):
        if all(s in ended for s in sids):
            return frames, ended
        result = engine.step(now_ns)
        frames += result.frames
        ended.update({e.session.id: e for e in result.ended})
    raise AssertionError(f"streams {sids} did not end")


def run_stream(engine: StreamingEngine, chunks: list[np.ndarray], seed: int = 0, **open_kw) -> list:
    sid = engine.open_stream(seed=seed, **open_kw)
    frames = []
    for c in chunks:
        engine.push(sid, c)
        frames += engine.step().frames
    engine.end_stream(sid)
    rest, ended = finish(engine, sid)
    assert ended[sid].reason == "ended"
    return frames + rest


def damage_encoder_state(engine: StreamingEngine, sid: str) -> None:
    """Break a stream's stream-conditioner state (a wrong shape): its next batched model call fails."""
    state = engine.sessions.get(sid).state
    state.enc_state = dict(state.enc_state, s_h=np.zeros((1, 3, 3), np.float32))


def random_chunks(audio: np.ndarray, rng: np.random.Generator, max_size: int) -> list[np.ndarray]:
    cuts = [0]
    while cuts[-1] < audio.size:
        cuts.append(cuts[-1] + int(rng.integers(1, max_size + 1)))
    return [audio[a:b] for a, b in itertools.pairwise(cuts)]


def as_arrays(frames: list) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([f.blendshapes for f in frames]), np.stack([f.head for f in frames])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_same_frames_whether_audio_arrives_whole_or_in_random_chunks(shipped_backend, speech_16k, preset):
    engine = StreamingEngine(shipped_backend, preset)
    whole = run_stream(engine, [speech_16k], seed=7)
    rng = np.random.default_rng(3)
    # single samples first (the smallest chunk there is), then anything up to 0.3 s
    tiny = [speech_16k[i : i + 1] for i in range(600)]
    chunked = run_stream(engine, tiny + random_chunks(speech_16k[600:], rng, 5000), seed=7)
    assert len(whole) == len(chunked) == stream_frames(speech_16k.size, motion.FPS)
    (b1, h1), (b2, h2) = as_arrays(whole), as_arrays(chunked)
    assert np.array_equal(b1, b2) and np.array_equal(h1, h2)
    assert [f.index for f in whole] == list(range(len(whole)))
    assert [f.seq for f in whole] == [f.index for f in whole]
    assert whole[-1].last and not any(f.last for f in whole[:-1])
    # the seed matters: another seed gives other (but still valid) motion
    other, _ = as_arrays(run_stream(engine, [speech_16k], seed=8))
    assert not np.array_equal(b1, other)
    assert b1.min() >= 0.0 and b1.max() <= 1.0 and np.isfinite(h1).all()
    # gaze is built with the frame, from its own eye weights
    np.testing.assert_allclose(whole[5].gaze, motion.gaze_from_blendshapes(whole[5].blendshapes))


@pytest.mark.parametrize(("samples", "fps"), [(16000, 30), (16500, 30), (16001, 30), (16500, 60), (100, 30), (0, 30)])
def test_the_tail_of_the_audio_gets_a_frame(tiny_backend, samples, fps):
    """A stream yields one frame per started frame period: the last partial period is animated too."""
    engine = StreamingEngine(tiny_backend, "low-latency", fps=fps)
    audio = (0.1 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32)
    frames = run_stream(engine, [audio])
    audio_frames = -(-samples * fps // SAMPLE_RATE)
    assert len(frames) == stream_frames(samples, fps) == (audio_frames + ease_frames(fps) if samples else 0)
    if frames:  # the audio's frames, then the ease to rest
        assert frames[audio_frames - 1].t_audio < samples / SAMPLE_RATE and frames[-1].last
        assert [f.index for f in frames] == list(range(len(frames)))


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
    ticks = hops = 0
    for k in range(max(map(len, chunks))):
        for sid, cs in zip(ids, chunks, strict=True):
            if k < len(cs):
                engine.push(sid, cs[k])
        result = engine.step()
        ticks += result.ticks
        hops += result.hops
        for f in result.frames:
            frames[f.stream].append(f)
    for sid in ids:
        engine.end_stream(sid)
    rest, _ = finish(engine, *ids)
    for f in rest:
        frames[f.stream].append(f)
    for sid, ref in zip(ids, alone, strict=True):
        np.testing.assert_allclose(as_arrays(frames[sid])[0], ref, atol=1e-4)
    # both streams' hops shared inference calls
    assert ticks < hops


@pytest.mark.parametrize("preset", ["quality", "low-latency"])
def test_many_streams_recognised_in_one_call_get_the_features_they_get_alone(shipped_backend, speech_16k, preset):
    """Streams' front-end groups go through the recogniser in one batched call per round (ragged:
    different gains and cut points); every stream gets the frames it gets alone."""
    engine = StreamingEngine(shipped_backend, preset)
    calls = []
    many = engine.front_end.many_range_features
    engine.front_end.many_range_features = lambda requests: calls.append(len(requests)) or many(requests)
    gains = (1.0, 0.6, 0.3)
    alone = [as_arrays(run_stream(engine, [speech_16k * g], seed=i))[0] for i, g in enumerate(gains)]
    ids = [engine.open_stream(seed=i) for i in range(len(gains))]
    for sid, g in zip(ids, gains, strict=True):
        engine.push(sid, speech_16k * g)
        engine.end_stream(sid)
    calls.clear()
    frames, ended = finish(engine, *ids)
    engine.close()
    assert sorted(ended) == sorted(ids)
    assert max(calls) >= len(gains)  # the three streams' groups in one call
    for sid, ref in zip(ids, alone, strict=True):
        got = as_arrays([f for f in frames if f.stream == sid])[0]
        np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.usefixtures("torch_one_thread")  # parts only for a backend whose calls use one thread, as serve's
def test_a_round_of_many_streams_runs_in_parts_at_once_and_each_gets_its_own_frames(shipped_backend, speech_16k):
    """A live round with a few streams per thread cuts the model's batch into parts run at once on the pool
    (ksdiff_runtime.parallel); every stream gets the frames it gets alone. One stream's broken state fails
    the round's batch: its streams then run one by one, and only the broken one is closed."""
    engine = StreamingEngine(shipped_backend, "low-latency", front_end_threads=2)
    clip = speech_16k[: 2 * SAMPLE_RATE]
    gains = (1.0, 0.7, 0.5, 0.3, 0.8)
    alone = [as_arrays(run_stream(engine, [clip * g], seed=i))[0] for i, g in enumerate(gains[:4])]
    rows: list[int] = []
    condition = shipped_backend.condition_stream
    shipped_backend.condition_stream = lambda feeds: rows.append(len(feeds["feats"])) or condition(feeds)
    try:
        ids = [engine.open_stream(str(i), seed=i) for i in range(len(gains))]
        frames, ended = [], {}
        for r, k in enumerate(range(0, clip.size, 533)):
            for sid, g in zip(ids, gains, strict=True):
                if sid in engine.stream_ids:
                    engine.push(sid, clip[k : k + 533] * g)
            if r == 20:  # stream 4's encoder state is damaged mid-stream
                damage_encoder_state(engine, "4")
            while engine.has_work():
                result = engine.step()
                frames += result.frames
                ended.update({e.session.id: e for e in result.ended})
        for sid in ids[:4]:
            engine.end_stream(sid)
        rest, more = finish(engine, *ids[:4])
    finally:
        shipped_backend.condition_stream = condition
        engine.close()
    ended.update(more)
    assert ended["4"].reason == "error" and ended["4"].error
    assert all(ended[sid].reason == "ended" for sid in ids[:4])
    assert 2 in rows and 3 in rows and max(rows) <= 3  # five streams' rounds in parts of 2 and 3
    for sid, ref in zip(ids[:4], alone, strict=True):
        got = as_arrays(sorted((f for f in frames + rest if f.stream == sid), key=lambda f: f.index))[0]
        np.testing.assert_allclose(got, ref, atol=1e-4)
    # closed (its threads and the recogniser's stopped), the engine still animates, on this thread
    assert engine.front_end._stream_asr.parallel == 1
    ids = [engine.open_stream(f"after-{i}", seed=i) for i in range(5)]
    for sid, g in zip(ids, gains, strict=True):
        engine.push(sid, clip[: SAMPLE_RATE // 2] * g)
        engine.end_stream(sid)
    after, ended = finish(engine, *ids)
    assert all(e.reason == "ended" for e in ended.values()) and after


def test_a_failing_batched_vad_falls_back_to_each_streams_own(tiny_backend, speech_16k, monkeypatch, caplog):
    """The voice gate's VAD runs every stream's new audio in one batched call a round; if that call fails,
    each stream's own VAD runs instead (said once, not every round), and the gated frames are the same."""
    from ksdiff_runtime.engine.gate import GATED_COLUMNS, GateConfig
    from ksdiff_runtime.features import vad

    speech = np.tile(speech_16k, 3)
    clips = [speech[4000 * i : 4000 * i + 2 * SAMPLE_RATE].copy() for i in range(3)]
    for clip in clips:
        clip[SAMPLE_RATE // 2 : 3 * SAMPLE_RATE // 2] = 0.0  # a second of silence: the gate closes the mouth there

    def run() -> list[np.ndarray]:
        engine = StreamingEngine(tiny_backend, "low-latency", voice_gate=GateConfig(), front_end_threads=1)
        ids = [engine.open_stream(str(i), seed=i) for i in range(3)]
        frames = []
        for k in range(0, 2 * SAMPLE_RATE, 533):
            for sid, clip in zip(ids, clips, strict=True):
                engine.push(sid, clip[k : k + 533])
            while engine.has_work():
                frames += engine.step().frames
        for sid in ids:
            engine.end_stream(sid)
        rest, _ = finish(engine, *ids)
        return [as_arrays(sorted((f for f in frames + rest if f.stream == sid), key=lambda f: f.index))[0]
                for sid in ids]

    batched = run()
    mouth = GATED_COLUMNS
    assert all(b[30:40, mouth].max() == 0.0 < b[:, mouth].max() for b in batched)  # gated in the silence

    def broken(self, rows, state):
        raise RuntimeError("batched graph broken")

    monkeypatch.setattr(vad.SileroVad, "many", broken)
    with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.engine"):
        alone = run()
    assert caplog.text.count("the batched VAD failed") == 1
    for a, b in zip(batched, alone, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_round_does_at_most_one_hop_per_stream(tiny_backend, speech_16k):
    """A stream with seconds of audio queued gets one hop per round, so it never holds up the
    others (or a stop) for the time its whole backlog takes."""
    engine = StreamingEngine(tiny_backend, "low-latency")
    engine.open_stream("ahead")
    engine.push("ahead", np.tile(speech_16k, 4))  # 6 s at once, not real time
    engine.open_stream("live")
    engine.push("live", speech_16k[:3200])
    result = engine.step()
    per_stream = {s: sum(f.stream == s for f in result.frames) for s in ("ahead", "live")}
    assert per_stream == {"ahead": engine.preset.hop_frames, "live": engine.preset.hop_frames}
    assert result.ticks == 1 and result.hops == 2


@pytest.mark.parametrize("preset", list(PRESETS))
def test_has_work_never_asks_for_a_round_that_does_nothing(tiny_backend, speech_16k, preset):
    """The server's engine thread steps while ``has_work()`` and sleeps otherwise: a yes that leads to
    an empty round (a hop that waits for a whole front-end group) would spin it at 100 % CPU."""
    engine = StreamingEngine(tiny_backend, preset)
    sid = engine.open_stream()
    rng = np.random.default_rng(1)
    for chunk in random_chunks(speech_16k, rng, 700):
        engine.push(sid, chunk)
        empty = 0
        while engine.has_work():
            result = engine.step()
            empty = 0 if result.frames or result.ended else empty + 1
            assert empty <= 1  # the round that takes the new audio may emit nothing; the next must
    engine.end_stream(sid)
    frames, _ = finish(engine, sid)
    assert frames[-1].last


def test_streams_join_and_leave_at_any_time(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    engine.open_stream("a")
    engine.push("a", speech_16k[:8000])
    first = engine.step()
    assert {f.stream for f in first.frames} == {"a"}
    b = engine.open_stream("b")
    engine.push(b, speech_16k)
    engine.push("a", speech_16k[8000:12000])
    engine.end_stream("a")  # a leaves while b is mid-stream
    rest, ended = finish(engine, "a")
    assert "b" not in ended
    n_a = len([f for f in first.frames + rest if f.stream == "a"])
    assert n_a == stream_frames(12000, motion.FPS)
    assert engine.stream_ids == ["b"]
    with pytest.raises(KeyError, match="no open stream 'a'"):
        engine.push("a", speech_16k[:100])
    with pytest.raises(RefusedError, match="already open"):
        engine.open_stream("b")
    with pytest.raises(RefusedError, match="bad stream id"):
        engine.open_stream("..")


def test_a_stream_that_stops_without_ending_times_out_and_ends_with_its_frames(tiny_backend, speech_16k, caplog):
    engine = StreamingEngine(tiny_backend, "low-latency", idle_timeout_s=5.0)
    engine.open_stream("quiet")
    engine.push("quiet", speech_16k[:4000])
    later = time.monotonic_ns() + 6_000_000_000  # 6 s later, without waiting
    with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.engine"):
        frames, ended = finish(engine, "quiet", now_ns=later)
    assert ended["quiet"].reason == "timeout"
    # the audio it had is animated, and its last frame says so
    assert len(frames) == stream_frames(4000, motion.FPS) and frames[-1].last
    assert engine.stream_ids == []
    assert "no audio for" in caplog.text


def test_the_idle_timeout_counts_from_when_the_audio_sent_ahead_runs_out(tiny_backend):
    """A client that sent a line 3 s ahead of real time owes no audio for those 3 s (an SDK pacing a long line
    sends the rest only as real time makes room): 4 s without a message do not end it, 5 s past its audio's end
    (idle timeout 2 s) do."""
    engine = StreamingEngine(tiny_backend, "low-latency", idle_timeout_s=2.0)
    engine.open_stream("npc", mode="line")
    t0 = time.monotonic_ns()
    engine.push("npc", np.zeros(3 * 16000, np.float32), captured_ns=t0)
    session, frames = engine.sessions.get("npc"), []
    for seconds in (0, 4):
        frames += engine.step(t0 + seconds * 1_000_000_000).frames
        assert not session.ending and session.quiet_ns(t0 + 4_000_000_000) < 1_100_000_000
    rest, ended = finish(engine, "npc", now_ns=t0 + 5_000_000_000 + 100_000_000)
    assert ended["npc"].reason == "timeout" and len(frames + rest) == stream_frames(3 * 16000, motion.FPS)


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


def test_a_stream_whose_model_call_fails_is_closed_and_the_others_in_its_batch_go_on(tiny_backend, speech_16k):
    """One stream's broken state fails the batched backend call of its round: the streams then run one by
    one, the broken one is closed with its error (and its ease to rest), the other keeps every frame."""
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    alone = as_arrays(run_stream(engine, [speech_16k], seed=2))[0]
    engine.open_stream("a", seed=1)
    engine.open_stream("b", seed=2)
    frames: list = []
    ended = {}
    step = 1600
    for k in range(0, speech_16k.size, step):
        if "a" in engine.stream_ids:
            engine.push("a", speech_16k[k : k + step])
        engine.push("b", speech_16k[k : k + step])
        if k == 4 * step:  # a's encoder state is damaged mid-stream
            damage_encoder_state(engine, "a")
        while engine.has_work():
            r = engine.step()
            frames += r.frames
            ended.update({e.session.id: e for e in r.ended})
    engine.end_stream("b")
    rest, more = finish(engine, "b")
    ended.update(more)
    assert ended["a"].reason == "error" and ended["a"].error and ended["a"].final
    assert ended["b"].reason == "ended"
    got = as_arrays(sorted((f for f in frames + rest if f.stream == "b"), key=lambda f: f.index))[0]
    np.testing.assert_allclose(got, alone, atol=1e-5)


def test_unusable_input_is_refused_without_touching_other_streams(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    engine.open_stream("good")
    engine.open_stream("bad")
    with pytest.raises(AudioInputError, match="numeric"):
        engine.push("bad", np.array(["not", "audio"]))
    engine.push("good", speech_16k)
    engine.end_stream("good")
    frames, _ = finish(engine, "good")
    assert len([f for f in frames if f.stream == "good"]) == stream_frames(speech_16k.size, motion.FPS)
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
    got = as_arrays(finish(engine, sid)[0])[0]
    np.testing.assert_array_equal(got, ref)
    # a gap of minutes is not filled with silence: the chunk is refused, the stream goes on
    engine.open_stream("paused")
    engine.push("paused", speech_16k[:1000], at_sample=0)
    with pytest.raises(BadAudioError, match=r"599\.9 s of audio missing"):
        engine.push("paused", speech_16k[:1000], at_sample=SAMPLE_RATE * 600)
    engine.push("paused", speech_16k[1000:2000])
    engine.end_stream("paused")
    assert len(finish(engine, "paused")[0]) == stream_frames(2000, motion.FPS)


def test_output_at_60_fps_interpolates_the_30_fps_frames(tiny_backend, speech_16k):
    b30 = as_arrays(run_stream(StreamingEngine(tiny_backend, "low-latency", fps=30), [speech_16k]))[0]
    f60 = run_stream(StreamingEngine(tiny_backend, "low-latency", fps=60), random_chunks(
        speech_16k, np.random.default_rng(0), 2000))
    b60 = as_arrays(f60)[0]
    assert len(f60) == stream_frames(speech_16k.size, 60)
    assert np.allclose([f.t_audio for f in f60], np.arange(len(f60)) / 60)
    # the same native frames, but for the last few: a 60 fps stream ends half a frame later, so its
    # final hops see one more (silent) lookahead frame
    n = output_frames(speech_16k.size, 30) - 3
    np.testing.assert_allclose(b60[: 2 * n : 2], b30[:n], atol=1e-6)
    np.testing.assert_allclose(b60[1 : 2 * n - 1 : 2], (b30[: n - 1] + b30[1:n]) / 2, atol=1e-6)


def test_frames_carry_when_their_audio_arrived_and_it_never_goes_back(tiny_backend, speech_16k):
    """captured_ns is the arrival of the chunk that held the frame's audio instant (protocol/SPEC.md 4.2):
    never earlier than that (no back-dating), never decreasing from frame to frame."""
    engine = StreamingEngine(tiny_backend, "low-latency")
    sid = engine.open_stream()
    t0 = time.monotonic_ns()
    arrivals = []
    frames = []
    for start in range(0, speech_16k.size, 1600):  # 100 ms chunks
        end = min(start + 1600, speech_16k.size)
        at = t0 + round(end * 1e9 / SAMPLE_RATE)
        arrivals.append((end, at))
        engine.push(sid, speech_16k[start:end], captured_ns=at)
        frames += engine.step(now_ns=at).frames
    engine.end_stream(sid)
    frames += finish(engine, sid, now_ns=arrivals[-1][1])[0]
    frames, ease = frames[: -ease_frames(motion.FPS)], frames[-ease_frames(motion.FPS) :]
    for f in frames:
        sample = round(f.t_audio * SAMPLE_RATE)
        expected = next((ns for end, ns in arrivals if end >= sample), arrivals[-1][1])
        assert f.captured_ns == expected
    captured = [f.captured_ns for f in frames]
    assert captured == sorted(captured)
    assert [f.captured_ns for f in ease] == [None] * len(ease)  # no audio behind the ease to rest


def test_a_stream_behind_real_time_sheds_stale_frames_and_catches_up(tiny_backend, speech_16k):
    """Audio that arrived long ago is not animated late: the frames past their deadline are skipped
    (a gap in seq, counted as shed) and the stream continues from the current audio, several hops at
    once while it is late, then one hop at a time again. The test drives the clock; rounds take no time on
    it (a frozen round clock), so a busy test machine sheds nothing of its own."""
    engine = StreamingEngine(tiny_backend, "low-latency", round_clock=lambda: 0)
    preset = engine.preset
    sid = engine.open_stream()
    t0 = time.monotonic_ns()
    audio = np.tile(speech_16k, 2)[: 3 * SAMPLE_RATE]
    for start in range(0, audio.size, 160):  # 3 s of a 10 ms sound card, arriving in real time ...
        end = start + 160
        engine.push(sid, audio[start:end], captured_ns=t0 + round(end * 1e9 / SAMPLE_RATE))
    now = t0 + 3 * 1_000_000_000  # ... while the engine was stalled the whole time
    result = engine.step(now_ns=now)
    deadline_frames = preset.deadline_ms() / 1000 * motion.FPS
    assert result.shed[sid] > 3 * motion.FPS - deadline_frames - 10
    emitted = [f.index for f in result.frames]
    assert emitted and 1 < len(emitted) <= preset.window_frames  # one catch-up hop of what is still current
    # nothing published past its deadline, counted from when its audio was due: when it arrived, and not before
    # its instant on the stream's clock, whose sample 0 is due at the first arrival (StreamState.due_ns)
    anchor = t0 + 10 * MS
    for f in result.frames:
        due = max(f.captured_ns, anchor + round(f.t_audio * 1e9))
        assert now - due <= preset.deadline_ms() * MS
    # caught up: live again, one hop per round, as the audio keeps coming in real time
    frames = []
    for k in range(30):
        at = now + (k + 1) * 10 * MS
        engine.push(sid, speech_16k[k * 160 : (k + 1) * 160], captured_ns=at)
        r = engine.step(now_ns=at)
        assert not r.shed and len(r.frames) <= preset.hop_frames
        frames += r.frames
    assert len(frames) >= 8
    assert [f.index for f in frames] == list(range(emitted[-1] + 1, emitted[-1] + 1 + len(frames)))
    hop_ms = 1000 * preset.hop_frames / motion.FPS
    assert preset.max_lag_ms() == max(MAX_LAG_HOPS * hop_ms, MIN_LAG_MS)
    assert preset.deadline_ms() == pytest.approx(preset.latency_budget_ms() + hop_ms + preset.max_lag_ms())


def test_a_microphone_whose_clock_runs_fast_stays_current_and_is_shed_when_the_engine_stalls(tiny_backend, speech_16k):
    """A device clock running fast (10 % here: 1 s over 10 s, what a 0.1 % USB microphone gathers in 17 minutes) made
    a mic's audio look pushed ahead of real time, due at its instants on the stream's clock: the engine held its hops
    back to those instants, so the face fell behind the voice by the drift, and a stall shed nothing of it (a hunter's
    virtual mic: latency p95 3.3 s). A device's audio is due when it comes. (An SDK stream's audio pushed ahead stays
    due at its instants: test_audio_pushed_ahead_of_real_time_is_not_shed.)"""
    engine = StreamingEngine(tiny_backend, "low-latency", round_clock=lambda: 0)
    sid = engine.open_stream(source="mic")
    t0 = time.monotonic_ns()
    audio = np.tile(speech_16k, 10)[: 12 * SAMPLE_RATE]
    chunk = SAMPLE_RATE // 10
    fast = 11 * SAMPLE_RATE  # 11 s of audio over 10 s, the engine keeping up ...
    last = None
    for start in range(0, fast, chunk):
        at = t0 + round((start + chunk) / 1.1 * 1e9 / SAMPLE_RATE)
        engine.push(sid, audio[start : start + chunk], captured_ns=at)
        result = engine.step(now_ns=at)
        assert not result.shed
        last = result.frames[-1] if result.frames else last
    assert last is not None and fast / SAMPLE_RATE - last.t_audio < 0.2  # its last frame: current, not 1 s behind
    # nor does its drift count as audio sent ahead, which max_ahead_s refuses (at 100 ppm, 20 s in 55 hours)
    assert engine.sessions.get(sid).ahead_s(at) < 0.2
    for start in range(fast, fast + SAMPLE_RATE, chunk):  # ... then 1 s more while the engine is stalled
        at = t0 + round((start + chunk) / 1.1 * 1e9 / SAMPLE_RATE)
        engine.push(sid, audio[start : start + chunk], captured_ns=at)
    result = engine.step(now_ns=at)
    stalled_frames = motion.FPS / 1.1  # the frames whose audio came during the stall (0.91 s)
    deadline_frames = engine.preset.deadline_ms() / 1000 * motion.FPS
    assert result.shed.get(sid, 0) > stalled_frames - deadline_frames - 5


def test_rounds_too_slow_for_the_deadline_shed_frames_instead_of_publishing_them_late(tiny_backend, speech_16k):
    """A round's time counts against the deadline: with rounds that take no time every frame of a real-time
    stream comes; with rounds of 140 ms (the round clock advancing 70 ms a reading; a computing round reads it
    three times) some frames planned would be published past the preset's 223 ms deadline, so the engine
    sheds those and keeps publishing the others, in order, to the stream's last frame. (140 ms is near the
    edge for the low-latency preset: 136 ms sheds nothing, 148 ms sheds most.)"""
    audio = np.tile(speech_16k, 2)[: 2 * SAMPLE_RATE]
    deadline_ns = PRESETS["low-latency"].deadline_ms() * MS

    def stream(round_clock) -> tuple[int, list[int]]:
        engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1, round_clock=round_clock)
        sid = engine.open_stream()
        t0, shed, indices = time.monotonic_ns(), 0, []
        for start in range(0, audio.size, 160):  # a 10 ms sound card in real time, a round per block
            at = t0 + round((start + 160) * 1e9 / SAMPLE_RATE)
            engine.push(sid, audio[start : start + 160], captured_ns=at)
            result = engine.step(now_ns=at)
            shed += sum(result.shed.values())
            indices += [f.index for f in result.frames]
            assert all(at - f.captured_ns <= deadline_ns for f in result.frames)
        return shed, indices

    shed, indices = stream(lambda: 0)
    assert shed == 0 and indices == list(range(len(indices))) and len(indices) > 50
    ticks = itertools.count(0, 70 * MS)
    slow_shed, slow = stream(lambda: next(ticks))
    assert slow_shed > 0 and slow == sorted(set(slow)) and slow != list(range(len(slow)))
    assert len(slow) + slow_shed == len(indices) and slow[-1] == indices[-1]


def test_a_round_estimate_past_the_deadline_still_lets_live_frames_through(tiny_backend, speech_16k):
    """After rounds far slower than the deadline (the estimate at 400 ms), a real-time stream gets its frames again
    within a few rounds once its rounds are fast. Before, every frame was judged stale against the
    estimate, no hop ran to measure a round by, and the stream got no frame again (tested through a runtime: 16
    NPC lines left a live stream at 0 fps for good, new ones refused as shedding)."""
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1, round_clock=lambda: 0)
    sid = engine.open_stream()
    engine._round_ns = 400 * MS
    audio, t0, shed, indices = np.resize(speech_16k, 2 * SAMPLE_RATE), time.monotonic_ns(), 0, []
    for start in range(0, audio.size, 160):
        at = t0 + round((start + 160) * 1e9 / SAMPLE_RATE)
        engine.push(sid, audio[start : start + 160], captured_ns=at)
        result = engine.step(now_ns=at)
        shed += sum(result.shed.values())
        indices += [f.index for f in result.frames]
    assert len(indices) > 45 and shed <= 10, (len(indices), shed)  # a few frames while the estimate comes down
    assert indices[-40:] == list(range(indices[-40], indices[-1] + 1))  # then every one
    assert engine._round_ns < 10 * MS


def test_lines_and_live_hops_take_rounds_of_their_own(tiny_backend, speech_16k):
    """NPC lines pushed whole while a live stream runs: no round holds both (a line's round, its first features
    over all of its audio and whole windows, can take far longer than a live hop's), the live stream sheds no
    frame, and the lines are not starved by live hops ready in every round: they get a round once they have
    waited LINE_WAIT_MS, and every frame of theirs comes."""
    from ksdiff_runtime.engine.engine import LINE_WAIT_MS

    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1, round_clock=lambda: 0)
    live = engine.open_stream()
    audio = np.resize(speech_16k, 4 * SAMPLE_RATE)
    hop = frame_sample(1)
    t0, mixed, live_frames, line_rounds, lines = time.monotonic_ns(), 0, [], [], []
    for k, start in enumerate(range(0, audio.size - hop, hop)):  # a live hop's audio before every round
        at = t0 + round((start + hop) * 1e9 / SAMPLE_RATE)
        engine.push(live, audio[start : start + hop], captured_ns=at)
        if k == 10:
            for n in range(3):
                lines.append(engine.open_stream(mode="line", seed=n))
                engine.push(lines[-1], speech_16k[: (2 + n) * SAMPLE_RATE], captured_ns=at)
                engine.end_stream(lines[-1])
        while engine.has_work():
            result = engine.step(now_ns=at)
            kinds = {f.stream == live for f in result.frames}
            mixed += len(kinds) == 2
            live_frames += [f.index for f in result.frames if f.stream == live]
            if kinds == {False}:
                line_rounds.append(at)
            assert not result.shed
            if result.frames and kinds == {True}:
                break  # the live stream's hop is done: its next audio comes with the next round
    assert mixed == 0
    assert live_frames == list(range(len(live_frames))) and len(live_frames) > 100
    assert set(lines).isdisjoint(engine.stream_ids)  # every line ended, with all of its frames
    assert all(b - a >= LINE_WAIT_MS * MS for a, b in itertools.pairwise(line_rounds))


def test_beside_a_live_stream_a_round_of_lines_takes_the_oldest_lines_that_fit(tiny_backend, speech_16k):
    """A round of 32 lines' first windows took over a second, and a live stream beside them published frames 264 ms
    after their audio, past its 223 ms deadline. While live streams run, a round of lines takes only the lines that fit
    LINE_ROUND_MS by their measured cost, the oldest first. Rounds here take 40 ms on the engine's clock (a tick of
    20 ms per reading), so one line fits a round: every round of lines animates one line, in the order they opened."""
    from ksdiff_runtime.engine.engine import LINE_ROUND_MS

    ticks = itertools.count(0, 20 * MS)
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1, round_clock=lambda: next(ticks))
    live = engine.open_stream()
    audio = np.resize(speech_16k, 6 * SAMPLE_RATE)
    hop = frame_sample(1)
    t0, lines, first_round, rounds = time.monotonic_ns(), [], {}, 0
    for k, start in enumerate(range(0, audio.size - hop, hop)):  # a live hop's audio before every round
        at = t0 + round((start + hop) * 1e9 / SAMPLE_RATE)
        engine.push(live, audio[start : start + hop], captured_ns=at)
        if k == 10:
            for n in range(4):
                lines.append(engine.open_stream(mode="line", seed=n))
                engine.push(lines[-1], speech_16k[: SAMPLE_RATE], captured_ns=at)
                engine.end_stream(lines[-1])
        while engine.has_work():
            result = engine.step(now_ns=at)
            rounds += 1
            line_streams = {f.stream for f in result.frames if f.stream != live}
            assert len(line_streams) <= 1  # 40 ms a line: one fits LINE_ROUND_MS
            for sid in line_streams:
                first_round.setdefault(sid, rounds)
            if result.frames and all(f.stream == live for f in result.frames):
                break
    assert engine._lines_per_round() == LINE_ROUND_MS // 40 == 1
    assert set(lines).isdisjoint(engine.stream_ids)  # every line ended, with all of its frames
    assert [first_round[sid] for sid in lines] == sorted(first_round[sid] for sid in lines)  # the oldest first


def test_a_line_under_way_is_not_held_up_by_one_opened_before_its_audio_came(tiny_backend, speech_16k):
    """Lines opened ahead of their audio are a supported pattern. With rounds of one line (40 ms each on the engine's
    clock) and lines ordered by opening, a line opened early whose audio came late took every round of lines until it
    was done, while a line already playing stalled mid-line, its frames late for its stated latency."""
    ticks = itertools.count(0, 20 * MS)
    engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1, round_clock=lambda: next(ticks))
    live = engine.open_stream()
    early = engine.open_stream(mode="line", seed=1)  # its audio comes later
    audio = np.resize(speech_16k, 8 * SAMPLE_RATE)
    hop = frame_sample(1)
    t0, playing, rounds = time.monotonic_ns(), None, 0
    frames_at: dict[str, list[int]] = {}
    for k, start in enumerate(range(0, audio.size - hop, hop)):
        at = t0 + round((start + hop) * 1e9 / SAMPLE_RATE)
        engine.push(live, audio[start : start + hop], captured_ns=at)
        if k == 5:
            playing = engine.open_stream(mode="line", seed=2)
            engine.push(playing, np.resize(speech_16k, 8 * SAMPLE_RATE), captured_ns=at)
            engine.end_stream(playing)
        if k == 12:  # the playing line is under way
            engine.push(early, np.resize(speech_16k, 4 * SAMPLE_RATE), captured_ns=at)
            engine.end_stream(early)
        while engine.has_work():
            result = engine.step(now_ns=at)
            rounds += 1
            for f in result.frames:
                frames_at.setdefault(f.stream, []).append(rounds)
            if result.frames and all(f.stream == live for f in result.frames):
                break
    assert early in frames_at and playing in frames_at
    assert max(frames_at[playing]) < min(frames_at[early])  # the line under way finished first


def test_a_lines_stated_latency_counts_the_lines_before_it(tiny_backend):
    """32 lines opened at once beside a live stream were each told 223 ms and got their first frames after 0.9-1.6 s:
    the lip-sync of every line was late for its first second. A line's stated latency counts the lines not started
    yet, by their measured cost, and the live hops their rounds wait behind."""
    from ksdiff_runtime.engine.engine import LINE_WAIT_MS

    engine = StreamingEngine(tiny_backend, "low-latency", round_clock=lambda: 0)
    t0 = time.monotonic_ns()
    engine.push(engine.open_stream(), np.zeros(1600, np.float32), captured_ns=t0)  # a live stream, its audio coming
    engine._line_cost_ns = 40 * MS  # as measured: a line's window adds 40 ms to a round of lines (one fits)
    for n in range(3):  # lines opened ahead of their audio wait for it, not in the queue
        engine.open_stream(mode="line", seed=100 + n)
    stated = []
    for n in range(4):
        stated.append(engine.latency_ms("line"))  # what the next line is told
        engine.push(engine.open_stream(mode="line", seed=n), np.zeros(16000, np.float32), captured_ns=t0)
    assert stated == sorted(stated) and stated[0] == engine.preset.deadline_ms() < stated[-1]
    assert stated[-1] == pytest.approx(1.25 * 4 * (40 + LINE_WAIT_MS))


def test_audio_pushed_ahead_of_real_time_is_not_shed(tiny_backend, speech_16k):
    """An NPC line pushed whole (ahead of real time) is due at its own instants: every frame comes, none
    is shed, even when the engine is slow to get to it. (The round clock is frozen: a round slower than the
    170 ms left before the first frame's deadline, on a busy test machine, would rightly shed it.)"""
    engine = StreamingEngine(tiny_backend, "low-latency", round_clock=lambda: 0)
    sid = engine.open_stream()
    t0 = time.monotonic_ns()
    engine.push(sid, speech_16k, captured_ns=t0)
    engine.end_stream(sid)
    frames, _ = finish(engine, sid, now_ns=t0 + 50 * MS)
    assert len(frames) == stream_frames(speech_16k.size, motion.FPS)
    assert [f.index for f in frames] == list(range(len(frames)))


def test_long_streams_keep_bounded_state(tiny_backend):
    engine = StreamingEngine(tiny_backend, "quality")
    sid = engine.open_stream()
    rng = np.random.default_rng(0)
    for _ in range(30):  # 30 s of noise in 1 s chunks
        engine.push(sid, (rng.normal(size=SAMPLE_RATE) * 0.05).astype(np.float32))
        while engine.has_work():
            engine.step()
    state = engine.sessions.get(sid).state
    assert state._audio.size < 3 * SAMPLE_RATE
    assert len(state._feats) < 3 * motion.FPS + tiny_backend.constants.cfg.encoder_context_frames + 30
    assert len(state._arrivals) <= 1


def test_a_source_faster_than_real_time_waits_for_the_engine(tiny_backend):
    """A file played as fast as possible is read only as fast as the engine animates it: the audio
    waiting for the engine (queued, or held unanimated) stays near SOURCE_QUEUE_S, not the file's length."""
    engine = StreamingEngine(tiny_backend, "low-latency")
    session = engine.sessions.open("file", "file", AudioFormat(), admit=False)
    audio = (0.05 * np.random.default_rng(0).standard_normal(20 * SAMPLE_RATE)).astype(np.float32)
    stop = threading.Event()

    def feeder() -> None:
        for i in range(0, audio.size, 1600):
            engine.sessions.feed_from_source(session, audio[i : i + 1600], None, stop)
        engine.sessions.end(session)

    thread = threading.Thread(target=feeder, daemon=True)
    thread.start()
    waiting = kept = frames = 0
    while not session.finished:
        frames += len(engine.step().frames)
        state = session.state
        unanimated = state.samples - frame_sample(state.emitted) if state else 0
        waiting = max(waiting, session.pending_samples + unanimated)
        kept = max(kept, state._audio.size if state else 0)  # plus the context the front-end still reads
    thread.join(5)
    assert frames == stream_frames(audio.size, motion.FPS)
    print(f"waiting {waiting / SAMPLE_RATE:.2f} s, kept {kept / SAMPLE_RATE:.2f} s")
    assert waiting < (SOURCE_QUEUE_S + 0.5) * SAMPLE_RATE, waiting / SAMPLE_RATE
    assert kept < (SOURCE_QUEUE_S + 3.0) * SAMPLE_RATE, kept / SAMPLE_RATE


def test_presets_are_validated():
    with pytest.raises(ValueError, match="hop_frames"):
        Preset("x", hop_frames=0, window_frames=4, model_lookahead_frames=0, steps=2, crossfade_frames=0,
               feature_block_frames=1, feature_lookahead_ms=0)
    with pytest.raises(ValueError, match="crossfade"):
        Preset("x", hop_frames=4, window_frames=4, model_lookahead_frames=0, steps=2, crossfade_frames=2,
               feature_block_frames=1, feature_lookahead_ms=0)
    with pytest.raises(ValueError, match=r"feature_lookahead_ms must be > -33\.3"):
        Preset("x", hop_frames=1, window_frames=4, model_lookahead_frames=0, steps=1, crossfade_frames=0,
               feature_block_frames=1, feature_lookahead_ms=-34)
    assert PRESETS["low-latency"].latency_budget_ms() < PRESETS["quality"].latency_budget_ms()


@pytest.mark.parametrize("feature_lookahead_ms", [0, -13, 20])
def test_a_hop_runs_as_soon_as_the_audio_it_waits_for_is_there(tiny_backend, speech_16k, feature_lookahead_ms):
    """A one-frame hop with model lookahead L makes frame k once the audio to (k + L + 1) / FPS s plus the
    feature lookahead is there, and not a sample before: a negative feature lookahead reads a frame before
    its whole period has been heard, and the preset's stated audio wait is what the engine waits."""
    preset = dataclasses.replace(PRESETS["low-latency"], feature_lookahead_ms=feature_lookahead_ms)
    engine = StreamingEngine(tiny_backend, preset)
    sid = engine.open_stream()
    L = preset.model_lookahead_frames
    fed = 0
    for k in range(12):
        need = -(-(k + L + 1) * SAMPLE_RATE // motion.FPS) + round(feature_lookahead_ms * SAMPLE_RATE / 1000)
        engine.push(sid, speech_16k[fed : need - 1])
        fed = need - 1
        assert [f.index for f in engine.step().frames] == [], k  # one sample short: frame k waits
        engine.push(sid, speech_16k[fed:need])
        fed = need
        frames = engine.step().frames
        assert [f.index for f in frames] == [k]
        waited_ms = 1000 * (need - k * SAMPLE_RATE / motion.FPS) / SAMPLE_RATE  # after frame k's instant
        assert waited_ms == pytest.approx(preset.latency_budget_ms(), abs=0.07)
        assert frames[0].lookahead_ms == pytest.approx(waited_ms, abs=0.07)  # what the frame says it heard


def test_in_10_ms_blocks_a_frame_read_10_ms_early_comes_with_the_same_block_as_13_ms_early(tiny_backend, speech_16k):
    """A sound card (`serve --mic`) and `serve --file` deliver 10 ms blocks from a stream's first sample. Every
    frame read 10 ms before its period ends waits for the very block it waited for read 13 ms early (the audio
    either needs ends in that block), so the model hears up to 3 ms more audio at no latency."""
    block = SAMPLE_RATE // 100

    def made(early: int, phase: int) -> dict[int, int]:
        """frame -> the block it came with, the blocks ``phase`` samples off the stream's first sample"""
        engine = StreamingEngine(tiny_backend, dataclasses.replace(PRESETS["low-latency"], feature_lookahead_ms=early))
        sid = engine.open_stream()
        ends = [phase, *range(phase + block, speech_16k.size, block)] if phase else range(block, speech_16k.size, block)
        out, start = {}, 0
        for b, end in enumerate(ends):
            engine.push(sid, speech_16k[start:end])
            start = end
            while engine.has_work():
                out |= {f.index: b for f in engine.step().frames}
        return out

    assert made(-10, 0) == made(-13, 0) and len(made(-10, 0)) >= 30
    # blocks at another phase: a frame read 13 ms early comes a block sooner when its 87th ms after the instant
    # falls in a block's last 3 ms: one of the frames' three phases on the 10 ms grid, a third of the frames
    # (at 9 block phases in 10); never later, never more than a block sooner
    for phase in (37, 91, 133):
        late, early = made(-10, phase), made(-13, phase)
        assert late.keys() == early.keys()
        sooner = [k for k in late if late[k] != early[k]]
        assert all(late[k] == early[k] + 1 for k in sooner), (phase, sooner)
        assert len({k % 3 for k in sooner}) == 1 and 0.25 < len(sooner) / len(late) < 0.4, (phase, sooner)


def test_eval_stream_variants_name_preset_fields():
    from ksdiff_runtime.cli.training import parse_variant

    v = parse_variant("low-latency:hop_frames=2,feature_block_frames=2,feature_left_context_ms=none")
    assert (v.hop_frames, v.feature_block_frames, v.feature_left_context_ms) == (2, 2, None)
    assert v.steps == PRESETS["low-latency"].steps and v.name.startswith("low-latency[")
    with pytest.raises(SystemExit, match="not FIELD=VALUE"):
        parse_variant("low-latency:hops=2")
    with pytest.raises(ValueError, match="unknown preset"):
        parse_variant("fast")


def test_lines_keep_their_engine_presets_head_smoothing(tiny_backend):
    """What `eval-stream --line-preset` changes: lines derive from the engine's preset (docs/ENGINE.md)."""
    from ksdiff_runtime.cli.training import parse_variant

    default = StreamingEngine(tiny_backend, "low-latency").line_preset
    assert default.head_smoothing_ms == PRESETS["low-latency"].head_smoothing_ms == 100.0
    assert (default.hop_frames, default.window_frames) == (tiny_backend.constants.cfg.train_window_frames,) * 2
    unsmoothed = StreamingEngine(tiny_backend, parse_variant("low-latency:head_smoothing_ms=0.0")).line_preset
    assert unsmoothed.head_smoothing_ms == 0.0 and unsmoothed.steps == default.steps


def test_each_round_reports_the_audio_level_of_its_frames(tiny_backend):
    """Meters (the preview page) read the level of the audio each hop animated: silence, then a tone."""
    engine = StreamingEngine(tiny_backend, "low-latency")
    sid = engine.open_stream()
    tone = (0.5 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    engine.push(sid, np.concatenate([np.zeros(SAMPLE_RATE, np.float32), tone]))
    engine.end_stream(sid)
    levels = []
    while engine.has_work():
        levels += engine.step().levels
    assert levels and all(lv.stream == sid for lv in levels)
    ends = [lv.t_audio for lv in levels]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(2.0, abs=0.05)
    silent = [lv.rms_dbfs for lv in levels if lv.t_audio <= 0.9]
    loud = [lv.rms_dbfs for lv in levels if lv.t_audio > 1.2]
    assert max(silent) == -120.0
    assert min(loud) == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.5)  # -9.0 dBFS


def test_a_line_is_animated_in_whole_windows_and_never_shed(tiny_backend, speech_16k):
    """Mode line: the audio is already there, so the engine takes whole training windows per round (not the
    live hop), never sheds (real time does not apply), and the frames mean the same: same count, indices,
    clock, last, ease to rest."""
    engine = StreamingEngine(tiny_backend, "low-latency")
    long_ago = time.monotonic_ns() - 60_000_000_000  # its audio "arrived" a minute ago: a live stream would shed
    sid = engine.open_stream(mode="line")
    engine.push(sid, speech_16k, captured_ns=long_ago)
    engine.end_stream(sid)
    frames, rounds, shed = [], 0, 0
    while engine.has_work():
        result = engine.step()
        frames += result.frames
        shed += sum(result.shed.values())
        rounds += 1
    window = tiny_backend.constants.cfg.train_window_frames
    assert shed == 0 and rounds <= -(-output_frames(speech_16k.size, motion.FPS) // window) + 1
    assert [f.index for f in frames] == list(range(stream_frames(speech_16k.size, motion.FPS)))
    assert [f.last for f in frames] == [False] * (len(frames) - 1) + [True]
    assert all(f.captured_ns == long_ago for f in frames[: -ease_frames(motion.FPS)])
    # the same audio as a live stream: the same number of frames, similar motion
    live = run_stream(engine, [speech_16k])
    assert len(live) == len(frames)


def test_the_stated_latency_of_a_line_covers_how_long_the_last_lines_first_frames_took(tiny_backend, speech_16k):
    """A live stream states the preset's deadline; a line states (at least) how long a line's first frames
    took to come after its audio, as just measured: a game that starts the audio that much later has them."""
    engine = StreamingEngine(tiny_backend, "low-latency")
    deadline = engine.preset.deadline_ms()
    assert engine.latency_ms("live") == engine.latency_ms("line") == deadline  # nothing measured yet
    sid = engine.open_stream(mode="line")
    pushed = time.monotonic_ns() - 1_000_000_000  # as if its audio had waited a second: a slow machine
    engine.push(sid, speech_16k, captured_ns=pushed)
    engine.end_stream(sid)
    first_ms = None
    while engine.has_work():
        if engine.step().frames and first_ms is None:
            first_ms = (time.monotonic_ns() - pushed) / 1e6
    assert first_ms is not None and first_ms > deadline
    assert engine.latency_ms("line") >= first_ms
    assert engine.latency_ms("live") == deadline


def test_lines_at_once_share_the_cores_and_get_the_frames_one_thread_gives(tiny_backend, speech_16k):
    """A round of several lines runs its model batch in parts on the pool's threads: the frames are those
    of one call on one thread (to float precision), each line its own."""
    def lines(threads: int) -> list[np.ndarray]:
        engine = StreamingEngine(tiny_backend, "low-latency", front_end_threads=threads)
        try:
            sids = [engine.open_stream(seed=k, mode="line") for k in range(3)]
            for k, sid in enumerate(sids):
                engine.push(sid, np.roll(speech_16k, 4000 * k))
                engine.end_stream(sid)
            frames, _ = finish(engine, *sids)
        finally:
            engine.close()
        return [np.stack([f.blendshapes for f in frames if f.stream == sid]) for sid in sids]

    one, two = lines(1), lines(2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert not np.allclose(one[0], one[1])  # the lines differ: no mix-up can hide


def test_a_line_whose_audio_trickles_in_waits_for_whole_windows(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, "low-latency")
    sid = engine.open_stream(mode="line")
    window = tiny_backend.constants.cfg.train_window_frames
    engine.push(sid, speech_16k[: 16000 // 2])  # 15 frames: less than a window
    assert not engine.has_work() or not engine.step().frames
    engine.push(sid, speech_16k[8000:])  # 45 frames: one window's worth (and its lookahead)
    frames = []
    while engine.has_work():
        frames += engine.step().frames
    assert len(frames) == window
    engine.end_stream(sid)
    frames += finish(engine, sid)[0]
    assert [f.index for f in frames] == list(range(stream_frames(speech_16k.size, motion.FPS)))


@pytest.mark.parametrize("feature_lookahead_ms", [0, -13])
def test_a_line_pushed_in_pieces_gets_the_frames_it_gets_pushed_whole(tiny_backend, speech_16k, feature_lookahead_ms):
    """A line's first features come from one pass over the audio there is; when a preset reads frames early,
    the audio can give one frame more than its whole periods, which must come from its own group (not the
    pass, which would shift every later frame by one)."""
    preset = dataclasses.replace(PRESETS["low-latency"], feature_lookahead_ms=feature_lookahead_ms)
    engine = StreamingEngine(tiny_backend, preset)
    window = tiny_backend.constants.cfg.train_window_frames + preset.model_lookahead_frames
    # the first piece: 33.98 periods, a window and its lookahead when the last frame is read early
    first = window * SAMPLE_RATE // motion.FPS - 11
    whole = run_stream(engine, [speech_16k], seed=3, mode="line")
    pieces = run_stream(engine, [speech_16k[:first], speech_16k[first:]], seed=3, mode="line")
    assert [f.index for f in pieces] == [f.index for f in whole]
    (b1, h1), (b2, h2) = as_arrays(whole), as_arrays(pieces)
    # frame 33 of the pieces was read early, from 13 ms less audio than the whole line had: the frames before
    # those that look at it are the same (but for float rounding: the first pass is over less audio), the rest
    # close (features shifted by a frame differed by 0.07 from frame 0)
    same = 33 - preset.model_lookahead_frames if feature_lookahead_ms < 0 else len(b1)
    np.testing.assert_allclose(b1[:same], b2[:same], atol=1e-5)
    np.testing.assert_allclose(h1[:same], h2[:same], atol=1e-5)
    np.testing.assert_allclose(b1, b2, atol=5e-3)


@pytest.mark.parametrize("tail", [0, 100, 400, 532])
def test_a_stream_ending_in_a_frames_last_moments_gets_the_same_frames_however_it_arrives(
        tiny_backend, speech_16k, tail):
    """Audio that ends inside a frame's period, in the 13 ms a preset reads early or before them, with
    groups of one frame and of three: the same frames, whole or in pieces, and one per whole period."""
    audio = speech_16k[: 40 * SAMPLE_RATE // motion.FPS + tail]
    for block in (1, 3):
        preset = dataclasses.replace(PRESETS["low-latency"], feature_block_frames=block)
        engine = StreamingEngine(tiny_backend, preset)
        rng = np.random.default_rng(tail + block)
        whole = run_stream(engine, [audio], seed=7)
        chunked = run_stream(engine, random_chunks(audio, rng, 700), seed=7)
        assert len(whole) == len(chunked) == stream_frames(audio.size, motion.FPS)
        (b1, h1), (b2, h2) = as_arrays(whole), as_arrays(chunked)
        assert np.array_equal(b1, b2) and np.array_equal(h1, h2), block


def test_a_resampled_streams_end_never_reaches_the_engine_before_its_tail():
    """The end of a 44.1 kHz stream flushes its resampler's tail. The engine may take a round while the tail is
    being made (another thread); it must not see the end until the tail is queued with it, or the tail would
    reach an ended stream and fail it (seen in CI: a file source's last frames and ease lost)."""
    from ksdiff_runtime.inputs.stream import AudioFormat
    from ksdiff_runtime.sessions import Sessions

    sessions = Sessions()
    session = sessions.open("resampled", "file", AudioFormat(44_100, 1, "f32le"), seed=0)
    sessions.feed(session, np.zeros(44_100 // 2, np.float32))
    taken: list[tuple[int, bool]] = []  # (samples, end) of each round's take
    real_flush = session.input.flush

    def flush_while_the_engine_takes():
        taken.extend((sum(p.audio.size for p in chunks), end) for _, chunks, end in sessions.take())
        return real_flush()

    session.input.flush = flush_while_the_engine_takes
    assert sessions.end(session)
    taken.extend((sum(p.audio.size for p in chunks), end) for _, chunks, end in sessions.take())
    ends = [i for i, (_, end) in enumerate(taken) if end]
    assert len(ends) == 1 and ends[0] == len(taken) - 1  # the end comes in the last take
    assert taken[-1][0] > 0  # with the tail
    assert not sessions.end(session)  # once

