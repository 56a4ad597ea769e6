"""Dual-Path Speech Encoder (DPSE): acoustic features -> expression features f_e and pose features f_h.

    front-end features ──adapter──> (+ transcript cross-attention) ──MSDC──> h_s
    h_s ──shift by lookahead──> pose path:       long + mid window pooling queries -> cross-attn -> FFN -> f_h
                                 expression path: prosody FiLM -> short window query -> cross-attn -> f_e

Every layer is causal in time; the only view of the future is a fixed shift of
``lookahead_frames``, so frame i sees features up to i + lookahead and nothing further.
That is what lets the same weights run whole clips and a sliding-window stream.

Inputs cover a span of S feature frames; outputs cover the first S - lookahead of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import Attention, FeedForward, band_mask, position_embedding, windowed_mean

GROUP_NORM_EPS = 1e-5  # FrameGroupNorm's, here and in the stream conditioner's MSDC step (model/streaming.py)


class FrameGroupNorm(nn.Module):
    """GroupNorm computed per frame (over each group's channels only), so no statistic spans time."""

    def __init__(self, groups: int, channels: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, T]
        B, C, T = x.shape
        g = x.view(B, self.groups, C // self.groups, T)
        g = (g - g.mean(dim=2, keepdim=True)) / torch.sqrt(g.var(dim=2, keepdim=True, unbiased=False) + GROUP_NORM_EPS)
        return g.view(B, C, T) * self.weight[None, :, None] + self.bias[None, :, None]


class CausalConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T]
        return self.conv(F.pad(x, (self.pad, 0)))


class MSDCBranch(nn.Module):
    """depthwise dilated conv -> GroupNorm -> GLU -> pointwise conv."""

    def __init__(self, d: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.depthwise = CausalConv(d, 2 * d, kernel, dilation, groups=d)
        self.norm = FrameGroupNorm(8, 2 * d)
        self.pointwise = nn.Conv1d(d, d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(F.glu(self.norm(self.depthwise(x)), dim=1))


class MSDC(nn.Module):
    """Multi-scale dilated convolution: parallel branches, concatenated, projected, residual."""

    def __init__(self, d: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(MSDCBranch(d, kernel, dil) for dil in dilations)
        self.project = nn.Conv1d(d * len(dilations), d, 1)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, d]
        c = x.transpose(1, 2)
        y = self.project(torch.cat([b(c) for b in self.branches], dim=1)).transpose(1, 2)
        return self.norm(x + y)


class PoolingCrossAttention(nn.Module):
    """A windowed-mean query attends over the last ``window`` frames of its keys, then an FFN."""

    def __init__(self, d: int, n_heads: int, window: int, dropout: float) -> None:
        super().__init__()
        self.window = window
        self.query = nn.Linear(d, d)
        self.attn = Attention(d, n_heads, dropout)
        self.norm = nn.LayerNorm(d)
        self.ff = FeedForward(d, mult=2, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q = self.query(windowed_mean(h, self.window))
        mask = band_mask(h.shape[1], past=self.window - 1, future=0, device=h.device)
        y = self.norm(q + self.attn(q, h, mask))
        return y + self.ff(y)


class TextPath(nn.Module):
    """Optional transcript: audio frames attend over phoneme tokens; a learned null token when absent."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.text_vocab, d, padding_idx=0)
        self.null = nn.Parameter(torch.zeros(1, 1, d))
        self.attn = Attention(d, cfg.n_heads, cfg.dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, h: torch.Tensor, text: torch.Tensor, text_keep: torch.Tensor) -> torch.Tensor:
        # text [B, P] token ids (0 = padding); text_keep [B] 1 where the transcript is used.
        tokens = self.embed(text) + position_embedding(text.shape[1], h.shape[-1], h.device)[None]
        tokens = torch.cat([self.null.expand(h.shape[0], -1, -1), tokens], dim=1)
        usable = (text > 0) & (text_keep[:, None] > 0.5)
        keep = torch.cat([torch.ones_like(usable[:, :1]), usable], dim=1)  # the null token is always visible
        mask = torch.where(keep, 0.0, -1e4)[:, None, None, :]
        return self.norm(h + self.attn(h, tokens, mask))


class DualPathSpeechEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.lookahead = cfg.lookahead_frames
        self.adapter = nn.Sequential(nn.Linear(cfg.feature_dim, d), nn.GELU(), nn.Linear(d, d))
        self.audio_null = nn.Parameter(torch.zeros(d))
        self.text = TextPath(cfg)
        self.msdc = nn.Sequential(
            *[MSDC(d, cfg.msdc_kernel, cfg.msdc_dilations) for _ in range(cfg.n_msdc_blocks)]
        )
        # pose path (absent in the single-path ablation, where the expression path feeds both)
        self.single_path = cfg.single_path
        if not self.single_path:
            self.build_pose_path(cfg)
        # expression path
        self.prosody = nn.Sequential(CausalConv(cfg.prosody_dim, d, 3), nn.GELU(), CausalConv(d, 2 * d, 3))
        self.expr_short = PoolingCrossAttention(d, cfg.n_heads, cfg.short_window, cfg.dropout)

    def build_pose_path(self, cfg: ModelConfig) -> None:
        d = cfg.d_model
        self.pose_long = PoolingCrossAttention(d, cfg.n_heads, cfg.long_window, cfg.dropout)
        self.pose_mid = PoolingCrossAttention(d, cfg.n_heads, cfg.mid_window, cfg.dropout)
        self.pose_out = nn.Linear(2 * d, d)

    def forward(
        self,
        feats: torch.Tensor,  # [B, S, F]
        prosody: torch.Tensor,  # [B, S, 2]
        text: torch.Tensor,  # [B, P]
        audio_keep: torch.Tensor,  # [B] 1 = use the audio, 0 = classifier-free "no audio"
        text_keep: torch.Tensor,  # [B]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = audio_keep[:, None, None]
        h = keep * self.adapter(feats) + (1 - keep) * self.audio_null
        h = self.text(h, text, text_keep)
        h = self.msdc(h)
        pros = self.prosody((prosody * keep).transpose(1, 2)).transpose(1, 2)
        # the lookahead: output frame i reads encoder position i + lookahead
        L = self.lookahead
        h_s, pros = h[:, L:], pros[:, L:]
        gamma, beta = pros.chunk(2, dim=-1)
        f_e = self.expr_short(h_s * (1 + gamma) + beta)
        if self.single_path:
            return f_e, f_e
        f_h = self.pose_out(torch.cat([self.pose_long(h_s), self.pose_mid(h_s)], dim=-1))
        return f_e, f_h
