"""The streaming recogniser's ONNX step: many streams batched, state explicit and per stream, the chunked
recogniser's output frame for frame, the shipped graph a fresh export."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features.streaming_recogniser import StreamingRecogniser, export_stream_step
from ksdiff_runtime.features.streaming_recogniser_onnx import (
    MAX_CHUNKS,
    MIN_PART_STREAMS,
    STEP_GRAPH,
    OnnxStreamingRecogniser,
    RecogniserStream,
)
from ksdiff_runtime.motion import SAMPLE_RATE

# ONNX Runtime's float32 STFT against the torch stream's float64 one (a float16 rounding step on a few
# mel bands) and other matrix-product shapes: measured <= 0.0025 over the 6.8 s sample at every lookahead
# (0.0096 on a 2.3 s cut), every argmax equal.
TOLERANCE = 0.03

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, rate = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


@pytest.fixture(scope="module")
def torch_model() -> StreamingRecogniser:
    return StreamingRecogniser.from_hama_streaming()


@pytest.fixture(scope="module")
def recognisers() -> dict[int, OnnxStreamingRecogniser]:
    return {}


def _onnx(recognisers: dict, lookahead: int) -> OnnxStreamingRecogniser:
    if lookahead not in recognisers:
        recognisers[lookahead] = OnnxStreamingRecogniser(lookahead=lookahead)
    return recognisers[lookahead]


def _whole(model: StreamingRecogniser, audio: np.ndarray, lookahead: int) -> np.ndarray:
    with torch.no_grad():
        lp, lengths = model.forward_chunked(torch.from_numpy(audio)[None], lookahead=lookahead)
    return lp[0, : int(lengths[0])].numpy()


def _feed(rec: OnnxStreamingRecogniser, clips: list[np.ndarray], piece: int) -> list[np.ndarray]:
    """Every clip as a stream fed ``piece`` samples a round, all streams stepped together each round."""
    streams = [rec.new_stream() for _ in clips]
    out: list[list[np.ndarray]] = [[] for _ in clips]
    for start in range(0, max(c.size for c in clips), piece):
        for s, c in zip(streams, clips, strict=True):
            if start < c.size:
                s.push(c[start : start + piece])
                if start + piece >= c.size:
                    s.end()
        for o, lp in zip(out, rec.step(streams), strict=True):
            o.append(lp)
    return [np.concatenate(o) for o in out]


@pytest.mark.parametrize("lookahead", [0, 2, 3])
def test_streams_equal_the_chunked_recogniser_over_the_whole_clip(torch_model, recognisers, speech, lookahead):
    clip = speech[: int(3.1 * SAMPLE_RATE) + 55]
    got = _feed(_onnx(recognisers, lookahead), [clip], 533)[0]  # a 30 fps hop of audio a round
    whole = _whole(torch_model, clip, lookahead)
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() < TOLERANCE
    assert (got.argmax(1) == whole.argmax(1)).mean() >= 0.99


def test_a_batch_of_streams_gives_each_its_own_frames(recognisers, speech):
    """Streams of other lengths, levels and starts in one call each round: every stream's frames are the
    ones it gets alone, the ones that end early included."""
    rec = _onnx(recognisers, 2)
    clips = [speech[: 2 * SAMPLE_RATE], 0.3 * speech[8000 : 8000 + 3 * SAMPLE_RATE] + 0.0,
             np.ascontiguousarray(speech[::-1][: int(1.3 * SAMPLE_RATE)]), speech[40000 : 40000 + SAMPLE_RATE]]
    together = _feed(rec, clips, 533)
    for clip, got in zip(clips, together, strict=True):
        alone = _feed(rec, [clip], 1777)[0]  # and fed in other pieces
        assert got.shape == alone.shape == (clip.size // 320 + 1, 191)
        assert np.abs(got - alone).max() < 1e-4


@pytest.mark.parametrize("lookahead", [0, 2])
def test_a_streams_frames_are_exactly_its_own_whatever_streams_share_its_calls(recognisers, speech, lookahead):
    """Fed the same pieces alone or beside other streams, a stream gets the same bits: with chunks of one frame a
    stream alone is a call of one row, which some kernels sum in another order than many rows (ONNX Runtime's
    ReduceSum did, by 2e-5; StreamStep's depthwise convolution sums by a matrix product instead)."""
    rec = _onnx(recognisers, lookahead)
    clips = [speech[: 2 * SAMPLE_RATE], 0.3 * np.ascontiguousarray(speech[::-1][: 2 * SAMPLE_RATE])]
    together = _feed(rec, clips, 533)
    for clip, got in zip(clips, together, strict=True):
        assert np.array_equal(got, _feed(rec, [clip], 533)[0])


def test_an_ended_streams_state_never_reaches_the_next_stream_in_its_row(recognisers, speech):
    rec = _onnx(recognisers, 1)
    a, b = rec.new_stream(), rec.new_stream()
    a.push(speech[: SAMPLE_RATE])
    b.push(speech[SAMPLE_RATE : 2 * SAMPLE_RATE])
    a.end()
    rec.step([a, b])  # a in row 0, done
    c = rec.new_stream()  # now in row 0
    clip = speech[3 * SAMPLE_RATE : 4 * SAMPLE_RATE]
    c.push(clip)
    got = rec.step([c, b])[0]
    fresh = rec.new_stream()
    fresh.push(clip)
    assert np.array_equal(got, rec.step([fresh])[0])


def _feed_ragged(rec: OnnxStreamingRecogniser, clips: list[np.ndarray], pieces: list[int]) -> list[np.ndarray]:
    """Every clip as a stream fed its own ``pieces[i]`` samples a round (so a round's streams have different
    numbers of chunks ready), all streams stepped together each round."""
    streams = [rec.new_stream() for _ in clips]
    out: list[list[np.ndarray]] = [[] for _ in clips]
    fed = [0] * len(clips)
    while any(not s.ended for s in streams):
        for i, (s, c) in enumerate(zip(streams, clips, strict=True)):
            if not s.ended:
                s.push(c[fed[i] : fed[i] + pieces[i]])
                fed[i] += pieces[i]
                if fed[i] >= c.size:
                    s.end()
        for o, lp in zip(out, rec.step(streams), strict=True):
            o.append(lp)
    return [np.concatenate(o) for o in out]


def test_a_round_makes_one_call_per_count_of_ready_chunks_and_parts_change_nothing(recognisers, speech):
    """Streams with different numbers of new frames in a round (1-frame chunks) make one call per count, a
    stream far behind (more than MAX_CHUNKS chunks ready) catches up over several calls, and each stream gets
    the frames it gets alone; cut into parts run at once (``parallel``: the calls of MIN_PART_STREAMS x 2 streams
    and more), the same frames again."""
    serial = _onnx(recognisers, 0)
    parallel = OnnxStreamingRecogniser(lookahead=0, parallel=2)
    pieces = [533, 533, 700, 320, 1777, 12000]  # the last is 37 chunks a round: over MAX_CHUNKS
    pieces += [700, 700, 700]  # four streams a call: one part (two with parts of 2 streams)
    pieces += [533] * (2 * MIN_PART_STREAMS - 2)  # a call of 2 x MIN_PART_STREAMS streams and more: two parts
    clips = [speech[1500 * i : 1500 * i + 2 * SAMPLE_RATE] for i in range(len(pieces))]
    outs, calls = [], []
    for rec in (serial, parallel):
        run, made = rec.session.run, []
        rec.session.run = lambda names, feeds, run=run, made=made: (made.append(feeds["frame_mask"].shape)
                                                                   or run(names, feeds))
        try:
            outs.append(_feed_ragged(rec, clips, pieces))
        finally:
            rec.session.run = run
        calls.append(made)
    frames_per_call = {k for _, k in calls[0]}
    assert {1, 2, 5, MAX_CHUNKS} <= frames_per_call and max(frames_per_call) == MAX_CHUNKS
    rounds = len(outs[0]) and -(-2 * SAMPLE_RATE // min(pieces))
    assert len(calls[0]) < 3 * rounds  # a call per count a round, not per stream
    # the same calls, those of 2 x MIN_PART_STREAMS streams or more in two halves, the smaller ones whole
    assert max(rows for rows, _ in calls[0]) >= 2 * MIN_PART_STREAMS
    assert any(4 <= rows < 2 * MIN_PART_STREAMS for rows, _ in calls[0])
    assert sorted(calls[1]) == sorted(part for rows, k in calls[0]
                                      for part in ([(rows // 2, k), (rows - rows // 2, k)]
                                                   if rows >= 2 * MIN_PART_STREAMS else [(rows, k)]))
    for clip, piece, got_serial, got_parallel in zip(clips, pieces, *outs, strict=True):
        alone = _feed(serial, [clip], piece)[0]
        assert got_serial.shape == alone.shape == (clip.size // 320 + 1, 191)
        assert np.abs(got_serial - alone).max() < 1e-4 and np.abs(got_parallel - alone).max() < 1e-4
    parallel.close()


def test_a_step_that_fails_part_way_loses_no_frames(recognisers, speech):
    """A step whose second call fails raises; the frames the first call computed stay with their streams and
    come out of the next step, so every stream still gets all of its frames in order."""
    rec = _onnx(recognisers, 0)
    clips = [speech[: SAMPLE_RATE], speech[SAMPLE_RATE : 2 * SAMPLE_RATE]]
    streams = [rec.new_stream() for _ in clips]
    streams[0].push(clips[0][:533])  # one frame ready
    streams[1].push(clips[1][:1000])  # two frames ready: another call
    run, calls = rec.session.run, []

    def second_fails(names, feeds):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the device went away")
        return run(names, feeds)

    rec.session.run = second_fails
    try:
        with pytest.raises(RuntimeError, match="went away"):
            rec.step(streams)
    finally:
        rec.session.run = run
    got = [[lp] for lp in rec.step(streams)]
    for s, c in zip(streams, clips, strict=True):
        s.push(c[s.samples :])
        s.end()
    for g, lp in zip(got, rec.step(streams), strict=True):
        g.append(lp)
    for clip, g in zip(clips, got, strict=True):
        np.testing.assert_allclose(np.concatenate(g), _feed(rec, [clip], 533)[0], atol=1e-3)


def test_frames_become_final_when_their_chunk_has_its_audio(recognisers, speech):
    rec = _onnx(recognisers, 2)
    s = rec.new_stream()
    assert s.final_samples(0) == s.final_samples(2) == 3 * 320 + 40
    s.push(speech[: 999])
    assert rec.step([s])[0].shape[0] == 0
    s.push(speech[999:1000])
    assert rec.step([s])[0].shape[0] == 3


def test_audio_is_forgotten_as_the_stream_goes(recognisers, speech):
    rec = _onnx(recognisers, 2)
    s = rec.new_stream()
    for k in range(0, 6 * SAMPLE_RATE, 800):
        s.push(speech[k % speech.size : k % speech.size + 800])
        rec.step([s])
    assert s.audio.size < 2 * SAMPLE_RATE
    assert s.frames_out == (s.samples - 40) // 960 * 3


def test_bad_input_gets_a_clear_error(recognisers, tmp_path):
    rec = _onnx(recognisers, 2)
    s = rec.new_stream()
    s.push(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="at least 201 samples"):
        s.end()
    s.push(np.zeros(400, np.float32))
    s.end()
    with pytest.raises(ValueError, match="has ended"):
        s.push(np.zeros(10, np.float32))
    with pytest.raises(ValueError, match=r"lookahead must be 0\.\.3"):
        OnnxStreamingRecogniser(lookahead=4)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"blocks.0.ffn1.fc1.weight": np.zeros((3, 3), np.float16)})
    with pytest.raises(ValueError, match="not the recogniser's tensors"):
        OnnxStreamingRecogniser(weights=bad)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a streaming recogniser weights file"):
        OnnxStreamingRecogniser(weights=tmp_path / "junk.npz")


def test_the_shipped_step_graph_is_a_fresh_export(tmp_path):
    """Rewrite it with `ksdiff-runtime export --recogniser` after changing StreamStep."""
    path = tmp_path / "step.onnx"
    export_stream_step(path)
    assert path.read_bytes() == STEP_GRAPH.read_bytes()


def test_a_stream_holds_only_its_own_arrays(recognisers):
    rec = _onnx(recognisers, 2)
    a, b = rec.new_stream(), rec.new_stream()
    assert isinstance(a, RecogniserStream)
    assert a.keys is not b.keys and not np.shares_memory(a.keys, b.keys)


@pytest.mark.gpu
def test_the_step_on_cuda_matches_the_cpu(recognisers, speech):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs ONNX Runtime with CUDA")
    gpu = OnnxStreamingRecogniser(lookahead=0, providers=("CUDAExecutionProvider",))
    clips = [speech[k * SAMPLE_RATE : (k + 2) * SAMPLE_RATE] for k in range(3)]
    for got, want in zip(_feed(gpu, clips, 533), _feed(_onnx(recognisers, 0), clips, 533), strict=True):
        assert np.abs(got - want).max() < 1e-3


@pytest.mark.parametrize("lookahead", [0, 2])
def test_a_whole_clip_in_one_call_is_the_stream(torch_model, recognisers, speech, lookahead):
    """``whole``: every chunk of a clip in one call (a bake's or a line's features), the chunked recogniser's
    frames as a stream fed the clip gets them."""
    rec = _onnx(recognisers, lookahead)
    clip = speech[: int(4.3 * SAMPLE_RATE) + 99]
    got = rec.whole(clip)
    assert got.shape == (clip.size // 320 + 1, 191)
    assert np.abs(got - _feed(rec, [clip], 533)[0]).max() < 0.01  # float32 sums over other shapes: measured 0.0014
    assert np.abs(got - _whole(torch_model, clip, lookahead)).max() < TOLERANCE


@pytest.mark.parametrize("lookahead", [0, 2])
def test_a_long_clip_is_computed_in_pieces_of_bounded_size(recognisers, speech, lookahead, monkeypatch):
    """A clip longer than WHOLE_FRAMES frames goes through the graph in pieces of at most that many (a call's
    attention is frames x (left + frames): in one call, 120 s took 3.1 GB and 20 minutes did not fit in 24 GB), with
    the frames of the clip in one call."""
    from ksdiff_runtime.features import streaming_recogniser_onnx as module

    rec = _onnx(recognisers, lookahead)
    clip = speech[: int(4.3 * SAMPLE_RATE) + 99]
    one_call = rec.whole(clip)  # 216 frames: one piece
    calls: list[int] = []
    run = rec.session.run

    def counted(names, feeds):
        calls.append(feeds["frame_mask"].shape[1])
        return run(names, feeds)

    monkeypatch.setattr(module, "WHOLE_FRAMES", 40)
    monkeypatch.setattr(rec.session, "run", counted)
    pieces = rec.whole(clip)
    assert max(calls) <= 40 and sum(calls) >= one_call.shape[0] and len(calls) == -(-sum(calls) // max(calls))
    assert pieces.shape == one_call.shape
    assert np.abs(pieces - one_call).max() < 1e-3
    assert (pieces.argmax(1) == one_call.argmax(1)).all()
