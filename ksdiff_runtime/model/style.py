"""Style encoder: a reference motion clip -> a unit-norm style vector (trained contrastively).

Clips of the same persona are positives, other personas in the batch negatives (InfoNCE,
as in DiffPoseTalk). A user hands a reference clip; its vector conditions the denoisers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import TransformerLayer, position_embedding


class StyleEncoder(nn.Module):
    def __init__(self, motion_dim: int, d_model: int, style_dim: int, n_heads: int, layers: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(motion_dim * 2, d_model)  # motion and its velocity
        self.layers = nn.ModuleList(TransformerLayer(d_model, n_heads, 0.1) for _ in range(layers))
        self.out = nn.Linear(d_model, style_dim)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """clip [B, T, D] normalised motion (expression + pose) -> [B, style_dim], unit norm."""
        vel = torch.cat([torch.zeros_like(clip[:, :1]), clip[:, 1:] - clip[:, :-1]], dim=1)
        h = self.inp(torch.cat([clip, vel * 4.0], dim=-1))
        h = h + position_embedding(clip.shape[1], h.shape[-1], clip.device)[None]
        for layer in self.layers:
            h = layer(h)
        return F.normalize(self.out(h.mean(dim=1)), dim=-1)


def info_nce(a: torch.Tensor, b: torch.Tensor, same: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Contrastive loss between style vectors a [B, S] and b [B, S]; same[i, j] = 1 for a positive pair."""
    logits = a @ b.T / temperature
    target = same / same.sum(dim=1, keepdim=True)
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
