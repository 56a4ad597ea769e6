"""Model configuration: the one source of truth for shapes, windows and diffusion settings.

A checkpoint stores this config next to its weights; loading compares the two and names any
mismatch, so code and weights can never silently disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksdiff_runtime import assets, motion
from ksdiff_runtime.features.frontend import FrontEndConfig

DEFAULT_CHECKPOINT = assets.CHECKPOINT


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def checkpoint_file(path: str | Path) -> Path:
    """``path`` as a Path if it is a file; CheckpointError saying what it is otherwise (before anything tries, and
    fails less clearly, to hash, export or load it)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


@dataclass
class ModelConfig:
    # --- motion ---
    fps: int = motion.FPS
    sample_rate: int = motion.SAMPLE_RATE
    expr_dim: int = motion.NUM_BLENDSHAPES
    pose_dim: int = motion.NUM_HEAD
    # --- inputs ---
    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    feature_dim: int = 231  # front-end features per frame (hama PPG 191 + log-mel 40)
    prosody_dim: int = 2  # F0 and energy per frame (ksdiff_runtime/features/prosody.py)
    text_vocab: int = 194  # phoneme tokens of the optional transcript path; 0 is padding
    max_text_tokens: int = 96
    style_dim: int = 64
    style_clip_frames: int = 64  # reference motion clip length for the style encoder
    # --- windows (frames at fps) ---
    lookahead_frames: int = 2  # future feature frames a motion frame may see
    encoder_context_frames: int = 48  # past feature frames the encoder sees before a window
    motion_context_frames: int = 8  # C: previously generated frames the denoisers see
    train_window_frames: int = 32  # N: new frames per training window
    long_window: int = 48  # pose path pooling windows (frames, causal)
    mid_window: int = 12
    short_window: int = 4  # expression path pooling window
    # --- widths ---
    d_model: int = 128
    n_heads: int = 4
    msdc_dilations: tuple[int, ...] = (1, 2, 4, 8)
    msdc_kernel: int = 3
    n_msdc_blocks: int = 2
    denoiser_layers: int = 4
    kel_hidden: int = 128
    # ablation: one speech path feeds both denoisers (no separate pose path)
    single_path: bool = False
    # ablation: the denoisers are not conditioned on KEL keyframes
    use_kel: bool = True
    dropout: float = 0.0  # dropout cost ~20 % of a CPU step and windows are random anyway
    # --- diffusion ---
    diffusion_steps: int = 1000
    schedule: str = "cosine"
    # classifier-free guidance: training drop rates
    p_drop_audio: float = 0.1
    p_drop_style: float = 0.3
    p_drop_text: float = 0.5
    # share of training windows whose last 1..lookahead feature frames are hidden (see KSDiff.hide_lookahead)
    p_hide_lookahead: float = 0.3

    @property
    def encoder_span(self) -> int:
        """Feature frames one training window consumes: past context + window + lookahead."""
        return self.encoder_context_frames + self.train_window_frames + self.lookahead_frames

    def stream_state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The stream conditioner's state (model/streaming.py) per row, by name (model.io.STREAM_STATE order):
        each causal layer's last inputs, as far back as it reaches, and the last C frames' path features."""
        d, C = self.d_model, self.motion_context_frames
        return {
            "s_msdc": (self.n_msdc_blocks, (self.msdc_kernel - 1) * max(self.msdc_dilations), d),  # MSDC inputs
            "s_pros": (2, self.prosody_dim),  # the prosody convs' inputs (kernel 3)
            "s_pmid": (2, d),
            "s_h": (self.long_window - 1, d),  # encoder output: the pose path's keys
            "s_m": (self.short_window - 1, d),  # prosody-modulated output: the expression path's keys
            "s_fe": (C, d),  # the last C committed frames' path features
            "s_fh": (C, d),
        }

    def front_end_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.front_end)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(unknown)}")
        if isinstance(data.get("front_end"), dict):
            data["front_end"] = FrontEndConfig(**data["front_end"])
        if "msdc_dilations" in data:
            data["msdc_dilations"] = tuple(data["msdc_dilations"])
        return cls(**data)

