"""The first run a user meets: `export`, the cache of ONNX exports the backends make, and `demo`, where they fail.

Each failure is one `error:` line and a nonzero exit, never a traceback; nothing the user had is deleted or replaced
by a broken file; and a later run recovers by itself. No test here starts `serve` or loads the bundled model:
exports are of the tiny checkpoint (a few seconds), and demo's checks run before serve would start.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ksdiff_runtime import cli
from ksdiff_runtime.backends import export as export_mod
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.backends.artifact import CONSTANTS_FILE, ExportError, export_problem, load_export
from ksdiff_runtime.backends.export import ensure_export, export_model
from ksdiff_runtime.cli import demo


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # default export caches go to a temp dir, never the user's ~/.cache
    monkeypatch.setenv("KSDIFF_RUNTIME_CACHE", str(tmp_path / "cache"))


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- export -o: what is there already ------------------------------------------------------------
def test_export_never_deletes_a_folder_or_file_that_is_not_an_export(tiny_checkpoint: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`export -o out` where out/ holds the user's files (or out is a file) used to move it aside and delete it."""
    mine = tmp_path / "out"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    a_file = tmp_path / "take.csv"
    a_file.write_text("Timecode,...\n")
    for target in (mine, a_file):
        assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(target), "--no-progress"]) == 1
        line = one_error_line(capsys.readouterr().err)
        assert f"will not export to {target}" in line, line
    assert (mine / "notes.txt").read_text() == "precious" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert a_file.read_text() == "Timecode,...\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "take.csv"]  # nothing moved aside

    # what it does replace: an export, and one left broken (a hand edit, an old crash)
    exp = tmp_path / "exp"
    first = export_model(tiny_checkpoint, exp, progress=False)
    (exp / "manifest.json").unlink()
    (exp / "denoiser.onnx").write_bytes(b"half")
    assert export_model(tiny_checkpoint, exp, progress=False).manifest == first.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "out", "take.csv"]




# --- a disk that cannot take the export ------------------------------------------------------------
def test_an_export_that_cannot_be_written_is_an_export_error_and_keeps_the_old_one(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "exp"
    good = export_model(tiny_checkpoint, out, progress=False).manifest
    real_write = export_mod._write_export

    def disk_full(checkpoint: Path, tmp: Path, progress: bool) -> dict[str, float]:
        real_write(checkpoint, tmp, progress)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "manifest.json"))

    monkeypatch.setattr(export_mod, "_write_export", disk_full)
    with pytest.raises(ExportError, match=r"cannot write the export to .*No space left on device"):
        export_model(tiny_checkpoint, out, progress=False)
    assert load_export(out)[2] == good  # the previous export untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # and no debris

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ExportError, match="cannot write the export to"):  # a real OSError: a file where a folder goes
        export_model(tiny_checkpoint, blocker / "exp", progress=False)


def test_an_unwritable_cache_is_said_in_one_line_and_auto_runs_without_it(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A cache on a read-only or full disk (here: under a file) raised a bare OSError: a traceback from every
    command, and `auto` did not fall back to torch-cpu, which needs no export."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("KSDIFF_RUNTIME_CACHE", str(blocker / "cache"))
    with pytest.raises(ExportError, match="cannot write the export to"):
        load_backend("onnxruntime-cpu", tiny_checkpoint)
    assert load_backend("auto", tiny_checkpoint).name == "torch-cpu"
    assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(blocker / "exp"), "--no-progress"]) == 1
    assert "cannot write the export to" in one_error_line(capsys.readouterr().err)


# --- a damaged export in the cache ----------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_corrupt_constants_file_in_the_cache_is_made_again(tiny_checkpoint: Path, tmp_path: Path,
                                                             damage: str) -> None:
    """constants.npz is not in model_hash: a truncated one raised BadZipFile (an emptied one EOFError) from every
    later run instead of the export being made again."""
    exp = tmp_path / "exp"
    ensure_export(tiny_checkpoint, exp)
    constants = exp / CONSTANTS_FILE
    good = constants.read_bytes()
    constants.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"")
    problem = export_problem(tiny_checkpoint, exp)
    assert problem is not None and f"{CONSTANTS_FILE} is corrupt" in problem
    assert ensure_export(tiny_checkpoint, exp) == exp
    assert constants.read_bytes() == good
    load_export(exp)


# --- demo: the plot's path and --seconds, checked before serve starts ----------------------------------------
@pytest.fixture
def no_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    def popen(*args: object, **kwargs: object) -> None:
        raise AssertionError("demo started serve although its plot cannot be written")

    monkeypatch.setattr(subprocess, "Popen", popen)


@pytest.mark.parametrize("out, said", [
    ("a-file/demo.png", "a-file is not a folder"),
    ("folder", "is a folder; give the plot's file name"),
    ("demo.notaformat", "matplotlib cannot write .notaformat files"),
])
def test_demo_says_the_plot_cannot_be_written_before_it_runs(tmp_path: Path, no_serve: None, out: str, said: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "folder").mkdir()
    assert cli.main(["demo", "--seconds", "1", "--out", str(tmp_path / out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert said in line, line
    assert (tmp_path / "a-file").read_text() == "mine" and not any((tmp_path / "folder").iterdir())


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_demo_refuses_seconds_it_cannot_run_for(value: str, no_serve: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", f"--seconds={value}"])
    assert exit_.value.code == 2
    assert "--seconds" in capsys.readouterr().err


def fake_frames(n: int) -> list[SimpleNamespace]:
    class Frame(SimpleNamespace):
        def __getitem__(self, name: str) -> float:
            return 0.5

    return [Frame(t_audio=i / 30, head=np.zeros(3), latency_ms=100.0) for i in range(n)]


def test_demo_plot_that_fails_to_write_keeps_the_last_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    path = tmp_path / "demo.png"
    demo.plot(path, fake_frames(30))
    last = path.read_bytes()
    assert last.startswith(b"\x89PNG")

    def full_disk(self: Figure, fname: object, **kwargs: object) -> None:
        Path(str(fname)).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError):
        demo.plot(path, fake_frames(30))
    assert path.read_bytes() == last
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]


# --- Ctrl-C in the first seconds ------------------------------------------------------------------------
def test_ctrl_c_while_the_command_loads_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`export` imports torch before it runs (seconds): Ctrl-C then gave a traceback through torch's import."""
    def interrupted(name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["export", "-o", "anywhere"]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == "interrupted" and not captured.out


# --- TensorRT's engine cache on a disk that cannot take it ---------------------------------------------------
def test_an_engine_that_cannot_be_cached_is_still_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An engine build takes minutes; a read-only or full cache then raised OSError and lost it (and `auto` did not
    fall back). Without TensorRT: the backend's cache step with a stand-in runtime and build."""
    from ksdiff_runtime.backends.tensorrt_backend import (
        BuildSettings,
        GpuInfo,
        TensorRTBackend,
        key_fields,
        plan_engine,
    )

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    backend = TensorRTBackend.__new__(TensorRTBackend)  # no GPU here: only what _load_or_build reads
    backend.cache_dir = blocker / "tensorrt"
    backend.runtime = SimpleNamespace(deserialize_cuda_engine=lambda data: ("engine", bytes(data)))
    backend._build = lambda graph: b"serialized engine"
    fields = key_fields("denoiser", GpuInfo("NVIDIA H100", "9.0"), "10.3.0", "ab" * 32, BuildSettings())
    with caplog.at_level("WARNING", "ksdiff_runtime.backends"):
        engine = backend._load_or_build(plan_engine(backend.cache_dir, fields))
    assert engine == ("engine", b"serialized engine")
    assert "cannot cache the denoiser engine" in caplog.text


def test_no_home_directory_is_said_and_auto_runs_without_a_cache(tiny_checkpoint: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A container run as a uid with no home (no $HOME, not in /etc/passwd): Path.home() raised RuntimeError, a
    traceback from any command given another checkpoint than the bundled one."""
    for name in ("KSDIFF_RUNTIME_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(ExportError, match="set KSDIFF_RUNTIME_CACHE"):
        load_backend("onnxruntime-cpu", tiny_checkpoint)
    assert load_backend("auto", tiny_checkpoint).name == "torch-cpu"
