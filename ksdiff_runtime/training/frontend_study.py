"""How much audio context the hama phoneme recogniser needs (`ksdiff-runtime frontend-study`).

A streaming engine cannot run the recogniser on the whole utterance; it runs it on a sliding
window [block_start - left_context, block_end + lookahead] per block (see
``ksdiff_runtime.features.frontend``). This study compares that blockwise posteriorgram with the
whole-utterance one on speech clips, for a grid of lookaheads and left contexts, and measures
what each setting costs, so the defaults are chosen from numbers, not guesses.

Metrics per (left context, lookahead), over all recogniser frames of all clips:
- tv: total-variation distance between blockwise and whole-utterance frame posteriors
  (0.5 * sum |p - q|, in [0, 1]); the mean abs diff of probabilities scaled per frame;
- mad: mean abs diff of probabilities per class (tiny because most of 191 classes are ~0);
- agree: argmax agreement over all frames (inflated by the CTC blank);
- agree_speech: argmax agreement on frames whose whole-utterance argmax is not blank;
- cpu_ms_per_s: CPU milliseconds per second of audio for the blockwise procedure (one core).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ksdiff_runtime.features.frontend import HAMA_BLANK, HAMA_HOP, FrontEndConfig, PosteriorgramFrontEnd
from ksdiff_runtime.inputs.guards import load_audio, sanitize
from ksdiff_runtime.motion import SAMPLE_RATE

log = logging.getLogger(__name__)

LOOKAHEADS_MS = (0, 20, 40, 60, 100, 160, 240, 400)
LEFT_CONTEXTS_MS = (250, 500, 1000)

# Fallback speech when no corpus exists: espeak-ng sentences in a few voices and speeds.
SENTENCES = (
    ("en-us", 160, "The quick brown fox jumps over the lazy dog while the children watch."),
    ("en-gb", 175, "Please remember to bring my umbrella, it might rain this afternoon."),
    ("en-us+f3", 150, "Five hundred people waited patiently outside the theatre for the show."),
    ("en-us+m3", 185, "She sells sea shells by the sea shore, and nobody buys them at all."),
    ("en-gb+f2", 165, "Who would have thought that a tiny mouse could move such a heavy box?"),
)


def speech_clips(corpus: Path, max_seconds: float) -> tuple[list[np.ndarray], str]:
    """Speech clips (16 kHz mono) up to ``max_seconds`` in total, and where they came from."""
    clips: list[np.ndarray] = []
    files = sorted(corpus.glob("*.npz")) if corpus.is_dir() else []
    for f in files:
        with np.load(f) as data:
            if "audio" not in data:
                continue
            clips.append(sanitize(data["audio"])[0])
        if sum(c.size for c in clips) >= max_seconds * SAMPLE_RATE:
            return clips, f"corpus {corpus}"
    if clips:
        return clips, f"corpus {corpus}"
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError(f"no clips in {corpus} and no espeak-ng to synthesise speech (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (voice, speed, text) in enumerate(SENTENCES):
            wav = Path(tmp) / f"s{i}.wav"
            subprocess.run([espeak, "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True)
            clips.append(load_audio(wav)[0])
            if sum(c.size for c in clips) >= max_seconds * SAMPLE_RATE:
                break
    return clips, "espeak-ng " + ", ".join(v for v, _, _ in SENTENCES[: len(clips)])


def blockwise_log_probs(fe: PosteriorgramFrontEnd, audio: np.ndarray) -> np.ndarray:
    """Recogniser log-probs on its native 20 ms grid, computed block by block as when streaming."""
    per_block = fe.block_samples // HAMA_HOP
    n_frames = audio.size // HAMA_HOP + 1  # what a whole-utterance run emits
    out = []
    for k in range(-(-n_frames // per_block)):
        block_start = k * fe.block_samples
        s0 = max(0, block_start - fe.left_samples)
        s1 = min(audio.size, block_start + fe.block_samples + fe.lookahead_samples)
        lp = fe.log_probs(audio[s0:s1])
        first = (block_start - s0) // HAMA_HOP
        out.append(lp[first : first + min(per_block, n_frames - k * per_block)])
    return np.concatenate(out, axis=0)


def compare(block_lp: np.ndarray, whole_lp: np.ndarray, blank_id: int) -> dict[str, float]:
    n = min(block_lp.shape[0], whole_lp.shape[0])
    p, q = np.exp(block_lp[:n]), np.exp(whole_lp[:n])
    speech = whole_lp[:n].argmax(1) != blank_id
    agree = block_lp[:n].argmax(1) == whole_lp[:n].argmax(1)
    return {
        "frames": int(n),
        "tv_sum": float(0.5 * np.abs(p - q).sum()),
        "mad_sum": float(np.abs(p - q).mean(axis=1).sum()),
        "agree_sum": float(agree.sum()),
        "speech_frames": int(speech.sum()),
        "agree_speech_sum": float(agree[speech].sum()),
    }


def study(corpus: Path, max_seconds: float, block_ms: int, json_path: Path, plot_path: Path) -> None:
    """Blockwise vs whole-utterance posteriorgram over the grid; writes the JSON and the plot."""
    clips, source = speech_clips(corpus, max_seconds)
    seconds = sum(c.size for c in clips) / SAMPLE_RATE
    log.info("frontend study on %.1f s of speech from %s", seconds, source)
    probe = PosteriorgramFrontEnd(FrontEndConfig(block_ms=block_ms))
    blank_id = HAMA_BLANK

    t0 = time.process_time()
    whole = [probe.log_probs(c) for c in clips]
    whole_cost = 1000.0 * (time.process_time() - t0) / seconds

    rows = []
    for left in LEFT_CONTEXTS_MS:
        for ahead in LOOKAHEADS_MS:
            fe = PosteriorgramFrontEnd(FrontEndConfig(block_ms=block_ms, left_context_ms=left, lookahead_ms=ahead))
            totals: dict[str, float] = {}
            t0 = time.process_time()
            blocks = [blockwise_log_probs(fe, c) for c in clips]
            cost = 1000.0 * (time.process_time() - t0) / seconds
            for b, w in zip(blocks, whole, strict=True):
                for key, value in compare(b, w, blank_id).items():
                    totals[key] = totals.get(key, 0.0) + value
            row = {
                "left_context_ms": left,
                "lookahead_ms": ahead,
                "tv": totals["tv_sum"] / totals["frames"],
                "mad": totals["mad_sum"] / totals["frames"],
                "agree": totals["agree_sum"] / totals["frames"],
                "agree_speech": totals["agree_speech_sum"] / max(1.0, totals["speech_frames"]),
                "cpu_ms_per_s": cost,
            }
            rows.append(row)
            print(
                f"left {left:5d} ms  ahead {ahead:4d} ms  tv {row['tv']:.4f}  mad {row['mad']:.2e}  "
                f"agree {row['agree']:.3f}  agree_speech {row['agree_speech']:.3f}  "
                f"cpu {cost:6.1f} ms/s",
                flush=True,
            )

    result = {
        "source": source,
        "seconds": seconds,
        "block_ms": block_ms,
        "whole_utterance_cpu_ms_per_s": whole_cost,
        "rows": rows,
    }
    print(f"\nwhole-utterance recogniser: {whole_cost:.1f} ms CPU per s of audio ({seconds:.1f} s, {source})")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, plot_path, f"{seconds:.0f} s of speech ({source}); block {block_ms} ms")
    print(f"wrote {json_path} and {plot_path}")


def plot(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for left in LEFT_CONTEXTS_MS:
        sel = [r for r in rows if r["left_context_ms"] == left]
        x = [r["lookahead_ms"] for r in sel]
        axes[0].plot(x, [r["tv"] for r in sel], "o-", label=f"left {left} ms")
        axes[1].plot(x, [r["agree_speech"] for r in sel], "o-", label=f"left {left} ms")
        axes[2].plot(x, [r["cpu_ms_per_s"] for r in sel], "o-", label=f"left {left} ms")
    axes[0].set_ylabel("total variation vs whole utterance")
    axes[1].set_ylabel("argmax agreement (non-blank frames)")
    axes[2].set_ylabel("CPU ms per second of audio")
    for ax in axes:
        ax.set_xlabel("lookahead (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"hama PPG, blockwise vs whole utterance: {title}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
