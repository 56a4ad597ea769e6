"""Real-world training clips, added to a generated corpus (issue 11, item 1): ``corpus --real-world``.

The synthetic corpus is clean espeak-ng speech; the model learned to mouth along to anything loud
enough and has never heard a real voice. Three kinds of clip are appended to the corpus's manifest as
more *training* clips (``"kind"`` says which), in the corpus's own format, so the feature cache, the
sampler and the trainer take them as they are:

- ``nonspeech``: a sound that is not a voice, with the teacher's targets for silence (the mouth at
  rest; blinks, gaze and head as in any pause). Sounds: ``nonspeech.procedural`` (noises, fan, wind,
  rain, keyboard, breaths, game effects, chords; fresh seeds) at -50 to -15 dBFS RMS, and recorded
  music from ``MUSIC_FROM_S`` into each track (the evaluation, ``real_eval``, uses the first 60 s).
- ``mixed``: a synthetic training clip under such a sound at 0-20 dB SNR and at a level from -45 to
  -6 dBFS, with the clip's own targets: the face follows the voice, not the music.
- ``real``: a recorded English prompt of the training split (``streaming_distil.real_prompts("train")``:
  four fifths of Debian's asterisk-core-sounds-en-wav, Allison Smith, CC-BY-SA-3.0; never a prompt
  ``real_eval`` scores), padded with room noise, at a level from -40 to -10 dBFS, sometimes under a
  non-speech sound; its phones aligned by PocketSphinx (``real_eval.Aligner``) and mapped to the
  teacher's espeak-ng phonemes (``ARPABET``), whose targets the teacher then makes as for any clip.
  Its persona is the speaker, in the neutral style.

Non-speech and mixed clips take a random training persona's id and style, so the style encoder's
references stay within a persona.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ksdiff_runtime.features.prosody import prosody
from ksdiff_runtime.motion import SAMPLE_RATE, num_frames

from . import nonspeech
from .corpus import _save_npz
from .teacher import NEUTRAL_STYLE, silent_frames, teach, viseme_of

MUSIC_FROM_S = 60.0
REAL_PERSONA = "asterisk-en-allison"
# CMU phones (PocketSphinx, no stress) -> the teacher's espeak-ng mnemonics. AH is mostly schwa.
ARPABET: dict[str, str] = {
    "aa": "A:", "ae": "a", "ah": "@", "ao": "O:", "aw": "aU", "ay": "aI", "eh": "E", "er": "3:", "ey": "eI",
    "ih": "I", "iy": "i:", "ow": "oU", "oy": "OI", "uh": "U", "uw": "u:",
    "b": "b", "ch": "tS", "d": "d", "dh": "D", "f": "f", "g": "g", "hh": "h", "jh": "dZ", "k": "k", "l": "l",
    "m": "m", "n": "n", "ng": "N", "p": "p", "r": "r", "s": "s", "sh": "S", "t": "t", "th": "T", "v": "v",
    "w": "w", "y": "j", "z": "z", "zh": "Z", "sil": "_",
}  # fmt: skip


def espeak_phoneme(cmu: str) -> str:
    """The teacher's mnemonic for a CMU phone; anything else (noise phones) is a pause."""
    return ARPABET.get(cmu.lower(), "_")


def _sound(rng: np.random.Generator, n: int, music: dict[str, np.ndarray]) -> np.ndarray:
    """A random non-speech sound of ``n`` samples at its own level (-20 dBFS for procedural ones)."""
    if music and rng.random() < 0.3:
        track = list(music.values())[int(rng.integers(len(music)))]
        start = int(rng.integers(0, max(1, track.size - n)))
        return np.resize(track[start : start + n], n).astype(np.float32)
    kind = nonspeech.PROCEDURAL[int(rng.integers(len(nonspeech.PROCEDURAL)))]
    return np.resize(nonspeech.procedural(kind, n / SAMPLE_RATE + 0.01, rng), n)


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(max(float(np.mean(np.square(x, dtype=np.float64))), 1e-12))


def _music_for_training() -> dict[str, np.ndarray]:
    """Each installed music-on-hold track from MUSIC_FROM_S on (what the evaluation never plays)."""
    return {k: v[int(MUSIC_FROM_S * SAMPLE_RATE) :] for k, v in nonspeech.recorded_music(1e9).items()
            if v.size > int((MUSIC_FROM_S + 10) * SAMPLE_RATE)}


def _entry(clip_id: str, kind: str, persona: str, text: str, audio: np.ndarray, style: np.ndarray) -> dict:
    return {"id": clip_id, "split": "train", "kind": kind, "persona": persona, "voice": kind, "rate": 0, "pitch": 0,
            "text": text, "duration_s": round(audio.size / SAMPLE_RATE, 4), "style": [float(v) for v in style],
            "file": f"clips/{clip_id}.npz"}


def _write(corpus: Path, entry: dict, audio: np.ndarray, blend: np.ndarray, head: np.ndarray,
           phonemes: list[str], start: np.ndarray, dur: np.ndarray, style: np.ndarray) -> dict:
    T = num_frames(audio.size)
    _save_npz(str(corpus / entry["file"]), {
        "audio": np.clip(audio, -1.0, 1.0).astype(np.float32), "blendshapes": blend, "head": head,
        "silent": silent_frames(phonemes, start, dur, T), "phonemes": np.array(phonemes, dtype=np.str_),
        "phoneme_start": np.asarray(start, np.float32), "phoneme_dur": np.asarray(dur, np.float32),
        "viseme": np.array([viseme_of(p) for p in phonemes], dtype=np.str_), "style": style,
    })
    return entry


def add_real_world(corpus: Path, n_nonspeech: int = 300, n_mixed: int = 400, max_real: int = 0,
                   seed: int = 0) -> dict:
    """Append the three kinds of clip to ``corpus`` (its manifest rewritten); clips already added are
    replaced. Returns the manifest."""
    from .real_eval import PAD_S, Aligner, prompt_name, transcripts, words_of
    from .streaming_distil import load_prompt, prompt_language, real_prompts

    corpus = Path(corpus)
    manifest = json.loads((corpus / "manifest.json").read_text())
    base = [c for c in manifest["clips"] if "kind" not in c]
    train = [c for c in base if c["split"] == "train"]
    if not train:
        raise ValueError(f"{corpus} has no synthetic training clips to add to")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    music = _music_for_training()
    added: list[dict] = []

    for i in tqdm(range(n_nonspeech), desc="real world: non-speech", unit="clip"):
        src = train[int(rng.integers(len(train)))]
        style = np.asarray(src["style"], np.float32)
        sound = _sound(rng, int(rng.uniform(2.0, 7.0) * SAMPLE_RATE), music)
        audio = nonspeech.at_dbfs(sound, float(rng.uniform(-50.0, -15.0)))
        blend, head = teach([], np.zeros(0), np.zeros(0), audio.size, prosody(np.zeros_like(audio)), style, rng)
        entry = _entry(f"n{i:05d}", "nonspeech", src["persona"], "", audio, style)
        added.append(_write(corpus, entry, audio, blend, head, [], np.zeros(0), np.zeros(0), style))

    for i in tqdm(range(n_mixed), desc="real world: speech under sound", unit="clip"):
        src = train[int(rng.integers(len(train)))]
        data = dict(np.load(corpus / src["file"]))
        speech = data["audio"].astype(np.float32)
        sound = _sound(rng, speech.size, music)
        noise = nonspeech.at_dbfs(sound, _rms_db(speech) - float(rng.uniform(0.0, 20.0)))
        audio = nonspeech.at_dbfs(speech + noise, float(rng.uniform(-45.0, -6.0)))
        entry = _entry(f"x{i:05d}", "mixed", src["persona"], src["text"], audio, np.asarray(src["style"], np.float32))
        data["audio"] = np.clip(audio, -1.0, 1.0).astype(np.float32)
        _save_npz(str(corpus / entry["file"]), data)
        added.append(entry)

    paths = [p for p in real_prompts("train") if prompt_language(p) == "en"]
    if max_real:
        paths = paths[:max_real]
    texts = transcripts() if paths else {}
    aligner = Aligner() if paths else None
    style = NEUTRAL_STYLE.astype(np.float32)
    skipped = 0
    for i, path in enumerate(tqdm(paths, desc="real world: recorded prompts", unit="clip")):
        text = texts.get(prompt_name(path))
        words = words_of(text, aligner.known) if text else None
        voice = load_prompt(path)
        if words is None or voice.size == 0:
            skipped += 1
            continue
        pad = [int(rng.uniform(0.3, PAD_S) * SAMPLE_RATE) for _ in range(2)]
        room = nonspeech.at_dbfs(nonspeech.colored_noise(rng, voice.size + sum(pad), "pink"), -65.0)
        room[pad[0] : pad[0] + voice.size] += voice
        phones = aligner.phones(room, words)
        if not phones:
            skipped += 1
            continue
        names = [espeak_phoneme(p.name) for p in phones]
        start = np.array([p.start for p in phones])
        dur = np.array([p.dur for p in phones])
        blend, head = teach(names, start, dur, room.size, prosody(room), style, rng)
        audio = room
        if rng.random() < 0.3:  # sometimes with a sound in the room
            sound = _sound(rng, audio.size, music)
            audio = audio + nonspeech.at_dbfs(sound, _rms_db(voice) - float(rng.uniform(5.0, 25.0)))
        audio = audio * 10 ** ((float(rng.uniform(-40.0, -10.0)) - _rms_db(voice)) / 20)
        entry = _entry(f"r{i:05d}", "real", REAL_PERSONA, text, audio, style)
        added.append(_write(corpus, entry, audio.astype(np.float32), blend, head, names, start, dur, style))

    manifest["clips"] = base + added
    manifest["real_world"] = {"nonspeech": n_nonspeech, "mixed": n_mixed,
                              "real": sum(1 for c in added if c["kind"] == "real"), "real_skipped": skipped,
                              "music_from_s": MUSIC_FROM_S, "seed": seed}
    tmp = corpus / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, corpus / "manifest.json")
    return manifest
