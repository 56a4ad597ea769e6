"""The model as the two graphs a backend runs per hop, with plain tensor inputs (ONNX-exportable).

- ``WindowConditioner``: KSDiff.condition — features of a window -> path features and KEL
  keyframes, once per hop.
- ``WindowDenoiser``: KSDiff.denoise — one x0 prediction for both paths, once per DDIM step.
- ``TakeStyleEncoder``: KSDiff.style_of — windows of a reference take -> style vectors, once per take.

The DDIM loop and classifier-free guidance stay outside the graphs (a short loop any backend
can run), so the same exported graphs serve any step count. Batch and time are dynamic axes.
"""

from __future__ import annotations

from torch import nn

from .ksdiff import KSDiff


class WindowConditioner(nn.Module):
    def __init__(self, model: KSDiff) -> None:
        super().__init__()
        self.m = model

    def forward(self, feats, prosody, text, audio_keep, text_keep, prev_expr, prev_pose, known, n_new):
        # n_new is a [N] placeholder whose length says how many new frames (keeps N symbolic)
        return self.m.condition(feats, prosody, text, audio_keep, text_keep, prev_expr, prev_pose, known,
                                n_new.shape[0])


class WindowDenoiser(nn.Module):
    def __init__(self, model: KSDiff) -> None:
        super().__init__()
        self.m = model

    def forward(self, x_expr, x_pose, known, key_prob_e, key_value_e, key_prob_p, key_value_p, f_e, f_h, t, style):
        return self.m.denoise(x_expr, x_pose, known, key_prob_e, key_value_e, key_prob_p, key_value_p, f_e, f_h, t,
                              style)


class TakeStyleEncoder(nn.Module):
    def __init__(self, model: KSDiff) -> None:
        super().__init__()
        self.m = model

    def forward(self, take):
        # take [N, L, 55]: blendshapes then head, natural units
        e = self.m.cfg.expr_dim
        return self.m.style_of(take[..., :e], take[..., e:])
