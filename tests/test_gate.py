"""The voice gate (engine/gate.py) and its VAD (features/vad.py): the mouth rests on music, noise and
room sounds, speech passes untouched, streams and bakes agree, and a missing model is a clear warning.

Real inputs: the bundled speech, Debian's asterisk-moh-opsound-wav music (.ci/run installs it; the
music test skips without it) and the procedural battery of ksdiff_runtime/training/nonspeech.py."""

from __future__ import annotations

import importlib.metadata
import logging

import numpy as np
import pytest

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.engine import gate as gate_mod
from ksdiff_runtime.engine.gate import GATED_COLUMNS, GateConfig, VoiceGate, gate_clip
from ksdiff_runtime.engine.presets import PRESETS
from ksdiff_runtime.features import vad
from ksdiff_runtime.features.frontend import FrontEndConfig
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_runtime.training import nonspeech

try:
    vad.vad_model_path()
except vad.VadUnavailableError as e:  # `make` installs it
    pytestmark = pytest.mark.skip(reason=str(e))

JAW = motion.index("jawOpen")
SR = motion.SAMPLE_RATE


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, _ = load_audio(SAMPLE_SPEECH)
    return audio[: 4 * SR].astype(np.float32)


@pytest.fixture(scope="module")
def engines():
    from ksdiff_runtime.backends.select import load_backend
    from ksdiff_runtime.engine.engine import StreamingEngine

    backend = load_backend("onnxruntime", threads=1)
    on = StreamingEngine(backend, "low-latency", voice_gate=GateConfig(), front_end_threads=1)
    off = StreamingEngine(backend, "low-latency", front_end_threads=1)
    yield on, off
    on.close()
    off.close()


def stream(engine, audio: np.ndarray, chunks: list[int] | None = None, mode: str = "live") -> np.ndarray:
    """Every frame's values [n, 55] of one stream of ``audio`` pushed in ``chunks`` (default 533 samples)."""
    frames = engine.stream_clip(audio, chunks or (), seed=3, mode=mode)
    assert [f.index for f in frames] == list(range(len(frames)))
    return np.array([np.concatenate([f.blendshapes, f.head]) for f in frames])


# --- the VAD -----------------------------------------------------------------------------------------
def test_vad_hears_speech_and_not_noise(speech) -> None:
    p = vad.speech_probabilities(speech)
    assert p.shape == (-(-speech.size // vad.CHUNK),)
    assert np.mean(p > 0.5) > 0.5  # the sample is mostly speech
    rng = np.random.default_rng(0)
    for kind in ("pink noise", "chords", "keyboard"):  # a chord's attack may pass for a voice now and then
        assert np.mean(vad.speech_probabilities(nonspeech.procedural(kind, 3.0, rng)) > 0.5) < 0.1, kind
    assert vad.speech_probabilities(np.zeros(SR, np.float32)).max() < 0.1


def test_vad_track_in_pieces_is_the_whole_clip(speech) -> None:
    """A stream's VAD, advanced as its audio comes (any chunking), gives the whole clip's probabilities."""
    whole = vad.speech_probabilities(speech)
    track = vad.VadTrack(vad.shared_vad())
    rng = np.random.default_rng(1)
    n = 0
    while n < speech.size:
        n = min(speech.size, n + int(rng.integers(1, 3000)))
        track.advance(speech, 0, n, ended=n == speech.size)
    np.testing.assert_allclose(track.probs(0, track.chunks), whole, atol=1e-6)


def test_vad_track_counts_audio_it_never_heard_as_silence(speech) -> None:
    """A stream that shed frames may have dropped audio the VAD had not run over: those chunks are silence,
    and the track goes on from the audio it has."""
    track = vad.VadTrack(vad.shared_vad())
    track.advance(speech, 0, 10 * vad.CHUNK)
    offset = 40 * vad.CHUNK + 100  # audio before this sample is gone
    track.advance(speech[offset:], offset, speech.size, ended=True)
    assert track.chunks == -(-speech.size // vad.CHUNK)
    assert np.all(track.probs(10, 41) == 0.0)
    assert track.probs(41, track.chunks).max() > 0.5  # speech after the gap is heard again



def test_many_tracks_advanced_at_once_are_each_track_alone(speech) -> None:
    """A round's tracks in one batched call (streams with one new chunk share a call, a stream catching up
    runs its own, a stream that dropped audio counts it as silence) give each track's own probabilities."""
    gone = 40 * vad.CHUNK + 7  # the last stream's audio before this sample is gone before it first listens
    clips = [speech, 0.2 * speech[::-1].copy(), np.zeros(SR, np.float32), speech]
    offsets = [0, 0, 0, gone]
    tracks = [vad.VadTrack(vad.shared_vad()) for _ in clips]
    rng = np.random.default_rng(2)
    fed = [0, 0, 0, gone]
    model = vad.shared_vad()
    batched, calls = model.batched.run, []
    model.batched.run = lambda *args, **kwargs: calls.append(1) or batched(*args, **kwargs)
    try:
        for _ in range(60):
            for i, clip in enumerate(clips):  # about one chunk a round; now and then several, or none
                fed[i] = min(clip.size, fed[i] + int(rng.choice([533, 533, 533, 0, 2100])))
            vad.advance_many(tracks, [(c[o:], o, n, n == c.size) for c, o, n in zip(clips, offsets, fed, strict=True)])
    finally:
        model.batched.run = batched
    assert calls
    for clip, offset, n, track in zip(clips, offsets, fed, tracks, strict=True):
        alone = vad.VadTrack(vad.shared_vad())
        alone.advance(clip[offset:], offset, n, n == clip.size)
        assert track.chunks == alone.chunks
        np.testing.assert_allclose(track.probs(0, track.chunks), alone.probs(0, alone.chunks), atol=1e-6)
    assert np.all(tracks[3].probs(0, 41) == 0.0) and tracks[3].probs(41, tracks[3].chunks).max() > 0.5


def test_missing_silero_vad_is_a_clear_message(monkeypatch, caplog) -> None:
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(vad.importlib.metadata, "distribution", not_installed)
    with pytest.raises(vad.VadUnavailableError, match=r"pip install --no-deps silero-vad==6\.2\.3"):
        vad.vad_model_path()
    with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.engine.gate"):
        assert gate_mod.gate_if_available() is None  # serve and bake go on without the gate, and say so
    assert "voice gate off" in caplog.text and "silero-vad" in caplog.text
    assert gate_mod.gate_if_available(False) is None


# --- the gate ------------------------------------------------------------------------------------------
def test_gate_config_is_checked() -> None:
    for bad in (dict(threshold=0.0), dict(threshold=1.0), dict(hangover_ms=-1), dict(release_ms=-5),
                dict(min_chunks=0), dict(early_ms=-1)):
        with pytest.raises(ValueError, match="voice gate"):
            GateConfig(**bad)


@pytest.mark.parametrize("early_ms", [0.0, 13.0])
def test_a_frame_reads_whole_chunks_up_to_its_lookahead_only(early_ms) -> None:
    """Up to the frame's lookahead, less what a preset that reads frames early (``early_ms``) has not heard
    when the frame's hop runs."""
    cfg = GateConfig(hangover_ms=250, lookahead_frames=2, early_ms=early_ms)
    for frame in (0, 1, 7, 100, 1001):
        k0, k1 = cfg.chunk_span(frame)
        heard = (frame + 3) * SR // motion.FPS - round(early_ms * SR / 1000)
        assert k1 * vad.CHUNK <= heard < (k1 + 1) * vad.CHUNK
        assert (k0 + 1) * vad.CHUNK > frame * SR / motion.FPS - 0.25 * SR or k0 == 0


@pytest.mark.parametrize("preset", list(PRESETS.values()), ids=list(PRESETS))
def test_a_frames_gain_reads_no_audio_its_hop_does_not_have(preset) -> None:
    """The gate as a preset's streams read it never reads a VAD chunk that ends after the audio the frame's
    hop runs with (the front-end's reading point of the frame's last lookahead frame), and reads up to less
    than a chunk before the end of that frame's period, or its early reading point."""
    from ksdiff_runtime.features.frontend import PosteriorgramFrontEnd

    gate = GateConfig().for_preset(preset)
    fe = PosteriorgramFrontEnd(preset.front_end_config(FrontEndConfig()))
    L = preset.model_lookahead_frames
    past = max(0, fe.lookahead_samples)  # a positive feature lookahead is audio the gate does not read
    for frame in range(3000):
        heard = fe.range_samples(frame + L, frame + L + 1)[1]
        read = gate.chunk_span(frame)[1] * vad.CHUNK
        assert heard - past - vad.CHUNK < read <= heard, (frame, heard, read)


def test_gains_open_on_voice_and_close_after_it(speech) -> None:
    """1 s of silence, speech, 1.5 s of silence: closed, then open through the speech, then closed within
    the hangover and release."""
    audio = np.concatenate([np.zeros(SR), speech, np.zeros(3 * SR // 2)]).astype(np.float32)
    cfg = GateConfig()
    g = VoiceGate(cfg, vad.shared_vad())
    g.listen(audio, 0, audio.size, ended=True)
    gains = g.gains(0, motion.num_frames(audio.size))
    fps = motion.FPS
    assert np.all(gains[: int(0.8 * fps)] == 0)  # silence before (beyond the lookahead)
    speech_frames = slice(fps + 10, fps + speech.size * fps // SR - 10)
    assert np.mean(gains[speech_frames] == 1.0) > 0.8
    closed_by = fps + speech.size * fps // SR + round((cfg.hangover_ms + cfg.release_ms) / 1000 * fps) + 3
    assert np.all(gains[closed_by:] == 0)
    falling = np.diff(gains)
    assert falling.min() >= -1.0 / round(cfg.release_ms * fps / 1000) - 1e-6  # closes over release_ms, not a snap


def test_gate_only_touches_mouth_and_jaw(speech) -> None:
    rng = np.random.default_rng(0)
    audio = nonspeech.procedural("pink noise", 2.0, rng)
    values = rng.uniform(0.2, 0.8, (motion.num_frames(audio.size), motion.NUM_BLENDSHAPES + motion.NUM_HEAD))
    gated = gate_clip(values.astype(np.float32), audio, GateConfig(), vad.shared_vad())
    others = np.setdiff1d(np.arange(values.shape[1]), GATED_COLUMNS)
    np.testing.assert_array_equal(gated[:, others], values[:, others].astype(np.float32))
    assert np.mean(gated[:, JAW] == 0) > 0.8
    names = {motion.BLENDSHAPES[c] for c in GATED_COLUMNS}
    assert "jawOpen" in names and "mouthClose" in names and not any(n.startswith(("eye", "brow")) for n in names)


# --- through the engine -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pink noise", "wind", "breaths", "keyboard", "chords", "game effects"])
def test_the_mouth_rests_on_room_sounds(engines, kind: str) -> None:
    on, _ = engines
    audio = nonspeech.procedural(kind, 6.0, np.random.default_rng(7))
    jaw = stream(on, audio)[:, JAW]
    assert np.mean(jaw > 0.1) <= 0.05, f"{kind}: jawOpen > 0.1 on {np.mean(jaw > 0.1):.0%} of frames"


def test_the_mouth_rests_on_recorded_music(engines) -> None:
    tracks = nonspeech.recorded_music(4.0)
    if not tracks:
        pytest.skip(f"no {nonspeech.MUSIC_ON_HOLD}: apt-get install asterisk-moh-opsound-wav")
    on, off = engines
    for name, audio in tracks.items():
        ungated, gated = stream(off, audio)[:, JAW], stream(on, audio)[:, JAW]
        assert np.mean(gated > 0.1) <= 0.05, f"{name}: jawOpen > 0.1 on {np.mean(gated > 0.1):.0%} of frames"
        assert gated.mean() <= ungated.mean()


def test_speech_passes_the_gate_untouched(engines, speech) -> None:
    """On speech the gate leaves the model's frames as they are (same seed, same frames), except in pauses."""
    on, off = engines
    gated, ungated = stream(on, speech), stream(off, speech)
    assert gated.shape == ungated.shape
    same = np.all(gated == ungated, axis=1)
    assert same.mean() > 0.8
    voiced = ungated[:, JAW] > 0.15  # an open jaw in speech: the gate must not have closed it
    assert np.all(same[voiced])


def test_real_voices_pass_the_gate(engines) -> None:
    """Real recorded prompts (8 kHz telephone speech, one speaker): the frames where the model opens the jaw
    are left alone (at most 3 % of them touched, at utterance onsets)."""
    from ksdiff_runtime.training.streaming_distil import real_prompts

    prompts = real_prompts("test")[:6]
    if not prompts:
        pytest.skip("no Asterisk prompts: apt-get install asterisk-core-sounds-en-wav")
    on, off = engines
    voiced = touched = 0
    for path in prompts:
        audio = load_audio(path)[0].astype(np.float32)
        gated, ungated = stream(on, audio), stream(off, audio)
        open_jaw = ungated[:, JAW] > 0.15
        voiced += int(open_jaw.sum())
        touched += int(np.any(gated[open_jaw] != ungated[open_jaw], axis=1).sum())
    assert voiced > 100 and touched <= 0.03 * voiced, f"{touched} of {voiced} voiced frames gated"


def test_gate_is_the_same_whatever_the_chunking_and_for_lines_and_bakes(engines, speech) -> None:
    """Frames depend on the audio, not on how it came: pushed in odd chunks, as a line, and gated after a
    bake, the gains agree (the model's own frames differ between a line and a live stream; the gate's
    decisions do not)."""
    on, _ = engines
    audio = np.concatenate([speech[: 2 * SR], nonspeech.procedural("chords", 2.0, np.random.default_rng(2))])
    rng = np.random.default_rng(5)
    a = stream(on, audio)
    b = stream(on, audio, chunks=[int(x) for x in rng.integers(1, 4000, 200)])
    np.testing.assert_array_equal(a, b)
    line = stream(on, audio, mode="line")
    closed = lambda v: np.all(v[:, GATED_COLUMNS] == 0, axis=1)  # noqa: E731
    np.testing.assert_array_equal(closed(a), closed(line))
    # a bake gated as the engine gates its streams (the engine's preset reads frames early: its gate too)
    assert on.voice_gate == GateConfig().for_preset(on.preset) and on.voice_gate.early_ms == 10.0
    baked = gate_clip(np.ones((len(a), motion.NUM_BLENDSHAPES + motion.NUM_HEAD), np.float32),
                      np.pad(audio, (0, len(a) * SR // motion.FPS + SR)), on.voice_gate, vad.shared_vad())
    np.testing.assert_array_equal(closed(a), baked[:, JAW] == 0)
