"""Training data end to end on a tiny generated corpus: the feature cache, clip loading, the
window sampler's layout, and the `train` (resumable) and `eval` commands on top of them."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.cli import main
from ksdiff_runtime.engine.presets import get_preset
from ksdiff_runtime.engine.stream import Hop, StreamState
from ksdiff_runtime.features.frontend import make_front_end
from ksdiff_runtime.model.checkpoint import load_model, read_checkpoint
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.training.blend import is_pose_branch
from ksdiff_runtime.training.corpus import generate
from ksdiff_runtime.training.dataset import (
    Clip,
    WindowSampler,
    build_feature_cache,
    build_live_cache,
    front_end_key,
    live_windows,
    load_clips,
)
from ksdiff_runtime.training.evaluate import CLOSURE_ROW, TARGETS
from ksdiff_runtime.training.train import TrainConfig, lr_at

pytestmark = pytest.mark.slow  # every test here needs the generated corpus and its feature cache


TINY_MODEL = dict(d_model=32, n_heads=2, denoiser_layers=1, kel_hidden=16, style_dim=8, n_msdc_blocks=1)


@dataclass
class Data:
    corpus: Path
    cache: Path
    cfg: ModelConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    root = tmp_path_factory.mktemp("data")
    corpus, cache = root / "corpus", root / "cache"
    generate(str(corpus), seed=3, n_train=2, n_test=1, clips_train=2, clips_test=2, workers=1, progress=False)
    cfg = ModelConfig(**TINY_MODEL)
    assert cfg.front_end.name == "ppg"
    build_feature_cache(corpus, cache, cfg, workers=1)
    return Data(corpus, cache, cfg)


@pytest.fixture(scope="module")
def train_clips(data: Data) -> list[Clip]:
    return load_clips(data.corpus, data.cache, data.cfg, "train")


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    n = torch.get_num_threads()  # `train` sets torch's thread count for the whole process
    yield
    torch.set_num_threads(n)


def take(x: np.ndarray, start: int, length: int) -> np.ndarray:
    return x[np.clip(np.arange(start, start + length), 0, len(x) - 1)]


# --- cache and clips -----------------------------------------------------------------------------
def test_clips_load_with_consistent_lengths(data: Data, train_clips: list[Clip]) -> None:
    manifest = json.loads((data.corpus / "manifest.json").read_text())
    assert len(train_clips) == 4
    assert len(load_clips(data.corpus, data.cache, data.cfg, "test")) == 2
    assert sorted({c.persona for c in train_clips}) == [0, 1]
    for clip in train_clips:
        entry = next(e for e in manifest["clips"] if e["id"] == clip.id)
        T = motion.num_frames(round(entry["duration_s"] * motion.SAMPLE_RATE))
        assert abs(len(clip.expr) - T) <= 1
        assert clip.feats.shape == clip.feats_offline.shape == (len(clip.expr), data.cfg.feature_dim)
        assert clip.prosody.shape == (len(clip.expr), data.cfg.prosody_dim)
        assert clip.key_expr.shape == clip.key_pose.shape == clip.silent.shape == (len(clip.expr),)
        assert clip.key_expr.any() and clip.tokens.size > 0 and clip.audio is None


def test_cached_stream_features_equal_a_fresh_blockwise_computation(data: Data, train_clips: list[Clip]) -> None:
    clip = train_clips[0]
    manifest = json.loads((data.corpus / "manifest.json").read_text())
    entry = next(e for e in manifest["clips"] if e["id"] == clip.id)
    audio = np.load(data.corpus / entry["file"])["audio"]
    front_end = make_front_end(data.cfg.front_end)
    fresh = front_end(audio).astype(np.float16)
    np.testing.assert_array_equal(clip.feats, fresh)
    np.testing.assert_array_equal(clip.feats_offline, front_end.offline(audio).astype(np.float16))
    assert not np.array_equal(clip.feats, clip.feats_offline)  # two schedules, two feature sets


def test_second_cache_build_recomputes_nothing(data: Data) -> None:
    folder = data.cache / front_end_key(data.cfg)
    files = sorted(folder.glob("*.npz"))
    assert len(files) == 6
    before = {f.name: f.stat().st_mtime_ns for f in files}
    assert build_feature_cache(data.corpus, data.cache, data.cfg, workers=1) == folder
    assert {f.name: f.stat().st_mtime_ns for f in sorted(folder.glob("*.npz"))} == before
    # another front-end setting gets its own folder: never stale features
    other = ModelConfig(**TINY_MODEL, front_end=type(data.cfg.front_end)(lookahead_ms=0))
    assert front_end_key(other) != front_end_key(data.cfg)
    streaming = ModelConfig(**TINY_MODEL, front_end=dataclasses.replace(data.cfg.front_end, recogniser="streaming"))
    assert front_end_key(streaming) != front_end_key(data.cfg)


def test_caches_built_before_the_recogniser_setting_keep_their_key() -> None:
    """The shipped config's features were cached as ppg-5823de06 before ``recogniser`` existed; its default
    is left out of the key, so those caches (and every user's) stay valid."""
    from ksdiff_runtime.training.train import load_config

    model_cfg, _ = load_config(Path(__file__).resolve().parents[1] / "configs" / "ksdiff-small.toml")
    assert model_cfg.front_end.recogniser == "full-context"
    assert front_end_key(model_cfg) == "ppg-5823de06"


# --- the window sampler --------------------------------------------------------------------------
def test_window_sampler_layout(data: Data, train_clips: list[Clip]) -> None:
    cfg = data.cfg
    C, N, E, L = cfg.motion_context_frames, cfg.train_window_frames, cfg.encoder_context_frames, cfg.lookahead_frames
    B = 48
    batch = WindowSampler(train_clips, cfg, seed=1).batch(B)
    assert batch["feats"].shape == (B, E + N + L, cfg.feature_dim) and batch["feats"].dtype == np.float32
    assert batch["prosody"].shape == (B, E + N + L, cfg.prosody_dim)
    assert batch["expr"].shape == (B, C + N, motion.NUM_BLENDSHAPES)
    assert batch["pose"].shape == (B, C + N, motion.NUM_HEAD)
    assert batch["key_expr"].shape == batch["key_pose"].shape == (B, C + N) and batch["key_expr"].dtype == bool
    assert batch["known"].shape == (B, C + N)
    assert batch["ref_a_expr"].shape == batch["ref_b_expr"].shape == (B, cfg.style_clip_frames, 52)
    assert batch["ref_a_pose"].shape == batch["ref_b_pose"].shape == (B, cfg.style_clip_frames, 3)
    assert batch["persona"].shape == (B,)
    assert batch["text"].shape[0] == B and batch["text"].dtype == np.int64

    at_start = 0
    for i in range(B):
        # find the clip and start frame this window was cut from
        found = [
            (k, w0)
            for k, c in enumerate(train_clips)
            for w0 in range(max(1, len(c.expr) - N + 1))
            if np.array_equal(batch["expr"][i], take(c.expr, w0 - C, C + N))
            and np.array_equal(batch["pose"][i], take(c.pose, w0 - C, C + N))
        ]
        assert found, f"window {i} is not a window of any clip"
        k, w0 = found[0]
        clip = train_clips[k]
        known = np.zeros(C + N, dtype=np.float32)
        known[:C] = np.arange(w0 - C, w0) >= 0  # context before the clip start is unknown
        np.testing.assert_array_equal(batch["known"][i], known)
        at_start += w0 < C
        feats = batch["feats"][i]
        assert np.array_equal(feats, take(clip.feats, w0 - E, E + N + L).astype(np.float32)) or np.array_equal(
            feats, take(clip.feats_offline, w0 - E, E + N + L).astype(np.float32)
        )
        np.testing.assert_array_equal(batch["prosody"][i], take(clip.prosody, w0 - E, E + N + L))
        assert batch["persona"][i] == clip.persona
        np.testing.assert_array_equal(batch["text"][i, : len(clip.tokens)], clip.tokens)
        assert not batch["text"][i, len(clip.tokens) :].any()
        # style references: windows of *another* clip of the same persona
        for ref_e, ref_p in ((batch["ref_a_expr"][i], batch["ref_a_pose"][i]),
                             (batch["ref_b_expr"][i], batch["ref_b_pose"][i])):
            sources = [
                j
                for j, other in enumerate(train_clips)
                for s in range(max(1, len(other.expr) - cfg.style_clip_frames + 1))
                if np.array_equal(ref_e, take(other.expr, s, cfg.style_clip_frames))
                and np.array_equal(ref_p, take(other.pose, s, cfg.style_clip_frames))
            ]
            assert sources and all(j != k and train_clips[j].persona == clip.persona for j in sources)
    assert at_start > 0, "no window started within C frames of a clip start"


def test_window_sampler_is_seeded(data: Data, train_clips: list[Clip]) -> None:
    a = WindowSampler(train_clips, data.cfg, seed=5).batch(4)
    b = WindowSampler(train_clips, data.cfg, seed=5).batch(4)
    c = WindowSampler(train_clips, data.cfg, seed=6).batch(4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["expr"], c["expr"])


def test_live_windows_are_the_windows_a_live_hop_denoises(data: Data, train_clips: list[Clip]) -> None:
    """Against the engine itself: a stream holding a clip's features up to a hop's lookahead, its hop
    window (StreamState.hop_window) has the features and prosody live_windows cuts from that clip."""
    cfg = data.cfg
    C, E, L = cfg.motion_context_frames, cfg.encoder_context_frames, cfg.lookahead_frames
    front_end = make_front_end(cfg.front_end)
    batch = WindowSampler(train_clips, cfg, seed=2).batch(8, live=True)
    for hop, window, ahead in ((1, 8, 2), (1, 8, 0), (3, 10, 1)):
        live = live_windows(batch, cfg, hop_frames=hop, window_frames=window, lookahead_frames=ahead)
        preset = dataclasses.replace(get_preset("low-latency"), hop_frames=hop, window_frames=window,
                                     model_lookahead_frames=ahead, crossfade_frames=0)
        for i in range(len(batch["feats"])):
            # the clip and hop frame this window was cut from (the features past the hop differ from the clip's)
            (clip, w0), = [(c, w0) for c in train_clips for w0 in range(len(c.expr))
                           if np.array_equal(batch["expr"][i], take(c.expr, w0 - C, C + cfg.train_window_frames))
                           and np.array_equal(batch["feats"][i], take(c.feats, w0 - E, E + cfg.train_window_frames
                                                                      + L).astype(np.float32))][:1]
            heard = min(w0 + hop + ahead, len(clip.feats))  # what the hop waits for (the clip's end: all of it)
            state = StreamState("s", cfg, preset, front_end)
            state.add_features(0, heard, clip.feats[:heard].astype(np.float32), clip.prosody[:heard])
            if heard == len(clip.feats):
                state.end()
            state.skip_to(w0)
            engine = state.hop_window(Hop(skip=0, frames=hop, catch_up=False))
            np.testing.assert_array_equal(live["feats"][i], engine.feats)
            np.testing.assert_array_equal(live["prosody"][i], engine.prosody)
            np.testing.assert_array_equal(live["known"][i, :C], engine.known)
        for key in ("expr", "pose", "key_expr", "key_pose", "known"):
            np.testing.assert_array_equal(live[key], batch[key][:, : C + window])
        assert live["score"].shape == (8, window) and live["score"].sum() == 8 * hop
        assert live["score"][:, :hop].all()
        assert np.array_equal(live["ref_a_expr"], batch["ref_a_expr"]) and "score" not in batch
    with pytest.raises(ValueError, match="lookahead"):
        live_windows(batch, cfg, 1, 8, L + 1)
    with pytest.raises(ValueError, match="training window"):
        live_windows(batch, cfg, 1, cfg.train_window_frames + 1, 2)


def test_live_batches_reach_every_frame_of_a_clip_with_live_features(data: Data, train_clips: list[Clip]) -> None:
    cfg = data.cfg
    N, E, C = cfg.train_window_frames, cfg.encoder_context_frames, cfg.motion_context_frames
    batch = WindowSampler(train_clips, cfg, seed=4).batch(200, live=True)
    late = 0
    for i in range(200):
        hits = [(c, w0) for c in train_clips for w0 in range(len(c.expr))
                if np.array_equal(batch["expr"][i], take(c.expr, w0 - C, C + N))]
        clip, w0 = hits[0]
        late += w0 > len(clip.expr) - N  # a hop frame a whole window could not start at
        assert any(np.array_equal(batch["feats"][i], take(c.feats, w0 - E, E + N + cfg.lookahead_frames)
                                  .astype(np.float32)) for c, w0 in hits)  # never the bake's features
    assert late > 0


def test_live_features_are_the_live_presets_own_schedule(data: Data, train_clips: list[Clip]) -> None:
    """build_live_cache: each training clip's features as a low-latency stream computes them (its feature
    lookahead, recogniser context and one-frame groups), kept once; live batches read them, others do not."""
    preset = get_preset("low-latency")
    live = preset.front_end_config(data.cfg.front_end)
    folder = build_live_cache(data.corpus, data.cache, data.cfg, live, preset.feature_block_frames, workers=1)
    stamps = {f.name: f.stat().st_mtime_ns for f in folder.glob("*.npz")}
    assert len(stamps) == len(train_clips)
    assert build_live_cache(data.corpus, data.cache, data.cfg, live, preset.feature_block_frames, workers=1) == folder
    assert {f.name: f.stat().st_mtime_ns for f in folder.glob("*.npz")} == stamps  # nothing recomputed
    other = build_live_cache(data.corpus, data.cache, data.cfg, live, 2, workers=1)
    assert other != folder  # another schedule, another key
    clips = load_clips(data.corpus, data.cache, data.cfg, "train", keep_audio=True, live_cache=folder)
    front_end = make_front_end(live)
    for clip in clips:
        assert clip.feats_live is not None and clip.feats_live.shape == clip.feats.shape
        np.testing.assert_array_equal(clip.feats_live, front_end.grouped(clip.audio, 1).astype(np.float16))
        assert np.abs(clip.feats_live.astype(np.float32) - clip.feats).max() > 0.05  # not the block schedule's
    cfg = data.cfg
    N, E, C, L = cfg.train_window_frames, cfg.encoder_context_frames, cfg.motion_context_frames, cfg.lookahead_frames
    for is_live in (True, False):
        batch = WindowSampler(clips, cfg, seed=5).batch(40, live=is_live)
        for i in range(40):
            hits = [(c, w0) for c in clips for w0 in range(len(c.expr))
                    if np.array_equal(batch["expr"][i], take(c.expr, w0 - C, C + N))]
            from_live = any(np.array_equal(batch["feats"][i], take(c.feats_live, w0 - E, E + N + L).astype(np.float32))
                            for c, w0 in hits)
            assert from_live == is_live


def test_train_config_rejects_a_bad_live_share_or_preset() -> None:
    with pytest.raises(ValueError, match="share of steps"):
        TrainConfig(live_windows=1.5)
    with pytest.raises(ValueError, match="low-latency"):
        TrainConfig(live_preset="fast")
    with pytest.raises(ValueError, match="'self' or 'teacher'"):
        TrainConfig(live_context="own")
    with pytest.raises(ValueError, match="'block' or 'preset'"):
        TrainConfig(live_features="stream")
    with pytest.raises(ValueError, match="1-step sampler"):
        TrainConfig(live_windows=0.5, live_preset="quality")  # its 4 steps: no own context to make
    assert TrainConfig(live_windows=0.5, live_preset="quality", live_context="teacher").live_preset == "quality"
    assert TrainConfig(live_preset="quality").live_windows == 0.0  # not used: not checked
    for share in (-0.1, 1.5):
        with pytest.raises(ValueError, match="context_drop"):
            TrainConfig(context_drop=share)
    with pytest.raises(ValueError, match="give init_from"):
        TrainConfig(train_only="den_expr")


# --- train and eval commands ---------------------------------------------------------------------
def write_config(data: Data, out: Path, path: Path) -> Path:
    model = "\n".join(f"{k} = {v}" for k, v in TINY_MODEL.items())
    path.write_text(
        f"[model]\n{model}\n\n[model.front_end]\nname = \"ppg\"\n\n"
        f"[train]\ncorpus = \"{data.corpus}\"\ncache = \"{data.cache}\"\nout = \"{out}\"\n"
        "batch_size = 4\nmax_steps = 3\ncheckpoint_every = 1\nlog_every = 1\nwarmup_steps = 2\n"
        "workers = 1\ndevice = \"cpu\"\n"
    )
    return path


@pytest.fixture(scope="module")
def run_dir(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("run")
    out = folder / "run"
    config = write_config(data, out, folder / "tiny.toml")
    try:
        assert main(["train", "--config", str(config)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def losses(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines() if line.strip()]


def test_train_writes_a_loadable_checkpoint_and_resumes(run_dir: Path, keep_torch_threads: None) -> None:
    last = run_dir / "last.pt"
    model = load_model(last)
    assert model.cfg.d_model == TINY_MODEL["d_model"] and not model.training
    assert read_checkpoint(last)["step"] == 3
    rows = losses(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["total"]) for r in rows)
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    assert saved["model"]["d_model"] == TINY_MODEL["d_model"] and saved["train"]["max_steps"] == 3
    before = {k: v.clone() for k, v in model.state_dict().items()}

    config = run_dir.parent / "tiny.toml"
    assert main(["train", "--config", str(config), "--max-steps", "5", "--lr", "2e-4", "--warmup-steps", "0"]) == 0
    assert read_checkpoint(last)["step"] == 5
    rows = losses(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # resumed at 3, not restarted
    saved = tomllib.loads((run_dir / "config.toml").read_text())["train"]
    assert (saved["lr"], saved["warmup_steps"]) == (2e-4, 0)  # the flags win over the config
    assert rows[3]["lr"] == pytest.approx(lr_at(4, TrainConfig(lr=2e-4, warmup_steps=0, max_steps=5)))
    after = load_model(last).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_train_on_live_windows_only(data: Data, tmp_path: Path, keep_torch_threads: None) -> None:
    out = tmp_path / "live"
    config = write_config(data, out, tmp_path / "tiny.toml")
    assert main(["train", "--config", str(config), "--max-steps", "2", "--live-windows", "1",
                 "--closure-weight", "0.5", "--live-face-only", "--live-features", "preset"]) == 0
    rows = losses(out)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["total"]) for r in rows)
    assert [r["live"] for r in rows] == [1.0, 1.0]  # every step was live-shaped
    assert all(r["x0_pose"] == 0.0 and r["x0_expr"] > 0 for r in rows)  # the face only
    saved = tomllib.loads((out / "config.toml").read_text())["train"]
    assert saved["live_windows"] == 1.0 and saved["live_head"] is False and saved["live_features"] == "preset"
    assert any(data.cache.glob("*-live-*/schedule.json"))  # the preset's features, computed for the run
    with pytest.raises(SystemExit, match="error: live_windows is a share of steps"):  # a line, not a traceback
        main(["train", "--config", str(config), "--live-windows", "2"])


def fine_tune(run_dir: Path, data: Data, tmp_path: Path, *flags: str) -> tuple[Path, set[str]]:
    """A 2-step fine-tune of the run's checkpoint with ``flags``: its config and the weights it moved."""
    config = write_config(data, tmp_path / "tuned", tmp_path / "tiny.toml")
    start = load_model(run_dir / "last.pt").state_dict()
    assert main(["train", "--config", str(config), "--init-from", str(run_dir / "last.pt"), "--max-steps", "2",
                 "--warmup-steps", "0", "--lr", "1e-2", *flags]) == 0
    after = load_model(tmp_path / "tuned" / "last.pt").state_dict()
    return config, {k for k in start if not torch.equal(start[k], after[k])}


def test_a_fine_tune_of_one_module_leaves_every_other_weight_as_it_was(run_dir: Path, data: Data, tmp_path: Path,
                                                                        keep_torch_threads: None) -> None:
    """train --init-from X --train-only den_expr --context-drop: only the expression denoiser moves."""
    config, moved = fine_tune(run_dir, data, tmp_path, "--train-only", "den_expr", "--context-drop", "0.5")
    assert moved and all(k.startswith("den_expr.") for k in moved), sorted(moved)[:5]
    saved = tomllib.loads((tmp_path / "tuned" / "config.toml").read_text())["train"]
    assert saved["train_only"] == "den_expr" and saved["context_drop"] == 0.5
    with pytest.raises(SystemExit, match="no module den_face in the model; it has head, encoder"):
        main(["train", "--config", str(config), "--init-from", str(run_dir / "last.pt"), "--out", str(tmp_path / "x"),
              "--train-only", "den_face"])
    with pytest.raises(SystemExit, match="same --train-only"):  # its optimiser state is den_expr's alone
        main(["train", "--config", str(config), "--init-from", str(run_dir / "last.pt"), "--max-steps", "3"])


def test_a_fine_tune_of_the_head_leaves_the_face_to_the_bit(run_dir: Path, data: Data, tmp_path: Path,
                                                           keep_torch_threads: None) -> None:
    """train --train-only head: only the head's own branch (model/ksdiff.py's HEAD_MODULES) moves."""
    _, moved = fine_tune(run_dir, data, tmp_path, "--train-only", "head", "--live-windows", "0.5")
    assert moved and all(is_pose_branch(k) for k in moved), sorted(moved)[:5]
    assert any(k.startswith("encoder.pose_") for k in moved)  # the encoder's pose path too, not only top modules
    assert tomllib.loads((tmp_path / "tuned" / "config.toml").read_text())["train"]["train_only"] == "head"


def test_the_context_drop_reaches_live_windows_only_when_asked(data: Data, tmp_path: Path, keep_torch_threads: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A live-shaped window's context is the model's own rollout: it is hidden only with --context-drop-live."""
    from ksdiff_runtime.model.ksdiff import KSDiff

    calls: list[tuple[bool, float]] = []
    loss = KSDiff.training_loss

    def spy(self: KSDiff, batch: dict, **kw: float) -> dict:
        calls.append(("t" in batch, kw.get("context_drop", 0.0)))  # live batches carry their noise steps
        return loss(self, batch, **kw)

    monkeypatch.setattr(KSDiff, "training_loss", spy)
    config = write_config(data, tmp_path / "run", tmp_path / "tiny.toml")
    assert main(["train", "--config", str(config), "--max-steps", "8", "--live-windows", "0.5",
                 "--context-drop", "0.5"]) == 0
    assert {live for live, _ in calls} == {True, False}
    assert all(drop == (0.0 if live else 0.5) for live, drop in calls)
    # --context-drop-live: the live-shaped windows too
    calls.clear()
    config = write_config(data, tmp_path / "run-live", tmp_path / "tiny-live.toml")
    assert main(["train", "--config", str(config), "--max-steps", "8", "--live-windows", "0.5",
                 "--context-drop", "0.5", "--context-drop-live"]) == 0
    assert {live for live, _ in calls} == {True, False}
    assert all(drop == 0.5 for _, drop in calls)


def test_eval_stream_scores_lines_from_the_preset_asked_for(run_dir: Path, data: Data, tmp_path: Path) -> None:
    argv = ["eval-stream", "--checkpoint", str(run_dir / "last.pt"), "--corpus", str(data.corpus), "--cache",
            str(data.cache), "--max-clips", "1", "--variant", "quality", "--lines", "1", "--line-preset",
            "low-latency:head_smoothing_ms=0.0", "--out", str(tmp_path)]
    with np.errstate(all="ignore"):
        assert main(argv) == 0
    rows = json.loads((tmp_path / "stream_quality.json").read_text())["rows"]
    assert any(label.startswith("lines (1 steps") and label.endswith("from low-latency[head_smoothing_ms=0.0]")
               for label in rows), list(rows)


def test_eval_stream_gives_the_network_the_null_style_when_asked(run_dir: Path, data: Data, tmp_path: Path) -> None:
    """--null-style: every row as `serve` runs the network (the null style), not with each clip's reference."""
    results = {}
    for name, extra in (("reference", []), ("null", ["--null-style"])):
        out = tmp_path / name
        argv = ["eval-stream", "--checkpoint", str(run_dir / "last.pt"), "--corpus", str(data.corpus), "--cache",
                str(data.cache), "--max-clips", "1", "--variant", "low-latency", "--out", str(out), *extra]
        with np.errstate(all="ignore"):
            assert main(argv) == 0
        results[name] = json.loads((out / "stream_quality.json").read_text())
        assert results[name]["style"] == name
    assert "null style" in (tmp_path / "null" / "stream_quality.md").read_text()
    for label, row in results["null"]["rows"].items():  # every row moved: the style reached each of them
        assert row["mouth_mae"] != results["reference"]["rows"][label]["mouth_mae"], label


def test_eval_stream_scores_the_bilabial_closure_when_asked(run_dir: Path, data: Data, tmp_path: Path) -> None:
    argv = ["eval-stream", "--checkpoint", str(run_dir / "last.pt"), "--corpus", str(data.corpus), "--cache",
            str(data.cache), "--max-clips", "2", "--variant", "low-latency", "--closure", "--out", str(tmp_path)]
    with np.errstate(all="ignore"):
        assert main(argv) == 0
    rows = json.loads((tmp_path / "stream_quality.json").read_text())["rows"]
    closed = [label for label in rows if label.endswith(", bilabial closure")]
    assert len(closed) == 1, list(rows)
    plain = closed[0].removesuffix(", bilabial closure")
    # the same streams, seeds and model frames: the closure only ever closes lips
    assert rows[closed[0]]["bilabial_closure"] >= rows[plain]["bilabial_closure"]
    assert rows[closed[0]]["motion_beats_per_s"] == rows[plain]["motion_beats_per_s"]  # the head untouched
    assert rows[closed[0]]["mouth_mae"] != rows[plain]["mouth_mae"]  # the closure ran


@pytest.mark.timeout(900)  # about 1-2 min on a busy 2-core machine
def test_eval_reports_every_row(run_dir: Path, data: Data, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(run_dir / "last.pt"), "--corpus", str(data.corpus), "--cache",
            str(data.cache), "--max-clips", "2", "--out", str(out)]
    with np.errstate(all="ignore"):
        assert main(argv) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["held_out_clips"] == 2
    rows = result["rows"]
    for name in ("KSDiff 50 steps", "KSDiff 4 steps", "KSDiff 2 steps", "mean-pose baseline", "teacher"):
        assert name in rows, name
    assert rows["teacher"]["bilabial_closure"] >= 0.9
    assert rows["teacher"]["mouth_mae"] == 0.0 and rows["teacher"]["jaw_corr"] == pytest.approx(1.0)
    assert rows["mean-pose baseline"]["mae_vs_baseline"] == pytest.approx(1.0)
    assert rows["mean-pose baseline"]["jaw_corr"] == 0.0  # a constant track: 0, never NaN
    by_shape = rows["KSDiff 4 steps"]["mouth_mae_by_shape"]  # the mouth MAE, blendshape by blendshape
    assert list(by_shape) == list(motion.MOUTH_BLENDSHAPES)
    assert np.mean(list(by_shape.values())) == pytest.approx(rows["KSDiff 4 steps"]["mouth_mae"], abs=1e-5)
    assert rows["teacher"]["smile_level_r"] == pytest.approx(1.0)
    assert rows["mean-pose baseline"]["smile_level_r"] == 0.0
    # a posteriorgram model's 4-step frames with the bilabial closure bake and serve apply: it only ever closes
    # lips, and leaves the head as it is
    closed, plain = rows[CLOSURE_ROW], rows["KSDiff 4 steps"]
    assert closed["bilabial_closure"] >= plain["bilabial_closure"]
    assert closed["motion_beats_per_s"] == plain["motion_beats_per_s"]
    assert closed["mouth_mae"] != plain["mouth_mae"]  # the closure ran
    assert result["targets"]["bilabial_closure"] == " ".join(map(str, TARGETS["bilabial_closure"]))
    assert "where the mouth error is" in (out / "eval.md").read_text()
    assert (out / "eval.md").is_file() and (out / "eval.png").is_file()


def test_eval_quick_gives_the_full_tables_4_step_row_side_by_side(run_dir: Path, data: Data, tmp_path: Path) -> None:
    common = ["--checkpoint", str(run_dir / "last.pt"), "--corpus", str(data.corpus), "--cache", str(data.cache),
              "--max-clips", "2"]
    with np.errstate(all="ignore"):
        assert main(["eval", *common, "--out", str(tmp_path / "full")]) == 0
        assert main(["eval", *common, "--quick", "--ablation", f"again={run_dir / 'last.pt'}",
                     "--out", str(tmp_path / "quick")]) == 0
    full = json.loads((tmp_path / "full" / "eval.json").read_text())["rows"]
    quick = json.loads((tmp_path / "quick" / "quick.json").read_text())
    assert set(quick) == {"checkpoint", "again"}
    for name in quick:
        rows = quick[name]["rows"]
        assert set(rows) == {"4 steps", "4 steps, streaming features"}
        for key, value in full["KSDiff 4 steps"].items():
            if key in rows["4 steps"] and value is not None:
                assert rows["4 steps"][key] == pytest.approx(value), key
        for key, value in full["4 steps, streaming features"].items():
            if key in rows["4 steps, streaming features"] and value is not None:
                assert rows["4 steps, streaming features"][key] == pytest.approx(value), key
    assert "| again | 4 steps |" in (tmp_path / "quick" / "quick.md").read_text()


def test_the_smile_probe_runs_on_a_trained_model(run_dir: Path, data: Data, tmp_path: Path) -> None:
    from benchmarks import smile_probe

    out = tmp_path / "smile.json"
    with np.errstate(all="ignore"):
        result = smile_probe.main(["--checkpoint", str(run_dir / "last.pt"), "--corpus", str(data.corpus), "--cache",
                                   str(data.cache), "--clips", "2", "--seeds", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result and result["clips"] == 2
    assert set(result["mae_vs_baseline_by_shift"]) == {"-2", "-1", "0", "1", "2"}
    assert set(result["mae_vs_baseline_by_steps"]) == {"1", "2", "4"}
    assert result["smile"]["from_style_vector_r"] is None  # two clips: too few to leave one out
    assert 0.0 < result["smile"]["share_of_mouth_error"] < 1.0


def test_eval_scores_a_checkpoint_on_the_streaming_recognisers_features(run_dir: Path, data: Data,
                                                                         tmp_path: Path) -> None:
    """``--recogniser streaming``: the same checkpoint on the features the runtime serves, cached apart."""
    common = ["--checkpoint", str(run_dir / "last.pt"), "--corpus", str(data.corpus), "--cache", str(data.cache),
              "--max-clips", "2", "--quick"]
    with np.errstate(all="ignore"):
        assert main(["eval", *common, "--out", str(tmp_path / "own")]) == 0
        assert main(["eval", *common, "--recogniser", "streaming", "--out", str(tmp_path / "streaming")]) == 0
    streaming_cfg = ModelConfig(**TINY_MODEL, front_end=dataclasses.replace(data.cfg.front_end, recogniser="streaming"))
    assert (data.cache / front_end_key(streaming_cfg) / "front_end.json").is_file()
    own, streaming = (json.loads((tmp_path / d / "quick.json").read_text())["checkpoint"]["rows"]["4 steps"]
                      for d in ("own", "streaming"))
    assert own["mouth_mae"] != streaming["mouth_mae"]  # other features, another animation
    with pytest.raises(SystemExit):
        main(["eval", *common, "--recogniser", "hama"])
