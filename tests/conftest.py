"""Shared fixtures: a tiny random KSDiff checkpoint, a short speech wav, and the VTube Studio output tests' own."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fake_vts import WAIT_S, FakeVTubeStudio

from ksdiff_runtime.model.checkpoint import save_checkpoint
from ksdiff_runtime.model.config import ModelConfig
from ksdiff_runtime.model.ksdiff import KSDiff
from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_runtime.outputs.vts import VtsOutput

SAMPLE_SPEECH = Path(__file__).resolve().parent.parent / "ksdiff_runtime" / "assets" / "sample_speech.wav"
TINY_MODEL = dict(d_model=32, n_heads=2, denoiser_layers=1, kel_hidden=16, style_dim=8, n_msdc_blocks=1)
SPEECH_SECONDS = 1.5


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, randomly initialised KSDiff saved like the shipped checkpoint (float16)."""
    torch.manual_seed(0)
    model = KSDiff(ModelConfig(**TINY_MODEL)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, half=True)
    return path


@pytest.fixture(scope="session")
def tiny_backend():
    """A tiny random model on the log-mel front-end: fast, and every engine path is the same."""
    from ksdiff_runtime.backends.torch_backend import TorchBackend
    from ksdiff_runtime.features.frontend import FrontEndConfig

    torch.manual_seed(0)
    cfg = ModelConfig(**TINY_MODEL, feature_dim=40,
                      front_end=FrontEndConfig(name="logmel", left_context_ms=250, lookahead_ms=60))
    return TorchBackend(KSDiff(cfg).eval())


def _speech_16k(seconds: float) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    if SAMPLE_SPEECH.is_file():
        audio, rate = sf.read(str(SAMPLE_SPEECH), dtype="float32", always_2d=True)
        assert rate == SAMPLE_RATE, f"{SAMPLE_SPEECH} is {rate} Hz"
        # skip the leading pause so the cut holds speech
        voiced = np.flatnonzero(np.abs(audio[:, 0]) > 0.05)
        start = int(max(0, voiced[0] - SAMPLE_RATE // 20)) if voiced.size else 0
        cut = audio[start : start + n, 0]
        if len(cut) == n:
            return cut
    from ksdiff_runtime.training.speech import synthesize

    audio = synthesize("Maybe the robot paints a big blue map.", "en-us", 160, 50, 60).audio
    return np.pad(audio, (0, max(0, n - len(audio))))[:n].astype(np.float32)


@pytest.fixture(scope="session")
def speech_16k() -> np.ndarray:
    """~1.5 s of 16 kHz mono speech, float32."""
    return _speech_16k(SPEECH_SECONDS)


@pytest.fixture
def speech_wav(tmp_path: Path, speech_16k: np.ndarray) -> Path:
    """~1.5 s of 16 kHz mono speech as a PCM_16 wav file."""
    path = tmp_path / "speech.wav"
    sf.write(str(path), speech_16k, SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="session")
def serve_engine():
    """The bundled model on ONNX Runtime with the low-latency preset, warmed up, for runtime tests.
    Shared: a Runtime that stops aborts its streams, so the next one finds the engine empty."""
    from ksdiff_runtime.server.runtime import build_engine

    engine = build_engine("onnxruntime", "low-latency")
    yield engine
    engine.close()


@pytest.fixture
def runtime(serve_engine):
    """A Runtime on ephemeral loopback ports over the shared engine, stopped after the test. Admission is
    off: these tests are about other behaviour and must not depend on how busy the machine is (admission
    has tests of its own, tests/test_serve.py)."""
    from ksdiff_runtime.server.runtime import Runtime

    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False) as rt:
        yield rt


@pytest.fixture(scope="module")
def torch_one_thread():
    """torch on one thread for a module's tests (as the recogniser runs per call), restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the VTube Studio output's tests (tests/test_vts.py, tests/test_vts_leftovers.py) -----------------------
class LogWatcher(logging.Handler):
    """The outputs' log lines, with a wait for one that contains a text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.lines.append(record.getMessage())
            self._changed.notify_all()

    def count(self, text: str) -> int:
        with self._changed:
            return sum(text in line for line in self.lines)

    def wait(self, text: str, n: int = 1, timeout: float = WAIT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: sum(text in line for line in self.lines) >= n, timeout)


@pytest.fixture
def logs() -> Iterator[LogWatcher]:
    logger = logging.getLogger("ksdiff_runtime.outputs")
    watcher, level = LogWatcher(), logger.level
    logger.addHandler(watcher)
    logger.setLevel(logging.DEBUG)
    yield watcher
    logger.removeHandler(watcher)
    logger.setLevel(level)


@pytest.fixture
def vts() -> Iterator[FakeVTubeStudio]:
    fake = FakeVTubeStudio()
    yield fake
    fake.close()


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tmp_path / "config" / "ksdiff-runtime" / "vtube_studio_token"


@pytest.fixture
def outputs() -> Iterator[list[VtsOutput]]:
    """Outputs made by a test, closed at its end whatever happens."""
    made: list[VtsOutput] = []
    yield made
    for out in made:
        out.close()
