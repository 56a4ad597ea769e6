"""The conditioner of a live stream, one hop at a time: the encoder's past is cached, not re-encoded.

A windowed hop (graphs.WindowConditioner) encodes encoder_context + N + lookahead feature frames
(58 for the low-latency preset) to condition N frames, most of them frames it encoded the hop
before. Every layer of the speech encoder is causal (encoder.py), so a stream can carry each
layer's last few outputs instead, and a hop encodes only its new feature frames:

    state (per stream and guidance row; ModelConfig.stream_state_shapes)   (feature positions p, frame = p - L)
      s_msdc [B, blocks, R, d]                 each MSDC block's last R inputs (R: its widest conv)
      s_pros [B, 2, prosody_dim]               the prosody convs' last inputs (kernel 3: 2 each)
      s_pmid [B, 2, d]
      s_h    [B, long_window - 1, d]           the encoder output h: keys and pooling of the pose path
      s_m    [B, short_window - 1, d]          the prosody-modulated h: keys of the expression path
      s_fe, s_fh [B, C, d]                     the last C committed frames' path features

A hop's ``feats`` are K committed frames (real features; the state moves past them) then the
provisional tail (the last real frame repeated, as a windowed hop pads it); ``n_commit`` is a [K]
placeholder, ``n_new`` an [N] placeholder, as in WindowConditioner. Outputs: the window's C+N path
features (the context's from the state, the N frames' just computed), KEL keyframes for the N
frames, and the state after the K committed frames.

A fresh stream's state is zeros, which is exactly a windowed hop's zero padding of its causal
convolutions; its first hop commits the E frames before its first frame too (motion.take_frames'
rule), so the first window's N frames get exactly a windowed hop's path features (its C context
frames, unknown at a stream's start, do not: their pooling windows reach before the span). From then
on a stream remembers further back than a window's E frames (as far as each layer reaches, never
further), so its frames differ from windowed hops by that: measured in docs/ENGINE.md.
tests/test_streaming_conditioner.py checks a stream fed in any pieces against the whole-sequence
encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import GROUP_NORM_EPS, MSDC, PoolingCrossAttention
from .ksdiff import KSDiff
from .layers import NEG_INF


def _msdc_step(block: MSDC, hist: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MSDC on new frames x [B, T, d] given its last R inputs hist [B, R, d]: each branch's causal conv
    reads its own reach of the history instead of zero padding.

    Frames stay in rows and every convolution is a product over them, with the whole-sequence MSDC's
    weights (its Conv1d layers run channels first, and ONNX Runtime runs a grouped 1-D Conv a channel and a
    batch row at a time). A depthwise branch's 2d outputs are held as [2, d], output 2c + j at [j, c], so
    input channel c meets its two kernels without copying it; the group norm, the GLU and the pointwise
    weights are read in that order."""
    outs = []
    for branch in block.branches:
        conv, norm = branch.depthwise.conv, branch.norm
        d, (k,), (dil,) = conv.in_channels, conv.kernel_size, conv.dilation
        pad = (k - 1) * dil  # <= R; constant slices, so an exported graph computes no shapes for them
        z = torch.cat([hist[:, -pad:] if pad else hist[:, :0], x], dim=1).unsqueeze(2)  # [B, pad + T, 1, d]
        w = conv.weight[:, 0].reshape(d, 2, k).permute(2, 1, 0)  # [k, 2, d]
        y = conv.bias.reshape(d, 2).t()
        for j in range(k):  # output t, tap j: input t - pad + j * dil, row t + j * dil of z
            y = y + z[:, j * dil : (j * dil - pad) or None] * w[j]  # [B, T, 2, d]
        g = y.unflatten(-1, (norm.groups, d // norm.groups))  # a group: channels c of one block of d / groups, both j
        centred = g - g.mean((2, 4), keepdim=True)
        g = centred / torch.sqrt(g.var((2, 4), keepdim=True, unbiased=False) + GROUP_NORM_EPS)
        y = g.flatten(-2) * norm.weight.reshape(d, 2).t() + norm.bias.reshape(d, 2).t()
        h = d // 2  # GLU: outputs 2c + j < d (c < d / 2) gated by output 2c + j + d
        glu = (y[..., :h] * torch.sigmoid(y[..., h:])).flatten(-2)  # [B, T, d]: output 2c + j at j * d / 2 + c
        pointwise = branch.pointwise.weight[:, :, 0].reshape(-1, h, 2).transpose(1, 2).reshape(-1, d)
        outs.append(F.linear(glu, pointwise, branch.pointwise.bias))
    y = F.linear(torch.cat(outs, dim=-1), block.project.weight[:, :, 0], block.project.bias)
    return block.norm(x + y)


def _causal_conv_step(conv: nn.Conv1d, hist: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A kernel-k causal conv on new frames x [B, T, c] with its last k-1 inputs hist [B, k-1, c]: the k taps
    side by side in a row, times the kernel as one matrix."""
    (k,) = conv.kernel_size
    z = torch.cat([hist, x], dim=1)
    taps = torch.cat([z[:, j : (j - k + 1) or None] for j in range(k)], dim=-1)  # [B, T, k c], tap-major
    return F.linear(taps, conv.weight.permute(0, 2, 1).reshape(conv.out_channels, -1), conv.bias)


def _pooling_step(module: PoolingCrossAttention, hist: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PoolingCrossAttention for new frames x [B, T, d] given the previous window-1 frames hist: the
    query is the mean of each frame's last ``window`` frames, attending over exactly those frames."""
    W = module.window
    keys = torch.cat([_last(hist, W - 1), x], dim=1)  # [B, W-1+T, d]
    mean = F.avg_pool1d(keys.transpose(1, 2), kernel_size=W, stride=1).transpose(1, 2)  # [B, T, d]
    q = module.query(mean)
    T = x.shape[1]
    qi = torch.arange(T, device=x.device)[:, None] + (W - 1)  # each query's own position among the keys
    ki = torch.arange(keys.shape[1], device=x.device)[None, :]
    allowed = (ki <= qi) & (ki > qi - W)
    mask = torch.where(allowed, torch.zeros((), device=x.device), torch.full((), NEG_INF, device=x.device))
    y = module.norm(q + module.attn(q, keys, mask))
    return y + module.ff(y)


def _last(t: torch.Tensor, n: int) -> torch.Tensor:
    """The last ``n`` frames of t [B, T, ...]: a constant slice (``n`` a Python int), so an exported graph
    computes no shape for it."""
    return t[:, -n:] if n else t[:, :0]


def _tail(hist: torch.Tensor, new: torch.Tensor, keep: int) -> torch.Tensor:
    """The last ``keep`` frames of hist followed by new (the state after committing new)."""
    return _last(torch.cat([hist, new], dim=1), keep)


def _check_steps(model: KSDiff) -> None:
    """What the step functions assume of the encoder's layers, checked once (a model built otherwise would
    get wrong numbers of the right shape, not an error): each MSDC branch reaches back no further than the
    state's R frames and has two outputs per channel in groups of whole channels; the prosody convolutions
    are plain (undilated, ungrouped)."""
    enc, R = model.encoder, model.cfg.stream_state_shapes()["s_msdc"][1]
    for block in enc.msdc:
        for branch in block.branches:
            conv, groups = branch.depthwise.conv, branch.norm.groups
            d = conv.in_channels
            if (conv.kernel_size[0] - 1) * conv.dilation[0] > R or conv.out_channels != 2 * d or d % groups:
                raise ValueError(f"the stream conditioner's MSDC step needs a branch reaching back <= {R} frames "
                                 f"with 2 outputs per channel and {groups} groups of whole channels; got kernel "
                                 f"{conv.kernel_size[0]}, dilation {conv.dilation[0]}, {d} -> {conv.out_channels}")
    for conv in (enc.prosody[0].conv, enc.prosody[2].conv):
        if conv.dilation != (1,) or conv.groups != 1:
            raise ValueError(f"the stream conditioner's prosody step needs plain convolutions; got dilation "
                             f"{conv.dilation[0]}, {conv.groups} groups")


class StreamingConditioner(nn.Module):
    """KSDiff.condition for one hop of a stream with cached encoder state (exportable: plain ops, symbolic
    batch, frame and commit counts). Shares the model's weights; adds none."""

    def __init__(self, model: KSDiff) -> None:
        super().__init__()
        self.m = model
        self.cfg = model.cfg
        _check_steps(model)

    def forward(self, feats, prosody, text, audio_keep, text_keep, prev_expr, prev_pose, known, n_new, n_commit,
                s_msdc, s_pros, s_pmid, s_h, s_m, s_fe, s_fh):
        enc = self.m.encoder
        K, N, C = n_commit.shape[0], n_new.shape[0], self.cfg.motion_context_frames
        sizes = self.cfg.stream_state_shapes()  # each state's frames (the sizes of the state inputs)
        keep = audio_keep[:, None, None]
        x = keep * enc.adapter(feats) + (1 - keep) * enc.audio_null
        x = enc.text(x, text, text_keep)
        msdc_state = []
        for i, block in enumerate(enc.msdc):
            hist = s_msdc[:, i]
            msdc_state.append(_tail(hist, x[:, :K], sizes["s_msdc"][1]))
            x = _msdc_step(block, hist, x)
        h = x  # [B, T, d]: the encoder output at the new positions
        conv1, conv2 = enc.prosody[0], enc.prosody[2]
        pros_in = prosody * keep
        p1 = enc.prosody[1](_causal_conv_step(conv1.conv, s_pros, pros_in))
        p2 = _causal_conv_step(conv2.conv, s_pmid, p1)
        gamma, beta = p2.chunk(2, dim=-1)
        m = h * (1 + gamma) + beta
        f_e = _pooling_step(enc.expr_short, s_m, m)
        if enc.single_path:
            f_h = f_e
        else:
            f_h = enc.pose_out(torch.cat([_pooling_step(enc.pose_long, s_h, h), _pooling_step(enc.pose_mid, s_h, h)],
                                         dim=-1))
        all_e, all_h = torch.cat([s_fe, f_e], dim=1), torch.cat([s_fh, f_h], dim=1)
        win_e, win_h = all_e[:, all_e.shape[1] - (C + N) :], all_h[:, all_h.shape[1] - (C + N) :]
        last_e = (prev_expr * known[..., None])[:, -1]
        last_p = (prev_pose * known[..., None])[:, -1]
        logit_e, value_e = self.m.kel_expr(win_e[:, C:], last_e)
        logit_p, value_p = self.m.kel_pose(win_h[:, C:], last_p)
        prob_e, prob_p = torch.sigmoid(logit_e), torch.sigmoid(logit_p)
        if not self.cfg.use_kel:
            prob_e, prob_p = torch.zeros_like(prob_e), torch.zeros_like(prob_p)
        state = (
            torch.stack(msdc_state, dim=1),
            _tail(s_pros, pros_in[:, :K], sizes["s_pros"][0]),
            _tail(s_pmid, p1[:, :K], sizes["s_pmid"][0]),
            _tail(s_h, h[:, :K], sizes["s_h"][0]),
            _tail(s_m, m[:, :K], sizes["s_m"][0]),
            _tail(s_fe, f_e[:, :K], C),
            _tail(s_fh, f_h[:, :K], C),
        )
        return (win_e, win_h, prob_e, value_e, prob_p, value_p, *state)
