"""The runtime without torch: `serve` and `bake` run the bundled model from its shipped ONNX export.

A light install (pip install ksdiff-runtime, no [train] extras) has no torch, onnx, tqdm or
matplotlib. These tests make those packages unimportable in a fresh interpreter (an import hook,
so whatever would import them fails loudly) and run the real commands there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends.artifact import SHIPPED_EXPORT, export_of, load_export
from ksdiff_runtime.model.config import DEFAULT_CHECKPOINT

TRAINING_ONLY = ("torch", "onnx", "onnxscript", "tqdm", "matplotlib", "transformers", "espeakng_loader")
# libhama (hama's native engine) has no Windows build: serve and bake must not need the hama module
# at all (the recogniser's weights file is found through hama's installed metadata, not an import)
NO_LIBHAMA = (*TRAINING_ONLY, "hama")

BLOCK = """
import importlib.abc, importlib.metadata, sys
BLOCKED = {blocked!r}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a light install)", name=name)
sys.meta_path.insert(0, NotInstalled())
if {no_hama!r}:  # as if hama were not installed at all: no metadata either
    found = importlib.metadata.distribution
    def distribution(name):
        if name == "hama":
            raise importlib.metadata.PackageNotFoundError(name)
        return found(name)
    importlib.metadata.distribution = distribution
from ksdiff_runtime.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print("LEAKED", leaked, flush=True)
sys.exit(code)
"""


def light(*args: str, timeout: float = 300, blocked: tuple[str, ...] = TRAINING_ONLY,
          no_hama: bool = False) -> subprocess.CompletedProcess[str]:
    script = BLOCK.format(blocked=blocked, no_hama=no_hama)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)


def test_the_shipped_export_is_the_bundled_checkpoints():
    assert export_of(DEFAULT_CHECKPOINT, SHIPPED_EXPORT)
    _, _, manifest = load_export(SHIPPED_EXPORT)
    size = sum(f.stat().st_size for f in SHIPPED_EXPORT.iterdir())
    # float16 weights: the checkpoint's own size, plus the encoder's and KEL's again in the stream conditioner, the
    # denoiser's again in its two paths' graphs, and the int8 denoiser and its face's path (4 MB)
    assert size < 18_000_000
    for graph in ("conditioner", "denoiser", "stream_conditioner", "denoiser_expr", "denoiser_pose"):
        assert manifest["verify"]["max_abs_error"][graph] < 1e-4


@pytest.mark.slow
def test_bake_runs_without_torch(tmp_path: Path):
    out = tmp_path / "line.json"
    run = light("bake", str(SAMPLE_SPEECH), "-o", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LEAKED []" in run.stdout
    doc = json.loads(out.read_text())
    assert len(doc["frames"]) == 206 and max(f["blendshapes"][17] for f in doc["frames"]) > 0.1


@pytest.mark.slow
def test_serve_runs_without_torch():
    run = light("serve", "--pub", "tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0", "--file", str(SAMPLE_SPEECH),
                "--fast", "--exit-when-done")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LEAKED []" in run.stdout
    # 206 frames of audio, then the ease to rest
    assert "backend: onnxruntime-cpu" in run.stderr and "stream sample_speech ended (ended): 210 frames" in run.stderr


def test_training_commands_say_what_a_light_install_lacks():
    run = light("train", "--help")
    assert run.returncode == 0  # --help works; running it says what to install
    run = light("corpus", "--out", "nowhere")
    assert run.returncode == 2 and "pip install 'ksdiff-runtime[train]'" in run.stderr


@pytest.mark.slow
def test_bake_runs_without_libhama(tmp_path: Path):
    """Without libhama (Windows): the recogniser runs in ONNX Runtime with the weights file, and a
    transcript is ignored with one warning."""
    out = tmp_path / "line.json"
    run = light("bake", str(SAMPLE_SPEECH), "-o", str(out), "--text", "Hello there.", blocked=NO_LIBHAMA)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LEAKED []" in run.stdout
    assert run.stderr.count("transcripts are ignored: hama's G2P cannot load here") == 1, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert len(doc["frames"]) == 206 and max(f["blendshapes"][17] for f in doc["frames"]) > 0.1


@pytest.mark.slow
def test_serve_runs_without_libhama():
    run = light("serve", "--pub", "tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0", "--file", str(SAMPLE_SPEECH),
                "--fast", "--exit-when-done", blocked=NO_LIBHAMA)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LEAKED []" in run.stdout
    assert "stream sample_speech ended (ended): 210 frames" in run.stderr


@pytest.mark.slow
def test_serve_without_hama_installed_is_a_clear_error():
    """No hama at all: no weights file for the recogniser. serve says so in one line, no traceback."""
    run = light("serve", "--pub", "tcp://127.0.0.1:0", "--router", "tcp://127.0.0.1:0", "--file", str(SAMPLE_SPEECH),
                "--fast", "--exit-when-done", blocked=NO_LIBHAMA, no_hama=True)
    assert run.returncode != 0
    assert "error: the hama package is not installed" in run.stderr and "asr_waveform.hama" in run.stderr
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
