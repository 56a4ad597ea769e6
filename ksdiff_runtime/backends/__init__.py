"""Inference backends: one interface (base.Backend), several runtimes, chosen by name with load_backend.

Runtimes other than torch (onnxruntime, tensorrt, cuda-python) are imported only when a backend
that uses them is loaded, so this package imports without them.
"""

from .base import Backend, BackendError, ModelConstants
from .select import AUTO_ORDER, BACKEND_NAMES, BackendUnavailableError, load_backend

__all__ = ["AUTO_ORDER", "BACKEND_NAMES", "Backend", "BackendError", "BackendUnavailableError", "ModelConstants",
           "load_backend"]
