"""The model on real voices and real non-speech: ``ksdiff-runtime eval --real`` (issue 11, item 7).

No recording here has facial ground truth, so real voices are judged where the truth is known from
the words alone: the lips must close on /p b m/ and rest in silence. The times of those come from an
independent phone aligner, not from the model's own recogniser:

- **Speech:** Debian's ``asterisk-core-sounds-en-wav`` prompts (one speaker, Allison Smith, 8 kHz
  telephone recordings, CC-BY-SA-3.0, /usr/share/doc/asterisk-core-sounds-en-wav/copyright), the
  held-out fifth that no training run sees (``streaming_distil.real_prompts("test")``), with their
  transcripts from the non-wav package ``asterisk-core-sounds-en`` (core-sounds-en.txt.gz).
- **Aligner:** PocketSphinx (CMU, BSD-2-Clause; the ``pocketsphinx`` wheel ships its US English
  acoustic model and CMUdict) aligns each transcript to its audio, word by word and then phone by
  phone, at 10 ms. Prompts whose transcript has a word not in CMUdict, or that it cannot align,
  are left out and listed.
- Each prompt is padded with ``PAD_S`` of quiet room noise each side (the prompts are trimmed to
  the voice), so rest in silence has frames to be measured on.

Scored, for the bake (whole clip, 4 DDIM steps) and a live stream (the low-latency preset), each
without and with the voice gate (engine/gate.py; applied to the same frames, exactly as a stream
or a bake with the gate gets it), and with the bilabial closure and the gate, as `serve` and `bake` run by
default (engine/closure.py; a bake's closure applied to its frames from its features, as ``bake`` does; a
live stream's from an engine that runs it):

- **bilabial closure:** the lips close (``metrics.closure_flags``) on an aligned /p/, /b/ or /m/;
  "medial" closures, those not right after a pause (the aligner's silence, or the prompt's start),
  are the fair figure: after a pause the lips are closed anyway. Rates come with a 95 % interval
  from a bootstrap over prompts (bilabials within a prompt are not independent).
- **the loudness follower:** the trivial model a lip-sync tool is measured against. Its mouth opens
  with loudness (RMS over 50 ms) and nothing else: each frame gets the model's own lip aperture of
  the same loudness rank within the prompt, so it closes the lips exactly as often as the model
  does, and only the *timing* of closure separates them.
- **vowels shut:** the lips closed where they should be open: aligned vowels with the lips closed on some
  frame of their middle half, beside a /p b m/ (where the closure's timing, and the aligner's, decide) and
  elsewhere.
- **rest in silence:** frames at least ``metrics.REST_MARGIN_FRAMES`` from any aligned speech with
  the mouth at rest (``motion.mouth_at_rest``).
- **non-speech:** frames with jawOpen > 0.1 on each sound of ``nonspeech`` (procedural noises and
  recorded music) at -30 and -20 dBFS RMS.
- **speech under noise:** jawOpen's correlation between a prompt clean and the same prompt under
  recorded music or pink noise at 10 dB SNR (frames of all prompts pooled).

Writes real_eval.json, real_eval.md and real_eval.png to ``--out``.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ksdiff_runtime import motion
from ksdiff_runtime.backends.base import Backend
from ksdiff_runtime.engine.closure import DEFAULT_CLOSURE, ClosureConfig, closure_for
from ksdiff_runtime.engine.engine import StreamingEngine
from ksdiff_runtime.engine.gate import GateConfig, gate_clip
from ksdiff_runtime.engine.offline import animate, clip_inputs
from ksdiff_runtime.engine.presets import get_preset
from ksdiff_runtime.features.vad import shared_vad

from . import metrics, nonspeech
from .streaming_distil import load_prompt, prompt_language, real_prompts

TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SR = motion.SAMPLE_RATE
FPS = motion.FPS
JAW = motion.index("jawOpen")
PAD_S = 1.0  # quiet room before and after each prompt
ROOM_DBFS = -65.0  # its level: a quiet microphone
BILABIALS = ("p", "b", "m")
VOWELS = ("aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw")  # CMU's
OPEN = 0.1  # jawOpen above this: a visibly open mouth (issue 11's non-speech measure)
LEVELS_DBFS = (-30.0, -20.0)
SNR_DB = 10.0
LOUDNESS_WINDOW_S = 0.05
BOOTSTRAP = 2000
MODES = ("bake", "live")
LIVE_PRESET = "low-latency"
BAKE_STEPS = 4
BATCH = 8
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYMBOLS = {"#": "pound", "*": "star", "&": "and", "%": "percent"}


class RealEvalError(RuntimeError):
    """Something the real-voice evaluation needs is not installed."""


@dataclass(frozen=True)
class Phone:
    name: str  # CMU phone, lower case ("p", "aa", "sil")
    start: float  # seconds, in the padded audio
    dur: float


@dataclass
class Prompt:
    name: str
    text: str
    audio: np.ndarray  # 16 kHz float32, padded with PAD_S of room noise each side
    phones: list[Phone]
    voice: slice  # the recording within ``audio``


# ---------------------------------------------------------------- prompts and their alignment


def transcripts(path: Path | None = None) -> dict[str, str]:
    """Prompt name (path under the language folder, no extension) -> transcript (default: TRANSCRIPTS)."""
    path = TRANSCRIPTS if path is None else path
    if not path.is_file():
        raise RealEvalError(f"{path} not found: the prompts' transcripts ship in Debian's asterisk-core-sounds-en "
                            "(apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-wav)")
    out = {}
    for line in gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace").splitlines():
        name, sep, text = line.partition(":")
        if sep and not line.startswith(";") and text.strip():
            out[name.strip()] = text.strip()
    return out


def check_installed() -> None:
    """RealEvalError naming what the real-voice evaluation needs and this machine lacks (the recorded prompts,
    their transcripts, PocketSphinx): asked before a backend is loaded (an export can take minutes), not after."""
    transcripts()  # (its error names the package)
    if not any(prompt_language(p) == "en" for p in real_prompts("test")):
        raise RealEvalError("no recorded English prompts: apt-get install asterisk-core-sounds-en-wav")
    try:
        import pocketsphinx  # noqa: F401
    except ImportError as e:
        raise RealEvalError("the real-voice evaluation aligns with PocketSphinx: pip install pocketsphinx "
                            "(in the train extra)") from e


def prompt_name(path: Path) -> str:
    """A prompt's name in the transcripts: its path under the language folder, without ".wav"."""
    root = next(q for q in path.parents if q.parent.name == "sounds")
    return path.relative_to(root).with_suffix("").as_posix()


def words_of(text: str, known: Any) -> list[str] | None:
    """The transcript as CMUdict words (digits and keypad symbols spelt out); None when it is not speech
    ("[beep]") or has a word CMUdict lacks. ``known(word)`` says whether CMUdict has it."""
    if text.startswith("["):
        return None
    for sym, word in SYMBOLS.items():
        text = text.replace(sym, f" {word} ")
    text = re.sub(r"(?<=\d)(?=\d)", " ", text)  # "10" -> "1 0": the prompts read numbers digit by digit
    text = re.sub(r"\d", lambda m: f" {DIGITS[int(m.group())]} ", text)
    words = re.findall(r"[a-z']+", text.lower().replace("-", " "))
    words = [w.strip("'") for w in words if w.strip("'")]
    return words if words and all(known(w) for w in words) else None


class Aligner:
    """PocketSphinx forced alignment: words, then phones, at 10 ms."""

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as e:
            raise RealEvalError("the real-voice evaluation aligns with PocketSphinx: pip install pocketsphinx "
                                "(in the train extra)") from e
        self.decoder = Decoder(samprate=SR, lm=None, loglevel="FATAL")

    def known(self, word: str) -> bool:
        return self.decoder.lookup_word(word) is not None

    def phones(self, audio: np.ndarray, words: list[str]) -> list[Phone] | None:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        d = self.decoder
        try:
            d.set_align_text(" ".join(words))
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            if d.hyp() is None:
                return None
            d.set_alignment()
            d.start_utt()
            d.process_raw(pcm, full_utt=True)
            d.end_utt()
            alignment = d.get_alignment()
        except RuntimeError:
            return None
        if alignment is None:
            return None
        frame = 1.0 / d.config["frate"]
        return [Phone(p.name.lower(), p.start * frame, p.duration * frame) for w in alignment for p in w]


def held_out_prompts(max_prompts: int = 0, seed: int = 0) -> tuple[list[Prompt], dict[str, str]]:
    """The held-out English prompts, padded and aligned; and those left out, with why."""
    return aligned_prompts("test", max_prompts, seed)


def aligned_prompts(split: str, max_prompts: int = 0, seed: int = 0) -> tuple[list[Prompt], dict[str, str]]:
    """The English prompts of ``split`` (``streaming_distil.real_prompts``: "test" is the held-out fifth, "train"
    the others), padded and aligned; and those left out, with why."""
    texts = transcripts()  # English: the other languages' prompts are left out
    paths = [p for p in real_prompts(split) if prompt_language(p) == "en"]
    if not paths:
        raise RealEvalError("no recorded English prompts: apt-get install asterisk-core-sounds-en-wav")
    aligner = Aligner()
    rng = np.random.default_rng(seed)
    prompts, skipped = [], {}
    for path in paths:
        name = prompt_name(path)
        text = texts.get(name)
        words = words_of(text, aligner.known) if text else None
        audio = load_prompt(path)
        if words is None or audio.size == 0:
            skipped[name] = "no transcript" if text is None else "too short" if audio.size == 0 else \
                f"not speech, or a word not in CMUdict: {text!r}"
            continue
        pad = int(PAD_S * SR)
        room = nonspeech.at_dbfs(nonspeech.colored_noise(rng, audio.size + 2 * pad, "pink"), ROOM_DBFS)
        room[pad : pad + audio.size] += audio
        phones = aligner.phones(room, words)
        if not phones:
            skipped[name] = "the aligner could not align it"
            continue
        prompts.append(Prompt(name, text, room, phones, slice(pad, pad + audio.size)))
        if max_prompts and len(prompts) >= max_prompts:
            break
    return prompts, skipped


# ---------------------------------------------------------------- the model's frames


def bake_frames(backend: Backend, audios: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """[T, 52] blendshapes of each clip as ``bake`` makes them (whole clip, BAKE_STEPS steps), BATCH at a time."""
    out = []
    for i in range(0, len(audios), BATCH):
        inputs = [clip_inputs(backend, a) for a in audios[i : i + BATCH]]
        out += [a.blendshapes for a in animate(backend, inputs, steps=BAKE_STEPS, seeds=[seed] * len(inputs))]
    return out


def live_frames(engine: StreamingEngine, audios: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """[T, 52] blendshapes of each clip streamed live through ``engine`` (33 ms pushes)."""
    return [np.stack([f.blendshapes for f in engine.stream_clip(a, seed=seed)]).astype(np.float32) for a in audios]


def model_frames(mode: str, backend: Backend, engine: StreamingEngine | None, audios: list[np.ndarray], seed: int,
                 desc: str) -> list[np.ndarray]:
    """[T, 52] blendshapes of each clip as ``mode`` makes them: "bake" (bake_frames) or "live" (live_frames
    through ``engine``, a ``LIVE_PRESET`` engine on ``backend``; None for bakes), with a progress bar."""
    from tqdm import tqdm

    step = BATCH if mode == "bake" else 1
    frames: list[np.ndarray] = []
    for i in tqdm(range(0, len(audios), step), desc=desc, unit="clip" if step == 1 else "batch"):
        part = audios[i : i + step]
        if mode == "bake":
            frames += bake_frames(backend, part, seed)
        else:
            assert engine is not None, "live frames need an engine"
            frames += live_frames(engine, part, seed)
    return frames


def closed_bakes(backend: Backend, frames: list[np.ndarray], audios: list[np.ndarray],
                 closure: ClosureConfig) -> list[np.ndarray]:
    """Baked frames [T, 52] with the bilabial closure, from each clip's features, as ``bake`` applies it."""
    return [closure.apply(f, clip_inputs(backend, a).feats, 0) for f, a in zip(frames, audios, strict=True)]


def gated(frames: list[np.ndarray], audios: list[np.ndarray], config: GateConfig) -> list[np.ndarray]:
    return [gate_clip(f, a, config, shared_vad()) for f, a in zip(frames, audios, strict=True)]


# ---------------------------------------------------------------- scores


def bilabial_phones(phones: list[Phone]) -> list[tuple[int, bool]]:
    """(index, medial) of each aligned /p b m/: medial when the phone before it is not a pause."""
    return [(i, i > 0 and phones[i - 1].name != "sil") for i, p in enumerate(phones) if p.name in BILABIALS]


def bilabials(blendshapes: np.ndarray, phones: list[Phone], fps: int = FPS) -> list[tuple[str, bool, bool]]:
    """(phone, medial, closed) for each aligned /p b m/ (bilabial_phones), on frames at ``fps``."""
    found = bilabial_phones(phones)
    closed, counted = metrics.closure_flags(blendshapes, np.array([phones[i].start for i, _ in found]),
                                            np.array([phones[i].dur for i, _ in found]), fps)
    return [(phones[i].name, medial, bool(c)) for (i, medial), c, k in zip(found, closed, counted, strict=True) if k]


def silent_frames(phones: list[Phone], n: int) -> np.ndarray:
    """[n] bool: frames whose centre falls in no aligned speech phone."""
    t = (np.arange(n) + 0.5) / FPS
    speech = np.zeros(n, bool)
    for p in phones:
        if p.name != "sil":
            speech |= (t >= p.start) & (t < p.start + p.dur)
    return ~speech


def loudness_follower(blendshapes: np.ndarray, audio: np.ndarray) -> np.ndarray:
    """[T, 52]: a mouth that opens with loudness alone, by as much as the model's mouth opens overall
    (frame k gets the model's k-th smallest lip aperture, k the frame's loudness rank), as jawOpen."""
    T = len(blendshapes)
    half = int(LOUDNESS_WINDOW_S * SR / 2)
    centres = ((np.arange(T) + 0.5) * SR / FPS).astype(int)
    power = np.array([np.mean(np.square(audio[max(0, c - half) : c + half], dtype=np.float64)) if c < audio.size
                      else 0.0 for c in centres])
    aperture = np.sort(motion.lip_aperture(blendshapes))
    out = np.zeros_like(blendshapes)
    out[np.argsort(power, kind="stable"), JAW] = aperture
    return out


def rate_with_interval(per_prompt: list[tuple[int, int]], rng: np.random.Generator) -> dict[str, Any]:
    """Pooled rate of (hits, total) pairs with a 95 % bootstrap interval over the pairs (prompts)."""
    counts = np.array([c for c in per_prompt if c[1] > 0], dtype=np.float64).reshape(-1, 2)
    if counts.size == 0:
        return {"rate": None, "ci95": None, "n": 0}
    draws = rng.integers(0, len(counts), (BOOTSTRAP, len(counts)))
    sums = counts[draws].sum(axis=1)
    rates = sums[:, 0] / np.maximum(sums[:, 1], 1)
    lo, hi = np.percentile(rates, [2.5, 97.5])
    return {"rate": round(float(counts[:, 0].sum() / counts[:, 1].sum()), 4),
            "ci95": [round(float(lo), 4), round(float(hi), 4)], "n": int(counts[:, 1].sum())}


def vowels_shut(frames: list[np.ndarray], prompts: list[Prompt], fps: int = FPS) -> dict[str, Any]:
    """The lips closed where they should be open: aligned vowels with the lips closed on some frame (at ``fps``) of
    their middle half, those next to a /p b m/ (where a closure's timing decides) and the others, each as closed /
    counted."""
    shut = {"beside a bilabial": [0, 0], "elsewhere": [0, 0]}
    for f, p in zip(frames, prompts, strict=True):
        gap = motion.lip_aperture(f)
        for i, ph in enumerate(p.phones):
            if ph.name not in VOWELS:
                continue
            a = int((ph.start + 0.25 * ph.dur) * fps)
            b = min(int(np.ceil((ph.start + 0.75 * ph.dur) * fps)), len(gap))
            if b <= a:
                continue
            beside = any(0 <= j < len(p.phones) and p.phones[j].name in BILABIALS for j in (i - 1, i + 1))
            counts = shut["beside a bilabial" if beside else "elsewhere"]
            counts[0] += int(gap[a:b].min() < motion.LIP_CLOSED_THRESHOLD)
            counts[1] += 1
    return {k: {"rate": round(c / n, 4) if n else None, "shut": c, "n": n} for k, (c, n) in shut.items()}


def score_speech(frames: list[np.ndarray], prompts: list[Prompt], seed: int = 0) -> dict[str, Any]:
    """Closure (all, medial, each of /p b m/ medial) with intervals, rest in silence, and vowels shut."""
    flags = [bilabials(f, p.phones) for f, p in zip(frames, prompts, strict=True)]

    def rate(keep) -> dict[str, Any]:
        pairs = [(sum(c for ph, med, c in fl if keep(ph, med)), sum(1 for ph, med, _ in fl if keep(ph, med)))
                 for fl in flags]
        return rate_with_interval(pairs, np.random.default_rng(seed))

    out = {"closure": rate(lambda ph, med: True), "closure_medial": rate(lambda ph, med: med)}
    for b in BILABIALS:
        out[f"closure_medial_{b}"] = rate(lambda ph, med, b=b: med and ph == b)
    rest = [metrics.rest_frames(silent_frames(p.phones, len(f))) for f, p in zip(frames, prompts, strict=True)]
    at_rest = sum(int(motion.mouth_at_rest(f)[r].sum()) for f, r in zip(frames, rest, strict=True))
    total = sum(int(r.sum()) for r in rest)
    out["rest_in_silence"] = round(at_rest / total, 4) if total else None
    out["rest_frames"] = total
    out["vowels_shut"] = vowels_shut(frames, prompts)
    return out


def open_share(blendshapes: np.ndarray) -> float:
    return round(float(np.mean(blendshapes[:, JAW] > OPEN)), 4)


def nonspeech_inputs(seconds: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Every procedural non-speech sound and recorded music track, at each of LEVELS_DBFS."""
    rng = np.random.default_rng(seed)
    sounds = {k: nonspeech.procedural(k, seconds, rng) for k in nonspeech.PROCEDURAL}
    sounds |= {f"music: {k}": v for k, v in nonspeech.recorded_music(seconds).items()}
    return {f"{k} @ {level:g} dBFS": nonspeech.at_dbfs(v, level) for k, v in sounds.items() for level in LEVELS_DBFS}


def mix(prompt: Prompt, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """The prompt's audio with ``noise`` (looped or cut to its length) throughout, ``snr_db`` below the RMS of
    the recording (the padding's room noise does not lower the speech level the SNR is taken from)."""
    noise = np.resize(noise, prompt.audio.size)
    level = 10 * np.log10(np.mean(np.square(prompt.audio[prompt.voice], dtype=np.float64)))
    return (prompt.audio + nonspeech.at_dbfs(noise, level - snr_db)).astype(np.float32)


def jaw_correlation(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    n = [min(len(x), len(y)) for x, y in zip(a, b, strict=True)]
    x = np.concatenate([f[:k, JAW] for f, k in zip(a, n, strict=True)])
    y = np.concatenate([f[:k, JAW] for f, k in zip(b, n, strict=True)])
    return round(metrics.correlation(x, y), 4)


# ---------------------------------------------------------------- the run


def evaluate_real(backend: Backend, out: Path, max_prompts: int = 0, modes: tuple[str, ...] = MODES,
                  nonspeech_seconds: float = 8.0, noisy_prompts: int = 40, seed: int = 0,
                  closure: ClosureConfig | None = DEFAULT_CLOSURE) -> dict[str, Any]:
    """Score ``backend``'s model on real voices and non-speech (module docstring); write the report to ``out``.
    ``closure``: the bilabial closure the runs "+ closure + gate" get (None, or a model without a posteriorgram:
    no such runs)."""
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    closure = closure_for(backend.constants.cfg.front_end.name, closure)
    prompts, skipped = held_out_prompts(max_prompts, seed)
    audios = [p.audio for p in prompts]
    sounds = nonspeech_inputs(nonspeech_seconds, seed)
    music = next(iter(nonspeech.recorded_music(60.0).values()), None)
    noises = {"pink noise": nonspeech.procedural("pink noise", 20.0, np.random.default_rng(seed))}
    if music is not None:
        noises = {"recorded music": music, **noises}
    noisy = prompts[:noisy_prompts] if noisy_prompts else prompts
    result: dict[str, Any] = {
        "backend": backend.name, "precision": getattr(backend, "precision", "float32"),
        "prompts": len(prompts), "voice_seconds": round(sum(p.voice.stop - p.voice.start for p in prompts) / SR, 1),
        "skipped": skipped, "pad_s": PAD_S, "room_dbfs": ROOM_DBFS, "bake_steps": BAKE_STEPS,
        "live_preset": LIVE_PRESET, "open_threshold": OPEN, "snr_db": SNR_DB, "noisy_prompts": len(noisy),
        "speech": {}, "nonspeech": {name: {} for name in sounds}, "noisy_speech": {name: {} for name in noises},
    }
    engine = StreamingEngine(backend, LIVE_PRESET, front_end_threads=1)
    closing = None if closure is None else StreamingEngine(backend, LIVE_PRESET, front_end_threads=1, closure=closure)
    for mode in modes:
        gate = GateConfig() if mode == "bake" else GateConfig().for_preset(get_preset(LIVE_PRESET))

        def run(clips: list[np.ndarray], what: str, mode: str = mode) -> tuple[list[np.ndarray], list[np.ndarray]]:
            """Each clip's frames from the model, and with the closure (empty without one)."""
            frames = model_frames(mode, backend, engine, clips, seed, f"{mode}: {what}")
            if closure is None:
                return frames, []
            if mode == "bake":
                return frames, closed_bakes(backend, frames, clips, closure)
            return frames, model_frames(mode, backend, closing, clips, seed, f"{mode} + closure: {what}")

        clean, clean_closed = run(audios, "real prompts")
        clean_gated = gated(clean, audios, gate)
        closed_gated = gated(clean_closed, audios, gate) if clean_closed else []
        result["speech"][mode] = {
            "model": score_speech(clean, prompts, seed),
            "gated": score_speech(clean_gated, prompts, seed),
            **({"closed + gated": score_speech(closed_gated, prompts, seed)} if closed_gated else {}),
            "loudness follower": score_speech([loudness_follower(f, a) for f, a in zip(clean, audios, strict=True)],
                                              prompts, seed),
        }
        names = list(sounds)
        quiet, quiet_closed = run([sounds[n] for n in names], "non-speech")
        quiet_gated = gated(quiet, [sounds[n] for n in names], gate)
        for name, f, g in zip(names, quiet, quiet_gated, strict=True):
            result["nonspeech"][name] |= {mode: open_share(f), f"{mode} + gate": open_share(g)}
        if quiet_closed:
            for name, c in zip(names, gated(quiet_closed, [sounds[n] for n in names], gate), strict=True):
                result["nonspeech"][name][f"{mode}{RUNS['closed + gated']}"] = open_share(c)
        for name, noise in noises.items():
            mixed = [mix(p, noise, SNR_DB) for p in noisy]
            frames, frames_closed = run(mixed, f"prompts + {name}")
            result["noisy_speech"][name] |= {
                mode: jaw_correlation(clean[: len(noisy)], frames),
                f"{mode} + gate": jaw_correlation(clean_gated[: len(noisy)], gated(frames, mixed, gate)),
            }
            if frames_closed:
                result["noisy_speech"][name][f"{mode}{RUNS['closed + gated']}"] = jaw_correlation(
                    closed_gated[: len(noisy)], gated(frames_closed, mixed, gate))
    result["targets"] = targets(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "real_eval.md").write_text(format_report(result))
    plot(result, out / "real_eval.png")
    return result


# the runs scored on speech beside the loudness follower, and what their labels add to the mode's name
RUNS = {"model": "", "gated": " + gate", "closed + gated": " + closure + gate"}
TARGET_SOUNDS = ("white noise", "pink noise", "brown noise", "wind", "music: ")


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets on real voices and non-speech, for each mode: the model alone, with the gate, and with
    the closure and the gate."""
    rows = []
    for mode, runs in result["speech"].items():
        follower = runs["loudness follower"]["closure_medial"]["rate"] or 0.0
        for run in (r for r in RUNS if r in runs):
            s = runs[run]
            label = mode + RUNS[run]
            medial = s["closure_medial"]["rate"] or 0.0
            worst = [v for n, v in result["nonspeech"].items() if n.startswith(TARGET_SOUNDS)]
            worst_open = max(v[label] for v in worst) if worst else None
            noisy = [v[label] for v in result["noisy_speech"].values()]
            each = [s[f"closure_medial_{b}"]["rate"] or 0.0 for b in BILABIALS]
            rows += [
                {"run": label, "target": "medial bilabial closure >= 90 %", "value": medial, "met": medial >= 0.90},
                {"run": label, "target": "medial closure >= 25 points above the loudness follower",
                 "value": round(medial - follower, 4), "met": medial - follower >= 0.25},
                {"run": label, "target": "each of /p/, /b/, /m/ >= 88 %", "value": min(each), "met": min(each) >= 0.88},
                {"run": label, "target": "rest in silence >= 98 %", "value": s["rest_in_silence"],
                 "met": (s["rest_in_silence"] or 0.0) >= 0.98},
                {"run": label, "target": "non-speech (noises, wind, music; -30/-20 dBFS): jawOpen > 0.1 on <= 3 %",
                 "value": worst_open, "met": worst_open is not None and worst_open <= 0.03},
                {"run": label, "target": f"speech under music or noise at {SNR_DB:g} dB SNR: jawOpen r >= 0.9",
                 "value": min(noisy) if noisy else None, "met": bool(noisy) and min(noisy) >= 0.9},
            ]
    return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _shut(r: dict[str, Any]) -> str:
    return "-" if r["rate"] is None else f"{100 * r['rate']:.1f} % ({r['shut']} of {r['n']})"


def _rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "-"
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.1f} % ({100 * lo:.0f}-{100 * hi:.0f}, n={r['n']})"


def format_report(result: dict[str, Any]) -> str:
    lines = [
        "# The model on real voices and non-speech (`ksdiff-runtime eval --real`)", "",
        f"{result['prompts']} held-out recorded English prompts ({result['voice_seconds']} s of voice, one speaker, "
        f"8 kHz telephone recordings), aligned by PocketSphinx; each padded with {result['pad_s']:g} s of room "
        f"noise at {result['room_dbfs']:g} dBFS. bake: whole clip, {result['bake_steps']} DDIM steps; live: the "
        f"`{result['live_preset']}` preset, 33 ms pushes. Closure rates with a 95 % bootstrap interval over "
        "prompts and the number of bilabials. The loudness follower opens the mouth with loudness alone, by as "
        "much as the model does overall (ranked). Vowels shut: aligned vowels with the lips closed on some frame "
        "of their middle half (lips closed where they should be open), beside a /p b m/ (where a closure's "
        "timing, and the aligner's, decide) and elsewhere. \"+ closure\": the lips sealed where the recogniser "
        "hears /p b m/ (engine/closure.py), on by default in `serve` and `bake`, as the gate is.", "",
        "| run | closure, all | closure, medial | /p/ medial | /b/ medial | /m/ medial | rest in silence "
        "| vowels shut, beside /p b m/ | vowels shut, elsewhere |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, runs in result["speech"].items():
        for run, s in runs.items():
            label = mode + RUNS[run] if run in RUNS else f"{mode}: {run}"
            lines.append(f"| {label} | {_rate(s['closure'])} | {_rate(s['closure_medial'])} | "
                         + " | ".join(_rate(s[f'closure_medial_{b}']) for b in BILABIALS)
                         + f" | {_pct(s['rest_in_silence'])} | "
                         + " | ".join(_shut(s["vowels_shut"][k]) for k in ("beside a bilabial", "elsewhere")) + " |")
    columns = [c for c in next(iter(result["nonspeech"].values()), {})]
    lines += ["", f"Non-speech: frames with jawOpen > {result['open_threshold']}.", "",
              "| sound | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in result["nonspeech"].items():
        lines.append(f"| {name} | " + " | ".join(_pct(row[c]) for c in columns) + " |")
    lines += ["", f"Speech under noise at {result['snr_db']:g} dB SNR ({result['noisy_prompts']} prompts): "
              "jawOpen correlation with the same prompts clean.", "",
              "| noise | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in result["noisy_speech"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    lines += ["", "Targets (issue 11):", "", "| run | target | value | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        v = t["value"]
        shown = "-" if v is None else (f"{v:+.3f}" if "points" in t["target"] else f"{v:.3f}")
        lines.append(f"| {t['run']} | {t['target']} | {shown} | {'yes' if t['met'] else 'no'} |")
    if result["skipped"]:
        lines += ["", f"Left out ({len(result['skipped'])}): "
                  + "; ".join(f"{k}: {v}" for k, v in sorted(result["skipped"].items())) + "."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.3]})
    keys = ["closure_medial", *(f"closure_medial_{b}" for b in BILABIALS)]
    runs = [(f"{m}: {r}", s) for m, rs in result["speech"].items() for r, s in rs.items()]
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(keys))
    for i, (label, s) in enumerate(runs):
        rates = np.array([100 * (s[k]["rate"] or 0.0) for k in keys])
        lo = np.array([100 * s[k]["ci95"][0] if s[k]["ci95"] else 0.0 for k in keys])
        hi = np.array([100 * s[k]["ci95"][1] if s[k]["ci95"] else 0.0 for k in keys])
        ax1.bar(x + (i - (len(runs) - 1) / 2) * width, rates, width, yerr=[rates - lo, hi - rates], capsize=2,
                label=label)
    ax1.axhline(90, color="k", lw=0.8, ls="--")
    ax1.set_xticks(x, ["medial /p b m/", "/p/", "/b/", "/m/"])
    ax1.set_ylabel("bilabials with the lips closed, % (95 % interval)")
    ax1.set_ylim(0, 118)
    ax1.set_yticks(range(0, 101, 20))
    ax1.set_title("Real voices: lip closure on aligned bilabials")
    ax1.legend(fontsize=7, loc="upper center", ncol=3)
    quiet = {n: r for n, r in result["nonspeech"].items() if n.endswith("-20 dBFS")}
    names = list(quiet)
    columns = list(next(iter(quiet.values()), {}))
    y = np.arange(len(names))
    h = 0.8 / max(1, len(columns))
    for i, c in enumerate(columns):
        ax2.barh(y + (i - (len(columns) - 1) / 2) * h, [100 * quiet[n][c] for n in names], h, label=c)
    ax2.set_yticks(y, [n.removesuffix(" @ -20 dBFS") for n in names], fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlabel(f"frames with jawOpen > {result['open_threshold']}, %")
    ax2.set_title("Not a voice, at -20 dBFS")
    ax2.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
