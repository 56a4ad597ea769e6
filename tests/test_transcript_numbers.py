"""Numbers in a transcript are spelled out in English before hama's G2P (features/transcript.py): G2P reads digits
as Mandarin, so "42" gave tone marks and the mouth moved to phonemes no English speaker says."""

from __future__ import annotations

import pytest

from ksdiff_runtime.features import transcript as T


@pytest.mark.parametrize(("written", "spoken"), [
    ("42", "forty-two"),
    ("0", "zero"),
    ("101", "one hundred and one"),
    ("1999", "nineteen ninety-nine"),  # four digits in speech: a year
    ("2026", "twenty twenty-six"),
    ("10000", "ten thousand"),
    ("1,000,000", "one million"),
    ("2nd", "second"),
    ("21ST", "twenty-first"),
    ("3.5", "three point five"),
    ("50%", "fifty percent"),
    ("1999%", "one thousand, nine hundred and ninety-nine percent"),
    ("007", "zero zero seven"),
    ("5551234567890", " ".join(["five"] * 3 + ["one", "two", "three", "four", "five", "six", "seven", "eight",
                                               "nine", "zero"])),
])
def test_a_number_is_spelled_as_it_is_read(written, spoken):
    assert T.spell_number(written) == spoken


def test_the_words_of_a_line_with_numbers():
    assert list(T.words("It's 1999: 2 knights, 3.5 kg, the 2nd time; 1,00 x")) == [
        "it's", "nineteen", "ninety", "nine", "two", "knights", "three", "point", "five", "kg", "the", "second",
        "time", "one", "zero", "zero", "x"]
    digits = list(T.words("9" * 2000))  # read digit by digit, as many as a word may have letters
    assert digits == ["nine"] * T.MAX_WORD_CHARS


@pytest.fixture(scope="module")
def vocab():
    if T._models() is None:
        pytest.skip("hama's G2P cannot load here: transcripts are ignored")
    return T._models()[1]


def test_a_line_with_numbers_gets_the_phonemes_of_its_words(vocab):
    assert T.phoneme_tokens("I have 42 cats").tolist() == T.phoneme_tokens("I have forty-two cats").tolist()
    assert T.phoneme_tokens("In 1999 we won 3 times").tolist() == \
        T.phoneme_tokens("In nineteen ninety-nine we won three times").tolist()
    tones = {vocab[s] for s in ("¹", "²", "³", "⁴", "⁵") if s in vocab}
    assert tones  # the symbols digits gave
    tokens = T.phoneme_tokens("Call 555 0199 by the 3rd, 12.5% off, 64 coins, 7 swords, 2026")
    assert len(tokens) > 20 and not tones & set(tokens.tolist())
