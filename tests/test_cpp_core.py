"""The Unreal plugin's C++ protocol core (unreal_sample/core), built with CMake and run with ctest.

One pytest test per ctest test: the one-unit (Unreal-style) build check, the golden vectors, the
jitter buffer, the SUB client against a local publisher, CurveZMQ keys against a local CURVE
publisher, the Live Link feed, the DEALER client for NPC lines (LineClient) against a local ROUTER,
and the live test against a real `ksdiff-runtime serve` (this venv's, passed as KSDIFF_RUNTIME),
with and without keys. The build goes to
build/ksdiff_core (ignored by git) so reruns are incremental. Skipped, with the reason, on a
machine without cmake, a C++ compiler or the libraries (Debian: cmake g++ pkg-config libzmq3-dev
cppzmq-dev libmsgpack-cxx-dev nlohmann-json3-dev, which CI installs).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "unreal_sample" / "core"
BUILD = ROOT / "build" / "ksdiff_core"
RUNTIME = Path(sys.executable).with_name("ksdiff-runtime")  # the venv's console script
JOBS = "2"  # the machines running this are small and shared
BUILD_TIMEOUT_S = 600

# What a machine without the toolchain or the libraries says at configure time.
MISSING = ("KSDIFF_MISSING_DEPENDENCY", "No CMAKE_CXX_COMPILER could be found", "CMAKE_CXX_COMPILER not set")


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _same_source(build: Path) -> bool:
    """Whether an existing build dir was configured from this checkout's sources."""
    cache = build / "CMakeCache.txt"
    if not cache.is_file():
        return True
    m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", cache.read_text(errors="replace"), re.MULTILINE)
    return m is None or Path(m.group(1)).resolve() == SOURCE.resolve()


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialises configure + build between pytest runs sharing this checkout (one build dir)."""
    BUILD.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD.parent / "ksdiff_core.lock", "w") as lock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def built_core() -> Path:
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.skip("cmake/ctest not installed (Debian: cmake)")
    with _build_lock():
        return _configure_and_build()


def _configure_and_build() -> Path:
    if not _same_source(BUILD):
        shutil.rmtree(BUILD)  # configured from another checkout: CMake would refuse it
    configure = [
        "cmake", "-S", str(SOURCE), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        f"-DKSDIFF_RUNTIME={RUNTIME if RUNTIME.is_file() else ''}",
    ]
    r = _run(configure, BUILD_TIMEOUT_S)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        missing = [line.strip() for line in out.splitlines() if any(m in line for m in MISSING)]
        if missing:
            pytest.skip(f"C++ toolchain or libraries missing: {missing[0]}")
        pytest.fail(f"cmake configure failed:\n{out[-4000:]}")
    r = _run(["cmake", "--build", str(BUILD), "-j", JOBS], BUILD_TIMEOUT_S)
    assert r.returncode == 0, f"C++ build failed:\n{(r.stdout + r.stderr)[-6000:]}"
    return BUILD


def _ctest(build: Path, name: str, timeout: float) -> None:
    r = _run(["ctest", "--test-dir", str(build), "-R", f"^{name}$", "--output-on-failure", "--no-tests=error"],
             timeout)
    out = r.stdout + r.stderr
    if "***Skipped" in out:  # ctest's word for SKIP_RETURN_CODE (77)
        pytest.skip(f"ctest skipped {name}:\n{out[-1500:]}")
    assert r.returncode == 0, f"ctest {name} failed:\n{out[-8000:]}"
    assert "100% tests passed" in out, out[-4000:]


@pytest.mark.parametrize("name", ["unity_build", "golden_vectors", "jitter_buffer", "subscriber", "curve",
                                  "live_link_feed", "line_client"])
def test_cpp_core_unit(built_core: Path, name: str):
    _ctest(built_core, name, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(420)  # four `serve` starts and a key run; ctest's own bound is 300 s
def test_cpp_core_against_live_runtime(built_core: Path):
    """The C++ subscriber against `ksdiff-runtime serve`: a DEALER-driven stream arrives whole
    (stream_start, frames 0..N-1, stream_end), a looping file stream survives a restart, and with
    keys from `ksdiff-runtime keys` only the authorised client gets anything (CurveZMQ)."""
    if not RUNTIME.is_file():
        pytest.skip(f"no ksdiff-runtime next to {sys.executable}")
    _ctest(built_core, "live_runtime", timeout=340)
