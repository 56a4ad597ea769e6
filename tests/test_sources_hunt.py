"""Audio sources as a user drives them from `serve`, from a bug hunt: a sound server that stops answering, a file the
user may not read, WAVs in formats libsndfile cannot seek in.

The microphone tests start a private PulseAudio daemon of their own (``test_sources.start_pulse``), since they
freeze it; without pulseaudio/PortAudio they skip and say why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_sources import MIC_RATE, REPO, WAIT_S, PulseDaemon, Recorder, _feed_mic, start_pulse

from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_runtime.sources import FileSource, MicSource, SourceError, list_input_devices, rescan_devices
from ksdiff_runtime.sources.mic import CLOSE_WAIT_S, STOP_WAIT_S


@pytest.fixture
def own_pulse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PulseDaemon]:
    """A PulseAudio daemon of this test's own (it may be frozen), PortAudio's devices listed from it."""
    daemon = start_pulse(tmp_path)
    try:
        monkeypatch.setenv("PULSE_SERVER", daemon.server)
        monkeypatch.delenv("PULSE_SOURCE", raising=False)
        try:
            rescan_devices()
            names = [d["name"] for d in list_input_devices()]
        except SourceError as exc:  # PortAudio missing
            pytest.skip(str(exc))
        if "pulse" not in names:
            pytest.skip(f"PortAudio sees no ALSA 'pulse' device (apt-get install libasound2-plugins); it sees {names}")
        yield daemon
    finally:
        os.kill(daemon.pid, signal.SIGCONT)  # a frozen daemon answers again (a close left waiting on it ends)
        daemon.kill(signal.SIGKILL)


def test_mic_stop_returns_while_the_sound_server_does_not_answer(own_pulse: PulseDaemon) -> None:
    """The sound server hangs (here: stopped) while the microphone records: stop() returns within about two seconds
    and leaves the close to finish once the server answers. Before, it waited inside PortAudio's close (ALSA's pulse
    plugin waiting for the server) for as long as the server did not answer: `serve` ignored Ctrl-C until then."""
    mic = MicSource(device="pulse", sample_rate=MIC_RATE)
    rec = Recorder(want_blocks=3)
    mic.start(rec.on_audio, rec.on_end)
    stopped = threading.Event()
    try:
        _feed_mic(own_pulse, np.zeros(MIC_RATE, np.float32))
        assert rec.enough.wait(WAIT_S), "the virtual mic delivered nothing"
        os.kill(own_pulse.pid, signal.SIGSTOP)
        started = time.monotonic()
        threading.Thread(target=lambda: (mic.stop(), stopped.set()), daemon=True).start()
        assert stopped.wait(STOP_WAIT_S + CLOSE_WAIT_S + 2.0), "stop() waited on a sound server that does not answer"
        assert time.monotonic() - started < STOP_WAIT_S + CLOSE_WAIT_S + 2.0
    finally:
        os.kill(own_pulse.pid, signal.SIGCONT)
        assert stopped.wait(WAIT_S)
    assert rec.ends == []
    # the close left waiting ends once the server answers: PortAudio can list the devices again
    closing = [t for t in threading.enumerate() if t.name == "mic-close-stream"]
    for thread in closing:
        thread.join(WAIT_S)
    assert rescan_devices()


def test_serve_says_a_file_it_may_not_read_cannot_be_opened(tmp_path: Path) -> None:
    """A file the user may not read (another user's, mode 600): `serve --file` says permission is denied. Before,
    it called the file corrupt ("corrupt or unsupported content ... System error."), libsndfile's words for any
    error the system gives. Root reads any file, so as root the check runs without the capability to override
    file permissions."""
    path = tmp_path / "locked.wav"
    sf.write(str(path), np.zeros((1600, 1), np.float32), 16_000)
    path.chmod(0)
    cmd = [sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--pub", "tcp://127.0.0.1:0", "--router",
           "tcp://127.0.0.1:0", "--file", str(path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux): every file is readable")
        cmd = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    if "setpriv:" in run.stderr:
        pytest.skip(f"cannot drop root's capabilities here: {run.stderr.strip()}")
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"error: cannot open audio file {path}: Permission denied" in run.stderr, run.stderr[-3000:]
    assert "corrupt" not in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("subtype", ["GSM610", "G721_32"])
def test_a_wav_in_a_format_libsndfile_cannot_seek_in_plays_loops_and_bakes(tmp_path: Path, subtype: str) -> None:
    """GSM 6.10 and G.721 ADPCM WAVs (voicemail, telephony recordings): libsndfile decodes them but cannot seek in
    them. Before, `serve --file` failed with a traceback (the source sought back to the start after checking the
    first sample) and `bake` called them corrupt (a read of "the rest" needs a seekable file)."""
    rate = 8_000
    t = np.arange(rate // 2) / rate
    path = tmp_path / f"voicemail_{subtype}.wav"
    sf.write(str(path), 0.4 * np.sin(2 * np.pi * 300 * t), rate, subtype=subtype)

    mono, report = load_audio(path)  # what bake reads
    assert report.n_samples > 0 and mono.size == report.n_samples * 16_000 // rate

    src = FileSource(path, realtime=False)
    rec = Recorder()
    src.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(WAIT_S)
    src.stop()
    once = rec.audio()
    assert rec.ends == [None] and len(once) == src.num_samples == report.n_samples
    assert np.abs(once).max() > 0.2

    looped = FileSource(path, realtime=False, loop=True)
    path.unlink()  # it plays the file it opened, pass after pass
    sf.write(str(path), np.zeros((rate, 1)), rate, subtype=subtype)
    rec = Recorder(want_samples=3 * len(once))
    looped.start(rec.on_audio, rec.on_end)
    try:
        assert rec.enough.wait(WAIT_S), f"the loop stopped: {rec.ends}"
    finally:
        looped.stop()
    passes = rec.audio()
    assert rec.ends == []
    for k in range(3):
        np.testing.assert_array_equal(passes[k * len(once) : (k + 1) * len(once)], once)
