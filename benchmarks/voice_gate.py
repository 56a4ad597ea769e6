"""The voice gate against no gate: rest on sounds that are not a voice, and speech left alone.

    python -m benchmarks.voice_gate [--seconds 8] [--prompts 12]

Every input is streamed through the engine (ONNX Runtime, low-latency preset, the live schedule a
VTuber's microphone gets), once with the voice gate (engine/gate.py) and once without, same seed:

- not a voice: the procedural battery of ksdiff_runtime/training/nonspeech.py at -20 dBFS and the
  installed music-on-hold tracks (asterisk-moh-opsound-wav). Reported: frames with jawOpen > 0.1
  (a visibly open mouth) and mean jawOpen;
- speech: the bundled sample, real recorded prompts (asterisk-core-sounds-en-wav, 8 kHz telephone
  speech), the sample under music and pink noise at 20/10/0 dB SNR, and at -40 dBFS. Reported:
  frames the gate changed, how many of the frames where the model opened the jaw (> 0.15) it changed,
  and jawOpen's correlation between the two runs;
- cost: the VAD's CPU time per second of audio, and per hop.

Writes benchmarks/voice_gate.json and docs/voice_gate.png; nothing is asserted, every figure is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.backends.select import load_backend
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.gate import GateConfig
from ksdiff_runtime.features import vad
from ksdiff_runtime.inputs.guards import load_audio
from ksdiff_runtime.training import nonspeech
from ksdiff_runtime.training.streaming_distil import real_prompts

from .live import machine

ROOT = Path(__file__).resolve().parent.parent
JAW = motion.index("jawOpen")
SR = motion.SAMPLE_RATE
OPEN = 0.1  # jawOpen above this: a visibly open mouth
VOICED = 0.15  # jawOpen the model gives a syllable


def stream(engine: StreamingEngine, audio: np.ndarray) -> np.ndarray:
    """jawOpen of every frame of one live stream of ``audio`` (33 ms pushes, never shed)."""
    return np.array([f.blendshapes[JAW] for f in engine.stream_clip(audio, seed=11)], np.float32)


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    noise = np.resize(noise, speech.size)
    level = 10 * np.log10(np.mean(np.square(speech, dtype=np.float64)))
    return (speech + nonspeech.at_dbfs(noise, level - snr_db)).astype(np.float32)


def vad_cost(audio: np.ndarray) -> dict[str, float]:
    """CPU seconds the VAD spends per second of audio (one stream, chunk by chunk as a stream runs it)."""
    track = vad.VadTrack(vad.shared_vad())
    t0 = time.process_time()
    for end in range(533, audio.size, 533):
        track.advance(audio, 0, end)
    cpu = time.process_time() - t0
    seconds = audio.size / SR
    return {"cpu_ms_per_audio_s": round(1e3 * cpu / seconds, 2),
            "cpu_ms_per_hop": round(1e3 * cpu / (seconds * motion.FPS), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.voice_gate", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="length of each non-speech input")
    p.add_argument("--prompts", type=int, default=12, help="real recorded prompts (held-out English)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "voice_gate.json", help="results (JSON)")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "voice_gate.png", help="plot (PNG)")
    args = p.parse_args(argv)
    backend = load_backend("onnxruntime", threads=1)
    engines = {"off": StreamingEngine(backend, "low-latency", front_end_threads=1),
               "on": StreamingEngine(backend, "low-latency", front_end_threads=1, voice_gate=GateConfig())}
    result: dict[str, Any] = {"machine": machine(), "gate": engines["on"].voice_gate.__dict__, "preset": "low-latency",
                              "open_threshold": OPEN, "not_a_voice": {}, "speech": {}}

    rng = np.random.default_rng(0)
    quiet = {k: nonspeech.procedural(k, args.seconds, rng) for k in nonspeech.PROCEDURAL}
    quiet |= {f"music: {k}": v for k, v in nonspeech.recorded_music(args.seconds).items()}
    for name, audio in quiet.items():
        jaw = {mode: stream(e, audio) for mode, e in engines.items()}
        row = {f"open_{m}": round(float(np.mean(j > OPEN)), 3) for m, j in jaw.items()}
        row |= {f"mean_jaw_{m}": round(float(j.mean()), 4) for m, j in jaw.items()}
        result["not_a_voice"][name] = row
        print(f"{name:34s} open {row['open_off']:5.1%} -> {row['open_on']:5.1%}   "
              f"mean jaw {row['mean_jaw_off']:.3f} -> {row['mean_jaw_on']:.3f}", flush=True)

    sample, _ = load_audio(SAMPLE_SPEECH)
    sample = sample.astype(np.float32)
    music = next(iter(nonspeech.recorded_music(sample.size / SR).values()), None)
    talk = {"sample": sample, "sample at -40 dBFS": nonspeech.at_dbfs(sample, -40.0)}
    for snr in (20, 10, 0):
        if music is not None:
            talk[f"sample + music, {snr} dB SNR"] = mix(sample, music, snr)
        talk[f"sample + pink noise, {snr} dB SNR"] = mix(sample, nonspeech.procedural("pink noise", 7.0, rng), snr)
    for path in real_prompts("test")[: args.prompts]:
        if "en" in path.parent.name:
            talk[f"prompt: {path.stem}"] = load_audio(path)[0].astype(np.float32)
    for name, audio in talk.items():
        off, on = stream(engines["off"], audio), stream(engines["on"], audio)
        voiced = off > VOICED
        row = {"frames": int(off.size), "changed": round(float(np.mean(off != on)), 3),
               "voiced_frames": int(voiced.sum()),
               "voiced_changed": round(float(np.mean(off[voiced] != on[voiced])), 3) if voiced.any() else 0.0,
               "jaw_corr": round(float(np.corrcoef(off, on)[0, 1]), 4) if off.std() and on.std() else None}
        result["speech"][name] = row
        print(f"{name:34s} changed {row['changed']:5.1%} of frames, {row['voiced_changed']:5.1%} of "
              f"{row['voiced_frames']} voiced; jaw r {row['jaw_corr']}", flush=True)

    result["vad_cost"] = vad_cost(sample)
    print(f"VAD cost: {result['vad_cost']}")
    quiet_rows = result["not_a_voice"].values()
    summary = {f"not_a_voice_open_{m}": round(float(np.mean([r[f"open_{m}"] for r in quiet_rows])), 3)
               for m in ("off", "on")}
    summary["speech_voiced_changed_max"] = max(r["voiced_changed"] for r in result["speech"].values())
    result["summary"] = summary
    print(f"summary: {summary}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.plot)
    print(f"-> {args.out}, {args.plot}")
    return 0


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["not_a_voice"]
    names = list(rows)
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
    ax.barh(y - 0.2, [100 * rows[n]["open_off"] for n in names], 0.4, label="no gate", color="C3")
    ax.barh(y + 0.2, [100 * rows[n]["open_on"] for n in names], 0.4, label="voice gate", color="C0")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel(f"frames with the mouth open (jawOpen > {OPEN}), %")
    ax.set_title("Sounds that are not a voice, streamed live (low-latency preset)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
