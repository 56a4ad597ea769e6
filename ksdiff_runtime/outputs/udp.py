"""What the UDP outputs share: HOST:PORT parsing, a sender that never blocks, and stream choice.

Outputs run on the runtime's io thread (``Runtime(outputs=[...])`` calls ``send(event)`` for each
event, after the ZeroMQ PUB), so nothing here may wait: the socket is non-blocking and every
error (nothing listening, no route, a full send buffer) is counted and logged once, never raised.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import time

from ksdiff_runtime.events import Event
from ksdiff_sdk import Frame, protocol

log = logging.getLogger("ksdiff_runtime.outputs")

# "host:port" or "[ipv6]:port"; the host may be a name, an IPv4 or (in brackets) an IPv6 address
_HOST_PORT_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[^:]*)$")
# when the followed stream has sent nothing this long, the next stream to publish takes over
# (a stream that timed out or failed sends no `last` frame)
SILENT_STREAM_S = 1.0
# a named stream (--vmc-stream) that has not published while other streams did for this long is warned about, once
NO_SUCH_STREAM_S = 2.0
NAMED_STREAMS_MAX = 10  # streams named in that warning, at most
RECOVERED_AFTER_S = 5.0  # an outage ends, for the log, once datagrams went out this long without an error


class OutputConfigError(ValueError):
    """An output destination or option the runtime cannot use; the message says which and why."""


def parse_host_port(text: str, flag: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[::1]:port"``) -> (host, port). Syntax only: no name lookup.

    ``flag`` names the setting in the message (``--livelink``), so the user knows what to fix."""
    match = _HOST_PORT_RE.match(text.strip())
    if match is None:
        raise OutputConfigError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:11111 "
                                "(an IPv6 address in brackets: [::1]:11111)")
    host = match["v6"] or match["host"]
    port_text = match["port"]
    # ASCII digits only: str.isdigit() is also true of "²" (int() then raises) and of "١٢٣٤" (int() reads 1234)
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise OutputConfigError(f"{flag} {text!r}: the port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def resolve(host: str, port: int, flag: str) -> tuple[int, tuple]:
    """(address family, socket address) for a UDP destination; an unknown host is an error now,
    at start, rather than a silent stream of failed sends later."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as e:
        raise OutputConfigError(f"{flag} {host}:{port}: cannot resolve {host!r} ({e})") from None
    # prefer IPv4 when a name has both: receivers (Unreal, VSeeFace) usually listen on IPv4 only
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


class UdpSender:
    """Datagrams to one destination, never waiting and never raising on network errors.

    The socket is connected (a UDP connect only sets the default destination), so the kernel
    reports an ICMP "port unreachable" as ECONNREFUSED on a later send: that tells a user that
    nothing listens there (Unreal or VSeeFace not started, wrong port). If connecting fails (no
    route yet), it is retried on the next send."""

    def __init__(self, destination: str, flag: str, name: str) -> None:
        self.name = name
        self.host, self.port = parse_host_port(destination, flag)
        self.family, self.address = resolve(self.host, self.port, flag)
        self.sent = 0  # datagrams handed to the kernel
        self.errors = 0  # datagrams lost to an error (refused, unreachable, buffer full)
        self._failing = False  # an outage was logged and has not been seen to end
        self._last_error = 0.0  # time.monotonic() of the last error
        try:
            self._sock = socket.socket(self.family, socket.SOCK_DGRAM)
        except OSError as e:  # e.g. an IPv6 destination on a host without IPv6
            raise OutputConfigError(f"{flag} {destination}: cannot open a UDP socket: {e}") from None
        if self.family == socket.AF_INET:
            # a broadcast destination (255.255.255.255, or a LAN's own such as 192.168.1.255: VMC senders reach
            # every PC of a LAN so) is refused with EACCES without it; it changes nothing for other destinations
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self._sock.setblocking(False)
        self._connected = False
        self._closed = False

    @property
    def destination(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def send(self, payload: bytes) -> bool:
        """Send one datagram now or drop it; True if the kernel took it."""
        if self._closed:
            return False
        try:
            if not self._connected:
                self._sock.connect(self.address)
                self._connected = True
            self._sock.send(payload)
        except OSError as e:  # ECONNREFUSED, EAGAIN, ENETUNREACH, EHOSTUNREACH, EPERM (firewall), ...
            self._count_error(e)
            return False
        self.sent += 1
        if self._failing and time.monotonic() - self._last_error >= RECOVERED_AFTER_S:
            self._failing = False
            log.info("%s: sending to %s works again (%d datagrams lost so far)", self.name, self.destination,
                     self.errors)
        return True

    def _count_error(self, e: OSError) -> None:
        """Count it; log the start of each outage (not each error: at 30-60 frames a second that would flood the
        log). With nothing listening every other send fails on loopback (the kernel reports the previous datagram's
        ICMP "port unreachable"), and about one a second from a remote host (ICMP is rate-limited there), so an
        outage ends only once datagrams went out for RECOVERED_AFTER_S without one."""
        self.errors += 1
        self._last_error = time.monotonic()
        if not self._failing:
            self._failing = True
            hint = " (is the receiver running and listening on that port?)" if e.errno == errno.ECONNREFUSED else ""
            log.warning("%s: sending to %s failed: %s%s; frames are dropped while this lasts (errors counted, "
                        "logged when it starts and ends)", self.name, self.destination, e.strerror or e, hint)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sock.close()
        log.info("%s: %d packets sent to %s, %d lost to errors", self.name, self.sent, self.destination, self.errors)


def check_stream_id(stream: str | None, flag: str) -> None:
    if stream and not protocol.is_stream_id(stream):
        raise OutputConfigError(f"{flag} {stream!r} is not a stream id (1-64 of A-Z a-z 0-9 _ . -)")


class StreamChoice:
    """The one stream an output follows when it can show only one face (VMC, a fixed Live Link subject).

    A named stream: only that one. No name: the first stream that publishes, until it sends its
    last frame or stays silent for SILENT_STREAM_S; then the next stream to publish takes over.

    A named stream that has never published while others have for NO_SUCH_STREAM_S is warned
    about once (a typo or a wrong letter case sends nothing), naming the streams that do publish;
    when it then publishes, that is logged too. ``flag`` names the setting in those messages."""

    def __init__(self, stream: str | None = None, flag: str = "stream") -> None:
        self.fixed = stream or None
        self.current: str | None = self.fixed
        self.flag = flag
        self._last_seen = 0.0
        self._matched = False  # the named stream has published
        self._others: dict[str, None] = {}  # streams that published before it, in order (NAMED_STREAMS_MAX)
        self._others_since: float | None = None  # time.monotonic() of the first of their frames
        self._warned = False

    def accepts(self, frame: Frame) -> bool:
        if self.fixed is not None:
            if frame.stream == self.fixed:
                if not self._matched:
                    self._matched = True
                    if self._warned:
                        log.info("%s %r: the stream publishes now; its frames are sent", self.flag, self.fixed)
                return True
            if not self._matched and not self._warned:
                self._unmatched(frame.stream)
            return False
        now = time.monotonic()
        if self.current is None or (frame.stream != self.current and now - self._last_seen > SILENT_STREAM_S):
            self.current = frame.stream
        if frame.stream != self.current:
            return False
        self._last_seen = now
        if frame.last:
            self.current = None  # its stream ends: the next stream to publish is followed
        return True

    def _unmatched(self, stream: str) -> None:
        """A frame of another stream while the named one has never published: warn once it has lasted."""
        now = time.monotonic()
        if self._others_since is None:
            self._others_since = now
        if len(self._others) < NAMED_STREAMS_MAX:
            self._others[stream] = None
        if now - self._others_since < NO_SUCH_STREAM_S:
            return
        self._warned = True
        assert self.fixed is not None
        others = ", ".join(self._others)
        near = [s for s in self._others if s.casefold() == self.fixed.casefold()]
        hint = f"; did you mean {near[0]!r}?" if near else ""
        log.warning("%s %r: no stream of that id has published in %.0f s while others did (%s); nothing is sent "
                    "until it publishes (stream ids are case-sensitive%s)", self.flag, self.fixed,
                    now - self._others_since, others, hint)


class UdpOutput:
    """An output that sends one datagram per frame it accepts (other events are not its business). A
    subclass sets ``name`` and ``flag`` and says how a frame is encoded (``encode``); ``choice`` limits
    it to one stream."""

    name = "udp"
    flag = "--udp"
    paced = True  # shows frames as they arrive (outputs/pacing.py)

    def __init__(self, destination: str, choice: StreamChoice | None) -> None:
        self._choice = choice
        self._sender = UdpSender(destination, self.flag, self.name)

    @property
    def destination(self) -> str:
        return self._sender.destination

    @property
    def sent(self) -> int:
        return self._sender.sent

    @property
    def errors(self) -> int:
        return self._sender.errors

    def encode(self, frame: Frame) -> bytes:
        raise NotImplementedError

    def send(self, event: Event) -> None:
        if not isinstance(event, Frame) or (self._choice is not None and not self._choice.accepts(event)):
            return
        self._sender.send(self.encode(event))

    def close(self) -> None:
        self._sender.close()
