"""`ksdiff-runtime bake` end to end through the real CLI entry point, with a tiny random model:
file layouts (Live Link Face CSV, JSON), frame counts on the audio clock, determinism, and
clear errors (no tracebacks) for bad input."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from ksdiff_runtime import motion
from ksdiff_runtime.cli import main
from ksdiff_runtime.outputs import files

LIVE_LINK_TAIL = [
    "HeadYaw", "HeadPitch", "HeadRoll",
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
    "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
]


def bake(inp: Path, out: Path, checkpoint: Path, *extra: str) -> int:
    return main(["bake", str(inp), "-o", str(out), "--checkpoint", str(checkpoint), *extra])


def read_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(header, values [T, cols - 2] float, timecodes)."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    for r in body:
        assert len(r) == len(header)
        assert int(r[1]) == len(header) - 2
    values = np.array([[float(v) for v in r[2:]] for r in body], dtype=np.float64).reshape(len(body), len(header) - 2)
    return header, values, [r[0] for r in body]


def write_float_wav(path: Path, audio: np.ndarray, rate: int = motion.SAMPLE_RATE) -> Path:
    sf.write(str(path), audio.astype(np.float32), rate, subtype="FLOAT")
    return path


def assert_valid_csv(path: Path, frames: int) -> np.ndarray:
    header, values, _ = read_csv(path)
    assert len(header) == 2 + motion.NUM_BLENDSHAPES + len(LIVE_LINK_TAIL)
    assert values.shape == (frames, motion.NUM_BLENDSHAPES + len(LIVE_LINK_TAIL))
    assert np.all(np.isfinite(values))
    blend = values[:, : motion.NUM_BLENDSHAPES]
    assert np.all((blend >= 0.0) & (blend <= 1.0))
    return values


@pytest.fixture(scope="module")
def baked_csv(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, speech_16k: np.ndarray) -> Path:
    folder = tmp_path_factory.mktemp("bake_csv")
    wav = folder / "speech.wav"
    sf.write(str(wav), speech_16k, motion.SAMPLE_RATE, subtype="PCM_16")
    out = folder / "out.csv"
    assert bake(wav, out, tiny_checkpoint) == 0
    return out


# --- layouts -------------------------------------------------------------------------------------
def test_csv_header_is_live_link_face(baked_csv: Path) -> None:
    header, _, _ = read_csv(baked_csv)
    assert header[:2] == ["Timecode", "BlendShapeCount"]
    expected = [n[0].upper() + n[1:] for n in motion.BLENDSHAPES]
    assert header[2 : 2 + motion.NUM_BLENDSHAPES] == expected
    for name in ("EyeBlinkLeft", "JawOpen", "MouthClose", "MouthPressRight", "CheekPuff", "TongueOut"):
        assert name in header
    assert header[2 + motion.NUM_BLENDSHAPES :] == LIVE_LINK_TAIL


def test_csv_rows_follow_the_audio_clock(baked_csv: Path, speech_16k: np.ndarray) -> None:
    frames = motion.num_frames(len(speech_16k))
    assert frames == 45
    assert_valid_csv(baked_csv, frames)
    _, _, timecodes = read_csv(baked_csv)
    assert timecodes[0] == "00:00:00:00.000"
    assert timecodes[30] == "00:00:01:00.000"
    assert timecodes[44] == "00:00:01:14.000"


def test_csv_at_60_fps_has_twice_the_rows(tmp_path: Path, speech_wav: Path, speech_16k: np.ndarray,
                                         tiny_checkpoint: Path) -> None:
    out = tmp_path / "out60.csv"
    assert bake(speech_wav, out, tiny_checkpoint, "--fps", "60") == 0
    frames30 = motion.num_frames(len(speech_16k))
    values = assert_valid_csv(out, 2 * frames30)
    assert values.shape[0] == 2 * frames30
    _, _, timecodes = read_csv(out)
    assert timecodes[59] == "00:00:00:59.000" and timecodes[60] == "00:00:01:00.000"


def test_json_names_and_audio_times(tmp_path: Path, speech_wav: Path, speech_16k: np.ndarray,
                                    tiny_checkpoint: Path) -> None:
    out = tmp_path / "out.json"
    assert bake(speech_wav, out, tiny_checkpoint, "--fps", "25") == 0
    doc = json.loads(out.read_text())
    assert doc["blendshape_names"] == list(motion.BLENDSHAPES)
    assert doc["head_rotation_names"] == list(motion.HEAD_ROTATION)
    assert doc["gaze_names"] == list(motion.GAZE)
    assert doc["fps"] == 25
    frames = doc["frames"]
    assert len(frames) == round(len(speech_16k) / motion.SAMPLE_RATE * 25)
    t = np.array([f["t_audio"] for f in frames])
    assert t[0] == 0.0
    np.testing.assert_allclose(np.diff(t), 1 / 25, atol=2e-6)
    blend = np.array([f["blendshapes"] for f in frames])
    assert blend.shape == (len(frames), motion.NUM_BLENDSHAPES)
    assert np.all((blend >= 0) & (blend <= 1))
    assert np.all(np.isfinite([f["head"] for f in frames]))
    assert all(len(f["head"]) == 3 and len(f["gaze"]) == 4 for f in frames)


def test_same_seed_same_bytes_other_seed_other_animation(tmp_path: Path, speech_wav: Path,
                                                         tiny_checkpoint: Path) -> None:
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    assert bake(speech_wav, a, tiny_checkpoint, "--seed", "3") == 0
    assert bake(speech_wav, b, tiny_checkpoint, "--seed", "3") == 0
    assert bake(speech_wav, c, tiny_checkpoint, "--seed", "4") == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_without_a_seed_a_line_bakes_with_its_audios_own(tmp_path: Path, speech_wav: Path,
                                                          tiny_checkpoint: Path) -> None:
    """The same file bakes the same bytes, and each line gets its own seed: NPC lines baked without one do not
    all sway and blink the same way (the seed 0 every line got before)."""
    from ksdiff_runtime.engine.offline import audio_seed
    from ksdiff_runtime.inputs.guards import load_audio

    a, b, own, zero = (tmp_path / f"{n}.csv" for n in ("a", "b", "own", "zero"))
    assert bake(speech_wav, a, tiny_checkpoint) == 0 and bake(speech_wav, b, tiny_checkpoint) == 0
    seed = audio_seed(load_audio(speech_wav)[0])
    assert bake(speech_wav, own, tiny_checkpoint, "--seed", str(seed)) == 0
    assert bake(speech_wav, zero, tiny_checkpoint, "--seed", "0") == 0
    assert a.read_bytes() == b.read_bytes() == own.read_bytes() != zero.read_bytes()
    other = tmp_path / "other.wav"
    audio, rate = sf.read(speech_wav)
    sf.write(other, audio[: len(audio) - rate // 10], rate)  # another line: 100 ms shorter
    assert audio_seed(load_audio(other)[0]) != seed


def test_the_python_api_bakes_a_line_with_the_seed_the_cli_gives_it(speech_wav: Path, tiny_checkpoint: Path) -> None:
    """One default seed: ``bake_animations`` without seeds uses each clip's audio as given, as `bake` does, not
    the padded audio it animates (which differs at every output rate)."""
    from ksdiff_runtime.backends import load_backend
    from ksdiff_runtime.engine.offline import audio_seed, bake_animations, clip_inputs
    from ksdiff_runtime.inputs.guards import load_audio

    audio = load_audio(speech_wav)[0][:-7]  # not a whole number of frames: padded to one
    backend = load_backend("torch-cpu", tiny_checkpoint, threads=1)
    for fps in (30, 60):
        clip = clip_inputs(backend, audio, fps=fps)
        assert clip.audio is not None and clip.audio.size > audio.size  # padded
        assert clip.seed == audio_seed(audio)
    default = bake_animations(backend, [clip], steps=1)[0]
    own = bake_animations(backend, [clip], steps=1, seeds=[audio_seed(audio)])[0]
    zero = bake_animations(backend, [clip], steps=1, seeds=[0])[0]
    np.testing.assert_array_equal(default.blendshapes, own.blendshapes)
    assert not np.array_equal(default.blendshapes, zero.blendshapes)


def test_a_mood_is_baked_in_as_a_stream_holds_it(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path) -> None:
    plain, sad = tmp_path / "plain.json", tmp_path / "sad.json"
    assert bake(speech_wav, plain, tiny_checkpoint, "--seed", "3") == 0
    assert bake(speech_wav, sad, tiny_checkpoint, "--seed", "3", "--mood", "sad", "--mood-intensity", "0.5") == 0

    def curves(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        frames = json.loads(path.read_text())["frames"]
        return tuple(np.array([f[k] for f in frames]) for k in ("blendshapes", "head", "gaze"))  # type: ignore

    (b0, h0, g0), (b, h, g) = curves(plain), curves(sad)
    mood = motion.MOOD_EXPRESSIONS["sad"]
    brow = motion.BLENDSHAPE_INDEX["browInnerUp"]
    expected = np.clip((1 + 0.5 * (mood.gain["brows"] - 1)) * b0[:, brow] + 0.5 * mood.pose["browInnerUp"], 0, 1)
    np.testing.assert_allclose(b[:, brow], expected, atol=2e-6)
    assert np.all(motion.lip_aperture(b) <= motion.lip_aperture(b0) + 1e-6)
    assert np.all(h[:, 0] > h0[:, 0] * (1 + 0.5 * (mood.gain["head"] - 1)) + 0.5 * mood.head_pitch - 1e-5)
    assert np.all(g[:, 1] >= g0[:, 1] - 1e-6) and g[:, 1].mean() > g0[:, 1].mean()  # the eyes look down (+)


def test_a_mood_reaches_the_network_at_its_guidance(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path) -> None:
    """With mood styles in the checkpoint a mood also changes how the network speaks (the mood guidance above
    0); at guidance 0 the bake is the mood's expression on the model's neutral motion."""
    import shutil

    from ksdiff_runtime.model.checkpoint import read_checkpoint, write_mood_styles
    from ksdiff_runtime.model.config import ModelConfig

    moody = tmp_path / "moody.pt"
    shutil.copy(tiny_checkpoint, moody)
    dim = ModelConfig.from_dict(read_checkpoint(moody)["config"]).style_dim
    rng = np.random.default_rng(1)
    write_mood_styles(moody, {m: rng.standard_normal(dim).astype(np.float32) for m in motion.MOODS})
    out = {g: tmp_path / f"sad-{g}.json" for g in ("0", "1", "2")}
    for g, path in out.items():
        assert bake(speech_wav, path, moody, "--seed", "3", "--mood", "sad", "--mood-guidance", g) == 0
    assert bake(speech_wav, tmp_path / "plain.json", tiny_checkpoint, "--seed", "3", "--mood", "sad") == 0

    def blendshapes(path: Path) -> np.ndarray:
        return np.array([f["blendshapes"] for f in json.loads(path.read_text())["frames"]])

    b0, b1, b2 = (blendshapes(out[g]) for g in ("0", "1", "2"))
    np.testing.assert_array_equal(b0, blendshapes(tmp_path / "plain.json"))  # guidance 0: the network untouched
    assert np.abs(b1 - b0).max() > 0.01 and np.abs(b2 - b1).max() > 0.01


def test_a_bad_mood_guidance_is_a_clear_error(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(SystemExit, match=r"mood guidance must be a number from 0 to 4; got 9\.0"):
        bake(speech_wav, tmp_path / "x.csv", tiny_checkpoint, "--mood", "sad", "--mood-guidance", "9")
    assert not (tmp_path / "x.csv").exists()


def test_a_style_is_baked_in_and_a_baked_file_is_a_style(tmp_path: Path, speech_16k: np.ndarray,
                                                         tiny_checkpoint: Path) -> None:
    """Styles scale the same baked motion by their gains; a bake's own output is a take to follow."""
    from ksdiff_runtime.engine.style import MODEL_PROFILES, StyleProfile, read_reference, style_for

    speech_wav = tmp_path / "speech.wav"  # 3 s: long enough to be a take itself
    sf.write(speech_wav, np.tile(speech_16k, 2), motion.SAMPLE_RATE, subtype="FLOAT")
    out = {name: tmp_path / f"{name}.json" for name in ("still", "animated", "none")}
    for name, path in out.items():
        assert bake(speech_wav, path, tiny_checkpoint, "--seed", "3", "--style", name) == 0

    def curves(path: Path) -> tuple[np.ndarray, np.ndarray]:
        frames = json.loads(path.read_text())["frames"]
        return np.array([f["blendshapes"] for f in frames]), np.array([f["head"] for f in frames])

    baked = MODEL_PROFILES["bake"]  # a bake's gains are against the model's baked motion
    (b0, h0), (bs, hs), (ba, ha) = curves(out["none"]), curves(out["still"]), curves(out["animated"])
    p0, ps, pa = StyleProfile.of(b0, h0), StyleProfile.of(bs, hs), StyleProfile.of(ba, ha)
    g_still, g_anim = style_for("still").gains(baked), style_for("animated").gains(baked)
    # an untrained model's head drifts slowly, which its level follows: its motion scales less than the gain
    assert g_still["head"] < 1 < g_anim["head"] and ps.head < p0.head < pa.head
    assert pa.articulation == pytest.approx(min(1.0, g_anim["jaw"] * p0.articulation), rel=0.05)
    # the animated bake is itself a take (a file): following it, another bake moves as much more as it says
    again = tmp_path / "again.csv"
    assert bake(speech_wav, again, tiny_checkpoint, "--seed", "3", "--style", str(out["animated"])) == 0
    g_again = style_for(str(out["animated"]), allow_files=True).gains(baked)
    assert g_again["head"] > 1 and StyleProfile.of(*read_reference(again)).head > p0.head


def test_a_bad_style_is_a_clear_error(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(SystemExit, match="unknown style 'bouncy'; built-in styles: none, still, calm, natural, "
                                         "lively, animated, or a reference take"):
        bake(speech_wav, tmp_path / "x.csv", tiny_checkpoint, "--style", "bouncy")
    with pytest.raises(SystemExit, match=r"style reference .*missing\.csv does not exist"):
        bake(speech_wav, tmp_path / "x.csv", tiny_checkpoint, "--style", str(tmp_path / "missing.csv"))
    assert not (tmp_path / "x.csv").exists()


def test_a_bad_mood_is_a_clear_error(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bake(speech_wav, tmp_path / "x.csv", tiny_checkpoint, "--mood", "bored")
    assert "invalid choice: 'bored'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"mood_intensity must be in \[0, 1\], got 1.5"):
        bake(speech_wav, tmp_path / "x.csv", tiny_checkpoint, "--mood", "happy", "--mood-intensity", "1.5")
    assert not (tmp_path / "x.csv").exists()


# --- bad input: clear errors ---------------------------------------------------------------------
def test_missing_input_is_a_clear_error(tmp_path: Path, tiny_checkpoint: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.wav"
    out = tmp_path / "out.csv"
    assert bake(missing, out, tiny_checkpoint) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "not found" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_corrupt_wav_is_a_clear_error(tmp_path: Path, tiny_checkpoint: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    out = tmp_path / "out.csv"
    assert bake(bad, out, tiny_checkpoint) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "cannot read" in err
    assert not out.exists()


def test_unsupported_input_extension_is_a_clear_error(tmp_path: Path, tiny_checkpoint: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "speech.xyz"
    bad.write_text("this is not audio\n")
    assert bake(bad, tmp_path / "out.csv", tiny_checkpoint) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err and "unsupported audio format '.xyz'" in err


def test_unsupported_output_extension_is_a_clear_error(tmp_path: Path, speech_wav: Path,
                                                       tiny_checkpoint: Path) -> None:
    out = tmp_path / "out.txt"
    with pytest.raises(SystemExit) as exc:
        bake(speech_wav, out, tiny_checkpoint)
    assert str(out) in str(exc.value.code) and ".csv or .json" in str(exc.value.code)
    assert not out.exists()


def test_bad_checkpoint_is_a_clear_error(tmp_path: Path, speech_wav: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(b"not a torch file")
    assert bake(speech_wav, tmp_path / "out.csv", ckpt) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(ckpt) in err and "corrupt" in err
    assert bake(speech_wav, tmp_path / "out.csv", tmp_path / "missing.pt") == 1
    assert str(tmp_path / "missing.pt") in capsys.readouterr().err


# --- awkward but valid audio: repaired, never fatal ------------------------------------------------
def test_nan_and_inf_audio_bakes_to_finite_output(tmp_path: Path, speech_16k: np.ndarray, tiny_checkpoint: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    audio = speech_16k.copy()
    audio[100:400] = np.nan
    audio[5000:5100] = np.inf
    audio[9000:9010] = -np.inf
    wav = write_float_wav(tmp_path / "nan.wav", audio)
    assert np.isnan(sf.read(str(wav))[0]).sum() == 300  # the file really holds NaN
    out = tmp_path / "out.csv"
    with caplog.at_level(logging.WARNING):
        assert bake(wav, out, tiny_checkpoint) == 0
    assert "410 non-finite" in caplog.text
    assert_valid_csv(out, motion.num_frames(len(audio)))


def test_fully_clipped_audio_bakes(tmp_path: Path, speech_16k: np.ndarray, tiny_checkpoint: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    audio = np.where(speech_16k >= 0, 3.0, -3.0).astype(np.float32)  # every sample far past full scale
    wav = write_float_wav(tmp_path / "clipped.wav", audio)
    out = tmp_path / "out.json"
    with caplog.at_level(logging.WARNING):
        assert bake(wav, out, tiny_checkpoint) == 0
    assert f"{len(audio)} clipped" in caplog.text
    frames = json.loads(out.read_text())["frames"]
    assert len(frames) == motion.num_frames(len(audio))
    assert np.all(np.isfinite([f["blendshapes"] + f["head"] + f["gaze"] for f in frames]))


def test_silence_bakes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    wav = tmp_path / "silence.wav"
    sf.write(str(wav), np.zeros(motion.SAMPLE_RATE, dtype=np.int16), motion.SAMPLE_RATE, subtype="PCM_16")
    out = tmp_path / "out.csv"
    assert bake(wav, out, tiny_checkpoint) == 0
    assert_valid_csv(out, motion.FPS)


@pytest.mark.parametrize(("n_samples", "rows"), [(1, 1), (100, 1), (motion.SAMPLE_RATE // motion.FPS - 1, 1)])
@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_audio_shorter_than_a_frame_gives_the_frame_of_its_partial_period(tmp_path: Path, tiny_checkpoint: Path,
                                                                          n_samples: int, rows: int,
                                                                          suffix: str) -> None:
    """One frame per started frame period (as a stream yields, protocol/SPEC.md 4.2)."""
    wav = tmp_path / "short.wav"
    sf.write(str(wav), np.full(n_samples, 1000, dtype=np.int16), motion.SAMPLE_RATE, subtype="PCM_16")
    out = tmp_path / f"out{suffix}"
    assert bake(wav, out, tiny_checkpoint) == 0
    if suffix == ".csv":
        header, values, _ = read_csv(out)
        assert header[:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"] and len(values) == rows
    else:
        doc = json.loads(out.read_text())
        assert len(doc["frames"]) == rows and doc["blendshape_names"] == list(motion.BLENDSHAPES)


def test_one_frame_and_a_sample_of_audio_gives_two_rows(tmp_path: Path, tiny_checkpoint: Path,
                                                        speech_16k: np.ndarray) -> None:
    n = motion.SAMPLE_RATE // motion.FPS + 1
    wav = tmp_path / "one.wav"
    sf.write(str(wav), speech_16k[:n], motion.SAMPLE_RATE, subtype="PCM_16")
    out = tmp_path / "out.csv"
    assert bake(wav, out, tiny_checkpoint) == 0
    assert_valid_csv(out, 2)


def test_stereo_44k1_gives_the_frame_count_of_its_duration(tmp_path: Path, speech_16k: np.ndarray,
                                                           tiny_checkpoint: Path) -> None:
    mono = resample_poly(speech_16k.astype(np.float64), 441, 160)
    stereo = np.stack([0.8 * mono, 0.5 * mono[::-1]], axis=1)
    wav = tmp_path / "stereo.wav"
    sf.write(str(wav), stereo, 44_100, subtype="PCM_16")
    assert sf.info(str(wav)).channels == 2
    out = tmp_path / "out.csv"
    assert bake(wav, out, tiny_checkpoint) == 0
    expected = math.ceil(len(mono) * motion.FPS / 44_100)
    assert expected == 45
    assert_valid_csv(out, expected)


@pytest.mark.parametrize(("samples", "rate", "frames"),
                         [(44_101, 44_100, 30), (6_401, 192_000, 1), (16_001, 16_000, 31)])
def test_a_bake_has_the_frame_count_of_a_stream_on_its_16k_clock(tmp_path: Path, tiny_checkpoint: Path, samples: int,
                                                                 rate: int, frames: int) -> None:
    """SPEC 4.2: S16 = floor(S * 16000 / R) samples, then a frame per started frame period, as a line stream of the
    same audio gives (tests/test_serve.py, less its ease to rest). 44,101 samples at 44.1 kHz gave 31 frames."""
    wav = tmp_path / "odd.wav"
    sf.write(str(wav), (0.1 * np.sin(np.arange(samples) / 20)).astype(np.float32), rate, subtype="FLOAT")
    out = tmp_path / "out.csv"
    assert bake(wav, out, tiny_checkpoint) == 0
    assert frames == math.ceil((samples * motion.SAMPLE_RATE // rate) * motion.FPS / motion.SAMPLE_RATE)
    assert_valid_csv(out, frames)


def test_audio_shorter_than_a_16k_sample_is_no_audio(tmp_path: Path, tiny_checkpoint: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "one.wav"
    sf.write(str(wav), np.full(1, 0.5, np.float32), 44_100, subtype="FLOAT")
    out = tmp_path / "out.csv"
    assert bake(wav, out, tiny_checkpoint) == 1
    assert f"error: no audio in {wav}: the file holds 1 samples at 44100 Hz, under one at 16 kHz" in \
        capsys.readouterr().err
    assert not out.exists()


def test_a_file_of_40_channels_is_downmixed_and_baked(tmp_path: Path, speech_16k: np.ndarray,
                                                      tiny_checkpoint: Path) -> None:
    """A file says how its samples are laid out: any count of channels is mixed down (an array from a caller with
    over 32 columns is refused as channels-first; that check was applied to files too)."""
    wav = tmp_path / "ch40.wav"
    sf.write(str(wav), np.repeat(speech_16k[:, None], 40, axis=1) * 0.5, motion.SAMPLE_RATE, subtype="PCM_16")
    assert sf.info(str(wav)).channels == 40
    out = tmp_path / "out.csv"
    assert bake(wav, out, tiny_checkpoint) == 0
    assert_valid_csv(out, math.ceil(len(speech_16k) * motion.FPS / motion.SAMPLE_RATE))


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_file_that_cannot_be_written_whole_leaves_the_one_there(tmp_path: Path, speech_wav: Path,
                                                                 tiny_checkpoint: Path, suffix: str) -> None:
    """A full disk mid-write (here the process's file size limit, RLIMIT_FSIZE, which fails a write as a full disk
    does): the bake says so, and the good file baked before is still there whole; no partial file is left."""
    (tmp_path / "baked").mkdir()
    out = tmp_path / "baked" / f"line{suffix}"
    out.write_text("the good bake of before\n")
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); from ksdiff_runtime.cli import main; "
              f"sys.exit(main(['bake', {str(speech_wav)!r}, '-o', {str(out)!r}, '--checkpoint', "
              f"{str(tiny_checkpoint)!r}]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"error: cannot write the animation of {speech_wav} to {out}: File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert out.read_text() == "the good bake of before\n" and list(out.parent.iterdir()) == [out]


# --- clips over 30 s ------------------------------------------------------------------------
LONG_S = 70
SPEECH_AT_S = 63  # the bundled line (6.8 s), placed here in quiet noise


def _long_clip() -> tuple[np.ndarray, np.ndarray]:
    """70 s of quiet noise with the bundled sample line at 63 s; and the line alone."""
    from ksdiff_runtime.assets import SAMPLE_SPEECH

    line, rate = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    assert rate == motion.SAMPLE_RATE
    clip = 0.001 * np.random.default_rng(0).standard_normal(LONG_S * rate).astype(np.float32)
    start = SPEECH_AT_S * rate
    clip[start : start + line.size] += line
    return clip, line


def test_long_clip_features_stay_aligned_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bake recognises a clip in pieces; libhama cut each piece at 30 s (1500 frames), so a 70 s
    clip on 2 workers lost the end of its second piece (its frames edge-held). Now every piece is
    read whole: the line at 63 s gets the features a one-pass recognition of its region gives."""
    from ksdiff_runtime.features import frontend
    from ksdiff_runtime.features.frontend import HAMA_BLANK, HAMA_CLASSES, PosteriorgramFrontEnd

    # pieces over 30 s, as 2 workers made of 70 s before pieces were capped at OFFLINE_MAX_PIECE_S
    monkeypatch.setattr(frontend, "OFFLINE_MAX_PIECE_S", 60)
    clip, line = _long_clip()
    fe = PosteriorgramFrontEnd()
    f0, n = SPEECH_AT_S * motion.FPS, motion.num_frames(line.size)
    fe.offline_workers = 1
    lead = 3 * motion.FPS  # the region from 3 s before the line, in one pass
    ref = fe.offline(clip[(SPEECH_AT_S - 3) * motion.SAMPLE_RATE :])[lead : lead + n, :HAMA_CLASSES]

    def line_features() -> np.ndarray:
        fe.offline_workers = 2  # pieces of 35 s: each over libhama's 30 s
        feats = fe.offline(clip)
        assert feats.shape == (LONG_S * motion.FPS, fe.dim)
        return feats[f0 : f0 + n, :HAMA_CLASSES]

    got = line_features()
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.85  # measured 0.90
    assert np.abs(got - ref).mean() < 0.03  # measured 0.018
    # the same check catches libhama's cut (at most 1500 frames per piece)
    whole = fe.log_probs
    monkeypatch.setattr(fe, "log_probs", lambda segment: whole(segment)[:1500])
    cut = line_features()
    assert np.abs(cut - ref).mean() > 2 * np.abs(got - ref).mean()  # measured 0.057
    # the line's phoneme (non-blank) frames, 0.21 of them: the pieces keep about half (measured 0.55; the 35 s of
    # noise the piece attends to moves some to blank), the cut none (its frames are the held last one: blank)
    spoken = ref.argmax(1) != HAMA_BLANK
    assert (got.argmax(1) != HAMA_BLANK)[spoken].mean() > 0.4 and (cut.argmax(1) != HAMA_BLANK)[spoken].mean() < 0.1


@pytest.mark.slow
def test_a_70_s_clip_bakes_every_frame_with_the_mouth_on_the_speech(tmp_path: Path) -> None:
    clip, line = _long_clip()
    wav = write_float_wav(tmp_path / "long.wav", clip)
    out = tmp_path / "long.json"
    assert main(["bake", str(wav), "-o", str(out)]) == 0  # the bundled model
    frames = json.loads(out.read_text())["frames"]
    assert len(frames) == LONG_S * motion.FPS
    jaw = np.array([f["blendshapes"][motion.BLENDSHAPES.index("jawOpen")] for f in frames])
    f0, f1 = SPEECH_AT_S * motion.FPS, SPEECH_AT_S * motion.FPS + motion.num_frames(line.size)
    assert jaw[f0:f1].max() > 0.1 and jaw[f0:f1].mean() > 3 * jaw[: f0 - motion.FPS].mean()
    # the mouth opens with the line: its jaw curve lines up with the line baked alone (lag 0 +- 1 frame)
    alone_wav = write_float_wav(tmp_path / "line.wav", line)
    assert main(["bake", str(alone_wav), "-o", str(tmp_path / "line.json")]) == 0
    alone = np.array([f["blendshapes"][motion.BLENDSHAPES.index("jawOpen")]
                      for f in json.loads((tmp_path / "line.json").read_text())["frames"]])
    seg = jaw[f0 : f0 + alone.size]
    lags = range(-10, 11)
    corr = [np.corrcoef(np.roll(seg, lag)[15:-15], alone[15:-15])[0, 1] for lag in lags]
    assert abs(list(lags)[int(np.argmax(corr))]) <= 1 and max(corr) > 0.8, corr


def test_a_batch_of_clips_bakes_in_parts_on_the_cores_each_clip_as_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled model on ONNX Runtime with one thread a call, as `bake` loads it: several clips are cut into
    one part per core run at once, and each clip's frames are the ones it bakes alone."""
    from ksdiff_runtime import parallel
    from ksdiff_runtime.assets import SAMPLE_SPEECH
    from ksdiff_runtime.backends import load_backend
    from ksdiff_runtime.engine import offline
    from ksdiff_runtime.inputs.guards import load_audio

    backend = load_backend("onnxruntime-cpu", fallback=True, threads=1)
    assert parallel.single_thread_cpu(backend)
    audio, _ = load_audio(SAMPLE_SPEECH)
    sr = motion.SAMPLE_RATE
    clips = [offline.clip_inputs(backend, audio[round(a * sr) : round(b * sr)]) for a, b in ((0.0, 2.2), (1.0, 3.0),
                                                                                              (2.5, 3.3))]
    monkeypatch.setattr(offline.os, "cpu_count", lambda: 2)
    calls = []

    def spy(fn, parts):
        calls.append(list(parts))
        return parallel.run_parts(fn, parts)

    monkeypatch.setattr(offline, "run_parts", spy)
    seeds = [5, 6, 7]
    together = offline.animate(backend, clips, steps=2, seeds=seeds)
    assert calls == [[(0, 1), (1, 3)]]
    for clip, seed, anim in zip(clips, seeds, together, strict=True):
        alone = offline.animate(backend, [clip], steps=2, seeds=[seed])[0]
        assert anim.blendshapes.shape == alone.blendshapes.shape == (len(clip.feats), motion.NUM_BLENDSHAPES)
        np.testing.assert_allclose(anim.blendshapes, alone.blendshapes, atol=1e-5)
        np.testing.assert_allclose(anim.head, alone.head, atol=1e-5)


# --- many lines in one process ---------------------------------------------------------------------
def bake_many(inputs: list[Path], out: Path, checkpoint: Path, *extra: str) -> int:
    return main(["bake", *map(str, inputs), "-o", str(out), "--checkpoint", str(checkpoint), *extra])


def json_values(path: Path) -> np.ndarray:
    frames = json.loads(path.read_text())["frames"]
    return np.array([f["blendshapes"] + f["head"] + f["gaze"] for f in frames])


def test_many_lines_bake_to_a_folder_each_as_it_bakes_alone(tmp_path: Path, speech_16k: np.ndarray,
                                                             tiny_checkpoint: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A game's lines in one process (batched, on every core): a file per line in the folder, each the frames
    the line bakes to alone, and a line's transcript read from the .txt beside it."""
    sr = motion.SAMPLE_RATE
    folder = tmp_path / "lines"
    folder.mkdir()
    lines = []
    for name, (a, b) in {"hello": (0.0, 1.5), "bye": (0.3, 1.1), "what": (0.6, 1.4)}.items():
        lines.append(folder / f"{name}.wav")
        sf.write(str(lines[-1]), speech_16k[round(a * sr) : round(b * sr)], sr, subtype="PCM_16")
    (folder / "what.txt").write_text("What a day!\n")
    out = tmp_path / "baked"
    assert bake_many(lines, out, tiny_checkpoint, "--format", "json") == 0
    assert sorted(p.name for p in out.iterdir()) == ["bye.json", "hello.json", "what.json"]
    said = [line for line in capsys.readouterr().out.splitlines() if "with the transcript in" in line]
    assert len(said) == 1 and str(folder / "what.txt") in said[0]
    for line in lines:
        alone = tmp_path / f"{line.stem}-alone.json"
        text = ("--text", "What a day!") if line.stem == "what" else ()
        assert bake(line, alone, tiny_checkpoint, *text) == 0
        np.testing.assert_allclose(json_values(out / f"{line.stem}.json"), json_values(alone), atol=2e-5)
    # the transcript mattered: without it the line bakes otherwise
    (folder / "what.txt").unlink()
    assert bake(lines[2], tmp_path / "no-text.json", tiny_checkpoint) == 0
    assert np.abs(json_values(tmp_path / "no-text.json") - json_values(out / "what.json")).max() > 1e-3


def test_a_bad_line_is_reported_and_the_others_are_baked(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "gone.wav"
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    garbled = tmp_path / "garbled.wav"  # good audio, a transcript that is not text
    garbled.write_bytes(speech_wav.read_bytes())
    garbled.with_suffix(".txt").write_bytes(b"\xff\xfe\x00bad")
    out = tmp_path / "baked"
    assert bake_many([missing, speech_wav, corrupt, garbled], out, tiny_checkpoint) == 1
    captured = capsys.readouterr()
    assert str(missing) in captured.err and "not found" in captured.err
    assert str(corrupt) in captured.err and "cannot read" in captured.err and "Traceback" not in captured.err
    assert str(garbled.with_suffix(".txt")) in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["speech.csv"]
    assert "baked 1 of 4 lines" in captured.out


@pytest.mark.parametrize(("output", "extra", "message"), [
    ("baked", (), "would both be baked to"),
    ("baked.csv", (), "need a folder to write to"),
    ("baked", ("--text", "hi"), "--text is one line's transcript"),
    ("baked", ("--plot", "p.png"), "--plot draws one line"),
])
def test_many_lines_are_checked_before_any_is_baked(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path,
                                                    output: str, extra: tuple[str, ...], message: str) -> None:
    other = tmp_path / ("again" if message.startswith("would") else "other") / "speech.wav"
    other.parent.mkdir()
    other.write_bytes(speech_wav.read_bytes())
    if not message.startswith("would"):
        other = other.rename(other.with_name("other.wav"))
    with pytest.raises(SystemExit, match=message):
        bake_many([speech_wav, other], tmp_path / output, tiny_checkpoint, *extra)
    assert not (tmp_path / output).exists()


def test_a_file_without_audio_is_named_and_the_other_lines_are_baked(tmp_path: Path, speech_wav: Path,
                                                                    tiny_checkpoint: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A WAV with a header and no samples exited 0 with a CSV of no rows; it is said as a file that cannot be
    read: alone, before the model loads, nothing written, exit status 1; among many, named and the others baked."""
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.int16), motion.SAMPLE_RATE, subtype="PCM_16")
    assert sf.info(str(empty)).frames == 0 and empty.stat().st_size == 44  # the header alone
    out = tmp_path / "baked"
    assert bake_many([empty, speech_wav], out, tiny_checkpoint) == 1
    captured = capsys.readouterr()
    assert f"error: no audio in {empty}: the file holds 0 samples" in captured.err
    assert "Traceback" not in captured.err and "baked 1 of 2 lines" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["speech.csv"]
    no_model(monkeypatch)
    for suffix in (".csv", ".json"):
        assert bake(empty, tmp_path / f"alone{suffix}", tiny_checkpoint) == 1
        assert capsys.readouterr().err == f"error: no audio in {empty}: the file holds 0 samples\n"
        assert not (tmp_path / f"alone{suffix}").exists()


def test_outputs_differing_only_in_letter_case_are_refused_before_any_is_baked(tmp_path: Path, speech_wav: Path,
                                                                              tiny_checkpoint: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """a.wav and A.wav baked to a.csv and A.csv: one file on Windows and macOS disks, where the second overwrote the
    first. Refused before the model loads, naming both."""
    first, second = tmp_path / "one" / "a.wav", tmp_path / "two" / "A.WAV"  # two folders: any disk holds both
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(speech_wav.read_bytes())
    no_model(monkeypatch)
    out = tmp_path / "baked"
    message = (f"error: {first} and {second} would be baked to {out / 'a.json'} and {out / 'A.json'}, one file on a "
               "disk that ignores letter case (Windows, macOS): rename one of them")
    with pytest.raises(SystemExit, match=re.escape(message)):
        bake_many([first, second], out, tiny_checkpoint, "--format", "json")
    assert not out.exists()


def test_a_transcript_longer_than_the_model_reads_is_said_once_per_line(tmp_path: Path, speech_16k: np.ndarray,
                                                                       tiny_checkpoint: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The model reads a transcript's first MAX_TOKENS (96) phoneme tokens; the rest was dropped without a word.
    Now each such line gets one warning: how many of its words are read. G2P still runs once a word."""
    import collections

    from ksdiff_runtime.features import transcript

    models = transcript._models()
    assert models is not None, "hama's G2P is needed here"
    g2p, vocab = models
    # phonemes a word: what 4, a 1, day 2, well 3; a word boundary token between words. "What a day!" 20 times (60
    # words): 29 words are 9 * (4 + 1 + 2) + 4 + 1 = 68 phonemes and 28 boundaries, 96 tokens exactly. With "Well,"
    # first, 28 words take 3 + 9 * 7 = 66 + 27 = 93 tokens and the 29th, "what" (4 + 1), is read in part.
    assert [transcript.phoneme_tokens(w).size for w in ("what", "a", "day", "well")] == [4, 1, 2, 3]
    long_text = "What a day! " * 20
    calls: collections.Counter[str] = collections.Counter()

    def counted(word: str):
        calls[word] += 1
        return g2p(word)

    transcript._word_tokens.cache_clear()  # G2P counted from nothing
    monkeypatch.setattr(transcript, "_models", lambda: (counted, vocab))
    folder = tmp_path / "lines"
    folder.mkdir()
    texts = {"long": long_text, "fits": " ".join(long_text.split()[:29]), "well": "Well, " + long_text,
             "short": "What a day!", "none": None}
    for name, text in texts.items():
        sf.write(str(folder / f"{name}.wav"), speech_16k, motion.SAMPLE_RATE, subtype="PCM_16")
        if text is not None:
            (folder / f"{name}.txt").write_text(text)
    with caplog.at_level(logging.WARNING):
        assert bake_many(sorted(folder.glob("*.wav")), tmp_path / "baked", tiny_checkpoint) == 0
        assert bake(folder / "none.wav", tmp_path / "alone.csv", tiny_checkpoint, "--text", long_text) == 0
    said = sorted(r.getMessage() for r in caplog.records if "transcript" in r.getMessage())
    used, reads = "only the start of the transcript is used: its first", "(the model reads at most 96 phoneme tokens)"
    assert said == [f"{folder / 'long.wav'}: {used} 29 of 60 words {reads}",
                    f"{folder / 'none.wav'}: {used} 29 of 60 words {reads}",
                    f"{folder / 'well.wav'}: {used} 29 of 61 words, the last in part {reads}"]
    assert set(calls) == {"what", "a", "day", "well"} and max(calls.values()) == 1


def test_a_transcript_that_is_not_text_is_a_clear_error(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    speech_wav.with_suffix(".txt").write_bytes(b"\xff\xfe\x00bad")
    assert bake(speech_wav, tmp_path / "out.csv", tiny_checkpoint) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the transcript") and str(speech_wav.with_suffix(".txt")) in err
    assert not (tmp_path / "out.csv").exists()
    assert bake(speech_wav, tmp_path / "out.csv", tiny_checkpoint, "--text", "") == 0  # baked without it


def test_format_is_for_a_folder(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(SystemExit, match="--format is for a folder of lines"):
        bake(speech_wav, tmp_path / "out.csv", tiny_checkpoint, "--format", "json")
    folder = tmp_path / "bakes.v2"  # an existing folder, whatever its name
    folder.mkdir()
    assert bake(speech_wav, folder, tiny_checkpoint) == 0
    assert [p.name for p in folder.iterdir()] == ["speech.csv"]


def test_lines_of_every_length_and_layout_bake_together(tmp_path: Path, speech_16k: np.ndarray,
                                                        tiny_checkpoint: Path) -> None:
    """A batch holding one sample, a stereo 44.1 kHz line and a plain one: each gets the frames of its own
    duration, as when baked alone."""
    folder = tmp_path / "lines"
    folder.mkdir()
    sf.write(str(folder / "one.wav"), np.zeros(1, np.float32), motion.SAMPLE_RATE)
    stereo = resample_poly(speech_16k, 441, 160).astype(np.float32)
    sf.write(str(folder / "stereo.wav"), np.stack([stereo, 0.5 * stereo], axis=1), 44100)
    sf.write(str(folder / "plain.wav"), speech_16k[:8000], motion.SAMPLE_RATE)
    out = tmp_path / "baked"
    assert bake_many(sorted(folder.iterdir()), out, tiny_checkpoint) == 0
    rows = {p.stem: read_csv(p)[1].shape[0] for p in out.iterdir()}
    assert rows == {"one": 1, "stereo": round(len(speech_16k) / motion.SAMPLE_RATE * motion.FPS),
                    "plain": round(8000 / motion.SAMPLE_RATE * motion.FPS)}
    for name in ("one", "plain"):
        assert bake(folder / f"{name}.wav", tmp_path / f"{name}.csv", tiny_checkpoint) == 0
        assert np.allclose(read_csv(tmp_path / f"{name}.csv")[1], read_csv(out / f"{name}.csv")[1], atol=2e-5)


def test_a_seed_for_many_lines_gives_each_its_own(tmp_path: Path, speech_16k: np.ndarray, tiny_checkpoint: Path):
    """--seed with many lines: the same bytes every time, but not every line on that one seed (NPCs baked with
    it would blink and sway alike): each line's seed is made from it and the line's audio."""
    folder = tmp_path / "lines"
    folder.mkdir()
    for name, cut in (("a", slice(0, 16000)), ("b", slice(4000, 20000))):
        sf.write(str(folder / f"{name}.wav"), speech_16k[cut], motion.SAMPLE_RATE, subtype="PCM_16")
    lines = sorted(folder.iterdir())
    first, second = tmp_path / "first", tmp_path / "second"
    assert bake_many(lines, first, tiny_checkpoint, "--seed", "3") == 0
    assert bake_many(lines, second, tiny_checkpoint, "--seed", "3") == 0
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in ("a.csv", "b.csv"))
    assert bake(lines[0], tmp_path / "alone.csv", tiny_checkpoint, "--seed", "3") == 0
    assert (tmp_path / "alone.csv").read_bytes() != (first / "a.csv").read_bytes()


# --- outputs that cannot be written, flags that cannot be used: said, no traceback -------------------------
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the bake gets as far as loading the model."""
    from ksdiff_runtime.cli import bake as bake_cli

    def load_backend(*args, **kwargs):
        raise AssertionError("the model was loaded before the error was said")

    monkeypatch.setattr(bake_cli, "load_backend", load_backend)


def test_an_output_that_cannot_be_written_is_named_and_the_other_lines_are_baked(
        tmp_path: Path, speech_16k: np.ndarray, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder in the way of one line's file (or no permission, a full disk): that line is named on stderr, the
    others are written, the summary says so and the exit status is 1, as for a line that cannot be read."""
    sr = motion.SAMPLE_RATE
    lines = []
    for name, (a, b) in {"a": (0.0, 0.5), "b": (0.2, 0.8), "c": (0.4, 1.0)}.items():
        lines.append(tmp_path / f"{name}.wav")
        sf.write(str(lines[-1]), speech_16k[round(a * sr) : round(b * sr)], sr, subtype="PCM_16")
    out = tmp_path / "baked"
    (out / "b.csv").mkdir(parents=True)
    assert bake_many(lines, out, tiny_checkpoint) == 1
    captured = capsys.readouterr()
    assert f"error: cannot write the animation of {lines[1]} to {out / 'b.csv'}: Is a directory" in captured.err
    assert "Traceback" not in captured.err and "baked 2 of 3 lines" in captured.out
    assert (out / "b.csv").is_dir() and (out / "a.csv").is_file() and (out / "c.csv").is_file()


def test_a_line_whose_file_fails_mid_write_is_said(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    def full(path: Path, *args) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "write_json", full)
    out = tmp_path / "out.json"
    assert bake(speech_wav, out, tiny_checkpoint) == 1
    err = capsys.readouterr().err
    assert f"error: cannot write the animation of {speech_wav} to {out}: No space left on device" in err


@pytest.mark.parametrize("case", ["file for many", "file on the way", "plot: file on the way", "proc"])
def test_an_output_that_cannot_be_made_is_said_before_the_model_loads(tmp_path: Path, speech_wav: Path,
                                                                      tiny_checkpoint: Path, case: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("in the way\n")
    inputs, out, extra = [speech_wav], tmp_path / "out.csv", ()
    if case == "file for many":  # an existing file without an extension: taken as a folder, and not one
        other = tmp_path / "other.wav"
        other.write_bytes(speech_wav.read_bytes())
        inputs, out, message = [speech_wav, other], afile, f"cannot write the output {afile}: {afile} is a file"
    elif case == "file on the way":
        out, message = afile / "sub" / "out.csv", f"{afile} is a file, not a folder"
    elif case == "plot: file on the way":
        pytest.importorskip("matplotlib")
        extra, message = ("--plot", str(afile / "p.png")), f"cannot write the plot {afile / 'p.png'}"
    else:
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        out, message = Path("/proc/ksdiff-bake-test.csv"), "cannot make files in /proc"
    no_model(monkeypatch)
    with pytest.raises(SystemExit, match=re.escape(message)):
        bake_many(inputs, out, tiny_checkpoint, *extra)
    assert afile.read_text() == "in the way\n" and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (("--steps", "0"), r"--steps must be at least 1, got 0"),
    (("--steps", "1001"), r"--steps must be in 1\.\.1000 \(the model's diffusion steps\), got 1001"),
    (("--plot", "p.xyz"), r"--plot p\.xyz: its extension sets the plot's format; matplotlib writes .*\.png"),
    (("--plot", "p.pgf"), r"--plot p\.pgf: a \.pgf plot needs \S+ \(TeX\), which is not installed"),
], ids=["steps 0", "steps 1001", "plot .xyz", "plot .pgf without TeX"])
def test_a_flag_value_that_cannot_be_used_is_a_clear_error_before_baking(tmp_path: Path, speech_wav: Path,
                                                                          tiny_checkpoint: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          extra: tuple[str, ...],
                                                                          message: str) -> None:
    if extra[0] == "--plot":
        matplotlib = pytest.importorskip("matplotlib")
        if extra[1].endswith(".pgf") and shutil.which(matplotlib.rcParams["pgf.texsystem"]):
            pytest.skip("TeX is installed here: matplotlib writes .pgf")
        no_model(monkeypatch)
    if extra == ("--steps", "0"):
        no_model(monkeypatch)
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit, match=message):
        bake(speech_wav, out, tiny_checkpoint, *extra)
    assert not out.exists()


@pytest.mark.parametrize("fps", ["0", "-3", "101", "240", "x"])
def test_an_fps_the_csv_cannot_hold_is_refused_by_argparse(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str], fps: str) -> None:
    """A Live Link Face timecode numbers a second's frames in two digits: at 240 fps the CSV had frames
    00:00:00:238.000. --fps is 1..MAX_FPS, refused as argparse refuses a bad value, before the model loads."""
    from ksdiff_runtime.cli.bake import MAX_FPS

    no_model(monkeypatch)
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as exc:
        bake(speech_wav, out, tiny_checkpoint, f"--fps={fps}")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    expected = f"must be from 1 to {MAX_FPS}, got {fps}" if fps != "x" else "must be a whole number of frames a second"
    assert f"ksdiff-runtime bake: error: argument --fps: {expected}" in err
    assert not out.exists()


def test_the_highest_fps_keeps_the_timecode_frame_in_two_digits(tmp_path: Path, speech_wav: Path,
                                                                tiny_checkpoint: Path) -> None:
    from ksdiff_runtime.cli.bake import MAX_FPS

    out = tmp_path / "out.csv"
    assert bake(speech_wav, out, tiny_checkpoint, "--fps", str(MAX_FPS)) == 0
    _, _, timecodes = read_csv(out)
    assert timecodes[MAX_FPS - 1] == "00:00:00:99.000" and timecodes[MAX_FPS] == "00:00:01:00.000"
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d:\d\d\.000", t) for t in timecodes)


@pytest.mark.parametrize("style", [(), ("--style", "none")], ids=["no --style", "--style none"])
def test_network_style_without_a_style_is_refused_by_argparse(tmp_path: Path, speech_wav: Path,
                                                              tiny_checkpoint: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              style: tuple[str, ...]) -> None:
    """--network-style puts the style take on the network's style input; without a take it baked the same bytes as
    without the flag, silently. Now it is argparse's error, before the model loads."""
    no_model(monkeypatch)
    out = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as exc:
        bake(speech_wav, out, tiny_checkpoint, "--network-style", *style)
    assert exc.value.code == 2
    assert "ksdiff-runtime bake: error: --network-style puts the --style take on the network's style input: it " \
        "needs --style" in capsys.readouterr().err
    assert not out.exists()


def test_an_unknown_backend_is_refused_by_name(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    no_model(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        bake(speech_wav, tmp_path / "out.csv", tiny_checkpoint, "--backend", "foo")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --backend: invalid choice: 'foo'" in err and "'onnxruntime-cpu'" in err
    assert not (tmp_path / "out.csv").exists()


def test_a_plot_goes_into_a_new_folder(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path) -> None:
    """As the animation's own file: the folders on the way to --plot are made."""
    pytest.importorskip("matplotlib")
    plot = tmp_path / "plots" / "new" / "line.png"
    assert bake(speech_wav, tmp_path / "out.csv", tiny_checkpoint, "--plot", str(plot)) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_negative_seed_is_taken_as_a_stream_takes_it(tmp_path: Path, speech_wav: Path,
                                                       tiny_checkpoint: Path) -> None:
    """Any integer: taken modulo 2^64, as the engine takes a stream's int64 seed (-1 is 2^64 - 1)."""
    neg, big = tmp_path / "neg.csv", tmp_path / "big.csv"
    assert bake(speech_wav, neg, tiny_checkpoint, "--seed", "-1") == 0
    assert bake(speech_wav, big, tiny_checkpoint, "--seed", str(2**64 - 1)) == 0
    assert neg.read_bytes() == big.read_bytes()


# --- file names that are not UTF-8 ---------------------------------------------------------------
def latin1_name(folder: Path, name: bytes) -> Path:
    """A path in ``folder`` whose name is these bytes (not UTF-8), or skip where the file system refuses it."""
    import os
    import sys

    if sys.platform == "win32":
        pytest.skip("file names are UTF-16 on Windows")
    path = folder / os.fsdecode(name)
    try:
        path.write_bytes(b"")
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    path.unlink()
    return path


def test_a_wav_whose_name_is_not_utf8_bakes(tmp_path: Path, speech_wav: Path, tiny_checkpoint: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A Latin-1 'café.wav' (b'caf\\xe9.wav', from a Windows zip) is a good file: it bakes, to a file of the same
    name bytes, as alone and among many, and is printed with its byte escaped (stdout is strict in a UTF-8 locale)."""
    import os

    from ksdiff_runtime.cli.bake import stored_seconds

    cafe = latin1_name(tmp_path, b"caf\xe9.wav")
    cafe.write_bytes(speech_wav.read_bytes())
    plain = tmp_path / "plain.csv"
    assert bake(speech_wav, plain, tiny_checkpoint, "--seed", "3") == 0
    assert bake(cafe, tmp_path / "cafe.csv", tiny_checkpoint, "--seed", "3") == 0
    assert stored_seconds(cafe) == pytest.approx(sf.info(str(speech_wav)).duration)  # the order lines bake in
    assert (tmp_path / "cafe.csv").read_bytes() == plain.read_bytes()
    assert "baked " + str(tmp_path / "caf\\xe9.wav") in capsys.readouterr().out
    out = tmp_path / "baked"
    assert bake_many([cafe, speech_wav], out, tiny_checkpoint, "--format", "json") == 0
    assert sorted(os.listdir(os.fsencode(out))) == [b"caf\xe9.json", b"speech.json"]
    doc = json.loads((out / os.fsdecode(b"caf\xe9.json")).read_bytes())
    assert doc["source"] == str(tmp_path / "caf\\xe9.wav")
    assert len(doc["frames"]) == motion.num_frames(sf.info(str(speech_wav)).frames)


def test_a_bake_onto_a_symbolic_link_writes_its_target_and_keeps_the_link_and_mode(tmp_path: Path, speech_wav: Path,
                                                                                  tiny_checkpoint: Path) -> None:
    """A file written beside its name and moved onto it (a full disk leaves the old one whole) replaced a symbolic
    link with a file of its own, and the link's target (a project's tracked file) kept the old animation."""
    project = tmp_path / "project"
    project.mkdir()
    target = project / "line.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "line.csv"
    link.symlink_to(target)
    assert bake(speech_wav, link, tiny_checkpoint) == 0
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text().startswith("Timecode,") and (target.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in project.iterdir()) == ["line.csv"]
