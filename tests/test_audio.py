"""Audio guards and front-ends: repaired input is reported, shapes follow motion.num_frames,
and blockwise (streaming) features equal whole-clip features exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ksdiff_runtime.features.frontend import (
    FRONT_ENDS,
    FrontEndConfig,
    LogMelFrontEnd,
    PosteriorgramFrontEnd,
    Wav2Vec2FrontEnd,
    make_front_end,
)
from ksdiff_runtime.inputs.guards import AudioInputError, load_audio, sanitize, to_model_rate
from ksdiff_runtime.motion import SAMPLE_RATE, num_frames


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced-ish test signal: a gliding harmonic tone with noise bursts and pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = (np.sin(2 * np.pi * 2.5 * t) > -0.3).astype(np.float64)
    noise = rng.normal(0, 0.05, t.size) * (np.sin(2 * np.pi * 1.3 * t) > 0.6)
    return (0.2 * voiced * envelope + noise).astype(np.float32)


@pytest.fixture(scope="module")
def ppg() -> PosteriorgramFrontEnd:
    return PosteriorgramFrontEnd(FrontEndConfig(left_context_ms=300, lookahead_ms=60))


# --- guards ------------------------------------------------------------------------------------
def test_sanitize_counts_nonfinite_and_clipping() -> None:
    x = np.array([0.1, np.nan, np.inf, -np.inf, 1.5, -2.0, 0.5], dtype=np.float64)
    out, report = sanitize(x)
    assert out.dtype == np.float32
    assert report.n_samples == 7
    assert report.n_nonfinite == 3
    assert report.n_clipped == 2
    np.testing.assert_allclose(out, [0.1, 0, 0, 0, 1.0, -1.0, 0.5], atol=1e-7)
    assert report.peak == pytest.approx(1.0)
    assert not report.is_silent


def test_sanitize_int_stereo_and_silence() -> None:
    pcm = np.array([[32767, -32768], [-32768, -32768], [0, 0]], dtype=np.int16)
    out, report = sanitize(pcm)
    np.testing.assert_allclose(out, [(32767 - 32768) / 65536, -1.0, 0.0], atol=1e-6)
    assert report.n_clipped == 0 and report.n_nonfinite == 0
    # A NaN in one channel must not wipe out the other channel's value.
    out, report = sanitize(np.array([[np.nan, 0.5]], dtype=np.float32))
    assert report.n_nonfinite == 1 and out[0] == pytest.approx(0.25)
    assert sanitize(np.zeros(1000, np.int32))[1].is_silent
    assert sanitize(np.array([], np.float32))[1].is_silent


@pytest.mark.parametrize("channels", [1, 2, 3, 6, 8, 12, 33])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_sanitize_downmixes_and_counts_as_numpy_does(channels: int, dtype: type) -> None:
    """The downmix is summed a channel at a time (numpy's mean over a short inner axis was most of the cost of every
    pushed audio message): the same float32 samples as numpy's mean, and every overloaded channel value counted."""
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((4000, channels)) * 0.5
    if dtype is np.int16:
        x = (x * 20000).clip(-32768, 32767)
    x = x.astype(dtype)
    if dtype is not np.int16:
        x[3, 0], x[7, channels - 1], x[9, channels // 2] = np.nan, np.inf, 3.0
    out, report = sanitize(x, channels_known=True)
    scale = 32768.0 if dtype is np.int16 else 1.0
    ref = x.astype(np.float64) / scale
    finite = np.isfinite(ref)
    ref = np.where(finite, ref, 0.0)
    assert report.n_nonfinite == int((~finite).sum())
    overloaded = int(np.count_nonzero(np.abs(ref) > 1.0))
    assert report.n_clipped == overloaded and (dtype is np.int16 or overloaded >= 1)
    assert np.array_equal(out, np.clip(ref, -1.0, 1.0).mean(axis=1).astype(np.float32))
    assert sanitize(np.array([[0.2, -1.5], [0.1, 0.3]], np.float32))[1].n_clipped == 1  # an overload below alone


def test_sanitize_rejects_non_audio() -> None:
    with pytest.raises(AudioInputError):
        sanitize(np.array(["a", "b"]))
    with pytest.raises(AudioInputError, match="channels-first"):
        sanitize(np.zeros((2, 48_000), np.float32))


@pytest.mark.parametrize("rate", [44_100, 48_000, 8_000, 22_050])
def test_resampling_stereo_to_16k_mono(tmp_path: Path, rate: int) -> None:
    seconds = 1.25
    n = int(seconds * rate)
    t = np.arange(n) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    mono, _ = sanitize(stereo)
    out = to_model_rate(mono, rate)
    assert out.dtype == np.float32 and out.ndim == 1
    assert out.size == n * SAMPLE_RATE // rate  # the stream's 16 kHz clock (SPEC 4.2)
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, stereo.astype(np.float32), rate, subtype="PCM_16")
    loaded, report = load_audio(path)
    assert loaded.size == out.size and report.sample_rate == rate and report.n_samples == n
    # The tone survives at the right level (RMS of a 0.5 sine ~ 0.354) away from the edges.
    assert np.sqrt(np.mean(loaded[2000:-2000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.03)


def test_load_audio_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioInputError, match=r"nope\.wav"):
        load_audio(missing)
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    with pytest.raises(AudioInputError, match=r"broken\.wav"):
        load_audio(corrupt)
    unsupported = tmp_path / "notes.xyz"
    unsupported.write_text("not audio")
    with pytest.raises(AudioInputError, match=r"notes\.xyz") as err:
        load_audio(unsupported)
    assert "unsupported" in str(err.value)
    with pytest.raises(AudioInputError, match="not a file"):
        load_audio(tmp_path)


# --- front-ends --------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 300, 533, 534])
def test_empty_and_subframe_audio_give_zero_frames(ppg: PosteriorgramFrontEnd, n: int) -> None:
    audio = np.zeros(n, np.float32)
    for fe in (LogMelFrontEnd(), ppg):
        feats = fe(audio)
        assert feats.shape == (num_frames(n), fe.dim)
        assert feats.dtype == np.float32
    assert num_frames(533) == 0 and num_frames(534) == 1


def test_silence_and_noise_give_finite_features(ppg: PosteriorgramFrontEnd) -> None:
    silence = np.zeros(SAMPLE_RATE, np.float32)
    noise = np.random.default_rng(1).normal(0, 0.3, SAMPLE_RATE).clip(-1, 1).astype(np.float32)
    for fe in (LogMelFrontEnd(), ppg):
        for audio in (silence, noise):
            feats = fe(audio)
            assert feats.shape == (30, fe.dim)
            assert np.isfinite(feats).all()
    mel = LogMelFrontEnd()(silence)
    assert np.allclose(mel, -1.0)  # the floor maps to -1 by design


def test_logmel_matches_librosa() -> None:
    import librosa

    audio = _speechlike(0.7)
    fe = LogMelFrontEnd()
    ref = librosa.feature.melspectrogram(
        y=audio, sr=SAMPLE_RATE, n_fft=512, win_length=400, hop_length=160, n_mels=40, pad_mode="constant"
    )
    ref = (np.log10(np.maximum(ref.T, 1e-8)) + 4.0) / 4.0
    np.testing.assert_allclose(fe.frames(audio, ref.shape[0]), ref, atol=1e-4)


@pytest.mark.parametrize("sr, n_fft, n_mels", [(16_000, 512, 40), (16_000, 512, 80), (22_050, 1024, 64)])
def test_the_mel_filterbank_is_librosas(sr: int, n_fft: int, n_mels: int) -> None:
    """Computed without librosa (whose filters module compiles numba code when first imported)."""
    import librosa

    from ksdiff_runtime.features.frontend import mel_filterbank

    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)
    np.testing.assert_allclose(mel_filterbank(sr, n_fft, n_mels), ref, rtol=1e-5, atol=1e-8)


def test_serving_features_import_nothing_that_compiles_numba_code() -> None:
    """A new install's first stream or bake must not wait for numba (librosa's filters and util modules
    compile theirs when imported): the features and prosody are computed without them."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from ksdiff_runtime.features.frontend import LogMelFrontEnd\n"
            "from ksdiff_runtime.features.prosody import prosody\n"
            "x = np.sin(np.arange(16000) * 0.1).astype(np.float32)\n"
            "LogMelFrontEnd()(x); prosody(x)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('numba', 'librosa.util', 'librosa.filters'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("n", [SAMPLE_RATE * 2 + 777, 4800, 3200])
def test_blockwise_stream_equals_whole_clip(ppg: PosteriorgramFrontEnd, n: int) -> None:
    audio = _speechlike(n / SAMPLE_RATE, seed=n)[:n]
    whole = ppg(audio)
    assert whole.shape == (num_frames(n), ppg.dim)
    # Stream: each block computed as soon as the audio it needs exists, from that prefix only.
    streamed = [ppg.block_features(audio[: min(n, ppg.samples_needed(k))], k) for k in range(ppg.num_blocks(n))]
    np.testing.assert_array_equal(np.concatenate(streamed), whole)
    # More audio than needed must not change a block (nothing past the lookahead is read).
    k = 2
    assert np.array_equal(ppg.block_features(audio, k), ppg.block_features(audio[: ppg.samples_needed(k)], k))


def test_frame_ranges_and_offsets(ppg: PosteriorgramFrontEnd) -> None:
    """A block is a frame range; ranges of any length read only their own span of audio, and the
    stream may keep only recent audio (offset) without changing the result."""
    n = SAMPLE_RATE * 2
    audio = _speechlike(2.0, seed=5)[:n]
    for k in range(3):
        f0 = k * ppg.frames_per_block
        assert np.array_equal(ppg.range_features(audio, f0, f0 + ppg.frames_per_block), ppg.block_features(audio, k))
    for f0, f1 in ((7, 8), (20, 22), (31, 36)):
        s0, s1 = ppg.range_samples(f0, f1)
        assert num_frames(s1) >= f1  # the audio a range waits for holds its last frame
        ref = ppg.range_features(audio, f0, f1)
        assert ref.shape == (f1 - f0, ppg.dim)
        assert np.array_equal(ppg.range_features(audio[:s1], f0, f1), ref)
        assert np.array_equal(ppg.range_features(audio[s0:s1], f0, f1, offset=s0), ref)
        with pytest.raises(ValueError, match="cannot give frames"):
            ppg.range_features(audio[s0 + 320 :], f0, f1, offset=s0 + 320)


def test_many_streams_ranges_in_one_recogniser_call_are_each_ones_own(ppg: PosteriorgramFrontEnd) -> None:
    """An engine round's requests (streams at other levels, places and offsets; a range cut by an ended
    stream's end; an empty range) in one batched recogniser call give each request's own features."""
    audio = _speechlike(2.0, seed=6)
    quiet = 0.05 * _speechlike(1.0, seed=7)
    s0 = ppg.range_samples(30, 33)[0]
    requests = [(audio, 7, 8, 0), (audio * 0.3, 40, 43, 0), (audio[s0:], 30, 33, s0), (quiet, 28, 31, 0),
                (quiet, 35, 38, 0), (audio, 5, 5, 0)]
    batched = ppg.many_range_features(requests)
    for request, got in zip(requests, batched, strict=True):
        alone = ppg.range_features(*request)
        assert got.shape == alone.shape
        np.testing.assert_allclose(got, alone, atol=1e-4)
    assert batched[3].shape[0] == 2 and batched[4].shape[0] == 0 and batched[5].shape[0] == 0


def test_offline_recognition_in_pieces_matches_one_pass(ppg: PosteriorgramFrontEnd) -> None:
    """Bakes run the recogniser in pieces on all cores; with 1 s of context the features agree."""
    audio = _speechlike(6.0, seed=11)
    default = ppg.offline_workers
    try:
        ppg.offline_workers = 1
        one = ppg.offline(audio)
        ppg.offline_workers = 3
        pieces = ppg.offline(audio)
    finally:
        ppg.offline_workers = default
    assert pieces.shape == one.shape
    assert (pieces[:, :191].argmax(1) == one[:, :191].argmax(1)).mean() > 0.85
    np.testing.assert_array_equal(pieces[:, 191:], one[:, 191:])  # the log-mel part is one pass anyway
    assert np.abs(pieces - one).mean() < 0.03


def test_offline_recognition_of_a_long_clip_takes_pieces_of_bounded_length(ppg: PosteriorgramFrontEnd,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole-utterance attention takes memory with the square of its input: a long bake (--full-context-recogniser)
    goes in pieces of at most OFFLINE_MAX_PIECE_S (and its context), even on one core (a 240 s bake in 2 pieces
    peaked at 5.4 GB, in 8 at 1.2 GB)."""
    from ksdiff_runtime.features import frontend

    monkeypatch.setattr(frontend, "OFFLINE_MAX_PIECE_S", 2)
    audio = _speechlike(7.0, seed=12)
    sizes: list[int] = []
    real = ppg.log_probs
    monkeypatch.setattr(ppg, "log_probs", lambda segment: sizes.append(segment.size) or real(segment))
    monkeypatch.setattr(ppg, "offline_workers", 1)
    pieces = ppg.offline(audio)
    assert len(sizes) == 4 and max(sizes) <= 2 * 16_000 + 2 * frontend.OFFLINE_PIECE_CONTEXT_MS * 16, sizes
    monkeypatch.setattr(frontend, "OFFLINE_MAX_PIECE_S", 60)
    one = ppg.offline(audio)
    assert len(sizes) == 5 and sizes[-1] == audio.size
    assert pieces.shape == one.shape
    assert (pieces[:, :191].argmax(1) == one[:, :191].argmax(1)).mean() > 0.85
    assert np.abs(pieces - one).mean() < 0.03


def test_blockwise_context_matters(ppg: PosteriorgramFrontEnd) -> None:
    """The schedule is real: a different left context gives different PPG values mid-clip."""
    audio = _speechlike(2.0)
    wide = PosteriorgramFrontEnd(FrontEndConfig(left_context_ms=1000, lookahead_ms=60))
    assert not np.array_equal(ppg(audio)[-10:], wide(audio)[-10:])


def test_registry_and_config_checks() -> None:
    assert set(FRONT_ENDS) == {"logmel", "ppg", "wav2vec2"}
    assert make_front_end(FrontEndConfig(name="logmel")).dim == 40
    with pytest.raises(ValueError, match="unknown front-end"):
        make_front_end(FrontEndConfig(name="mfcc"))
    with pytest.raises(ValueError, match="multiple of 100"):
        make_front_end(FrontEndConfig(name="logmel", block_ms=150))


def test_wav2vec2_front_end_from_tiny_local_model(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path)
    fe = make_front_end(FrontEndConfig(name="wav2vec2", model_dir=str(tmp_path), layer=1))
    audio = _speechlike(1.0)
    feats = fe(audio)
    assert feats.shape == (30, 32) and np.isfinite(feats).all()
    streamed = [fe.block_features(audio[: fe.samples_needed(k)], k) for k in range(fe.num_blocks(audio.size))]
    np.testing.assert_allclose(np.concatenate(streamed), feats, atol=1e-6)
    assert fe(np.zeros(100, np.float32)).shape == (0, 32)


def test_wav2vec2_front_end_rejects_bad_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no config\.json"):
        Wav2Vec2FrontEnd(tmp_path)
