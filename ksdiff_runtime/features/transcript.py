"""Transcript -> phoneme tokens for the model's optional text path.

A game knows the text of an NPC line; hama's G2P turns it into IPA phonemes, which we map
onto the phoneme inventory of hama's recogniser (the same symbols the audio posteriorgram
uses). Token 0 is padding; symbols outside the inventory become <unk>.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

MAX_TOKENS = 96  # must match ModelConfig.max_text_tokens


@lru_cache(maxsize=1)
def _models():
    import hama

    asr_tokens = hama.ASRModel().decoder_tokens
    return hama.G2PModel(), {tok: i for i, tok in enumerate(asr_tokens)}


@lru_cache(maxsize=4096)
def _word_tokens(word: str) -> tuple[int, ...]:
    g2p, vocab = _models()
    unk = vocab["<unk>"]
    result = g2p(word)
    return tuple(vocab.get(a.phoneme, unk) for a in result.alignments)


def phoneme_tokens(text: str, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """int64 [P <= max_tokens] phoneme ids for ``text``; words separated by the word-boundary token.

    G2P runs word by word: on whole sentences it sometimes appends stray symbols after
    punctuation, and single words are cached across lines.
    """
    _, vocab = _models()
    words = re.findall(r"[A-Za-z']+|\d+", text)
    out: list[int] = []
    for word in words:
        if out:
            out.append(vocab["<wb>"])
        out.extend(_word_tokens(word.lower()))
    return np.asarray(out[:max_tokens], dtype=np.int64)
