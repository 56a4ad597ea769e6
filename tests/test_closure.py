"""The bilabial closure (engine/closure.py): the lips seal where the recogniser hears /p b m/, only ever closing a
mouth, reading no features a hop does not have, the same in a stream, a line and a bake; on by default in
`serve` and `bake`, off with --no-closure, and off (with a warning) for a model without a posteriorgram."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.engine.closure import CLOSE, DEFAULT_CLOSURE, JAW, PARTING, ClosureConfig, closure_for
from ksdiff_runtime.engine.presets import PRESETS
from ksdiff_runtime.features.frontend import HAMA_BILABIALS, HAMA_CLASSES, PPG_LOG_FLOOR, ppg_features
from ksdiff_runtime.inputs.guards import load_audio

SR = motion.SAMPLE_RATE
FEATURES = HAMA_CLASSES + 40


def features_with_bilabial(probabilities: list[float]) -> np.ndarray:
    """Features [n, 231] whose recogniser says /b/ with each probability (the rest of the mass on the blank)."""
    lp = np.full((len(probabilities), HAMA_CLASSES), PPG_LOG_FLOOR, np.float32)
    for i, p in enumerate(probabilities):
        if p > 0:
            lp[i, HAMA_BILABIALS["b"]] = np.log(p)
        lp[i, -1] = np.log(max(1.0 - p, 1e-6))
    return np.concatenate([ppg_features(lp), np.zeros((len(probabilities), FEATURES - HAMA_CLASSES), np.float32)], 1)


def open_mouths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 0.6, (n, motion.NUM_BLENDSHAPES)).astype(np.float32)
    values[:, JAW] = rng.uniform(0.2, 0.8, n)
    values[:, CLOSE] = rng.uniform(0.0, 0.05, n)
    assert np.all(motion.lip_aperture(values) >= motion.LIP_CLOSED_THRESHOLD)  # every mouth open
    return values


def test_the_bilabial_classes_are_hamas() -> None:
    vocab = pytest.importorskip("hama.vocab")
    labels = [*vocab.Vocabulary.load().decoder, "<wb>", "<blank>"]
    assert len(labels) == HAMA_CLASSES
    assert {label: labels.index(label) for label in HAMA_BILABIALS} == HAMA_BILABIALS


def test_closure_config_is_checked() -> None:
    for bad in ({"start": 0.5, "full": 0.5}, {"start": -0.1}, {"full": 1.5}, {"ahead_frames": -1}, {"jaw_cap": 2.0},
                {"hold_frames": 0}, {"ahead_frames": 1, "hold_frames": 3}):
        with pytest.raises(ValueError, match="closure"):
            ClosureConfig(**bad)
    for preset in PRESETS.values():  # the shipped presets wait for the features the closure reads
        assert closure_for("ppg", DEFAULT_CLOSURE, preset.model_lookahead_frames) is DEFAULT_CLOSURE


def test_the_lips_close_with_the_recognisers_bilabial_probability() -> None:
    config = ClosureConfig(start=0.3, full=0.5)
    weights = config.weights(features_with_bilabial([0.0, 0.2, 0.4, 0.6, 0.99]))
    np.testing.assert_allclose(weights, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-3)  # (the floor's own mass)
    values = open_mouths(200)
    sealed = config.close(values, np.ones(200, np.float32))
    assert np.all(motion.lip_aperture(sealed) < motion.LIP_CLOSED_THRESHOLD)
    assert np.all(sealed[:, JAW] <= config.jaw_cap + 1e-6) and np.all(sealed[:, PARTING] == 0)
    untouched = [i for i in range(motion.NUM_BLENDSHAPES) if i not in (JAW, CLOSE, *PARTING)]
    np.testing.assert_array_equal(sealed[:, untouched], values[:, untouched])
    assert config.close(values, np.zeros(200, np.float32)) is values
    # any weight only ever closes: the lips' gap never grows, and shrinks with the weight
    w = np.random.default_rng(1).uniform(0, 1, 200).astype(np.float32)
    half = config.close(values, w)
    assert np.all(motion.lip_aperture(half) <= motion.lip_aperture(values) + 1e-6)
    assert np.all(motion.lip_aperture(sealed) <= motion.lip_aperture(half) + 1e-6)


def test_a_frame_reads_the_features_ahead_frames_later_and_nothing_past_them() -> None:
    feats = features_with_bilabial([0.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0])  # a /b/ heard at frame 4
    values = open_mouths(7)

    def shut(config: ClosureConfig, first: int = 0, n: int = 7, rows: int = 7) -> list[bool]:
        closed = config.apply(values[first : first + n], feats[:rows], first)
        return (motion.lip_aperture(closed) < motion.LIP_CLOSED_THRESHOLD).tolist()

    # frame i reads row i + 2, so frame 2 seals; held 2 frames, i reads rows i + 1 and i + 2: frames 2 and 3
    assert shut(DEFAULT_CLOSURE) == [False, False, True, False, False, False, False]
    held = ClosureConfig(hold_frames=2)
    assert shut(held) == [False, False, True, True, False, False, False]
    assert shut(ClosureConfig(ahead_frames=0)) == [False] * 4 + [True] + [False] * 2
    # hop by hop (the rows the hop has: up to its last frame + 2) it is the same as the whole clip
    for config in (DEFAULT_CLOSURE, held):
        assert [shut(config, i, 1, i + 3)[0] for i in range(5)] == shut(config)[:5]
    # rows past the features there are read as no bilabial (the end of a stream's audio)
    assert shut(DEFAULT_CLOSURE, 0, 7, 4) == [False] * 7 and shut(held, 0, 7, 4) == [False] * 7


def test_a_seal_held_two_frames_reaches_every_output_rate() -> None:
    """One frame's seal reaches the outputs whose frames include the 30 fps ones; held two frames (hold_frames=2),
    every rate's (a 24 or 25 fps frame falls between two 30 fps frames, and takes some of each)."""
    from ksdiff_runtime.outputs.files import resample_frames

    feats = features_with_bilabial([0.0] * 10 + [0.9] + [0.0] * 19)  # one frame of /b/
    values = open_mouths(30)
    for config, rates in ((DEFAULT_CLOSURE, (30, 60)), (ClosureConfig(hold_frames=2), (24, 25, 30, 50, 60))):
        closed = config.apply(values, feats, 0)
        for fps in rates:
            out = resample_frames(closed, motion.FPS, fps, 30 * fps // motion.FPS)
            assert (motion.lip_aperture(out) < motion.LIP_CLOSED_THRESHOLD).any(), (config, fps)


def test_a_model_without_a_posteriorgram_or_a_preset_without_lookahead_gets_no_closure(caplog) -> None:
    assert closure_for("ppg", DEFAULT_CLOSURE) is DEFAULT_CLOSURE and closure_for("ppg", None) is None
    with caplog.at_level(logging.WARNING):
        assert closure_for("logmel", DEFAULT_CLOSURE) is None
    assert "bilabial closure off" in caplog.text and "logmel" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # nearer rows shut more vowels than they close bilabials
        assert closure_for("ppg", DEFAULT_CLOSURE, lookahead_frames=1) is None
    assert "wait for 1 frame(s)" in caplog.text


@pytest.fixture(scope="module")
def backend():
    from ksdiff_runtime.backends.select import load_backend

    return load_backend("onnxruntime", threads=1)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, _ = load_audio(SAMPLE_SPEECH)  # "... the big brass bell to the museum. The two boys moved ..."
    return audio[: 5 * SR].astype(np.float32)


def stream(engine, audio: np.ndarray, mode: str = "live") -> np.ndarray:
    frames = engine.stream_clip(audio, seed=3, mode=mode)
    return np.array([np.concatenate([f.blendshapes, f.head]) for f in frames])


def only_closes(closed: np.ndarray, model: np.ndarray) -> int:
    """Checks frames [n, >=52] made with the closure against the same frames without it: the same but for the
    lips, whose gap never grows. Returns how many frames it shut."""
    D = motion.NUM_BLENDSHAPES
    np.testing.assert_array_equal(closed[:, D:], model[:, D:])  # the head, if any
    others = [i for i in range(D) if i not in (JAW, CLOSE, *PARTING)]
    np.testing.assert_array_equal(closed[:, others], model[:, others])
    gap, gap_model = motion.lip_aperture(closed[:, :D]), motion.lip_aperture(model[:, :D])
    assert np.all(gap <= gap_model + 1e-6)
    return int(((gap < motion.LIP_CLOSED_THRESHOLD) & (gap_model >= motion.LIP_CLOSED_THRESHOLD)).sum())


@pytest.mark.parametrize("mode", ["live", "line"])
def test_a_stream_closes_from_the_features_it_read(backend, speech, mode, monkeypatch) -> None:
    """A stream's closure is the closure of its model frames from exactly the feature rows the stream computed
    (each frame's rows at their absolute frame numbers, whatever the stream kept), and it only closes."""
    from ksdiff_runtime.engine.engine import StreamingEngine
    from ksdiff_runtime.engine.stream import StreamState

    rows: dict[int, np.ndarray] = {}
    add, update = StreamState.add_features, StreamState.update_features

    def recorded_add(self, f0, f1, feats, pros=None):
        rows.update({f0 + k: row.copy() for k, row in enumerate(feats)})
        return add(self, f0, f1, feats, pros)

    def recorded_update(self, upto, one_call, front_end=None):  # a line's first features, all at once
        update(self, upto, one_call, front_end)
        rows.update({self.feat_offset + k: row.copy() for k, row in enumerate(self._feats)})

    on = StreamingEngine(backend, "low-latency", closure=DEFAULT_CLOSURE, front_end_threads=1)
    off = StreamingEngine(backend, "low-latency", front_end_threads=1)
    try:
        assert on.closure is DEFAULT_CLOSURE and off.closure is None
        model = stream(off, speech, mode)
        monkeypatch.setattr(StreamState, "add_features", recorded_add)
        monkeypatch.setattr(StreamState, "update_features", recorded_update)
        closed = stream(on, speech, mode)
    finally:
        on.close()
        off.close()
    assert 1 <= only_closes(closed, model) <= 0.1 * len(closed)  # a few bilabials more, not a shut mouth
    feats = np.stack([rows[i] for i in range(max(rows) + 1)])
    D = motion.NUM_BLENDSHAPES
    np.testing.assert_allclose(closed[:, :D], DEFAULT_CLOSURE.apply(model[:, :D], feats, 0), atol=1e-6)


def test_bake_closes_by_default_and_not_with_no_closure(tmp_path) -> None:
    import json

    from ksdiff_runtime.cli import main

    outs = {}
    for name, flags in (("default", []), ("off", ["--no-closure"])):
        outs[name] = tmp_path / f"{name}.json"
        assert main(["bake", str(SAMPLE_SPEECH), "-o", str(outs[name]), "--no-voice-gate", "--no-liveliness",
                     *flags]) == 0
    frames = {name: np.array([f["blendshapes"] for f in json.loads(path.read_text())["frames"]], np.float32)
              for name, path in outs.items()}
    assert only_closes(frames["default"], frames["off"]) >= 1
