"""The Unity package's C# core (unity_sample/Runtime/Core), built with Mono's mcs and tested.

Unity itself is not available here: the core and its NUnit-style tests (unity_sample/Tests/Editor)
use no UnityEngine, so they compile with Debian's Mono (`mono-mcs`) against a small NUnit shim
(unity_sample/Tests~/ci), and run with `mono`. One pytest test per C# test fixture; the fixtures
that open sockets use the libzmq P/Invoke transport (Debian's `libzmq5`); the live test runs a real
`ksdiff-runtime serve` (this venv's). The decode benchmark prints its figure (it is a measurement,
not a timed test). The build goes to build/unity_core (ignored by git). Skipped, with the reason, on
a machine without mcs/mono (Debian: mono-mcs, which CI installs with libzmq5).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "unity_sample"
BUILD_SCRIPT = PACKAGE / "Tests~" / "ci" / "build.sh"
BUILD = ROOT / "build" / "unity_core"
GOLDEN = ROOT / "protocol" / "golden"
SAMPLE_WAV = ROOT / "ksdiff_runtime" / "assets" / "sample_speech.wav"
RUNTIME = Path(sys.executable).with_name("ksdiff-runtime")  # the venv's console script
BUILD_TIMEOUT_S = 300

# Every [TestFixture] of unity_sample/Tests/Editor but the live one; test_fixture_list checks that
# this list and the test runner's agree, so a new fixture cannot go unrun.
UNIT_FIXTURES = [
    "AllocationTests",
    "BakeTests",
    "ClientTests",
    "CurveKeyTests",
    "DecoderTests",
    "FaceRigTests",
    "GoldenVectorTests",
    "JitterBufferTests",
    "LifecycleTests",
    "MappingTests",
    "NpcLineTests",
]
LIVE_FIXTURE = "LiveTests"


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialises the build between pytest runs sharing this checkout (one build dir)."""
    BUILD.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD.parent / "unity_core.lock", "w") as lock:
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
    missing = [tool for tool in ("mcs", "mono", "bash") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: mono-mcs)")
    with _build_lock():
        r = _run(["bash", str(BUILD_SCRIPT), str(BUILD)], BUILD_TIMEOUT_S)
    assert r.returncode == 0, f"C# build failed:\n{(r.stdout + r.stderr)[-6000:]}"
    return BUILD


@pytest.fixture(scope="module")
def pyzmq_certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificate files written by pyzmq itself, for the C# loader (CertificateFilesWrittenByPyzmqLoad)."""
    import zmq.auth

    d = tmp_path_factory.mktemp("certs")
    server_public, _ = zmq.auth.create_certificates(d, "server")
    _, client_secret = zmq.auth.create_certificates(d, "client")
    pub, _ = zmq.auth.load_certificate(server_public)
    _, sec = zmq.auth.load_certificate(client_secret)
    (d / "expected_server_public.txt").write_text(pub.decode())
    (d / "expected_client_secret.txt").write_text(sec.decode())
    return d


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, KSDIFF_GOLDEN_DIR=str(GOLDEN))
    env.update(extra)
    return env


def _fixture(build: Path, name: str, timeout: float, env: dict[str, str]) -> str:
    r = _run(["mono", "--debug", str(build / "KsdiffTests.exe"), "--fixture", name], timeout, env)
    out = r.stdout + r.stderr
    m = re.search(r"^RESULT passed=(\d+) failed=(\d+) skipped=(\d+)$", out, re.MULTILINE)
    assert m is not None, f"no RESULT line from {name}:\n{out[-8000:]}"
    passed, failed, skipped = (int(g) for g in m.groups())
    assert r.returncode == 0 and failed == 0, f"C# {name} failed:\n{out[-8000:]}"
    if skipped and not passed:
        pytest.skip(f"{name} skipped:\n{out[-1500:]}")
    assert skipped == 0, f"{name}: some tests were skipped:\n{out[-4000:]}"
    return out


def test_core_is_free_of_unity(built_core: Path):
    """Runtime/Core must compile without Unity: no UnityEngine/UnityEditor in it (the build proves
    it compiles without them; this names the file if one slips in)."""
    def code(path: Path) -> str:  # the source without its // comments, which may name Unity
        return re.sub(r"//.*", "", path.read_text())

    offenders = [
        str(p.relative_to(ROOT))
        for p in (PACKAGE / "Runtime" / "Core").rglob("*.cs")
        if re.search(r"\b(UnityEngine|UnityEditor|NetMQ|MessagePack)\b", code(p))
    ]
    assert offenders == []


def test_package_assets_have_meta_files():
    """A git-URL package is immutable: Unity ignores any asset without its .meta there."""
    r = _run([sys.executable, str(PACKAGE / "Tests~" / "ci" / "make_meta.py"), "--check"], 60)
    assert r.returncode == 0, f"run unity_sample/Tests~/ci/make_meta.py:\n{r.stdout}{r.stderr}"
    guids = [line.split()[1] for meta in PACKAGE.rglob("*.meta") for line in meta.read_text().splitlines()
             if line.startswith("guid:")]
    assert len(guids) == len(set(guids)), "duplicate GUIDs"


UNITY_API_SCRIPT = PACKAGE / "Tests~" / "ci" / "check_unity_api.sh"
UNITY_API_BUILD = ROOT / "build" / "unity_api"


def test_the_unity_components_compile_against_the_unity_and_netmq_api():
    """Runtime/Unity, Runtime/NetMQ, Editor and the samples compile, split as their asmdefs split them, against a
    stand-in of the Unity and NetMQ API written from their documentation and source (Tests~/ci/standin)
    and against the core: a Unity user who meets one compile error gets nothing of the package.
    It is not Unity's compiler and nothing runs; it catches wrong names, types, signatures and
    missing asmdef references, in the editor, desktop-player and mobile-player configurations."""
    missing = [tool for tool in ("mcs", "bash") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: mono-mcs)")
    with _build_lock():  # build/ is shared with the core's build; one compiler at a time on it
        r = _run(["bash", str(UNITY_API_SCRIPT), str(UNITY_API_BUILD)], BUILD_TIMEOUT_S,
                 env=dict(os.environ, PYTHON=sys.executable))
    assert r.returncode == 0, f"the Unity-facing code does not compile:\n{(r.stdout + r.stderr)[-6000:]}"


def test_fixture_list(built_core: Path):
    r = _run(["mono", str(built_core / "KsdiffTests.exe"), "--list"], 60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(r.stdout.split()) == sorted([*UNIT_FIXTURES, LIVE_FIXTURE])


@pytest.mark.parametrize("name", UNIT_FIXTURES)
def test_unity_core(built_core: Path, pyzmq_certificates: Path, name: str):
    _fixture(built_core, name, timeout=180, env=_env(KSDIFF_PYZMQ_CERTS=str(pyzmq_certificates)))


def test_unity_decode_benchmark(built_core: Path):
    """Prints the decode cost per frame under Mono (run pytest with -s to see it)."""
    r = _run(["mono", str(built_core / "KsdiffBench.exe"), str(GOLDEN / "frame.msgpack")], 120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^decode: \d+\.\d+ us/frame", r.stdout, re.MULTILINE), r.stdout
    print("\n" + r.stdout)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_unity_core_against_live_runtime(built_core: Path):
    """The C# client against `ksdiff-runtime serve --backend onnxruntime` on free loopback ports: a
    3 s NPC line in mode line (after a 1 s one that warms the model up) arrives whole, in order and
    faster than real time, and plays on the audio clock; a looping file stream survives a runtime restart; and with
    keys from `ksdiff-runtime keys` only the authorised client gets anything (CurveZMQ)."""
    if not RUNTIME.is_file():
        pytest.skip(f"no ksdiff-runtime next to {sys.executable}")
    out = _fixture(built_core, LIVE_FIXTURE, timeout=800,
                   env=_env(KSDIFF_RUNTIME=str(RUNTIME), KSDIFF_SAMPLE_WAV=str(SAMPLE_WAV)))
    print("\n" + out)
