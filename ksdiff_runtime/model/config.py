"""Model configuration: the one source of truth for shapes, windows and diffusion settings.

A checkpoint stores this config next to its weights; loading compares the two and names any
mismatch, so code and weights can never silently disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ksdiff_runtime import motion


@dataclass
class FrontEndSpec:
    """Which acoustic front-end produced the features and how (see ksdiff_runtime/audio/features.py)."""

    name: str = "posteriorgram"  # posteriorgram (hama PPG + log-mel) | logmel | wav2vec2
    dim: int = 231  # feature size per motion frame
    block_ms: int = 100  # front-end block; features of a block are computed once
    left_context_ms: int = 500
    lookahead_ms: int = 100  # future audio the recogniser sees past its block


@dataclass
class ModelConfig:
    # --- motion ---
    fps: int = motion.FPS
    sample_rate: int = motion.SAMPLE_RATE
    expr_dim: int = motion.NUM_BLENDSHAPES
    pose_dim: int = motion.NUM_HEAD
    # --- inputs ---
    front_end: FrontEndSpec = field(default_factory=FrontEndSpec)
    prosody_dim: int = 2  # F0 and energy per frame (ksdiff_runtime/audio/prosody.py)
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
    dropout: float = 0.1
    # --- diffusion ---
    diffusion_steps: int = 1000
    schedule: str = "cosine"
    # classifier-free guidance: training drop rates
    p_drop_audio: float = 0.1
    p_drop_style: float = 0.3
    p_drop_text: float = 0.5

    @property
    def encoder_span(self) -> int:
        """Feature frames one training window consumes: past context + window + lookahead."""
        return self.encoder_context_frames + self.train_window_frames + self.lookahead_frames

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
            data["front_end"] = FrontEndSpec(**data["front_end"])
        if "msdc_dilations" in data:
            data["msdc_dilations"] = tuple(data["msdc_dilations"])
        return cls(**data)


def config_mismatches(saved: dict[str, Any], current: ModelConfig) -> list[str]:
    """Fields whose saved value differs from what this code builds: 'name: saved -> current'."""
    now = current.to_dict()
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "<missing>"), now.get(key, "<missing>")
        if isinstance(a, list):
            a = tuple(a)
        if isinstance(b, list):
            b = tuple(b)
        if a != b:
            out.append(f"{key}: checkpoint has {a!r}, code expects {b!r}")
    return out
