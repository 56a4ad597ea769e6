"""KSDiff: the whole model, wired from its parts, with the training loss and window sampling.

    features, prosody, transcript ──DPSE──> f_e, f_h
    f_e ──KEL──> expression keyframes ──┐            f_h ──KEL──> pose keyframes ──┐
    previous C frames, style, step ─────┴─> expression denoiser      pose denoiser ┘
                                              (x0 prediction, DDIM sampling, CFG)

Motion inside the model is normalised per channel with statistics of the training corpus
(buffers saved with the weights): x_norm = (x - mean) / std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ksdiff_runtime import motion

from .config import ModelConfig
from .denoiser import Denoiser
from .encoder import DualPathSpeechEncoder
from .kel import KeyframePredictor
from .scheduler import NoiseScheduler
from .style import StyleEncoder, info_nce

MOUTH = list(motion.MOUTH_INDICES)

# The head's own branch: the modules only the head's output reads (the encoder's pose path, the pose keyframe
# predictor and the pose denoiser, all on the shared trunk's features; with the pose statistics, the tensors
# the face never reads). training.blend gives it its own share, `train --train-only head` trains it alone.
HEAD_MODULES = ("encoder.pose_long", "encoder.pose_mid", "encoder.pose_out", "kel_pose", "den_pose")
HEAD_BUFFERS = ("pose_mean", "pose_std")


class KSDiff(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        motion_dim = cfg.expr_dim + cfg.pose_dim
        self.encoder = DualPathSpeechEncoder(cfg)
        self.kel_expr = KeyframePredictor(d, cfg.expr_dim, cfg.kel_hidden)
        self.kel_pose = KeyframePredictor(d, cfg.pose_dim, cfg.kel_hidden)
        self.den_expr = Denoiser(cfg.expr_dim, d, cfg.style_dim, cfg.n_heads, cfg.denoiser_layers, cfg.dropout)
        self.den_pose = Denoiser(cfg.pose_dim, d, cfg.style_dim, cfg.n_heads, cfg.denoiser_layers, cfg.dropout)
        self.style_encoder = StyleEncoder(motion_dim, d, cfg.style_dim, cfg.n_heads)
        self.style_null = nn.Parameter(torch.zeros(cfg.style_dim))
        self.scheduler = NoiseScheduler(cfg.diffusion_steps, cfg.schedule)
        self.register_buffer("expr_mean", torch.zeros(cfg.expr_dim))
        self.register_buffer("expr_std", torch.ones(cfg.expr_dim))
        self.register_buffer("pose_mean", torch.zeros(cfg.pose_dim))
        self.register_buffer("pose_std", torch.ones(cfg.pose_dim))
        # The moods' style vectors [len(motion.MOODS), style_dim]: derived from this model's style encoder by
        # training/mood_styles.py and kept in the checkpoint beside the weights (checkpoint.py); None: none.
        self.mood_styles: torch.Tensor | None = None

    # --- normalisation -------------------------------------------------------------------
    def set_motion_stats(self, expr: torch.Tensor, pose: torch.Tensor) -> None:
        """Per-channel statistics from training motion [N, 52] and [N, 3]."""
        self.expr_mean.copy_(expr.mean(0))
        self.expr_std.copy_(expr.std(0).clamp(min=0.02))
        self.pose_mean.copy_(pose.mean(0))
        self.pose_std.copy_(pose.std(0).clamp(min=0.01))

    def norm_expr(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.expr_mean) / self.expr_std

    def norm_pose(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.pose_mean) / self.pose_std

    def denorm_expr(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.expr_std + self.expr_mean).clamp(0.0, 1.0)

    def denorm_pose(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pose_std + self.pose_mean

    def style_of(self, clip_expr: torch.Tensor, clip_pose: torch.Tensor) -> torch.Tensor:
        """Style vector [B, style_dim] of a reference clip given in natural units."""
        return self.style_encoder(torch.cat([self.norm_expr(clip_expr), self.norm_pose(clip_pose)], dim=-1))

    @torch.no_grad()
    def style_of_take(self, expr: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """The style vector [style_dim] of a whole take ([T, 52], [T, 3], natural units, T >= the style clip):
        the mean of its half-overlapping style clips' vectors, normalised as each clip's is."""
        L = self.cfg.style_clip_frames
        if expr.shape[0] < L:
            raise ValueError(f"a take needs at least {L} frames for a style vector, got {expr.shape[0]}")
        starts = range(0, expr.shape[0] - L + 1, L // 2)
        v = self.style_of(torch.stack([expr[s : s + L] for s in starts]),
                          torch.stack([pose[s : s + L] for s in starts])).mean(0)
        return v / v.norm()

    def hide_lookahead(self, feats: torch.Tensor, prosody: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training augmentation: in some windows the last 1..lookahead feature frames are not yet
        known and repeat the last known one, as a low-latency stream does when it does not wait
        for its full lookahead. The same weights then serve both latency presets."""
        L = self.cfg.lookahead_frames
        if L == 0 or self.cfg.p_hide_lookahead <= 0:
            return feats, prosody
        B, S = feats.shape[:2]
        hidden = torch.randint(1, L + 1, (B,), device=feats.device)
        hidden = hidden * (torch.rand(B, device=feats.device) < self.cfg.p_hide_lookahead)
        last_known = (S - 1 - hidden)[:, None]  # [B, 1]
        idx = torch.minimum(torch.arange(S, device=feats.device)[None, :], last_known)  # [B, S]
        take = lambda x: torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        return take(feats), take(prosody)

    # --- training --------------------------------------------------------------------------
    def closure_loss(self, x0: torch.Tensor, x: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
        """Lips left open where the target closes them: on the target's closed frames (lip aperture below
        motion.LIP_CLOSED_THRESHOLD), the predicted aperture's excess over the target's in units of that
        threshold, squared; averaged over the scored frames (``score`` [B, N], default all).
        x0, x: normalised expression [B, N, 52]."""
        gap = torch.from_numpy(motion.lip_gap_vector()).to(x.device)
        pred = (self.denorm_expr(x0) @ gap).clamp(min=0.0)
        true = (self.denorm_expr(x) @ gap).clamp(min=0.0)
        closed = (true < motion.LIP_CLOSED_THRESHOLD).float()
        excess = F.relu(pred - true) / motion.LIP_CLOSED_THRESHOLD
        return _weighted_mean(closed * excess**2, score)

    def opening_loss(self, x0: torch.Tensor, x: torch.Tensor, score: torch.Tensor | None = None) -> torch.Tensor:
        """The other side of closure_loss, lips shut where the target's are open: on the target's clearly open
        frames (lip aperture at least twice motion.LIP_CLOSED_THRESHOLD), the predicted aperture's shortfall
        under that level in units of the threshold, squared; averaged over the scored frames. Zero once the
        lips are that open, so it asks for no particular aperture, only not a shut mouth in a vowel.
        The prediction's gap is taken before the clamps the output gets (weights to 0..1, the gap at 0): a mouth
        predicted shut past them (mouthClose above jawOpen, a weight below 0) has a gradient towards open too.
        x0, x: normalised expression [B, N, 52]."""
        gap = torch.from_numpy(motion.lip_gap_vector()).to(x.device)
        level = 2.0 * motion.LIP_CLOSED_THRESHOLD
        pred = (x0 * self.expr_std + self.expr_mean) @ gap
        true = (self.denorm_expr(x) @ gap).clamp(min=0.0)
        open_ = (true >= level).float()
        shortfall = F.relu(level - pred) / motion.LIP_CLOSED_THRESHOLD
        return _weighted_mean(open_ * shortfall**2, score)

    def training_loss(
        self, batch: dict[str, torch.Tensor], p_true_keys: float = 0.3, closure_weight: float = 0.0,
        context_drop: float = 0.0, opening_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Losses for a batch of windows (see ksdiff_runtime/training/dataset.py for the keys). ``closure_weight``
        adds closure_loss, which asks the lips to shut where the target's do, ``opening_weight`` opening_loss,
        which asks them not to shut where the target's are open (a fine-tune's options).
        ``context_drop``: the share of windows whose previous frames are hidden, as at a take's start, so the
        denoisers learn to set what the style decides (a persona's smile) from the style and not only by copying
        the frames before (a fine-tune's option; training.train.TrainConfig).
        Optional keys: ``score`` [B, N], the window frames the per-frame losses count (default all;
        ``score_expr`` or ``score_pose`` for one path only, e.g. zeros to leave a path unscored), and
        ``t`` [B], the noise steps (default uniform): a live-shaped batch (dataset.live_windows) scores
        only its hop's frames, at the steps its preset samples."""
        cfg = self.cfg
        B = batch["feats"].shape[0]
        dev = batch["feats"].device
        C = cfg.motion_context_frames

        def keep(p: float) -> torch.Tensor:
            return (torch.rand(B, device=dev) >= p).float()

        audio_keep, text_keep, style_keep = keep(cfg.p_drop_audio), keep(cfg.p_drop_text), keep(cfg.p_drop_style)
        feats, prosody = self.hide_lookahead(batch["feats"], batch["prosody"])
        f_e, f_h = self.encoder(feats, prosody, batch["text"], audio_keep, text_keep)
        span = batch["expr"].shape[1]  # C + N frames, the last of the encoder's outputs
        f_e, f_h = f_e[:, -span:], f_h[:, -span:]

        style_a = self.style_of(batch["ref_a_expr"], batch["ref_a_pose"])
        style_b = self.style_of(batch["ref_b_expr"], batch["ref_b_pose"])
        same = (batch["persona"][:, None] == batch["persona"][None, :]).float()
        loss_style = info_nce(style_a, style_b, same)
        style = style_keep[:, None] * style_a + (1 - style_keep[:, None]) * self.style_null

        known_all = batch["known"] * keep(context_drop)[:, None] if context_drop > 0 else batch["known"]
        losses = {"style": loss_style}
        t = batch["t"] if "t" in batch else torch.randint(0, cfg.diffusion_steps, (B,), device=dev)
        for name, x, keys, kel, den, feats in (
            ("expr", self.norm_expr(batch["expr"]), batch["key_expr"], self.kel_expr, self.den_expr, f_e),
            ("pose", self.norm_pose(batch["pose"]), batch["key_pose"], self.kel_pose, self.den_pose, f_h),
        ):
            score = batch.get(f"score_{name}", batch.get("score"))  # [B, N] or None: every window frame
            known = known_all  # [B, C+N]; 0 for window frames and for context before a clip starts
            last = x[:, C - 1] + 0.05 * torch.randn_like(x[:, C - 1])
            last = last * known[:, C - 1 : C]
            logits, values = kel(feats[:, C:], last)
            key_w = keys[:, C:].float()
            pos_weight = torch.tensor(4.0, device=dev)
            bce = F.binary_cross_entropy_with_logits(logits, key_w, pos_weight=pos_weight, reduction="none")
            losses[f"kel_{name}"] = _weighted_mean(bce, score)
            value_err = ((values - x[:, C:]) ** 2).mean(-1)
            value_w = key_w if score is None else key_w * score
            losses[f"kel_{name}_value"] = (value_err * value_w).sum() / value_w.sum().clamp(min=1.0)

            use_true = (torch.rand(B, 1, device=dev) < p_true_keys).float()
            prob = use_true * key_w + (1 - use_true) * torch.sigmoid(logits).detach()
            val = use_true[..., None] * x[:, C:] + (1 - use_true[..., None]) * values.detach()
            if not cfg.use_kel:  # ablation: the denoisers never see keyframes
                prob, val = torch.zeros_like(prob), torch.zeros_like(val)
            zeros = torch.zeros_like(known[:, :C])
            key_prob = torch.cat([zeros, prob], dim=1)
            key_value = torch.cat([torch.zeros_like(x[:, :C]), val], dim=1)

            noisy = self.scheduler.add_noise(x, torch.randn_like(x), t)
            ctx = known[..., None]
            window = torch.zeros_like(ctx)
            window[:, C:] = 1.0
            # known context: clean (lightly jittered); unknown context: zeros; window: noisy
            x_in = ctx * (x + 0.02 * torch.randn_like(x)) + window * noisy
            x0 = den(x_in, known, key_prob, key_value, feats, t, style)
            err = (x0[:, C:] - x[:, C:]) ** 2
            if name == "expr":
                weights = torch.ones(cfg.expr_dim, device=dev)
                weights[MOUTH] = 2.0
                err = err * weights
                losses["closure"] = self.closure_loss(x0[:, C:], x[:, C:], score)
                losses["opening"] = self.opening_loss(x0[:, C:], x[:, C:], score)
            losses[f"x0_{name}"] = _weighted_mean(err.mean(-1), score)
            vel = lambda y: y[:, 1:] - y[:, :-1]  # noqa: E731  (step j: into window frame j)
            vel_err = ((vel(x0[:, C - 1 :]) - vel(x[:, C - 1 :])) ** 2).mean(-1)
            losses[f"vel_{name}"] = _weighted_mean(vel_err, score) * 4.0
        losses["total"] = (
            losses["x0_expr"]
            + losses["x0_pose"]
            + losses["vel_expr"]
            + losses["vel_pose"]
            + 0.5 * (losses["kel_expr"] + losses["kel_pose"])
            + 0.5 * (losses["kel_expr_value"] + losses["kel_pose_value"])
            + 0.1 * losses["style"]
            + closure_weight * losses["closure"]
            + opening_weight * losses["opening"]
        )
        return losses

    # --- sampling -------------------------------------------------------------------------
    # condition() runs once per window and denoise() once per DDIM step; they are exactly what
    # the exported graphs compute (ksdiff_runtime/model/graphs.py), so every backend agrees.
    def condition(
        self,
        feats: torch.Tensor,  # [B, S, F] with S = encoder context + new frames + lookahead
        prosody: torch.Tensor,  # [B, S, 2]
        text: torch.Tensor,  # [B, P]
        audio_keep: torch.Tensor,  # [B]
        text_keep: torch.Tensor,  # [B]
        prev_expr: torch.Tensor,  # [B, C, 52] normalised
        prev_pose: torch.Tensor,  # [B, C, 3] normalised
        known: torch.Tensor,  # [B, C]
        n_new: int,
    ) -> tuple[torch.Tensor, ...]:
        """Path features for the C+N frames and KEL keyframes (probability, value) for the N new ones."""
        C = prev_expr.shape[1]
        f_e, f_h = self.encoder(feats, prosody, text, audio_keep, text_keep)
        f_e, f_h = f_e[:, -(C + n_new) :], f_h[:, -(C + n_new) :]
        last_e = (prev_expr * known[..., None])[:, -1]
        last_p = (prev_pose * known[..., None])[:, -1]
        logit_e, value_e = self.kel_expr(f_e[:, C:], last_e)
        logit_p, value_p = self.kel_pose(f_h[:, C:], last_p)
        prob_e, prob_p = torch.sigmoid(logit_e), torch.sigmoid(logit_p)
        if not self.cfg.use_kel:  # ablation: keyframes are predicted (and scored) but not used
            prob_e, prob_p = torch.zeros_like(prob_e), torch.zeros_like(prob_p)
        return f_e, f_h, prob_e, value_e, prob_p, value_p

    def denoise(
        self,
        x_expr: torch.Tensor,  # [B, C+N, 52] normalised: known context then the noisy window
        x_pose: torch.Tensor,  # [B, C+N, 3]
        known: torch.Tensor,  # [B, C+N]
        key_prob_e: torch.Tensor,  # [B, C+N]
        key_value_e: torch.Tensor,  # [B, C+N, 52]
        key_prob_p: torch.Tensor,  # [B, C+N]
        key_value_p: torch.Tensor,  # [B, C+N, 3]
        f_e: torch.Tensor,  # [B, C+N, d]
        f_h: torch.Tensor,  # [B, C+N, d]
        t: torch.Tensor,  # [B]
        style: torch.Tensor,  # [B, style_dim]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 predictions of both paths for every frame of the window."""
        x0_e = self.den_expr(x_expr, known, key_prob_e, key_value_e, f_e, t, style)
        x0_p = self.den_pose(x_pose, known, key_prob_p, key_value_p, f_h, t, style)
        return x0_e, x0_p


def _weighted_mean(x: torch.Tensor, score: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-frame values x [B, N] over the frames ``score`` [B, N] counts (all when None)."""
    if score is None:
        return x.mean()
    return (x * score).sum() / score.sum().clamp(min=1.0)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
