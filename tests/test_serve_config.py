"""`serve`'s settings refused before anything loads: names the code does not know, floats that are not finite or out of
range, config files that cannot be read, one address bound twice, settings for an output or source that is off.

Each check runs `check()`/`load_config` directly or the CLI's main with the model's loading replaced by a failure, so
no test loads a model and a regression fails at once instead of after a warm-up.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ksdiff_runtime.backends.select import BACKEND_NAMES
from ksdiff_runtime.cli import main
from ksdiff_runtime.cli import serve as serve_cli
from ksdiff_runtime.engine.presets import PRESETS
from ksdiff_runtime.server.config import (
    MAX_AHEAD_S,
    MAX_FPS,
    MAX_IDLE_TIMEOUT_S,
    MAX_THREADS,
    ConfigError,
    ServeConfig,
    load_config,
)

LOOPBACK_EPHEMERAL = ["--pub", "tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0"]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve fails the test if it gets as far as loading the model (every refusal here comes before it)."""

    def build_engine(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("serve loaded the model")

    monkeypatch.setattr(serve_cli, "build_engine", build_engine)


def serve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`ksdiff-runtime serve ARGV` in this process: (exit code, stderr)."""
    code = main(["serve", *argv])
    return code, capsys.readouterr().err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- backend and preset names ---------------------------------------------------------------------
@pytest.mark.parametrize("argv, said", [
    (["--backend", "nope"], "backend must be one of auto, torch, torch-cpu"),
    (["--backend="], "backend must be one of auto,"),
    (["--preset", "nope"], "preset must be one of low-latency, quality; got 'nope'"),
    (["--preset="], "preset must be one of low-latency, quality; got ''"),
])
def test_an_unknown_backend_or_preset_is_one_error_line_before_the_model_loads(capsys, no_model, argv, said):
    """Before: a ValueError traceback, the preset's only after the backend had loaded."""
    code, err = serve(capsys, *LOOPBACK_EPHEMERAL, *argv)
    assert code == 2 and said in err and err.startswith("error: ") and err.count("\n") == 1, err


def test_backend_and_preset_names_come_from_the_code_that_loads_them(tmp_path):
    for name in BACKEND_NAMES:
        assert load_config(None, {"backend": name}).backend == name
    for name in PRESETS:
        assert load_config(None, {"preset": name}).preset == name
    with pytest.raises(ConfigError, match="backend must be one of"):
        load_config(write(tmp_path, 'backend = "cuda"\n'), {})


# --- floats: finite and in range ------------------------------------------------------------------
@pytest.mark.parametrize("setting", ["idle_timeout_s", "max_ahead_s", "stats", "mic_block_ms"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e300, -1.0])
def test_every_float_setting_is_finite_and_in_range(setting, value):
    """Before: NaN passed `<= 0` (idle timeout NaN crashed the engine after the model loaded, max_ahead_s NaN took
    away the limit on audio pushed ahead, stats NaN never printed a line), and inf or 1e300 passed too."""
    with pytest.raises(ConfigError, match=setting):
        load_config(None, {setting: value, "mic": True})


def test_float_settings_up_to_their_bounds_are_taken(tmp_path):
    config = load_config(None, {"idle_timeout_s": MAX_IDLE_TIMEOUT_S, "max_ahead_s": MAX_AHEAD_S, "stats": 0.0})
    assert (config.idle_timeout_s, config.max_ahead_s, config.stats) == (MAX_IDLE_TIMEOUT_S, MAX_AHEAD_S, 0.0)
    assert load_config(None, {"stats": 0.5}).stats == 0.5
    # TOML spells NaN and infinity too
    for text in ("idle_timeout_s = nan\n", "max_ahead_s = inf\n", "stats = nan\n", "idle_timeout_s = 1e300\n"):
        with pytest.raises(ConfigError, match="more than 0 and at most"):
            load_config(write(tmp_path, text), {})


def test_nan_idle_timeout_on_the_command_line_is_refused_before_the_model_loads(capsys, no_model):
    code, err = serve(capsys, *LOOPBACK_EPHEMERAL, "--idle-timeout-s", "nan")
    assert code == 2 and "idle_timeout_s must be more than 0 and at most 86400 seconds, got nan" in err, err


def test_fps_is_bounded(capsys, no_model):
    """Before: --fps 100000 was taken (serve spent 19.8 s starting up)."""
    assert load_config(None, {"fps": MAX_FPS}).fps == MAX_FPS
    for fps in (0, -30, MAX_FPS + 1):
        with pytest.raises(ConfigError, match=f"fps must be from 1 to {MAX_FPS}"):
            load_config(None, {"fps": fps})
    code, err = serve(capsys, *LOOPBACK_EPHEMERAL, "--fps", "100000")
    assert code == 2 and "fps must be from 1 to 240" in err, err


def test_an_avatar_app_driven_by_the_quality_preset_is_warned_about():
    """The quality preset's frames wait for a hop of audio: paced to their time, an avatar's face follows the
    voice over 0.66 s late (600 ms of frames and 60 ms of recogniser lookahead)."""
    said = ServeConfig(preset="quality", vmc="127.0.0.1:39539", vts="ws://127.0.0.1:8001").avatar_outputs_late()
    assert said is not None and said.startswith("--vmc and --vts with the quality preset") and "low-latency" in said
    assert "over 0.66 s late" in said
    assert ServeConfig(preset="low-latency", vmc="127.0.0.1:39539").avatar_outputs_late() is None
    assert ServeConfig(preset="quality").avatar_outputs_late() is None  # ZeroMQ clients buffer by t_audio


def test_livelink_and_vmc_sent_to_one_port_are_refused(capsys, no_model):
    """A VMC app got Live Link packets among its OSC bundles (python-osc: "Could not identify content type")."""
    code, err = serve(capsys, *LOOPBACK_EPHEMERAL, "--vmc", "127.0.0.1:39539", "--livelink", "127.0.0.1:39539")
    assert code == 2 and "--livelink and --vmc both send to 127.0.0.1:39539" in err, err
    assert load_config(None, {"vmc": "127.0.0.1:39539", "livelink": "127.0.0.1:11111"}).vmc == "127.0.0.1:39539"


def test_threads_are_bounded(capsys, no_model):
    """Before: --threads 100000 was taken, and ONNX Runtime tried to start that many threads."""
    assert load_config(None, {"threads": MAX_THREADS}).threads == MAX_THREADS
    for threads in (0, -1, MAX_THREADS + 1):
        with pytest.raises(ConfigError, match=f"threads must be at least 1 and at most {MAX_THREADS}"):
            load_config(None, {"threads": threads})
    code, err = serve(capsys, *LOOPBACK_EPHEMERAL, "--threads", "100000")
    assert code == 2 and "threads must be at least 1 and at most 256, got 100000" in err, err


# --- reading the config file ----------------------------------------------------------------------
def test_a_folder_or_an_unreadable_config_file_is_one_error_line(tmp_path, capsys, no_model, monkeypatch):
    """Before: an IsADirectoryError (or PermissionError) traceback."""
    code, err = serve(capsys, "--config", str(tmp_path))
    assert code == 2 and err.startswith(f"error: cannot read config file {tmp_path}: ") and "Traceback" not in err, err
    config = write(tmp_path, "fps = 30\n")

    def unreadable(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", unreadable)  # tests run as root here, where chmod 000 still reads
    with pytest.raises(ConfigError, match=f"cannot read config file {config}: Permission denied"):
        load_config(config, {})


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path):
    """Before: "not valid TOML: Invalid statement (at line 1, column 1)"."""
    config = tmp_path / "bom.toml"
    config.write_bytes(b"\xef\xbb\xbffps = 60\n")
    assert load_config(config, {}).fps == 60


def test_a_config_file_is_read_as_utf8_whatever_the_locale(tmp_path):
    """Before: read in the locale's encoding (cp1252 on Windows; ASCII in a C locale, as here), so "Micrófono" was
    mangled or the file refused as not valid TOML."""
    config = tmp_path / "utf8.toml"
    config.write_bytes('device = "Micrófono"\n'.encode())
    code = ("from ksdiff_runtime.server.config import load_config; "
            f"print(ascii(load_config({str(config)!r}, {{}}).device))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == ascii("Micrófono"), run.stderr[-2000:]


def test_a_config_file_not_in_utf8_says_so(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes('device = "Micrófono"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text .*save it as UTF-8"):
        load_config(config, {})


# --- one address bound twice ----------------------------------------------------------------------
@pytest.mark.parametrize("settings, flags", [
    ({"pub": "tcp://127.0.0.1:5600", "router": "tcp://127.0.0.1:5600"}, "--pub and --router"),
    ({"pub": "tcp://localhost:5600", "router": "tcp://127.0.0.1:5600"}, "--pub and --router"),
    ({"pub": "tcp://[::1]:5600", "router": "tcp://[0:0::1]:5600"}, "--pub and --router"),
    ({"pub": "tcp://*:5600", "router": "tcp://127.0.0.1:5600", "insecure_lan": True}, "--pub and --router"),
    ({"pub": "tcp://127.0.0.1:5601", "preview": 5601}, "--pub and --preview"),
    ({"router": "tcp://0.0.0.0:5601", "preview": 5601, "insecure_lan": True}, "--router and --preview"),
    ({"pub": "ipc:///tmp/ksdiff", "router": "ipc:///tmp/ksdiff"}, "--pub and --router"),
])
def test_one_address_bound_twice_is_refused_naming_both_flags(settings, flags):
    """Before: the second bind failed once the model had loaded (~5 s), blaming --pub even where --preview had
    taken the port."""
    with pytest.raises(ConfigError, match=flags):
        load_config(None, settings)


@pytest.mark.parametrize("settings", [
    {"pub": "tcp://127.0.0.1:0", "router": "tcp://127.0.0.1:0", "preview": 0},  # any free port, each its own
    {"pub": "tcp://127.0.0.1:*", "router": "tcp://127.0.0.1:*"},
    {"pub": "tcp://127.0.0.1:5600", "router": "tcp://127.0.0.2:5600"},  # two loopback addresses
    {"pub": "tcp://[::1]:5601", "preview": 5601},  # the preview binds 127.0.0.1 only
    {"pub": "ipc:///tmp/ksdiff-pub", "router": "ipc:///tmp/ksdiff-router"},
])
def test_addresses_that_do_not_clash_are_taken(settings):
    load_config(None, settings)


def test_a_tcp_port_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="must end in a port from 0 to 65535"):
        load_config(None, {"pub": "tcp://127.0.0.1:99999"})


def test_preview_on_the_pub_port_is_refused_on_the_command_line(capsys, no_model):
    code, err = serve(capsys, "--preview", "5601", "--pub", "tcp://127.0.0.1:5601", "--router", "tcp://127.0.0.1:0")
    assert code == 2 and "--pub and --preview both listen on port 5601" in err, err


# --- settings for an output or source that is off -------------------------------------------------
@pytest.mark.parametrize("argv, said", [
    (["--livelink-subject", "Face"], "--livelink-subject applies only with --livelink"),
    (["--livelink-stream", "mic"], "--livelink-stream applies only with --livelink"),
    (["--vmc-stream", "mic"], "--vmc-stream applies only with --vmc"),
    (["--vts-stream", "mic"], "--vts-stream applies only with --vts"),
    (["--vts-custom"], "--vts-custom applies only with --vts"),
    (["--fast"], "--fast applies only with --file"),
    (["--loop"], "--loop applies only with --file"),
    (["--exit-when-done"], "--exit-when-done applies only with --file"),
    (["--mic-rate", "48000"], "--mic-rate applies only with --mic"),
    (["--device", "USB"], "--device applies only with --mic"),
])
def test_a_flag_for_an_output_or_source_that_is_off_is_refused(capsys, no_model, argv, said):
    """Before: ignored without a word (--exit-when-done with no file ran forever)."""
    code, err = serve(capsys, *LOOPBACK_EPHEMERAL, *argv)
    assert code == 2 and said in err, err


def test_such_flags_with_their_output_or_source_are_taken(tmp_path):
    load_config(None, {"livelink": "127.0.0.1:11111", "livelink_subject": "Face", "vmc": "127.0.0.1:39539",
                       "vmc_stream": "mic", "vts": "ws://127.0.0.1:8001", "vts_custom": True, "mic": True,
                       "mic_rate": 48000, "device": "USB", "files": ["a.wav"], "fast": True, "exit_when_done": True})
    # the output on in the config file, its setting a flag
    assert load_config(write(tmp_path, 'livelink = "127.0.0.1:11111"\n'), {"livelink_subject": "Face"}).livelink


def test_the_config_files_settings_for_an_output_that_is_off_are_a_warning(tmp_path, capsys, caplog, monkeypatch):
    """A config file may keep an output's settings for the days a flag turns it on: serve says they are ignored
    and runs."""
    config = write(tmp_path, 'livelink_subject = "Face"\nexit_when_done = true\n')
    assert ServeConfig(livelink_subject="Face", exit_when_done=True).unused_settings().keys() == {
        "livelink_subject", "exit_when_done"}
    served: list[ServeConfig] = []
    monkeypatch.setattr(serve_cli, "serve", lambda c: served.append(c) or 0)
    caplog.set_level(logging.WARNING, logger="ksdiff_runtime.server")
    code, err = serve(capsys, *LOOPBACK_EPHEMERAL, "--config", str(config))
    assert code == 0 and len(served) == 1, err
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"config file {config}: livelink_subject applies only with --livelink, which is not given; it is " \
           "ignored" in warned, warned
    assert any(m.startswith(f"config file {config}: exit_when_done applies only with --file") for m in warned), warned
