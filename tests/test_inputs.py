"""The input stage: one stream's audio decoded, placed on its clock, sanitised once, resampled to 16 kHz."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.signal import resample_poly

from ksdiff_runtime.inputs.stream import MAX_GAP_S, AudioFormat, BadAudioError, InputStream


def out(chunks) -> np.ndarray:
    return np.concatenate([c.audio for c in chunks])


def test_input_stream_resamples_chunks_seamlessly_and_keeps_its_clock():
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((48000, 2))).astype(np.float32)
    whole = InputStream(AudioFormat(48000, 2))
    a = out([whole.feed(x), whole.flush()])
    chunked = InputStream(AudioFormat(48000, 2))
    parts = [chunked.feed(x[i : i + 480]) for i in range(0, len(x), 480)]
    b = out([*parts, chunked.flush()])
    assert abs(len(a) - 16000) <= 1 and len(a) == len(b)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # the clock says where the input ends at 16 kHz, ahead of what the resampler has let out
    assert parts[0].clock_end == 160 and parts[0].audio.size < 160
    assert parts[-1].clock_end == 16000
    # the same signal at 16 kHz, by another resampler, agrees in band
    ref = resample_poly(x.mean(axis=1), 1, 3)
    assert np.corrcoef(a[200:-200], ref[200 : len(a) - 200])[0, 1] > 0.95


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_a_stream_ends_with_as_many_16_khz_samples_as_its_clock_says(rate: int):
    """floor(n x 16000 / rate) samples, SPEC 4.2's count and a bake's: soxr's last call rounds its output's length,
    and serve gave a stream of 49,601 samples at 48 kHz 32 frames where its bake has 31. Also across a gap."""
    rng = np.random.default_rng(rate)
    for n in [*rng.integers(1, 60_000, 40), 49_601, 1_601, 2]:
        s = InputStream(AudioFormat(rate, 1))
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        total = sum(c.audio.size for c in [*(s.feed(x[i : i + 997]) for i in range(0, n, 997)), s.flush()])
        assert total == n * 16000 // rate, n
    g = InputStream(AudioFormat(rate, 1))  # a gap flushes the resampler too: the same count across it
    chunks = [g.feed(np.ones(1_601, np.float32)), g.feed(np.ones(1_601, np.float32), at_sample=5_000), g.flush()]
    assert sum(c.audio.size for c in chunks) == 6_601 * 16000 // rate


def test_at_sample_gaps_become_silence_and_repeats_are_dropped():
    s = InputStream(AudioFormat(16000, 1))
    assert len(s.feed(np.ones(100, np.float32)).audio) == 100
    chunk = s.feed(np.ones(100, np.float32), at_sample=150)
    assert len(chunk.audio) == 150 and s.gap_samples == 50 and chunk.audio[:50].max() == 0
    assert len(s.feed(np.ones(100, np.float32), at_sample=200).audio) == 50 and s.overlap_samples == 50
    with pytest.raises(BadAudioError, match="missing"):
        s.feed(np.ones(10, np.float32), at_sample=16000 * (MAX_GAP_S + 1))
    assert s.received == 300  # the refused chunk left the clock alone


def test_a_gap_at_a_high_rate_is_never_materialised_at_that_rate():
    """10 s of silence at 192 kHz x 8 channels would be 123 MB of float64: the gap is written at 16 kHz."""
    s = InputStream(AudioFormat(192_000, 8, "s16le"))
    s.feed(np.zeros((1920, 8), np.int16))
    tracemalloc.start()
    chunk = s.feed(b"\0" * 16 * 10, at_sample=192_000 * MAX_GAP_S)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 4_000_000  # the 16 kHz silence (640 kB) and its copies, nothing at 192 kHz
    assert chunk.clock_end == (192_000 * MAX_GAP_S + 10) * 16000 // 192_000
    assert abs(s.out_samples - chunk.clock_end) < 100  # the resampler holds back only a few ms
    assert s.gap_samples == 192_000 * MAX_GAP_S - 1920


def test_bad_pcm_and_formats_are_refused():
    with pytest.raises(BadAudioError, match="whole number"):
        InputStream(AudioFormat(16000, 2, "s16le")).feed(b"\0\0\0")
    for bad in (dict(sample_rate=4000), dict(channels=9), dict(encoding="u8")):
        with pytest.raises(BadAudioError):
            AudioFormat(**bad)


def test_samples_are_sanitised_once_and_counted_per_channel_value():
    nan = InputStream(AudioFormat(16000, 1))
    got = nan.feed(np.array([np.nan, 2.0, -np.inf, 0.5], np.float32)).audio
    assert np.isfinite(got).all() and nan.sanitized == 3
    # a 3.0 in one of 8 channels is an overload even though the mean of the 8 is in range
    eight = InputStream(AudioFormat(16000, 8))
    frame = np.zeros((1, 8), np.float32)
    frame[0, 5] = 3.0
    got = eight.feed(frame).audio
    assert eight.sanitized == 1 and got[0] == pytest.approx(1.0 / 8)
