"""The streaming recogniser against the full-context recogniser's whole-utterance output.

    python -m benchmarks.streaming_recogniser [--checkpoint runs/streaming_asr/last.pt | --weights NPZ]
    # one CPU thread, ~2-4 min; writes benchmarks/streaming_recogniser.json

Reference: ``Recogniser.from_hama()`` (hama's weights, whole-utterance attention) over each whole
clip. Compared with it, on the same 20 ms output frames, for lookahead L = 0..3 frames:

- ``windowed``: today's schedule. The low-latency preset re-runs the full-context recogniser on
  every hop over 150 ms of left context (rounded up to the 20 ms grid, 160 ms, as the front-end
  does) and the audio up to the hop; here frame q is taken from a window ending 320 (q + L) + 360
  samples into the clip, the audio the chunked recogniser has when q is the first frame of its
  chunk (same audio, same latency). The preset today reads a frame 13-27 ms after its centre,
  so L = 0 (22.5 ms) is today's schedule; larger L is that schedule given more lookahead.
- ``chunked_init``: ``StreamingRecogniser.forward_chunked`` (attention and convolutions cut at a
  chunk of L + 1 frames, 2 s of left context) with hama's full-context weights, untrained. Its
  output equals the streaming call sequence (tests/test_streaming_recogniser.py).
- ``chunked_distilled``: the same after distillation (``training.streaming_distil``), when a
  checkpoint is given.

Lookahead: a chunked frame is final when the stream holds 20 L + 22.5 ms past the centre of the
chunk's first frame (L = the worst frame; the chunk's last frame waits 22.5 ms). Mean over frames:
10 L + 22.5 ms.

Metrics per set (sums over all clips' frames):
- ``agree_speech``: argmax agreement with the reference on speech frames, the frames whose
  reference argmax is not the CTC blank (as in benchmarks/frontend_stability.json's
  ``agree_speech``; ~20 % of frames: the phoneme spikes and word boundaries, not silence or the
  blank between spikes);
- ``agree_speech_within_1_frame``: the same, counting a speech frame as agreeing when the candidate
  gives the reference's label on it or on a neighbouring frame (a spike 20 ms early or late);
- ``agree``: argmax agreement on all frames (inflated by the blank);
- ``kl_speech`` / ``kl``: mean KL(reference || candidate) in nats on speech / all frames.

Sets: ``synthetic``: held-out clips of the training corpus's generator (its *test* voices and
sentences, never trained on); ``real``: every fifth of Debian's asterisk-core-sounds-en-wav
prompts (one human speaker, 8 kHz telephone recordings, never trained on).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ksdiff_runtime.features.frontend import HAMA_BLANK
from ksdiff_runtime.features.recogniser import HOP, Recogniser
from ksdiff_runtime.features.streaming_frontend import WEIGHTS
from ksdiff_runtime.features.streaming_recogniser import (
    DEFAULT_LEFT_FRAMES,
    MAX_LOOKAHEAD,
    StreamingRecogniser,
    stream_latency_ms,
)
from ksdiff_runtime.motion import SAMPLE_RATE
from ksdiff_runtime.training import streaming_distil as sd

ROOT = Path(__file__).resolve().parent.parent
WINDOW_LEFT = 2560  # the low-latency preset's 150 ms of left context, rounded up to the 320-sample grid
WINDOW_BATCH = 64


def left_samples(left_ms: int) -> int:
    """A window's left context as the front-end takes it: rounded up to the 320-sample grid."""
    return -(-left_ms * SAMPLE_RATE // 1000 // HOP) * HOP


def held_out_synthetic(n: int) -> list[np.ndarray]:
    """The first ``n`` held-out synthetic clips, made once and kept in data/ (espeak-ng's output
    varies by a few samples between calls, so reruns read the same clips from there)."""
    path = ROOT / "data" / "streaming_recogniser" / f"heldout_synthetic_{n}.npz"
    if path.exists():
        with np.load(path) as data:
            return [data[f"c{i}"] for i in range(n)]
    clips = [sd.synthetic_clip("test", i) for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"c{i}": c for i, c in enumerate(clips)})
    return clips


def eval_sets(synthetic_clips: int, real_seconds: float) -> dict[str, list[np.ndarray]]:
    sets = {"synthetic": held_out_synthetic(synthetic_clips)}
    prompts = sd.real_prompts("test")
    rng = np.random.default_rng(0)
    real: list[np.ndarray] = []
    for i in rng.permutation(len(prompts)):
        audio = sd.load_prompt(prompts[int(i)])
        if audio.size:
            real.append(audio)
        if sum(a.size for a in real) >= real_seconds * SAMPLE_RATE:
            break
    if real:
        sets["real"] = real
    return sets


def run(
    model: Recogniser, wav: torch.Tensor, lengths: torch.Tensor, chunked_lookahead: int | None = None
) -> np.ndarray:
    with torch.no_grad():
        if chunked_lookahead is None:
            lp, _ = model(wav, lengths)
        else:
            assert isinstance(model, StreamingRecogniser)
            lp, _ = model.forward_chunked(wav, lengths, lookahead=chunked_lookahead)
    return lp.numpy()


def whole(model: Recogniser, audio: np.ndarray, chunked_lookahead: int | None = None) -> np.ndarray:
    lp = run(model, torch.from_numpy(audio)[None], torch.tensor([audio.size]), chunked_lookahead)
    return lp[0, : audio.size // HOP + 1]


def windowed(model: Recogniser, audio: np.ndarray, lookahead: int, left: int = WINDOW_LEFT) -> np.ndarray:
    """Frame q from the full-context recogniser over audio [320 q - left, 320 (q + L) + 360), batched."""
    frames = audio.size // HOP + 1
    out = np.zeros((frames, 191), dtype=np.float32)
    for b0 in range(0, frames, WINDOW_BATCH):
        qs = range(b0, min(frames, b0 + WINDOW_BATCH))
        spans = [(max(0, HOP * q - left), min(audio.size, HOP * (q + lookahead) + 360)) for q in qs]
        clips = [audio[s0:s1] for s0, s1 in spans]
        wav, lengths = sd.pad_batch(clips)
        lp = run(model, wav, lengths)
        for row, (q, (s0, _)) in enumerate(zip(qs, spans, strict=True)):
            out[q] = lp[row, q - s0 // HOP]
    return out


def windowed_cost(model: Recogniser, audio: np.ndarray, left: int = WINDOW_LEFT) -> float:
    """CPU ms per second of audio for today's schedule run live: one window per 20 ms frame (L = 0)."""
    frames = audio.size // HOP + 1
    t0 = time.process_time()
    for q in range(frames):
        segment = audio[max(0, HOP * q - left) : min(audio.size, HOP * q + 360)]
        run(model, torch.from_numpy(segment)[None], torch.tensor([segment.size]))
    return 1000.0 * (time.process_time() - t0) / (audio.size / SAMPLE_RATE)


def compare(candidate: np.ndarray, reference: np.ndarray, chunk: int) -> dict[str, float]:
    """Sums over one clip's frames; ``by_ahead_k``: speech frames with k frames left in their chunk."""
    ref_id, cand_id = reference.argmax(1), candidate.argmax(1)
    speech = ref_id != HAMA_BLANK
    agree = cand_id == ref_id
    # the reference's label on the frame or a neighbour (a spike one frame early or late)
    near = agree.copy()
    near[1:] |= cand_id[:-1] == ref_id[1:]
    near[:-1] |= cand_id[1:] == ref_id[:-1]
    kl = (np.exp(reference) * (reference - candidate)).sum(1)
    sums = {"frames": int(agree.size), "speech_frames": int(speech.sum()), "agree_sum": float(agree.sum()),
            "agree_speech_sum": float(agree[speech].sum()), "agree_speech_near_sum": float(near[speech].sum()),
            "kl_sum": float(kl.sum()),
            "kl_speech_sum": float(kl[speech].sum())}
    ahead = (chunk - 1) - np.arange(agree.size) % chunk
    for k in range(chunk):
        sums[f"by_ahead_{k}_speech_frames"] = int((speech & (ahead == k)).sum())
        sums[f"by_ahead_{k}_agree_sum"] = float(agree[speech & (ahead == k)].sum())
    return sums


def summarise(totals: dict[str, float], chunk: int, chunked: bool) -> dict[str, Any]:
    f, s = totals["frames"], max(1.0, totals["speech_frames"])
    out: dict[str, Any] = {
        "agree_speech": round(totals["agree_speech_sum"] / s, 4), "agree": round(totals["agree_sum"] / f, 4),
        "agree_speech_within_1_frame": round(totals["agree_speech_near_sum"] / s, 4),
        "kl_speech": round(totals["kl_speech_sum"] / s, 4), "kl": round(totals["kl_sum"] / f, 4),
        "frames": int(f), "speech_frames": int(totals["speech_frames"])}
    if chunked:  # agreement on speech frames by their own lookahead (their place in the chunk)
        out["agree_speech_by_frame_lookahead"] = {
            str(k): round(totals[f"by_ahead_{k}_agree_sum"] / max(1.0, totals[f"by_ahead_{k}_speech_frames"]), 4)
            for k in range(chunk)}
    return out


def stream_cost(model: StreamingRecogniser, audio: np.ndarray, piece_ms: int, lookahead: int) -> tuple[float, float]:
    """CPU ms per second of audio for the streaming call sequence in ``piece_ms`` pieces, and the
    max abs difference of its output from ``forward_chunked`` over the whole clip."""
    piece = piece_ms * SAMPLE_RATE // 1000
    state = model.new_stream(lookahead)
    outs = []
    t0 = time.process_time()
    for start in range(0, audio.size, piece):
        outs.append(model.stream(state, audio[start : start + piece]))
    outs.append(model.finish(state))
    ms = 1000.0 * (time.process_time() - t0) / (audio.size / SAMPLE_RATE)
    return ms, float(np.abs(torch.cat(outs).numpy() - whole(model, audio, lookahead)).max())


def from_weights(path: Path) -> StreamingRecogniser:
    """A student with a distilled ``.npz``'s tensors over hama's (as the runtime loads them)."""
    model = StreamingRecogniser.from_hama_streaming(lookahead=MAX_LOOKAHEAD, left_frames=DEFAULT_LEFT_FRAMES)
    with np.load(path) as f:
        tensors = {name: torch.from_numpy(f[name].astype(np.float32)) for name in f.files}
    unexpected = model.load_state_dict(tensors, strict=False).unexpected_keys
    if unexpected:
        raise SystemExit(f"{path}: not the recogniser's tensors ({unexpected[:3]})")
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description="streaming recogniser vs whole-utterance output")
    p.add_argument("--checkpoint", type=Path, default=None, help="a distilled run's last.pt")
    p.add_argument("--weights", type=Path, default=None,
                   help=f"or a distilled student's weights (.npz; the runtime's: {WEIGHTS.relative_to(ROOT)})")
    p.add_argument("--synthetic-clips", type=int, default=24)
    p.add_argument("--real-seconds", type=float, default=120.0)
    p.add_argument("--windowed-left-ms", type=int, nargs="+", default=[150, 500],
                   help="windowed baselines' left context (150: low-latency preset; 500: trained front-end)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "streaming_recogniser.json")
    args = p.parse_args()
    torch.set_num_threads(1)

    teacher = Recogniser.from_hama().eval()
    models: dict[str, StreamingRecogniser] = {"chunked_init": StreamingRecogniser.from_hama_streaming(
        lookahead=MAX_LOOKAHEAD, left_frames=DEFAULT_LEFT_FRAMES)}
    checkpoint_info: dict[str, Any] | None = None
    if args.checkpoint is not None:
        models["chunked_distilled"] = sd.load_distilled(args.checkpoint)
        ckpt = torch.load(args.checkpoint, map_location="cpu")
        checkpoint_info = {"path": str(args.checkpoint), "step": ckpt["step"],
                           "trained_audio_h": round(ckpt["trained_s"] / 3600, 2),
                           "real_languages": ckpt.get("real_languages"), "lr": ckpt.get("lr")}
    elif args.weights is not None:
        models["chunked_distilled"] = from_weights(args.weights)
        checkpoint_info = {"path": str(args.weights)}
    t0 = time.time()
    sets = eval_sets(args.synthetic_clips, args.real_seconds)
    results: dict[str, Any] = {}
    for name, clips in sets.items():
        refs = [whole(teacher, c) for c in clips]
        rows = []
        for L in range(MAX_LOOKAHEAD + 1):
            row: dict[str, Any] = {"lookahead_frames": L, "lookahead_ms_max": stream_latency_ms(L),
                                   "lookahead_ms_mean": stream_latency_ms(L) - 10.0 * L}
            candidates = {f"windowed_{left_ms}ms": [windowed(teacher, c, L, left_samples(left_ms)) for c in clips]
                          for left_ms in args.windowed_left_ms}
            for key, model in models.items():
                candidates[key] = [whole(model, c, L) for c in clips]
            for key, outs in candidates.items():
                totals: dict[str, float] = {}
                for out, ref in zip(outs, refs, strict=True):
                    for k, v in compare(out, ref, L + 1).items():
                        totals[k] = totals.get(k, 0.0) + v
                row[key] = summarise(totals, L + 1, chunked=key.startswith("chunked"))
            rows.append(row)
            print(name, L, {k: (v["agree_speech"], v["kl_speech"]) for k, v in row.items() if isinstance(v, dict)},
                  flush=True)
        results[name] = {"clips": len(clips), "seconds": round(sum(c.size for c in clips) / SAMPLE_RATE, 1),
                         "rows": rows}

    # CPU cost on one thread, torch eager (per-call overhead dominates small pieces): the chunked
    # recogniser fed 20 / 100 ms pieces, against today's schedule run live (one window per 20 ms frame)
    clip = sets["synthetic"][0]
    model = models.get("chunked_distilled", models["chunked_init"])
    cost: dict[str, float] = {"clip_s": round(clip.size / SAMPLE_RATE, 2)}
    max_diff = 0.0
    for piece_ms in (20, 100):
        for L in (0, 2):
            ms, diff = stream_cost(model, clip, piece_ms, L)
            cost[f"stream_{piece_ms}ms_pieces_L{L}_cpu_ms_per_s"] = round(ms, 1)
            max_diff = max(max_diff, diff)
    cost["windowed_per_frame_cpu_ms_per_s"] = round(windowed_cost(teacher, clip), 1)

    out = {
        "what": "argmax agreement and KL of the streaming (chunked) recogniser and of today's windowed schedule "
                "with the full-context recogniser's whole-utterance output; see benchmarks/streaming_recogniser.py",
        "speech_frames": "frames whose whole-utterance argmax is not the CTC blank",
        "left_frames": DEFAULT_LEFT_FRAMES,
        "windowed_left_samples": {f"windowed_{ms}ms": left_samples(ms) for ms in args.windowed_left_ms},
        "checkpoint": checkpoint_info,
        "sets": results,
        "cpu_cost": cost,
        "stream_vs_whole_clip_max_abs_diff": max_diff,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": 1, "torch": torch.__version__},
        "wall_s": round(time.time() - t0, 1),
    }
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
