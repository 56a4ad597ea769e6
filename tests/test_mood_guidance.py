"""A mood on the network: each mood's style kept with the weights, fed to the denoisers by the stream's mood and
intensity, at the mood guidance scale (engine/sampling.py, training/mood_styles.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.backends.artifact import CONSTANTS_FILE, SHIPPED_EXPORT
from ksdiff_runtime.backends.base import ModelConstants
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
    assert model.mood_style is not None and model.mood_style.shape == (len(motion.MOODS), model.cfg.style_dim)
    from_model = ModelConstants.from_model(model)
    shipped = ModelConstants.load(SHIPPED_EXPORT / CONSTANTS_FILE, model.cfg)
    assert shipped.mood_style is not None
    np.testing.assert_array_equal(shipped.mood_style, from_model.mood_style)
    np.testing.assert_allclose(np.linalg.norm(shipped.mood_style, axis=1), 1.0, atol=1e-4)  # as the encoder's are
    # five different ways of speaking: no two moods' styles alike
    cos = shipped.mood_style @ shipped.mood_style.T
    assert np.all(cos[~np.eye(len(motion.MOODS), dtype=bool)] < 0.99)


def test_a_mood_moves_the_style_toward_its_own_by_the_intensity() -> None:
    cfg = ModelConfig()
    rng = np.random.default_rng(0)
    null = rng.standard_normal(cfg.style_dim).astype(np.float32)
    k = ModelConstants(cfg, *(np.zeros(1, np.float32),) * 4, style_null=null, alpha_bar=np.ones(10, np.float32),
                       mood_style=rng.standard_normal((len(motion.MOODS), cfg.style_dim)).astype(np.float32))
    sad = k.mood_style[motion.MOODS.index("sad")]
    np.testing.assert_allclose(mood_style(k, None, "sad", 1.0), sad, atol=1e-6)
    np.testing.assert_allclose(mood_style(k, None, "sad", 0.5), (k.style_null + sad) / 2, atol=1e-6)
    base = rng.standard_normal(cfg.style_dim).astype(np.float32)  # a stream's own style: the mood moves it as much
    np.testing.assert_allclose(mood_style(k, base, "sad", 0.5), base + (sad - k.style_null) / 2, atol=1e-6)
    assert mood_style(k, None, "neutral", 1.0) is None and mood_style(k, base, "sad", 0.0) is base
    no_moods = ModelConstants(cfg, *(np.zeros(1, np.float32),) * 4, style_null=k.style_null, alpha_bar=k.alpha_bar)
    assert mood_style(no_moods, None, "sad", 1.0) is None


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


def test_the_mood_guidance_is_the_style_guidance() -> None:
    assert with_mood_guidance(None, 0.0) is None and with_mood_guidance(None, 1.0) is None
    assert with_mood_guidance(None, 2.5) == Guidance(style=2.5)
    assert with_mood_guidance(Guidance(audio=1.5), 2.0) == Guidance(audio=1.5, style=2.0)
    assert guidance_variants(with_mood_guidance(None, 2.0)) == 2  # one more denoiser row per stream
    with pytest.raises(ValueError, match="give one of them, not both"):
        with_mood_guidance(Guidance(style=2.0), 3.0)


def _stream(engine: StreamingEngine, audio: np.ndarray, mood: str) -> np.ndarray:
    frames = engine.stream_clip(audio, controls=Controls.from_dict({"mood": mood}))
    return np.stack([np.concatenate([f.blendshapes, f.head]) for f in frames])


def test_the_shipped_network_speaks_in_the_mood_more_as_the_guidance_grows(speech_16k: np.ndarray) -> None:
    """Streamed live on the shipped model (no gate or liveliness: the model and the controls alone): a sad stream's
    jaw goes less far and an angry one's further than the same mood's held expression alone (guidance 0), more so
    at guidance 2; a neutral stream is the same whatever the guidance."""
    backend = load_backend("onnxruntime", DEFAULT_CHECKPOINT, threads=1)
    audio = np.tile(speech_16k, 2)
    jaw: dict[tuple[str, float], float] = {}
    neutral = {}
    for g in (0.0, 1.0, 2.0):
        engine = StreamingEngine(backend, "low-latency", mood_guidance=g, front_end_threads=1)
        try:
            neutral[g] = _stream(engine, audio, "neutral")
            for mood in ("sad", "angry"):
                v = _stream(engine, audio, mood)
                jaw[mood, g] = StyleProfile.of(v[:, :D], v[:, D:]).articulation
        finally:
            engine.close()
    np.testing.assert_allclose(neutral[2.0], neutral[0.0], atol=1e-4)
    np.testing.assert_array_equal(neutral[1.0], neutral[0.0])
    assert jaw["sad", 2.0] < jaw["sad", 1.0] < 0.95 * jaw["sad", 0.0], jaw
    assert jaw["angry", 2.0] > jaw["angry", 1.0] > 1.05 * jaw["angry", 0.0], jaw


def test_a_model_without_mood_styles_keeps_the_moods_expression_and_says_so_once(
        tiny_backend, speech_16k: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    assert tiny_backend.constants.mood_style is None
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
    assert load_model(path).mood_style is None
    dim = ModelConfig.from_dict(read_checkpoint(path)["config"]).style_dim
    vectors = {m: np.full(dim, i, np.float32) for i, m in enumerate(motion.MOODS)}
    write_mood_styles(path, vectors)
    model = load_model(path)
    np.testing.assert_array_equal(model.mood_style.numpy(), np.stack([vectors[m] for m in motion.MOODS]))
    original = read_checkpoint(tiny_checkpoint)["model"]
    kept = read_checkpoint(path)["model"]
    assert all(kept[k].dtype == v.dtype and bool((kept[k] == v).all()) for k, v in original.items())  # untouched

    for bad, why in (({m: [0.0] * dim for m in motion.MOODS[:-1]}, "must name the moods"),
                     ({m: [0.0] * (dim - 1) for m in motion.MOODS}, f"must be {dim} finite numbers"),
                     ({m: [float("nan")] * dim for m in motion.MOODS}, f"must be {dim} finite numbers"),
                     ({m: "x" for m in motion.MOODS}, f"must be {dim} finite numbers")):
        payload = read_checkpoint(path)
        payload["mood_styles"] = bad
        torch.save(payload, path)
        with pytest.raises(CheckpointError, match=f"checkpoint {path}: mood_styles {why}"):
            load_model(path)
