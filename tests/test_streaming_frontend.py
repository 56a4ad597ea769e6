"""The streaming-recogniser front-end: a live stream's features are a function of its audio up to each
group's end (however the audio arrives), read from the recogniser frames final by then; lines and
streams without a recogniser stream keep the windowed features; gaps restart the recogniser."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features.frontend import HAMA_CLASSES, PPG_LOG_FLOOR, FrontEndConfig, PosteriorgramFrontEnd
from ksdiff_runtime.features.streaming_frontend import BLANK_LOG_PROBS, WEIGHTS, StreamingPosteriorgramFrontEnd
from ksdiff_runtime.features.streaming_recogniser import StreamingRecogniser
from ksdiff_runtime.motion import SAMPLE_RATE, num_frames

CONFIG = FrontEndConfig(left_context_ms=150, lookahead_ms=0)  # the low-latency preset's


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, _ = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    return audio[: int(2.5 * SAMPLE_RATE)]


@pytest.fixture(scope="module")
def front_end() -> StreamingPosteriorgramFrontEnd:
    return StreamingPosteriorgramFrontEnd(CONFIG, weights=None)  # hama's weights, chunked


def _stream_features(fe, audio: np.ndarray, groups: list[tuple[int, int]], keep_s: float = 10.0) -> np.ndarray:
    """Every group's features as an engine asks for them: the audio up to the group's end, kept from a
    little before (as a stream trims its audio)."""
    ppg = fe.new_stream()
    out = []
    for f0, f1 in groups:
        s1 = min(audio.size, fe.range_samples(f0, f1)[1])
        offset = max(0, min(fe.range_samples(f0, f1)[0], s1 - int(keep_s * SAMPLE_RATE)))
        out.append(fe.many_range_features([(audio[offset:s1], f0, f1, offset, ppg)])[0])
    return np.concatenate(out)


@pytest.mark.parametrize("lookahead_ms", [0, -13])
def test_features_are_the_final_recogniser_frames_by_the_groups_end(front_end, speech, lookahead_ms):
    """The posteriorgram part, checked against the torch stream fed the same audio: each motion frame
    interpolates the 20 ms frames around it, a frame not final yet holding the last final one. Also for a
    group read before its last frame's period is all there (a negative lookahead)."""
    config = dataclasses.replace(CONFIG, lookahead_ms=lookahead_ms)
    if config != CONFIG:
        front_end = StreamingPosteriorgramFrontEnd(config, weights=None)
    n = num_frames(speech.size) - 1
    got = _stream_features(front_end, speech, [(f, f + 1) for f in range(n)])
    torch.set_num_threads(1)
    ref = StreamingRecogniser.from_hama_streaming(lookahead=0)
    for f in (0, 1, 7, 30, 55, n - 1):
        s1 = front_end.range_samples(f, f + 1)[1]
        state = ref.new_stream()
        final = ref.stream(state, speech[:s1]).numpy()
        t = f * SAMPLE_RATE / 30
        q = int(t // 320)
        # before the first recogniser frame is final: blank
        lo, hi = (final[min(k, final.shape[0] - 1)] if final.shape[0] else BLANK_LOG_PROBS for k in (q, q + 1))
        w = (t - 320 * q) / 320
        want = (1 - w) * (np.maximum(lo, PPG_LOG_FLOOR) + 5) / 5 + w * (np.maximum(hi, PPG_LOG_FLOOR) + 5) / 5
        assert np.abs(got[f, :HAMA_CLASSES] - want).max() < 0.03, f
    # the log-mel part is the windowed front-end's: the same segment, the same grid
    windowed = np.concatenate([PosteriorgramFrontEnd(config).many_range_features(
        [(speech[: front_end.range_samples(f, f + 1)[1]], f, f + 1, 0)])[0] for f in range(n)])
    assert np.abs(got[:, HAMA_CLASSES:] - windowed[:, HAMA_CLASSES:]).max() < 1e-5


def test_features_do_not_depend_on_how_the_audio_arrives(front_end, speech):
    n = num_frames(speech.size) - 1
    one_by_one = _stream_features(front_end, speech, [(f, f + 1) for f in range(n)])
    # the same frames asked for again by a stream that keeps only the audio a group needs (not all of it)
    again = _stream_features(front_end, speech, [(f, f + 1) for f in range(n)], keep_s=0.0)
    assert np.array_equal(one_by_one, again)


def test_many_streams_in_one_call_each_get_their_own(front_end, speech):
    other = np.ascontiguousarray(0.4 * speech[::-1])
    n = 40
    alone = [_stream_features(front_end, a, [(f, f + 1) for f in range(n)]) for a in (speech, other)]
    ppgs = [front_end.new_stream(), front_end.new_stream()]
    together: list[list[np.ndarray]] = [[], []]
    for f in range(n):
        s1 = front_end.range_samples(f, f + 1)[1]
        requests = [(a[:s1], f, f + 1, 0, p) for a, p in zip((speech, other), ppgs, strict=True)]
        feats = front_end.many_range_features(requests)
        for out, x in zip(together, feats, strict=True):
            out.append(x)
    for a, t in zip(alone, together, strict=True):
        assert np.array_equal(a, np.concatenate(t))


def test_a_stream_catching_up_and_a_line_without_a_recogniser_stream(front_end, speech):
    """Several groups of one stream in one call are read in order, each from its own audio; a request
    without a recogniser stream is the windowed front-end's."""
    n = 30
    one_call = front_end.many_range_features(
        [(speech[: front_end.range_samples(f, f + 1)[1]], f, f + 1, 0, ppg) for ppg in [front_end.new_stream()]
         for f in range(n)])
    assert np.array_equal(np.concatenate(one_call), _stream_features(front_end, speech, [(f, f + 1) for f in range(n)]))
    windowed = PosteriorgramFrontEnd(CONFIG)
    assert np.array_equal(front_end.many_range_features([(speech, 10, 13, 0)])[0],
                          windowed.many_range_features([(speech, 10, 13, 0)])[0])


def test_a_gap_the_stream_skipped_restarts_the_recogniser(front_end, speech):
    ppg = front_end.new_stream()
    front_end.many_range_features([(speech[:5000], 0, 9, 0, ppg)])
    s0, s1 = front_end.range_samples(60, 61)  # 1.7 s later; the audio between is gone
    feats = front_end.many_range_features([(speech[s0:s1], 60, 61, s0, ppg)])[0]
    assert ppg.origin == s0 and np.isfinite(feats).all() and feats.shape == (1, front_end.dim)
    with pytest.raises(ValueError, match="20 ms grid"):
        front_end.new_stream(100)


def test_the_end_of_a_stream_gives_its_last_frames(front_end, speech):
    clip = speech[: 20000]
    n = num_frames(clip.size)
    feats = _stream_features(front_end, clip, [(f, min(n, f + 3)) for f in range(0, n, 3)])
    assert feats.shape == (n, front_end.dim) and np.isfinite(feats).all()


def test_the_shipped_weights_load():
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 5_000_000
    fe = StreamingPosteriorgramFrontEnd(CONFIG)
    assert fe.new_stream().asr.chunk == 1


@pytest.fixture(scope="module")
def shipped_backend():
    from ksdiff_runtime.backends import load_backend

    return load_backend("onnxruntime-cpu")


def _run(engine, audio: np.ndarray, pieces: list[int], mode: str = "live") -> tuple[np.ndarray, object]:
    sid = engine.open_stream("s", seed=3, mode=mode)
    state, frames, k, pos = None, [], 0, 0
    while pos < audio.size:
        n = pieces[k % len(pieces)]
        engine.push(sid, audio[pos : pos + n])
        pos, k = pos + n, k + 1
        if pos >= audio.size:
            engine.end_stream(sid)
        frames += engine.step().frames
        state = state or engine.sessions.get(sid).state
    while engine.stream_ids:
        frames += engine.step().frames
    return np.stack([f.blendshapes for f in frames]), state


def test_the_engine_gives_live_streams_a_recogniser_stream_and_the_same_frames_however_audio_arrives(
        shipped_backend, speech):
    from ksdiff_runtime.engine.engine import StreamingEngine

    audio = speech[: int(1.5 * SAMPLE_RATE)]
    engine = StreamingEngine(shipped_backend, "low-latency", front_end_threads=1)
    assert isinstance(engine.front_end, StreamingPosteriorgramFrontEnd)
    a, state = _run(engine, audio, [533])
    assert state.ppg is not None and state.ppg.asr.frames_out > 0
    b, _ = _run(engine, audio, [1, 4000, 77, 160, 2999])
    assert np.array_equal(a, b)
    _, line = _run(engine, audio, [audio.size], mode="line")
    assert line.ppg is None  # lines read the full-context recogniser over their whole audio
    windowed = StreamingEngine(shipped_backend, "low-latency", front_end_threads=1, streaming_recogniser=False)
    c, state = _run(windowed, audio, [533])
    assert state.ppg is None and not isinstance(windowed.front_end, StreamingPosteriorgramFrontEnd)
    assert c.shape == a.shape and not np.array_equal(a, c)
    engine.close()
    windowed.close()


def test_serve_keeps_it_on_unless_asked():
    from pathlib import Path

    from ksdiff_runtime.cli import build_parser
    from ksdiff_runtime.server.config import load_config

    shipped = load_config(Path(__file__).resolve().parent.parent / "configs" / "serve.toml", {})
    assert shipped.streaming_recogniser is True
    argv = ["serve", "--windowed-recogniser"]
    args = build_parser(argv).parse_args(argv)
    assert load_config(None, vars(args)).streaming_recogniser is False


def test_bakes_read_the_streaming_recogniser_over_the_whole_clip_unless_asked(shipped_backend, speech):
    from ksdiff_runtime.engine.offline import clip_inputs
    from ksdiff_runtime.features.streaming_recogniser_onnx import OnnxStreamingRecogniser

    clip = speech[: 2 * SAMPLE_RATE]
    streamed = clip_inputs(shipped_backend, clip).feats
    full = clip_inputs(shipped_backend, clip, streaming_recogniser=False).feats
    assert streamed.shape == full.shape
    assert np.array_equal(streamed[:, HAMA_CLASSES:], full[:, HAMA_CLASSES:])  # the same log-mel
    assert not np.allclose(streamed[:, :HAMA_CLASSES], full[:, :HAMA_CLASSES], atol=0.1)
    # motion frame 3 (100 ms) sits on 20 ms frame 5: its posteriorgram is the streaming recogniser's frame 5
    lp = OnnxStreamingRecogniser(WEIGHTS, lookahead=0).whole(clip)
    want = (np.maximum(lp[5], PPG_LOG_FLOOR) + 5) / 5
    assert np.abs(streamed[3, :HAMA_CLASSES] - want).max() < 1e-3


def test_a_whole_clip_by_the_live_schedule_is_what_a_stream_reads(front_end, speech):
    """``__call__`` (a model's training features of the live schedule) equals an engine's stream of the clip
    in whole blocks; each block depends on the audio up to its end only."""
    fpb = front_end.frames_per_block
    blocks = [(k * fpb, (k + 1) * fpb) for k in range(front_end.num_blocks(speech.size))]
    whole = front_end(speech)
    assert whole.shape == (num_frames(speech.size), front_end.dim)
    np.testing.assert_array_equal(whole, _stream_features(front_end, speech, blocks))
    k = 6
    early = front_end(speech[: front_end.samples_needed(k)])
    np.testing.assert_array_equal(early[: (k + 1) * fpb], whole[: (k + 1) * fpb])
    # with 60 ms of lookahead every frame of a block is final when it is read: the whole-clip call's frames
    ahead = StreamingPosteriorgramFrontEnd(FrontEndConfig(left_context_ms=150, lookahead_ms=60), weights=None)
    assert np.abs(ahead(speech) - ahead.offline(speech)).max() < 1e-3


def test_a_model_config_names_its_recogniser():
    from ksdiff_runtime.features.frontend import make_front_end

    assert type(make_front_end(FrontEndConfig())) is PosteriorgramFrontEnd
    assert type(make_front_end(FrontEndConfig(recogniser="streaming"))) is StreamingPosteriorgramFrontEnd
    with pytest.raises(ValueError, match="unknown recogniser 'hama'; known: full-context, streaming"):
        FrontEndConfig(recogniser="hama")
    with pytest.raises(ValueError, match="is for the 'ppg' front-end"):
        FrontEndConfig(name="logmel", recogniser="streaming")


def test_a_group_is_never_read_before_its_last_frames_instant():
    with pytest.raises(ValueError, match=r"lookahead_ms must be > -33.3 \(a frame's period\), got -34"):
        PosteriorgramFrontEnd(FrontEndConfig(left_context_ms=150, lookahead_ms=-34))
    early = PosteriorgramFrontEnd(FrontEndConfig(left_context_ms=150, lookahead_ms=-33))
    assert early.range_samples(3, 4)[1] == -(-4 * SAMPLE_RATE // 30) - 528 > 3 * SAMPLE_RATE // 30
    # a whole clip ending in its last frame's last 13 ms: that frame is read early, and the clip has no such frame
    for fe in (PosteriorgramFrontEnd(FrontEndConfig(left_context_ms=150, lookahead_ms=-13)),
               StreamingPosteriorgramFrontEnd(FrontEndConfig(left_context_ms=150, lookahead_ms=-13), weights=None)):
        for n in (1500, 1599, 3150, 3199):
            assert fe(np.zeros(n, np.float32)).shape[0] == num_frames(n), (type(fe).__name__, n)


@pytest.mark.parametrize("preset", ["low-latency", "quality"])
def test_a_whole_clip_by_a_presets_schedule_is_what_its_engine_streams_read(shipped_backend, speech, preset,
                                                                             monkeypatch):
    """``grouped`` (a trainer's live-window features, dataset.build_live_cache) equals the features an engine
    running the preset gives its live stream, group by group, however the audio arrives."""
    from ksdiff_runtime.engine.engine import StreamingEngine
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.engine.stream import StreamState

    seen: list[tuple[int, np.ndarray]] = []
    add = StreamState.add_features

    def record(self, f0, f1, feats, pros=None):
        seen.append((f0, np.array(feats)))
        return add(self, f0, f1, feats, pros)

    monkeypatch.setattr(StreamState, "add_features", record)
    audio = speech[: int(1.5 * SAMPLE_RATE) + 77]  # ends inside a frame
    engine = StreamingEngine(shipped_backend, preset, front_end_threads=1)
    _run(engine, audio, [1, 4000, 77, 160, 2999])
    engine.close()
    streamed = np.concatenate([f for _, f in sorted(seen, key=lambda s: s[0])])
    p = get_preset(preset)
    whole = engine.front_end.grouped(audio, p.feature_block_frames)
    assert [f0 for f0, _ in seen] == sorted({f0 for f0, _ in seen})  # each group once, in order
    assert whole.shape == (num_frames(audio.size), engine.front_end.dim)
    n = whole.shape[0]  # (a preset reading frames early is given one past an ended stream's end, then drops it)
    assert streamed.shape[0] in (n, n + 1)
    np.testing.assert_allclose(streamed[:n], whole, atol=1e-6)
    # the live preset's own features are not its block schedule's (what live windows trained on before)
    trained = StreamingPosteriorgramFrontEnd(shipped_backend.constants.cfg.front_end)(audio)
    assert trained.shape == whole.shape and (preset == "quality" or np.abs(trained - whole).max() > 0.1)


def test_a_bake_recognises_on_every_core_with_the_same_features(speech):
    """A bake's whole-clip recogniser call runs one ONNX Runtime thread per core (engine/offline.py): the
    features are the one-thread call's."""
    one = StreamingPosteriorgramFrontEnd(CONFIG).offline(speech)
    two = StreamingPosteriorgramFrontEnd(CONFIG, recogniser_threads=2).offline(speech)
    assert one.shape == two.shape and np.isfinite(one).all()
    np.testing.assert_allclose(two, one, atol=1e-6)
