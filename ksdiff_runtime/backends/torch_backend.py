"""The torch backend: the model's graphs run eagerly on the CPU or a CUDA GPU."""

from __future__ import annotations

import numpy as np
import torch

from ksdiff_runtime.model.graphs import CONDITIONER_INPUTS, CONDITIONER_OUTPUTS, DENOISER_INPUTS, DENOISER_OUTPUTS
from ksdiff_runtime.model.ksdiff import KSDiff

from .base import BackendError, ModelConstants


class TorchBackend:
    def __init__(self, model: KSDiff, device: str = "cpu") -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch-cuda: torch sees no CUDA GPU")
        self.device = torch.device(device)
        self.name = "torch-cuda" if self.device.type == "cuda" else "torch-cpu"
        self.model = model.to(self.device).eval()
        self.constants = ModelConstants.from_model(model)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    @torch.no_grad()
    def condition(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._tensor(feeds[n]) for n in CONDITIONER_INPUTS[:-1]]
        out = self.model.condition(*args, n_new=int(feeds["n_new"].shape[0]))
        return {n: o.float().cpu().numpy() for n, o in zip(CONDITIONER_OUTPUTS, out, strict=True)}

    @torch.no_grad()
    def denoise(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.model.denoise(*[self._tensor(feeds[n]) for n in DENOISER_INPUTS])
        return {n: o.float().cpu().numpy() for n, o in zip(DENOISER_OUTPUTS, out, strict=True)}
