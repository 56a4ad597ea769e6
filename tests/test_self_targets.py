"""Recorded prompts taught by a model's own bake (training/self_targets.py): the mouth region is what
``ksdiff-runtime bake`` outputs for the prompt and its transcript (network, bilabial closure, voice gate; or
the network alone) and the rest the teacher's, batch after batch of mixed lengths; synthetic clips stay by
reference; held-out prompts and non-speech clips are left out; bad folders are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ksdiff_runtime import motion
from ksdiff_runtime.cli import main as cli
from ksdiff_runtime.motion import MOUTH_INDICES, NUM_BLENDSHAPES
from ksdiff_runtime.training import self_targets as S

MOUTH = list(MOUTH_INDICES)
REST = [i for i in range(NUM_BLENDSHAPES) if i not in set(MOUTH)]


def test_mouth_from_takes_only_the_mouth() -> None:
    teacher = np.full((5, NUM_BLENDSHAPES), 0.25, np.float32)
    baked = np.full((4, NUM_BLENDSHAPES), 0.75, np.float32)  # a frame short: its last frame repeats
    baked[-1] = 0.5
    out = S.mouth_from(teacher, baked)
    mouth = np.zeros(NUM_BLENDSHAPES, bool)
    mouth[MOUTH] = True
    assert out.shape == teacher.shape
    np.testing.assert_array_equal(out[:, ~mouth], 0.25)
    np.testing.assert_array_equal(out[:3, mouth], 0.75)
    np.testing.assert_array_equal(out[3:, mouth], 0.5)
    assert np.all(teacher == 0.25)  # the teacher's array is not written to


@pytest.fixture(scope="module")
def corpus_with_prompts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny corpus whose synthetic clips stand in for recorded prompts: nine training prompts of two
    lengths (two bake batches; the last without a transcript) with a quiet lead-in the voice gate rests, one
    held out, and a non-speech clip."""
    from ksdiff_runtime.training.corpus import _save_npz, generate

    src = tmp_path_factory.mktemp("corpus")
    generate(str(src), seed=3, n_train=1, n_test=1, clips_train=2, clips_test=1, workers=1, progress=False)
    manifest = json.loads((src / "manifest.json").read_text())
    train = [c for c in manifest["clips"] if c["split"] == "train"]
    test = next(c for c in manifest["clips"] if c["split"] == "test")
    lead = motion.SAMPLE_RATE // 2  # half a second of room tone, then the speech
    real = []
    for k in range(9):  # each in its own file, as in a real corpus
        c = train[k % 2]
        d = dict(np.load(src / c["file"]))
        frames = lead * motion.FPS // motion.SAMPLE_RATE
        d["audio"] = np.concatenate([np.random.default_rng(k).normal(0, 1e-4, lead), d["audio"]]).astype(np.float32)
        for key in ("blendshapes", "head"):
            d[key] = np.concatenate([np.repeat(d[key][:1], frames, axis=0), d[key]])
        d["silent"] = np.concatenate([np.ones(frames, bool), d["silent"]])
        d["phoneme_start"] = (d["phoneme_start"] + lead / motion.SAMPLE_RATE).astype(np.float32)
        file = f"clips/r{k:05d}.npz"
        _save_npz(str(src / file), d)
        real.append(dict(c, id=f"r{k:05d}", kind="real", file=file, text=c["text"] if k < 8 else ""))
    assert len({len(np.load(src / c["file"])["audio"]) for c in real}) == 2  # two lengths in a batch
    manifest["clips"] += [*real, dict(test, id="r00009", kind="real"),
                          dict(train[0], id="n00000", kind="nonspeech")]
    manifest["real_world"] = {"nonspeech": 1}
    (src / "manifest.json").write_text(json.dumps(manifest))
    return src, manifest


def baked_by_cli(tmp_path: Path, checkpoint: Path, audio: np.ndarray, text: str, seed: int, *flags: str) -> np.ndarray:
    """[T, 52] blendshapes of ``ksdiff-runtime bake`` on the audio (a float WAV: the same samples)."""
    wav, out = tmp_path / "prompt.wav", tmp_path / "baked.json"
    sf.write(wav, audio, motion.SAMPLE_RATE, subtype="FLOAT")
    args = ["bake", str(wav), "-o", str(out), "--checkpoint", str(checkpoint), "--backend", "torch-cpu",
            "--seed", str(seed), "--no-liveliness", *flags]
    assert cli([*args, "--text", text] if text else args) == 0
    return np.array([f["blendshapes"] for f in json.loads(out.read_text())["frames"]], np.float32)


@pytest.mark.parametrize("network_only", [False, True], ids=["bake", "network-only"])
def test_prompts_are_taught_their_mouths_by_the_bake(tmp_path: Path, tiny_checkpoint: Path, network_only: bool,
                                                     corpus_with_prompts: tuple[Path, dict]) -> None:
    src, manifest = corpus_with_prompts
    out = tmp_path / "self"
    flags = ["--network-only"] if network_only else []
    assert S.main(["--checkpoint", str(tiny_checkpoint), "--corpus", str(src), "--out", str(out), "--seed", "2",
                   *flags]) == 0
    written = json.loads((out / "manifest.json").read_text())
    synthetic = [c["id"] for c in manifest["clips"] if c.get("kind") is None]
    assert [c["id"] for c in written["clips"]] == [*synthetic, *(f"r{k:05d}" for k in range(9))]
    assert "real_world" not in written  # its non-speech clips are not in this corpus
    info = written["self_taught"]
    assert (info["checkpoint"], info["prompts"], info["seed"], len(info["sha256"])) == (str(tiny_checkpoint), 9, 2, 64)
    for c in written["clips"]:
        assert (out / c["file"]).is_file()
        assert c.get("kind") != "real" or (out / c["file"]).resolve() != (src / c["file"]).resolve()
    bake_flags = ["--no-closure", "--no-voice-gate"] if network_only else []
    changed_by_stages = 0
    for k in (0, 1, 8):  # each length, each batch, with and without a transcript
        entry = written["clips"][len(synthetic) + k]
        with np.load(src / entry["file"]) as z:
            teacher = {key: z[key] for key in z.files}
        with np.load(out / entry["file"]) as z:
            taught = {key: z[key] for key in z.files}
        assert set(taught) == set(teacher)
        for key in teacher:
            if key != "blendshapes":
                np.testing.assert_array_equal(taught[key], teacher[key])
        np.testing.assert_array_equal(taught["blendshapes"][:, REST], teacher["blendshapes"][:, REST])
        T = len(teacher["blendshapes"])
        baked = baked_by_cli(tmp_path, tiny_checkpoint, teacher["audio"], entry["text"], 2, *bake_flags)
        assert len(baked) >= T
        np.testing.assert_allclose(taught["blendshapes"][:, MOUTH], baked[:T, MOUTH], atol=2e-5)
        assert not np.allclose(taught["blendshapes"][:, MOUTH], teacher["blendshapes"][:, MOUTH], atol=1e-3)
        network = baked_by_cli(tmp_path, tiny_checkpoint, teacher["audio"], entry["text"], 2, "--no-closure",
                               "--no-voice-gate")
        changed_by_stages += int(not np.allclose(network[:T, MOUTH], baked[:T, MOUTH], atol=1e-3))
    # the closure and gate change the mouth bake outputs (the quiet lead-in rests) unless left out
    assert changed_by_stages == (0 if network_only else 3)


def test_bad_folders_are_clear_errors(tmp_path: Path, tiny_checkpoint: Path,
                                      corpus_with_prompts: tuple[Path, dict]) -> None:
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "manifest.json").write_text(json.dumps({"clips": [{"id": "c0", "split": "train", "file": "clips/c0.npz"}]}))
    with pytest.raises(ValueError, match=r"no recorded training prompts.*--real-world"):
        S.self_taught(src, tmp_path / "out", tiny_checkpoint)
    prompts, _ = corpus_with_prompts
    before = (prompts / "manifest.json").read_text()
    with pytest.raises(SystemExit, match=r"is the source corpus"):
        S.main(["--checkpoint", str(tiny_checkpoint), "--corpus", str(prompts), "--out", str(prompts / ".")])
    assert (prompts / "manifest.json").read_text() == before


def test_max_real_takes_the_first_prompts(tmp_path: Path, tiny_checkpoint: Path,
                                          corpus_with_prompts: tuple[Path, dict]) -> None:
    src, manifest = corpus_with_prompts
    assert S.self_taught(src, tmp_path / "self", tiny_checkpoint, max_real=3, network_only=True) == 3
    written = json.loads((tmp_path / "self" / "manifest.json").read_text())
    synthetic = [c["id"] for c in manifest["clips"] if c.get("kind") is None]
    assert [c["id"] for c in written["clips"]] == [*synthetic, "r00000", "r00001", "r00002"]
    assert written["self_taught"]["prompts"] == 3


def test_aligned_closures_take_the_teachers_shut_lips_inside_bilabials_only() -> None:
    jaw = motion.BLENDSHAPE_INDEX["jawOpen"]
    teacher = np.zeros((30, NUM_BLENDSHAPES), np.float32)
    teacher[:, jaw] = 0.8
    teacher[10:13, jaw] = 0.0  # shut inside the /m/
    teacher[20:23, jaw] = 0.0  # and inside a vowel
    assert motion.lip_aperture(teacher[0]) > motion.LIP_CLOSED_THRESHOLD > motion.lip_aperture(teacher[10])
    taught = np.full_like(teacher, 0.5)
    fps = motion.FPS
    phonemes = np.array(["_", "a", "m", "a", "_"])
    starts = np.array([0, 4, 10, 13, 25]) / fps
    durs = np.array([4, 6, 3, 12, 5]) / fps
    out = S.with_aligned_closures(taught, teacher, phonemes, starts, durs)
    replaced = np.zeros(30, bool)
    replaced[10:13] = True
    np.testing.assert_array_equal(out[np.ix_(replaced, MOUTH)], teacher[np.ix_(replaced, MOUTH)])
    np.testing.assert_array_equal(out[np.ix_(~replaced, MOUTH)], 0.5)  # the open frames beside it, the vowel's
    np.testing.assert_array_equal(out[:, REST], 0.5)
    assert np.all(taught == 0.5)


def test_aligned_closures_reach_the_written_prompts(tmp_path: Path, tiny_checkpoint: Path,
                                                    corpus_with_prompts: tuple[Path, dict]) -> None:
    src, _ = corpus_with_prompts
    S.self_taught(src, tmp_path / "net", tiny_checkpoint, max_real=2, network_only=True)
    S.self_taught(src, tmp_path / "closed", tiny_checkpoint, max_real=2, network_only=True, aligned_closures=True)
    written = json.loads((tmp_path / "closed" / "manifest.json").read_text())
    assert written["self_taught"]["stages"] == "network, the teacher's aligned closures"
    replaced = 0
    for c in written["clips"][-2:]:
        teacher = np.load(src / c["file"])
        net = np.load(tmp_path / "net" / c["file"])["blendshapes"]
        closed = np.load(tmp_path / "closed" / c["file"])["blendshapes"]
        changed = np.any(closed != net, axis=1)
        np.testing.assert_array_equal(closed[changed][:, MOUTH], teacher["blendshapes"][changed][:, MOUTH])
        assert np.all(motion.lip_aperture(closed[changed]) < motion.LIP_CLOSED_THRESHOLD)
        replaced += int(changed.sum())
    assert replaced > 0
