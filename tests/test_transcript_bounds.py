"""What one transcript may cost hama's G2P (features/transcript.py): a word is cut to MAX_WORD_CHARS and a transcript
feeds G2P at most LETTERS_PER_TOKEN letters a token, so a 2000-letter "word" costs a fraction of a second (7-10 s
before) and no transcript costs much more than an ordinary line; ordinary lines give the tokens they gave. The G2P
thread behind a runtime: tests/test_serve_bounds.py."""

from __future__ import annotations

import random
import string
import time

import pytest

from ksdiff_runtime.features import transcript as T

LINES = [
    "Well met, traveller. The road north is long, and the nights are cold; take this cloak and mind the wolves near "
    "the old mill.",
    "Through the thoroughfare, though thoughtful, she brought eight knights' weights through the borough's night.",
    "It's 1999 and I've got 42 reasons to stay, but you'll need more than that to make me leave this town.",
    "Antidisestablishmentarianism is a long word; so is pneumonoultramicroscopicsilicovolcanoconiosis, isn't it?",
]


@pytest.fixture(scope="module")
def g2p():
    if T._models() is None:
        pytest.skip("hama's G2P cannot load here: transcripts are ignored")
    T.phoneme_tokens("hello")  # loaded and warm


def _seconds(text: str) -> float:
    t0 = time.perf_counter()
    tokens = T.phoneme_tokens(text)
    assert 0 < len(tokens) <= T.MAX_TOKENS
    return time.perf_counter() - t0


def test_a_transcript_of_one_huge_word_costs_g2p_a_fraction_of_a_second(g2p):
    rng = random.Random(time.time_ns())  # words G2P has not cached
    for chars in (string.ascii_lowercase, string.digits, "a"):
        word = "".join(rng.choice(chars) for _ in range(2000))
        if chars == "a":
            word = "a" * 1999 + rng.choice(string.ascii_lowercase)
        assert _seconds(word) < 1.5, chars  # before: 7-10 s on 2 busy cores; now ~0.2 s


def test_no_transcript_costs_g2p_much_more_than_an_ordinary_line(g2p):
    """Many short new words, or many words of 32 letters: G2P stops at MAX_TOKENS or its letters, whichever first."""
    rng = random.Random(time.time_ns())
    pairs = ["".join(rng.choice(string.ascii_lowercase) for _ in range(2)) for _ in range(600)]
    long_words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(40)) for _ in range(50)]
    for text in (" ".join(pairs)[:2000], " ".join(long_words)[:2000], " ".join(pairs[:300]) + "9" * 1000):
        assert _seconds(text) < 4.0  # ~0.6 s here; an ordinary line of 96 tokens ~0.5-0.7 s


def test_ordinary_lines_give_the_tokens_they_gave(g2p):
    for line in LINES:
        bounded = T.phoneme_tokens(line)
        assert bounded.tolist() == T.phoneme_tokens(line, max_letters=10**9).tolist(), line
    assert len(T.phoneme_tokens(" ".join(LINES))) == T.MAX_TOKENS  # a long text still fills the model's tokens
