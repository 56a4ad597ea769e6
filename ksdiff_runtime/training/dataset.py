"""Training data: the generated corpus, its cached features, and random windows for the trainer.

Feature cache: the front-end (hama posteriorgram + log-mel by default) is the slow part of
reading a clip, so it runs once per clip and front-end and is stored under
``<cache>/<front-end key>/<clip id>.npz``: ``stream`` float16 [T, F] (the blockwise schedule a
live stream computes), ``offline`` float16 [T, F] (one pass over the whole clip, what a bake
computes), prosody float32 [T, 2], text int64 [P]. The model is trained on both schedules so
the same weights serve live streams and offline bakes. The key includes the front-end
settings, so changing them never reuses stale features.

Live features (``build_live_cache``): a preset's own schedule, the features a live stream of that preset
computes (its feature lookahead, recogniser context and groups of ``feature_block_frames``), stored under
``<cache>/<live key>/<clip id>.npz`` as ``live`` float16 [T, F] for the trainer's live-shaped windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ksdiff_runtime.features.frontend import BlockwiseFrontEnd, FrontEndConfig, make_front_end
from ksdiff_runtime.features.prosody import normalized_prosody, prosody
from ksdiff_runtime.features.transcript import phoneme_tokens
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.motion import take_frames

from .keyframes import expression_keyframes, pose_keyframes


@dataclass
class Clip:
    id: str
    split: str
    persona: int
    style: np.ndarray  # [6]
    text: str
    feats: np.ndarray  # [T, F] float16, streaming (blockwise) schedule
    feats_offline: np.ndarray  # [T, F] float16, offline (whole-clip) schedule
    prosody: np.ndarray  # [T, 2]
    tokens: np.ndarray  # [P]
    expr: np.ndarray  # [T, 52]
    pose: np.ndarray  # [T, 3]
    key_expr: np.ndarray  # [T] bool
    key_pose: np.ndarray  # [T] bool
    silent: np.ndarray  # [T] bool
    phonemes: np.ndarray  # [P] str
    phoneme_start: np.ndarray  # [P] s
    phoneme_dur: np.ndarray  # [P] s
    viseme: np.ndarray  # [P] str
    audio: np.ndarray | None = None  # 16 kHz, kept only when asked (evaluation)
    feats_live: np.ndarray | None = None  # [T, F] float16, a live preset's own schedule (build_live_cache)


class CorpusError(ValueError):
    """A corpus folder that cannot be used (missing, cut short, not a corpus); the message names the file."""


def read_manifest(corpus: Path) -> dict:
    path = Path(corpus) / "manifest.json"
    if not path.is_file():
        # (`corpus` writes the manifest last: a folder of clips without it is a generation that was stopped)
        raise CorpusError(f"no corpus at {corpus} (missing {path}; a `corpus` run stopped before the end leaves "
                          "none); run `ksdiff-runtime corpus` first, or again")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorpusError(f"corpus manifest {path} is corrupt ({exc}); run `ksdiff-runtime corpus` again") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("clips"), list):
        raise CorpusError(f"{path} is not a corpus manifest (no 'clips' list)")
    return manifest


def check_clip_files(corpus: Path, manifest: dict) -> None:
    """CorpusError naming the clips the manifest lists but the folder lacks (a copy cut short, clips deleted),
    before a worker pool fails on the first of them."""
    missing = [c["file"] for c in manifest["clips"] if not (Path(corpus) / c["file"]).is_file()]
    if missing:
        raise CorpusError(f"corpus {corpus}: {len(missing)} of its {len(manifest['clips'])} clips are missing "
                          f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); copy them over or run "
                          "`ksdiff-runtime corpus` again")


# Front-end settings added after caches were built, left out of the key at these values: those caches stay valid
_KEY_DEFAULTS = {"recogniser": "full-context"}


def front_end_key(cfg: ModelConfig) -> str:
    settings = {k: v for k, v in cfg.front_end_dict().items() if _KEY_DEFAULTS.get(k, ...) != v}
    spec = json.dumps(settings, sort_keys=True)
    return f"{cfg.front_end.name}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


@lru_cache(maxsize=2)
def _front_end(config_json: str) -> BlockwiseFrontEnd:
    """One front-end per worker process (loading the recogniser once, not once per clip)."""
    return make_front_end(FrontEndConfig(**json.loads(config_json)))


def _compute_features(job: tuple[str, str, str, str]) -> str:
    """Worker: features for one clip into its cache file (skipped if present)."""
    clip_path, text, out_path, front_end_json = job
    out = Path(out_path)
    if out.is_file():
        return out_path
    front_end = _front_end(front_end_json)
    data = np.load(clip_path)
    audio = data["audio"].astype(np.float32)
    stream = front_end(audio).astype(np.float16)
    offline = front_end.offline(audio).astype(np.float16)
    pros = normalized_prosody(prosody(audio)).astype(np.float32)
    tokens = phoneme_tokens(text) if text else np.zeros(0, dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    np.savez(tmp, stream=stream, offline=offline, prosody=pros, text=tokens)
    tmp.replace(out)
    return out_path


def _live_schedule(live: FrontEndConfig, group_frames: int) -> dict:
    """What a live schedule is: its front-end settings and its groups (the cache key's input, its schedule.json)."""
    return {"front_end": dataclasses.asdict(live), "group_frames": group_frames}


def live_key(cfg: ModelConfig, live: FrontEndConfig, group_frames: int) -> str:
    """The cache folder of a live schedule's features: the model's front-end, the schedule's settings, its groups."""
    spec = json.dumps(_live_schedule(live, group_frames), sort_keys=True)
    return f"{front_end_key(cfg)}-live-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def _compute_live_features(job: tuple[str, str, str, int]) -> str:
    """Worker: one clip's features by a live schedule into its cache file (skipped if present)."""
    clip_path, out_path, front_end_json, group_frames = job
    out = Path(out_path)
    if not out.is_file():
        audio = np.load(clip_path)["audio"].astype(np.float32)
        live = _front_end(front_end_json).grouped(audio, group_frames).astype(np.float16)
        tmp = out.with_name(out.stem + ".tmp.npz")
        np.savez(tmp, live=live)
        tmp.replace(out)
    return out_path


def build_live_cache(corpus: Path, cache: Path, cfg: ModelConfig, live: FrontEndConfig, group_frames: int,
                     split: str = "train", workers: int = 2) -> Path:
    """Features by a live schedule (a preset's ``front_end_config`` and ``feature_block_frames``) for the
    split's clips, computed where missing; returns the cache folder."""
    manifest = read_manifest(corpus)
    folder = Path(cache) / live_key(cfg, live, group_frames)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schedule.json").write_text(json.dumps(_live_schedule(live, group_frames), indent=2))
    drop_stale(corpus, folder, [c for c in manifest["clips"] if c["split"] == split])
    live_json = json.dumps(dataclasses.asdict(live))
    jobs = [(str(Path(corpus) / c["file"]), str(folder / f"{c['id']}.npz"), live_json, group_frames)
            for c in manifest["clips"] if c["split"] == split and not (folder / f"{c['id']}.npz").is_file()]
    if jobs:
        with mp.get_context("fork").Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(_compute_live_features, jobs, chunksize=4), total=len(jobs),
                          desc=f"live features (groups of {group_frames})", unit="clip"):
                pass
    return folder


SOURCES = "sources.json"  # a cache folder's record of what each clip's features were computed from


def _source(corpus: Path, entry: dict) -> str:
    """What a clip's cached features were computed from, and only that: its audio (the CRC and size of the clip
    file's audio array, from the zip's directory: nothing decoded) and its text. Not the rest of its manifest entry:
    corpora made from another (self_targets, stop_timing) point at that corpus's clip files, with the same features,
    and share its cache; a corpus made again in the same folder (another seed, more personas) changes the audio."""
    clip = Path(corpus) / entry["file"]
    try:
        with zipfile.ZipFile(clip) as zf:
            info = zf.getinfo("audio.npy")
        audio = f"{info.CRC:08x}-{info.file_size}"
    except (OSError, KeyError, zipfile.BadZipFile):  # not a zip of arrays: the file as it is on the disk
        stat = clip.stat()
        audio = f"{stat.st_size}-{stat.st_mtime_ns}"
    return hashlib.sha1(f"{audio}\n{entry.get('text', '')}".encode()).hexdigest()[:16]


def drop_stale(corpus: Path, folder: Path, entries: list[dict]) -> None:
    """Delete the cached features in ``folder`` of clips whose audio or text changed since they were computed
    (``_source``), and record the entries' sources. Clip ids repeat from corpus to corpus (c00000, ...): without
    this, a corpus made again in the same folder would be trained on the old clips' features (or fail on their
    lengths). A cache from before the record is trusted as it is (recomputing it would cost hours)."""
    path = Path(folder) / SOURCES
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        known = {}
    sources = {c["id"]: _source(corpus, c) for c in entries}
    for clip_id, source in sources.items():
        if known.get(clip_id, source) != source:
            (Path(folder) / f"{clip_id}.npz").unlink(missing_ok=True)
    # recorded before the features are computed: a file present is then always one of the recorded source's
    tmp = path.with_name(f"{SOURCES}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**known, **sources}, indent=0, sort_keys=True))
    os.replace(tmp, path)


def build_feature_cache(corpus: Path, cache: Path, cfg: ModelConfig, workers: int = 2) -> Path:
    """Compute missing (or stale: drop_stale) features for every clip of the corpus; returns the cache folder."""
    manifest = read_manifest(corpus)
    check_clip_files(corpus, manifest)
    folder = Path(cache) / front_end_key(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "front_end.json").write_text(json.dumps(cfg.front_end_dict(), indent=2))
    drop_stale(corpus, folder, manifest["clips"])
    jobs = []
    for c in manifest["clips"]:
        out = folder / f"{c['id']}.npz"
        if not out.is_file():
            jobs.append((str(Path(corpus) / c["file"]), c["text"], str(out), json.dumps(cfg.front_end_dict())))
    if not jobs:
        return folder
    with mp.get_context("fork").Pool(workers) as pool:
        for _ in tqdm(
            pool.imap_unordered(_compute_features, jobs, chunksize=4),
            total=len(jobs),
            desc=f"features ({cfg.front_end.name})",
            unit="clip",
        ):
            pass
    return folder


def load_clips(
    corpus: Path, cache: Path, cfg: ModelConfig, split: str, keep_audio: bool = False, limit: int = 0,
    live_cache: Path | None = None,
) -> list[Clip]:
    """The split's clips in manifest order (the first ``limit`` of them when limit > 0); with ``live_cache``
    (``build_live_cache``'s folder) each with its live schedule's features."""
    manifest = read_manifest(corpus)
    folder = Path(cache) / front_end_key(cfg)
    personas: dict[str, int] = {}
    clips = []
    entries = [c for c in manifest["clips"] if c["split"] == split]
    entries = entries[:limit] if limit > 0 else entries
    for c in tqdm(entries, desc=f"loading {split}", unit="clip", leave=False):
        data = np.load(Path(corpus) / c["file"])
        cached = np.load(folder / f"{c['id']}.npz")
        expr, pose = data["blendshapes"].astype(np.float32), data["head"].astype(np.float32)
        T = len(expr)
        feats = cached["stream"]
        if len(feats) != T:
            raise ValueError(f"clip {c['id']}: {len(feats)} feature frames but {T} motion frames")
        clips.append(
            Clip(
                id=c["id"],
                split=c["split"],
                persona=personas.setdefault(c["persona"], len(personas)),
                style=np.asarray(c["style"], dtype=np.float32),
                text=c["text"],
                feats=feats,
                feats_offline=cached["offline"],
                prosody=cached["prosody"],
                tokens=cached["text"],
                expr=expr,
                pose=pose,
                key_expr=expression_keyframes(expr),
                key_pose=pose_keyframes(pose),
                silent=data["silent"].astype(bool),
                phonemes=data["phonemes"],
                phoneme_start=data["phoneme_start"],
                phoneme_dur=data["phoneme_dur"],
                viseme=data["viseme"],
                audio=data["audio"] if keep_audio else None,
                feats_live=None if live_cache is None else _live_feats(live_cache, c["id"], T),
            )
        )
    return clips


def _live_feats(folder: Path, clip_id: str, frames: int) -> np.ndarray:
    feats = np.load(Path(folder) / f"{clip_id}.npz")["live"]
    if len(feats) != frames:
        raise ValueError(f"clip {clip_id}: {len(feats)} live feature frames but {frames} motion frames")
    return feats


class WindowSampler:
    """Random training windows in the layout KSDiff.training_loss expects."""

    def __init__(self, clips: list[Clip], cfg: ModelConfig, seed: int = 0, p_offline: float = 0.5) -> None:
        self.p_offline = p_offline
        self.clips = clips
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        lengths = np.array([len(c.expr) for c in clips], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.by_persona: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            self.by_persona.setdefault(c.persona, []).append(i)

    def _reference(self, persona: int, avoid: int) -> tuple[np.ndarray, np.ndarray]:
        options = [i for i in self.by_persona[persona] if i != avoid] or [avoid]
        clip = self.clips[options[self.rng.integers(len(options))]]
        L = self.cfg.style_clip_frames
        start = int(self.rng.integers(0, max(1, len(clip.expr) - L + 1)))
        return take_frames(clip.expr, start, L), take_frames(clip.pose, start, L)

    def batch(self, size: int, live: bool = False, lead: int = 0) -> dict[str, np.ndarray]:
        """``size`` windows. ``live``: windows to cut with ``live_windows``: with the live preset's own
        features where the clips have them (``feats_live``), else the block schedule's (``feats``), starting
        ``lead`` frames before a hop frame that may be any frame of a clip from the ``lead``-th on (its last
        too)."""
        cfg = self.cfg
        C, N, E, L = (
            cfg.motion_context_frames,
            cfg.train_window_frames,
            cfg.encoder_context_frames,
            cfg.lookahead_frames,
        )
        out: dict[str, list] = {
            k: []
            for k in (
                "feats",
                "prosody",
                "text",
                "expr",
                "pose",
                "key_expr",
                "key_pose",
                "known",
                "ref_a_expr",
                "ref_a_pose",
                "ref_b_expr",
                "ref_b_pose",
                "persona",
            )
        }
        for ci in self.rng.choice(len(self.clips), size=size, p=self.weights):
            clip = self.clips[ci]
            T = len(clip.expr)
            # windows start anywhere, including the clip start (no previous frames known)
            if live:
                w0 = int(self.rng.integers(0, max(1, T - lead)))
                feats = clip.feats if clip.feats_live is None else clip.feats_live
            else:
                w0 = int(self.rng.integers(0, max(1, T - N + 1)))
                feats = clip.feats_offline if self.rng.random() < self.p_offline else clip.feats
            out["feats"].append(take_frames(feats, w0 - E, E + N + L).astype(np.float32))
            out["prosody"].append(take_frames(clip.prosody, w0 - E, E + N + L))
            out["text"].append(clip.tokens)
            out["expr"].append(take_frames(clip.expr, w0 - C, C + N))
            out["pose"].append(take_frames(clip.pose, w0 - C, C + N))
            frames = np.arange(w0 - C, w0 + N)
            inside = (frames >= 0) & (frames < T)
            out["key_expr"].append(take_frames(clip.key_expr, w0 - C, C + N) & inside)
            out["key_pose"].append(take_frames(clip.key_pose, w0 - C, C + N) & inside)
            known = np.zeros(C + N, dtype=np.float32)
            known[:C] = frames[:C] >= 0
            out["known"].append(known)
            a = self._reference(clip.persona, avoid=int(ci))
            b = self._reference(clip.persona, avoid=int(ci))
            out["ref_a_expr"].append(a[0])
            out["ref_a_pose"].append(a[1])
            out["ref_b_expr"].append(b[0])
            out["ref_b_pose"].append(b[1])
            out["persona"].append(clip.persona)
        P = max(1, max(len(t) for t in out["text"]))
        text = np.zeros((size, P), dtype=np.int64)
        for i, t in enumerate(out["text"]):
            text[i, : len(t)] = t
        batch = {k: np.stack(v) for k, v in out.items() if k != "text"}
        batch["text"] = text
        return batch


def check_live_shape(cfg: ModelConfig, hop_frames: int, window_frames: int, lookahead_frames: int,
                     at: int = 0) -> None:
    """A clear error when a model cannot be trained on live windows of this shape (live_windows)."""
    N, L = cfg.train_window_frames, cfg.lookahead_frames
    if not (1 <= hop_frames <= window_frames and at >= 0 and at + window_frames <= N):
        raise ValueError(f"live windows need 1 <= hop_frames <= window_frames <= {N} - at (the training window), "
                         f"got hop {hop_frames}, window {window_frames} at frame {at}")
    if not 0 <= lookahead_frames <= L:
        raise ValueError(f"live windows look 0..{L} frames ahead (the model's lookahead), not {lookahead_frames}")


def live_windows(batch: dict[str, np.ndarray], cfg: ModelConfig, hop_frames: int, window_frames: int,
                 lookahead_frames: int, at: int = 0) -> dict[str, np.ndarray]:
    """Training windows (WindowSampler.batch) cut to the shape a live hop denoises: ``window_frames``
    frames, the first ``hop_frames`` of them the hop's, whose features run ``lookahead_frames`` past the
    hop's last frame; the frames after are provisional, their features the last known one repeated (as
    the engine pads a hop). Only the hop's frames are scored (``score``): the engine publishes them and
    discards the rest. A window frame j reads the features up to position E + j + cfg.lookahead_frames.
    The hop starts at window frame ``at`` of the batch's windows (its context: the C frames before it).
    Cut windows WindowSampler.batch(live=True) drew: the live schedule's features, hops anywhere in a clip.
    (A `low-latency` stream's own features come from 1-frame blocks read early: close to these, not equal.)"""
    check_live_shape(cfg, hop_frames, window_frames, lookahead_frames, at)
    C, E, L = cfg.motion_context_frames, cfg.encoder_context_frames, cfg.lookahead_frames
    S = E + window_frames + L
    last_known = E + hop_frames - 1 + lookahead_frames
    idx = at + np.minimum(np.arange(S), last_known)
    out = dict(batch)
    out["feats"] = batch["feats"][:, idx]
    out["prosody"] = batch["prosody"][:, idx]
    for key in ("expr", "pose", "key_expr", "key_pose", "known"):
        out[key] = batch[key][:, at : at + C + window_frames]
    score = np.zeros((len(batch["expr"]), window_frames), np.float32)
    score[:, :hop_frames] = 1.0
    out["score"] = score
    return out
