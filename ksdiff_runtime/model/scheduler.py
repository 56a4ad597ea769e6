"""The noise schedule of training (the forward process); sampling runs in numpy (engine/scheduler.py)."""

from __future__ import annotations

import math

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
