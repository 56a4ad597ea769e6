"""Distil the streaming (chunked) recogniser to the full-context recogniser's whole-utterance output.

Teacher: ``Recogniser.from_hama()``, hama's weights, whole-utterance attention, frozen. Student:
``StreamingRecogniser`` initialised from the same weights, run chunked (``forward_chunked``) with
a lookahead drawn per batch from 0..3 frames, so one set of weights serves every lookahead. Loss:
KL(teacher || student) per output frame, frames whose teacher argmax is not the CTC blank weighted
SPEECH_WEIGHT times (they are ~20 % of frames and are what agreement is measured on).

Data, all made or read at run time (nothing is written but the run folder):
- synthetic speech: espeak-ng personas of the training corpus's *train* voices and sentences
  (``training.corpus``: 1-2 sentences, 2-7 s, pauses, mic augmentation), a fresh clip each draw;
  the held-out clips of evaluation use the corpus's *test* voices and sentences;
- real speech: Debian's Asterisk prompt packages (``asterisk-core-sounds-{en,es,fr,it,ru}-wav``;
  recorded telephone prompts, 8 kHz, resampled to 16 kHz; CC-BY-SA-3.0 (en, es, fr) and
  CC-BY-3.0 (it, ru), see /usr/share/doc/asterisk-core-sounds-*/copyright). Every fifth English
  prompt (sorted by path) is held out for evaluation and never trained on.

Run (one thread, resumable: a run folder's ``last.pt`` is picked up again)::

    nohup python -m ksdiff_runtime.training.streaming_distil --out runs/streaming_asr --minutes 40 &

The run folder gets ``last.pt`` (student weights, optimiser, step; every ``--checkpoint-s``) and
``log.jsonl``. The student's weights are derived from hama's (Apache-2.0): keep them out of git.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ksdiff_runtime.features.frontend import HAMA_BLANK
from ksdiff_runtime.features.recogniser import Recogniser
from ksdiff_runtime.features.streaming_recogniser import DEFAULT_LEFT_FRAMES, MAX_LOOKAHEAD, StreamingRecogniser
from ksdiff_runtime.motion import SAMPLE_RATE

log = logging.getLogger(__name__)

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds")
# prompts that are not speech (tones, silence, music)
NOT_SPEECH = ("silence/", "beep", "monkeys", "ding", "tone", "music")
MIN_PROMPT_S = 0.8
HELD_OUT_EVERY = 5  # every fifth English prompt is evaluation-only
MAX_SEGMENT_S = 7.0
SPEECH_WEIGHT = 4.0
WARMUP_STEPS = 50
DECAY_FRACTION = 0.3
SEED = 0


# --- data -----------------------------------------------------------------------------------------
def prompt_language(path: Path) -> str:
    """'en' for .../sounds/en_US_f_Allison/x.wav, 'fr' for .../sounds/fr/x.wav."""
    return path.relative_to(ASTERISK_SOUNDS).parts[0].split("_")[0]


def real_prompts(split: str) -> list[Path]:
    """Asterisk prompt wavs: ``train`` (4/5 of English and every other language) or ``test`` (1/5 of English)."""
    if not ASTERISK_SOUNDS.is_dir():
        return []
    out: list[Path] = []
    for lang_dir in sorted(p for p in ASTERISK_SOUNDS.iterdir() if p.is_dir()):
        files = sorted(lang_dir.rglob("*.wav"))
        files = [f for f in files if not any(s in f.relative_to(lang_dir).as_posix() for s in NOT_SPEECH)]
        english = prompt_language(lang_dir / "x") == "en"
        for i, f in enumerate(files):
            held_out = english and i % HELD_OUT_EVERY == 0
            if (split == "test") == held_out:
                out.append(f)
    return out


@lru_cache(maxsize=4096)
def load_prompt(path: Path) -> np.ndarray:
    """A prompt as 16 kHz mono float32 (empty if shorter than MIN_PROMPT_S)."""
    import soundfile as sf
    import soxr

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    audio = np.asarray(audio, dtype=np.float32)
    return audio if audio.size >= MIN_PROMPT_S * SAMPLE_RATE else np.zeros(0, np.float32)


def synthetic_clip(split: str, index: int, seed: int = SEED) -> np.ndarray:
    """Clip ``index`` of a split: a corpus-style persona (``split``'s voices and sentences) speaking
    1-2 sentences (2-7 s) through a random microphone and room; a pure function of its arguments."""
    from ksdiff_runtime.training.augment import mic_augment
    from ksdiff_runtime.training.corpus import Persona, _speak_clip, split_voices_and_sentences

    train_v, test_v, train_s, test_s = split_voices_and_sentences(seed)
    voices, sentences = (train_v, train_s) if split == "train" else (test_v, test_s)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 91, 0 if split == "train" else 1, index]))
    persona = Persona(id=f"s{index}", split=split, voice=str(voices[int(rng.integers(len(voices)))]),
                      rate=int(rng.integers(130, 211)), pitch=int(rng.integers(25, 76)),
                      pitch_range=int(rng.integers(20, 91)), style=(0.0,) * 6)
    utt, _, _, _ = _speak_clip(rng, persona, tuple(sentences))
    return mic_augment(utt.audio, rng)


def real_segment(paths: list[Path], rng: np.random.Generator) -> np.ndarray:
    """A random prompt, cropped to MAX_SEGMENT_S, at a random level (the recogniser depends on level)."""
    while True:
        audio = load_prompt(paths[int(rng.integers(len(paths)))])
        if audio.size:
            break
    n = int(MAX_SEGMENT_S * SAMPLE_RATE)
    if audio.size > n:
        start = int(rng.integers(audio.size - n))
        audio = audio[start : start + n]
    peak = float(np.abs(audio).max()) or 1.0
    return (audio / peak * 10 ** (rng.uniform(-20, -0.5) / 20)).astype(np.float32)


def pad_batch(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(c.size for c in clips)
    wav = torch.zeros(len(clips), n)
    for i, c in enumerate(clips):
        wav[i, : c.size] = torch.from_numpy(c)
    return wav, torch.tensor([c.size for c in clips])


# --- loss -----------------------------------------------------------------------------------------
def distil_loss(student_lp: torch.Tensor, teacher_lp: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames of KL(teacher || student), speech frames (teacher argmax not blank) weighted."""
    valid = torch.arange(teacher_lp.shape[1])[None, :] < lengths[:, None]
    kl = (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1)
    weight = (1.0 + (SPEECH_WEIGHT - 1.0) * (teacher_lp.argmax(-1) != HAMA_BLANK).float()) * valid.float()
    return (kl * weight).sum() / weight.sum()


# --- training -------------------------------------------------------------------------------------
def train(out: Path, minutes: float, batch_synthetic: int, batch_real: int, lr: float, left_frames: int,
          checkpoint_s: float) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    teacher = Recogniser.from_hama().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = StreamingRecogniser(lookahead=MAX_LOOKAHEAD, left_frames=left_frames)
    student.load_state_dict(teacher.state_dict())
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    step, synthetic_next, trained_s = 0, 0, 0.0
    ckpt_path = out / "last.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu")
        if ckpt["left_frames"] != left_frames:
            raise SystemExit(f"{ckpt_path} was trained with left_frames {ckpt['left_frames']}, not {left_frames}")
        student.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, synthetic_next, trained_s = ckpt["step"], ckpt["synthetic_next"], ckpt["trained_s"]
        log.info("resumed %s at step %d", ckpt_path, step)
    student.train()
    real = real_prompts("train")
    languages = sorted({prompt_language(p) for p in real})
    log.info("%d real training prompts (%s); batch %d synthetic + %d real", len(real), ", ".join(languages),
             batch_synthetic, batch_real)

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": student.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "synthetic_next": synthetic_next, "trained_s": trained_s, "left_frames": left_frames,
                    "lr": lr, "real_languages": languages}, tmp)
        os.replace(tmp, ckpt_path)

    start = time.monotonic()
    last_save = start
    with open(out / "log.jsonl", "a") as log_file:
        while time.monotonic() - start < 60.0 * minutes:
            rng = np.random.default_rng(np.random.SeedSequence([SEED, 92, step]))
            lookahead = step % (MAX_LOOKAHEAD + 1)
            clips = []
            while len(clips) < batch_synthetic:
                try:
                    clips.append(synthetic_clip("train", synthetic_next))
                except Exception:  # a voice espeak-ng cannot speak must not end a long run
                    log.exception("synthetic clip %d failed; skipped", synthetic_next)
                synthetic_next += 1
            clips += [real_segment(real, rng) for _ in range(batch_real if real else 0)]
            wav, lengths = pad_batch(clips)
            with torch.no_grad():
                teacher_lp, out_lengths = teacher(wav, lengths)
            student_lp, _ = student.forward_chunked(wav, lengths, lookahead=lookahead)
            loss = distil_loss(student_lp, teacher_lp, out_lengths)
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(step, (time.monotonic() - start) / (60.0 * minutes))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            step += 1
            trained_s += float(lengths.sum()) / SAMPLE_RATE
            log_file.write(json.dumps({"step": step, "loss": round(loss.item(), 5), "lookahead": lookahead,
                                       "audio_s": round(trained_s, 1),
                                       "elapsed_s": round(time.monotonic() - start, 1)}) + "\n")
            log_file.flush()
            if time.monotonic() - last_save > checkpoint_s:
                save()
                last_save = time.monotonic()
                log.info("step %d loss %.4f (%.0f s of audio so far)", step, loss.item(), trained_s)
    save()
    log.info("stopped at step %d; %s", step, ckpt_path)


def lr_factor(step: int, progress: float) -> float:
    """Linear warm-up over the first WARMUP_STEPS steps of the run, constant, then a linear decay to
    0.1 over the last DECAY_FRACTION of this invocation's time (a resumed run decays again at its end)."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    decay = 1.0 - 0.9 * min(1.0, max(0.0, (progress - (1.0 - DECAY_FRACTION)) / DECAY_FRACTION))
    return warm * decay


def load_distilled(path: Path) -> StreamingRecogniser:
    """A distilled student from a run folder's checkpoint (in eval mode)."""
    ckpt = torch.load(path, map_location="cpu")
    model = StreamingRecogniser(lookahead=MAX_LOOKAHEAD, left_frames=ckpt["left_frames"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def export_weights(checkpoint: Path, out: Path) -> None:
    """The student's trained tensors as float16 (as hama stores its own), for ``OnnxStreamingRecogniser``:
    its parameters only; the STFT kernels and mel filterbank are hama's, read from the installed hama."""
    model = load_distilled(checkpoint)
    arrays = {name: p.detach().numpy().astype(np.float16) for name, p in model.named_parameters()}
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    log.info("%d tensors (%.1f MB) -> %s", len(arrays), out.stat().st_size / 1e6, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/streaming_asr"))
    p.add_argument("--minutes", type=float, default=40.0, help="stop (and checkpoint) after this long")
    p.add_argument("--batch-synthetic", type=int, default=5)
    p.add_argument("--batch-real", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--left-frames", type=int, default=DEFAULT_LEFT_FRAMES)
    p.add_argument("--checkpoint-s", type=float, default=180.0)
    p.add_argument("--export-weights", type=Path, default=None, metavar="NPZ",
                   help="instead of training, write the run's student weights (--out's last.pt) to NPZ for the runtime")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.export_weights:
        export_weights(args.out / "last.pt", args.export_weights)
        return
    train(args.out, args.minutes, args.batch_synthetic, args.batch_real, args.lr, args.left_frames,
          args.checkpoint_s)


if __name__ == "__main__":
    main()
