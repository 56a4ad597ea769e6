"""Exceptions of the SDK: one class per protocol error code (SPEC 4.7), plus the client's own.

Catch ``KsdiffError`` for anything the runtime refused (its ``code`` is the wire code), a
subclass for one code (``BusyError``: retry later), ``StreamLost`` when the runtime that held
a stream went away, ``ClientClosedError`` when the client was closed under a waiting call.
"""

from __future__ import annotations

from typing import Any


class KsdiffError(Exception):
    """An ``error`` reply of the runtime (or the client's view of one).

    ``code`` is one of ``protocol.ERROR_CODES``; ``message`` the runtime's text (not meant to be
    parsed); ``stream`` and ``request_type`` when the runtime named them."""

    code: str = "internal"

    def __init__(self, code: str, message: str, *, stream: str | None = None, request_type: str | None = None) -> None:
        where = f" (stream {stream!r})" if stream else ""
        super().__init__(f"{code}: {message}{where}")
        self.code = code
        self.message = message
        self.stream = stream
        self.request_type = request_type

    @staticmethod
    def from_reply(msg: dict[str, Any]) -> KsdiffError:
        """The exception for a decoded ``error`` message; an unknown code counts as ``internal`` (SPEC 4.7)."""
        code = msg.get("code")
        cls = ERROR_CLASSES.get(code) if isinstance(code, str) else None
        if cls is None:
            cls, code = InternalError, "internal"
        return cls(
            str(code), str(msg.get("message", "")), stream=msg.get("stream"), request_type=msg.get("request_type")
        )


class MalformedError(KsdiffError):
    code = "malformed"


class TooLargeError(KsdiffError):
    code = "too_large"


class UnsupportedVersionError(KsdiffError):
    code = "unsupported_version"


class UnknownTypeError(KsdiffError):
    code = "unknown_type"


class UnknownStreamError(KsdiffError):
    code = "unknown_stream"


class BadAudioError(KsdiffError):
    code = "bad_audio"


class BusyError(KsdiffError):
    """Retry later: the stream id is taken, the runtime is at its measured capacity, or audio was pushed
    further ahead of real time than the runtime buffers (the message says which)."""

    code = "busy"


class ForbiddenError(KsdiffError):
    """The stream belongs to another client (protocol 1.1): only the client that opened it may feed or end it."""

    code = "forbidden"


class BadControlsError(KsdiffError):
    """Controls the runtime cannot apply (protocol 1.2): a value out of range, an unknown region or blendshape;
    the message names it."""

    code = "bad_controls"


class InternalError(KsdiffError):
    code = "internal"


ERROR_CLASSES: dict[str, type[KsdiffError]] = {
    cls.code: cls
    for cls in (
        MalformedError,
        TooLargeError,
        UnsupportedVersionError,
        UnknownTypeError,
        UnknownStreamError,
        BadAudioError,
        BusyError,
        ForbiddenError,
        BadControlsError,
        InternalError,
    )
}


class StreamLost(UnknownStreamError):  # noqa: N818 (the name users catch; "Error" would add nothing)
    """The runtime no longer has this stream: it restarted (new ``instance`` in its hello), shut down,
    or ended the stream itself, or this client's connection was remade (the network dropped it: the runtime keeps
    a stream for the connection that opened it, SPEC 1). ``reason``: ``"restart"``, ``"reconnect"``, or the
    ``stream_end`` reason (``"shutdown"``, ``"timeout"``, ``"error"``, ``"ended"``). Open a new stream to go on."""

    def __init__(self, stream: str, reason: str, message: str) -> None:
        super().__init__("unknown_stream", message, stream=stream)
        self.reason = reason


class ClientClosedError(Exception):
    """The Client was closed while a call was waiting (or a call was made after ``close()``)."""
