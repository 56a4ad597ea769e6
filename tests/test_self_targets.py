"""Recorded prompts taught by a model's own bake (training/self_targets.py): the mouth region is exactly what
``bake`` outputs for the prompt (network, bilabial closure, voice gate) and the rest the teacher's; synthetic clips
stay by reference; held-out prompts and non-speech clips are left out; a corpus without prompts is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE, closure_for
from ksdiff_runtime.engine.gate import GateConfig
from ksdiff_runtime.motion import MOUTH_INDICES, NUM_BLENDSHAPES
from ksdiff_runtime.training import real_eval
from ksdiff_runtime.training import self_targets as S
from ksdiff_runtime.training.evaluate import load_for_eval


def test_mouth_from_takes_only_the_mouth() -> None:
    teacher = np.full((5, NUM_BLENDSHAPES), 0.25, np.float32)
    baked = np.full((4, NUM_BLENDSHAPES), 0.75, np.float32)  # a frame short: its last frame repeats
    baked[-1] = 0.5
    out = S.mouth_from(teacher, baked)
    mouth = np.zeros(NUM_BLENDSHAPES, bool)
    mouth[list(MOUTH_INDICES)] = True
    assert out.shape == teacher.shape
    np.testing.assert_array_equal(out[:, ~mouth], 0.25)
    np.testing.assert_array_equal(out[:3, mouth], 0.75)
    np.testing.assert_array_equal(out[3:, mouth], 0.5)
    assert np.all(teacher == 0.25)  # the teacher's array is not written to


@pytest.fixture(scope="module")
def corpus_with_prompts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny corpus with two synthetic clips standing in for recorded prompts, one training and one held out,
    and a non-speech clip."""
    from ksdiff_runtime.training.corpus import generate

    src = tmp_path_factory.mktemp("corpus")
    generate(str(src), seed=3, n_train=1, n_test=1, clips_train=2, clips_test=1, workers=1, progress=False)
    manifest = json.loads((src / "manifest.json").read_text())
    train = next(c for c in manifest["clips"] if c["split"] == "train")
    test = next(c for c in manifest["clips"] if c["split"] == "test")
    manifest["clips"] += [dict(train, id="r00000", kind="real", file=train["file"]),
                          dict(test, id="r00001", kind="real", file=test["file"]),
                          dict(train, id="n00000", kind="nonspeech", file=train["file"])]
    (src / "manifest.json").write_text(json.dumps(manifest))
    return src, manifest


def test_a_prompt_is_taught_its_mouth_by_the_bake(tmp_path: Path, tiny_checkpoint: Path,
                                                  corpus_with_prompts: tuple[Path, dict]) -> None:
    src, manifest = corpus_with_prompts
    out = tmp_path / "self"
    assert S.main(["--checkpoint", str(tiny_checkpoint), "--corpus", str(src), "--out", str(out), "--seed", "2"]) == 0
    written = json.loads((out / "manifest.json").read_text())
    synthetic = [c["id"] for c in manifest["clips"] if c.get("kind") is None]
    assert [c["id"] for c in written["clips"]] == [*synthetic, "r00000"]  # no held-out prompt, no non-speech
    assert written["self_taught"] == {"checkpoint": str(tiny_checkpoint), "prompts": 1, "seed": 2}
    for c in written["clips"]:
        assert (out / c["file"]).is_file()
    entry = written["clips"][-1]
    assert (out / entry["file"]).resolve() != (src / entry["file"]).resolve()  # written anew, the source untouched
    with np.load(src / entry["file"]) as z:
        teacher = {k: z[k] for k in z.files}
    with np.load(out / entry["file"]) as z:
        taught = {k: z[k] for k in z.files}
    assert set(taught) == set(teacher)
    for k in teacher:
        if k != "blendshapes":
            np.testing.assert_array_equal(taught[k], teacher[k])

    # what `bake` makes of the prompt with the same checkpoint and seed, step by step
    model = load_for_eval(tiny_checkpoint)
    backend = TorchBackend(model)
    audio = teacher["audio"].astype(np.float32)
    baked = real_eval.bake_frames(backend, [audio], seed=2)
    closure = closure_for(model.cfg.front_end.name, DEFAULT_CLOSURE)
    assert closure is not None
    baked = real_eval.gated(real_eval.closed_bakes(backend, baked, [audio], closure), [audio], GateConfig())[0]
    T = len(teacher["blendshapes"])
    assert len(baked) >= T
    mouth = list(MOUTH_INDICES)
    rest = [i for i in range(NUM_BLENDSHAPES) if i not in set(mouth)]
    np.testing.assert_allclose(taught["blendshapes"][:, mouth], baked[:T, mouth], atol=1e-6)
    np.testing.assert_array_equal(taught["blendshapes"][:, rest], teacher["blendshapes"][:, rest])
    assert not np.allclose(taught["blendshapes"][:, mouth], teacher["blendshapes"][:, mouth], atol=1e-3)


def test_a_corpus_without_prompts_is_a_clear_error(tmp_path: Path, tiny_checkpoint: Path) -> None:
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "manifest.json").write_text(json.dumps({"clips": [{"id": "c0", "split": "train", "file": "clips/c0.npz"}]}))
    with pytest.raises(ValueError, match=r"no recorded training prompts.*--real-world"):
        S.self_taught(src, tmp_path / "out", tiny_checkpoint)
