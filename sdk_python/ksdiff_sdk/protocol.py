"""Wire protocol v1: the one Python implementation of ``protocol/SPEC.md``.

numpy + msgpack only (no torch, no zmq): the runtime and the SDK both use this module. The
facts a frame carries (blendshape names and order, head and gaze names, fps, sample rate)
come from ``ksdiff_sdk.schema``; everything wire-specific (version, endpoints, topics,
message types, field types, size limits, error codes) lives here and in SPEC.md, which
must agree with each other (``tests/test_protocol.py`` checks them against the golden
vectors in ``protocol/golden/``).

Encoding: one msgpack map with string keys per message. ``head``, ``gaze``, ``lookahead_ms``
and ``compute_ms`` are packed as float32, every other float as float64, bytes as bin,
integers in their smallest msgpack form. Readers accept any int width and either float
width for any numeric field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from ksdiff_sdk import schema

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 4
VERSION = (PROTOCOL_MAJOR, PROTOCOL_MINOR)

DEFAULT_PUB_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_ROUTER_ENDPOINT = "tcp://127.0.0.1:5556"

MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: larger messages are answered with error too_large
# ZeroMQ's own cap (ZMQ_MAXMSGSIZE on the runtime's ROUTER): above it ZeroMQ drops the
# connection before the runtime sees the message, so no error can be replied.
ZMQ_MAXMSGSIZE = 4 * MAX_MESSAGE_BYTES
HELLO_PERIOD_S = 1.0  # the runtime re-publishes hello this often
STATS_PERIOD_S = 1.0

# --- topics ----------------------------------------------------------------------------------
TOPIC_ROOT = b"ksd%d/" % PROTOCOL_MAJOR
FRAME_TOPIC_PREFIX = TOPIC_ROOT + b"frame/"
STREAM_TOPIC_PREFIX = TOPIC_ROOT + b"stream/"
STATS_TOPIC = TOPIC_ROOT + b"stats/"
HELLO_TOPIC = TOPIC_ROOT + b"hello/"

STREAM_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
RESERVED_STREAM_IDS = frozenset({".", ".."})  # valid characters, but a path's "here" and "parent": refused (1.1)

# --- vocabulary ------------------------------------------------------------------------------
HEAD_UNITS = "rad"
GAZE_UNITS = "rad"
HEAD_CONVENTION = (
    "ARKit face frame, right-handed: +X toward the face's own left, +Y up, +Z out of the face "
    "toward the viewer; R = Ry(yaw) @ Rx(pitch) @ Rz(roll); headPitch > 0: chin down; "
    "headYaw > 0: face turns toward its own left; headRoll > 0: head tilts toward its own right "
    "shoulder; zero: neutral, looking straight ahead"
)
GAZE_CONVENTION = (
    "per eye, yaw > 0: toward the face's own left (as headYaw); pitch > 0: looking down; "
    "derived from the eyeLook* blendshapes, relative to the head"
)
AUDIO_FORMATS = {"f32le": 4, "s16le": 2}  # format -> bytes per sample
SOURCES = ("mic", "file", "sdk")
END_REASONS = ("ended", "timeout", "error", "shutdown")
# how a stream is animated (1.2): live (paced by real time, frames within a deadline, shed when late) or
# line (audio already there: animated as fast as the machine can, in large batched hops, never shed)
MODES = ("live", "line")
ERROR_CODES = (
    "malformed",
    "too_large",
    "unsupported_version",
    "unknown_type",
    "unknown_stream",
    "bad_audio",
    "busy",
    "forbidden",
    "bad_controls",
    "internal",
)
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000
MAX_CHANNELS = 8
MAX_TRANSCRIPT_CHARS = 2000
# The longest gap on a stream's clock (``at_sample`` past the audio before it) the runtime fills with silence; audio
# placed further is refused bad_audio (SPEC 4.6 "audio")
MAX_GAP_S = 10
# A client past its share of the runtime's request reading has its requests dropped unread, and is told so by one
# ``busy`` error without ``req`` or ``stream``, until the window it was counted in ends: at most this long after that
# reply (SPEC 4.6 "A client past its share")
BUSY_WINDOW_S = 1.0
MAX_ERROR_MESSAGE_CHARS = 1000
MAX_ECHOED_TYPE_CHARS = 64  # an error echoes a request's type up to this long; a longer one is nil (unreadable)
BLENDSHAPE_BYTES = 4 * schema.NUM_BLENDSHAPES  # 208

# --- structure limits (SPEC 3.5) ---------------------------------------------------------------
# Decoding builds one Python object per msgpack value: a payload under MAX_MESSAGE_BYTES made of a million empty
# arrays took ~0.25 s to decode (the io thread's, with the GIL held). A message may hold only what the largest
# legal one needs; beyond these limits it is refused as ``malformed`` while it is being decoded (msgpack refuses an
# over-long array, map, str or bin at its header, before building it), so decoding one costs well under a
# millisecond whatever it holds.
MAX_STR_BYTES = 4 * MAX_TRANSCRIPT_CHARS  # one str in UTF-8: a transcript of 2000 characters of up to 4 bytes each
MAX_BIN_BYTES = MAX_MESSAGE_BYTES  # one bin: a line's audio fills a message (3.4)
# A request (client -> runtime): the largest, open_stream or set_controls with every control given, has a map of
# the 52 blendshapes and 58 arrays and maps in all.
MAX_REQUEST_ENTRIES = 64  # of one array or map (keys of a map)
MAX_REQUEST_CONTAINERS = 128  # arrays and maps in one request, nested ones included
# Anything the runtime sends: its largest, stats, lists every stream (one map each); a stats message of 1 MiB
# lists fewer than 10,000 streams.
MAX_ENTRIES = 1 << 14
MAX_CONTAINERS = 1 << 14


@dataclass(frozen=True)
class Limits:
    """What one decoded message may hold (SPEC 3.5); beyond it ``decode`` raises ProtocolError(malformed)."""

    entries: int  # of one array or map
    containers: int  # arrays and maps in the whole message, nested ones included
    str_bytes: int = MAX_STR_BYTES
    bin_bytes: int = MAX_BIN_BYTES


REQUEST_LIMITS = Limits(MAX_REQUEST_ENTRIES, MAX_REQUEST_CONTAINERS)  # what the runtime reads
MESSAGE_LIMITS = Limits(MAX_ENTRIES, MAX_CONTAINERS)  # any message: what a client reads from its runtime

REQUEST_TYPES = ("hello", "open_stream", "audio", "end_stream", "set_controls")
REPLY_TYPES = ("hello", "stream_opened", "stream_ended", "controls_set", "error")
PUBLISHED_TYPES = ("hello", "frame", "stream_start", "stream_end", "stats")
# fields packed as float32 (scalars or arrays of floats)
_FLOAT32_FIELDS = frozenset({"head", "gaze", "lookahead_ms", "compute_ms"})

_U64 = 1 << 64
_I64 = 1 << 63


class ProtocolError(Exception):
    """A message that breaks the protocol; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str, message_type: str | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}; known: {', '.join(ERROR_CODES)}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.message_type = message_type  # the offending message's type, when known


# --- topics ----------------------------------------------------------------------------------
def is_stream_id(stream_id: object) -> bool:
    """1..64 chars of [A-Za-z0-9_.-], and not "." or ".."."""
    return (isinstance(stream_id, str) and STREAM_ID_RE.fullmatch(stream_id) is not None
            and stream_id not in RESERVED_STREAM_IDS)


def validate_stream_id(stream_id: object) -> str:
    """The stream id itself if valid (``is_stream_id``); ProtocolError(malformed) if not."""
    if not is_stream_id(stream_id):
        raise ProtocolError("malformed", f"bad stream id {str(stream_id)[:80]!r}: need 1..64 chars of "
                            "[A-Za-z0-9_.-], not '.' or '..'")
    return stream_id


def frame_topic(stream_id: str) -> bytes:
    """``ksd1/frame/<stream_id>/``: subscribe to it for one stream's frames."""
    return FRAME_TOPIC_PREFIX + validate_stream_id(stream_id).encode("ascii") + b"/"


def stream_topic(stream_id: str) -> bytes:
    """``ksd1/stream/<stream_id>/``: one stream's start and end events."""
    return STREAM_TOPIC_PREFIX + validate_stream_id(stream_id).encode("ascii") + b"/"


def parse_topic(topic: bytes) -> tuple[str, str | None]:
    """(kind, stream id or None) of a PUB topic: ("frame", "npc1"), ("stats", None), ..."""
    if not topic.startswith(TOPIC_ROOT) or not topic.endswith(b"/"):
        raise ProtocolError("malformed", f"not a ksd{PROTOCOL_MAJOR} topic: {topic!r}")
    parts = topic[len(TOPIC_ROOT) : -1].decode("ascii", "replace").split("/")
    if len(parts) == 1 and parts[0] in ("stats", "hello"):
        return parts[0], None
    if len(parts) == 2 and parts[0] in ("frame", "stream"):
        return parts[0], validate_stream_id(parts[1])
    raise ProtocolError("malformed", f"unknown topic {topic!r}")


# --- field checks ----------------------------------------------------------------------------
def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return (isinstance(x, float) or _is_int(x)) and math.isfinite(x)


def _bad(name: str, want: str, x: object, code: str = "malformed") -> ProtocolError:
    shown = repr(x) if not isinstance(x, bytes | bytearray) else f"<{len(x)} bytes>"
    return ProtocolError(code, f"field {name!r} must be {want}, got {shown[:80]}")


Check = Callable[[str, Any], None]


def _uint(bits: int = 64, lo: int = 0, hi: int | None = None, code: str = "malformed") -> Check:
    """An integer in [lo, hi]: not an integer at all is ``malformed``; out of range is ``code``."""
    top = (1 << bits) - 1 if hi is None else hi

    def check(name: str, x: Any) -> None:
        if not _is_int(x):
            raise _bad(name, f"an integer in [{lo}, {top}]", x)
        if not lo <= x <= top:
            raise _bad(name, f"an integer in [{lo}, {top}]", x, code)

    return check


def _int64(name: str, x: Any) -> None:
    if not _is_int(x) or not -_I64 <= x < _I64:
        raise _bad(name, "an int64", x)


def _int64_or_nil(name: str, x: Any) -> None:
    if x is not None:
        _int64(name, x)


def _num(name: str, x: Any) -> None:
    if not _is_num(x):
        raise _bad(name, "a finite number", x)


def _bool(name: str, x: Any) -> None:
    if not isinstance(x, bool):
        raise _bad(name, "a bool", x)


def _str(max_chars: int = 1_000_000) -> Check:
    def check(name: str, x: Any) -> None:
        if not isinstance(x, str) or len(x) > max_chars:
            raise _bad(name, f"a string of at most {max_chars} chars", x)

    return check


def _str_or_nil(name: str, x: Any) -> None:
    if x is not None and not isinstance(x, str):
        raise _bad(name, "a string or nil", x)


def _one_of(options: tuple[str, ...], code: str = "malformed") -> Check:
    """One of ``options``: not a string is ``malformed``; another string is ``code``."""

    def check(name: str, x: Any) -> None:
        if not isinstance(x, str):
            raise _bad(name, f"one of {', '.join(options)}", x)
        if x not in options:
            raise _bad(name, f"one of {', '.join(options)}", x, code)

    return check


def _stream(name: str, x: Any) -> None:
    validate_stream_id(x)


def _num_array(n: int) -> Check:
    def check(name: str, x: Any) -> None:
        if not isinstance(x, list) or len(x) != n or not all(_is_num(v) for v in x):
            raise _bad(name, f"an array of {n} finite numbers", x)

    return check


def _str_array(n: int) -> Check:
    def check(name: str, x: Any) -> None:
        if not isinstance(x, list) or len(x) != n or not all(isinstance(v, str) for v in x):
            raise _bad(name, f"an array of {n} strings", x)

    return check


def _blendshapes(name: str, x: Any) -> None:
    if not isinstance(x, bytes) or len(x) != BLENDSHAPE_BYTES:
        raise _bad(name, f"bin of {BLENDSHAPE_BYTES} bytes (52 little-endian float32)", x)
    if not np.isfinite(np.frombuffer(x, "<f4")).all():
        raise _bad(name, "52 finite float32", "non-finite values")


def _bin(name: str, x: Any) -> None:
    if not isinstance(x, bytes):
        raise _bad(name, "bin", x)


def _count_map(name: str, x: Any) -> None:
    if not isinstance(x, dict) or not all(isinstance(k, str) and _is_int(v) and v >= 0 for k, v in x.items()):
        raise _bad(name, "a map of str -> uint", x)


def _map(name: str, x: Any) -> None:
    if not isinstance(x, dict) or not all(isinstance(k, str) for k in x):
        raise _bad(name, "a map with str keys", x)


def _stats_streams(name: str, x: Any) -> None:
    if not isinstance(x, dict):
        raise _bad(name, "a map of stream id -> map", x)
    for sid, entry in x.items():
        validate_stream_id(sid)
        if not isinstance(entry, dict):
            raise _bad(f"{name}.{sid}", "a map", entry)
        for key, check in _STATS_STREAM_FIELDS.items():
            if key not in entry:
                raise ProtocolError("malformed", f"field {name}.{sid}.{key} missing")
            check(f"{name}.{sid}.{key}", entry[key])


_STATS_STREAM_FIELDS: dict[str, Check] = {
    "fps": _num,
    "latency_p50_ms": _num,
    "latency_p95_ms": _num,
    "frames": _uint(),
    "drops": _uint(),
}

_REQ: dict[str, tuple[Check, bool]] = {"req": (_uint(), False)}  # optional request id, echoed in replies

# type -> field -> (check, required). Fields not listed are ignored (forward compatibility).
SCHEMA: dict[str, dict[str, tuple[Check, bool]]] = {
    # runtime -> client (PUB ksd1/hello/ and reply); the request form carries none of these
    "hello": {
        "runtime": (_str(200), False),
        "fps": (_uint(32, 1), False),
        "sample_rate": (_uint(32, 1), False),
        "blendshapes": (_str_array(schema.NUM_BLENDSHAPES), False),
        "head": (_str_array(schema.NUM_HEAD), False),
        "head_units": (_str(20), False),
        "head_convention": (_str(1000), False),
        "gaze": (_str_array(len(schema.GAZE)), False),
        "gaze_units": (_str(20), False),
        "gaze_convention": (_str(1000), False),
        "max_message_bytes": (_uint(), False),
        "instance": (_str(64), False),
        **_REQ,
    },
    "frame": {
        "stream": (_stream, True),
        "seq": (_uint(), True),
        "index": (_uint(), True),
        "fps": (_uint(32, 1), True),
        "t_audio": (_num, True),
        "blendshapes": (_blendshapes, True),
        "head": (_num_array(schema.NUM_HEAD), True),
        "gaze": (_num_array(len(schema.GAZE)), True),
        "captured_ns": (_int64_or_nil, True),
        "published_ns": (_int64, True),
        "lookahead_ms": (_num, True),
        "compute_ms": (_num, True),
        "last": (_bool, True),
    },
    "stream_start": {
        "stream": (_stream, True),
        "source": (_one_of(SOURCES), True),
        "published_ns": (_int64, True),
        "mode": (_one_of(MODES), False),  # 1.2
        "latency_ms": (_num, False),  # 1.2
    },
    "stream_end": {
        "stream": (_stream, True),
        "source": (_one_of(SOURCES), True),
        "reason": (_one_of(END_REASONS), True),
        "frames": (_uint(), True),
        "published_ns": (_int64, True),
    },
    "stats": {
        "uptime_s": (_num, True),
        "streams": (_stats_streams, True),
        "drops": (_uint(), True),
        "published_ns": (_int64, True),
        "refused": (_count_map, False),  # 1.1
        "capacity": (_uint(), False),  # 1.1
    },
    "open_stream": {
        "stream": (_stream, False),
        "sample_rate": (_uint(32, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, code="bad_audio"), True),
        "channels": (_uint(8, 1, MAX_CHANNELS, code="bad_audio"), True),
        "format": (_one_of(tuple(AUDIO_FORMATS), code="bad_audio"), True),
        "transcript": (_str(MAX_TRANSCRIPT_CHARS), False),
        "seed": (_int64, False),
        "mode": (_one_of(MODES), False),  # 1.2
        "controls": (_map, False),  # 1.2; its content is checked by the runtime (bad_controls)
        **_REQ,
    },
    "audio": {
        "stream": (_stream, True),
        "seq": (_uint(), True),
        "at_sample": (_uint(), False),
        "pcm": (_bin, True),
    },
    "end_stream": {"stream": (_stream, True), **_REQ},
    "set_controls": {"stream": (_stream, True), "controls": (_map, True), **_REQ},  # 1.2
    "stream_opened": {
        "stream": (_stream, True),
        "fps": (_uint(32, 1), True),
        "max_ahead_s": (_num, False),  # 1.1
        "mode": (_one_of(MODES), False),  # 1.2
        "latency_ms": (_num, False),  # 1.2
        **_REQ,
    },
    "stream_ended": {"stream": (_stream, True), "frames": (_uint(), True), **_REQ},
    "controls_set": {"stream": (_stream, True), "controls": (_map, True), **_REQ},  # 1.2
    "error": {
        # any code decodes: a newer runtime may add codes, which a client treats as internal (SPEC 4.7)
        "code": (_str(64), True),
        "message": (_str(MAX_ERROR_MESSAGE_CHARS), True),
        "request_type": (_str_or_nil, True),
        "stream": (_stream, False),
        "req": (_uint(), False),
    },
}


def validate(msg: dict) -> dict:
    """Check a decoded message's version, type and known fields; returns it unchanged.

    Raises ProtocolError: ``malformed`` (missing/ill-typed ``v``, ``type`` or a known field),
    ``unsupported_version`` (major != PROTOCOL_MAJOR), ``unknown_type``, ``bad_audio``
    (open_stream's sample_rate/channels/format out of range)."""
    if not isinstance(msg, dict):
        raise ProtocolError("malformed", f"a message must be a msgpack map, got {type(msg).__name__}")
    mtype = msg.get("type")
    mtype = mtype if isinstance(mtype, str) else None
    v = msg.get("v")
    if not isinstance(v, list) or len(v) != 2 or not all(_is_int(x) and 0 <= x < 1 << 32 for x in v):
        raise ProtocolError("malformed", f"field 'v' must be [major, minor] (two uints), got {v!r}"[:200], mtype)
    if v[0] != PROTOCOL_MAJOR:
        raise ProtocolError(
            "unsupported_version", f"protocol major {v[0]} not supported (this side speaks {PROTOCOL_MAJOR})", mtype
        )
    if mtype is None:
        raise ProtocolError("malformed", "field 'type' must be a string")
    schema = SCHEMA.get(mtype)
    if schema is None:
        raise ProtocolError("unknown_type", f"unknown message type {mtype!r}", mtype)
    for name, (check, required) in schema.items():
        if name not in msg:
            if required:
                raise ProtocolError("malformed", f"{mtype}: field {name!r} missing", mtype)
            continue
        try:
            check(name, msg[name])
        except ProtocolError as e:
            raise ProtocolError(e.code, f"{mtype}: {e.message}", mtype) from None
    if mtype == "hello":
        present = [k for k in _HELLO_RUNTIME_FIELDS if k in msg]
        if present and len(present) != len(_HELLO_RUNTIME_FIELDS):
            missing = sorted(set(_HELLO_RUNTIME_FIELDS) - set(present))
            raise ProtocolError("malformed", f"hello: runtime hello lacks {', '.join(missing)}", mtype)
    return msg


# a hello either has none of these (the client's request) or all of them (the runtime's)
_HELLO_RUNTIME_FIELDS = tuple(k for k in SCHEMA["hello"] if k not in ("req", "instance"))


# the first byte of a msgpack map: fixmap, map 16, map 32
_MAP_HEADERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


class _TooManyContainersError(Exception):
    pass


def unpack(payload: bytes, limits: Limits = MESSAGE_LIMITS) -> dict:
    """One payload -> its msgpack map (str keys; bin as bytes), within ``limits``, not validated (``decode``
    validates). Raises ProtocolError: ``too_large`` (over MAX_MESSAGE_BYTES), ``malformed`` (not one msgpack map,
    or beyond ``limits``: refused while it is read, before it is built in full)."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ProtocolError("malformed", f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(payload) and payload[0] not in _MAP_HEADERS:  # known from its first byte: nothing is built
        raise ProtocolError("malformed", f"a message must be a msgpack map, got one starting with byte "
                            f"0x{payload[0]:02x}")
    containers = 0

    def counted(x: Any) -> Any:  # called for every array and map once it is built
        nonlocal containers
        containers += 1
        if containers > limits.containers:
            raise _TooManyContainersError
        return x

    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True,
                              max_array_len=limits.entries, max_map_len=limits.entries, max_str_len=limits.str_bytes,
                              max_bin_len=limits.bin_bytes, max_ext_len=0, object_hook=counted, list_hook=counted)
    except _TooManyContainersError:
        raise ProtocolError("malformed", f"more than {limits.containers} arrays and maps in one message") from None
    except Exception as e:  # msgpack raises several types (ExtraData, ValueError, UnicodeDecodeError...)
        raise ProtocolError("malformed", f"not one valid msgpack value (within the limits of SPEC 3.5): "
                            f"{type(e).__name__}: {e}"[:300]) from None
    if not isinstance(msg, dict):  # an empty payload raised above; a map header gives a map
        raise ProtocolError("malformed", f"a message must be a msgpack map, got {type(msg).__name__}")
    return msg


def decode(payload: bytes, limits: Limits = MESSAGE_LIMITS) -> dict:
    """One payload -> its message (a dict with str keys; bin fields as bytes), validated.

    Raises ProtocolError with the code the runtime would reply: ``too_large`` (over
    MAX_MESSAGE_BYTES), ``malformed`` (not msgpack, not a map, beyond ``limits``, bad fields), and those of
    ``validate``. A client should ignore ``unknown_type`` (a newer runtime's message). The runtime reads
    requests with REQUEST_LIMITS."""
    return validate(unpack(payload, limits))


# --- encoding --------------------------------------------------------------------------------
_PACK64 = msgpack.Packer(use_bin_type=True, autoreset=True)
_PACK32 = msgpack.Packer(use_bin_type=True, use_single_float=True, autoreset=True)


def _pack(msg: dict) -> bytes:
    """msgpack map in ``msg``'s key order; float32 for the _FLOAT32_FIELDS, float64 elsewhere."""
    n = len(msg)
    out = [bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")]
    for key, value in msg.items():
        out.append(_PACK64.pack(key))
        out.append((_PACK32 if key in _FLOAT32_FIELDS else _PACK64).pack(value))
    return b"".join(out)


def _plain(x: Any) -> Any:
    """numpy scalars/arrays and bytes-likes -> the Python types msgpack packs."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytearray | memoryview):
        return bytes(x)
    return x


def encode_message(mtype: str, **fields: Any) -> bytes:
    """Any message type: ``{"v": [1, 0], "type": mtype, **fields}``, validated, packed.

    Raises ProtocolError (as ``validate``) for a message this side would refuse to read,
    and ProtocolError(too_large) for one over MAX_MESSAGE_BYTES."""
    msg = {"v": [PROTOCOL_MAJOR, PROTOCOL_MINOR], "type": mtype}
    msg.update({k: _plain(v) for k, v in fields.items()})
    validate(msg)
    payload = _pack(msg)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"{mtype} of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}", mtype)
    return payload


def encode_request(mtype: str, **fields: Any) -> bytes:
    """A client request (hello, open_stream, audio, end_stream, set_controls) for the runtime's ROUTER."""
    if mtype not in REQUEST_TYPES:
        raise ValueError(f"{mtype!r} is not a request; requests: {', '.join(REQUEST_TYPES)}")
    return encode_message(mtype, **fields)


def encode_reply(mtype: str, **fields: Any) -> bytes:
    """A runtime reply (hello, stream_opened, stream_ended, controls_set, error) for a client's DEALER."""
    if mtype not in REPLY_TYPES:
        raise ValueError(f"{mtype!r} is not a reply; replies: {', '.join(REPLY_TYPES)}")
    return encode_message(mtype, **fields)


def encode_error(
    code: str, message: str, request_type: str | None, *, stream: str | None = None, req: int | None = None
) -> bytes:
    """An ``error`` reply; ``message`` is cut to MAX_ERROR_MESSAGE_CHARS, and a ``request_type`` longer than
    MAX_ECHOED_TYPE_CHARS (no request's type: a client's junk) is sent as nil, so the reply stays small whatever
    the request held."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}; known: {', '.join(ERROR_CODES)}")
    extra: dict[str, Any] = {}
    if stream is not None and is_stream_id(stream):
        extra["stream"] = stream
    if req is not None:
        extra["req"] = req
    if request_type is not None and len(request_type) > MAX_ECHOED_TYPE_CHARS:
        request_type = None
    return encode_message("error", code=code, message=message[:MAX_ERROR_MESSAGE_CHARS],
                          request_type=request_type, **extra)


def hello_fields(runtime_version: str, fps: int = schema.FPS) -> dict[str, Any]:
    """The fields of the runtime's hello (schema of everything it publishes)."""
    return {
        "runtime": runtime_version,
        "fps": fps,
        "sample_rate": schema.SAMPLE_RATE,
        "blendshapes": list(schema.BLENDSHAPES),
        "head": list(schema.HEAD_ROTATION),
        "head_units": HEAD_UNITS,
        "head_convention": HEAD_CONVENTION,
        "gaze": list(schema.GAZE),
        "gaze_units": GAZE_UNITS,
        "gaze_convention": GAZE_CONVENTION,
        "max_message_bytes": MAX_MESSAGE_BYTES,
    }


def encode_hello(
    runtime_version: str, fps: int = schema.FPS, req: int | None = None, instance: str | None = None
) -> tuple[bytes, bytes]:
    """(HELLO_TOPIC, payload) of the runtime's hello; the payload is also the reply to a hello request.
    ``instance``: the runtime process's random id (a client sees a restart when it changes)."""
    fields = hello_fields(runtime_version, fps)
    if instance is not None:
        fields["instance"] = instance
    if req is not None:
        fields["req"] = req
    return HELLO_TOPIC, encode_message("hello", **fields)


def encode_frame(
    stream: str,
    seq: int,
    index: int,
    fps: int,
    t_audio: float,
    blendshapes: np.ndarray,
    head: np.ndarray,
    gaze: np.ndarray,
    captured_ns: int | None,
    published_ns: int,
    lookahead_ms: float,
    compute_ms: float,
    last: bool = False,
) -> tuple[bytes, bytes]:
    """(frame topic, payload) of one frame. ``blendshapes`` [52] in schema.BLENDSHAPES order."""
    bs = np.asarray(blendshapes, dtype="<f4")
    if bs.shape != (schema.NUM_BLENDSHAPES,):
        raise ValueError(f"blendshapes must have shape ({schema.NUM_BLENDSHAPES},), got {bs.shape}")
    h = np.asarray(head, dtype=np.float32)
    g = np.asarray(gaze, dtype=np.float32)
    if h.shape != (schema.NUM_HEAD,) or g.shape != (len(schema.GAZE),):
        raise ValueError(f"head must be [3] and gaze [4], got {h.shape} and {g.shape}")
    payload = encode_message(
        "frame",
        stream=stream,
        seq=int(seq),
        index=int(index),
        fps=int(fps),
        t_audio=float(t_audio),
        blendshapes=bs.tobytes(),
        head=h.tolist(),
        gaze=g.tolist(),
        captured_ns=None if captured_ns is None else int(captured_ns),
        published_ns=int(published_ns),
        lookahead_ms=float(np.float32(lookahead_ms)),
        compute_ms=float(np.float32(compute_ms)),
        last=bool(last),
    )
    return frame_topic(stream), payload


def frame_arrays(msg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blendshapes [52], head [3], gaze [4]) float32 arrays of a decoded frame."""
    bs = np.frombuffer(msg["blendshapes"], dtype="<f4").astype(np.float32)
    return bs, np.asarray(msg["head"], np.float32), np.asarray(msg["gaze"], np.float32)


def encode_stream_start(stream: str, source: str, published_ns: int, *, mode: str | None = None,
                        latency_ms: float | None = None) -> tuple[bytes, bytes]:
    extra: dict[str, Any] = {}
    if mode is not None:
        extra["mode"] = mode
    if latency_ms is not None:
        extra["latency_ms"] = float(latency_ms)
    return stream_topic(stream), encode_message("stream_start", stream=stream, source=source,
                                                published_ns=int(published_ns), **extra)


def encode_stream_end(stream: str, source: str, reason: str, frames: int, published_ns: int) -> tuple[bytes, bytes]:
    return stream_topic(stream), encode_message("stream_end", stream=stream, source=source, reason=reason,
                                                frames=int(frames), published_ns=int(published_ns))


def encode_stats(uptime_s: float, streams: dict[str, dict], drops: int, published_ns: int, *,
                 refused: dict[str, int] | None = None, capacity: int | None = None) -> tuple[bytes, bytes]:
    """``streams``: stream id -> {fps, latency_p50_ms, latency_p95_ms, frames, drops, ...}; ``refused``:
    error code -> requests refused with it; ``capacity``: live streams the runtime has room for."""
    plain = {sid: {k: _plain(v) for k, v in entry.items()} for sid, entry in streams.items()}
    extra: dict[str, Any] = {}
    if refused is not None:
        extra["refused"] = {k: int(v) for k, v in refused.items()}
    if capacity is not None:
        extra["capacity"] = int(capacity)
    return STATS_TOPIC, encode_message("stats", uptime_s=float(uptime_s), streams=plain, drops=int(drops),
                                       published_ns=int(published_ns), **extra)


# --- JSON form (golden vectors) ---------------------------------------------------------------
def to_json_compatible(x: Any) -> Any:
    """A decoded message in the golden vectors' JSON form: bin -> {"$bin": "<base64>"}."""
    import base64

    if isinstance(x, bytes):
        return {"$bin": base64.b64encode(x).decode("ascii")}
    if isinstance(x, dict):
        return {k: to_json_compatible(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_json_compatible(v) for v in x]
    return x
