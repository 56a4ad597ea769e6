"""The examples run against the scripted runtime (real sockets) and do what their help says."""

from __future__ import annotations

import csv
import importlib.util
import struct
import sys
import threading
import wave
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from fake_runtime import FakeRuntime, frame_message

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_wav(path: Path, rate: int, channels: int, width: int, data: bytes) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def test_npc_line_pushes_a_wav_and_saves_its_frames(tmp_path, capsys):
    pcm = (np.random.default_rng(0).uniform(-0.3, 0.3, (22050, 2)) * 32767).astype("<i2")
    path = write_wav(tmp_path / "line.wav", 22050, 2, 2, pcm.tobytes())
    out = tmp_path / "frames.csv"
    with FakeRuntime() as rt:
        code = load("npc_line").main([str(path), "--stream", "guard", "--transcript", "Halt!", "--out", str(out),
                                      "--pub", rt.pub_endpoint, "--router", rt.router_endpoint, "--timeout", "5"])
        sent = b"".join(m["pcm"] for m in rt.audio["guard"])
        opened = rt.requests_of("open_stream")[0]
    assert code == 0
    assert sent == pcm.tobytes()
    assert (opened["sample_rate"], opened["channels"], opened["format"]) == (22050, 2, "s16le")
    assert opened["mode"] == "line"  # a line already whole: never refused for capacity, nor shed
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["index", "t_audio", "eyeBlinkLeft"] and len(rows[0]) == 2 + 52 + 3 + 4
    assert [int(r[0]) for r in rows[1:]] == list(range(30))
    assert "30 of 30 frames received" in capsys.readouterr().out


def test_npc_line_pushed_at_playback_pace_is_a_live_stream_and_a_refusal_is_one_line(tmp_path, capsys):
    path = write_wav(tmp_path / "line.wav", 16000, 1, 2, b"\0\0" * 1600)
    with FakeRuntime() as rt:
        endpoints = ["--pub", rt.pub_endpoint, "--router", rt.router_endpoint, "--timeout", "5", "--quiet"]
        assert load("npc_line").main([str(path), "--stream", "tts", "--realtime", *endpoints]) == 0
        assert rt.requests_of("open_stream")[0]["mode"] == "live"
        # the runtime answers busy (here: the id is open), as it does for a live stream it has no room for
        rt.open_streams["guard"] = {"open": {}, "samples": 0}
        assert load("npc_line").main([str(path), "--stream", "guard", *endpoints]) == 1
    assert "error: the runtime refused the stream: " in capsys.readouterr().err


def test_npc_line_refuses_a_non_16_bit_wav(tmp_path):
    path = write_wav(tmp_path / "line8.wav", 8000, 1, 1, b"\x80" * 800)
    with pytest.raises(SystemExit, match="16-bit"):
        load("npc_line").read_wav_s16(path)
    # a 32-bit float wav (format 3), which the wave module refuses before the script could look at it
    data = np.zeros(800, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)
    (tmp_path / "float.wav").write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                                         + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                                         + b"data" + struct.pack("<I", len(data)) + data)
    with pytest.raises(SystemExit, match="save it as plain 16-bit PCM"):
        load("npc_line").read_wav_s16(tmp_path / "float.wav")


def test_print_frames_reports_rate_and_latency(capsys):
    with FakeRuntime() as rt:
        stop = threading.Event()

        def publish() -> None:
            seq = 0
            while not stop.wait(0.01):  # a 100 fps stream, paced like a live source
                rt.publish(*frame_message("npc1", seq))
                seq += 1

        feeder = threading.Thread(target=publish)
        feeder.start()
        try:
            code = load("print_frames").main(["--pub", rt.pub_endpoint, "--router", rt.router_endpoint,
                                              "--duration", "0.8", "--interval", "0.3"])
        finally:
            stop.set()
            feeder.join(5)
    out = capsys.readouterr().out
    assert code == 0
    assert "npc1:" in out and "frames/s" in out and "latency p50  100.0 ms" in out
