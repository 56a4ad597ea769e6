"""A denoiser: predicts clean motion x0 for a window from its noisy version and its conditions.

Tokens are the C previous frames (clean, flagged as known) followed by the N frames being
generated (noisy). Each token sees: its motion value, the known flag, the KEL keyframe
probability and value, and its path features. The diffusion step and the style vector are
added to every token. Attention is full within the window; the audio the window may see
is already bounded by the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import TransformerLayer, position_embedding, timestep_embedding


class Denoiser(nn.Module):
    def __init__(self, motion_dim: int, d_model: int, style_dim: int, n_heads: int, layers: int, dropout: float):
        super().__init__()
        self.d_model = d_model
        # motion value + known flag + keyframe probability + keyframe value
        self.motion_in = nn.Linear(motion_dim * 2 + 2, d_model)
        self.cond_in = nn.Linear(d_model, d_model)
        self.step_style = nn.Sequential(nn.Linear(d_model + style_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.layers = nn.ModuleList(TransformerLayer(d_model, n_heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, motion_dim)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D] context frames (clean) then window frames (noisy)
        known: torch.Tensor,  # [B, T] 1 for known context frames
        key_prob: torch.Tensor,  # [B, T]
        key_value: torch.Tensor,  # [B, T, D]
        cond: torch.Tensor,  # [B, T, d] path features
        t: torch.Tensor,  # [B] diffusion step
        style: torch.Tensor,  # [B, style_dim]
    ) -> torch.Tensor:
        tokens = torch.cat([x, key_value * key_prob[..., None], known[..., None], key_prob[..., None]], dim=-1)
        h = self.motion_in(tokens) + self.cond_in(cond)
        h = h + position_embedding(x.shape[1], self.d_model, x.device)[None]
        h = h + self.step_style(torch.cat([timestep_embedding(t, self.d_model), style], dim=-1))[:, None, :]
        for layer in self.layers:
            h = layer(h)
        return self.out(self.norm(h))
