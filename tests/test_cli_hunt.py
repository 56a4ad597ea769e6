"""What `export`, `serve` and `demo` did with the leftovers of earlier hunts: a recogniser graph rewritten in place, an
export to `.`, a manifest of the wrong shape, `--loop --exit-when-done`, the int8 quantiser's log lines, and a plot
folder that takes no files. Each is a real run (exports of the tiny checkpoint, serve in its own process); none
touches the package's own files (the recogniser graphs are written to a temporary folder).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ksdiff_runtime import cli
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends import load_backend
from ksdiff_runtime.backends.artifact import MANIFEST_FILE, ExportError, export_problem, load_export
from ksdiff_runtime.backends.export import QuietQuantiser, export_model
from ksdiff_runtime.cli.export import RECOGNISER_GRAPHS, write_graphs


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # default export caches go to a temp dir, never the user's ~/.cache
    monkeypatch.setenv("KSDIFF_RUNTIME_CACHE", str(tmp_path / "cache"))


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- export --recogniser: the graphs replaced whole, or not at all -------------------------------------------------
def test_recogniser_graphs_are_written_to_their_paths_as_the_shipped_ones(tmp_path: Path) -> None:
    graphs = [(tmp_path / path.name, write) for path, write in RECOGNISER_GRAPHS]
    write_graphs(graphs)
    for (written, _), (shipped, _) in zip(graphs, RECOGNISER_GRAPHS, strict=True):
        assert written.read_bytes() == shipped.read_bytes(), written
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p, _ in graphs)  # no temporary left


def test_a_recogniser_export_that_fails_part_way_leaves_both_graphs_as_they_were(tmp_path: Path) -> None:
    """The graphs were written in place: a failure (a full disk, Ctrl-C) part-way through left a truncated graph
    where the runtime loads it, and the other graph already replaced."""
    (graph, write_graph), (step, _) = RECOGNISER_GRAPHS
    old_graph, old_step = tmp_path / graph.name, tmp_path / step.name
    old_graph.write_bytes(graph.read_bytes())
    old_step.write_bytes(step.read_bytes())

    def disk_full_half_way(path: Path) -> None:
        # what a full disk does to the second graph: part of its bytes written, then ENOSPC
        path.write_bytes(step.read_bytes()[: step.stat().st_size // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(ExportError, match=r"No space left on device.*the graphs there are unchanged"):
        write_graphs([(old_graph, write_graph), (old_step, disk_full_half_way)])
    assert old_graph.read_bytes() == graph.read_bytes()
    assert old_step.read_bytes() == step.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([graph.name, step.name])  # no temporary left


# --- export -o: the current folder, a folder above it, ~ ----------------------------------------------------------
@pytest.mark.parametrize("target, said", [
    (".", "it is the current folder"),
    ("..", "it holds the current folder"),
    ("/", "it holds the current folder"),
])
@pytest.mark.parametrize("holds_files", [False, True])
def test_export_to_the_current_folder_or_one_above_it_is_refused_with_a_folder_to_use(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        target: str, said: str, holds_files: bool) -> None:
    """`-o .` said "remove it first" (of the current folder, or of /), and in an empty current folder exported into
    it, then failed to swap `.` with "another process keeps replacing it", leaving a `..tmp-` folder behind."""
    work = tmp_path / "work"
    work.mkdir()
    if holds_files:
        (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "-o", target, "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"will not export to {target}: {said}" in line, line
    assert "remove it" not in line and line.endswith("-o ksdiff-export"), line
    assert sorted(p.name for p in work.iterdir()) == (["notes.txt"] if holds_files else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing moved aside or left behind


def test_export_to_the_current_folder_through_a_link_is_refused(
        tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The current folder named through a link to a folder above it (`/tmp/link/work` where `link` -> `real`): the
    same folder, refused. Compared without resolving links, it passed, and an empty current folder was exported into
    (moved aside and deleted)."""
    work = tmp_path / "real" / "work"
    work.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(work)
    target = tmp_path / "link" / "work"
    assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(target), "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"will not export to {target}: it is the current folder" in line, line
    assert work.is_dir() and list(work.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["work"]  # nothing moved aside or left behind


def test_export_to_a_folder_of_the_users_files_suggests_a_new_folder_inside_it(
        tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "-o", str(mine), "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "it is not an export: it holds notes.txt" in line and "remove it" not in line, line
    assert line.endswith(f"-o {mine / 'ksdiff-export'}"), line


def test_export_to_a_tilde_path_goes_to_the_home_folder(tiny_checkpoint: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`--output=~/exports/x` reaches the command as it is (the shell expands ~ only at a word's start): it made a
    folder named "~" in the current folder."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert cli.main(["export", "--checkpoint", str(tiny_checkpoint), "--output=~/exports/x", "--no-progress"]) == 0
    load_export(home / "exports" / "x")
    assert not any(work.iterdir())


# --- a manifest of the wrong shape -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def made_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tiny_checkpoint, tmp_path_factory.mktemp("made") / "exp", progress=False).path


WRONG_SHAPES: dict[str, Callable[[dict], dict]] = {
    "graphs a list": lambda m: m | {"graphs": []},
    "a graph's entry a list": lambda m: m | {"graphs": m["graphs"] | {"denoiser": []}},
    "a graph's inputs a number": lambda m: m | {"graphs": m["graphs"] | {"denoiser": m["graphs"]["denoiser"]
                                                                         | {"inputs": 3}}},
    "checkpoint a list": lambda m: m | {"checkpoint": []},
    "checkpoint without sha256": lambda m: m | {"checkpoint": {}},
    "config a list": lambda m: m | {"config": []},  # was read as the default config: the bundled model's sizes
    "config without a field": lambda m: m | {"config": {k: v for k, v in m["config"].items() if k != "d_model"}},
    "a config field a string": lambda m: m | {"config": m["config"] | {"d_model": str(m["config"]["d_model"])}},
}


@pytest.mark.parametrize("shape", WRONG_SHAPES)
def test_a_manifest_of_the_wrong_shape_is_an_export_error_naming_it(made_export: Path, tiny_checkpoint: Path,
                                                                    tmp_path: Path, shape: str) -> None:
    """Valid JSON of the wrong shape raised AttributeError, TypeError or KeyError from load_export and export_problem
    (a traceback from every command, and the cache never made again), or was taken with the default config."""
    exp = tmp_path / "exp"
    shutil.copytree(made_export, exp)
    manifest = json.loads((exp / MANIFEST_FILE).read_text())
    (exp / MANIFEST_FILE).write_text(json.dumps(WRONG_SHAPES[shape](manifest)))
    with pytest.raises(ExportError, match=f"export {exp}: {MANIFEST_FILE} is malformed"):
        load_export(exp)
    problem = export_problem(tiny_checkpoint, exp)
    assert problem is not None and f"{MANIFEST_FILE} is malformed" in problem


def test_a_cached_export_with_a_malformed_manifest_is_made_again(tiny_checkpoint: Path, tmp_path: Path) -> None:
    load_backend("onnxruntime-cpu", tiny_checkpoint)  # the cache's export, made now
    (exp,) = (tmp_path / "cache" / "exports").iterdir()
    manifest = json.loads((exp / MANIFEST_FILE).read_text())
    (exp / MANIFEST_FILE).write_text(json.dumps(manifest | {"graphs": []}))
    assert load_backend("onnxruntime-cpu", tiny_checkpoint).name == "onnxruntime-cpu"  # raised AttributeError
    assert load_export(exp)[2] == manifest


# --- serve --loop --exit-when-done --------------------------------------------------------------------------------
def run_serve(*flags: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """serve in its own process, bounded: before the fix these flags served forever, and the timeout says so."""
    return subprocess.run([sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--pub", "tcp://127.0.0.1:0",
                           "--router", "tcp://127.0.0.1:0", "--backend", "torch-cpu", "--fast", *flags],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def test_serve_refuses_loop_with_exit_when_done(tmp_path: Path) -> None:
    """Looped files never finish playing: `--file X --loop --exit-when-done` served forever without a word."""
    done = run_serve("--file", str(SAMPLE_SPEECH), "--loop", "--exit-when-done", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "--loop and --exit-when-done contradict each other" in line, line

    # the same from the config file and a flag: still refused, and the file is named
    config = tmp_path / "serve.toml"
    config.write_text("loop = true\n")
    done = run_serve("--config", str(config), "--file", str(SAMPLE_SPEECH), "--exit-when-done", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "contradict each other" in line and str(config) in line, line


# --- the int8 quantiser's log lines ---------------------------------------------------------------------------
def test_an_export_logs_none_of_the_quantisers_info_lines(tiny_checkpoint: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """ONNX Runtime's quantiser logs a dozen INFO lines on the root logger per export, and advice to pre-process
    the model: on the console of `export` and of a first `serve` of one's own checkpoint."""
    caplog.set_level(logging.INFO)  # as the command line sets it
    export_model(tiny_checkpoint, tmp_path / "exp", progress=False)
    quantiser = [r for r in caplog.records if f"{os.sep}onnxruntime{os.sep}quantization{os.sep}" in r.pathname]
    assert quantiser == [], [r.getMessage()[:80] for r in quantiser]
    assert any("exported" in r.getMessage() for r in caplog.records)  # our own INFO line still comes


def test_the_quantisers_own_warnings_and_other_loggers_lines_still_come() -> None:
    quiet = QuietQuantiser()
    inside = os.path.join(quiet.package, "onnx_quantizer.py")

    def record(level: int, msg: str, pathname: str) -> logging.LogRecord:
        return logging.LogRecord("root", level, pathname, 1, msg, None, None)

    assert not quiet.filter(record(logging.INFO, "Quantization parameters for tensor:'x' not specified", inside))
    assert not quiet.filter(record(logging.WARNING, "Please consider to run pre-processing before quantization. "
                                   "Refer to example: ...", inside))
    assert quiet.filter(record(logging.WARNING, "the model opset is below 10", inside))
    assert quiet.filter(record(logging.ERROR, "failed", inside))
    assert quiet.filter(record(logging.INFO, "exported", __file__))


# --- demo: a plot folder that takes no files --------------------------------------------------------------------
@pytest.mark.skipif(not os.path.isdir("/proc") or not os.access("/proc", os.W_OK),
                    reason="needs /proc, which os.access calls writable (as root on Linux)")
def test_demo_says_a_plot_folder_that_takes_no_files_before_it_runs(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """As root, os.access passes /proc (and other folders where no file can be made): the demo ran to its end and
    only then said the plot could not be written."""
    def popen(*args: object, **kwargs: object) -> None:
        raise AssertionError("demo started serve although its plot cannot be written")

    monkeypatch.setattr(subprocess, "Popen", popen)
    assert cli.main(["demo", "--seconds", "1", "--out", "/proc/demo.png"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write the plot /proc/demo.png: cannot make files in /proc" in line, line


def test_serve_called_from_python_checks_its_config_as_the_command_does(capsys: pytest.CaptureFixture[str]) -> None:
    """``serve(config)`` with a ServeConfig made in Python (not through load_config) was not checked: looped files
    with exit_when_done served forever, and any other setting load_config refuses went through too."""
    from ksdiff_runtime.cli.serve import serve
    from ksdiff_runtime.server.config import ServeConfig

    looped = ServeConfig(pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", files=[str(SAMPLE_SPEECH)], loop=True,
                         exit_when_done=True)
    assert serve(looped) == 2
    assert "--loop and --exit-when-done contradict each other" in one_error_line(capsys.readouterr().err)
    assert serve(ServeConfig(pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", fps=0)) == 2
    assert "fps must be from 1" in one_error_line(capsys.readouterr().err)
