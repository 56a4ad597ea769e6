"""Speech synthesis with phoneme timings: espeak-ng (from the espeakng-loader wheel) through ctypes.

espeak-ng is a process-global C library (one voice, one set of parameters, one callback at a
time), so use it from one thread per process; the corpus generator gives each worker process
its own instance. The synthesis callback is kept referenced on the module so ctypes never
frees it while the library can still call it.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from math import gcd

import numpy as np
from scipy.signal import resample_poly

from ksdiff_runtime.motion import SAMPLE_RATE

# espeak_lib.h constants (API version 1.x).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4

PAUSE_PHONEMES = frozenset({"_", "_:", "_!", "_|", "_^_", "||", "|", ""})

# Variants that do not sound like a person at all (robots, monsters): a real microphone never
# hears them, so they would only teach the model audio it will not meet.
_EXCLUDED_VARIANTS = frozenset(
    {"Demonic", "UniRobot", "anikaRobot", "croak", "Tweaky", "kaukovalta", "whisper", "whisperf"}
)
_EXCLUDED_VARIANT_PREFIXES = ("robosoft",)


class _EventId(ctypes.Union):
    _fields_ = (("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8))


class _Event(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of the synthesis
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


class _Voice(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # sequence of (priority byte, NUL-terminated name), 0-terminated
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    )


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass
class Utterance:
    """Synthesised speech at 16 kHz with one (start, duration) per phoneme, in seconds."""

    audio: np.ndarray  # float32 [S], 16 kHz, in [-1, 1]
    phonemes: list[str]  # espeak mnemonics; pauses ("_", "_:", ...) included
    start: np.ndarray  # float32 [P] seconds
    duration: np.ndarray  # float32 [P] seconds


class _Espeak:
    """The one espeak-ng instance of this process."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path()
        # espeak looks for <path>/espeak-ng-data; the loader returns that folder itself.
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        self.sample_rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.path.dirname(data).encode(), _INITIALIZE_PHONEME_EVENTS
        )
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with {self.sample_rate} (data at {data})")
        self.lib.espeak_SetSynthCallback.argtypes = (_SYNTH_CALLBACK,)
        self.lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        self.lib.espeak_SetVoiceByName.restype = ctypes.c_int
        self.lib.espeak_SetParameter.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
        self.lib.espeak_Synth.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        self.lib.espeak_Synth.restype = ctypes.c_int
        self.lib.espeak_ListVoices.argtypes = (ctypes.c_void_p,)
        self.lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []  # (mnemonic, audio position in ms)
        self._callback = _SYNTH_CALLBACK(self._on_synth)  # kept referenced: espeak holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.data_path = data

    def _on_synth(
        self, wav: ctypes.POINTER(ctypes.c_short), num_samples: int, events: ctypes.POINTER(_Event)
    ) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        k = 0
        while events[k].type != _EVENT_LIST_TERMINATED:
            ev = events[k]
            if ev.type == _EVENT_PHONEME:
                name = bytes(ev.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                self._events.append((name, ev.audio_position))
            k += 1
        return 0  # 0 = continue synthesis

    def english_voices(self) -> list[str]:
        """Identifiers of the English voices (e.g. "gmw/en-US"), as names espeak accepts."""
        out: list[str] = []
        voices = self.lib.espeak_ListVoices(None)
        k = 0
        while voices[k]:
            v = voices[k].contents
            langs = ctypes.string_at(v.languages + 1).decode()  # skip the priority byte
            # SetVoiceByName wants the voice file's name ("en" for en-gb), not the language tag;
            # en-shaw reads the Shavian alphabet, not Latin text.
            file_name = v.identifier.decode().rsplit("/", 1)[-1].lower()
            if langs.startswith("en") and langs != "en-shaw":
                out.append(file_name)
            k += 1
        return sorted(set(out))

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> Utterance:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak does not know voice {voice!r}")
        self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        self.lib.espeak_SetParameter(_PARAM_RANGE, int(pitch_range), 0)
        self.lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        err = self.lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed with {err}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        audio = pcm.astype(np.float32) / 32768.0
        g = gcd(SAMPLE_RATE, self.sample_rate)
        audio = resample_poly(audio, SAMPLE_RATE // g, self.sample_rate // g).astype(np.float32)
        total_s = len(audio) / SAMPLE_RATE
        names = [n for n, _ in self._events]
        starts = np.array([ms / 1000.0 for _, ms in self._events], dtype=np.float64)
        # A phoneme lasts until the next one starts; the last one until the audio ends.
        ends = np.append(starts[1:], total_s) if len(starts) else starts
        dur = np.maximum(ends - starts, 0.0)
        return Utterance(audio, names, starts.astype(np.float32), dur.astype(np.float32))


_INSTANCE: _Espeak | None = None


def _espeak() -> _Espeak:
    global _INSTANCE
    if _INSTANCE is None:
        _INSTANCE = _Espeak()
    return _INSTANCE


def synthesize(
    text: str, voice: str = "en-us", rate: int = 170, pitch: int = 50, pitch_range: int = 50
) -> Utterance:
    """Speak ``text`` with ``voice`` ("en-us+f3" = language + variant), rate in words/min, pitch 0-100."""
    return _espeak().synth(text, voice, rate, pitch, pitch_range)


def english_languages() -> list[str]:
    """English voice names espeak-ng accepts (en = British, en-us, en-gb-scotland, ...)."""
    return _espeak().english_voices()


def variants() -> list[str]:
    """Human-sounding voice variants shipped in espeak-ng-data/voices/!v, sorted."""
    folder = os.path.join(_espeak().data_path, "voices", "!v")
    names = sorted(os.listdir(folder))
    lib = _espeak().lib
    return [
        n
        for n in names
        if n not in _EXCLUDED_VARIANTS
        and not n.startswith(_EXCLUDED_VARIANT_PREFIXES)
        and " " not in n
        and lib.espeak_SetVoiceByName(f"en-us+{n}".encode()) == 0  # only variants espeak accepts
    ]


def voice_combos() -> list[str]:
    """Every English language x variant, as "en-us+f3" names, sorted (several hundred)."""
    return [f"{lang}+{var}" for lang in english_languages() for var in variants()]
