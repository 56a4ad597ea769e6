"""The PyTorch port of hama's phoneme recogniser against libhama, and its weights-file checks."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features import recogniser as rec
from ksdiff_runtime.features.frontend import PosteriorgramFrontEnd
from ksdiff_runtime.motion import SAMPLE_RATE

# Real human speech: Debian's asterisk-core-sounds-en-wav (.ci/run installs it), 8 kHz prompts
# read by one speaker; tt-monkeys.wav and the like are not speech and are not used.
ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
REAL_PROMPTS = ["demo-echotest.wav", "dir-intro.wav", "vm-review.wav"]
SYNTH_LINES = [
    ("The quick brown fox jumps over the lazy dog, then naps.", "en-us+f3", 150, 70),
    ("Would you bring me the map from the ship, please?", "en-gb-scotland+m3", 190, 40),
    ("Zero, seven, nine. Thirty six thousand and twelve.", "en+klatt2", 170, 55),
]
MIN_AGREEMENT = 0.999
MAX_ABS_DIFF = 0.1  # measured 0.0007 (sample speech) .. 0.02 (telephone speech)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> rec.Recogniser:
    return rec.Recogniser.from_hama()


@pytest.fixture(scope="module")
def libhama() -> PosteriorgramFrontEnd:
    """libhama through hama's Python API, as the runtime's front-end calls it."""
    return PosteriorgramFrontEnd()


def _ported(model: rec.Recogniser, wav: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        log_probs, lengths = model(torch.from_numpy(wav)[None])
    return log_probs[0, : int(lengths[0])].numpy()


def _compare(model: rec.Recogniser, libhama: PosteriorgramFrontEnd, clips: list[np.ndarray]) -> tuple[float, float]:
    """Argmax agreement over all frames of ``clips`` and the max abs log-probability difference."""
    same, frames, max_diff = 0, 0, 0.0
    for wav in clips:
        ref, got = libhama.log_probs(wav), _ported(model, wav)
        assert got.shape == ref.shape
        same += int((got.argmax(1) == ref.argmax(1)).sum())
        frames += ref.shape[0]
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
    return same / frames, max_diff


def _sample_speech() -> np.ndarray:
    audio, rate = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    assert rate == SAMPLE_RATE
    return audio


def test_agrees_with_libhama_on_sample_speech(model, libhama) -> None:
    speech = _sample_speech()
    # the bundled line at three levels (the recogniser depends on level) and a cut not on the 320 grid
    clips = [speech, 0.25 * speech, np.clip(2.5 * speech, -1, 1), speech[5000:52345]]
    agreement, max_diff = _compare(model, libhama, clips)
    assert agreement >= MIN_AGREEMENT and max_diff < MAX_ABS_DIFF, (agreement, max_diff)


def test_agrees_with_libhama_on_synthetic_speech(model, libhama) -> None:
    from ksdiff_runtime.training.speech import synthesize

    rng = np.random.default_rng(0)
    clips = []
    for text, voice, rate, pitch in SYNTH_LINES:
        audio = synthesize(text, voice, rate, pitch).audio
        noise = 0.003 * rng.standard_normal(audio.size).astype(np.float32)  # a little room noise
        clips.append((0.6 * audio + noise).astype(np.float32))
    agreement, max_diff = _compare(model, libhama, clips)
    assert agreement >= MIN_AGREEMENT and max_diff < MAX_ABS_DIFF, (agreement, max_diff)


@pytest.mark.skipif(not ASTERISK.is_dir(), reason=f"no {ASTERISK}: apt-get install asterisk-core-sounds-en-wav")
def test_agrees_with_libhama_on_real_speech(model, libhama) -> None:
    clips = []
    for name in REAL_PROMPTS:
        audio, rate = sf.read(str(ASTERISK / name), dtype="float32")
        clips.append(soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32))
    agreement, max_diff = _compare(model, libhama, clips)
    assert agreement >= MIN_AGREEMENT and max_diff < MAX_ABS_DIFF, (agreement, max_diff)


def test_batch_of_different_lengths_matches_one_at_a_time(model) -> None:
    speech = _sample_speech()
    clips = [speech[:20817], speech[8000:73000], speech[30000:61111]]  # 1.3 s, 4.1 s, 1.9 s
    n = max(c.size for c in clips)
    batch = torch.zeros(len(clips), n)
    for i, clip in enumerate(clips):
        batch[i, : clip.size] = torch.from_numpy(clip)
    lengths = torch.tensor([c.size for c in clips])
    with torch.no_grad():
        log_probs, out_lengths = model(batch, lengths)
    assert out_lengths.tolist() == [c.size // 320 + 1 for c in clips]
    assert log_probs.shape == (3, n // 320 + 1, rec.CLASSES)
    for i, clip in enumerate(clips):
        alone = _ported(model, clip)
        batched = log_probs[i, : out_lengths[i]].numpy()
        np.testing.assert_allclose(batched, alone, atol=1e-4)
        assert (batched.argmax(1) == alone.argmax(1)).all()
        assert (log_probs[i, out_lengths[i] :] == 0).all()  # padding frames are zero


def test_float32_on_cpu_and_deterministic(model) -> None:
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.state_dict().values())
    wav = torch.from_numpy(_sample_speech()[:40000])[None]
    with torch.no_grad():
        first, _ = model(wav)
        second, _ = model(wav)
    assert first.dtype == torch.float32
    assert torch.equal(first, second)
    assert torch.allclose(first.exp().sum(-1), torch.ones(1, first.shape[1]), atol=1e-4)  # log-softmax


def test_clip_too_short_for_the_stft_is_refused(model) -> None:
    with pytest.raises(ValueError, match="200 samples"):
        model(torch.zeros(1, 150))


# --- the weights file -----------------------------------------------------------------------
def _copy_with(tmp_path: Path, patch: dict[int, bytes]) -> Path:
    data = bytearray(rec.hama_weights_path().read_bytes())
    for offset, value in patch.items():
        data[offset : offset + len(value)] = value
    path = tmp_path / rec.WEIGHTS_FILE
    path.write_bytes(bytes(data))
    return path


def test_weights_are_read_from_the_installed_hama() -> None:
    path = rec.hama_weights_path()
    assert path.is_file() and path.parts[-3:] == ("hama", "assets", "asr_waveform.hama")
    assert rec.hama_version() == rec.SUPPORTED_HAMA


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "asr_waveform.hama"
    with pytest.raises(rec.HamaFormatError) as error:
        rec.Recogniser.from_hama(missing)
    message = str(error.value)
    assert str(missing) in message and "missing" in message
    assert f"installed hama version {rec.hama_version()}" in message
    assert f"supported: hama {rec.SUPPORTED_HAMA}" in message


def test_hama_not_installed_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(rec.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(rec.HamaFormatError) as error:
        rec.Recogniser.from_hama()
    message = str(error.value)
    assert "hama package is not installed" in message and rec.WEIGHTS_FILE in message
    assert f"supported: hama {rec.SUPPORTED_HAMA}" in message


def test_other_format_version_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(rec, "hama_version", lambda: "9.1.0")  # as if a newer hama were installed
    path = _copy_with(tmp_path, {6: bytes([2])})  # the header's format version byte
    with pytest.raises(rec.HamaFormatError) as error:
        rec.Recogniser.from_hama(path)
    message = str(error.value)
    assert str(path) in message and "found format version 2" in message
    assert "installed hama version 9.1.0" in message
    assert f"supported: hama {rec.SUPPORTED_HAMA}, format version {rec.SUPPORTED_FORMAT}" in message


def test_damaged_header_or_table_is_a_clear_error(tmp_path) -> None:
    bad_magic = _copy_with(tmp_path, {0: b"NOTAPK"})
    with pytest.raises(rec.HamaFormatError, match="not a hama tensor file"):
        rec.Recogniser.from_hama(bad_magic)
    truncated = tmp_path / "truncated.hama"
    truncated.write_bytes(rec.hama_weights_path().read_bytes()[:100_000])
    with pytest.raises(rec.HamaFormatError, match="damaged tensor table"):
        rec.Recogniser.from_hama(truncated)


def test_same_container_with_other_tensors_is_a_clear_error(tmp_path) -> None:
    """A file in the supported container whose network is not this one (as a retrained hama
    with a different layout would ship) is refused, not half-loaded."""
    tensors = rec.read_hama(rec.hama_weights_path())
    tensors["acoustic_model.model.proj.weight"] = np.zeros((95, 144, 1), np.float16)  # another vocabulary
    path = tmp_path / "other.hama"
    _pack(path, tensors)
    with pytest.raises(rec.HamaFormatError, match="tensors do not match the recogniser"):
        rec.Recogniser.from_hama(path)


def _pack(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` as a format-1 recogniser file (the layout rec.read_hama parses)."""
    codes = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}
    table, blob = bytearray(), bytearray()
    for name, array in tensors.items():
        blob += bytes(-len(blob) % 16)
        raw = np.ascontiguousarray(array).tobytes()
        table += struct.pack("<H", len(name.encode())) + name.encode()
        table += struct.pack(f"<BB{array.ndim}I", codes[array.dtype], array.ndim, *array.shape)
        table += struct.pack("<QQ", len(blob), len(raw))
        blob += raw
    header = rec.MAGIC + struct.pack("<BBI", rec.SUPPORTED_FORMAT, rec.ASR_KIND, len(tensors))
    path.write_bytes(header + table + bytes(-(len(header) + len(table)) % 16) + blob)
