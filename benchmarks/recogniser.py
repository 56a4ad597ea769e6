"""hama's phoneme recogniser: libhama (native, one clip at a time) against the PyTorch port.

    python -m benchmarks.recogniser          # ~1 min on one core; writes benchmarks/recogniser.json

Both run on one CPU thread over cuts of the bundled sample speech (6.8 s): batch 1 is one 4.1 s
cut, batch 8 is eight 4.1 s cuts at different offsets, and "batch 8 ragged" is eight cuts from
6.8 down to 3.4 s, zero-padded to the longest with their lengths (the port computes the padding
too). libhama runs a batch's clips one after another, the port as one batch. Figures are seconds
of compute per second of (unpadded) audio, the median of ``--repeats`` timed runs after a
warm-up, libhama and the port alternating so both meet the same load from other work (the
speedup is the median of the paired ratios). The port's argmax agreement and max abs
log-probability difference against libhama on the same clips are recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ksdiff_runtime.assets import SAMPLE_SPEECH
from ksdiff_runtime.features.frontend import PosteriorgramFrontEnd
from ksdiff_runtime.features.recogniser import Recogniser
from ksdiff_runtime.motion import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent


def clips_for(batch: int, speech: np.ndarray, ragged: bool) -> list[np.ndarray]:
    """``batch`` cuts of ``speech``: 0.6 of it at spread offsets, or (ragged) centred cuts from the
    whole line down to half of it."""
    if ragged:
        lengths = np.linspace(speech.size, speech.size // 2, batch).astype(int)
        return [speech[(speech.size - n) // 2 : (speech.size - n) // 2 + n] for n in lengths]
    n = int(0.6 * speech.size)
    return [speech[o : o + n] for o in np.linspace(0, speech.size - n, batch).astype(int)]


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def timed(run: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def measure(
    batch: int, ragged: bool, speech: np.ndarray, libhama: PosteriorgramFrontEnd, model: Recogniser, repeats: int
) -> dict:
    clips = clips_for(batch, speech, ragged)
    audio_s = sum(c.size for c in clips) / SAMPLE_RATE
    waveform = torch.zeros(batch, max(c.size for c in clips))
    for i, clip in enumerate(clips):
        waveform[i, : clip.size] = torch.from_numpy(clip)
    lengths = torch.tensor([c.size for c in clips])

    def port() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model(waveform, lengths)

    def reference() -> list[np.ndarray]:
        return [libhama.log_probs(c) for c in clips]

    # alternate the two, after a warm-up, so both meet the same load from other work
    reference(), port()
    times = [(timed(reference), timed(port)) for _ in range(repeats)]
    libhama_s = statistics.median(t[0] for t in times)
    port_s = statistics.median(t[1] for t in times)
    log_probs, out_lengths = port()
    same, frames, max_diff = 0, 0, 0.0
    for i, clip in enumerate(clips):
        ref, got = libhama.log_probs(clip), log_probs[i, : out_lengths[i]].numpy()
        same += int((ref.argmax(1) == got.argmax(1)).sum())
        frames += ref.shape[0]
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
    return {
        "batch": batch,
        "ragged": ragged,
        "audio_s": round(audio_s, 3),
        "libhama_s_per_audio_s": round(libhama_s / audio_s, 5),
        "torch_s_per_audio_s": round(port_s / audio_s, 5),
        "speedup": round(statistics.median(t[0] / t[1] for t in times), 1),  # median of paired ratios
        "argmax_agreement": round(same / frames, 5),
        "max_abs_diff": round(max_diff, 5),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recogniser", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure (median)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "recogniser.json", help="results file")
    args = p.parse_args(argv)

    torch.set_num_threads(1)  # libhama is single-threaded: compare like with like
    speech, rate = sf.read(str(SAMPLE_SPEECH), dtype="float32")
    assert rate == SAMPLE_RATE, f"{SAMPLE_SPEECH} is {rate} Hz"
    libhama, model = PosteriorgramFrontEnd(), Recogniser.from_hama()
    rows = []
    for batch, ragged in [(1, False), (8, False), (8, True)]:
        row = measure(batch, ragged, speech, libhama, model, args.repeats)
        rows.append(row)
        print(f"batch {batch}{' ragged' if ragged else ''}: {row['audio_s']:.1f} s audio; s per audio-second: libhama "
              f"{row['libhama_s_per_audio_s']:.4f}, torch {row['torch_s_per_audio_s']:.4f} "
              f"({row['speedup']}x); argmax agreement {row['argmax_agreement']:.4f}, "
              f"max abs diff {row['max_abs_diff']:.4f}")
    doc = {
        "what": "hama phoneme recogniser, seconds of compute per audio-second on 1 CPU thread",
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews both
        "repeats": args.repeats,
        "results": rows,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
