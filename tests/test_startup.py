"""`serve`'s start-up imports only what serving needs (docs/SERVE.md "Start-up time").

Each check runs in a fresh Python process: what a module imports shows only in an interpreter that had not
imported it yet (this test process has torch loaded by other tests' fixtures).
"""

from __future__ import annotations

import _ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ksdiff_runtime.backends import select
from ksdiff_runtime.backends.select import cuda_driver_present, unavailable_reason

TIMEOUT_S = 300  # a fresh interpreter loading the model and warming it up, on 2 busy cores


HEAVY = ("torch", "matplotlib", "librosa", "numba", "pandas", "sklearn", "tensorrt")


def modules_after(code: str, heavy: tuple[str, ...] = HEAVY) -> dict[str, bool]:
    """Runs ``code`` in a fresh interpreter; which of the ``heavy`` modules were imported by then."""
    script = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {heavy!r}}}))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_serve_command_imports_no_heavy_module() -> None:
    imported = modules_after("import ksdiff_runtime.cli.serve")
    assert not any(imported.values()), imported


@pytest.mark.parametrize("code", ["from ksdiff_runtime.cli import build_parser; build_parser([])",
                                  "from ksdiff_runtime.cli import build_parser; build_parser(['keys'])",
                                  "from ksdiff_runtime.cli import build_parser; build_parser(['devices'])",
                                  "import ksdiff_runtime.cli.supervise"])
def test_commands_that_serve_nothing_import_none_of_the_runtimes_libraries(code: str) -> None:
    # `--help`, `keys` and `devices` answer at once (scipy.signal alone was 1.1 s of each, and 100 MB), and
    # `serve --restart`'s supervisor, which stays beside serve for hours, holds none of them
    imported = modules_after(code, (*HEAVY, "scipy", "onnxruntime"))
    assert not any(imported.values()), imported


@pytest.mark.skipif(cuda_driver_present(), reason="with a CUDA driver, auto rightly asks torch whether it sees a GPU")
def test_serve_s_engine_on_a_machine_without_a_cuda_driver_is_built_without_importing_torch() -> None:
    # torch is installed here (the tests' venv), as on a developer's or trainer's machine; auto tries torch-cuda
    # before onnxruntime-cpu, and importing torch only to hear it sees no GPU cost `serve` 1 s idle, 2-4 s on
    # busy cores. The engine is built as `serve` builds it (model, warm-up, capacity probe).
    imported = modules_after("from ksdiff_runtime.server.runtime import build_engine\n"
                             "engine = build_engine('auto')\n"
                             "assert engine.backend.name == 'onnxruntime-cpu', engine.backend.name\n"
                             "engine.close()")
    assert not any(imported.values()), imported


@pytest.mark.skipif(cuda_driver_present() or sys.platform != "linux",
                    reason="checks a Linux machine without a CUDA driver, and made to look as if it had one")
def test_torch_is_still_asked_about_the_gpu_where_a_cuda_driver_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a driver the answer comes from the driver check alone; with one (here the C library stands in for the
    # driver's, as any library that loads would), torch itself decides, as before: a GPU machine still gets
    # torch-cuda from auto.
    assert unavailable_reason("torch-cuda") == "torch sees no CUDA GPU (this machine has no CUDA driver)"
    monkeypatch.setattr(select, "CUDA_DRIVER_LIBRARIES", ("libc.so.6",))
    assert cuda_driver_present()
    assert unavailable_reason("torch-cuda") == "torch sees no CUDA GPU"  # torch.cuda.is_available() said so


@pytest.mark.skipif(cuda_driver_present() or sys.platform != "linux" or not getattr(_ctypes, "__file__", None),
                    reason="checks a Linux machine without a CUDA driver (with a loadable library to stand in)")
def test_the_cuda_toolkits_unversioned_stub_library_is_not_taken_for_a_driver(tmp_path: Path) -> None:
    # The toolkit's stubs/libcuda.so (for linking; its every call answers CUDA_ERROR_STUB_LIBRARY) is found by that
    # name where its directory is on LD_LIBRARY_PATH, as in CUDA build images and CI; CUDA's runtime (torch's,
    # TensorRT's) loads the driver as libcuda.so.1 alone, so it is no driver, and torch would be imported for
    # nothing. A library that loads (ctypes' own) stands in for the stub, in a fresh process that reads the path.
    (tmp_path / "libcuda.so").symlink_to(_ctypes.__file__)
    script = ("import ctypes\nfrom ksdiff_runtime.backends.select import cuda_driver_present\n"
              "ctypes.CDLL('libcuda.so')  # the stand-in loads by that name\nprint(cuda_driver_present())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT_S,
                         env=dict(os.environ, LD_LIBRARY_PATH=str(tmp_path)))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "False"
