"""hama's phoneme recogniser: the PyTorch port and the ONNX Runtime recogniser the runtime runs,
against libhama (the reference, used only here), the shipped graph, and the weights-file checks."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features import hama_weights as hw
from ksdiff_runtime.features import recogniser as rec
from ksdiff_runtime.features.recogniser_onnx import GRAPH, OnnxRecogniser
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
MAX_ABS_DIFF = 0.1  # measured 0.005 on each set (torch and ONNX Runtime alike)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model() -> rec.Recogniser:
    return rec.Recogniser.from_hama()


@pytest.fixture(scope="module")
def onnx_model() -> OnnxRecogniser:
    return OnnxRecogniser()


@pytest.fixture(scope="module")
def libhama() -> rec.LibHamaReference:
    return rec.LibHamaReference()


def _ported(model: rec.Recogniser | OnnxRecogniser, wav: np.ndarray) -> np.ndarray:
    if isinstance(model, OnnxRecogniser):
        return model.log_probs(wav)
    with torch.no_grad():
        log_probs, lengths = model(torch.from_numpy(wav)[None])
    return log_probs[0, : int(lengths[0])].numpy()


def _compare(
    model: rec.Recogniser | OnnxRecogniser, libhama: rec.LibHamaReference, clips: list[np.ndarray]
) -> tuple[float, float]:
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


@pytest.mark.parametrize("which", ["torch", "onnxruntime"])
def test_agrees_with_libhama_on_sample_speech(which, model, onnx_model, libhama) -> None:
    model = onnx_model if which == "onnxruntime" else model
    speech = _sample_speech()
    # the bundled line at three levels (the recogniser depends on level) and a cut not on the 320 grid
    clips = [speech, 0.25 * speech, np.clip(2.5 * speech, -1, 1), speech[5000:52345]]
    agreement, max_diff = _compare(model, libhama, clips)
    assert agreement >= MIN_AGREEMENT and max_diff < MAX_ABS_DIFF, (agreement, max_diff)


@pytest.mark.parametrize("which", ["torch", "onnxruntime"])
def test_agrees_with_libhama_on_synthetic_speech(which, model, onnx_model, libhama) -> None:
    model = onnx_model if which == "onnxruntime" else model
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
@pytest.mark.parametrize("which", ["torch", "onnxruntime"])
def test_agrees_with_libhama_on_real_speech(which, model, onnx_model, libhama) -> None:
    model = onnx_model if which == "onnxruntime" else model
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


# --- the ONNX Runtime recogniser ------------------------------------------------------------
def test_shipped_graph_is_what_the_exporter_writes_now(tmp_path) -> None:
    """ksdiff_runtime/assets/recogniser.onnx is export_onnx's output (rerun it after changing the
    module: ksdiff-runtime export --recogniser), and it holds no weights."""
    import onnx

    fresh = tmp_path / "recogniser.onnx"
    rec.export_onnx(fresh)
    assert fresh.read_bytes() == GRAPH.read_bytes(), "stale graph: run ksdiff-runtime export --recogniser"
    graph = onnx.load(str(GRAPH), load_external_data=False).graph
    assert [i.name for i in graph.input] == list(rec.GRAPH_INPUTS)
    assert GRAPH.stat().st_size < 150_000  # parameter-free: ~80 KB of ops
    # every weight is an initializer with no data, to be supplied at load: none merged, none baked
    assert {w.name for w in graph.initializer} == set(rec.Recogniser().state_dict())
    for w in graph.initializer:
        assert w.data_location == onnx.TensorProto.EXTERNAL and not w.raw_data and not w.float_data
        assert {e.key: e.value for e in w.external_data} == {"location": rec.WEIGHTS_LOCATION}


def test_onnx_matches_the_torch_module_on_a_ragged_batch(model, onnx_model) -> None:
    speech = _sample_speech()
    clips = [speech[:20817], speech[8000:73000], speech[30000:61111]]  # 1.3 s, 4.1 s, 1.9 s
    batch = np.zeros((len(clips), max(c.size for c in clips)), np.float32)
    for i, clip in enumerate(clips):
        batch[i, : clip.size] = clip
    lengths = np.array([c.size for c in clips])
    log_probs, out_lengths = onnx_model(batch, lengths)
    with torch.no_grad():
        ref, ref_lengths = model(torch.from_numpy(batch), torch.from_numpy(lengths))
    assert out_lengths.tolist() == ref_lengths.tolist() == [c.size // 320 + 1 for c in clips]
    assert log_probs.shape == tuple(ref.shape) and log_probs.dtype == np.float32
    np.testing.assert_allclose(log_probs, ref.numpy(), atol=0.02)  # float16 rounding of the log-mel may differ
    for i, clip in enumerate(clips):
        alone = onnx_model.log_probs(clip)
        np.testing.assert_allclose(log_probs[i, : out_lengths[i]], alone, atol=1e-4)
        assert (log_probs[i, out_lengths[i] :] == 0).all()


def test_onnx_has_no_30_s_cap(onnx_model) -> None:
    """libhama returns at most 1500 frames (30 s); the port reads the whole clip."""
    speech = _sample_speech()
    speech = speech[: speech.size // 320 * 320]  # repeats on the frame grid
    long = np.tile(speech, 6)  # 41 s
    log_probs = onnx_model.log_probs(long)
    assert log_probs.shape == (long.size // 320 + 1, rec.CLASSES)
    # the last repeat's frames (from 34 s) are the same speech as the first's (up to the context around them)
    start = 5 * speech.size // 320 + 50
    assert (log_probs[start : start + 100].argmax(1) == log_probs[50:150].argmax(1)).mean() > 0.9


@pytest.mark.parametrize("n", [0, 1, 200, 201, 319, 320])
def test_onnx_short_clips_give_one_frame(onnx_model, n: int) -> None:
    log_probs = onnx_model.log_probs(np.zeros(n, np.float32))
    assert log_probs.shape == (n // 320 + 1, rec.CLASSES) and np.isfinite(log_probs).all()
    with pytest.raises(ValueError, match="201 samples"):
        onnx_model(np.zeros((1, 150), np.float32), np.array([150]))


# --- the weights file -----------------------------------------------------------------------
def _copy_with(tmp_path: Path, patch: dict[int, bytes]) -> Path:
    data = bytearray(hw.hama_weights_path().read_bytes())
    for offset, value in patch.items():
        data[offset : offset + len(value)] = value
    path = tmp_path / hw.WEIGHTS_FILE
    path.write_bytes(bytes(data))
    return path


def test_weights_are_read_from_the_installed_hama() -> None:
    path = hw.hama_weights_path()
    assert path.is_file() and path.parts[-3:] == ("hama", "assets", "asr_waveform.hama")
    assert hw.hama_version() == hw.SUPPORTED_HAMA


@pytest.mark.parametrize("load", [rec.Recogniser.from_hama, OnnxRecogniser])
def test_missing_weights_file_is_a_clear_error(load, tmp_path) -> None:
    missing = tmp_path / "asr_waveform.hama"
    with pytest.raises(hw.HamaFormatError) as error:
        load(missing)
    message = str(error.value)
    assert str(missing) in message and "missing" in message
    assert f"installed hama version {hw.hama_version()}" in message
    assert f"supported: hama {hw.SUPPORTED_HAMA}" in message


def test_hama_not_installed_is_a_clear_error(monkeypatch) -> None:
    def not_installed(name: str):
        raise hw.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(hw.importlib.metadata, "distribution", not_installed)
    for load in (rec.Recogniser.from_hama, OnnxRecogniser):
        with pytest.raises(hw.HamaFormatError) as error:
            load()
        message = str(error.value)
        assert "hama package is not installed" in message and hw.WEIGHTS_FILE in message
        assert f"supported: hama {hw.SUPPORTED_HAMA}" in message


@pytest.mark.parametrize("load", [rec.Recogniser.from_hama, OnnxRecogniser])
def test_other_format_version_is_a_clear_error(load, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(hw, "hama_version", lambda: "9.1.0")  # as if a newer hama were installed
    path = _copy_with(tmp_path, {6: bytes([2])})  # the header's format version byte
    with pytest.raises(hw.HamaFormatError) as error:
        load(path)
    message = str(error.value)
    assert str(path) in message and "found format version 2" in message
    assert "installed hama version 9.1.0" in message
    assert f"supported: hama {hw.SUPPORTED_HAMA}, format version {hw.SUPPORTED_FORMAT}" in message


@pytest.mark.parametrize("load", [rec.Recogniser.from_hama, OnnxRecogniser])
def test_damaged_header_or_table_is_a_clear_error(load, tmp_path) -> None:
    bad_magic = _copy_with(tmp_path, {0: b"NOTAPK"})
    with pytest.raises(hw.HamaFormatError, match="not a hama tensor file"):
        load(bad_magic)
    truncated = tmp_path / "truncated.hama"
    truncated.write_bytes(hw.hama_weights_path().read_bytes()[:100_000])
    with pytest.raises(hw.HamaFormatError, match="damaged tensor table"):
        load(truncated)


@pytest.mark.parametrize("load", [rec.Recogniser.from_hama, OnnxRecogniser])
def test_same_container_with_other_tensors_is_a_clear_error(load, tmp_path) -> None:
    """A file in the supported container whose network is not this one (as a retrained hama
    with a different layout would ship) is refused, not half-loaded."""
    tensors = hw.read_hama(hw.hama_weights_path())
    tensors["acoustic_model.model.proj.weight"] = np.zeros((95, 144, 1), np.float16)  # another vocabulary
    path = tmp_path / "other.hama"
    _pack(path, tensors)
    with pytest.raises(hw.HamaFormatError, match="tensors do not match the recogniser"):
        load(path)
    del tensors["acoustic_model.model.blocks.2.norm.bias"]  # a tensor missing
    _pack(path, tensors)
    with pytest.raises(hw.HamaFormatError, match="tensors do not match the recogniser"):
        load(path)


def _pack(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` as a format-1 recogniser file (the layout hw.read_hama parses)."""
    codes = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}
    table, blob = bytearray(), bytearray()
    for name, array in tensors.items():
        blob += bytes(-len(blob) % 16)
        raw = np.ascontiguousarray(array).tobytes()
        table += struct.pack("<H", len(name.encode())) + name.encode()
        table += struct.pack(f"<BB{array.ndim}I", codes[array.dtype], array.ndim, *array.shape)
        table += struct.pack("<QQ", len(blob), len(raw))
        blob += raw
    header = hw.MAGIC + struct.pack("<BBI", hw.SUPPORTED_FORMAT, hw.ASR_KIND, len(tensors))
    path.write_bytes(header + table + bytes(-(len(header) + len(table)) % 16) + blob)
