"""The live preview: a local web page that draws a face from the frames, fed over a WebSocket.

``serve --preview [PORT]`` serves, on 127.0.0.1 only, with the ``websockets`` library on a thread
of its own (an asyncio loop):

    GET /             the page (ksdiff_runtime/assets/preview/index.html)
    GET /preview.js   its script: draws the chosen stream's latest frame on a canvas with
                      requestAnimationFrame, with the audio level and the latency
    /ws               the WebSocket feed: JSON text messages, one batch per message
    HEAD gets the headers GET would; any other method 405 (``_PreviewConnection``)

A batch is ``{"sent": <the server's time.time() when it sent the batch>, "items": [...]}``, the
items being the latest state of each thing, never a backlog:

    {"type": "hello", "blendshapes": [52 names], "head": [...], "gaze": [...]}   first, once
    {"type": "streams", "streams": [{"stream": id, "source": "file"}, ...]}      open streams, in start order
    {"type": "frame", "stream", "index", "fps", "t_audio", "bs": [52], "head": [3], "gaze": [4],
     "runtime_ms": published - captured in ms (null if unknown), "last"}      the latest frame of a stream
    {"type": "level", "stream", "t_audio", "rms_dbfs"}                          the latest audio level

``send`` runs on the runtime's io thread for every event and only hands it over: under a lock it
keeps the latest frame and level per stream and the set of open streams, and wakes the loop at
most once until the loop has taken them. The loop encodes each item once and merges it into
each page connection's mailbox (one entry per stream and kind, so at most a few per open
stream; an ended stream's frame stays until it is sent: a stream's last frame comes with its end);
each connection sends its mailbox as one batch when its previous send has gone. A slow
or stalled page therefore gets fewer, newer frames, never a queue: the io thread never waits on
it and memory does not grow (websockets' write buffer holds at most ``WRITE_LIMIT`` bytes; while
it is full the connection is not read, and one full for ``WRITE_STALL_TIMEOUT_S`` is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import errno
import http
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from ksdiff_runtime.assets import ASSETS
from ksdiff_runtime.events import AudioLevel, Event, Frame, StreamEnded, StreamStarted
from ksdiff_sdk import schema

from .udp import OutputConfigError

log = logging.getLogger("ksdiff_runtime.outputs")
# websockets logs every connection and HTTP response at INFO: only its warnings go to serve's log
_ws_log = logging.getLogger("ksdiff_runtime.outputs.preview.websockets")
_ws_log.setLevel(logging.WARNING)

DEFAULT_PORT = 5557  # next to the ZeroMQ ports (5555 PUB, 5556 ROUTER)
PAGE_DIR = ASSETS / "preview"
FEED_PATH = "/ws"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
         "/preview.js": ("preview.js", "text/javascript; charset=utf-8")}
WRITE_LIMIT = 64 * 1024  # bytes a page connection may have waiting in its write buffer before sends wait
# Beyond WRITE_LIMIT a connection's writes are paused, and so is its reading (the page never needs to send): what it
# sends then, pings included, waits in the kernel, unanswered. websockets answers each ping with a pong written without
# flow control, so a client that sent pings and never read made serve's memory grow without end (577 MiB in 20 s).
# A connection with more than this waiting anyway (websockets may resume reading on its own) is aborted.
MAX_WRITE_BUFFER = 16 * WRITE_LIMIT
# A connection whose writes stay paused this long is aborted: its peer reads nothing (a dead or frozen page, a program
# that only sends). websockets' keep-alive cannot close it (its ping waits for the write buffer to drain), so 32 of
# them held every page slot for good. A page that was merely frozen reconnects when it wakes.
WRITE_STALL_TIMEOUT_S = 10.0
# Pages (feeds on /ws) open at once; one more gets 503. A page is a browser tab or an OBS browser source of the
# one person running serve: a few are open, 32 is plenty. 300 were measured fine; the cap is there because a
# local program opening connections without end took all of serve's 1024 file descriptors (the soft limit
# most systems give), and with them ZeroMQ's: new subscribers got nothing, SDK clients timed out.
MAX_PAGES = 32
# TCP connections at once, of any kind (pages, fetches of the page and script, handshakes under way); one more
# is closed as soon as it is accepted, before its request is read. Bounds the preview's file descriptors.
MAX_CONNECTIONS = 2 * MAX_PAGES
REFUSED_LOG_S = 10.0  # refused connections and failed accepts are logged at most this often
MAX_REQUEST_LINE = 8192  # bytes read for a request's first line (websockets itself allows 8192 a line)
MAX_INCOMING_BYTES = 4096  # the page sends nothing; a client that does is cut off beyond this
START_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 0.5  # per connection at shutdown: serve stops within 2 s whatever a page does
STOP_TIMEOUT_S = 3.0


def _loopback_host(host: str) -> str:
    """The address to bind for ``host``; anything but a loopback address is refused."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise OutputConfigError(f"--preview: host {host!r} is not a loopback address; the preview page and its feed are "
                            "served to this machine only (127.0.0.1 or ::1)")


def _rounded(values: Any, digits: int) -> list[float]:
    return [round(float(v), digits) for v in values]


def frame_item(frame: Frame) -> dict[str, Any]:
    """The page's view of a frame (weights to 4 decimals, angles to 5: well below what a pixel shows)."""
    runtime_ms = None
    if frame.captured_ns is not None and frame.published_ns:
        runtime_ms = round((frame.published_ns - frame.captured_ns) / 1e6, 2)
    return {"type": "frame", "stream": frame.stream, "index": frame.index, "fps": frame.fps,
            "t_audio": round(float(frame.t_audio), 4), "bs": _rounded(frame.blendshapes, 4),
            "head": _rounded(frame.head, 5), "gaze": _rounded(frame.gaze, 5), "runtime_ms": runtime_ms,
            "last": bool(frame.last)}


def level_item(level: AudioLevel) -> dict[str, Any]:
    return {"type": "level", "stream": level.stream, "t_audio": round(float(level.t_audio), 4),
            "rms_dbfs": round(float(level.rms_dbfs), 1)}


HELLO_ITEM = {"type": "hello", "blendshapes": list(schema.BLENDSHAPES), "head": list(schema.HEAD_ROTATION),
              "gaze": list(schema.GAZE)}

Key = tuple[str, str]  # ("frame" | "level", stream) or ("hello" | "streams", "")


def _response(status: http.HTTPStatus, body: str | bytes, kind: str = "text/plain; charset=utf-8") -> Response:
    """An HTTP response that closes its connection (the page's files, errors)."""
    data = body.encode() if isinstance(body, str) else body
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Length", str(len(data))), ("Content-Type", kind),
                       ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
    return Response(status.value, status.phrase, headers, data)


class _PreviewConnection(ServerConnection):
    """websockets' connection, with methods other than GET answered here. websockets (17) hands any method
    to ``process_request`` and writes the whole response, so HEAD got a body, and it closes a request that
    has a body with no reply at all (curl -X POST -d: "Empty reply from server"). Here a request's first
    line is read first: a GET goes on to websockets; any other method is answered by
    ``PreviewOutput._other_method`` and the connection closed.

    Flow control: while the write buffer is over WRITE_LIMIT (websockets' writes paused), the connection is not read
    either, and it is aborted if that lasts WRITE_STALL_TIMEOUT_S or if over MAX_WRITE_BUFFER is waiting."""

    def __init__(self, output: PreviewOutput, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._output = output
        self._first_bytes: bytes | None = b""  # what came before the request line's end; None once it is known
        self._stall: asyncio.TimerHandle | None = None  # aborts the connection if its writes stay paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # websockets starts the connection's handler task
        # counted here, not in the server's record of handlers, whose name and shape change between websockets
        # versions (a set `handler_tasks` in 17, a dict `handlers` in 15 and 16)
        if len(self._output._connections) >= MAX_CONNECTIONS:
            transport.abort()  # its handler task sees the connection lost and ends
            self._output._refused(f"a connection was closed as it was accepted: {MAX_CONNECTIONS} are open already")
            return
        self._output._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._output._connections.discard(self)
        if self._stall is not None:
            self._stall.cancel()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The write buffer went over WRITE_LIMIT: stop reading too, and abort the connection if it stays so for
        WRITE_STALL_TIMEOUT_S."""
        super().pause_writing()
        self.transport.pause_reading()
        self._stall = self.loop.call_later(WRITE_STALL_TIMEOUT_S, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._first_bytes is None:
            super().data_received(data)  # may write (a pong for each ping)
            if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
                self.transport.abort()
            return
        head = self._first_bytes + data
        line, newline, _ = head.partition(b"\n")
        if not newline and len(head) < MAX_REQUEST_LINE:
            self._first_bytes = head  # the request line goes on in the next segment
            return
        self._first_bytes = None
        match = re.fullmatch(rb"([A-Z]+) (\S+) HTTP/1\.[01]\r?", line)
        if match is None or match[1] == b"GET":
            super().data_received(head)  # websockets answers it, or refuses what is not HTTP
            return
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.write(self._output._other_method(match[1].decode(), match[2].decode("latin-1")))
        self.transport.close()  # after the answer is written


@dataclass(eq=False)  # hashed by identity: pages live in a set
class _Page:
    """One page connection: its mailbox (latest item per key, as JSON text) and when it has mail."""

    ws: ServerConnection
    mailbox: dict[Key, str] = field(default_factory=dict)
    mail: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    batches: int = 0  # batches sent
    frames_sent: int = 0


class PreviewOutput:
    """The preview page's server: ``send`` hands events over; a thread of its own serves the page."""

    name = "preview"
    paced = True  # shows frames as they arrive (outputs/pacing.py)
    flag = "--preview"

    def __init__(self, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> None:
        if not 0 <= port <= 65535:
            raise OutputConfigError(f"--preview {port}: the port must be from 0 (any free port) to 65535")
        bind_host = _loopback_host(host)
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        try:
            # bound here, on the caller's thread: a port in use is an error before serve loads the model
            self._sock = socket.create_server((bind_host, port), family=family)
        except OSError as e:
            hint = " (another serve with --preview? choose another port, or 0 for any free one)" \
                if e.errno == errno.EADDRINUSE else ""
            raise OutputConfigError(f"--preview {port}: cannot listen on {bind_host}:{port}: "
                                    f"{e.strerror or e}{hint}") from None
        self.host = bind_host
        self.port: int = self._sock.getsockname()[1]
        shown = f"[{bind_host}]" if ":" in bind_host else bind_host
        self.url = f"http://{shown}:{self.port}/"
        self.destination = self.url
        names = {shown, "localhost", "127.0.0.1", "[::1]"}
        self._origins: list[str | None] = [None, *(f"http://{n}:{self.port}" for n in sorted(names))]
        try:
            self._files = {path: ((PAGE_DIR / name).read_bytes(), kind) for path, (name, kind) in PAGES.items()}
        except OSError as e:
            self._sock.close()
            raise OutputConfigError(f"--preview: the page is missing from the install: {e}") from None
        # handed over by send() (io thread) to the loop, under _lock
        self._lock = threading.Lock()
        self._new_frames: dict[str, Frame] = {}
        self._new_levels: dict[str, AudioLevel] = {}
        self._streams: dict[str, str] = {}  # open streams -> source, in start order
        self._streams_changed = False
        self._wake_pending = False
        self._closed = False
        # the loop's own state
        self._latest: dict[Key, Any] = {("hello", ""): HELLO_ITEM, ("streams", ""): []}  # what a new page gets
        self._open: set[str] = set()  # the open streams, as the loop last took them
        self._pages: set[_Page] = set()
        self._connections: set[_PreviewConnection] = set()  # every TCP connection open (not those refused)
        self.pages_served = 0
        self.refused = 0  # connections closed on accept and pages answered 503
        self._refused_logged = -REFUSED_LOG_S
        self.accept_failures = 0  # accepts that failed (no file descriptor, no memory)
        self._accept_failure_logged = -REFUSED_LOG_S
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ksdiff-preview", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._error is not None:
            self.close()
            raise OutputConfigError(f"--preview: the page server did not start: {self._error or 'timed out'}")
        log.info("preview: %s", self.url)

    # --- the io thread ---------------------------------------------------------------------------
    def send(self, event: Event) -> None:
        """Hand an event over (latest frame and level per stream, open streams); never waits on a page."""
        with self._lock:
            if self._closed:
                return
            if isinstance(event, Frame):
                self._new_frames[event.stream] = event
                if event.stream not in self._streams:  # a frame before its start: show it all the same
                    self._streams[event.stream] = "unknown"
                    self._streams_changed = True
            elif isinstance(event, AudioLevel):
                if event.stream not in self._streams:
                    return  # kept only for open streams: what is kept stays bounded by them
                self._new_levels[event.stream] = event
            elif isinstance(event, StreamStarted):
                self._streams[event.stream] = event.source
                self._streams_changed = True
            elif isinstance(event, StreamEnded):
                self._streams.pop(event.stream, None)
                self._new_levels.pop(event.stream, None)  # its frame not yet taken still goes: often its last
                self._streams_changed = True
            else:
                return  # stats and hello are for the ZeroMQ clients
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop has closed (close() raced this send): nothing to show
            self._loop.call_soon_threadsafe(self._take)

    # --- the preview thread ----------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(self._loop_error)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:  # reported to the starting thread, or logged
            self._error = e
            if self._ready.is_set():
                log.error("preview: the page server stopped: %s", e)
        finally:
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._serve_page, sock=self._sock, process_request=self._http, origins=self._origins,
                         max_size=MAX_INCOMING_BYTES, write_limit=WRITE_LIMIT, close_timeout=CLOSE_TIMEOUT_S,
                         logger=_ws_log, compression=None, create_connection=self._connection):
            self._ready.set()
            await self._stop.wait()
            # websockets' close waits for every handshake under way, each up to its open_timeout (10 s): a
            # connection that never sent its request (a browser's unused preconnection) held the stop 3 s and
            # more. Its close of an open page waits for the close frame to be written, for as long as the page's
            # writes are paused: a page that reads nothing held the stop 3 s. Both are closed now; open pages that
            # read what they are sent (nothing waits in their write buffer) are told the server is going away.
            for connection in list(self._connections):
                if connection.protocol.state is State.CONNECTING or connection.transport.get_write_buffer_size():
                    connection.transport.abort()

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """The page and its script over plain HTTP GET; ``/ws`` goes on to the WebSocket handshake."""
        path = request.path.split("?", 1)[0]
        if path != FEED_PATH:
            return self._page_response(path)
        # pages whose handshake is under way are not counted yet: MAX_CONNECTIONS bounds those
        if len(self._pages) >= MAX_PAGES:
            self._refused(f"a page was refused (503): {MAX_PAGES} pages are open already")
            return _response(http.HTTPStatus.SERVICE_UNAVAILABLE,
                             f"the preview serves at most {MAX_PAGES} pages at once and {MAX_PAGES} are open: "
                             "close one (each browser tab or viewer on /ws is one)\n")
        return None

    def _page_response(self, path: str) -> Response:
        """The answer to a GET of ``path`` (not the feed): the page, its script, or 404."""
        if path not in self._files:
            return _response(http.HTTPStatus.NOT_FOUND, "not found: the preview is at /\n")
        body, kind = self._files[path]
        return _response(http.HTTPStatus.OK, body, kind)

    def _other_method(self, method: str, target: str) -> bytes:
        """The answer to a request that is not a GET (``_PreviewConnection`` keeps it from websockets), serialized:
        HEAD gets what GET would without its body; any other method 405, with the methods allowed."""
        path = target.split("?", 1)[0]
        if method == "HEAD" and path != FEED_PATH:
            response = self._page_response(path)
        else:
            allowed = "GET" if path == FEED_PATH else "GET, HEAD"
            response = _response(http.HTTPStatus.METHOD_NOT_ALLOWED,
                                 f"method {method} not allowed: the preview answers {allowed} only\n")
            response.headers["Allow"] = allowed
        if method == "HEAD":  # the headers only (Content-Length still that of the body)
            response = Response(response.status_code, response.reason_phrase, response.headers, b"")
        return response.serialize()

    def _refused(self, what: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= REFUSED_LOG_S:
            self._refused_logged = now
            log.warning("preview: %s (%d refused so far; said at most every %.0f s)", what, self.refused,
                        REFUSED_LOG_S)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's exception handler: a failed accept is counted and logged at most every REFUSED_LOG_S; anything
        else goes to asyncio's own handler. asyncio (3.11) logs each failed accept with a traceback, up to 100 a
        wakeup, and schedules a retry 1 s later for each: 100,299 tracebacks (44 MB) in 30 s were measured with
        serve out of file descriptors. Retries that fire after the server closed its socket fail with
        "Invalid file descriptor" and are dropped."""
        exc = context.get("exception")
        if self._closed and isinstance(exc, ValueError) and "Invalid file descriptor" in str(exc):
            return
        if context.get("message") != "socket.accept() out of system resource":
            loop.default_exception_handler(context)
            return
        self.accept_failures += 1
        now = time.monotonic()
        if now - self._accept_failure_logged >= REFUSED_LOG_S:
            self._accept_failure_logged = now
            log.warning("preview: cannot accept a page connection: %s; tried again every second (%d failed so "
                        "far; said at most every %.0f s)", exc, self.accept_failures, REFUSED_LOG_S)

    def _connection(self, *args: Any, **kwargs: Any) -> ServerConnection:
        """websockets' factory for each accepted connection."""
        return _PreviewConnection(self, *args, **kwargs)

    def _take(self) -> None:
        """What send() handed over, into the latest state and every page's mailbox (one encoding per item)."""
        with self._lock:
            self._wake_pending = False
            frames, self._new_frames = self._new_frames, {}
            levels, self._new_levels = self._new_levels, {}
            streams = list(self._streams.items()) if self._streams_changed else None
            self._streams_changed = False
        changed: dict[Key, Any] = {}
        if streams is not None:
            changed[("streams", "")] = [{"stream": sid, "source": source} for sid, source in streams]
            self._open = {sid for sid, _ in streams}
            gone = [key for key in self._latest if key[1] and key[1] not in self._open]
            for key in gone:  # an ended stream's frame and level: a new page needs them no more
                del self._latest[key]
            for page in self._pages:  # an ended stream's level waiting for a page is dropped; its frame still goes
                for key in gone:      # (often its last: it comes with the stream's end or before)
                    if key[0] == "level":
                        page.mailbox.pop(key, None)
        changed.update({("level", sid): level for sid, level in levels.items()})
        changed.update({("frame", sid): frame for sid, frame in frames.items()})
        self._latest.update((key, value) for key, value in changed.items() if not key[1] or key[1] in self._open)
        if not self._pages:
            return  # encoded only when a page is open
        encoded = {key: text for key, value in changed.items() if (text := self._encode(key, value)) is not None}
        for page in self._pages:
            page.mailbox.update(encoded)
            page.mail.set()

    @staticmethod
    def _encode(key: Key, value: Any) -> str | None:
        """An item as JSON text; None for one that has no JSON (a non-finite value: the page would choke)."""
        if key[0] == "frame":
            item = frame_item(value)
        elif key[0] == "level":
            item = level_item(value)
        elif key[0] == "streams":
            item = {"type": "streams", "streams": value}
        else:
            item = value
        try:
            return json.dumps(item, separators=(",", ":"), allow_nan=False)
        except ValueError:
            return None

    async def _serve_page(self, ws: ServerConnection) -> None:
        """One page: everything there is now, then each change, one batch at a time."""
        snapshot = {key: self._encode(key, value) for key, value in self._latest.items()}
        page = _Page(ws, {key: text for key, text in snapshot.items() if text is not None})
        page.mail.set()
        self._pages.add(page)
        self.pages_served += 1
        watcher = asyncio.create_task(self._watch_close(page))
        try:
            while True:
                await page.mail.wait()
                page.mail.clear()
                if page.closed:
                    return
                items, page.mailbox = page.mailbox, {}
                if not items:
                    continue
                # stamped now, as it leaves: the page's latency counts a wait for a slow socket too
                batch = f'{{"sent":{time.time():.6f},"items":[{",".join(items.values())}]}}'
                await ws.send(batch)  # waits while this page's write buffer is full; its mailbox coalesces
                page.batches += 1
                page.frames_sent += sum(1 for key in items if key[0] == "frame")
        except ConnectionClosed:
            pass
        finally:
            self._pages.discard(page)
            watcher.cancel()

    @staticmethod
    async def _watch_close(page: _Page) -> None:
        """Read until the connection closes: the page sends nothing, but a viewer of one's own may (an ack, a
        choice). Unread, websockets stops reading after ``max_queue`` (16) messages, its keep-alive pongs go
        unseen with them and it closes the connection (1011) 40 s later. Messages are read and dropped; one
        over MAX_INCOMING_BYTES closes the connection (1009)."""
        with contextlib.suppress(ConnectionClosed):
            async for _ in page.ws:
                pass
        page.closed = True
        page.mail.set()

    # --- lifecycle -------------------------------------------------------------------------------
    def page_stats(self) -> dict[int, dict[str, int]]:
        """Per open page, by its TCP port: batches and frames sent, items waiting (for tests and benchmarks)."""
        return {p.ws.remote_address[1]: {"batches": p.batches, "frames_sent": p.frames_sent, "waiting": len(p.mailbox)}
                for p in list(self._pages)}

    def close(self) -> None:
        """Stop serving: pages are told the server is going away (they reconnect to the next serve)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        stop = self._stop
        if stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(stop.set)
        if self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("preview: the page server did not stop within %.0f s", STOP_TIMEOUT_S)
        self._sock.close()  # the server closed it already, unless it never started
        log.info("preview: stopped (%d page connection(s) served, %d refused)", self.pages_served, self.refused)
