"""A microphone (or any PortAudio input device) as a source, and the list of input devices.

sounddevice is imported inside functions only: importing it loads PortAudio (a C library that
may be missing) and scans the audio devices, neither of which the runtime needs unless a
microphone is asked for.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from ksdiff_runtime.inputs.stream import AudioFormat, BadAudioError

from .base import OnAudio, OnEnd, SourceError

log = logging.getLogger(__name__)

# PortAudio's "low" input latency. Its default ("high") lets ALSA buffer so much that, through
# PulseAudio, the first block arrived after ~2 s and then blocks came in bursts, which would
# put that delay into every frame and make captured_ns meaningless; "low" gives one block per
# block period (measured: 10 ms blocks arrive every 10 ms, the first within 10 ms).
MIC_LATENCY = "low"
STATUS_LOG_INTERVAL_S = 5.0  # at most one warning this often about overflows (they come in bursts)
STOP_WAIT_S = 1.0  # how long stop() waits for the callback thread to end by itself (see _close)
# how long stop() then waits for PortAudio to close the stream: a sound server that does not answer (hung, stopped)
# keeps the close waiting in ALSA's pulse plugin for as long as it does not answer
CLOSE_WAIT_S = 1.0
PORTAUDIO_HINT = (
    "install it: apt-get install libportaudio2 (Debian/Ubuntu), dnf install portaudio (Fedora), "
    "pacman -S portaudio (Arch); the sounddevice wheels for Windows and macOS include it"
)
# PortAudio lists the devices once, when it is initialised, and re-initialising it closes every stream it has open.
# This lock guards that list (the lookups of a MicSource being made and a rescan) and the count of the PortAudio
# streams MicSources hold open: a rescan happens only while that count is 0.
_portaudio = threading.RLock()
_open_streams = 0


# --- devices ---------------------------------------------------------------------------------------
def _sounddevice() -> Any:
    """Import python-sounddevice, turning a missing PortAudio into a message the user can act on."""
    try:
        import sounddevice
    except OSError as exc:  # the Python package is there but libportaudio is not
        raise SourceError(f"the PortAudio library is missing, so no microphone can be used ({exc}); "
                          f"{PORTAUDIO_HINT}") from exc
    except ImportError as exc:
        raise SourceError("python-sounddevice is not installed (pip install sounddevice>=0.4.6)") from exc
    return sounddevice


def _all_devices(sd: Any) -> list[dict[str, Any]]:
    """Every device PortAudio found (inputs and outputs), as plain dicts."""
    default_input = sd.default.device[0]
    devices = []
    for index, info in enumerate(sd.query_devices()):
        devices.append({
            "index": index,
            "name": info["name"],
            "hostapi": sd.query_hostapis(info["hostapi"])["name"],
            "max_input_channels": int(info["max_input_channels"]),
            "max_output_channels": int(info["max_output_channels"]),
            "default_samplerate": round(float(info["default_samplerate"])),
            "is_default": index == default_input,
        })
    return devices


def rescan_devices() -> bool:
    """Have PortAudio list the audio devices again: a microphone plugged in since it last looked, or plugged back in
    under another index or name (a USB device's card number changes). PortAudio lists them only when it is
    initialised (when sounddevice is imported), so this re-initialises it, which closes every stream it has open:
    it does so only while no MicSource holds a stream, and returns whether it did. A program that keeps PortAudio
    streams of its own open must not call it, and a MicSource made before it is made again (it holds its device's
    index in the old list)."""
    sd = _sounddevice()
    with _portaudio:
        if _open_streams:
            log.debug("PortAudio devices not listed again: %d microphone stream(s) open", _open_streams)
            return False
        sd._terminate()
        sd._initialize()
    return True


def list_input_devices() -> list[dict[str, Any]]:
    """The devices a microphone can be opened on: index, name, hostapi, max_input_channels,
    default_samplerate, is_default (PortAudio's default input). Raises ``SourceError`` without
    PortAudio or without any input device (the message says what PortAudio found). PortAudio scans
    once, when sounddevice is first imported, and again on ``rescan_devices``."""
    sd = _sounddevice()
    devices = [d for d in _all_devices(sd) if d["max_input_channels"] > 0]
    if not devices:
        raise SourceError(_no_input_message(sd))
    return devices


def format_devices(devices: list[dict[str, Any]] | None = None) -> str:
    """A table of input devices (``list_input_devices()`` when not given); ``*`` marks the default."""
    if devices is None:
        devices = list_input_devices()
    if not devices:
        return "no input devices"
    rows = [(" ", "index", "name", "host api", "channels", "default rate")]
    for d in devices:
        rows.append(("*" if d.get("is_default") else " ", str(d["index"]), d["name"], d["hostapi"],
                     str(d["max_input_channels"]), f"{d['default_samplerate']} Hz"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _no_input_message(sd: Any) -> str:
    everything = _all_devices(sd)
    if not everything:
        return ("no input device: PortAudio found no audio devices at all (is a microphone connected, "
                "and on Linux is the sound server (PulseAudio/PipeWire) running for this user?)")
    listed = "\n".join(f"  [{d['index']}] {d['name']} ({d['hostapi']}): {d['max_input_channels']} in, "
                       f"{d['max_output_channels']} out" for d in everything)
    return f"no input device: PortAudio found only devices that cannot record:\n{listed}"


def _resolve_input_device(sd: Any, device: int | str | None) -> dict[str, Any]:
    """The input device to open, by index, by name substring (sounddevice's matching) or the default."""
    inputs = [d for d in _all_devices(sd) if d["max_input_channels"] > 0]
    if not inputs:
        raise SourceError(_no_input_message(sd))
    listing = format_devices(inputs)
    if isinstance(device, str) and device.strip().isdigit():
        device = int(device)  # "3" from a command line means index 3
    if device is None:
        index = sd.default.device[0]
        if index is None or index < 0:
            raise SourceError(f"there is no default input device; pick one by index or name:\n{listing}")
    elif isinstance(device, int):
        index = device
    else:
        try:
            index = int(sd.query_devices(device, kind="input")["index"])
        except ValueError as exc:  # no match, or several devices match the substring
            raise SourceError(f"{exc}; input devices:\n{listing}") from exc
    for d in inputs:
        if d["index"] == index:
            return d
    for d in _all_devices(sd):
        if d["index"] == index:
            raise SourceError(f"device {index} ({d['name']}, {d['hostapi']}) cannot record (no input channels); "
                              f"input devices:\n{listing}")
    raise SourceError(f"no input device with index {index}; input devices:\n{listing}")


# --- microphone ------------------------------------------------------------------------------------
class SettingsRefusedError(SourceError):
    """The device was found but cannot record at the rate and channels asked for (another rate may do)."""


def _count_stream(change: int) -> None:
    global _open_streams
    with _portaudio:
        _open_streams += change


class MicSource:
    """A microphone (or any PortAudio input device), float32, delivered from PortAudio's callback.

    The device is resolved and the settings checked at construction, so ``sample_rate`` is known
    before ``start`` and a wrong device fails before a stream opens. Overflows (the callback fell
    behind and the device dropped audio) are counted in ``overflows`` and logged, not fatal.
    """

    kind = "mic"
    mode = "live"

    def __init__(self, device: int | str | None = None, sample_rate: int | None = None, channels: int = 1,
                 block_ms: float = 10.0, stream_id: str = "mic") -> None:
        if channels < 1:
            raise SourceError(f"channels must be at least 1, got {channels}")
        if not block_ms > 0:
            raise SourceError(f"block_ms must be positive, got {block_ms}")
        sd = _sounddevice()
        with _portaudio:
            info = _resolve_input_device(sd, device)
        self.device_index: int = info["index"]
        self.device_name: str = f"{info['name']} ({info['hostapi']})"
        self.sample_rate: int = int(sample_rate) if sample_rate else info["default_samplerate"]
        self.channels = int(channels)
        self.block_ms = float(block_ms)
        self.stream_id = stream_id
        self.blocksize = max(1, round(self.sample_rate * self.block_ms / 1000))
        if self.channels > info["max_input_channels"]:
            raise SourceError(f"input device [{self.device_index}] {self.device_name} has "
                              f"{info['max_input_channels']} input channels; {self.channels} asked for")
        try:  # what a stream takes (the device's own rate may be outside it)
            AudioFormat(self.sample_rate, self.channels)
        except BadAudioError as exc:
            raise SourceError(f"input device [{self.device_index}] {self.device_name}: {exc}") from None
        try:
            with _portaudio:
                sd.check_input_settings(device=self.device_index, channels=self.channels, dtype="float32",
                                        samplerate=self.sample_rate)
        except sd.PortAudioError as exc:
            raise SettingsRefusedError(f"input device [{self.device_index}] {self.device_name} cannot record "
                              f"{self.channels} channel(s) at {self.sample_rate} Hz: {exc}") from exc
        self.overflows = 0
        self.statuses = 0  # callbacks with any status flag (overflows included)
        self._sd = sd
        self._stream: Any = None
        self._started = False
        self._on_audio: OnAudio | None = None
        self._on_end: OnEnd | None = None
        self._error: str | None = None
        self._control = threading.Lock()  # serialises start() and stop()
        self._lock = threading.Lock()  # stop() and _finished(): exactly one of them ends the stream
        self._stopping = threading.Event()  # stop() was called: deliver nothing more
        self._closed = threading.Event()  # the stream is closed (or never opened, or left to close: _close)
        self._thread_done = threading.Event()  # PortAudio's callback thread has ended
        self._pa_thread: int | None = None  # PortAudio's callback thread (stop() must not join itself)
        self._last_status_log = 0.0

    def start(self, on_audio: OnAudio, on_end: OnEnd) -> None:
        sd = self._sd
        with self._control:  # start and stop never interleave
            with self._lock:
                if self._started or self._stopping.is_set():
                    raise RuntimeError("a MicSource starts once")
                self._started = True
                self._on_audio, self._on_end = on_audio, on_end
            # Not under self._lock: PortAudio may call _finished (which takes it) while starting.
            stream = None
            try:
                with _portaudio:
                    stream = sd.InputStream(device=self.device_index, samplerate=self.sample_rate,
                                            channels=self.channels, dtype="float32", blocksize=self.blocksize,
                                            latency=MIC_LATENCY, callback=self._callback,
                                            finished_callback=self._finished)
                    _count_stream(+1)
                stream.start()
            except sd.PortAudioError as exc:
                self._stopping.set()
                if stream is not None:
                    try:
                        stream.close()
                    finally:
                        _count_stream(-1)
                self._closed.set()
                raise SourceError(f"cannot open input device [{self.device_index}] {self.device_name} at "
                                  f"{self.sample_rate} Hz, {self.channels} channel(s): {exc}") from exc
            self._stream = stream
        log.info("microphone %s: %d Hz, %d ch, %d-sample blocks, input latency %.0f ms", self.device_name,
                 self.sample_rate, self.channels, self.blocksize, 1000 * stream.latency)

    def stop(self) -> None:
        on_pa_thread = threading.get_ident() == self._pa_thread
        with self._control:
            with self._lock:
                self._stopping.set()  # from here on the callbacks deliver nothing
            stream, self._stream = self._stream, None  # whoever takes the stream closes it
            if stream is None and not self._started:
                self._closed.set()
            if stream is not None and on_pa_thread:
                # Called from on_audio/on_end: PortAudio cannot stop a stream from its own callback
                # thread (it would wait for itself). The flag already stops delivery; close elsewhere.
                threading.Thread(target=self._close, args=(stream,), name="mic-close", daemon=True).start()
            elif stream is not None:
                self._close(stream)
        if not on_pa_thread:
            self._closed.wait()  # closed by this call, an earlier one, or its helper thread

    def _close(self, stream: Any) -> None:
        # Closing a running stream aborts it, and PortAudio aborts (on Linux) by cancelling its
        # callback thread: harmless while that thread waits for the device, fatal while it runs
        # Python (cancelled waiting for the GIL, it would leave the GIL's mutex locked). So the
        # thread is first left to end by itself: the next callback sees the stop flag and returns
        # abort, within a block period on a live device. Only a device delivering nothing keeps
        # it waiting (in poll), and only then is it cancelled. The close itself runs on a thread of its own, waited
        # for CLOSE_WAIT_S: a sound server that has stopped answering (hung, stopped) keeps it waiting for as long
        # as it does not answer, and stop() must still return; the stream stays counted open until it is closed.
        if not self._thread_done.wait(STOP_WAIT_S):
            log.warning("microphone %s: no audio for %.1f s; closing it anyway", self.device_name, STOP_WAIT_S)
        closed = threading.Event()

        def close() -> None:
            try:
                stream.close()
            except self._sd.PortAudioError as exc:
                log.debug("microphone %s: closing: %s", self.device_name, exc)
            finally:
                _count_stream(-1)
                closed.set()

        threading.Thread(target=close, name="mic-close-stream", daemon=True).start()
        if not closed.wait(CLOSE_WAIT_S):
            log.warning("microphone %s: not closed after %.1f s (the sound server does not answer); left to close "
                        "when it does", self.device_name, CLOSE_WAIT_S)
        self._closed.set()

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        captured_ns = time.monotonic_ns()  # first: the block's last sample has just arrived
        self._pa_thread = threading.get_ident()
        if status:
            self._count_status(status)
        if self._stopping.is_set():
            raise self._sd.CallbackAbort
        assert self._on_audio is not None
        try:
            # copy: PortAudio reuses the buffer once the callback returns
            self._on_audio(indata.copy(), captured_ns)
        except Exception as exc:  # the consumer failed: end the stream and say why in on_end
            log.exception("microphone %s: on_audio failed", self.device_name)
            self._error = f"processing microphone audio failed: {exc!r}"
            raise self._sd.CallbackAbort from None

    def _count_status(self, status: Any) -> None:
        self.statuses += 1
        if status.input_overflow:
            self.overflows += 1
        now = time.monotonic()
        if now - self._last_status_log >= STATUS_LOG_INTERVAL_S:
            self._last_status_log = now
            log.warning("microphone %s: %s (overflows so far: %d; the machine may be too busy)",
                        self.device_name, str(status).strip(), self.overflows)

    def _finished(self) -> None:
        """PortAudio's stream ended: by stop() (nothing to say) or on its own (device lost, error)."""
        self._pa_thread = threading.get_ident()
        self._thread_done.set()
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
        error = self._error or (f"input device {self.device_name} stopped delivering audio "
                                "(unplugged, or the sound server went away)")
        log.error("microphone: %s", error)
        assert self._on_end is not None
        self._on_end(error)
