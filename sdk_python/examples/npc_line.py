"""Speak an NPC line: push a wav file to the runtime as a stream and print (or save) its frames.

    python npc_line.py line.wav
    python npc_line.py line.wav --stream guard --transcript "Halt! Who goes there?" --out guard.csv
    python npc_line.py line.wav --realtime      # push at the pace of playback, like a live TTS

The line is opened with ``mode="line"``: its audio is all there, so the runtime animates it as fast as it can and
never refuses it for capacity or sheds its frames. With ``--realtime`` it is a live stream, as a TTS speaking as it
goes would be: paced, and refused (``BusyError``) when the runtime has no room for another live stream.

The wav must be 16-bit PCM (any rate 8-192 kHz, 1-8 channels); it is read with the standard
library's ``wave`` module, so the SDK needs nothing beyond pyzmq, msgpack and numpy.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import wave
from pathlib import Path

import numpy as np

from ksdiff_sdk import DEFAULT_PUB_ENDPOINT, DEFAULT_ROUTER_ENDPOINT, BusyError, Client, Frame, schema


def read_wav_s16(path: Path) -> tuple[np.ndarray, int]:
    """([n, channels] int16, sample rate) of a 16-bit PCM wav."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                raise SystemExit(f"{path}: need 16-bit PCM, got {8 * w.getsampwidth()}-bit {w.getcomptype()}")
            channels, rate = w.getnchannels(), w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as e:  # a float, compressed or WAVE_FORMAT_EXTENSIBLE wav: not read at all
        raise SystemExit(f"{path}: the wave module cannot read this wav ({e}); save it as plain 16-bit PCM") from None
    return data.reshape(-1, channels), rate


def write_csv(path: Path, frames: list[Frame]) -> None:
    names = [*schema.BLENDSHAPES, *schema.HEAD_ROTATION, *schema.GAZE]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["index", "t_audio", *names])
        for fr in frames:
            values = [*fr.blendshapes.tolist(), *fr.head.tolist(), *fr.gaze.tolist()]
            out.writerow([fr.index, f"{fr.t_audio:.4f}", *(f"{v:.5f}" for v in values)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wav", type=Path, help="16-bit PCM wav file with the line")
    ap.add_argument("--stream", default=None, help="stream id to ask for (default: the runtime picks one)")
    ap.add_argument("--transcript", default=None, help="what is said, if known (helps articulation)")
    ap.add_argument("--seed", type=int, default=None, help="motion seed (same audio + seed = same frames)")
    ap.add_argument("--realtime", action="store_true", help="push at playback pace instead of all at once")
    ap.add_argument("--out", type=Path, default=None, help="save the frames as CSV (index, t_audio, 52 weights, "
                    "head, gaze)")
    ap.add_argument("--quiet", action="store_true", help="do not print every frame")
    ap.add_argument("--pub", default=DEFAULT_PUB_ENDPOINT, help="the runtime's PUB endpoint (default %(default)s)")
    ap.add_argument("--router", default=DEFAULT_ROUTER_ENDPOINT,
                    help="the runtime's ROUTER endpoint (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the runtime (default %(default)s)")
    args = ap.parse_args(argv)

    audio, rate = read_wav_s16(args.wav)
    seconds = audio.shape[0] / rate
    with Client(args.pub, args.router, timeout=args.timeout) as client:
        client.wait_for_runtime()
        try:
            line = client.open_stream(args.stream, sample_rate=rate, channels=audio.shape[1], format="s16le",
                                      transcript=args.transcript, seed=args.seed,
                                      mode="live" if args.realtime else "line")
        except BusyError as e:  # a live stream the runtime has no room for, or a stream id already open
            print(f"error: the runtime refused the stream: {e}", file=sys.stderr)
            return 1
        with line:
            print(f"stream {line.stream}: {seconds:.2f} s of {rate} Hz x{audio.shape[1]} audio, {line.fps} fps")
            step = rate // 10  # 100 ms per push
            t0 = time.monotonic()
            for start in range(0, audio.shape[0], step):
                if args.realtime:
                    time.sleep(max(0.0, t0 + start / rate - time.monotonic()))  # playback pace
                line.push(audio[start : start + step])
            total = line.end()
            frames = []
            for frame in line.frames():
                frames.append(frame)
                if not args.quiet:
                    lat = "-" if frame.latency_ms is None else f"{frame.latency_ms:.0f} ms"
                    print(f"  {frame.index:5d}  t={frame.t_audio:6.3f} s  jawOpen {frame['jawOpen']:.2f}  "
                          f"headYaw {frame['headYaw']:+.3f} rad  latency {lat}")
    print(f"{len(frames)} of {total} frames received")
    if args.out is not None:
        write_csv(args.out, frames)
        print(f"saved {args.out}")
    return 0 if len(frames) == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
