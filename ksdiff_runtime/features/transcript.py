"""Transcript -> phoneme tokens for the model's optional text path.

A game knows the text of an NPC line; hama's G2P turns it into IPA phonemes, which we map
onto the phoneme inventory of hama's recogniser (the same symbols the audio posteriorgram
uses). Token 0 is padding; symbols outside the inventory become <unk>.

hama's G2P runs on its native library (libhama), which has no Windows build. Where hama cannot
load, transcripts are ignored: one warning says why, and lines animate from audio alone (the
model is trained with and without transcripts). Numbers are spelled out in English first (num2words).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import numpy as np
from num2words import num2words

log = logging.getLogger(__name__)

MAX_TOKENS = 96  # must match ModelConfig.max_text_tokens
# What one transcript may cost the G2P thread. hama's G2P takes ~10 ms a word plus ~3-5 ms a letter (2 busy cores),
# and gives at most 31 phonemes a word however long it is: a 2000-letter "word" took 7-10 s and gave no more.
MAX_WORD_CHARS = 32  # a longer word (no English one is; a run of digits may be) is cut to this many characters
# letters fed to G2P for one transcript, at most: English runs about one token (phoneme or word boundary) a
# letter, so the model's MAX_TOKENS are reached well within this; a transcript then costs at most ~1 s there
LETTERS_PER_TOKEN = 2


@lru_cache(maxsize=1)
def _models() -> tuple[Any, dict[str, int]] | None:
    """hama's G2P and the recogniser's vocabulary, or None (warned once) where hama cannot load."""
    try:
        import hama

        asr_tokens = hama.ASRModel().decoder_tokens
        return hama.G2PModel(), {tok: i for i, tok in enumerate(asr_tokens)}
    except Exception as e:  # any failure to load (no hama, no libhama for this platform): degrade, once
        log.warning("transcripts are ignored: hama's G2P cannot load here (%s: %s); lines animate from audio alone",
                    type(e).__name__, e)
        return None


@lru_cache(maxsize=4096)
def _word_tokens(word: str) -> tuple[int, ...]:
    models = _models()
    assert models is not None  # phoneme_tokens checks first
    g2p, vocab = models
    unk = vocab["<unk>"]
    result = g2p(word)
    return tuple(vocab.get(a.phoneme, unk) for a in result.alignments)


def phoneme_tokens(text: str, max_tokens: int = MAX_TOKENS, max_letters: int | None = None) -> np.ndarray:
    """int64 [P <= max_tokens] phoneme ids for ``text``; words separated by the word-boundary token.
    Empty where hama's G2P cannot load (warned once). ``read_transcript``'s tokens."""
    return read_transcript(text, max_tokens, max_letters).tokens


@dataclass(frozen=True)
class Reading:
    """What the model reads of a transcript."""

    tokens: np.ndarray  # int64 [P <= max_tokens]
    words: int  # of ``words(text)``, the first this many are in ``tokens`` (the last maybe in part)
    last_in_part: bool  # the last of them is cut short (at max_tokens, or at MAX_WORD_CHARS)
    left_out: bool  # some of the text is not in ``tokens``: words after them, or the last in part


def read_transcript(text: str, max_tokens: int = MAX_TOKENS, max_letters: int | None = None) -> Reading:
    """``text``'s phoneme tokens, as many as the model reads, and how much of it they hold.

    G2P runs word by word: on whole sentences it sometimes appends stray symbols after
    punctuation, and single words are cached across lines. It stops once ``max_tokens`` are reached, or
    before a word would take the letters fed to it past ``max_letters`` (default LETTERS_PER_TOKEN a token);
    a word is cut to MAX_WORD_CHARS. So whatever a client sends, one transcript costs a bounded time.
    """
    models = _models()
    if models is None:
        return Reading(np.zeros(0, dtype=np.int64), 0, False, False)
    _, vocab = models
    letters_left = LETTERS_PER_TOKEN * max_tokens if max_letters is None else max_letters
    out: list[int] = []
    read, cut_word, rest = 0, False, False
    for word in words(text):
        fed = word[:MAX_WORD_CHARS]
        if len(out) >= max_tokens or len(fed) > letters_left:  # G2P stops: a long transcript costs no more
            rest = True
            break
        letters_left -= len(fed)
        if out:
            out.append(vocab["<wb>"])
        out.extend(_word_tokens(fed))
        read, cut_word = read + 1, len(fed) < len(word)
    last_in_part = cut_word or len(out) > max_tokens
    return Reading(np.asarray(out[:max_tokens], dtype=np.int64), read, last_in_part, rest or last_in_part)


_WORD = re.compile(r"[A-Za-z']+")
# a number as a line's text writes it: 42, 1,000, 3.5, 2nd, 50%
_NUMBER = re.compile(r"(\d+(?:,\d{3})+(?!\d)|\d+)(\.\d+)?(?:(st|nd|rd|th)\b|(%))?", re.IGNORECASE)
_TOKEN = re.compile(f"{_WORD.pattern}|{_NUMBER.pattern}", re.IGNORECASE)
MAX_NUMBER_DIGITS = 12  # a longer run of digits (a phone number, a serial) is read digit by digit


def words(text: str) -> Iterator[str]:
    """The lower-case English words of ``text``, for G2P, one at a time (the caller stops when it has enough): numbers
    spelled out as they are read aloud. hama's G2P reads digits as Mandarin ("42" gave tone marks), so a line
    with a number moved the mouth to phonemes no English speaker says."""
    for match in _TOKEN.finditer(text):
        if match.group()[0].isdigit():
            yield from _WORD.findall(spell_number(match.group()))
        else:
            yield match.group().lower()


def spell_number(written: str) -> str:
    """One number as ``_NUMBER`` matches it, in words: 1999 -> nineteen ninety-nine (a year), 2nd -> second,
    3.5 -> three point five, 50% -> fifty percent, 007 -> zero zero seven."""
    m = _NUMBER.fullmatch(written)
    if m is None:
        raise ValueError(f"not a number: {written!r}")
    whole, fraction, ordinal, percent = m.group(1).replace(",", ""), m.group(2), m.group(3), m.group(4)
    if len(whole) > MAX_NUMBER_DIGITS or (len(whole) > 1 and whole[0] == "0"):
        spoken = " ".join(num2words(int(d)) for d in whole[:MAX_WORD_CHARS])
    elif fraction:
        spoken = num2words(Decimal(whole + fraction[:MAX_NUMBER_DIGITS + 1]))
    elif ordinal:
        spoken = num2words(int(whole), to="ordinal")
    elif len(whole) == 4 and 1100 <= int(whole) <= 2099 and not percent:  # most four-digit numbers in speech are years
        spoken = num2words(int(whole), to="year")
    else:
        spoken = num2words(int(whole))
    return f"{spoken} percent" if percent else spoken


# G2P costs ~25 ms per new word: it runs here, on one thread of its own, never on the engine's.
_G2P = ThreadPoolExecutor(1, thread_name_prefix="ksdiff-g2p")


def phoneme_tokens_later(text: str, max_tokens: int = MAX_TOKENS) -> Future[np.ndarray]:
    """``phoneme_tokens`` on the G2P thread; the future holds the tokens (or the exception)."""
    return _G2P.submit(phoneme_tokens, text, max_tokens)
