"""The one window sampler: classifier-free guidance and DDIM in numpy over a Backend's two graphs.

Every path that animates (the streaming engine, offline bakes, evaluation) samples here, so
torch, ONNX Runtime and TensorRT produce the same frames (tests compare the backends through it):

    condition(window)                      once per hop: path features, KEL keyframes (a live stream's
                                           hop: condition_stream, its new frames and its encoder state)
    x = noise
    for i, t in enumerate(timesteps):      a short loop (the scheduler in scheduler.py):
        x0 = denoise(context + x, t)       one batched call per step (all streams, all CFG variants)
        x  = scheduler.step(x, x0, i)      (the expression may stop early: expression_steps)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.backends.base import Backend, ModelConstants
from ksdiff_runtime.model.io import STREAM_STATE

from .scheduler import DDIMScheduler


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance scales; 1.0 means 'conditional only' and costs no extra pass.

    ``audio`` guides the face only: the head stays the network's conditional one. Guided away from its
    audio-free prediction, a live head settled off centre (audio guidance 2, the looped sample, the model alone:
    yaw +5.2 and roll +2.6 degrees over the second minute, against +0.3 and +0.4 unguided; docs/ENGINE.md,
    "Guidance"), the window's previous frames carrying each hop's push into the next. ``style`` and ``text``
    guide both."""

    audio: float = 1.0
    style: float = 1.0
    text: float = 1.0


# The mood guidance scale: how strongly the network speaks in a stream's mood. 0: not at all (the mood is only
# the controls' expression layer); 1: the network conditioned on the mood's style (no extra cost); above 1:
# classifier-free guidance away from the null style (one more denoiser row per stream and step); between 0
# and 1: part of the way, at that extra row too.
MOOD_GUIDANCE_RANGE = (0.0, 4.0)
DEFAULT_MOOD_GUIDANCE = 1.0
NO_MOOD_STYLES = ("this model has no mood styles, so moods only change the expression (run python -m "
                  "ksdiff_runtime.training.mood_styles --checkpoint <it>)")


def check_mood_guidance(scale: float) -> float:
    """``scale`` as a float, or a ValueError naming the range."""
    lo, hi = MOOD_GUIDANCE_RANGE
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not lo <= scale <= hi:
        raise ValueError(f"mood guidance must be a number from {lo:g} to {hi:g}; got {scale!r}")
    return float(scale)


def with_mood_guidance(guidance: Guidance | None, scale: float) -> Guidance | None:
    """The guidance a sampler runs with for this mood guidance: it is the style guidance (a mood reaches the
    network as a style), so a style guidance of its own as well is refused."""
    if check_mood_guidance(scale) == 0.0:
        return guidance
    if guidance is not None and guidance.style != 1.0:
        raise ValueError("the mood guidance is the style guidance: give one of them, not both")
    return guidance if scale == 1.0 else dataclasses.replace(guidance or Guidance(), style=scale)


def mood_style(constants: ModelConstants, base: np.ndarray | None, mood: str, intensity: float,
               mood_guidance: float) -> tuple[np.ndarray | None, bool]:
    """The style the denoisers get for a stream in ``mood``: ``base`` (the stream's style vector; None: the null
    style) moved by ``intensity`` x (the mood's style - the null style); ``base`` as it is for the neutral mood,
    at intensity or mood guidance 0. And whether the mood was left out because the model has no mood styles
    (the caller says so, once)."""
    if mood_guidance <= 0 or mood == motion.DEFAULT_MOOD or intensity <= 0:
        return base, False
    if constants.mood_styles is None:
        return base, True
    start = constants.style_null if base is None else base
    offset = constants.mood_styles[motion.MOODS.index(mood)] - constants.style_null
    return (start + intensity * offset).astype(np.float32), False


@dataclass
class WindowBatch:
    """B windows (one per stream) of the same shape, in natural units.

    Windowed (``state`` None): ``feats`` span the encoder context, the window and the lookahead. Streamed
    (``state`` given, the backend's ``condition_stream``): ``feats`` are the hop's new frames, ``commit`` of
    them final and the rest provisional, and ``state`` each stream's encoder state per guidance variant."""

    feats: np.ndarray  # [B, S, F], S = encoder context + N + lookahead (streamed: commit + provisional)
    prosody: np.ndarray  # [B, S, 2]
    prev_expr: np.ndarray  # [B, C, 52] the C frames generated before the window
    prev_pose: np.ndarray  # [B, C, 3]
    known: np.ndarray  # [B, C] 1 where that previous frame exists
    noise: np.ndarray  # [B, N, 55] expression then pose, standard normal
    style: np.ndarray | None = None  # [B, style_dim]; None: the null style for all
    text: np.ndarray | None = None  # [B, P] transcript phoneme ids; None: no transcript
    text_keep: np.ndarray | None = None  # [B] 1 where the stream has a transcript
    state: dict[str, np.ndarray] | None = None  # STREAM_STATE name -> [B, V, ...] (V guidance variants)
    commit: int = 0  # streamed: how many of ``feats`` are final (the state moves past them)

    def rows(self, a: int, b: int) -> WindowBatch:
        """Streams [a, b) of the batch."""
        return dataclasses.replace(self, **{f.name: _rows(getattr(self, f.name), a, b)
                                            for f in dataclasses.fields(self) if f.name != "commit"})


@dataclass
class WindowResult:
    expr: np.ndarray  # [B, N, 52] blendshape weights 0..1
    pose: np.ndarray  # [B, N, 3] radians
    key_expr: np.ndarray  # [B, N] KEL keyframe probability
    key_pose: np.ndarray  # [B, N]
    state: dict[str, np.ndarray] | None = None  # streamed: each stream's state after its committed frames

    @staticmethod
    def concat(parts: list[WindowResult]) -> WindowResult:
        """The results of consecutive parts of a batch, as one."""
        def join(values: list) -> np.ndarray | dict | None:
            if values[0] is None:
                return None
            if isinstance(values[0], dict):
                return {k: np.concatenate([v[k] for v in values]) for k in values[0]}
            return np.concatenate(values)

        return WindowResult(**{f.name: join([getattr(p, f.name) for p in parts])
                               for f in dataclasses.fields(WindowResult)})


def _rows(value: np.ndarray | dict | None, a: int, b: int) -> np.ndarray | dict | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: v[a:b] for k, v in value.items()}
    return value[a:b]


def guidance_variants(guidance: Guidance | None) -> int:
    """Rows per stream the graphs run with this guidance (the conditional one, plus one per scale != 1)."""
    g = guidance or Guidance()
    return 1 + sum(scale != 1.0 for scale in (g.audio, g.style, g.text))


def sample_windows(
    backend: Backend, batch: WindowBatch, steps: int, guidance: Guidance | None = None, use_kel: bool = True,
    expression_steps: int | None = None,
) -> WindowResult:
    """The windows' frames after ``steps`` DDIM steps; the expression (the face's 52 weights) keeps its x0
    prediction after ``expression_steps`` of them (None: all). The two denoisers read only their own motion,
    so after one step the expression is exactly the 1-step sampler's while the head goes on for ``steps``."""
    if expression_steps is not None and not 1 <= expression_steps <= steps:
        raise ValueError(f"expression_steps must be in 1..{steps} (the steps), got {expression_steps}")
    k: ModelConstants = backend.constants
    cfg = k.cfg
    g = guidance or Guidance()
    B, C = batch.prev_expr.shape[:2]
    N = batch.noise.shape[1]
    D = cfg.expr_dim
    f32 = np.float32
    style = np.broadcast_to(k.style_null, (B, cfg.style_dim)) if batch.style is None else batch.style
    text = np.zeros((B, 1), np.int64) if batch.text is None else batch.text.astype(np.int64)
    text_keep = np.zeros(B, f32) if batch.text_keep is None else batch.text_keep.astype(f32)
    ones, zeros = np.ones(B, f32), np.zeros(B, f32)
    null_style = np.broadcast_to(k.style_null, (B, cfg.style_dim))
    # classifier-free guidance variants, batched: (audio_keep, text_keep, style, scale, the channels it guides)
    face, both = slice(0, D), slice(None)
    variants = [(ones, text_keep, style, 1.0, both)]
    if g.audio != 1.0:
        variants.append((zeros, text_keep, style, g.audio, face))
    if g.style != 1.0:
        variants.append((ones, text_keep, null_style, g.style, both))
    if g.text != 1.0:
        variants.append((ones, zeros, style, g.text, both))
    V = len(variants)

    def rep(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x] * V, axis=0) if V > 1 else x

    known = batch.known.astype(f32)
    prev_e = rep(((batch.prev_expr - k.expr_mean) / k.expr_std * known[..., None]).astype(f32))
    prev_p = rep(((batch.prev_pose - k.pose_mean) / k.pose_std * known[..., None]).astype(f32))
    known_v = rep(known)
    feeds = {
        "feats": rep(batch.feats.astype(f32)), "prosody": rep(batch.prosody.astype(f32)), "text": rep(text),
        "audio_keep": np.concatenate([v[0] for v in variants]), "text_keep": np.concatenate([v[1] for v in variants]),
        "prev_expr": prev_e, "prev_pose": prev_p, "known": known_v, "n_new": np.zeros(N, f32),
    }
    new_state = None
    if batch.state is None:
        cond = backend.condition(feeds)
    else:  # rows variant-major, as rep() lays them out: [B, V, ...] -> [V * B, ...] and back
        for name in STREAM_STATE:
            rows = batch.state[name]
            if rows.shape[:2] != (B, V):
                raise ValueError(f"stream state {name}: {rows.shape[:2]} rows, expected (streams, variants) = {(B, V)}")
            feeds[name] = np.ascontiguousarray(rows.swapaxes(0, 1).reshape(V * B, *rows.shape[2:]), dtype=f32)
        cond = backend.condition_stream(feeds | {"n_commit": np.zeros(batch.commit, f32)})
        new_state = {name: cond[f"{name}_out"].reshape(V, B, *batch.state[name].shape[2:]).swapaxes(0, 1)
                     for name in STREAM_STATE}
    prob_e, prob_p = cond["key_prob_e"], cond["key_prob_p"]
    if not use_kel:
        prob_e, prob_p = np.zeros_like(prob_e), np.zeros_like(prob_p)
    ctx = np.zeros((B * V, C), f32)
    den_feeds = {
        "known": np.concatenate([known_v, np.zeros((B * V, N), f32)], axis=1),
        "key_prob_e": np.concatenate([ctx, prob_e], 1), "key_prob_p": np.concatenate([ctx, prob_p], 1),
        "key_value_e": np.concatenate([np.zeros_like(prev_e), cond["key_value_e"]], 1),
        "key_value_p": np.concatenate([np.zeros_like(prev_p), cond["key_value_p"]], 1),
        "f_e": cond["f_e"], "f_h": cond["f_h"],
        "style": np.ascontiguousarray(np.concatenate([v[2] for v in variants]), dtype=f32),
    }

    def predict_x0(x: np.ndarray, t: int) -> np.ndarray:
        xv = rep(x)
        out = backend.denoise(den_feeds | {
            "x_expr": np.concatenate([prev_e, xv[..., :D]], 1), "x_pose": np.concatenate([prev_p, xv[..., D:]], 1),
            "t": np.full(B * V, t, np.int64),
        })
        x0 = np.concatenate([out["x0_expr"], out["x0_pose"]], axis=-1)[:, C:].reshape(V, B, N, -1)
        guided = x0[0].copy()
        for i, (*_, scale, part) in enumerate(variants[1:], start=1):
            guided[..., part] += (scale - 1.0) * (x0[0][..., part] - x0[i][..., part])
        return guided

    scheduler = DDIMScheduler(k.alpha_bar, steps)
    x = batch.noise.astype(f32)
    expr_x0 = None
    for i, t in enumerate(scheduler.timesteps):
        x0 = predict_x0(x, t)
        if i + 1 == expression_steps:
            expr_x0 = x0[..., :D]
        x = scheduler.step(x, x0, i)
    if expr_x0 is not None:
        x[..., :D] = expr_x0
    expr = np.clip(x[..., :D] * k.expr_std + k.expr_mean, 0.0, 1.0)
    pose = x[..., D:] * k.pose_std + k.pose_mean
    return WindowResult(expr.astype(f32), pose.astype(f32), prob_e[:B], prob_p[:B], new_state)
