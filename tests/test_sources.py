"""Audio sources for `serve`: the file source's pacing and contract, and a real microphone path
(PortAudio -> ALSA -> the ALSA `pulse` plugin -> a private PulseAudio daemon with a virtual mic).

The daemon (``pulse`` fixture) is started in a temp dir and holds:
    ksdiff_vmic           module-pipe-source: the virtual microphone (the default source); what the
                          test writes into its FIFO is what the microphone records, sample for sample
    ksdiff_vspk           module-null-sink: a virtual speaker; ``ksdiff_vspk.monitor`` records what
                          is played into it (clocked like real hardware, silence when idle)
Without pulseaudio/PortAudio the microphone tests skip and say why.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ksdiff_runtime.inputs.guards import AudioInputError, load_audio, to_model_rate
from ksdiff_runtime.sources import (
    FileSource,
    MicSource,
    SourceError,
    format_devices,
    list_input_devices,
    rescan_devices,
)
from ksdiff_runtime.sources.mic import STOP_WAIT_S

REPO = Path(__file__).resolve().parent.parent
MIC_RATE = 48_000  # the virtual mic's own rate: recording at it involves no resampling
WAIT_S = 10.0  # upper bound for anything the tests wait for


# --- helpers -----------------------------------------------------------------------------------
@dataclass
class Recorder:
    """Collects what a source delivers; events fire when enough has arrived or the source ended."""

    want_samples: int = 0
    want_blocks: int = 0
    blocks: list[np.ndarray] = field(default_factory=list)
    captured: list[int | None] = field(default_factory=list)
    arrived: list[int] = field(default_factory=list)
    ends: list[str | None] = field(default_factory=list)
    enough: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)
    count: int = 0
    after_block: object = None  # optional callable(n_blocks) run inside on_audio

    def on_audio(self, pcm: np.ndarray, captured_ns: int | None) -> None:
        self.arrived.append(time.monotonic_ns())
        self.blocks.append(pcm)
        self.captured.append(captured_ns)
        self.count += len(pcm)
        if (self.want_samples and self.count >= self.want_samples) or (
            self.want_blocks and len(self.blocks) >= self.want_blocks
        ):
            self.enough.set()
        if callable(self.after_block):
            self.after_block(len(self.blocks))

    def on_end(self, error: str | None) -> None:
        self.ends.append(error)
        self.ended.set()

    def audio(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, 1), np.float32)


def _tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[spectrum.argmax()])


def _best_correlation(recorded: np.ndarray, reference: np.ndarray) -> float:
    """Peak normalised cross-correlation of the reference against the recording (any delay)."""
    from scipy.signal import correlate

    corr = correlate(recorded, reference, mode="valid")
    energy = np.sqrt(np.convolve(recorded**2, np.ones(reference.size), mode="valid"))
    return float(np.max(corr / (np.linalg.norm(reference) * np.maximum(energy, 1e-12))))


def _write_wav(path: Path, audio: np.ndarray, rate: int, subtype: str = "FLOAT") -> Path:
    sf.write(str(path), audio, rate, subtype=subtype)
    return path


# --- file source ---------------------------------------------------------------------------------
def test_file_source_realtime_pacing(tmp_path: Path) -> None:
    audio = _tone(0.3, 16_000)
    src = FileSource(_write_wav(tmp_path / "short.wav", audio, 16_000), realtime=True, block_ms=10)
    assert (src.kind, src.sample_rate, src.channels, src.blocksize) == ("file", 16_000, 1, 160)
    rec = Recorder()
    t0 = time.monotonic_ns()
    src.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(WAIT_S)
    elapsed = (time.monotonic_ns() - t0) / 1e9
    src.stop()
    assert 0.29 <= elapsed <= 5.0, elapsed  # paced (not fast mode); the upper bound only catches a hang
    assert rec.ends == [None]
    assert [len(b) for b in rec.blocks] == [160] * 30
    captured = np.array(rec.captured, dtype=np.int64)
    # The schedule: block k's last sample is captured (k+1) * 10 ms after the start, exactly
    # (integer ns from sample counts: no drift), and no block arrives before its time.
    np.testing.assert_allclose(np.diff(captured), 10_000_000, atol=1)
    # The schedule starts at start() (the first block is due 10 ms after it), and blocks arrive on time
    # (in the median: one late wake-up on a busy machine is not a drift).
    assert 10_000_000 <= captured[0] - t0 < 10_000_000 + 100_000_000
    assert np.median(np.subtract(rec.arrived, rec.captured)) < 50_000_000
    assert all(a >= c for a, c in zip(rec.arrived, rec.captured, strict=True))
    np.testing.assert_array_equal(rec.audio(), audio)


def test_file_source_after_a_stall_plays_on_from_where_it_was(tmp_path: Path) -> None:
    """The process stopped for a while (the consumer stalls here, in block 5's callback, 3.5x RESUME_AFTER_S): the
    file plays on paced from where it was, every sample once, instead of delivering the time it missed at once
    (before: the 170 blocks behind arrived within a few ms, their captured_ns in the past)."""
    from ksdiff_runtime.sources.file import RESUME_AFTER_S

    audio = _tone(2.5, 16_000)
    src = FileSource(_write_wav(tmp_path / "voice.wav", audio, 16_000), realtime=True, block_ms=10)
    stall = threading.Event()
    rec = Recorder(after_block=lambda n: n == 5 and stall.wait(3.5 * RESUME_AFTER_S))
    src.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(WAIT_S)
    src.stop()
    assert rec.ends == [None]
    np.testing.assert_array_equal(rec.audio(), audio)
    captured, arrived = np.array(rec.captured, np.int64), np.array(rec.arrived, np.int64)
    gaps = np.diff(captured)
    assert gaps[4] > 2.5 * RESUME_AFTER_S * 1e9  # the schedule moved on once, over the stall
    np.testing.assert_allclose(np.delete(gaps, 4), 10_000_000, atol=1)  # otherwise paced as ever
    # after the stall, blocks arrive on their time again, not in a burst
    assert np.count_nonzero(arrived[5:] < arrived[5] + 100_000_000) <= 15
    assert np.median(arrived[5:] - captured[5:]) < 50_000_000


def test_file_source_fast_mode_delivers_the_file_exactly(tmp_path: Path) -> None:
    audio = _tone(5.0, 16_000) + np.linspace(-0.1, 0.1, 80_000, dtype=np.float32)[:, None]
    path = _write_wav(tmp_path / "long.wav", audio, 16_000)
    src = FileSource(path, realtime=False, block_ms=25)
    rec = Recorder()
    t0 = time.monotonic()
    src.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(WAIT_S)
    assert time.monotonic() - t0 < 2.0  # 5 s of audio, not paced
    assert rec.ends == [None]
    assert set(rec.captured) == {None}
    assert all(b.dtype == np.float32 and b.shape == (400, 1) for b in rec.blocks)
    np.testing.assert_array_equal(rec.audio(), sf.read(str(path), dtype="float32", always_2d=True)[0])


def test_file_source_48k_stereo_as_is(tmp_path: Path) -> None:
    audio = _tone(0.5, 48_000, channels=2)
    path = _write_wav(tmp_path / "stereo.wav", audio, 48_000, subtype="PCM_24")
    src = FileSource(path, realtime=False)
    assert (src.sample_rate, src.channels, src.blocksize) == (48_000, 2, 480)
    rec = Recorder()
    src.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(WAIT_S)
    got = rec.audio()
    assert got.shape == (24_000, 2) and rec.blocks[0].shape == (480, 2)
    np.testing.assert_array_equal(got, sf.read(str(path), dtype="float32", always_2d=True)[0])
    np.testing.assert_allclose(got, audio, atol=1e-6)


def test_file_source_last_block_is_short(tmp_path: Path) -> None:
    audio = _tone(0.105, 16_000)  # 1680 samples: ten blocks of 160 and one of 80
    src = FileSource(_write_wav(tmp_path / "odd.wav", audio, 16_000), realtime=False)
    rec = Recorder()
    src.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(WAIT_S)
    assert [len(b) for b in rec.blocks] == [160] * 10 + [80]
    np.testing.assert_array_equal(rec.audio(), audio)


def test_file_source_stop_mid_file(tmp_path: Path) -> None:
    src = FileSource(_write_wav(tmp_path / "two.wav", _tone(2.0, 16_000), 16_000), realtime=True)
    rec = Recorder(want_blocks=5)
    t0 = time.monotonic()
    src.start(rec.on_audio, rec.on_end)
    assert rec.enough.wait(WAIT_S)
    src.stop()
    assert time.monotonic() - t0 < 1.0  # prompt: not the file's 2 s
    n = len(rec.blocks)
    assert src._thread is not None and not src._thread.is_alive()  # joined: nothing can run now
    src.stop()  # idempotent
    assert len(rec.blocks) == n and 5 <= n < 200
    assert rec.ends == []  # stopped, not ended


def test_file_source_stop_from_its_own_callback(tmp_path: Path) -> None:
    src = FileSource(_write_wav(tmp_path / "cb.wav", _tone(1.0, 16_000), 16_000), realtime=False)
    rec = Recorder()
    rec.after_block = lambda n: src.stop() if n == 3 else None
    src.start(rec.on_audio, rec.on_end)
    assert src._thread is not None
    src._thread.join(WAIT_S)
    assert not src._thread.is_alive()
    assert len(rec.blocks) == 3 and rec.ends == []


def test_file_source_loop(tmp_path: Path) -> None:
    audio = _tone(0.1, 16_000)
    src = FileSource(_write_wav(tmp_path / "loop.wav", audio, 16_000), realtime=False, loop=True)
    rec = Recorder(want_samples=3 * audio.shape[0] + 1)
    src.start(rec.on_audio, rec.on_end)
    assert rec.enough.wait(WAIT_S)
    src.stop()
    got = rec.audio()
    reps = got.shape[0] // audio.shape[0] + 1
    np.testing.assert_array_equal(got, np.tile(audio, (reps, 1))[: got.shape[0]])
    assert rec.ends == []


def test_file_source_loop_of_a_file_shorter_than_a_block(tmp_path: Path) -> None:
    """A 3-sample file looped in real time: whole 10 ms blocks of it repeated, not a 3-sample block each time (which
    took a core and could not keep real time)."""
    audio = np.array([[0.1], [0.2], [0.3]], np.float32)
    src = FileSource(_write_wav(tmp_path / "click.wav", audio, 16_000), realtime=True, loop=True)
    rec = Recorder(want_samples=1600)  # 100 ms
    src.start(rec.on_audio, rec.on_end)
    assert rec.enough.wait(WAIT_S)
    src.stop()
    got = rec.audio()
    assert all(len(b) == 160 for b in rec.blocks[:-1]) and len(rec.blocks) <= got.shape[0] // 160 + 1
    np.testing.assert_array_equal(got, np.tile(audio, (got.shape[0] // 3 + 1, 1))[: got.shape[0]])


def test_file_source_reads_a_long_file_a_block_at_a_time(tmp_path: Path) -> None:
    """A minute of 48 kHz stereo (23 MB decoded): opening and playing it holds a block or so, not the whole file
    (it was decoded whole at start: two hours of it would have been 2.7 GB)."""
    import tracemalloc

    rate, seconds = 48_000, 60
    t = np.arange(rate * seconds) / rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1)
    path = _write_wav(tmp_path / "long.wav", audio.astype(np.float32), rate)
    del t, audio
    tracemalloc.start()
    try:
        src = FileSource(path, realtime=False)
        rec = Recorder(want_samples=rate // 2)
        rec.after_block = lambda n: rec.blocks.clear() if n > 3 else None  # a consumer that keeps nothing
        src.start(rec.on_audio, rec.on_end)
        assert rec.ended.wait(WAIT_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nplaying a minute of 48 kHz stereo held {peak / 1e6:.2f} MB at most (tracemalloc)")
    assert rec.ends == [None] and rec.count == rate * seconds and (src.sample_rate, src.channels) == (rate, 2)
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB held while playing a 23 MB file"


def test_file_source_consumer_error_ends_the_stream(tmp_path: Path) -> None:
    src = FileSource(_write_wav(tmp_path / "err.wav", _tone(0.2, 16_000), 16_000), realtime=False)
    rec = Recorder()

    def failing(pcm: np.ndarray, captured_ns: int | None) -> None:
        raise RuntimeError("consumer broke")

    src.start(failing, rec.on_end)
    assert rec.ended.wait(WAIT_S)
    src.stop()
    assert len(rec.ends) == 1 and "consumer broke" in str(rec.ends[0]) and "err.wav" in str(rec.ends[0])


@pytest.mark.parametrize("realtime", [True, False])
def test_file_source_empty_file(tmp_path: Path, realtime: bool) -> None:
    path = _write_wav(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), 44_100, subtype="PCM_16")
    src = FileSource(path, realtime=realtime, loop=True)  # loop over nothing must still end
    assert (src.sample_rate, src.channels, src.num_samples) == (44_100, 2, 0)
    rec = Recorder()
    src.start(rec.on_audio, rec.on_end)
    assert rec.ended.wait(WAIT_S)
    src.stop()
    assert rec.blocks == [] and rec.ends == [None]


def test_file_source_errors_match_load_audio(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk")
    unsupported = tmp_path / "notes.xyz"
    unsupported.write_text("not audio")
    cases = [(tmp_path / "nope.wav", "not found"), (corrupt, "cannot read"), (unsupported, "unsupported"),
             (tmp_path, "not a file")]
    for path, words in cases:
        with pytest.raises(AudioInputError, match=words) as from_source:
            FileSource(path)
        assert path.name in str(from_source.value)
        with pytest.raises(AudioInputError) as from_loader:
            load_audio(path)
        assert str(from_source.value) == str(from_loader.value)  # one reader, one set of messages


# --- PortAudio missing (no daemon needed) ------------------------------------------------------------
class _NoPortAudio:
    """An import hook that fails like sounddevice does when libportaudio is not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


def test_missing_portaudio_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)  # restored after the test
    monkeypatch.setattr(sys, "meta_path", [_NoPortAudio(), *sys.meta_path])
    with pytest.raises(SourceError, match="libportaudio2"):
        list_input_devices()
    with pytest.raises(SourceError, match="PortAudio library is missing"):
        MicSource()
    from ksdiff_runtime.cli import main

    assert main(["devices"]) == 1
    assert "libportaudio2" in capsys.readouterr().err


def test_no_input_device_at_all(tmp_path: Path) -> None:
    """PortAudio with nothing to record from: ALSA's pulse plugin pointed at a socket with no daemon."""
    env = {**os.environ, "PULSE_SERVER": f"unix:{tmp_path}/no-daemon-here", "HOME": str(tmp_path),
           "XDG_RUNTIME_DIR": str(tmp_path), "PULSE_RUNTIME_PATH": str(tmp_path)}
    env.pop("PULSE_SOURCE", None)
    script = (
        "import sys\n"
        "from ksdiff_runtime.sources import MicSource, SourceError\n"
        "try:\n    MicSource()\nexcept SourceError as e:\n    print('SourceError:', e)\n"
        "else:\n    print('opened a microphone')\n"
        "from ksdiff_runtime.cli import main\n"
        "print('devices exit', main(['devices']))\n"
    )
    try:
        probe = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                               timeout=60, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("probing for devices hung")
    if "PortAudio library is missing" in probe.stdout:
        pytest.skip("PortAudio is not installed (apt-get install libportaudio2)")
    if "opened a microphone" in probe.stdout:
        pytest.skip("this machine has capture hardware of its own; cannot test 'no input device' here")
    assert probe.returncode == 0, probe.stderr
    assert "SourceError: no input device" in probe.stdout, probe.stdout + probe.stderr
    # the message says what PortAudio did find (here: nothing at all)
    assert "no audio devices at all" in probe.stdout or "only devices that cannot record" in probe.stdout
    assert "devices exit 1" in probe.stdout
    assert "error: no input device" in probe.stderr


# --- a private PulseAudio daemon with a virtual microphone -----------------------------------------
@dataclass
class PulseDaemon:
    root: Path
    server: str  # PULSE_SERVER value
    mic_fifo: Path  # what is written here is what ksdiff_vmic records
    pid: int

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Signal the daemon and wait (on a pidfd, no polling) until it has exited."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        try:
            os.kill(self.pid, sig)
            if not select.select([pidfd], [], [], 5.0)[0] and sig != signal.SIGKILL:
                os.kill(self.pid, signal.SIGKILL)
                select.select([pidfd], [], [], 5.0)
        except ProcessLookupError:
            pass
        finally:
            os.close(pidfd)


def start_pulse(root: Path) -> PulseDaemon:
    """Start a user-mode PulseAudio daemon private to ``root``; skips the test when it cannot."""
    exe = shutil.which("pulseaudio")
    if exe is None:
        pytest.skip("pulseaudio is not installed (apt-get install pulseaudio pulseaudio-utils libasound2-plugins)")
    socket_path = root / "native"
    if len(str(socket_path)) > 100:
        pytest.skip(f"temp dir too long for a unix socket: {socket_path}")
    mic_fifo = root / "mic.fifo"  # module-pipe-source creates it
    script = root / "init.pa"
    # the socket last: a client that finds it (one retrying while the daemon restarts) finds the devices too
    script.write_text(
        "load-module module-null-sink sink_name=ksdiff_vspk format=float32le rate=48000 channels=1 "
        "sink_properties=device.description=ksdiff-virtual-speaker\n"
        f"load-module module-pipe-source source_name=ksdiff_vmic file={mic_fifo} format=float32le "
        f"rate={MIC_RATE} channels=1 source_properties=device.description=ksdiff-virtual-mic\n"
        "set-default-sink ksdiff_vspk\n"
        "set-default-source ksdiff_vmic\n"
        f"load-module module-native-protocol-unix socket={socket_path} auth-anonymous=1\n"
    )
    for sub in ("runtime", "state", "config"):
        (root / sub).mkdir(exist_ok=True)
    # Everything the daemon and its clients look up lives under root: no clash with a desktop's
    # own PulseAudio/PipeWire, nothing left in the user's home.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "XDG_RUNTIME_DIR": str(root),
           "PULSE_RUNTIME_PATH": str(root / "runtime"), "PULSE_STATE_PATH": str(root / "state"),
           "PULSE_CONFIG_PATH": str(root / "config")}
    # -n: no default.pa (no hardware detection, no D-Bus); --daemonize=yes returns only once the
    # script has run, so the sockets and devices exist when this returns; --system=false and
    # --exit-idle-time=-1 keep a root-run daemon in user mode and alive between tests.
    cmd = [exe, "-n", "-F", str(script), "--daemonize=yes", "--system=false", "--exit-idle-time=-1",
           "--use-pid-file=yes", "--disable-shm=yes", f"--log-target=file:{root / 'pulse.log'}"]
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("pulseaudio did not start within 30 s")
    pid_file = root / "runtime" / "pid"
    if started.returncode != 0 or not pid_file.is_file() or not socket_path.exists():
        log = (root / "pulse.log").read_text() if (root / "pulse.log").exists() else ""
        pytest.skip(f"pulseaudio could not start (exit {started.returncode}): {started.stderr.strip()} {log[-800:]}")
    return PulseDaemon(root, f"unix:{socket_path}", mic_fifo, int(pid_file.read_text().split()[0]))


def _reload_portaudio() -> None:
    """PortAudio lists devices once, at initialisation: if sounddevice was imported before the
    daemon ran, it saw no pulse device. Re-initialise (test-only: no stream is open here)."""
    if "sounddevice" in sys.modules:
        sd = sys.modules["sounddevice"]
        sd._terminate()
        sd._initialize()


@pytest.fixture(scope="session")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseDaemon]:
    """A private PulseAudio daemon whose default source is the virtual mic; PortAudio reaches it
    through ALSA's pulse plugin (libasound2-plugins) because PULSE_SERVER points at it."""
    daemon = start_pulse(tmp_path_factory.mktemp("pulse"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PULSE_SERVER", daemon.server)
        mp.delenv("PULSE_SOURCE", raising=False)
        mp.delenv("PULSE_SINK", raising=False)
        try:
            _reload_portaudio()
            names = [d["name"] for d in list_input_devices()]
        except SourceError as exc:  # PortAudio missing
            daemon.kill()
            pytest.skip(str(exc))
        if "pulse" not in names:
            daemon.kill()
            pytest.skip(f"PortAudio sees no ALSA 'pulse' device (apt-get install libasound2-plugins); it sees {names}")
        try:
            yield daemon
        finally:
            daemon.kill()
    _reload_portaudio()


def _messages_until(sub: object, stream: str, done: object, what: str) -> list[dict]:
    """A runtime's published messages of ``stream`` from a SUB socket, until ``done(messages)`` (at most 3 WAIT_S)."""
    from ksdiff_sdk import protocol as P

    got: list[dict] = []
    deadline = time.monotonic() + 3 * WAIT_S
    while not done(got):
        assert time.monotonic() < deadline, f"{what}: {[(m['type'], m.get('reason')) for m in got][-5:]}"
        if sub.poll(100):
            msg = P.decode(sub.recv_multipart()[1])
            if msg.get("stream") == stream:
                got.append(msg)
    return got


def _feed_mic(daemon: PulseDaemon, audio: np.ndarray) -> threading.Thread:
    """Write float32 mono into the virtual mic's FIFO from a thread (open blocks until the daemon reads)."""

    def write() -> None:
        try:
            with open(daemon.mic_fifo, "wb") as fifo:
                fifo.write(np.ascontiguousarray(audio, dtype="<f4").tobytes())
        except BrokenPipeError:
            pass  # the daemon went away (the device-lost test kills it)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_devices_lists_the_pulse_device(pulse: PulseDaemon, capsys: pytest.CaptureFixture) -> None:
    devices = list_input_devices()
    names = [d["name"] for d in devices]
    assert "pulse" in names, names
    assert {"index", "name", "hostapi", "max_input_channels", "default_samplerate", "is_default"} <= set(devices[0])
    assert any(d["is_default"] for d in devices)
    table = format_devices(devices)
    assert "pulse" in table and "ALSA" in table and "*" in table
    from ksdiff_runtime.cli import main

    assert main(["devices"]) == 0
    assert "pulse" in capsys.readouterr().out


def test_mic_records_the_virtual_mic(pulse: PulseDaemon) -> None:
    tone = _tone(1.0, MIC_RATE)[:, 0]
    mic = MicSource(device="pulse", sample_rate=MIC_RATE, block_ms=10)
    assert (mic.kind, mic.stream_id, mic.sample_rate, mic.channels, mic.blocksize) == ("mic", "mic", MIC_RATE, 1, 480)
    rec = Recorder(want_samples=tone.size)
    t_start = time.monotonic_ns()
    mic.start(rec.on_audio, rec.on_end)
    try:
        # trailing silence pushes the tone's last block through (PulseAudio hands on whole fragments)
        writer = _feed_mic(pulse, np.concatenate([tone, np.zeros(MIC_RATE // 5, np.float32)]))
        assert not rescan_devices()  # re-initialising PortAudio now would close the mic's stream: not done
        assert rec.enough.wait(WAIT_S), f"recorded {rec.count} of {tone.size} samples"
    finally:
        mic.stop()
    assert rescan_devices()  # once it is closed, the devices can be listed again
    t_stop = time.monotonic_ns()
    writer.join(WAIT_S)
    n = len(rec.blocks)
    mic.stop()  # idempotent
    assert len(rec.blocks) == n and rec.ends == []
    assert all(b.dtype == np.float32 and b.ndim == 2 and b.shape[1] == 1 for b in rec.blocks)
    captured = np.array(rec.captured, dtype=np.int64)
    assert (np.diff(captured) > 0).all() and t_start < captured[0] and captured[-1] <= t_stop
    got = rec.audio()[:, 0]
    voiced = got[np.abs(got) > 1e-4]
    assert abs(_peak_hz(voiced, MIC_RATE) - 440.0) < 2.0
    # the pipe source has no clock of its own: what was written is what was recorded, from the first sample
    np.testing.assert_allclose(got[: tone.size], tone, atol=1e-4)
    assert _best_correlation(got, tone[2400:-2400]) > 0.99
    assert mic.overflows == 0


def test_mic_records_speech_played_into_the_virtual_speaker(pulse: PulseDaemon, speech_16k: np.ndarray,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a real mic: the null sink's monitor runs on its own clock; the speech is played with pacat."""
    pacat = shutil.which("pacat")
    if pacat is None:
        pytest.skip("pacat is not installed (apt-get install pulseaudio-utils)")
    monkeypatch.setenv("PULSE_SOURCE", "ksdiff_vspk.monitor")  # what ALSA's pulse plugin records from
    mic = MicSource(device="pulse", sample_rate=None)  # the device's default rate: resampled by pulse
    assert mic.sample_rate == next(d for d in list_input_devices() if d["name"] == "pulse")["default_samplerate"]
    rec = Recorder(want_blocks=1)
    mic.start(rec.on_audio, rec.on_end)
    try:
        assert rec.enough.wait(WAIT_S), "the monitor delivered nothing"
        played = subprocess.run([pacat, "--playback", "--raw", "--format=float32le", "--rate=16000",
                                 "--channels=1", "--device=ksdiff_vspk", f"--server={pulse.server}"],
                                input=speech_16k.astype("<f4").tobytes(), capture_output=True, timeout=30)
        assert played.returncode == 0, played.stderr
        # pacat drains before it exits; wait for audio captured 300 ms past that, on the source's clock
        until = time.monotonic_ns() + 300_000_000
        tail = threading.Event()
        rec.after_block = lambda n: tail.set() if (rec.captured[-1] or 0) >= until else None
        assert tail.wait(WAIT_S)
    finally:
        mic.stop()
    assert rec.ends == []
    # A block per block period, not bursts after a long buffer (PortAudio's default latency)
    gaps_ms = np.diff(np.array(rec.arrived, dtype=np.int64)) / 1e6
    assert 5.0 < float(np.median(gaps_ms)) < 20.0, np.median(gaps_ms)
    got = to_model_rate(rec.audio()[:, 0], mic.sample_rate)
    assert _best_correlation(got, speech_16k) > 0.9


def test_mic_unknown_device_lists_devices(pulse: PulseDaemon) -> None:
    with pytest.raises(SourceError, match="no-such-microphone") as err:
        MicSource(device="no-such-microphone")
    assert "pulse" in str(err.value) and "input devices" in str(err.value)
    with pytest.raises(SourceError, match="index 99") as err:
        MicSource(device=99)
    assert "pulse" in str(err.value)
    with pytest.raises(SourceError, match="index 99"):
        MicSource(device="99")  # a number on a command line is an index
    with pytest.raises(SourceError, match="input channels"):
        MicSource(device="pulse", channels=1000)


def test_serve_says_an_unknown_microphone_once(pulse: PulseDaemon, caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --mic --device NAME` with no such device tried it again at the device's own rate, as if 16 kHz had been
    refused, and printed the list of devices twice; a rate the device refuses is still tried at its own."""
    from ksdiff_runtime.cli import serve as serve_cli
    from ksdiff_runtime.server.config import ServeConfig

    caplog.set_level("INFO", logger="ksdiff_runtime")
    with pytest.raises(SourceError) as err:
        serve_cli._open_mic(ServeConfig(mic=True, device="no-such-microphone"))
    assert str(err.value).count("input devices:") == 1 and "refused" not in caplog.text
    with pytest.raises(SourceError, match="input channels"):  # found, but not with these settings at any rate
        serve_cli._open_mic(ServeConfig(mic=True, device="pulse", mic_channels=1000))
    assert "refused" not in caplog.text

    import sounddevice as sd

    check = sd.check_input_settings

    def no_16k(**settings: object) -> None:  # a device whose driver takes only its own rate (this one takes any)
        if settings.get("samplerate") == 16_000:
            raise sd.PortAudioError("Invalid sample rate")
        check(**settings)

    monkeypatch.setattr(sd, "check_input_settings", no_16k)
    mic = serve_cli._open_mic(ServeConfig(mic=True, device="pulse"))
    assert mic.sample_rate != 16_000 and "microphone at 16000 Hz refused" in caplog.text


def test_mic_device_lost_ends_the_stream(tmp_path_factory: pytest.TempPathFactory, pulse: PulseDaemon,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The sound server dies mid-stream: on_end gets an error message, and stop() still works."""
    doomed = start_pulse(tmp_path_factory.mktemp("pulse-doomed"))
    try:
        monkeypatch.setenv("PULSE_SERVER", doomed.server)
        mic = MicSource(device="pulse", sample_rate=MIC_RATE)
        rec = Recorder(want_blocks=3)
        mic.start(rec.on_audio, rec.on_end)
        try:
            _feed_mic(doomed, np.zeros(MIC_RATE, np.float32))  # the writer sees a broken pipe later
            assert rec.enough.wait(WAIT_S)
            doomed.kill(signal.SIGKILL)
            assert rec.ended.wait(WAIT_S), "losing the device went unnoticed"
        finally:
            mic.stop()
        assert len(rec.ends) == 1 and isinstance(rec.ends[0], str) and "stopped delivering" in rec.ends[0]
    finally:
        doomed.kill(signal.SIGKILL)


def test_mic_stop_from_its_callback_and_consumer_errors(pulse: PulseDaemon) -> None:
    """The runtime may stop a source from on_audio; a failing on_audio ends the stream with its error."""
    mic = MicSource(sample_rate=MIC_RATE)
    rec = Recorder()
    rec.after_block = lambda n: mic.stop() if n == 3 else None
    mic.start(rec.on_audio, rec.on_end)
    writer = _feed_mic(pulse, np.full(MIC_RATE // 10, 0.25, np.float32))
    assert mic._closed.wait(WAIT_S), "stop() from the callback did not close the stream"
    writer.join(WAIT_S)
    assert len(rec.blocks) == 3 and rec.ends == []

    mic = MicSource(sample_rate=MIC_RATE)
    rec = Recorder()

    def failing(pcm: np.ndarray, captured_ns: int | None) -> None:
        raise RuntimeError("consumer broke")

    mic.start(failing, rec.on_end)
    try:
        writer = _feed_mic(pulse, np.full(MIC_RATE // 10, 0.25, np.float32))
        assert rec.ended.wait(WAIT_S)
    finally:
        mic.stop()
    writer.join(WAIT_S)
    assert len(rec.ends) == 1 and "consumer broke" in str(rec.ends[0])


def test_mic_stop_is_prompt_without_audio(pulse: PulseDaemon) -> None:
    """Nothing written to the virtual mic: no callback comes to end PortAudio's thread, and stop()
    still returns, cancelling the thread once it has waited STOP_WAIT_S."""
    mic = MicSource(sample_rate=MIC_RATE)  # the default device: PulseAudio's default source, the virtual mic
    rec = Recorder()
    mic.start(rec.on_audio, rec.on_end)
    t0 = time.monotonic()
    mic.stop()
    assert time.monotonic() - t0 < STOP_WAIT_S + 2.0
    assert rec.ends == []
    with pytest.raises(RuntimeError):
        mic.start(rec.on_audio, rec.on_end)


def test_serve_animates_the_virtual_mic(pulse: PulseDaemon, speech_16k: np.ndarray, serve_engine) -> None:
    """The VTuber path end to end: speech into the virtual mic, captured at 48 kHz, resampled,
    animated, and published as stream "mic" with its capture times."""
    import zmq
    from scipy.signal import resample_poly

    from ksdiff_runtime.server.runtime import Runtime
    from ksdiff_sdk import protocol as P

    speech = resample_poly(np.resize(speech_16k, 24_000), 3, 1).astype(np.float32)  # 1.5 s at 48 kHz
    engine = serve_engine
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, P.TOPIC_ROOT)
    sub.setsockopt(zmq.LINGER, 0)
    frames: list[dict] = []
    try:
        with Runtime(engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0") as rt:
            sub.connect(rt.pub_endpoint)
            assert sub.poll(int(WAIT_S * 1000)), "no hello"  # the subscription is live
            rt.add_source(MicSource(device="pulse", sample_rate=MIC_RATE, block_ms=10))
            writer = _feed_mic(pulse, np.concatenate([speech, np.zeros(MIC_RATE // 2, np.float32)]))
            deadline = time.monotonic() + 3 * WAIT_S
            while len(frames) < 40 and time.monotonic() < deadline:
                if sub.poll(100):
                    msg = P.decode(sub.recv_multipart()[1])
                    if msg["type"] == "frame" and msg["stream"] == "mic":
                        frames.append(msg)
            writer.join(WAIT_S)
    finally:
        sub.close()
    assert len(frames) >= 40, f"{len(frames)} mic frames"
    assert [f["index"] for f in frames] == list(range(len(frames)))
    assert all(f["captured_ns"] is not None and f["published_ns"] > f["captured_ns"] for f in frames)
    jaw = [P.frame_arrays(f)[0][17] for f in frames]
    assert np.std(jaw) > 0.01  # the mouth follows the speech


def test_a_lost_mic_is_closed_and_opened_again(tmp_path_factory: pytest.TempPathFactory, pulse: PulseDaemon,
                                              speech_16k: np.ndarray, serve_engine,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The VTuber's sound server dies mid-stream (a USB mic unplugged does the same): stream "mic" ends (error), the
    runtime closes the old device and opens the mic again every SOURCE_REOPEN_S until it can, and once the sound
    server is back stream "mic" starts again. Before, the old device stayed open and the avatar still until `serve`
    was restarted. (A stream that ends by the idle timeout, the machine having slept or the device stalled, reopens
    its mic the same way.) Its audio is not checked here: on this rig (PortAudio -> ALSA's pulse plugin -> a
    PulseAudio killed and started again in the same process) about one reopened stream in four delivered nothing,
    as if the plugin kept state from the dead server; a fresh process records from the restarted server every time
    (docs/SERVE.md, "A microphone lost")."""
    import zmq
    from scipy.signal import resample_poly

    from ksdiff_runtime.server import runtime as runtime_module
    from ksdiff_runtime.server.runtime import Runtime
    from ksdiff_sdk import protocol as P

    monkeypatch.setattr(runtime_module, "SOURCE_REOPEN_S", 0.5)
    root = tmp_path_factory.mktemp("pulse-restarted")
    daemon = start_pulse(root)
    monkeypatch.setenv("PULSE_SERVER", daemon.server)
    speech = resample_poly(np.resize(speech_16k, 24_000), 3, 1).astype(np.float32)  # 1.5 s at 48 kHz

    def open_mic() -> MicSource:
        return MicSource(device="pulse", sample_rate=MIC_RATE, block_ms=10)

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, P.TOPIC_ROOT)
    sub.setsockopt(zmq.LINGER, 0)

    def until(done, what: str) -> list[dict]:  # the mic's messages until done(messages)
        return _messages_until(sub, "mic", done, what)

    def frames(got: list[dict]) -> list[dict]:
        return [m for m in got if m["type"] == "frame"]

    try:
        with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False) as rt:
            sub.connect(rt.pub_endpoint)
            assert sub.poll(int(WAIT_S * 1000)), "no hello"
            first = open_mic()
            rt.add_source(first, reopen=open_mic)
            writer = _feed_mic(daemon, speech)
            until(lambda got: len(frames(got)) >= 20, "frames of the first mic")
            daemon.kill(signal.SIGKILL)
            writer.join(WAIT_S)
            ended = until(lambda got: any(m["type"] == "stream_end" for m in got), "the lost mic's stream_end")
            assert [m["reason"] for m in ended if m["type"] == "stream_end"] == ["error"]
            assert first._closed.wait(WAIT_S), "the lost device was never closed"
            # what the killed daemon left: its pid file (a zombie's, in a container without init) and its mic's FIFO
            # (a plain file once the writer reopened it)
            (root / "runtime" / "pid").unlink()
            daemon.mic_fifo.unlink(missing_ok=True)
            daemon = start_pulse(root)  # the sound server is back, at the same place
            until(lambda got: any(m["type"] == "stream_start" for m in got), "stream mic starting again")
            assert rt.stream_ids == ["mic"]
    finally:
        sub.close()
        daemon.kill(signal.SIGKILL)


def test_a_mic_plugged_back_in_under_another_name_is_found(tmp_path: Path, pulse: PulseDaemon, serve_engine,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A VTuber's USB mic is unplugged and plugged back in, and comes back as another card (its ALSA name changes;
    Windows' device list changes the same way). `serve --device ksdiff_usb` must find it again: PortAudio lists
    devices only when initialised, so its stale entry cannot be opened and, before, the mic was retried every minute
    and never found until `serve` was restarted. Emulated with ALSA devices defined in ~/.asoundrc (PortAudio lists
    them) over PulseAudio sources loaded and unloaded by pactl: a source unloaded stalls the stream (the idle
    timeout ends it), as an unplugged device does."""
    import zmq

    from ksdiff_runtime.cli.serve import reopen_mic_source
    from ksdiff_runtime.server import runtime as runtime_module
    from ksdiff_runtime.server.config import ServeConfig
    from ksdiff_runtime.server.runtime import Runtime
    from ksdiff_sdk import protocol as P

    if shutil.which("pactl") is None:
        pytest.skip("pactl is not installed (apt-get install pulseaudio-utils)")

    def pactl(*args: str) -> str:
        done = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=WAIT_S,
                              env={**os.environ, "PULSE_SERVER": pulse.server})
        assert done.returncode == 0, f"pactl {args}: {done.stderr}"
        return done.stdout.strip()

    def plug(card: str) -> str:  # a device appears: a PulseAudio source, and ALSA's name for it
        module = pactl("load-module", "module-sine-source", f"source_name=ksdiff_src_{card}", "rate=48000")
        (tmp_path / ".asoundrc").write_text(f"pcm.ksdiff_usb_{card} {{\n  type pulse\n  device ksdiff_src_{card}\n}}\n")
        return module

    monkeypatch.setenv("HOME", str(tmp_path))  # ALSA reads ~/.asoundrc
    monkeypatch.setattr(runtime_module, "SOURCE_REOPEN_S", 0.5)
    monkeypatch.setattr(serve_engine, "idle_timeout_ns", int(1.5e9))
    card_a = plug("a")
    assert rescan_devices()
    config = ServeConfig(mic=True, device="ksdiff_usb")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, P.TOPIC_ROOT)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False) as rt:
            sub.connect(rt.pub_endpoint)
            assert sub.poll(int(WAIT_S * 1000)), "no hello"
            first = reopen_mic_source(config)
            assert first.device_name.startswith("ksdiff_usb_a")
            rt.add_source(first, reopen=lambda: reopen_mic_source(config))
            _messages_until(sub, "mic", lambda got: sum(m["type"] == "frame" for m in got) >= 20, "frames of card a")
            pactl("unload-module", card_a)  # unplugged
            plug("b")  # plugged back in, as another card
            got = _messages_until(sub, "mic", lambda got: any(m["type"] == "stream_start" for m in got),
                                  "stream mic starting again")
            assert [m["reason"] for m in got if m["type"] == "stream_end"] == ["timeout"]
            again = _messages_until(sub, "mic", lambda got: sum(m["type"] == "frame" for m in got) >= 20,
                                    "frames of card b")
            assert [f["index"] for f in again if f["type"] == "frame"][:3] == [0, 1, 2]
            assert first._closed.is_set()
    finally:
        sub.close()
    monkeypatch.undo()
    rescan_devices()  # the other tests' device list, without this test's cards


def test_a_source_that_cannot_be_opened_again_yet_is_retried_by_one_loop_ever_less_often(
        tmp_path: Path, speech_16k: np.ndarray, serve_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source that ends with its own error and cannot be opened again for a while (here a file source: a FLAC cut
    short, then gone, then back) is retried by one loop at a time, each wait twice the last, and its stream comes
    back. The file opened is read as it plays, so removing it does not stop the stream already playing it."""
    import zmq

    from ksdiff_runtime.server import runtime as runtime_module
    from ksdiff_runtime.server.runtime import Runtime
    from ksdiff_sdk import protocol as P

    monkeypatch.setattr(runtime_module, "SOURCE_REOPEN_S", 0.05)
    monkeypatch.setattr(runtime_module, "SOURCE_REOPEN_MAX_S", 0.4)
    path = tmp_path / "voice.flac"
    sf.write(str(path), np.resize(speech_16k, 32_000), 16_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])  # cut short: decoding stops with an error part way
    opened: list[float] = []

    def reopen() -> FileSource:
        opened.append(time.monotonic())
        return FileSource(path, realtime=False, stream_id="voice")

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, P.TOPIC_ROOT)
    sub.setsockopt(zmq.LINGER, 0)

    def until(done, what: str) -> list[dict]:
        return _messages_until(sub, "voice", done, what)

    def loops() -> int:
        return sum(t.name == "ksdiff-source-voice" and t.is_alive() for t in threading.enumerate())

    try:
        with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False) as rt:
            sub.connect(rt.pub_endpoint)
            assert sub.poll(int(WAIT_S * 1000)), "no hello"
            rt.add_source(FileSource(path, realtime=False, stream_id="voice"), reopen=reopen)
            path.unlink()  # gone: the stream plays on from the file it opened
            first = until(lambda got: any(m["type"] == "stream_end" for m in got), "the cut file's stream_end")
            assert [m["reason"] for m in first if m["type"] == "stream_end"] == ["error"]
            assert sum(m["type"] == "frame" for m in first) > 10
            most = 0
            while len(opened) < 5:  # the file is missing: each try fails
                most = max(most, loops())
                assert sub.poll(10) is not None
            # back, whole: written beside it and renamed in one step, or a retry could open it half written
            sf.write(str(tmp_path / "whole.flac"), np.resize(speech_16k, 16_000), 16_000)
            os.replace(tmp_path / "whole.flac", path)
            again = until(lambda got: any(m["type"] == "stream_end" for m in got), "the stream back")
    finally:
        sub.close()
    assert most == 1, f"{most} reopen loops at once"
    waits = np.diff(opened[:5])  # each at least twice the one before, up to the cap (a wait never ends early)
    assert all(w >= 0.95 * min(0.4, 0.05 * 2 ** (i + 1)) for i, w in enumerate(waits)), waits
    assert [m["reason"] for m in again if m["type"] == "stream_end"] == ["ended"]
    assert sum(m["type"] == "frame" for m in again) >= 30
