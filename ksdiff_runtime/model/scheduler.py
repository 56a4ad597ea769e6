"""The noise schedule and the DDIM sampler, kept apart from the denoisers (as in diffusers)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class NoiseScheduler:
    """Variance-preserving forward process q(x_t | x_0) with a cosine (or linear) alpha-bar schedule."""

    def __init__(self, steps: int = 1000, schedule: str = "cosine") -> None:
        self.steps = steps
        if schedule == "cosine":
            s = 0.008
            t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
            f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
            alpha_bar = (f / f[0])[1:].clamp(min=1e-5)
        elif schedule == "linear":
            betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
            alpha_bar = torch.cumprod(1 - betas, dim=0)
        else:
            raise ValueError(f"unknown noise schedule {schedule!r} (cosine | linear)")
        self.alpha_bar = alpha_bar.float()  # alpha_bar[t] for t = 0 .. steps-1

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def ddim_timesteps(self, num_steps: int) -> list[int]:
        """Evenly spaced steps from the noisiest down to 0, e.g. 4 -> [999, 749, 499, 249]."""
        if not 1 <= num_steps <= self.steps:
            raise ValueError(f"DDIM steps must be in 1..{self.steps}, got {num_steps}")
        return [round(self.steps - 1 - i * self.steps / num_steps) for i in range(num_steps)]

    def ddim_sample(
        self,
        predict_x0: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        noise: torch.Tensor,
        num_steps: int,
    ) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) with an x0-predicting model: x_T = noise -> x_0."""
        x = noise
        steps = self.ddim_timesteps(num_steps)
        ab = self.alpha_bar.to(noise.device)
        for i, t in enumerate(steps):
            t_batch = torch.full((noise.shape[0],), t, device=noise.device, dtype=torch.long)
            x0 = predict_x0(x, t_batch)
            if i + 1 == len(steps):
                return x0
            ab_t, ab_next = ab[t], ab[steps[i + 1]]
            eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
            x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        return x
