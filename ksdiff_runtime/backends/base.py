"""What every inference backend provides: the model's two graphs, run on numpy arrays.

A backend runs ``condition`` once per hop and ``denoise`` once per DDIM step (the graphs of
ksdiff_runtime/model/graphs.py; input and output names are the tuples of model/io.py), and may run
``condition_stream`` instead of ``condition`` for a live stream's hop (model/streaming.py). The
DDIM loop and classifier-free guidance are not part of any backend: they live once, in
ksdiff_runtime/engine/sampling.py, so torch, ONNX Runtime and TensorRT run the same sampler.

``ModelConstants`` are the few numbers outside the graphs that the sampler needs (motion
normalisation, the null style, the noise schedule, the moods' styles). A torch backend reads them from the
model; an exported model stores them in ``constants.npz`` next to its ONNX files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.model.config import ModelConfig


class BackendError(RuntimeError):
    """A backend that cannot be used here; the message says which and why."""


@dataclass(frozen=True)
class ModelConstants:
    cfg: ModelConfig
    expr_mean: np.ndarray  # [52]
    expr_std: np.ndarray  # [52]
    pose_mean: np.ndarray  # [3]
    pose_std: np.ndarray  # [3]
    style_null: np.ndarray  # [style_dim]
    alpha_bar: np.ndarray  # [diffusion_steps]
    # each mood's style vector [len(motion.MOODS), style_dim] (training/mood_styles.py); None: the model has none
    mood_styles: np.ndarray | None = None

    @classmethod
    def from_model(cls, model) -> ModelConstants:  # model: KSDiff (not imported: keeps torch optional here)
        def np32(t) -> np.ndarray:
            return t.detach().float().cpu().numpy().astype(np.float32)

        return cls(
            cfg=model.cfg,
            expr_mean=np32(model.expr_mean),
            expr_std=np32(model.expr_std),
            pose_mean=np32(model.pose_mean),
            pose_std=np32(model.pose_std),
            style_null=np32(model.style_null),
            alpha_bar=np32(model.scheduler.alpha_bar),
            mood_styles=None if model.mood_styles is None else np32(model.mood_styles),
        )

    def save(self, path: Path) -> None:
        moods = {} if self.mood_styles is None else {"mood_styles": self.mood_styles}
        np.savez(path, expr_mean=self.expr_mean, expr_std=self.expr_std, pose_mean=self.pose_mean,
                 pose_std=self.pose_std, style_null=self.style_null, alpha_bar=self.alpha_bar, **moods)

    @classmethod
    def load(cls, path: Path, cfg: ModelConfig) -> ModelConstants:
        with np.load(path) as z:
            constants = cls(cfg=cfg, **{name: z[name].astype(np.float32) for name in z.files})
        moods = constants.mood_styles
        if moods is not None and (moods.shape != (len(motion.MOODS), cfg.style_dim) or not np.isfinite(moods).all()):
            raise BackendError(f"{path}: mood_styles must be {len(motion.MOODS)} x {cfg.style_dim} finite numbers, "
                               f"got shape {moods.shape}" + ("" if np.isfinite(moods).all() else ", not all finite"))
        return constants


class Backend(Protocol):
    """One loaded model on one device. Arrays in and out are numpy (float32, int64 for ``text``)."""

    name: str  # "torch-cpu", "torch-cuda", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"
    # Optional: the CPU threads one call uses (0 on a GPU). The engine runs a live round's calls in parts at
    # once only on a backend whose calls use one thread (more would oversubscribe the cores).
    # intra_op_threads: int
    # Optional: "int8" where the backend runs int8 weights (onnxruntime-cpu's int8 denoiser), else float
    # precision: str
    constants: ModelConstants

    def condition(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """CONDITIONER_INPUTS -> CONDITIONER_OUTPUTS (``n_new`` is a float32 [N] placeholder)."""
        ...

    def denoise(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """DENOISER_INPUTS -> DENOISER_OUTPUTS (``t`` is int64 [B])."""
        ...

    def encode_style(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """STYLE_ENCODER_INPUTS -> STYLE_ENCODER_OUTPUTS: windows of a reference take -> style vectors (once per
        take, not per hop: ``take_style``)."""
        ...

    # Optional: ``condition_stream(feeds)``, STREAM_CONDITIONER_INPUTS -> STREAM_CONDITIONER_OUTPUTS (a live
    # stream's hop with its cached encoder state, model/streaming.py). The engine conditions a backend's live
    # streams window by window with ``condition`` when it has none (all three backends here have it).


def take_style(backend: Backend, blendshapes: np.ndarray, head: np.ndarray) -> np.ndarray:
    """The network's style vector [style_dim] of a whole reference take (blendshapes [T, 52], head [T, 3] in
    radians, 30 fps): the mean of its half-overlapping windows' vectors, normalised as each window's is
    (KSDiff.style_of_take, the same in torch). A take shorter than one window holds its last frame to fill it."""
    L = backend.constants.cfg.style_clip_frames
    take = np.concatenate([np.asarray(blendshapes, np.float32), np.asarray(head, np.float32)], axis=1)
    if not len(take):
        raise ValueError("a take with no frames has no style")
    take = np.pad(take, ((0, max(0, L - len(take))), (0, 0)), mode="edge")
    windows = np.stack([take[s : s + L] for s in range(0, len(take) - L + 1, L // 2)])
    v = backend.encode_style({"take": windows})["style"].astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(v)
    if not (np.isfinite(norm) and norm > 1e-6):
        raise ValueError(f"the take's windows' style vectors cancel out (norm of their mean {norm:.3g}): no style")
    return (v / norm).astype(np.float32)
