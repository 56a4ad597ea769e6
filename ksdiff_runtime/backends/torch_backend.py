"""The torch backend: the model's graphs run eagerly on the CPU or a CUDA GPU.

On CUDA, ``cuda_graphs=True`` replays the denoiser from a captured CUDA graph: it runs once per
DDIM step with the same shapes for a whole stream, and at this model size a step is dominated by
kernel launch overhead, which a graph replay removes. One graph is captured per input shape
(batch, window length), with static input/output tensors the calls copy into and out of.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ksdiff_runtime.model.io import (
    CONDITIONER_INPUTS,
    CONDITIONER_OUTPUTS,
    DENOISER_INPUTS,
    DENOISER_OUTPUTS,
    STREAM_CONDITIONER_INPUTS,
    STREAM_CONDITIONER_OUTPUTS,
)
from ksdiff_runtime.model.ksdiff import KSDiff
from ksdiff_runtime.model.streaming import StreamingConditioner

from .base import BackendError, ModelConstants

log = logging.getLogger("ksdiff_runtime.backends")

MAX_CUDA_GRAPHS = 32  # distinct (batch, length) shapes captured; further shapes run eagerly


class _CapturedDenoiser:
    """The denoiser captured for one set of input shapes: copy inputs in, replay, read outputs."""

    def __init__(self, model: KSDiff, example: list[torch.Tensor], warmup: int = 3) -> None:
        self.inputs = [x.clone() for x in example]  # static: the graph reads these addresses
        # warm up on a side stream before capture (cuBLAS/cuDNN handles, lazy init), as the
        # PyTorch CUDA graphs docs prescribe
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                model.denoise(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = model.denoise(*self.inputs)

    def __call__(self, feeds: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        for static, x in zip(self.inputs, feeds, strict=True):
            static.copy_(x)
        self.graph.replay()
        return self.outputs


class TorchBackend:
    def __init__(self, model: KSDiff, device: str = "cpu", cuda_graphs: bool = False) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("torch-cuda: torch sees no CUDA GPU")
        self.device = torch.device(device)
        self.name = "torch-cuda" if self.device.type == "cuda" else "torch-cpu"
        self.model = model.to(self.device).eval()
        self.constants = ModelConstants.from_model(model)
        # graphs only exist on CUDA; on the CPU the flag is a no-op so callers can always pass it
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple, _CapturedDenoiser] = {}
        self._stream_conditioner = StreamingConditioner(self.model)

    @property
    def intra_op_threads(self) -> int:
        """The CPU threads a call uses: torch's (process-wide) on the CPU, none on the GPU."""
        return torch.get_num_threads() if self.device.type == "cpu" else 0

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    @torch.no_grad()
    def condition(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._tensor(feeds[n]) for n in CONDITIONER_INPUTS[:-1]]
        out = self.model.condition(*args, n_new=int(feeds["n_new"].shape[0]))
        return {n: o.float().cpu().numpy() for n, o in zip(CONDITIONER_OUTPUTS, out, strict=True)}

    @torch.no_grad()
    def condition_stream(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._tensor(feeds[n]) for n in STREAM_CONDITIONER_INPUTS]
        out = self._stream_conditioner(*args)
        return {n: o.float().cpu().numpy() for n, o in zip(STREAM_CONDITIONER_OUTPUTS, out, strict=True)}

    @torch.no_grad()
    def encode_style(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        take = self._tensor(np.asarray(feeds["take"], np.float32))
        e = self.model.cfg.expr_dim
        return {"style": self.model.style_of(take[..., :e], take[..., e:]).float().cpu().numpy()}

    @torch.no_grad()
    def denoise(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._tensor(feeds[n]) for n in DENOISER_INPUTS]
        graph = self._graph_for(args) if self.cuda_graphs else None
        out = graph(args) if graph is not None else self.model.denoise(*args)
        # .cpu() copies, so the graph's static outputs are free for the next replay
        return {n: o.float().cpu().numpy() for n, o in zip(DENOISER_OUTPUTS, out, strict=True)}

    def _graph_for(self, args: list[torch.Tensor]) -> _CapturedDenoiser | None:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        graph = self._graphs.get(key)
        if graph is None and len(self._graphs) < MAX_CUDA_GRAPHS:
            try:
                with torch.cuda.device(self.device):  # streams and the capture on the model's GPU
                    graph = self._graphs[key] = _CapturedDenoiser(self.model, args)
            except RuntimeError as exc:  # capture unsupported here: keep working, eagerly
                log.warning("torch-cuda: CUDA graph capture failed (%s); running the denoiser eagerly", exc)
                self.cuda_graphs = False
                return None
            log.debug("torch-cuda: captured a denoiser CUDA graph for shapes %s", [k[0] for k in key])
        return graph
