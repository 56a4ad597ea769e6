"""Building blocks shared by the model's modules.

Attention is written by hand (matmul + softmax with an additive mask) rather than with
nn.MultiheadAttention or nn.TransformerEncoder: the ONNX exporter then sees plain ops with
symbolic sequence lengths instead of a fused kernel specialised to the traced shape.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = -1e4  # large negative instead of -inf: keeps fully-masked rows finite in fp16 too


class Attention(nn.Module):
    """Multi-head attention; ``mask`` is additive, broadcastable to [B, heads, Tq, Tk]."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, d_kv: int | None = None) -> None:
        super().__init__()
        assert d_model % n_heads == 0
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_kv or d_model, d_model)
        self.v = nn.Linear(d_kv or d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, Tq, _ = x.shape
        Tk = kv.shape[1]
        q = self.q(x).view(B, Tq, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k(kv).view(B, Tk, self.n_heads, self.d_head).transpose(1, 2)
        v = self.v(kv).view(B, Tk, self.n_heads, self.d_head).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        if mask is not None:
            scores = scores + mask
        weights = self.dropout(torch.softmax(scores, dim=-1))
        y = (weights @ v).transpose(1, 2).reshape(B, Tq, -1)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_model * mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model * mult, d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerLayer(nn.Module):
    """Pre-norm self-attention + feed-forward, with optional FiLM-style conditioning vector."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.drop(self.ff(self.norm2(x)))


def band_mask(length: torch.Tensor | int, past: int, future: int, device: torch.device | None = None) -> torch.Tensor:
    """Additive [T, T] mask letting position i see positions i-past .. i+future.

    ``length`` may be a traced tensor; built from arange so ONNX keeps T symbolic.
    """
    idx = torch.arange(length, device=device)
    offset = idx[None, :] - idx[:, None]  # key - query
    allowed = (offset >= -past) & (offset <= future)
    return torch.where(allowed, torch.zeros((), device=device), torch.full((), NEG_INF, device=device))


def windowed_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Causal moving average over time of x [B, T, D]: mean of the last ``window`` frames."""
    padded = F.pad(x.transpose(1, 2), (window - 1, 0), mode="replicate")
    return F.avg_pool1d(padded, kernel_size=window, stride=1).transpose(1, 2)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of diffusion steps t [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def position_embedding(length: torch.Tensor | int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Sinusoidal positions [T, dim]."""
    pos = torch.arange(length, device=device, dtype=torch.float32)
    return timestep_embedding(pos, dim)
