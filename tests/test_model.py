"""The model's contract: shapes, bounded lookahead, sampling, checkpoints and ONNX export."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ksdiff_runtime import motion
from ksdiff_runtime.backends.torch_backend import TorchBackend
from ksdiff_runtime.engine.sampling import Guidance, WindowBatch, sample_windows
from ksdiff_runtime.engine.scheduler import DDIMScheduler
from ksdiff_runtime.model.checkpoint import CheckpointError, load_model, save_checkpoint
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.model.graphs import WindowConditioner, WindowDenoiser
from ksdiff_runtime.model.io import CONDITIONER_INPUTS, CONDITIONER_OUTPUTS, DENOISER_INPUTS, DENOISER_OUTPUTS
from ksdiff_runtime.model.ksdiff import KSDiff
from ksdiff_runtime.model.scheduler import NoiseScheduler

SMALL = dict(d_model=32, n_heads=2, denoiser_layers=1, kel_hidden=16, style_dim=8, n_msdc_blocks=1)


def small_model(**overrides) -> KSDiff:
    torch.manual_seed(0)
    return KSDiff(ModelConfig(**{**SMALL, **overrides})).eval()


def window_batch(cfg: ModelConfig, B: int = 2, N: int = 6, P: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    S = cfg.encoder_context_frames + N + cfg.lookahead_frames
    C = cfg.motion_context_frames
    return dict(
        feats=torch.randn(B, S, cfg.feature_dim, generator=g),
        prosody=torch.randn(B, S, 2, generator=g),
        text=torch.randint(1, 100, (B, P), generator=g),
        audio_keep=torch.ones(B),
        text_keep=torch.ones(B),
        prev_expr=torch.randn(B, C, cfg.expr_dim, generator=g),
        prev_pose=torch.randn(B, C, cfg.pose_dim, generator=g),
        known=torch.ones(B, C),
        n_new=torch.zeros(N),
    )


def test_encoder_sees_no_further_than_its_lookahead():
    model = small_model()
    cfg = model.cfg
    S = 40
    feats, pros = torch.randn(1, S, cfg.feature_dim), torch.randn(1, S, 2)
    text, one = torch.zeros(1, 1, dtype=torch.long), torch.ones(1)
    f_e, f_h = model.encoder(feats, pros, text, one, one)
    assert f_e.shape == (1, S - cfg.lookahead_frames, cfg.d_model)
    # change the features from position p on: outputs before p - lookahead must not move
    p = 25
    feats2, pros2 = feats.clone(), pros.clone()
    feats2[:, p:] += 5.0
    pros2[:, p:] -= 3.0
    g_e, g_h = model.encoder(feats2, pros2, text, one, one)
    limit = p - cfg.lookahead_frames
    assert torch.allclose(f_e[:, :limit], g_e[:, :limit], atol=1e-5)
    assert torch.allclose(f_h[:, :limit], g_h[:, :limit], atol=1e-5)
    assert not torch.allclose(f_e[:, limit], g_e[:, limit], atol=1e-3)


def training_batch(cfg: ModelConfig, B: int = 4, N: int = 6, seed: int = 3, expr_scale: float = 1.0
                   ) -> dict[str, torch.Tensor]:
    """A random batch of training windows in the layout KSDiff.training_loss reads (dataset.WindowSampler's)."""
    C = cfg.motion_context_frames
    S = cfg.encoder_context_frames + N + cfg.lookahead_frames
    g = torch.Generator().manual_seed(seed)
    return dict(
        feats=torch.randn(B, S, cfg.feature_dim, generator=g), prosody=torch.randn(B, S, 2, generator=g),
        text=torch.randint(0, 50, (B, 7), generator=g), expr=expr_scale * torch.rand(B, C + N, 52, generator=g),
        pose=0.1 * torch.randn(B, C + N, 3, generator=g), key_expr=torch.rand(B, C + N, generator=g) > 0.7,
        key_pose=torch.rand(B, C + N, generator=g) > 0.8, known=torch.cat([torch.ones(B, C), torch.zeros(B, N)], 1),
        ref_a_expr=torch.rand(B, 16, 52, generator=g), ref_a_pose=torch.randn(B, 16, 3, generator=g),
        ref_b_expr=torch.rand(B, 16, 52, generator=g), ref_b_pose=torch.randn(B, 16, 3, generator=g),
        persona=torch.tensor([0, 0, 1, 1][:B]),
    )


def test_training_loss_is_finite_and_backpropagates():
    model = small_model().train()
    losses = model.training_loss(training_batch(model.cfg))
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 0.9 * len(list(model.parameters()))


def test_closure_loss_asks_only_for_the_targets_closures():
    model = small_model()
    jaw, close = motion.BLENDSHAPE_INDEX["jawOpen"], motion.BLENDSHAPE_INDEX["mouthClose"]
    target = torch.zeros(1, 4, 52)
    target[0, 1, jaw] = 0.5  # frame 1 open, the others shut
    target[0, 3, [jaw, close]] = 0.3  # a jaw-dropped /m/: shut
    norm = model.norm_expr
    assert float(model.closure_loss(norm(target), norm(target))) == pytest.approx(0.0, abs=1e-9)
    opened = target.clone()
    opened[0, 1, jaw] = 0.9  # more open where the target is open: not this loss's business
    opened[0, 2, close] = 0.2  # more shut where the target is shut: fine too
    assert float(model.closure_loss(norm(opened), norm(target))) == pytest.approx(0.0, abs=1e-9)
    gaping = target.clone()
    gaping[0, 0, jaw] = 2 * motion.LIP_CLOSED_THRESHOLD  # open where the target is shut: two thresholds
    assert float(model.closure_loss(norm(gaping), norm(target))) == pytest.approx(4.0 / 4, rel=1e-4)
    # an average over every frame of every window: one gaping window beside a clean one counts half
    both = model.closure_loss(norm(torch.cat([gaping, target])), norm(torch.cat([target, target])))
    assert float(both) == pytest.approx(0.5, rel=1e-4)
    # the aperture it scores is motion.lip_aperture's, which is the explicit formula the teacher was made with
    b = torch.rand(10, 52) ** 3
    gap = (b @ torch.from_numpy(motion.lip_gap_vector())).clamp(min=0).numpy()
    np.testing.assert_allclose(gap, motion.lip_aperture(b.numpy()), atol=1e-6)

    def w(name: str) -> np.ndarray:
        return b.numpy()[:, motion.BLENDSHAPE_INDEX[name]]

    explicit = (w("jawOpen") - w("mouthClose") + 0.4 * 0.5 * (w("mouthLowerDownLeft") + w("mouthLowerDownRight"))
                + 0.4 * 0.5 * (w("mouthUpperUpLeft") + w("mouthUpperUpRight")) + 0.2 * w("mouthFunnel")
                - 0.3 * 0.5 * (w("mouthPressLeft") + w("mouthPressRight"))
                - 0.3 * 0.5 * (w("mouthRollLower") + w("mouthRollUpper")))
    np.testing.assert_allclose(motion.lip_aperture(b.numpy()), np.clip(explicit, 0, None), atol=1e-6)


def test_opening_loss_asks_only_that_the_targets_open_lips_are_not_shut():
    model = small_model()
    jaw, close = motion.BLENDSHAPE_INDEX["jawOpen"], motion.BLENDSHAPE_INDEX["mouthClose"]
    T = motion.LIP_CLOSED_THRESHOLD
    target = torch.zeros(1, 4, 52)
    target[0, 1, jaw] = 0.5  # frame 1 clearly open
    target[0, 2, jaw] = 1.5 * T  # frame 2 a little open: under twice the threshold, not scored
    target[0, 3, [jaw, close]] = 0.3  # a jaw-dropped /m/: shut
    norm = model.norm_expr
    assert float(model.opening_loss(norm(target), norm(target))) == pytest.approx(0.0, abs=1e-9)
    loose = target.clone()
    loose[0, 1, jaw] = 2 * T  # less open than the target, but open: not this loss's business
    loose[0, 0, jaw] = 0.4  # open where the target is shut: the closure loss's
    loose[0, 2, jaw] = 0.0  # shut where the target is barely open
    assert float(model.opening_loss(norm(loose), norm(target))) == pytest.approx(0.0, abs=1e-9)
    shut = target.clone()
    shut[0, 1, jaw] = 0.0  # shut in a vowel: two thresholds short, squared, over 4 frames
    assert float(model.opening_loss(norm(shut), norm(target))) == pytest.approx(4.0 / 4, rel=1e-4)
    half = target.clone()
    half[0, 1, jaw] = T  # half-shut: one threshold short
    assert float(model.opening_loss(norm(half), norm(target))) == pytest.approx(1.0 / 4, rel=1e-4)
    # pressed shut (mouthClose above the jaw: a gap below 0, which the output clamps at 0): more than two
    # thresholds short, and a gradient that opens the jaw
    pressed = target.clone()
    pressed[0, 1, [jaw, close]] = torch.tensor([0.1, 0.3])
    x0 = norm(pressed).requires_grad_(True)
    loss = model.opening_loss(x0, norm(target))
    assert loss.item() > 4.0 / 4
    loss.backward()
    assert x0.grad[0, 1, jaw] < 0 and x0.grad[0, 1, close] > 0  # descent opens the jaw and eases mouthClose
    assert float(x0.grad[0, [0, 2, 3]].abs().sum()) == 0.0  # only the open frame is scored


def test_opening_weight_adds_the_opening_loss_to_the_total():
    model = small_model().train()
    batch = training_batch(model.cfg)  # targets open on most frames
    totals = []
    for w in (0.0, 3.0):
        torch.manual_seed(5)
        losses = model.training_loss(batch, closure_weight=0.5, opening_weight=w)
        totals.append(losses["total"].item())
    assert losses["opening"].item() > 0  # an untrained model shuts some of them
    assert totals[1] - totals[0] == pytest.approx(3.0 * losses["opening"].item(), rel=1e-4)


def test_closure_weight_adds_the_closure_loss_to_the_total():
    model = small_model().train()
    batch = training_batch(model.cfg, expr_scale=0.05)  # nearly shut lips everywhere
    totals = []
    for w in (0.0, 2.0):
        torch.manual_seed(5)
        losses = model.training_loss(batch, closure_weight=w)
        totals.append(losses["total"].item())
    assert losses["closure"].item() > 0  # an untrained model leaves shut lips open
    assert totals[1] - totals[0] == pytest.approx(2.0 * losses["closure"].item(), rel=1e-4)


def test_context_drop_hides_whole_windows_previous_frames_from_the_denoisers():
    """train --context-drop: a dropped window is trained as a take's first (no previous frame known); the others
    as they were; none drawn at all without it, so runs without it keep their random streams."""
    model = small_model().train()
    C, B = model.cfg.motion_context_frames, 32
    batch = training_batch(model.cfg, B=B)
    batch["persona"] = torch.arange(B) % 4
    seen: list[torch.Tensor] = []
    hook = model.den_expr.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))

    def losses(**kw: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(5)
        return model.training_loss(batch, **kw)

    rand = torch.rand
    draws: list[int] = []

    def counted(*a: object, **kw: object) -> torch.Tensor:
        draws.append(1)
        return rand(*a, **kw)

    torch.rand = counted
    try:
        plain = losses()
        n_plain = len(draws)
        none = losses(context_drop=0.0)
        n_none = len(draws) - n_plain
        losses(context_drop=0.5)
        n_drop = len(draws) - n_plain - n_none
    finally:
        torch.rand = rand
    assert n_none == n_plain and n_drop == n_plain + 1  # the drop's one draw, only when asked for
    del seen[2:]
    assert all(plain[k].item() == none[k].item() for k in plain)
    assert torch.equal(seen[0], batch["known"]) and torch.equal(seen[1], batch["known"])
    hidden = losses(context_drop=1.0)
    assert not seen[2].any()
    torch.manual_seed(5)  # the same batch with no previous frame known, the same draws
    start = model.training_loss(dict(batch, known=torch.zeros_like(batch["known"])), context_drop=1.0)
    assert all(hidden[k].item() == pytest.approx(start[k].item(), rel=1e-6) for k in hidden)
    losses(context_drop=0.5)
    dropped = ~seen[-1][:, :C].bool().any(1)
    assert 4 <= int(dropped.sum()) <= B - 4  # some of each
    assert torch.equal(seen[-1][~dropped], batch["known"][~dropped])
    hook.remove()


def test_scored_frames_and_given_noise_steps_are_what_the_losses_use():
    """A live-shaped batch (dataset.live_windows) scores only its hop frames, at its sampler's noise steps."""
    model = small_model().train()
    cfg = model.cfg
    C, B = cfg.motion_context_frames, 4
    batch = training_batch(cfg, B=B, expr_scale=0.05)
    torch.manual_seed(5)
    plain = model.training_loss(batch, closure_weight=1.0)
    torch.manual_seed(5)
    scored = model.training_loss(dict(batch, score=torch.ones(B, 6)), closure_weight=1.0)
    for k in plain:  # scoring every frame is the plain mean
        assert scored[k].item() == pytest.approx(plain[k].item(), rel=1e-5), k

    # the hop frame only, where some rows have keyframes; at the noise step given
    score = torch.zeros(B, 6)
    score[:, 0] = 1.0
    batch["key_expr"][:2, C] = True
    batch["key_pose"][1:3, C] = True
    jaw = motion.BLENDSHAPE_INDEX["jawOpen"]
    batch["expr"][:2, C, jaw] = 0.5  # open lips on two rows' hop frame, and on every row's next (unscored) frame
    batch["expr"][:, C + 1, jaw] = 0.5
    t = torch.tensor([cfg.diffusion_steps - 1, 500, 7, cfg.diffusion_steps - 1])
    seen: dict[str, object] = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, args, out, name=name: seen.update({name: out}))
             for name in ("den_expr", "den_pose", "kel_expr", "kel_pose")]
    add_noise = model.scheduler.add_noise
    model.scheduler.add_noise = lambda x0, noise, steps: seen.update(t=steps) or add_noise(x0, noise, steps)
    torch.manual_seed(5)
    live = model.training_loss(dict(batch, score=score, t=t), closure_weight=1.0)
    for hook in hooks:
        hook.remove()
    model.scheduler.add_noise = add_noise
    assert torch.equal(seen["t"], t)
    mouth = torch.ones(cfg.expr_dim)
    mouth[list(motion.MOUTH_INDICES)] = 2.0
    for name, x, keys, w in (("expr", model.norm_expr(batch["expr"]), batch["key_expr"], mouth),
                             ("pose", model.norm_pose(batch["pose"]), batch["key_pose"], 1.0)):
        x0 = seen[f"den_{name}"].detach()
        logits, values = (v.detach() for v in seen[f"kel_{name}"])
        assert live[f"x0_{name}"].item() == pytest.approx((((x0[:, C] - x[:, C]) ** 2) * w).mean().item(), rel=1e-5)
        vel = ((x0[:, C] - x0[:, C - 1]) - (x[:, C] - x[:, C - 1])) ** 2
        assert live[f"vel_{name}"].item() == pytest.approx(4.0 * vel.mean().item(), rel=1e-5)
        key = keys[:, C].float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], key, pos_weight=torch.tensor(4.0))
        assert live[f"kel_{name}"].item() == pytest.approx(bce.item(), rel=1e-5)
        value = (((values[:, 0] - x[:, C]) ** 2).mean(-1) * key).sum() / key.sum()
        assert live[f"kel_{name}_value"].item() == pytest.approx(value.item(), rel=1e-5) and value > 0
    closure = model.closure_loss(seen["den_expr"].detach()[:, C : C + 1], model.norm_expr(batch["expr"])[:, C : C + 1])
    assert live["closure"].item() == pytest.approx(closure.item(), rel=1e-5)
    opening = model.opening_loss(seen["den_expr"].detach()[:, C : C + 1], model.norm_expr(batch["expr"])[:, C : C + 1])
    assert live["opening"].item() == pytest.approx(opening.item(), rel=1e-5)

    # one path left unscored (train --live-face-only): its losses vanish, the other's stay as they were
    torch.manual_seed(5)
    face = model.training_loss(dict(batch, score=score, t=t, score_pose=torch.zeros(B, 6)), closure_weight=1.0)
    for k in ("x0_pose", "vel_pose", "kel_pose", "kel_pose_value"):
        assert face[k].item() == 0.0, k
    for k in ("x0_expr", "vel_expr", "kel_expr", "kel_expr_value", "closure", "opening"):
        assert face[k].item() == pytest.approx(live[k].item(), rel=1e-6), k


@pytest.mark.parametrize(("head_smoothing_ms", "hops"), [(100.0, None), (0.0, None), (100.0, 13)])
def test_a_live_windows_own_context_is_what_a_stream_makes_hop_by_hop(head_smoothing_ms: float, hops: int | None):
    """train.own_context: each context frame is the 1-step sampler's (engine/sampling.py) for its live hop,
    given the frames made before it, with the batch's reference style, the head low-passed as the engine's
    stream does it; the scored hop is the teacher's frame after them."""
    from ksdiff_runtime.engine.presets import get_preset
    from ksdiff_runtime.training.dataset import live_windows
    from ksdiff_runtime.training.train import own_context

    model = small_model()
    cfg = model.cfg
    preset = dataclasses.replace(get_preset("low-latency"), head_smoothing_ms=head_smoothing_ms)
    C, D, B = cfg.motion_context_frames, cfg.expr_dim, 3
    shape = (preset.hop_frames, preset.window_frames, preset.model_lookahead_frames)
    R = C if hops is None else hops  # the scored hop is window frame R
    batch = {k: v.numpy() for k, v in training_batch(cfg, B=B, N=R + 8, expr_scale=0.3).items()}
    batch["known"][0, :3] = 0.0  # a window whose first context frames are before its clip's start
    batch["known"][1, :C] = 0.0  # and one at its clip's start (the first hop's head has no frame before it)
    torch.manual_seed(11)
    noises = [torch.randn(B, 8, D + cfg.pose_dim).numpy() for _ in range(R)]
    torch.manual_seed(11)
    live = own_context(model, batch, preset, hops)

    backend = TorchBackend(model)
    with torch.no_grad():
        style = model.style_of(torch.from_numpy(batch["ref_a_expr"]), torch.from_numpy(batch["ref_a_pose"])).numpy()
    expr, pose, known = batch["expr"].copy(), batch["pose"].copy(), batch["known"].copy()
    a = 1.0 - np.exp(-1000.0 / (motion.FPS * head_smoothing_ms)) if head_smoothing_ms else 1.0
    for k in range(R):
        hop = live_windows(dict(batch, expr=expr, pose=pose, known=known), cfg, *shape, at=k)
        made = sample_windows(backend, WindowBatch(
            feats=hop["feats"], prosody=hop["prosody"], prev_expr=hop["expr"][:, :C], prev_pose=hop["pose"][:, :C],
            known=hop["known"][:, :C], noise=noises[k], style=style, text=hop["text"]), steps=1)
        head = made.pose[:, 0]
        for b in range(B):  # the engine's one-pole, from the frame before when there is one
            if known[b, C + k - 1] > 0:
                head[b] = pose[b, C + k - 1] + a * (head[b] - pose[b, C + k - 1])
        expr[:, C + k], pose[:, C + k], known[:, C + k] = made.expr[:, 0], head, 1.0
    # the hop's context: the last C frames made, at window frames R - C .. R - 1 (array rows R .. R + C - 1)
    np.testing.assert_allclose(live["expr"][:, :C], expr[:, R : R + C], atol=1e-5)
    np.testing.assert_allclose(live["pose"][:, :C], pose[:, R : R + C], atol=1e-5)
    assert not np.allclose(live["expr"][:, :C], batch["expr"][:, R : R + C], atol=1e-3)  # not the teacher's
    np.testing.assert_array_equal(live["known"], np.concatenate([np.ones((B, C)), np.zeros((B, 8))], 1))
    np.testing.assert_array_equal(live["expr"][:, C:], batch["expr"][:, R + C :])  # targets: the teacher's
    teacher = live_windows(batch, cfg, *shape, at=R)
    for key in ("feats", "prosody", "key_expr", "score"):
        np.testing.assert_array_equal(live[key], teacher[key])


def test_sampling_is_deterministic_for_a_seed_and_in_range():
    model = small_model()
    cfg = model.cfg
    b = window_batch(cfg, B=1, N=6)
    backend = TorchBackend(model)

    def window_of(seed: int) -> WindowBatch:
        noise = np.random.default_rng(seed).standard_normal((1, 6, 55)).astype(np.float32)
        return WindowBatch(b["feats"].numpy(), b["prosody"].numpy(), b["prev_expr"].sigmoid().numpy(),
                           np.zeros((1, cfg.motion_context_frames, 3), np.float32), b["known"].numpy(), noise,
                           text=b["text"].numpy(), text_keep=b["text_keep"].numpy())

    def run(seed: int, guidance: Guidance | None = None):
        return sample_windows(backend, window_of(seed), 4, guidance)

    a, a2, c = run(0), run(0), run(1)
    assert np.array_equal(a.expr, a2.expr)
    assert not np.array_equal(a.expr, c.expr)
    assert a.expr.min() >= 0 and a.expr.max() <= 1
    guided = run(0, Guidance(audio=2.0, style=1.5, text=1.2))
    assert guided.expr.shape == (1, 6, 52) and np.isfinite(guided.pose).all()
    # audio guidance moves the face and leaves the head the conditional one (it settled a live head off centre)
    audio = run(0, Guidance(audio=2.0))
    assert np.abs(audio.expr - a.expr).max() > 1e-3
    np.testing.assert_allclose(audio.pose, a.pose, atol=1e-5)
    # style guidance still reaches the head
    style = np.random.default_rng(2).standard_normal((1, cfg.style_dim)).astype(np.float32)
    styled = dataclasses.replace(window_of(0), style=style)
    plain, guided_style = sample_windows(backend, styled, 4), sample_windows(backend, styled, 4, Guidance(style=2.0))
    assert np.abs(guided_style.pose - plain.pose).max() > 1e-4


def test_the_face_may_stop_after_one_step_while_the_head_takes_all():
    from ksdiff_runtime.engine.presets import LINE_EXPRESSION_STEPS, LINE_STEPS, get_preset

    model = small_model()
    cfg = model.cfg
    b = window_batch(cfg, B=2, N=6)
    backend = TorchBackend(model)
    noise = np.random.default_rng(0).standard_normal((2, 6, 55)).astype(np.float32)
    batch = WindowBatch(b["feats"].numpy(), b["prosody"].numpy(), b["prev_expr"].sigmoid().numpy(),
                        np.zeros((2, cfg.motion_context_frames, 3), np.float32), b["known"].numpy(), noise)
    one, four = sample_windows(backend, batch, 1), sample_windows(backend, batch, 4)
    mixed = sample_windows(backend, batch, 4, expression_steps=1)
    np.testing.assert_array_equal(mixed.expr, one.expr)  # the 1-step sampler's face, to the bit
    np.testing.assert_allclose(mixed.pose, four.pose, atol=1e-6)  # the 4-step sampler's head
    assert not np.allclose(one.pose, four.pose, atol=1e-4)
    with pytest.raises(ValueError, match="expression_steps"):
        sample_windows(backend, batch, 2, expression_steps=3)
    # lines: the face at one step, the head at four; a preset checks its own
    line = get_preset("low-latency").for_lines(32)
    assert (line.steps, line.expression_steps) == (LINE_STEPS, LINE_EXPRESSION_STEPS) == (4, 1)
    assert get_preset("low-latency").for_lines(32, steps=1).expression_steps == 1
    with pytest.raises(ValueError, match="expression_steps"):
        dataclasses.replace(line, expression_steps=5)


def test_ddim_timesteps_and_bad_step_count():
    alpha_bar = NoiseScheduler(1000).alpha_bar.numpy()
    assert DDIMScheduler(alpha_bar, 4).timesteps == [999, 749, 499, 249]
    assert DDIMScheduler(alpha_bar, 1).timesteps == [999]
    with pytest.raises(ValueError, match="DDIM steps"):
        DDIMScheduler(alpha_bar, 0)


def test_ddim_with_a_perfect_x0_model_lands_on_x0_and_interpolates_on_the_way():
    """The scheduler's algebra: whatever the noise and step count, feeding the true x0 returns it,
    and each intermediate x is sqrt(ab) x0 + sqrt(1 - ab) eps with the starting eps."""
    alpha_bar = NoiseScheduler(1000).alpha_bar.numpy()
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 5, 55)).astype(np.float32)
    for steps in (1, 2, 4, 10):
        s = DDIMScheduler(alpha_bar, steps)
        ab0 = alpha_bar[s.timesteps[0]]
        eps = rng.normal(size=x0.shape).astype(np.float32)
        x = np.sqrt(ab0) * x0 + np.sqrt(1 - ab0) * eps
        for i in range(len(s.timesteps)):
            x = s.step(x, x0, i)
            if i + 1 < len(s.timesteps):
                ab = alpha_bar[s.timesteps[i + 1]]
                assert np.allclose(x, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, atol=1e-4)
        assert np.array_equal(x, x0)


def test_checkpoint_roundtrip_and_clear_errors(tmp_path):
    model = small_model()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, half=True)
    loaded = load_model(path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b, atol=2e-3, rtol=2e-3), k

    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_model(tmp_path)  # it said "does not exist"
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"corrupt\.pt.*corrupt"):
        load_model(corrupt)
    # a config field this code does not know
    payload = torch.load(path, weights_only=False)
    payload["config"]["brand_new_field"] = 3
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match=r"newer\.pt.*brand_new_field"):
        load_model(tmp_path / "newer.pt")
    # weights shaped for another width
    payload = torch.load(path, weights_only=False)
    payload["config"]["d_model"] = 64
    torch.save(payload, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"wide\.pt does not match the model code.*vs model"):
        load_model(tmp_path / "wide.pt")


def _export(module, args, path, input_names, output_names, dynamic):
    torch.onnx.export(module, args, str(path), input_names=list(input_names), output_names=list(output_names),
                      dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_export_has_dynamic_batch_and_time(tmp_path):
    model = small_model()
    cfg = model.cfg
    cond = WindowConditioner(model).eval()
    b = window_batch(cfg, B=2, N=6)
    dyn = {"feats": {0: "B", 1: "S"}, "prosody": {0: "B", 1: "S"}, "text": {0: "B", 1: "P"}, "audio_keep": {0: "B"},
           "text_keep": {0: "B"}, "prev_expr": {0: "B"}, "prev_pose": {0: "B"}, "known": {0: "B"}, "n_new": {0: "N"}}
    sess = _export(cond, tuple(b.values()), tmp_path / "cond.onnx", CONDITIONER_INPUTS, CONDITIONER_OUTPUTS, dyn)
    # run with another batch size and window length than the export used
    b3 = window_batch(cfg, B=3, N=9, P=4)
    with torch.no_grad():
        ref = cond(*b3.values())
    got = sess.run(None, {k: v.numpy() for k, v in b3.items()})
    for r, o in zip(ref, got, strict=True):
        assert r.shape == o.shape
        assert np.abs(r.numpy() - o).max() < 1e-4

    den = WindowDenoiser(model).eval()
    B, T = 2, cfg.motion_context_frames + 6
    d = cfg.d_model

    def den_inputs(B: int, T: int):
        g = torch.Generator().manual_seed(B * 100 + T)
        return (torch.randn(B, T, 52, generator=g), torch.randn(B, T, 3, generator=g), torch.ones(B, T),
                torch.rand(B, T, generator=g), torch.randn(B, T, 52, generator=g), torch.rand(B, T, generator=g),
                torch.randn(B, T, 3, generator=g), torch.randn(B, T, d, generator=g), torch.randn(B, T, d, generator=g),
                torch.randint(0, 1000, (B,), generator=g), torch.randn(B, cfg.style_dim, generator=g))

    dyn = {n: {0: "B", 1: "T"} for n in DENOISER_INPUTS[:9]} | {"t": {0: "B"}, "style": {0: "B"}}
    sess = _export(den, den_inputs(B, T), tmp_path / "den.onnx", DENOISER_INPUTS, DENOISER_OUTPUTS, dyn)
    args = den_inputs(5, T + 7)
    with torch.no_grad():
        ref = den(*args)
    got = sess.run(None, {n: a.numpy() for n, a in zip(DENOISER_INPUTS, args, strict=True)})
    for r, o in zip(ref, got, strict=True):
        assert r.shape == o.shape
        assert np.abs(r.numpy() - o).max() < 1e-4


def fine_tuned_weights(base: KSDiff) -> dict[str, torch.Tensor]:
    """``base``'s weights, each floating-point tensor moved a little, as a fine-tune would (seeded)."""
    torch.manual_seed(5)
    return {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.state_dict().items()}


def small_model_with(weights: dict[str, torch.Tensor]) -> KSDiff:
    model = small_model()
    model.load_state_dict(weights)
    return model


def test_a_blend_interpolates_every_weight_between_base_and_fine_tune(tmp_path):
    """training.blend: weight 0 is the base, 1 the fine-tune, 0.25 a quarter of the way, for every tensor; the
    command writes a checkpoint that loads as that blend; other weights and other shapes are refused."""
    from ksdiff_runtime.model.checkpoint import CheckpointError
    from ksdiff_runtime.training.blend import blend
    from ksdiff_runtime.training.blend import main as blend_main

    base = small_model()
    moved = fine_tuned_weights(base)

    def tuned() -> KSDiff:
        return small_model_with(moved)

    a = base.state_dict()
    for w in (0.0, 0.25, 1.0):
        mixed = blend(base, tuned(), w).state_dict()
        for k, v in mixed.items():
            if v.is_floating_point():
                torch.testing.assert_close(v, (1 - w) * a[k] + w * moved[k])
    assert any(not torch.equal(a[k], moved[k]) for k in a)  # (the two differ)
    paths = [tmp_path / n for n in ("base.pt", "tuned.pt", "blend.pt")]
    save_checkpoint(paths[0], base)
    save_checkpoint(paths[1], tuned())
    assert blend_main([str(paths[0]), str(paths[1]), "--weight", "0.5", "--out", str(paths[2])]) == 0
    expected, got = blend(base, tuned(), 0.5).state_dict(), load_model(paths[2]).state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v)
    assert blend_main([str(paths[0]), str(paths[1]), "--weight", "0.5", "--out", str(paths[2]), "--half"]) == 0
    halved_model = load_model(paths[2])
    halved = halved_model.state_dict()  # float16 on disk, float32 loaded
    for k, v in expected.items():
        torch.testing.assert_close(halved[k], v.half().float() if v.is_floating_point() else v)
    # the blend's own moods' styles, read with its weights as written (training/mood_styles.py)
    from ksdiff_runtime.training.mood_styles import mood_vectors

    assert halved_model.mood_styles is not None
    own = mood_vectors(halved_model)
    torch.testing.assert_close(halved_model.mood_styles, torch.tensor(np.stack([own[m] for m in motion.MOODS])),
                               atol=2e-3, rtol=0)  # (espeak-ng varies a little from call to call)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        blend(base, tuned(), 1.5)
    with pytest.raises(CheckpointError, match="not the same network"):
        blend(base, small_model(d_model=16), 0.5)


def test_a_blend_can_give_the_head_branch_its_own_share(tmp_path):
    """training.blend --pose-weight: the head's branch (POSE_BRANCH) at its own share, the rest at --weight.
    POSE_BRANCH is exactly the tensors that the head's output reads and the face's does not, so a blend with the
    fine-tune's everything but the base's head branch animates the fine-tune's face, to the bit."""
    from ksdiff_runtime.training.blend import blend, is_pose_branch
    from ksdiff_runtime.training.blend import main as blend_main

    # which parameters each output reads, by autograd through condition() and denoise()
    model = small_model()
    cfg = model.cfg
    b = window_batch(cfg, B=1, N=6)
    C, N = cfg.motion_context_frames, 6
    f_e, f_h, pe, ve, pp, vp = model.condition(b["feats"], b["prosody"], b["text"], b["audio_keep"],
                                               b["text_keep"], b["prev_expr"], b["prev_pose"], b["known"], N)
    known = torch.cat([b["known"], torch.zeros(1, N)], 1)
    pad = torch.zeros(1, C)
    x0_e, x0_p = model.denoise(torch.randn(1, C + N, cfg.expr_dim), torch.randn(1, C + N, cfg.pose_dim), known,
                               torch.cat([pad, pe], 1), torch.cat([torch.zeros(1, C, cfg.expr_dim), ve], 1),
                               torch.cat([pad, pp], 1), torch.cat([torch.zeros(1, C, cfg.pose_dim), vp], 1),
                               f_e, f_h, torch.tensor([0.5]), torch.randn(1, cfg.style_dim))
    params = dict(model.named_parameters())

    def read_by(out: torch.Tensor) -> set[str]:
        grads = torch.autograd.grad(out.square().sum(), list(params.values()), retain_graph=True, allow_unused=True)
        return {k for k, g in zip(params, grads, strict=True) if g is not None and g.abs().sum() > 0}

    face, head = read_by(x0_e), read_by(x0_p)
    assert {k for k in params if is_pose_branch(k)} == head - face
    assert all(is_pose_branch(k) for k in ("pose_mean", "pose_std")) and not is_pose_branch("expr_mean")

    # a blend: the head branch at pose_weight, every other tensor at weight
    base = small_model()
    moved = fine_tuned_weights(base)

    def tuned() -> KSDiff:
        return small_model_with(moved)

    a = base.state_dict()
    mixed = blend(base, tuned(), 0.75, pose_weight=0.25).state_dict()
    for k, v in mixed.items():
        w = 0.25 if is_pose_branch(k) else 0.75
        if v.is_floating_point():
            torch.testing.assert_close(v, (1 - w) * a[k] + w * moved[k])
    with pytest.raises(ValueError, match=r"pose weight is in 0\.\.1"):
        blend(base, tuned(), 0.5, pose_weight=-0.1)

    # the fine-tune's face with the base's head branch, through the command, sampled as the engine samples
    paths = [tmp_path / n for n in ("base.pt", "tuned.pt", "blend.pt")]
    save_checkpoint(paths[0], base)
    save_checkpoint(paths[1], tuned())
    assert blend_main([str(paths[0]), str(paths[1]), "--weight", "1", "--pose-weight", "0", "--out",
                       str(paths[2])]) == 0
    noise = np.random.default_rng(0).standard_normal((1, 6, 55)).astype(np.float32)
    batch = WindowBatch(b["feats"].numpy(), b["prosody"].numpy(), b["prev_expr"].sigmoid().numpy(),
                        np.zeros((1, C, 3), np.float32), b["known"].numpy(), noise,
                        text=b["text"].numpy(), text_keep=b["text_keep"].numpy())
    got, fine = (sample_windows(TorchBackend(m.eval()), batch, 4) for m in (load_model(paths[2]), tuned()))
    np.testing.assert_array_equal(got.expr, fine.expr)
    assert not np.allclose(got.pose, fine.pose, atol=1e-4)
