"""Audio for ``audio`` messages (SPEC 4.6): numpy or bytes -> interleaved little-endian PCM, in chunks.

Pure functions (no sockets), used by ``StreamHandle.push`` and tested on their own.
"""

from __future__ import annotations

import numpy as np

from ksdiff_sdk import protocol

MAX_CHUNK_MS = 100  # SPEC 4.6: 10-100 ms per audio message keeps a live stream's latency low
# A line (mode "line") is animated as fast as the machine allows: its audio goes in messages of up to
# this long (under max_message_bytes), so the runtime takes a whole line at once instead of 30
# messages for 3 s, and animates it from one pass over all of it (SPEC 4.6)
LINE_CHUNK_MS = 10_000
# Audio that has to wait for real time (a line longer than the runtime lets a stream run ahead) goes as it
# becomes due, in messages of at most this long: the runtime then hears from the stream several times a
# second (it ends a stream that sends nothing for its idle timeout), and no message alone is over its lead
PACED_CHUNK_MS = 250
# room for the message's other fields (v, type, stream id, seq, at_sample): well under 200 bytes
_HEADER_ROOM = 1024


def frame_bytes(channels: int, fmt: str) -> int:
    """Bytes of one sample frame (all channels of one instant)."""
    if fmt not in protocol.AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; formats: {', '.join(protocol.AUDIO_FORMATS)}")
    return channels * protocol.AUDIO_FORMATS[fmt]


def to_pcm(audio: np.ndarray | bytes | bytearray | memoryview, channels: int, fmt: str) -> bytes:
    """Interleaved PCM bytes in ``fmt`` ("f32le" or "s16le") of ``audio``.

    ``audio``: float (-1..1) or int16 numpy array shaped [n] (mono, or samples already interleaved)
    or [n, channels]; or raw bytes already in ``fmt``. Floats become int16 for s16le (clipped to
    -1..1) and int16 become floats / 32768 for f32le."""
    fb = frame_bytes(channels, fmt)
    if isinstance(audio, bytes | bytearray | memoryview):
        data = bytes(audio)
        if len(data) % fb:
            raise ValueError(f"{len(data)} bytes is not a whole number of {fmt} sample frames of {channels} channel(s)"
                             f" ({fb} bytes each)")
        return data
    a = np.asarray(audio)
    if a.ndim == 2:
        if a.shape[1] != channels:
            hint = " (planar [channels, n]? pass audio.T)" if a.shape[0] == channels else ""
            raise ValueError(f"audio shaped {a.shape} must be [n, {channels}]{hint}")
    elif a.ndim != 1 or a.size % channels:
        raise ValueError(f"audio shaped {a.shape} must be [n, {channels}] or [n * {channels}] interleaved")
    if np.issubdtype(a.dtype, np.floating):
        # float32 NaN/Inf are sent as they are: the runtime replaces them by silence and counts them
        # (stats `sanitized`). int16 cannot hold them, so they become silence here.
        if fmt == "f32le":
            return a.astype("<f4").tobytes()  # row-major [n, channels] is already interleaved
        # scaled in float64: in float16, 1.0 * 32767 rounds to 32768, which wrapped to -32768
        a = np.where(np.isfinite(a), a, 0.0).astype(np.float64)
        return np.round(np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    if a.dtype.kind == "i" and a.dtype.itemsize == 2:  # int16 in either byte order ('>i2' from a big-endian file)
        if fmt == "s16le":
            return a.astype("<i2").tobytes()
        return (a.astype(np.float32) / 32768.0).astype("<f4").tobytes()
    raise TypeError(f"audio dtype {a.dtype} not supported: pass float32/float64 (-1..1) or int16")


def chunk_frames(sample_rate: int, channels: int, fmt: str, max_ms: int = MAX_CHUNK_MS) -> int:
    """Sample frames per audio message: at most ``max_ms`` of audio and under MAX_MESSAGE_BYTES."""
    by_time = max(1, sample_rate * max_ms // 1000)
    by_size = (protocol.MAX_MESSAGE_BYTES - _HEADER_ROOM) // frame_bytes(channels, fmt)
    return min(by_time, by_size)


def audio_messages(
    stream: str,
    pcm: bytes,
    sample_rate: int,
    channels: int,
    fmt: str,
    first_seq: int,
    at_sample: int,
    max_ms: int = MAX_CHUNK_MS,
) -> list[bytes]:
    """Encoded ``audio`` messages carrying ``pcm`` (interleaved, in ``fmt``), one per chunk.

    ``seq`` counts on from ``first_seq``; ``at_sample`` starts at ``at_sample`` and advances by each
    chunk's sample frames, so the runtime places every chunk exactly on the stream's clock."""
    fb = frame_bytes(channels, fmt)
    step = chunk_frames(sample_rate, channels, fmt, max_ms) * fb
    return [
        protocol.encode_request(
            "audio", stream=stream, seq=first_seq + k, at_sample=at_sample + start // fb, pcm=pcm[start : start + step]
        )
        for k, start in enumerate(range(0, len(pcm), step))
    ]
