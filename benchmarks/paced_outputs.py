"""`python -m benchmarks.paced_outputs`: when the frames of a line and of a live stream reach a VMC app.

A real runtime (the bundled model, ONNX Runtime) with the VMC output to a UDP socket on 127.0.0.1, and a ZeroMQ
subscriber beside it. Streams of the bundled sample speech, one after the other:

- a line pushed whole through the SDK (a TTS reply): when its bundles arrive, against the push and against the
  schedule of its frames (each at the first's arrival plus its t_audio less the first's; outputs/pacing.py);
- a live stream (`serve --file` in real time), with `low-latency` and with `quality` (a hop's 15 frames published
  together): the gaps between bundles, and how much later each frame reaches the VMC app than the ZeroMQ
  subscriber, which is what the pacer holds a live frame (it should hold none but the closing frames, the ease to
  rest the runtime publishes together at the stream's end, which go at their time).

Prints the figures and writes benchmarks/paced_outputs.json.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import zmq
from pythonosc.osc_bundle import OscBundle

OUT = Path(__file__).with_name("paced_outputs.json")


class VmcArrivals:
    """Every VMC bundle's arrival (time.monotonic()) and /VMC/Ext/T, on a thread of its own."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.got: list[tuple[float, float]] = []  # (arrival, t_audio)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            now = time.monotonic()
            t = next(m.params[0] for m in OscBundle(data) if m.address == "/VMC/Ext/T")
            self.got.append((now, float(t)))

    def take(self) -> list[tuple[float, float]]:
        got, self.got = self.got, []
        return got

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def line(rt, vmc: VmcArrivals, audio: np.ndarray, rate: int) -> dict:
    import ksdiff_sdk

    with ksdiff_sdk.Client(rt.pub_endpoint, rt.router_endpoint) as client:
        handle = client.open_stream(mode="line", sample_rate=rate)
        pushed = time.monotonic()
        handle.push(audio)
        frames = handle.end(timeout=120.0)
        assert rt.wait_until_idle(timeout=120.0)
    got = vmc.take()
    arrival = np.array([a for a, _ in got])
    t = np.array([t for _, t in got])
    gaps = np.diff(arrival) * 1000
    return {"audio_s": round(len(audio) / rate, 3), "frames": frames, "bundles": len(got),
            "stated_latency_ms": round(handle.latency_ms, 1),
            "first_after_push_ms": round((arrival[0] - pushed) * 1000, 1),
            "last_after_push_s": round(arrival[-1] - pushed, 3),
            "gap_ms_median": round(float(np.median(gaps)), 1), "gap_ms_max": round(float(gaps.max()), 1),
            "off_schedule_ms_max": round(float(np.abs((arrival - arrival[0]) - (t - t[0])).max() * 1000), 1)}


def live(rt, vmc: VmcArrivals, path: Path) -> dict:
    from ksdiff_runtime.sources import FileSource
    from ksdiff_sdk import protocol

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_ROOT)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(rt.pub_endpoint)
    while protocol.decode(sub.recv_multipart()[1])["type"] != "hello":  # the subscription is live
        pass
    zmq_at: dict[float, float] = {}
    sid = rt.add_source(FileSource(path, realtime=True, stream_id="live"))
    while True:
        msg = protocol.decode(sub.recv_multipart()[1])
        if msg["type"] == "frame" and msg["stream"] == sid:
            zmq_at[round(msg["t_audio"], 4)] = time.monotonic()
        elif msg["type"] == "stream_end" and msg["stream"] == sid:
            break
    sub.close()
    assert rt.wait_until_idle(timeout=60.0)
    got = vmc.take()
    gaps = np.diff([a for a, _ in got]) * 1000
    pairs = [(t, (a - zmq_at[round(t, 4)]) * 1000) for a, t in got if round(t, 4) in zmq_at]
    held = np.array([h for _, h in pairs])
    long_held = [t for t, h in pairs if h > 20]  # the closing frames: published together at the stream's end
    return {"frames": len(zmq_at), "matched": len(held), "vmc_after_zmq_ms_p50": round(float(np.median(held)), 2),
            "vmc_after_zmq_ms_p95": round(float(np.percentile(held, 95)), 2),
            "vmc_after_zmq_ms_max": round(float(held.max()), 2), "held_over_20ms": len(long_held),
            "held_over_20ms_from_t_audio": round(min(long_held), 3) if long_held else None,
            "gap_ms_median": round(float(np.median(gaps)), 1), "gap_ms_p95": round(float(np.percentile(gaps, 95)), 1),
            "gap_ms_max": round(float(gaps.max()), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT, help="where to write the figures (JSON)")
    args = p.parse_args()
    from ksdiff_runtime.assets import ASSETS
    from ksdiff_runtime.cli.serve import build_outputs
    from ksdiff_runtime.server.config import ServeConfig
    from ksdiff_runtime.server.runtime import Runtime, build_engine

    sample = ASSETS / "sample_speech.wav"
    audio, rate = sf.read(sample, dtype="float32")
    vmc = VmcArrivals()
    result = {}
    try:
        for preset in ("low-latency", "quality"):
            engine = build_engine("onnxruntime", preset)
            try:
                with Runtime(engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", admission=False,
                             outputs=build_outputs(ServeConfig(vmc=vmc.address))) as rt:
                    if preset == "low-latency":
                        result["line"] = line(rt, vmc, audio, rate)
                    result[f"live {preset}"] = live(rt, vmc, sample)
            finally:
                engine.close()
    finally:
        vmc.close()
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
