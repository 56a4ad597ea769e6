"""The training tools as users break them: a run stopped by Ctrl-C or SIGTERM, killed between checkpoints, resumed
from a truncated or foreign last.pt; a corpus folder that is missing, cut short or half rewritten; fine-tunes from
the wrong file; numbers a run cannot use. Each ends in a clear `error: ...` naming the file or setting, or in a run
that keeps its work, never in a traceback deep in torch or a worker pool."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_dataset import TINY_MODEL, Data, losses, write_config

from ksdiff_runtime.cli import main
from ksdiff_runtime.features.frontend import make_front_end
from ksdiff_runtime.model.checkpoint import read_checkpoint, save_checkpoint
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.model.ksdiff import KSDiff
from ksdiff_runtime.training import real_eval, streaming_distil
from ksdiff_runtime.training import train as train_module
from ksdiff_runtime.training.corpus import generate
from ksdiff_runtime.training.dataset import build_feature_cache, front_end_key, load_clips

pytestmark = pytest.mark.slow  # the corpus, its feature cache and a few training steps

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 180.0  # a subprocess imports torch and loads the corpus before its first step: generous on a busy CPU


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("data")
    corpus, cache = root / "corpus", root / "cache"
    generate(str(corpus), seed=3, n_train=2, n_test=1, clips_train=2, clips_test=2, workers=1, progress=False)
    cfg = ModelConfig(**TINY_MODEL)
    build_feature_cache(corpus, cache, cfg, workers=1)
    return Data(corpus, cache, cfg)


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    n = torch.get_num_threads()  # `train` sets torch's thread count for the whole process
    yield
    torch.set_num_threads(n)


def tiny_config(data: Data, out: Path, path: Path, **train: object) -> Path:
    """test_dataset's tiny run config, with [train] settings added (the last of a repeated key wins in ours)."""
    write_config(data, out, path)
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in train.items())
    text = path.read_text()
    for k in train:  # TOML refuses a repeated key: drop the base's line first
        text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{k} =")) + "\n"
    path.write_text(text + extra)
    return path


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)  # polling a condition, not a guess at how long something takes


def logged_steps(out: Path) -> list[int]:
    path = out / "losses.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError):  # a row being written
            rows.append(json.loads(line)["step"])
    return rows


def start_train(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "ksdiff_runtime.cli", "train", "--config", str(config),
                             "--threads", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# --- a run stopped --------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_signal_mid_run_checkpoints_the_step_it_was_on_and_a_rerun_resumes_there(
        data: Data, tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "run"
    # checkpoints far apart, as a real run's (250 steps): before the fix every step since the last one was lost
    config = tiny_config(data, out, tmp_path / "run.toml", max_steps=100_000, checkpoint_every=100_000)
    proc = start_train(config)
    try:
        wait_for(lambda: len(logged_steps(out)) >= 2 or proc.poll() is not None, "two logged training steps")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()[-2000:]  # ended as interrupted: nothing shipped
    assert b"interrupted" in err and b"checkpointed" in err
    stopped_at = read_checkpoint(out / "last.pt")["step"]
    assert stopped_at >= 2 and logged_steps(out) == list(range(1, stopped_at + 1))

    assert main(["train", "--config", str(config), "--max-steps", str(stopped_at + 2)]) == 0
    assert read_checkpoint(out / "last.pt")["step"] == stopped_at + 2
    assert logged_steps(out) == list(range(1, stopped_at + 3))  # resumed where it stopped, every step once


def test_a_run_stopped_and_resumed_ends_with_the_state_of_a_run_never_stopped(data: Data, tmp_path: Path) -> None:
    # weights, EMA, optimiser moments, RNGs and the LR schedule all come back: 2 + 2 steps equal 4 straight
    model_cfg, base = train_module.load_config(tiny_config(data, tmp_path / "x", tmp_path / "x.toml",
                                                           max_steps=4, threads=1))
    straight = train_module.train(model_cfg, train_module.TrainConfig(**{**base.__dict__, "out": str(tmp_path / "a")}))
    split = train_module.TrainConfig(**{**base.__dict__, "out": str(tmp_path / "b"), "stop_after": 2})
    assert read_checkpoint(train_module.train(model_cfg, split))["step"] == 2
    resumed = train_module.train(model_cfg, train_module.TrainConfig(**{**split.__dict__, "stop_after": 0}))
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["step"] == b["step"] == 4
    for key in ("model", "train_model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(pa[k], pb[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    assert [r["total"] for r in losses(tmp_path / "a")] == [r["total"] for r in losses(tmp_path / "b")]


def test_rows_logged_after_the_last_checkpoint_are_not_logged_twice_on_resume(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(data, out, tmp_path / "run.toml", max_steps=2)
    assert main(["train", "--config", str(config)]) == 0
    # what a run killed (power cut, OOM) at step 3, before its next checkpoint, leaves: a row for step 3 and a
    # row torn mid-write
    with (out / "losses.jsonl").open("a") as f:
        f.write(json.dumps({**losses(out)[-1], "step": 3}) + "\n" + '{"total": 0.5, "st')
    assert main(["train", "--config", str(config), "--max-steps", "4"]) == 0
    assert logged_steps(out) == [1, 2, 3, 4]
    assert all(isinstance(r["total"], float) for r in losses(out))


# --- last.pt and --init-from ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run's folder (last.pt at step 2)."""
    folder = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--config", str(tiny_config(data, folder / "run", folder / "run.toml", max_steps=2)),
                     "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return folder / "run"


def test_a_truncated_last_pt_is_refused_by_name_not_a_torch_traceback(data: Data, trained: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    whole = (trained / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(whole[: len(whole) // 2])  # a copy from another machine cut short
    config = tiny_config(data, out, tmp_path / "run.toml", max_steps=4)
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume: ") and str(out / "last.pt") in err and "corrupt" in err
    assert "Move it aside" in err
    assert (out / "last.pt").read_bytes() == whole[: len(whole) // 2]  # left for the user to look at


def test_a_weights_only_checkpoint_as_last_pt_is_refused_saying_what_it_lacks(
        data: Data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    model = KSDiff(data.cfg)
    save_checkpoint(out / "last.pt", model, half=True, step=2)  # what --ship and keep_every write
    assert main(["train", "--config", str(tiny_config(data, out, tmp_path / "run.toml", max_steps=4))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out / "last.pt") in err and "train_model" in err
    assert "--init-from" in err


def test_resuming_with_another_model_config_names_the_fields_that_differ(
        data: Data, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(trained / "last.pt", out / "last.pt")
    config = tiny_config(data, out, tmp_path / "run.toml", max_steps=4)
    config.write_text(config.read_text().replace("d_model = 32", "d_model = 16"))
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out / "last.pt") in err
    assert "d_model: checkpoint 32, this run 16" in err


def test_init_from_a_checkpoint_of_another_model_config_names_the_fields_that_differ(
        data: Data, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(data, tmp_path / "run", tmp_path / "run.toml", max_steps=2)
    config.write_text(config.read_text().replace("style_dim = 8", "style_dim = 16"))
    assert main(["train", "--config", str(config), "--init-from", str(trained / "last.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(trained / "last.pt") in err
    assert "style_dim: checkpoint 8, this run 16" in err


def test_init_from_a_file_that_is_not_a_checkpoint_is_refused_by_name(
        data: Data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights\n")
    config = tiny_config(data, tmp_path / "run", tmp_path / "run.toml", max_steps=2)
    for path, reason in ((notes, "corrupt or not a ksdiff checkpoint"), (tmp_path / "nope.pt", "does not exist")):
        assert main(["train", "--config", str(config), "--init-from", str(path)]) == 1
        err = capsys.readouterr().err
        # the first thing it says: before the fix it came after the feature cache and the clips (hours on a
        # new corpus), under their progress bars
        assert err.startswith("error: ") and str(path) in err and reason in err


def test_a_checkpoint_write_that_fails_keeps_the_previous_file_and_leaves_no_partial_copy(tmp_path: Path) -> None:
    # a full disk (or Ctrl-C twice) mid-write: the partial copy must not keep the space the next write needs
    model = KSDiff(ModelConfig(**TINY_MODEL))
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, step=1)
    before = path.read_bytes()
    with pytest.raises(Exception, match="pickle"):
        save_checkpoint(path, model, step=2, hook=lambda: None)  # unpicklable: fails part-way through the write
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# --- settings and corpus --------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "message"), [
    (["--batch-size", "0"], "batch_size must be at least 1, not 0"),
    (["--max-steps", "0"], "max_steps must be at least 1, not 0"),
    (["--lr", "-1"], "lr must be a positive number, not -1.0"),
    (["--lr", "0"], "lr must be a positive number, not 0.0"),
    (["--lr", "nan"], "lr must be a positive number, not nan"),
    (["--max-minutes", "-5"], "max_minutes must be 0 (no limit) or more, not -5.0"),
    (["--threads", "-3"], "threads must be 0 or more, not -3"),
    (["--warmup-steps", "-1"], "warmup_steps must be 0 or more, not -1"),
])
def test_numbers_a_run_cannot_use_are_refused_by_name_before_anything_runs(
        tmp_path: Path, flags: list[str], message: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:  # an `error:` line, not a traceback
        main(["train", "--corpus", str(tmp_path / "no-corpus"), "--out", str(out), *flags])
    assert str(exc.value) == f"error: {message}"
    assert not out.exists()


def test_a_misspelt_training_setting_is_refused_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text("[train]\nbatch_sise = 4\n")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(config)])
    assert str(exc.value).startswith(f"error: training config {config}: ") and "batch_sise" in str(exc.value)


def test_train_on_a_folder_without_a_corpus_says_to_run_corpus(tmp_path: Path) -> None:
    (tmp_path / "corpus" / "clips").mkdir(parents=True)  # what an interrupted first `corpus` run leaves
    with pytest.raises(SystemExit) as exc:
        main(["train", "--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path / "run"), "--threads", "1"])
    message = str(exc.value)
    assert message.startswith(f"error: no corpus at {tmp_path / 'corpus'}") and "ksdiff-runtime corpus" in message


def test_a_corrupt_manifest_is_named_not_a_json_traceback(data: Data, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(data.corpus, corpus)
    text = (corpus / "manifest.json").read_text()
    (corpus / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(SystemExit) as exc:
        main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--threads", "1"])
    assert str(exc.value).startswith(f"error: corpus manifest {corpus / 'manifest.json'} is corrupt")


def test_a_corpus_missing_clip_files_is_named_before_the_feature_workers_start(data: Data, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(data.corpus, corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    gone = manifest["clips"][1]["file"]
    (corpus / gone).unlink()  # a copy cut short
    config = tiny_config(data, tmp_path / "run", tmp_path / "run.toml", corpus=str(corpus),
                         cache=str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(config)])
    assert str(exc.value) == (f"error: corpus {corpus}: 1 of its {len(manifest['clips'])} clips are missing ({gone}); "
                              "copy them over or run `ksdiff-runtime corpus` again")


def test_a_corpus_with_no_training_clips_is_a_clear_error(data: Data, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(data.corpus, corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    manifest["clips"] = [c for c in manifest["clips"] if c["split"] == "test"]
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    config = tiny_config(data, tmp_path / "run", tmp_path / "run.toml", corpus=str(corpus))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(config)])
    assert str(exc.value) == f"error: corpus {corpus} has no training clips (none in its manifest's train split)"


def test_a_corpus_run_stopped_over_an_older_corpus_leaves_no_stale_manifest(data: Data, tmp_path: Path) -> None:
    # the old manifest would describe clips the new run has partly rewritten: `train` would read another corpus's
    # audio under it (and its cached features for the old audio), silently
    corpus = tmp_path / "corpus"
    shutil.copytree(data.corpus, corpus)
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "ksdiff_runtime.cli", "corpus", "--out", str(corpus), "--seed",
                             "5", "--train-personas", "20", "--test-personas", "2", "--clips-per-persona", "2",
                             "--workers", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # killed (SIGKILL: no chance to tidy up) once it has rewritten its first clip
        first = corpus / "clips" / "c00000.npz"
        wait_for(lambda: first.stat().st_mtime > started or proc.poll() is not None, "the first rewritten clip")
        proc.kill()
        proc.wait(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (corpus / "manifest.json").exists()
    with pytest.raises(SystemExit, match="no corpus at"):
        main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "run"), "--threads", "1"])


# --- eval -----------------------------------------------------------------------------------------
def test_eval_on_a_corpus_without_held_out_clips_is_a_clear_error(data: Data, trained: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(data.corpus, corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    manifest["clips"] = [c for c in manifest["clips"] if c["split"] == "train"]
    (corpus / "manifest.json").write_text(json.dumps(manifest))
    for command in ("eval", "eval-stream"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--checkpoint", str(trained / "last.pt"), "--corpus", str(corpus), "--cache",
                  str(data.cache), "--out", str(tmp_path / command)])
        assert str(exc.value) == f"error: corpus {corpus} has no held-out (test) clips"


def test_eval_of_a_missing_checkpoint_or_corpus_is_a_clear_error(data: Data, trained: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.pt"
    for command in ("eval", "eval-stream"):
        assert main([command, "--checkpoint", str(missing), "--corpus", str(data.corpus), "--cache",
                     str(data.cache), "--out", str(tmp_path / command)]) == 1
        assert capsys.readouterr().err == f"error: checkpoint {missing} does not exist\n"
        with pytest.raises(SystemExit, match=f"error: no corpus at {tmp_path / 'none'}"):
            main([command, "--checkpoint", str(trained / "last.pt"), "--corpus", str(tmp_path / "none"),
                  "--cache", str(data.cache), "--out", str(tmp_path / command)])
    assert not os.path.exists(tmp_path / "none")


# --- the feature cache ----------------------------------------------------------------------------
def test_features_cached_for_an_older_corpus_in_the_same_folder_are_recomputed(data: Data, tmp_path: Path) -> None:
    # the cache is keyed by front-end and clip id (c00000, ...), and every corpus numbers its clips alike: a corpus
    # made again in the same folder (another seed, more personas) must not be trained on the old one's features
    corpus, cache = tmp_path / "corpus", tmp_path / "cache"
    shutil.copytree(data.corpus, corpus)
    shutil.copytree(data.cache, cache)
    generate(str(corpus), seed=4, n_train=2, n_test=1, clips_train=2, clips_test=2, workers=1, progress=False)
    build_feature_cache(corpus, cache, data.cfg, workers=1)
    clips = load_clips(corpus, cache, data.cfg, "train")
    fresh = make_front_end(data.cfg.front_end)
    manifest = {c["id"]: c for c in json.loads((corpus / "manifest.json").read_text())["clips"]}
    for clip in clips:
        audio = np.load(corpus / manifest[clip.id]["file"])["audio"]
        np.testing.assert_array_equal(clip.feats_offline, fresh.offline(audio).astype(np.float16))
    # and a cache built before this check (no record of its sources) is still used as it is, not recomputed
    folder = cache / front_end_key(data.cfg)
    (folder / "sources.json").unlink()
    before = {f.name: f.stat().st_mtime_ns for f in folder.glob("*.npz")}
    build_feature_cache(corpus, cache, data.cfg, workers=1)
    assert {f.name: f.stat().st_mtime_ns for f in folder.glob("*.npz")} == before


def test_a_corpus_made_from_another_shares_its_cached_features(data: Data, tmp_path: Path) -> None:
    # self_targets and stop_timing make corpora whose entries point at another corpus's clip files (their targets
    # changed, not their audio or text) and share its cache (config's cache = "cache/features"): switching between
    # them and the corpus they came from must not recompute hours of features, each way
    cache = tmp_path / "cache"
    shutil.copytree(data.cache, cache)
    derived = tmp_path / "derived"
    (derived / "clips").mkdir(parents=True)
    manifest = json.loads((data.corpus / "manifest.json").read_text())
    for c in manifest["clips"]:
        c["file"] = os.path.relpath(data.corpus / c["file"], derived)  # ../data/corpus/clips/c00000.npz
        c["targets"] = "self-taught"  # what such a corpus changes
    (derived / "manifest.json").write_text(json.dumps(manifest))
    folder = cache / front_end_key(data.cfg)
    before = {f.name: f.stat().st_mtime_ns for f in folder.glob("*.npz")}
    build_feature_cache(derived, cache, data.cfg, workers=1)
    build_feature_cache(data.corpus, cache, data.cfg, workers=1)
    assert {f.name: f.stat().st_mtime_ns for f in folder.glob("*.npz")} == before


# --- eval --real ----------------------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["transcripts", "prompts"])
def test_eval_real_names_a_missing_prompt_package_before_loading_the_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    # a machine without Debian's asterisk-core-sounds-en(-wav): the paths pointed at an empty folder (the real
    # packages are installed here). The checkpoint does not exist either: the packages are asked about first, so
    # the user is not told about them only after a backend export of minutes
    if missing == "transcripts":
        monkeypatch.setattr(real_eval, "TRANSCRIPTS", tmp_path / "core-sounds-en.txt.gz")
        expected = "asterisk-core-sounds-en asterisk-core-sounds-en-wav"
    else:
        monkeypatch.setattr(streaming_distil, "ASTERISK_SOUNDS", tmp_path)
        expected = "no recorded English prompts: apt-get install asterisk-core-sounds-en-wav"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--real", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "out")])
    assert str(exc.value).startswith("error: ") and expected in str(exc.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--train-personas", "0"], "train personas must be at least 1, not 0"),
    (["--test-personas", "-1"], "test personas must be at least 0, not -1"),
    (["--clips-per-persona", "0"], "clips per persona must be at least 1, not 0"),
    (["--workers", "0"], "workers must be at least 1, not 0"),
])
def test_corpus_numbers_that_make_no_usable_corpus_are_refused_before_anything_is_written(
        data: Data, tmp_path: Path, flags: list[str], message: str) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(data.corpus, corpus)
    before = (corpus / "manifest.json").read_text()
    small = ["--train-personas", "1", "--test-personas", "1", "--clips-per-persona", "1"]  # (the flag given wins)
    with pytest.raises(SystemExit) as exc:
        main(["corpus", "--out", str(corpus), *small, *flags])
    assert str(exc.value) == f"error: corpus: {message}"
    assert (corpus / "manifest.json").read_text() == before  # the corpus already there is left as it was
