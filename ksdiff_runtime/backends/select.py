"""Choosing and loading a backend by name: ``load_backend("auto")`` and friends.

    auto              tensorrt > torch-cuda > onnxruntime-cpu > torch-cpu: the first that loads here
    torch             torch-cuda if torch sees a GPU, else torch-cpu
    onnxruntime       onnxruntime-cuda if this onnxruntime build has the CUDA provider, else onnxruntime-cpu
    torch-cpu, torch-cuda, onnxruntime-cpu, onnxruntime-cuda, tensorrt: exactly that one

The ONNX-based backends need an export of the checkpoint: the bundled checkpoint's ships beside it
(no torch needed); another checkpoint's is made on first use (with torch) in a cache directory named
by its sha256 and reused afterwards (re-made if the directory holds an export of another checkpoint
or a broken one).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import sys
from pathlib import Path

from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT, checkpoint_file

from .artifact import SHIPPED_EXPORT, default_cache_dir, export_of, export_problem, sha256_file
from .base import Backend, BackendError

log = logging.getLogger("ksdiff_runtime.backends")

BACKEND_NAMES = ("auto", "torch", "torch-cpu", "torch-cuda", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda",
                 "tensorrt")
# torch-cpu last: slower than ONNX Runtime on a CPU, but it needs no export, so it still runs
# when ONNX Runtime or the export cannot
AUTO_ORDER = ("tensorrt", "torch-cuda", "onnxruntime-cpu", "torch-cpu")
# fastest first; with fallback=True a failed backend falls back to the auto-order ones after it here
PREFERENCE = ("tensorrt", "torch-cuda", "onnxruntime-cuda", "onnxruntime-cpu", "torch-cpu")


class BackendUnavailableError(BackendError):
    """The backend's packages or device are not present here (as opposed to present but failing)."""


def default_export_dir(checkpoint: str | Path) -> Path:
    return default_cache_dir() / "exports" / sha256_file(Path(checkpoint))[:16]


# The CUDA driver's library, by the name CUDA's runtime (torch's, TensorRT's, ONNX Runtime's CUDA provider) loads it:
# a machine without it has no GPU any of them can use. Not the unversioned libcuda.so: CUDA's runtime never loads it by
# that name, and where it is found it is mostly the CUDA toolkit's link-time stub (stubs/libcuda.so, on
# LD_LIBRARY_PATH in CUDA build images), no driver. On WSL2 the driver's libcuda.so.1 is in /usr/lib/wsl/lib, which
# WSL puts in the loader's path, as CUDA's runtime relies on.
CUDA_DRIVER_LIBRARIES = {"win32": ("nvcuda.dll",), "darwin": ()}.get(sys.platform, ("libcuda.so.1",))


def cuda_driver_present() -> bool:
    """Whether this machine has an NVIDIA CUDA driver to load (milliseconds). Without one, `auto` skips torch-cuda and
    TensorRT without importing torch or tensorrt only to hear they see no GPU: importing torch took 1.1 s of `serve`'s
    start-up on an idle 2-core CPU, 2-5 s with both cores busy (docs/SERVE.md "Start-up time"). Where it loads, it
    stays loaded (as it would once torch asked CUDA's runtime): loading runs no CUDA call, cuInit included, so a
    driver whose kernel module does not match still loads, and torch then says whether it sees a GPU."""
    for name in CUDA_DRIVER_LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it. A finder that refuses it (an import hook that keeps
    it out, as tests/test_light_runtime.py does to play a light install) counts as not installed."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot run here, found cheaply (no export, no engine build); None: worth trying."""
    if name in ("torch-cpu", "torch-cuda"):
        no_torch = "torch is not installed (a light install: pip install 'ksdiff-runtime[train]' for it)"
        if not installed("torch"):
            return no_torch
        if name == "torch-cuda" and not cuda_driver_present():  # torch is not imported for it (seconds)
            return "torch sees no CUDA GPU (this machine has no CUDA driver)"
        try:
            import torch
        except ImportError:
            return no_torch
        if name == "torch-cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
        return None
    if name == "onnxruntime-cuda":
        import onnxruntime as ort

        ok = "CUDAExecutionProvider" in ort.get_available_providers()
        return None if ok else "this onnxruntime build has no CUDAExecutionProvider"
    if name == "tensorrt":
        if not installed("tensorrt"):
            return "the tensorrt Python package is not installed"
        if not cuda_driver_present():
            return "this machine has no CUDA driver"
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "the tensorrt Python package is not installed"
        try:
            from cuda.bindings import runtime  # noqa: F401
        except ImportError:
            try:
                from cuda import cudart  # noqa: F401
            except ImportError:
                return "the cuda-python package is not installed"
    return None


def resolve(name: str) -> str:
    """A concrete backend name for ``name`` (the aliases pick their GPU variant when it is available)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; valid names: {', '.join(BACKEND_NAMES)}")
    if name == "torch":
        return "torch-cuda" if unavailable_reason("torch-cuda") is None else "torch-cpu"
    if name == "onnxruntime":
        return "onnxruntime-cuda" if unavailable_reason("onnxruntime-cuda") is None else "onnxruntime-cpu"
    return name


def _load(name: str, checkpoint: Path, export_dir: Path | None, device_index: int, threads: int | None,
          cuda_graphs: bool, engine_cache: Path | None, int8: bool) -> Backend:
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(f"{name}: {reason}")
    if name in ("torch-cpu", "torch-cuda"):
        from ksdiff_runtime.model.checkpoint import load_model

        from .torch_backend import TorchBackend

        device = f"cuda:{device_index}" if name == "torch-cuda" else "cpu"
        return TorchBackend(load_model(checkpoint), device=device, cuda_graphs=cuda_graphs)
    export_dir = _export(checkpoint, export_dir)
    if name in ("onnxruntime-cpu", "onnxruntime-cuda"):
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(export_dir, device=name.split("-")[1], threads=threads, device_index=device_index,
                                  int8=int8 and name == "onnxruntime-cpu")
    from .tensorrt_backend import TensorRTBackend

    return TensorRTBackend(export_dir, device_index=device_index, cache_dir=engine_cache)


def _export(checkpoint: Path, export_dir: Path | None) -> Path:
    """The export to run ``checkpoint`` from: the shipped one for the bundled checkpoint, else one in
    ``export_dir`` (default: the cache), made now if it is not there (which needs torch)."""
    problem = export_problem(checkpoint, SHIPPED_EXPORT) if export_dir is None else None
    if export_dir is None and problem is None:
        return SHIPPED_EXPORT
    target = export_dir or default_export_dir(checkpoint)
    if problem is not None and checkpoint.resolve() == DEFAULT_CHECKPOINT.resolve():
        # the bundled checkpoint without its shipped export: an install damaged (or someone edited) the
        # package's files; say so, as the export used instead is made here (with torch) or an older one
        log.warning("the bundled checkpoint's shipped export cannot be used: %s. Reinstall ksdiff-runtime to restore "
                    "it; meanwhile the export in %s is used (made there now if missing, which needs torch)",
                    problem, target)
    if export_of(checkpoint, target):
        return target
    try:
        from .export import ensure_export  # the one place torch is needed on this path: making an export
    except ImportError as exc:
        raise BackendUnavailableError(f"{checkpoint} has no ONNX export in {target}, and making one needs "
                                      f"torch ({exc.name} is not installed): pip install 'ksdiff-runtime[train]', or "
                                      f"run `ksdiff-runtime export --checkpoint {checkpoint} -o {target}` where "
                                      "torch is installed") from exc
    return ensure_export(checkpoint, target)


def load_backend(
    name: str = "auto",
    checkpoint: str | Path = DEFAULT_CHECKPOINT,
    export_dir: str | Path | None = None,
    device_index: int = 0,
    *,
    fallback: bool = False,
    threads: int | None = None,
    cuda_graphs: bool = False,
    engine_cache: str | Path | None = None,
    int8: bool = False,
) -> Backend:
    """The named backend (see BACKEND_NAMES), loaded with ``checkpoint``.

    export_dir: where the ONNX export lives or is made (default: a per-checkpoint cache directory).
    device_index: the CUDA device for GPU backends. threads: ONNX Runtime intra-op threads.
    cuda_graphs: torch-cuda replays the denoiser from CUDA graphs. engine_cache: TensorRT engine
    directory (default ~/.cache/ksdiff-runtime/tensorrt). int8: onnxruntime-cpu runs the export's int8 denoiser (what
    `serve` runs on a CPU; docs/BACKENDS.md "int8 on the CPU"); the other backends have none and run float.
    A named backend that cannot load raises BackendError; with fallback=True it logs a warning and
    tries the faster-to-slower auto order after it instead. A bad checkpoint raises CheckpointError
    whatever the backend (every backend would fail on it).
    """
    concrete = resolve(name)
    checkpoint = checkpoint_file(checkpoint)
    options = dict(checkpoint=checkpoint, export_dir=Path(export_dir) if export_dir else None,
                   device_index=device_index, threads=threads, cuda_graphs=cuda_graphs,
                   engine_cache=Path(engine_cache) if engine_cache else None, int8=int8)
    if concrete == "auto":
        candidates = list(AUTO_ORDER)
    elif fallback:
        rank = PREFERENCE.index(concrete)
        candidates = [concrete] + [n for n in AUTO_ORDER if PREFERENCE.index(n) > rank]
    else:
        candidates = [concrete]
    failures = []
    for i, candidate in enumerate(candidates):
        try:
            backend = _load(candidate, **options)
        except BackendError as exc:
            failures.append(str(exc))
            if len(candidates) == 1:
                raise
            rest = candidates[i + 1 :]
            if concrete != "auto":
                log.warning("backend failed: %s; falling back to %s", exc,
                            rest[0] if rest else "nothing")
            elif isinstance(exc, BackendUnavailableError):
                log.info("backend skipped: %s", exc)
            else:  # present here but broken: worth a warning even when auto moves on
                log.warning("backend skipped, it failed to load: %s", exc)
            continue
        log.info("backend: %s%s", backend.name, " (auto)" if concrete == "auto" else "")
        return backend
    raise BackendError(f"no backend could be loaded for {name!r}: " + "; ".join(failures))
