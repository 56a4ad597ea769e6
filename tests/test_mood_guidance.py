"""A mood on the network: each mood's style kept with the weights, fed to the denoisers by the stream's mood and
intensity, at the mood guidance scale (engine/sampling.py, training/mood_styles.py)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.backends.artifact import CONSTANTS_FILE, SHIPPED_EXPORT
from ksdiff_runtime.backends.base import BackendError, ModelConstants
from ksdiff_runtime.engine.controls import Controls
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.sampling import (
    MOOD_GUIDANCE_RANGE,
    Guidance,
    check_mood_guidance,
    guidance_variants,
    mood_style,
    with_mood_guidance,
)
from ksdiff_runtime.engine.style import StyleProfile
from ksdiff_runtime.model.checkpoint import load_model, read_checkpoint, write_mood_styles
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT, CheckpointError, ModelConfig
from ksdiff_runtime.server.config import ConfigError, ServeConfig

D = motion.NUM_BLENDSHAPES


def test_the_shipped_model_keeps_a_style_for_every_mood_and_its_export_carries_them() -> None:
    model = load_model(DEFAULT_CHECKPOINT)
    assert model.mood_styles is not None and model.mood_styles.shape == (len(motion.MOODS), model.cfg.style_dim)
    from_model = ModelConstants.from_model(model)
    shipped = ModelConstants.load(SHIPPED_EXPORT / CONSTANTS_FILE, model.cfg)
    assert shipped.mood_styles is not None
    np.testing.assert_array_equal(shipped.mood_styles, from_model.mood_styles)
    np.testing.assert_allclose(np.linalg.norm(shipped.mood_styles, axis=1), 1.0, atol=1e-4)  # as the encoder's are
    # five different ways of speaking: no two moods' styles alike
    cos = shipped.mood_styles @ shipped.mood_styles.T
    assert np.all(cos[~np.eye(len(motion.MOODS), dtype=bool)] < 0.99)


def test_a_mood_moves_the_style_toward_its_own_by_the_intensity() -> None:
    cfg = ModelConfig()
    rng = np.random.default_rng(0)
    null = rng.standard_normal(cfg.style_dim).astype(np.float32)
    k = ModelConstants(cfg, *(np.zeros(1, np.float32),) * 4, style_null=null, alpha_bar=np.ones(10, np.float32),
                       mood_styles=rng.standard_normal((len(motion.MOODS), cfg.style_dim)).astype(np.float32))
    sad = k.mood_styles[motion.MOODS.index("sad")]

    def style(base: np.ndarray | None, mood: str, intensity: float, guidance: float = 1.0) -> np.ndarray | None:
        out, missing = mood_style(k, base, mood, intensity, guidance)
        assert not missing
        return out

    np.testing.assert_allclose(style(None, "sad", 1.0), sad, atol=1e-6)
    np.testing.assert_allclose(style(None, "sad", 1.0, guidance=2.5), sad, atol=1e-6)  # guidance is the sampler's
    np.testing.assert_allclose(style(None, "sad", 0.5), (k.style_null + sad) / 2, atol=1e-6)
    base = rng.standard_normal(cfg.style_dim).astype(np.float32)  # a stream's own style: the mood moves it as much
    np.testing.assert_allclose(style(base, "sad", 0.5), base + (sad - k.style_null) / 2, atol=1e-6)
    assert style(None, "neutral", 1.0) is None and style(base, "sad", 0.0) is base
    assert style(base, "sad", 1.0, guidance=0.0) is base  # guidance 0: the network is not told
    no_moods = ModelConstants(cfg, *(np.zeros(1, np.float32),) * 4, style_null=k.style_null, alpha_bar=k.alpha_bar)
    assert mood_style(no_moods, None, "sad", 1.0, 1.0) == (None, True)  # left out, and the caller is told
    assert mood_style(no_moods, None, "neutral", 1.0, 1.0) == (None, False)
    assert mood_style(no_moods, None, "sad", 1.0, 0.0) == (None, False)


@pytest.mark.parametrize("bad", [-0.5, 4.5, float("nan"), float("inf"), "2", True, None])
def test_a_mood_guidance_out_of_range_is_a_clear_error(bad: object, tiny_backend) -> None:
    lo, hi = MOOD_GUIDANCE_RANGE
    message = f"mood guidance must be a number from {lo:g} to {hi:g}"
    with pytest.raises(ValueError, match=message):
        check_mood_guidance(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        StreamingEngine(tiny_backend, "low-latency", mood_guidance=bad)  # type: ignore[arg-type]
    config = ServeConfig(mood_guidance=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        config.check()


def test_the_mood_guidance_is_the_style_guidance(tiny_backend) -> None:
    assert with_mood_guidance(None, 0.0) is None and with_mood_guidance(None, 1.0) is None
    assert with_mood_guidance(None, 2.5) == Guidance(style=2.5)
    assert with_mood_guidance(Guidance(audio=1.5), 2.0) == Guidance(audio=1.5, style=2.0)
    assert with_mood_guidance(Guidance(audio=1.5), 1.0) == Guidance(audio=1.5)
    assert with_mood_guidance(Guidance(style=3.0), 0.0) == Guidance(style=3.0)  # no mood on the network: the caller's
    assert guidance_variants(with_mood_guidance(None, 2.0)) == 2  # one more denoiser row per stream
    assert guidance_variants(with_mood_guidance(None, 0.5)) == 2
    for mood_guidance in (0.5, 1.0, 3.0):
        with pytest.raises(ValueError, match="give one of them, not both"):
            with_mood_guidance(Guidance(style=2.0), mood_guidance)
        with pytest.raises(ValueError, match="give one of them, not both"):
            StreamingEngine(tiny_backend, "low-latency", guidance=Guidance(style=2.0), mood_guidance=mood_guidance)


def _stream(engine: StreamingEngine, audio: np.ndarray, mood: str, mode: str = "live",
            intensity: float = 1.0) -> np.ndarray:
    frames = engine.stream_clip(audio, controls=Controls.from_dict({"mood": mood, "mood_intensity": intensity}),
                                mode=mode)
    return np.stack([np.concatenate([f.blendshapes, f.head]) for f in frames])


def _jaw(values: np.ndarray) -> float:
    return StyleProfile.of(values[:, :D], values[:, D:]).articulation


@pytest.fixture(scope="module")
def shipped():
    """The shipped model in ONNX Runtime, as serve runs it."""
    return load_backend("onnxruntime", DEFAULT_CHECKPOINT, threads=1)


def test_the_shipped_network_speaks_in_the_mood_more_as_the_guidance_grows(shipped, speech_16k: np.ndarray) -> None:
    """Streamed live on the shipped model (no gate or liveliness: the model and the controls alone): a sad stream's
    jaw goes less far and an angry one's further than the same mood's held expression alone (guidance 0), more so
    at guidance 2, and half as much at half the intensity; a neutral stream is the same whatever the guidance."""
    backend = shipped
    audio = np.tile(speech_16k, 2)
    jaw: dict[tuple[str, float], float] = {}
    neutral = {}
    for g in (0.0, 1.0, 2.0):
        engine = StreamingEngine(backend, "low-latency", mood_guidance=g, front_end_threads=1)
        try:
            neutral[g] = _stream(engine, audio, "neutral")
            for mood in ("sad", "angry"):
                jaw[mood, g] = _jaw(_stream(engine, audio, mood))
            if g == 1.0:
                jaw["sad half", g] = _jaw(_stream(engine, audio, "sad", intensity=0.5))
        finally:
            engine.close()
    np.testing.assert_allclose(neutral[2.0], neutral[0.0], atol=1e-4)
    np.testing.assert_array_equal(neutral[1.0], neutral[0.0])
    assert jaw["sad", 2.0] < jaw["sad", 1.0] < 0.95 * jaw["sad", 0.0], jaw
    assert jaw["angry", 2.0] > jaw["angry", 1.0] > 1.05 * jaw["angry", 0.0], jaw
    assert jaw["sad", 1.0] < jaw["sad half", 1.0] < jaw["sad", 0.0], jaw


def _together(engine: StreamingEngine, audio: np.ndarray, moods: list[str]) -> list[np.ndarray]:
    """Streams of the same audio in these moods, pushed and stepped together (their hops in the same batches)."""
    sids = [engine.open_stream(controls=Controls.from_dict({"mood": m})) for m in moods]
    frames = []
    for i in range(0, audio.size, 533):
        for sid in sids:
            engine.push(sid, audio[i : i + 533])
        while engine.has_work():
            frames += engine.step().frames
    for sid in sids:
        engine.end_stream(sid)
    while engine.has_work():
        frames += engine.step().frames
    return [np.stack([np.concatenate([f.blendshapes, f.head])
                      for f in sorted((f for f in frames if f.stream == sid), key=lambda f: f.index)]) for sid in sids]


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_streams_in_other_moods_share_a_batch_and_each_gets_its_own(shipped, speech_16k: np.ndarray,
                                                                    guidance: float) -> None:
    engine = StreamingEngine(shipped, "low-latency", mood_guidance=guidance, front_end_threads=1)
    try:
        moods = ["sad", "neutral", "angry"]
        alone = [_stream(engine, speech_16k, m) for m in moods]
        together = _together(engine, speech_16k, moods)
    finally:
        engine.close()
    for mood, a, t in zip(moods, alone, together, strict=True):
        np.testing.assert_allclose(t, a, atol=1e-4, err_msg=mood)
    assert _jaw(together[0]) < _jaw(together[1]) < _jaw(together[2])


def test_a_mood_set_live_reaches_the_network_from_the_next_hop(shipped, speech_16k: np.ndarray) -> None:
    """A stream turned sad halfway (set_controls, as a VTuber's hotkey does): the first half as a neutral stream's;
    after it the network's sad (guidance 1) moves the jaw less than the sad expression alone (guidance 0)."""
    audio = np.tile(speech_16k, 2)
    half = audio.size // 2

    def turned_sad(guidance: float) -> np.ndarray:
        engine = StreamingEngine(shipped, "low-latency", mood_guidance=guidance, front_end_threads=1)
        try:
            sid = engine.open_stream()
            frames = []
            for i in range(0, audio.size, 533):
                if i >= half and i - 533 < half:
                    engine.set_controls(sid, Controls.from_dict({"mood": "sad"}))
                engine.push(sid, audio[i : i + 533])
                while engine.has_work():
                    frames += engine.step().frames
            engine.end_stream(sid)
            while engine.has_work():
                frames += engine.step().frames
        finally:
            engine.close()
        return np.stack([np.concatenate([f.blendshapes, f.head]) for f in sorted(frames, key=lambda f: f.index)])

    on, off = turned_sad(1.0), turned_sad(0.0)
    changed = np.flatnonzero(np.abs(on - off).max(axis=1) > 1e-6)
    first = half * motion.FPS // motion.SAMPLE_RATE
    assert changed.size and first - 8 <= changed[0] <= first + 8  # from the hop the mood was set in
    assert _jaw(on[first + 8 :]) < 0.95 * _jaw(off[first + 8 :])


def test_a_line_speaks_in_its_mood_too(shipped, speech_16k: np.ndarray) -> None:
    jaw = {}
    for g in (0.0, 1.0):
        engine = StreamingEngine(shipped, "low-latency", mood_guidance=g, front_end_threads=1)
        try:
            jaw[g] = _jaw(_stream(engine, np.tile(speech_16k, 2), "sad", mode="line"))
        finally:
            engine.close()
    assert jaw[1.0] < 0.95 * jaw[0.0], jaw


def test_a_model_without_mood_styles_keeps_the_moods_expression_and_says_so_once(
        tiny_backend, speech_16k: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    assert tiny_backend.constants.mood_styles is None
    off = StreamingEngine(tiny_backend, "low-latency", mood_guidance=0.0, front_end_threads=1)
    on = StreamingEngine(tiny_backend, "low-latency", front_end_threads=1)
    try:
        expected = _stream(off, speech_16k, "happy")
        with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.engine"):
            np.testing.assert_array_equal(_stream(on, speech_16k, "happy"), expected)
            _stream(on, speech_16k, "sad")
    finally:
        off.close()
        on.close()
    assert caplog.text.count("this model has no mood styles") == 1


def test_mood_styles_are_kept_in_the_checkpoint_and_a_bad_entry_is_a_clear_error(tmp_path: Path,
                                                                                tiny_checkpoint: Path) -> None:
    path = tmp_path / "moody.pt"
    shutil.copy(tiny_checkpoint, path)
    assert load_model(path).mood_styles is None
    dim = ModelConfig.from_dict(read_checkpoint(path)["config"]).style_dim
    vectors = {m: np.full(dim, i, np.float32) for i, m in enumerate(motion.MOODS)}
    write_mood_styles(path, vectors)
    model = load_model(path)
    np.testing.assert_array_equal(model.mood_styles.numpy(), np.stack([vectors[m] for m in motion.MOODS]))
    original = read_checkpoint(tiny_checkpoint)["model"]
    kept = read_checkpoint(path)["model"]
    assert all(kept[k].dtype == v.dtype and bool((kept[k] == v).all()) for k, v in original.items())  # untouched

    with pytest.raises(CheckpointError, match="must be"):  # refused before anything is written
        write_mood_styles(path, {m: np.zeros(dim + 1) for m in motion.MOODS})
    with pytest.raises(CheckpointError, match="must name the moods"):
        write_mood_styles(path, {m: np.zeros(dim) for m in motion.MOODS[1:]})
    np.testing.assert_array_equal(load_model(path).mood_styles.numpy(), np.stack([vectors[m] for m in motion.MOODS]))
    for bad, why in (({m: [0.0] * dim for m in motion.MOODS[:-1]}, "must name the moods"),
                     ({m: [0.0] * (dim - 1) for m in motion.MOODS}, f"must be {dim} finite numbers"),
                     ({m: [float("nan")] * dim for m in motion.MOODS}, f"must be {dim} finite numbers"),
                     ({m: "x" for m in motion.MOODS}, f"must be {dim} finite numbers")):
        payload = read_checkpoint(path)
        payload["mood_styles"] = bad
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match=f"checkpoint {path}: mood_styles {why}"):
            load_model(path)


def test_an_export_with_malformed_mood_styles_is_a_clear_error(tmp_path: Path) -> None:
    cfg = ModelConfig()
    shipped = ModelConstants.load(SHIPPED_EXPORT / CONSTANTS_FILE, cfg)
    for bad in (shipped.mood_styles[:3], np.full_like(shipped.mood_styles, np.nan)):
        path = tmp_path / CONSTANTS_FILE
        dataclasses.replace(shipped, mood_styles=bad).save(path)
        with pytest.raises(BackendError, match=f"{path}: mood_styles must be 5 x {cfg.style_dim} finite numbers"):
            ModelConstants.load(path, cfg)
