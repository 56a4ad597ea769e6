"""Keyframe Establishment Learning (KEL): predicts which frames are keyframes and their values.

One predictor per path (expression, pose). It is causal and autoregressive at the window
level: a GRU runs forward over the path features of a window, starting from a state made
of the last motion frame already generated (the previous window's output, or the true
motion during training). So the keyframes of window k depend on what was generated in
window k-1, and the GRU is one ONNX op with a symbolic length.

Keyframes are defined from the target motion in ksdiff_runtime/training/keyframes.py.
"""

from __future__ import annotations

import torch
from torch import nn


class KeyframePredictor(nn.Module):
    def __init__(self, d_model: int, motion_dim: int, hidden: int) -> None:
        super().__init__()
        self.init_state = nn.Linear(motion_dim, hidden)
        self.gru = nn.GRU(d_model, hidden, batch_first=True)
        self.key_logit = nn.Linear(hidden, 1)
        self.value = nn.Linear(hidden, motion_dim)

    def forward(self, feats: torch.Tensor, last_motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats [B, N, d], last_motion [B, D] (normalised) -> (key logits [B, N], values [B, N, D])."""
        h0 = torch.tanh(self.init_state(last_motion))[None]
        out, _ = self.gru(feats, h0)
        return self.key_logit(out).squeeze(-1), self.value(out) + last_motion[:, None, :]
