"""Audio for push(): format conversion, channel interleave, chunking under the message limit."""

from __future__ import annotations

import numpy as np
import pytest

from ksdiff_sdk import protocol
from ksdiff_sdk.audio import audio_messages, chunk_frames, to_pcm


def test_float_to_s16le_clips_and_rounds():
    pcm = to_pcm(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0], np.float32), 1, "s16le")
    assert np.frombuffer(pcm, "<i2").tolist() == [-32767, -32767, 0, 16384, 32767, 32767]


def test_int16_to_f32le_and_passthrough():
    x = np.array([0, 16384, -32768, 32767], np.int16)
    np.testing.assert_array_equal(np.frombuffer(to_pcm(x, 1, "f32le"), "<f4"), x / 32768.0)
    assert to_pcm(x, 1, "s16le") == x.astype("<i2").tobytes()
    f = np.array([0.25, -0.5], np.float64)
    assert np.frombuffer(to_pcm(f, 1, "f32le"), "<f4").tolist() == [0.25, -0.5]


def test_channels_are_interleaved():
    left = np.array([1, 2, 3], np.int16)
    right = np.array([-1, -2, -3], np.int16)
    stereo = np.stack([left, right], axis=1)  # [n, 2]
    assert np.frombuffer(to_pcm(stereo, 2, "s16le"), "<i2").tolist() == [1, -1, 2, -2, 3, -3]
    # 1-D input with channels > 1 is taken as already interleaved
    assert to_pcm(stereo.reshape(-1), 2, "s16le") == to_pcm(stereo, 2, "s16le")
    with pytest.raises(ValueError, match=r"audio\.T"):
        to_pcm(stereo.T.copy(), 2, "s16le")  # planar [channels, n]
    with pytest.raises(ValueError, match="interleaved"):
        to_pcm(np.zeros(5, np.int16), 2, "s16le")


def test_float16_full_scale_stays_full_scale_as_int16():
    """Scaled in float16, 1.0 * 32767 rounded to 32768, which wrapped to -32768: full scale became its opposite."""
    x = np.array([1.0, -1.0, 2.0, 0.3], np.float16)
    pcm = to_pcm(x, 1, "s16le")
    assert np.frombuffer(pcm, "<i2").tolist()[:3] == [32767, -32767, 32767]
    assert pcm == to_pcm(x.astype(np.float32), 1, "s16le")


def test_nan_goes_to_the_runtime_as_float_and_becomes_silence_as_int16():
    x = np.array([0.5, np.nan, np.inf], np.float32)
    assert np.array_equal(np.frombuffer(to_pcm(x, 1, "f32le"), "<f4"), x, equal_nan=True)
    assert np.frombuffer(to_pcm(x, 1, "s16le"), "<i2").tolist() == [16384, 0, 0]


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="int32"):
        to_pcm(np.zeros(4, np.int32), 1, "f32le")
    with pytest.raises(ValueError, match="whole number"):
        to_pcm(b"\x00" * 6, 2, "f32le")  # 6 bytes is not a whole 8-byte stereo f32 frame
    assert to_pcm(b"\x00" * 8, 2, "f32le") == b"\x00" * 8
    with pytest.raises(ValueError, match="format"):
        to_pcm(b"", 1, "u8")


@pytest.mark.parametrize(("rate", "channels", "fmt"), [(16000, 1, "f32le"), (48000, 2, "s16le"),
                                                       (44100, 1, "s16le"), (192000, 8, "f32le")])
def test_chunks_stay_under_100_ms_and_the_size_limit(rate, channels, fmt):
    seconds = 2.5
    rng = np.random.default_rng(0)
    audio = rng.uniform(-1, 1, (int(seconds * rate), channels)).astype(np.float32)
    pcm = to_pcm(audio, channels, fmt)
    msgs = audio_messages("npc1", pcm, rate, channels, fmt, first_seq=7, at_sample=1000)
    fb = channels * protocol.AUDIO_FORMATS[fmt]
    decoded = [protocol.decode(m) for m in msgs]
    assert all(len(m) <= protocol.MAX_MESSAGE_BYTES for m in msgs)
    assert all(len(d["pcm"]) // fb <= rate // 10 for d in decoded)  # <= 100 ms each
    assert [d["seq"] for d in decoded] == list(range(7, 7 + len(msgs)))
    starts = [d["at_sample"] for d in decoded]
    sizes = [len(d["pcm"]) // fb for d in decoded]
    assert starts[0] == 1000 and all(s + n == t for s, n, t in zip(starts, sizes, starts[1:], strict=False))
    assert b"".join(d["pcm"] for d in decoded) == pcm
    assert chunk_frames(rate, channels, fmt) * fb < protocol.MAX_MESSAGE_BYTES


def test_int16_in_either_byte_order_is_taken():
    """int16 read from a big-endian file ('>i2') is int16 too: it was refused with a TypeError."""
    x = np.array([0, 1, -2, 32767, -32768], np.int16)
    for fmt in ("s16le", "f32le"):
        assert to_pcm(x.astype(">i2"), 1, fmt) == to_pcm(x, 1, fmt)
