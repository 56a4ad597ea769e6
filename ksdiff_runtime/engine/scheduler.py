"""The DDIM scheduler in numpy: which timesteps a sample visits and how x moves between them.

Kept apart from the sampling loop (as in diffusers): the loop in ``sampling.py`` asks the model
for x0 at each timestep and hands it to ``step``. Deterministic DDIM (eta = 0) with an
x0-predicting model, on the model's own noise schedule (``ModelConstants.alpha_bar``, the same
numbers training used).
"""

from __future__ import annotations

import numpy as np


class DDIMScheduler:
    def __init__(self, alpha_bar: np.ndarray, num_steps: int) -> None:
        """``alpha_bar[t]`` for t = 0 .. T-1 (the training schedule); ``num_steps`` DDIM steps."""
        self.alpha_bar = np.asarray(alpha_bar, np.float32)
        T = len(self.alpha_bar)
        if not 1 <= num_steps <= T:
            raise ValueError(f"DDIM steps must be in 1..{T}, got {num_steps}")
        # evenly spaced from the noisiest down, e.g. 4 of 1000 -> 999, 749, 499, 249
        self.timesteps = [round(T - 1 - i * T / num_steps) for i in range(num_steps)]

    def step(self, x: np.ndarray, x0: np.ndarray, i: int) -> np.ndarray:
        """x at ``timesteps[i + 1]`` from x at ``timesteps[i]`` and the model's x0; the last step returns x0."""
        if i + 1 == len(self.timesteps):
            return x0
        ab_t, ab_next = self.alpha_bar[self.timesteps[i]], self.alpha_bar[self.timesteps[i + 1]]
        eps = (x - np.sqrt(ab_t) * x0) / np.sqrt(1 - ab_t)
        return (np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next) * eps).astype(np.float32)
