"""Transcript -> phoneme tokens for the model's optional text path.

A game knows the text of an NPC line; hama's G2P turns it into IPA phonemes, which we map
onto the phoneme inventory of hama's recogniser (the same symbols the audio posteriorgram
uses). Token 0 is padding; symbols outside the inventory become <unk>.

hama's G2P runs on its native library (libhama), which has no Windows build. Where hama cannot
load, transcripts are ignored: one warning says why, and lines animate from audio alone (the
model is trained with and without transcripts).
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_TOKENS = 96  # must match ModelConfig.max_text_tokens


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


def phoneme_tokens(text: str, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """int64 [P <= max_tokens] phoneme ids for ``text``; words separated by the word-boundary token.
    Empty where hama's G2P cannot load (warned once).

    G2P runs word by word: on whole sentences it sometimes appends stray symbols after
    punctuation, and single words are cached across lines.
    """
    models = _models()
    if models is None:
        return np.zeros(0, dtype=np.int64)
    _, vocab = models
    out: list[int] = []
    for match in re.finditer(r"[A-Za-z']+|\d+", text):
        if len(out) >= max_tokens:  # the model reads no more: G2P stops (a long transcript costs no more)
            break
        if out:
            out.append(vocab["<wb>"])
        out.extend(_word_tokens(match.group().lower()))
    return np.asarray(out[:max_tokens], dtype=np.int64)


# G2P costs ~25 ms per new word: it runs here, on one thread of its own, never on the engine's.
_G2P = ThreadPoolExecutor(1, thread_name_prefix="ksdiff-g2p")


def phoneme_tokens_later(text: str, max_tokens: int = MAX_TOKENS) -> Future[np.ndarray]:
    """``phoneme_tokens`` on the G2P thread; the future holds the tokens (or the exception)."""
    return _G2P.submit(phoneme_tokens, text, max_tokens)
