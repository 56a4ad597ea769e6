"""The synthetic training corpus: espeak-ng personas speaking, the teacher animating, a mic hearing.

A persona is (voice+variant, espeak rate, pitch, pitch range, style vector); it speaks several
clips of 1-2 sentences (2-7 s) so a reference clip carries its persona's style. The test split
uses held-out voice variants (whole variants never heard in train, in every English accent) and
held-out sentences. Every clip is a pure function of (seed, clip index): worker count and
scheduling change nothing.

Layout (read by training and evaluation):
    out/manifest.json   {"version": 1, "seed", "fps", "sample_rate", "style_names", "clips": [...]}
    out/clips/<id>.npz  audio [S] f32 (mic-augmented, 16 kHz), blendshapes [T,52] f32,
                        head [T,3] f32, silent [T] bool, phonemes [P] str, phoneme_start [P] f32,
                        phoneme_dur [P] f32, viseme [P] str, style [6] f32; T == num_frames(S)
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import multiprocessing as mp
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from ksdiff_runtime.motion import FPS, SAMPLE_RATE, num_frames

log = logging.getLogger(__name__)

CORPUS_VERSION = 1
TEST_VARIANT_FRACTION = 0.15
TEST_SENTENCE_FRACTION = 0.15
MIN_CLIP_S = 2.0
MAX_CLIP_S = 7.0


@dataclass(frozen=True)
class Persona:
    id: str
    split: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    style: tuple[float, ...]


@dataclass(frozen=True)
class ClipTask:
    index: int
    seed: int
    persona: Persona
    sentences: tuple[str, ...]  # the split's sentence pool to draw from
    out_dir: str


def split_voices_and_sentences(seed: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """(train voices, test voices, train sentences, test sentences), disjoint, fixed by seed."""
    from ksdiff_runtime.training.speech import english_languages, variants
    from ksdiff_runtime.training.text import sentence_pool

    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    var = variants()
    test_var = set(
        rng.choice(var, size=max(1, round(TEST_VARIANT_FRACTION * len(var))), replace=False).tolist()
    )
    langs = english_languages()
    train_v = [f"{lang}+{v}" for lang in langs for v in var if v not in test_var]
    test_v = [f"{lang}+{v}" for lang in langs for v in var if v in test_var]
    pool = sentence_pool()
    test_idx = set(
        rng.choice(len(pool), size=round(TEST_SENTENCE_FRACTION * len(pool)), replace=False).tolist()
    )
    train_s = [s for i, s in enumerate(pool) if i not in test_idx]
    test_s = [s for i, s in enumerate(pool) if i in test_idx]
    return train_v, test_v, train_s, test_s


def make_personas(seed: int, n_train: int, n_test: int) -> list[Persona]:
    train_v, test_v, _, _ = split_voices_and_sentences(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    personas: list[Persona] = []
    for k in range(n_train + n_test):
        split = "train" if k < n_train else "test"
        voices = train_v if split == "train" else test_v
        personas.append(
            Persona(
                id=f"p{k:04d}",
                split=split,
                voice=str(voices[int(rng.integers(len(voices)))]),
                rate=int(rng.integers(130, 211)),
                pitch=int(rng.integers(25, 76)),
                pitch_range=int(rng.integers(20, 91)),
                style=tuple(float(round(v, 4)) for v in rng.uniform(0.0, 1.0, 6)),
            )
        )
    return personas


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with a fixed timestamp, so the same arrays always give the same bytes."""
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)


def _speak_clip(task_rng: np.random.Generator, persona: Persona, sentences: tuple[str, ...]):
    """1-2 sentences, with per-clip rate (+-8 %) and pitch jitter, laid out with pauses to 2-7 s."""
    from ksdiff_runtime.training.augment import assemble
    from ksdiff_runtime.training.speech import synthesize

    rate = int(np.clip(round(persona.rate * task_rng.uniform(0.92, 1.08)), 80, 450))
    pitch = int(np.clip(persona.pitch + task_rng.integers(-6, 7), 0, 100))
    n_sent = 1 if task_rng.random() < 0.45 else 2
    picks = task_rng.choice(len(sentences), size=n_sent, replace=False)
    texts = [sentences[int(i)] for i in picks]
    parts = [synthesize(t, persona.voice, rate, pitch, persona.pitch_range) for t in texts]
    speech_s = [len(p.audio) / SAMPLE_RATE for p in parts]
    if len(parts) == 2 and sum(speech_s) > MAX_CLIP_S - 0.4:
        parts, texts, speech_s = parts[:1], texts[:1], speech_s[:1]
    budget = MAX_CLIP_S - sum(speech_s)
    # Leave room for the gaps (one more than sentences), and pad short clips up to MIN_CLIP_S.
    max_gap = float(np.clip(budget / (len(parts) + 1), 0.1, 1.5))
    min_gap = float(np.clip((MIN_CLIP_S - sum(speech_s)) / (len(parts) + 1), 0.1, max_gap))
    utt = assemble(parts, task_rng, min_gap_s=min_gap, max_gap_s=max_gap)
    return utt, " ".join(texts), rate, pitch


def _babble_pool(task_rng: np.random.Generator, sentences: tuple[str, ...], voice: str) -> list[np.ndarray]:
    from ksdiff_runtime.training.speech import synthesize

    picks = task_rng.choice(len(sentences), size=3, replace=False)
    return [
        synthesize(
            sentences[int(i)], voice, int(task_rng.integers(140, 200)), int(task_rng.integers(20, 80))
        ).audio
        for i in picks
    ]


def make_clip(task: ClipTask) -> dict:
    """Synthesise, animate and augment one clip; write its npz; return its manifest entry."""
    from ksdiff_runtime.features.prosody import prosody
    from ksdiff_runtime.training.augment import mic_augment
    from ksdiff_runtime.training.teacher import silent_frames, teach, viseme_of

    rng = np.random.default_rng(task.seed)
    persona = task.persona
    utt, text, rate, pitch = _speak_clip(rng, persona, task.sentences)
    T = num_frames(len(utt.audio))
    style = np.asarray(persona.style, dtype=np.float32)
    # The teacher animates the clean timeline; only the audio the model hears is augmented.
    clean_prosody = prosody(utt.audio)
    blend, head = teach(utt.phonemes, utt.start, utt.duration, len(utt.audio), clean_prosody, style, rng)
    babble = _babble_pool(rng, task.sentences, persona.voice) if rng.random() < 0.25 else []
    audio = mic_augment(utt.audio, rng, babble)
    clip_id = f"c{task.index:05d}"
    rel = f"clips/{clip_id}.npz"
    _save_npz(
        os.path.join(task.out_dir, rel),
        {
            "audio": audio,
            "blendshapes": blend,
            "head": head,
            "silent": silent_frames(utt.phonemes, utt.start, utt.duration, T),
            "phonemes": np.array(utt.phonemes, dtype=np.str_),
            "phoneme_start": utt.start.astype(np.float32),
            "phoneme_dur": utt.duration.astype(np.float32),
            "viseme": np.array([viseme_of(p) for p in utt.phonemes], dtype=np.str_),
            "style": style,
        },
    )
    return {
        "id": clip_id,
        "split": persona.split,
        "persona": persona.id,
        "voice": persona.voice,
        "rate": rate,
        "pitch": pitch,
        "text": text,
        "duration_s": round(len(audio) / SAMPLE_RATE, 4),
        "style": [float(v) for v in style],
        "file": rel,
    }


def plan(
    seed: int, n_train: int, n_test: int, clips_train: int, clips_test: int, out_dir: str
) -> list[ClipTask]:
    """Every clip's task in a fixed order; clip seeds come from (seed, clip index) only."""
    _, _, train_s, test_s = split_voices_and_sentences(seed)
    tasks: list[ClipTask] = []
    for persona in make_personas(seed, n_train, n_test):
        pool = tuple(train_s if persona.split == "train" else test_s)
        for _ in range(clips_train if persona.split == "train" else clips_test):
            k = len(tasks)
            clip_seed = int(np.random.SeedSequence([seed, 3, k]).generate_state(1)[0])
            tasks.append(ClipTask(k, clip_seed, persona, pool, out_dir))
    return tasks


def generate(
    out_dir: str,
    seed: int = 0,
    n_train: int = 240,
    n_test: int = 40,
    clips_train: int = 8,
    clips_test: int = 6,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Write the corpus to out_dir and return its manifest."""
    from tqdm import tqdm

    # refused before anything is written (and before an older corpus's manifest goes): a corpus without training
    # clips is one `train` cannot use
    for name, value, least in (("train personas", n_train, 1), ("test personas", n_test, 0),
                               ("clips per persona", clips_train, 1), ("test clips per persona", clips_test, 1),
                               ("workers", workers, 1)):
        if value < least:
            from .dataset import CorpusError  # (not at the top: the corpus's spawned workers skip the front-end)

            raise CorpusError(f"corpus: {name} must be at least {least}, not {value}")

    os.makedirs(os.path.join(out_dir, "clips"), exist_ok=True)
    tasks = plan(seed, n_train, n_test, clips_train, clips_test, out_dir)
    # a run over an older corpus rewrites its clips: the old manifest goes before the first of them (not before
    # the plan, which may still fail), so a run stopped halfway leaves no manifest (a clear error in `train`), not
    # one describing clips that are now partly another corpus's
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out_dir, "manifest.json"))
    if workers <= 1:
        entries = [make_clip(t) for t in tqdm(tasks, disable=not progress, desc="corpus")]
    else:
        # spawn: each worker loads its own espeak-ng (a process-global C library), never a forked copy.
        with mp.get_context("spawn").Pool(workers) as pool:
            it = pool.imap(make_clip, tasks, chunksize=4)
            entries = list(tqdm(it, total=len(tasks), disable=not progress, desc="corpus"))
    from ksdiff_runtime.training.teacher import STYLE_NAMES

    manifest = {
        "version": CORPUS_VERSION,
        "seed": seed,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "style_names": list(STYLE_NAMES),
        "clips": entries,
    }
    # written whole or not at all (and last): a run stopped before the end leaves no manifest, which `train` names,
    # never a cut-short one (a JSON error), nor the previous corpus's manifest over this run's clips
    path = os.path.join(out_dir, "manifest.json")
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(path + ".tmp", path)
    return manifest


def write_sample(path: str, seed: int = 0) -> str:
    """A ~7 s held-out-voice sample with mild mic augmentation as 16 kHz int16 wav, plus a .txt transcript."""
    import soundfile as sf

    from ksdiff_runtime.training.augment import assemble, mic_augment
    from ksdiff_runtime.training.speech import synthesize

    _, test_v, _, test_s = split_voices_and_sentences(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    voice = next((v for v in test_v if v.startswith("en-us+")), test_v[0])
    for _ in range(100):
        texts = [test_s[int(i)] for i in rng.choice(len(test_s), size=2, replace=False)]
        parts = [synthesize(t, voice, 160, 50, 60) for t in texts]
        utt = assemble(parts, rng, min_gap_s=0.2, max_gap_s=0.5)
        if 6.0 <= len(utt.audio) / SAMPLE_RATE <= 8.0:
            break
    audio = mic_augment(utt.audio, rng, strength=0.3)
    audio = audio / max(float(np.max(np.abs(audio))), 1e-6) * 0.7
    sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
    text = " ".join(texts)
    with open(os.path.splitext(path)[0] + ".txt", "w") as f:
        f.write(f"{text}\n")
    return text
