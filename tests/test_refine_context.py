"""Preset.refine_context: before each live hop the stream's last frame is denoised again with the audio that
came since, and the hop reads that face as its last context frame (sampling.RefineBatch).

Checked: the refine window is the previous hop's window one frame on (its context and its committed path
features are exactly the previous hop's), the hop's last context frame is the refined face while the heads
are what went out; frames do not depend on how the audio arrives, on the other
streams of a batch, or on a stream that left its batch slot; a skip or a stream's first hop has nothing to
refine; lines never refine."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from test_engine import as_arrays, random_chunks, run_stream

from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.presets import PRESETS
from ksdiff_runtime.engine.stream import Hop
from ksdiff_runtime.model.checkpoint import DEFAULT_CHECKPOINT, load_model

REFINING = dataclasses.replace(PRESETS["low-latency"], name="low-latency+refine", refine_context=True)


@pytest.fixture(scope="module")
def shipped() -> TorchBackend:
    return TorchBackend(load_model(DEFAULT_CHECKPOINT))


class Recording:
    """A real backend whose graph calls are recorded (inputs and outputs), for checking what a hop fed it."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.constants = backend.constants
        self.name = backend.name
        self.calls: list[tuple[str, dict, dict]] = []

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def _record(self, graph: str, feeds: dict) -> dict:
        out = getattr(self.backend, graph)(feeds)
        self.calls.append((graph, {k: np.array(v) for k, v in feeds.items()}, {k: np.array(v) for k, v in out.items()}))
        return out

    def condition(self, feeds: dict) -> dict:
        return self._record("condition", feeds)

    def condition_stream(self, feeds: dict) -> dict:
        return self._record("condition_stream", feeds)

    def denoise(self, feeds: dict) -> dict:
        return self._record("denoise", feeds)


def test_the_refine_window_is_the_previous_hops_window_one_frame_on(tiny_backend, speech_16k):
    spy = Recording(tiny_backend)
    engine = StreamingEngine(spy, REFINING, front_end_threads=1)
    k = tiny_backend.constants
    C, D = k.cfg.motion_context_frames, k.cfg.expr_dim
    sid = engine.open_stream(seed=4)
    engine.push(sid, speech_16k)
    hops = []  # per hop: its graph calls, and the stream's context after it (frames [e - C, e + 1))
    for _ in range(30):
        spy.calls.clear()
        assert engine.step().hops == 1
        hops.append((list(spy.calls), engine.sessions.get(sid).state._ctx.copy()))
    graphs = [[g for g, _, _ in calls] for calls, _ in hops]
    assert graphs[0] == ["condition_stream", "denoise"]  # a stream's first hop has no frame to refine
    assert all(g == ["condition_stream", "denoise", "denoise"] for g in graphs[1:])  # the refine, then the hop

    def natural(x0: np.ndarray) -> np.ndarray:  # a 1-step window frame as the stream keeps it
        return np.clip(x0 * k.expr_std + k.expr_mean, 0.0, 1.0)

    for (before, _), (now, ctx) in itertools.pairwise(hops[5:]):
        emit_before = before[-1][1]
        (_, _, cond), (_, refine, refine_out), (_, emit, emit_out) = now
        # the refine window reads the C context frames the previous hop read, face and head, and the same path
        # features for them and for the frame it refines: the previous hop's window, one frame of audio on
        np.testing.assert_array_equal(refine["x_expr"][:, :C], emit_before["x_expr"][:, :C])
        np.testing.assert_array_equal(refine["x_pose"][:, :C], emit_before["x_pose"][:, :C])
        np.testing.assert_array_equal(refine["known"], emit_before["known"])
        for name in ("f_e", "f_h"):
            np.testing.assert_allclose(refine[name][:, : C + 1], emit_before[name][:, : C + 1], atol=1e-6)
            np.testing.assert_array_equal(refine[name][:, 1:], cond[name][:, :-1])  # this hop's, a frame later
        # the refined face is the refine window's first frame, and differs from the frame as it went out
        refined = natural(refine_out["x0_expr"][0, C])
        np.testing.assert_allclose(ctx[-2, :D], refined, atol=1e-6)
        assert np.abs(refined - natural(before[-1][2]["x0_expr"][0, C])).max() > 1e-3
        # the hop reads the stream's context: the previous hop's moved on by a frame, the last face refined,
        # every head as it went out
        np.testing.assert_allclose(emit["x_expr"][0, :C] * k.expr_std + k.expr_mean, ctx[-C - 1 : -1, :D], atol=1e-5)
        np.testing.assert_array_equal(emit["x_pose"][:, : C - 1], emit_before["x_pose"][:, 1:C])
        # and the frame it made is in the context as it went out, for the next hop to refine
        np.testing.assert_allclose(ctx[-1, :D], natural(emit_out["x0_expr"][0, C]), atol=1e-6)


def test_refined_frames_do_not_depend_on_how_the_audio_arrives(shipped, speech_16k):
    engine = StreamingEngine(shipped, REFINING)
    whole = as_arrays(run_stream(engine, [speech_16k], seed=7))
    chunked = as_arrays(run_stream(engine, random_chunks(speech_16k, np.random.default_rng(3), 5000), seed=7))
    plain = as_arrays(run_stream(StreamingEngine(shipped, "low-latency"), [speech_16k], seed=7))
    assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])
    assert not np.allclose(whole[0], plain[0])  # refining changes the frames


@pytest.mark.parametrize("stream_conditioner", [True, False])
def test_each_stream_refines_its_own_frames_in_a_shared_batch(tiny_backend, speech_16k, stream_conditioner):
    """Two streams sharing rounds get what each gets alone; a third takes the first's batch slot when it ends
    and gets its own frames too (nothing carried for a refine reaches another stream)."""
    engine = StreamingEngine(tiny_backend, REFINING, front_end_threads=1, stream_conditioner=stream_conditioner)
    audios = {"a": speech_16k, "b": speech_16k[::-1].copy(), "c": 0.5 * np.roll(speech_16k, 4000)}
    alone = {name: as_arrays(run_stream(engine, [audio], seed=i))[0] for i, (name, audio) in enumerate(audios.items())}
    got: dict[str, list] = {name: [] for name in audios}
    engine.open_stream("a", seed=0)
    engine.open_stream("b", seed=1)
    step, a_end = 800, 8000
    for k in range(0, audios["b"].size + 2 * step, step):
        if k < audios["b"].size:
            engine.push("b", audios["b"][k : k + step])
        if k < a_end:
            engine.push("a", audios["a"][k : k + step])
        elif k == a_end:
            engine.push("a", audios["a"][k:])
            engine.end_stream("a")
            engine.open_stream("c", seed=2)
            engine.push("c", audios["c"])
            engine.end_stream("c")
        while engine.has_work():
            for f in engine.step().frames:
                got[f.stream].append(f)
    engine.end_stream("b")
    while engine.has_work():
        for f in engine.step().frames:
            got[f.stream].append(f)
    for name in audios:
        np.testing.assert_allclose(as_arrays(sorted(got[name], key=lambda f: f.index))[0], alone[name], atol=1e-5,
                                   err_msg=name)


def test_a_skip_leaves_nothing_to_refine_and_lines_never_refine(tiny_backend, speech_16k):
    engine = StreamingEngine(tiny_backend, REFINING, front_end_threads=1)
    sid = engine.open_stream(seed=0)
    engine.push(sid, speech_16k)
    for _ in range(5):
        engine.step()
    state = engine.sessions.get(sid).state
    hop = Hop(0, 1, False)
    assert state.hop_window(hop).refine is not None
    state.skip_to(state.emitted + 3)
    assert state.hop_window(hop).refine is None  # the frame before the window was never made
    assert REFINING.for_lines(32).refine_context is False
