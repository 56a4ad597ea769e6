"""The ONNX Runtime backend: an export's graphs (ksdiff_runtime/backends/export.py) on CPU or CUDA."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from ksdiff_runtime.model.io import (
    CONDITIONER_INPUTS,
    CONDITIONER_OUTPUTS,
    DENOISER_INPUTS,
    DENOISER_OUTPUTS,
    DENOISER_PATHS,
    INT64_INPUTS,
    STREAM_CONDITIONER_INPUTS,
    STREAM_CONDITIONER_OUTPUTS,
    STYLE_ENCODER_INPUTS,
    STYLE_ENCODER_OUTPUTS,
)
from ksdiff_runtime.parallel import in_part

from .artifact import (
    CONDITIONER_FILE,
    DENOISER_FILE,
    DENOISER_INT8_FILE,
    DENOISER_INT8_PATH_FILES,
    DENOISER_PATH_FILES,
    STREAM_CONDITIONER_FILE,
    STYLE_ENCODER_FILE,
    load_export,
)
from .base import BackendError

# A denoiser call of at most this many rows and at least this many frames (one clip's bake window or a line's,
# 40 frames; a `quality` stream's, 27) runs its two paths at once on two cores (a CPU backend on one thread a
# call; model/io.py DENOISER_PATHS): a call of 40 frames 1.87 -> 1.07 ms, the sample's bake 88-94 -> 62-65 ms of
# model on a 2-core AMD EPYC, the same numbers to 2.4e-7. A `low-latency` hop's 16 frames gain 0.3 ms a call,
# less than waking the other core after the hop's idle costs: one stream's round paced as in `serve` took
# 0.4-0.7 ms longer (p50) with it. A larger batch keeps the cores busy already (the engine and `animate` cut it
# into parts, which a second thread each would oversubscribe).
PATHS_AT_ONCE_MAX_ROWS = 1
PATHS_AT_ONCE_MIN_FRAMES = 24


def as_feeds(feeds: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The graph's inputs as C-contiguous float32 (int64 for token ids and steps): the sampler hands in
    broadcast views and concatenations, and ONNX Runtime rejects a wrong dtype instead of casting."""
    missing = [n for n in names if n not in feeds]
    if missing:
        raise KeyError(f"missing graph inputs: {', '.join(missing)}")
    return {n: np.ascontiguousarray(feeds[n], dtype=np.int64 if n in INT64_INPUTS else np.float32) for n in names}


class OnnxRuntimeBackend:
    def __init__(self, export_dir: str | Path, device: str = "cpu", threads: int | None = None,
                 device_index: int = 0, int8: bool = False) -> None:
        """``int8``: the denoiser runs from the export's int8 graph, its face's path int8 and its head's float (the CPU
        only; artifact.DENOISER_INT8_FILE, and its paths DENOISER_INT8_PATH_FILES; docs/BACKENDS.md "int8 on the
        CPU")."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', not {device!r}")
        self.name = f"onnxruntime-{device}"
        if int8 and device != "cpu":
            raise BackendError(f"{self.name}: the int8 denoiser is for ONNX Runtime on the CPU; a GPU runs float")
        self.precision = "int8" if int8 else "float32"
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"{self.name}: the onnxruntime Python package is not installed ({exc})") from exc
        self.export_dir = Path(export_dir)
        self.cfg, self.constants, self.manifest = load_export(self.export_dir)
        if device == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise BackendError(f"{self.name}: this onnxruntime build has no CUDAExecutionProvider (available: "
                                   f"{', '.join(available)}); install onnxruntime-gpu instead of onnxruntime")
            providers: list = [("CUDAExecutionProvider", {"device_id": device_index}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device == "cpu":
            # ONNX Runtime's intra-op threads spin between calls by default: at this model's call sizes that
            # burnt a third of the CPU for no speed (B=8 streams: 37 -> 23 ms of CPU a call, wall 19 -> 16 ms),
            # CPU the front-ends, and a VTuber's OBS and game, need (docs/BACKENDS.md)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            opts.intra_op_num_threads = threads
        # the CPU threads a call uses (ONNX Runtime's default: one per core); none on the GPU
        self.intra_op_threads = 0 if device == "cuda" else (threads or os.cpu_count() or 1)
        self._conditioner = self._session(ort, CONDITIONER_FILE, opts, providers, CONDITIONER_INPUTS)
        self._denoiser = self._session(ort, DENOISER_INT8_FILE if int8 else DENOISER_FILE, opts, providers,
                                       DENOISER_INPUTS)
        # the paths at once: on a CPU of several cores, with one thread a call (int8: its face's path, the float head's)
        self._paths_pool = None
        if device == "cpu" and self.intra_op_threads == 1 and (os.cpu_count() or 1) > 1:
            files = DENOISER_INT8_PATH_FILES if int8 else DENOISER_PATH_FILES
            self._paths = {output: self._session(ort, files[output], opts, providers, inputs)
                           for output, inputs in DENOISER_PATHS.items()}
            self._paths_pool = ThreadPoolExecutor(1, thread_name_prefix="ksdiff-denoiser-path")
        self._stream_conditioner = self._session(ort, STREAM_CONDITIONER_FILE, opts, providers,
                                                 STREAM_CONDITIONER_INPUTS)
        self._style_encoder = self._session(ort, STYLE_ENCODER_FILE, opts, providers, STYLE_ENCODER_INPUTS)

    def _session(self, ort, file: str, opts, providers: list, inputs: tuple[str, ...]):
        path = self.export_dir / file
        try:
            sess = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own exception types (Fail, InvalidGraph, ...)
            raise BackendError(f"{self.name}: ONNX Runtime cannot load {path}: {exc}") from exc
        # ONNX Runtime silently falls back to the CPU when the CUDA provider fails to load (missing
        # CUDA/cuDNN libraries): a "cuda" backend running on the CPU would be a lie, so refuse it
        if providers[0] != "CPUExecutionProvider" and sess.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendError(f"{self.name}: the CUDA execution provider did not load for {path} (ONNX Runtime "
                               f"runs it on {sess.get_providers()}); check the CUDA and cuDNN libraries")
        names = tuple(i.name for i in sess.get_inputs())
        if sorted(names) != sorted(inputs):
            raise BackendError(f"{self.name}: {path} has inputs {names}, expected {inputs}")
        return sess

    def condition(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._conditioner.run(list(CONDITIONER_OUTPUTS), as_feeds(feeds, CONDITIONER_INPUTS))
        return dict(zip(CONDITIONER_OUTPUTS, out, strict=True))

    def denoise(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = as_feeds(feeds, DENOISER_INPUTS)
        rows, frames = feeds["x_expr"].shape[:2]
        # a part of a batch run at once on the cores (the engine's, `animate`'s) runs whole: the cores are taken.
        # Decided by the call's shape and place only, never by timing: the same work gives the same numbers.
        if (self._paths_pool is None or rows > PATHS_AT_ONCE_MAX_ROWS or frames < PATHS_AT_ONCE_MIN_FRAMES
                or in_part()):
            return dict(zip(DENOISER_OUTPUTS, self._denoiser.run(list(DENOISER_OUTPUTS), feeds), strict=True))

        def path(output: str) -> np.ndarray:
            return self._paths[output].run([output], {n: feeds[n] for n in DENOISER_PATHS[output]})[0]

        first, *others = DENOISER_OUTPUTS
        later = [self._paths_pool.submit(path, output) for output in others]
        try:
            out = {first: path(first)}
        finally:
            wait(later)
        out.update((output, f.result()) for output, f in zip(others, later, strict=True))
        return out

    def condition_stream(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """STREAM_CONDITIONER_INPUTS -> STREAM_CONDITIONER_OUTPUTS: a live stream's hop with its encoder state."""
        out = self._stream_conditioner.run(list(STREAM_CONDITIONER_OUTPUTS),
                                           as_feeds(feeds, STREAM_CONDITIONER_INPUTS))
        return dict(zip(STREAM_CONDITIONER_OUTPUTS, out, strict=True))

    def encode_style(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """STYLE_ENCODER_INPUTS -> STYLE_ENCODER_OUTPUTS: windows of a reference take -> style vectors."""
        out = self._style_encoder.run(list(STYLE_ENCODER_OUTPUTS), as_feeds(feeds, STYLE_ENCODER_INPUTS))
        return dict(zip(STYLE_ENCODER_OUTPUTS, out, strict=True))
