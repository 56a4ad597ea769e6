"""How the acoustic front-ends compare on the held-out split: `ksdiff-runtime frontend-probe`.

Training a KSDiff per front-end does not fit a 2-core machine, so front-ends are compared with
a linear probe, the standard way to ask "how much of the target can be read off these
features": ridge regression from a window of feature frames (t-4 .. t+lookahead, the view a
frame has in the model) to the teacher's mouth blendshapes, fitted on the training voices and
scored on held-out voices and sentences. A front-end whose features carry speaker-independent
phonetic information scores better on voices it has never heard.

Compared: hama posteriorgram + log-mel (the default; streaming and offline schedules),
posteriorgram alone, log-mel alone, and (with ``--wav2vec2-dir``) a local wav2vec2/HuBERT.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.features.frontend import HAMA_CLASSES, FrontEndConfig, make_front_end
from ksdiff_runtime.model.config import ModelConfig

from . import metrics as M
from .dataset import Clip, build_feature_cache, load_clips

log = logging.getLogger(__name__)

PAST, FUTURE = 4, 2
MOUTH = list(motion.MOUTH_INDICES)


def stack_context(feats: np.ndarray) -> np.ndarray:
    """[T, F] -> [T, F * (PAST + 1 + FUTURE)] with edge replication."""
    T = len(feats)
    cols = [feats[np.clip(np.arange(T) + k, 0, T - 1)] for k in range(-PAST, FUTURE + 1)]
    return np.concatenate(cols, axis=1)


def fit_ridge(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, ...]:
    """Standardised ridge regression: (weights, feature mean, feature std, target mean)."""
    mean, std = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mean) / std
    A = Xn.T @ Xn + alpha * len(Xn) * np.eye(Xn.shape[1], dtype=np.float64)
    W = np.linalg.solve(A, Xn.T @ (Y - Y.mean(0)))
    return W, mean, std, Y.mean(0)


def probe(train: list[tuple[np.ndarray, Clip]], test: list[tuple[np.ndarray, Clip]], seed: int,
          max_frames: int, alpha: float = 1e-3) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    X = np.concatenate([stack_context(f) for f, _ in train]).astype(np.float32)
    Y = np.concatenate([c.expr[:, MOUTH] for _, c in train]).astype(np.float32)
    keep = rng.permutation(len(X))[:max_frames]
    W, mean, std, y_mean = fit_ridge(X[keep].astype(np.float64), Y[keep].astype(np.float64), alpha)
    maes, jaw_p, jaw_t, closed, total = [], [], [], 0, 0
    jaw = MOUTH.index(motion.index("jawOpen"))
    for feats, clip in test:
        pred_mouth = np.clip((stack_context(feats) - mean) / std @ W + y_mean, 0.0, 1.0)
        pred = clip.expr.copy()  # non-mouth channels from the teacher: only the mouth is probed
        pred[:, MOUTH] = pred_mouth
        maes.append(M.mouth_mae(pred, clip.expr))
        jaw_p.append(pred_mouth[:, jaw])
        jaw_t.append(clip.expr[:, motion.index("jawOpen")])
        c, t = M.bilabial_closures(pred, clip.phonemes, clip.phoneme_start, clip.phoneme_dur)
        closed, total = closed + c, total + t
    return {
        "mouth_mae": float(np.mean(maes)),
        "jaw_corr": M.correlation(np.concatenate(jaw_p), np.concatenate(jaw_t)),
        "bilabial_closure": closed / total if total else float("nan"),
    }


def probe_front_ends(corpus: Path, cache: Path, left_context_ms: int, lookahead_ms: int, max_frames: int,
                     wav2vec2_dir: Path | None, json_path: Path) -> dict[str, dict[str, float]]:
    """Probe each front-end variant (train voices -> held-out voices); prints a table, writes the JSON."""
    cfg = ModelConfig(front_end=FrontEndConfig(left_context_ms=left_context_ms, lookahead_ms=lookahead_ms))
    build_feature_cache(corpus, cache, cfg)
    train = load_clips(corpus, cache, cfg, "train")
    test = load_clips(corpus, cache, cfg, "test", keep_audio=wav2vec2_dir is not None)
    variants = {
        "ppg + log-mel (stream)": lambda c: c.feats.astype(np.float32),
        "ppg + log-mel (offline)": lambda c: c.feats_offline.astype(np.float32),
        "ppg only (stream)": lambda c: c.feats[:, :HAMA_CLASSES].astype(np.float32),
        "log-mel only": lambda c: c.feats_offline[:, HAMA_CLASSES:].astype(np.float32),
    }
    results: dict[str, dict[str, float]] = {}
    for name, get in variants.items():
        results[name] = probe([(get(c), c) for c in train], [(get(c), c) for c in test], 0, max_frames)
        log.info("%s: %s", name, results[name])
    if wav2vec2_dir:
        from ksdiff_runtime.training.dataset import read_manifest

        fe = make_front_end(replace(cfg.front_end, name="wav2vec2", model_dir=str(wav2vec2_dir),
                                    recogniser="full-context"))
        manifest = {c["id"]: c for c in read_manifest(corpus)["clips"]}
        train_w = [(fe.offline(np.load(corpus / manifest[c.id]["file"])["audio"]), c) for c in train]
        test_w = [(fe.offline(c.audio), c) for c in test]
        results["wav2vec2 (local)"] = probe(train_w, test_w, 0, max_frames)
    lines = ["| front-end | mouth MAE | jawOpen r | p/b/m closed |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['mouth_mae']:.4f} | {r['jaw_corr']:.3f} | {r['bilabial_closure']:.3f} |")
    table = "\n".join(lines)
    print(f"Linear probe, train voices -> held-out voices ({len(train)} / {len(test)} clips):\n{table}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"probe": "ridge regression, frames t-4..t+2 -> teacher mouth blendshapes",
                                     "train_clips": len(train), "test_clips": len(test), "results": results},
                                    indent=2))
    return results
