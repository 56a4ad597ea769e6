"""Saving and loading model checkpoints, with clear errors for missing, corrupt or mismatched files.

A checkpoint is a torch file holding: ``format`` (this module's version), ``config`` (the
ModelConfig as a dict), ``blendshapes`` (the names the weights were trained on, in order),
``model`` (the state dict; the shipped file stores it in float16 to halve its size),
optionally ``mood_styles`` (each mood's style vector, derived from the weights by
training/mood_styles.py: ``{mood: [style_dim floats]}``), and optional training extras (optimiser, EMA,
step) that inference ignores.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ksdiff_runtime import motion

from .config import DEFAULT_CHECKPOINT, CheckpointError, ModelConfig, checkpoint_file
from .ksdiff import KSDiff

FORMAT = 1


def save_checkpoint(path: str | Path, model: KSDiff, half: bool = False, **extras: Any) -> None:
    """Write atomically (a crash mid-write never leaves a truncated checkpoint behind). The model's mood styles
    are not written: they belong to the weights they were read with (training/mood_styles.py adds them)."""
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {
        "format": FORMAT,
        "config": model.cfg.to_dict(),
        "blendshapes": list(motion.BLENDSHAPES),
        "model": state,
        **extras,
    }
    _write(path, payload)


def _write(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            # on the disk before the rename: after a power cut the rename may land, and the data not yet
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # a full disk or Ctrl-C mid-write: the previous checkpoint stays, and the partial copy does not keep the
        # space the next write needs
        tmp.unlink(missing_ok=True)
        raise


def write_mood_styles(path: str | Path, vectors: dict[str, np.ndarray]) -> None:
    """Keep each mood's style vector in the checkpoint at ``path`` (its weights untouched); vectors that would
    not load are refused before anything is written."""
    payload = read_checkpoint(path)
    payload["mood_styles"] = {m: np.asarray(v, np.float64).reshape(-1).tolist() for m, v in vectors.items()}
    _mood_styles(Path(path), payload, ModelConfig.from_dict(payload["config"]).style_dim)
    _write(path, payload)


def _mood_styles(path: Path, payload: dict[str, Any], style_dim: int) -> torch.Tensor | None:
    moods = payload.get("mood_styles")
    if moods is None:
        return None
    if not isinstance(moods, dict) or set(moods) != set(motion.MOODS):
        raise CheckpointError(f"checkpoint {path}: mood_styles must name the moods {', '.join(motion.MOODS)}")
    try:
        rows = torch.tensor([list(moods[m]) for m in motion.MOODS], dtype=torch.float32)
    except (TypeError, ValueError):
        rows = None
    if rows is None or rows.shape != (len(motion.MOODS), style_dim) or not torch.isfinite(rows).all():
        raise CheckpointError(f"checkpoint {path}: mood_styles must be {style_dim} finite numbers per mood")
    return rows


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = checkpoint_file(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a ksdiff checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or "model" not in payload or "config" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a ksdiff checkpoint (no 'model'/'config' entries)")
    if payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {payload.get('format')!r}; this code reads {FORMAT}")
    return payload


def load_model(path: str | Path = DEFAULT_CHECKPOINT, device: str | torch.device = "cpu") -> KSDiff:
    """The model in eval mode, float32, on ``device``."""
    path = Path(path)
    payload = read_checkpoint(path)
    names = payload.get("blendshapes")
    if names != list(motion.BLENDSHAPES):
        raise CheckpointError(
            f"checkpoint {path} was trained on a different blendshape set/order than motion.BLENDSHAPES"
        )
    try:
        cfg = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its config does not match this code: {exc}") from exc
    for field, expected in (("fps", motion.FPS), ("sample_rate", motion.SAMPLE_RATE)):
        if getattr(cfg, field) != expected:
            raise CheckpointError(
                f"checkpoint {path}: config {field}={getattr(cfg, field)} but the runtime uses {expected}"
            )
    model = KSDiff(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected weights: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        for k in wrong[:5]:
            details.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        raise CheckpointError(f"checkpoint {path} does not match the model code: " + "; ".join(details))
    model.load_state_dict(state)
    model.mood_styles = _mood_styles(path, payload, cfg.style_dim)
    return model.to(device).eval()
