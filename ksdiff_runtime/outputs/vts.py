"""VTube Studio output: one face's parameters injected through VTube Studio's public WebSocket API.

VTube Studio (Live2D VTubing) takes tracking values from plugins over its API (ws://127.0.0.1:8001
by default; DenchiSoft/VTubeStudio's README documents every request). This output is such a plugin:

    connect -> APIStateRequest -> AuthenticationTokenRequest (once ever: the user clicks "Allow" in
    VTube Studio; the token is kept in the user's config directory) -> AuthenticationRequest (every
    session) -> ParameterCreationRequest x 52 (all at once, only with ``custom``) ->
    InjectParameterDataRequest (mode "set", faceFound true) for every frame, one awaiting its answer at a
    time, and the last values again at least every KEEPALIVE_S when no frame comes (VTube Studio drops
    a value it has not had for a second).

VTube Studio shows one model, so one stream goes out: ``stream`` if given, else the first stream
that publishes (``StreamChoice``, as VMC). ``send`` runs on the runtime's io thread: it only hands
the newest accepted frame to the output's own thread (an asyncio loop with the ``websockets``
client), which converts, sends, reconnects and authenticates; nothing there can stall the runtime.
docs/OUTPUTS.md documents the parameter mapping and the failure behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ksdiff_runtime.events import Event
from ksdiff_runtime.motion import EYE_PITCH_DOWN_RANGE, EYE_PITCH_UP_RANGE, EYE_YAW_RANGE
from ksdiff_sdk import Frame, schema

from .udp import OutputConfigError, StreamChoice, check_stream_id

log = logging.getLogger("ksdiff_runtime.outputs")

DEFAULT_PORT = 8001  # VTube Studio's default API port (Settings: "Start API (allow plugins)")
DEFAULT_URL = f"ws://127.0.0.1:{DEFAULT_PORT}"
API_NAME = "VTubeStudioPublicAPI"
API_VERSION = "1.0"
PLUGIN_NAME = "ksdiff-runtime"  # shown in VTube Studio's "allow this plugin?" popup (3-32 characters)
PLUGIN_DEVELOPER = "KSDiff runtime"  # ditto; both must match between the token and every authentication
TOKEN_FILE = "vtube_studio_token"

KEEPALIVE_S = 0.5  # re-send the last values this often without frames (VTube Studio forgets them after 1 s)
RETRY_S = 0.5  # reconnect this often while VTube Studio is away
STABLE_SESSION_S = 5.0  # a session that ran this long and ended is reconnected at once (VTube Studio restarting)
MAX_RETRY_S = 10.0  # sessions that end as soon as they started (an error each time) are retried ever less often
BUSY_POPUP_RETRY_S = 3.0  # a token popup is already open in VTube Studio: ask again this much later
OPEN_TIMEOUT_S = 3.0  # TCP + WebSocket handshake
REPLY_TIMEOUT_S = 5.0  # a request unanswered this long: the connection is dead, reconnect
# While the token popup waits for the user (no time limit: they may be away from VTube Studio's PC for minutes), an
# APIStateRequest goes out this often: VTube Studio answers requests while its popup is open (a second token request
# gets error 51), so one unanswered for REPLY_TIMEOUT_S is a dead connection (VTube Studio's PC asleep, a cable
# pulled), reconnected instead of waiting for ever; and the traffic keeps a NAT or firewall from dropping it as idle.
POPUP_PROBE_S = 10.0
CLOSE_WAIT_S = 0.5  # the WebSocket closing handshake at shutdown
CLOSE_TIMEOUT_S = 2.0  # close() waits this long for the thread
STOP_GRACE_S = 0.5  # beyond the closing handshake, what stopping a session that injects may take before it is cancelled
# Injections sent without an answer yet. One: the next values go out when VTube Studio has answered, and they are
# the newest then (older ones waiting are replaced), so a frame is shown about one answer's time after it came. A
# VTube Studio that takes 100 ms per injection showed frames 824 ms late with 8 (it queued 8), 220 ms with 2, 114 ms
# with 1 (p50, 30 fps); one that answers at once still gets every frame at 60 fps (tests/test_vts_leftovers.py).
MAX_IN_FLIGHT = 1
REMIND_S = 60.0  # a problem that lasts is logged again this often
LEFT_OUT_S = 30.0  # a parameter VTube Studio refuses by name is left out of the injections this long, then tried again

# The default VTube Studio input parameters this output drives: name -> (lowest, highest, rest value).
# The ranges are those of VTube Studio's own tracking inputs as its default model setup maps them to
# the Live2D standard parameters; angles are in degrees (its default mapping takes -30..30 to the
# model's -30..30; we clip only at +-90). ``vts_parameters`` clips every value into its range.
DEFAULT_PARAMETERS: dict[str, tuple[float, float, float]] = {
    "MouthOpen": (0.0, 1.0, 0.0),
    "MouthSmile": (0.0, 1.0, 0.5),  # 0 frown, 0.5 neutral, 1 smile (-> ParamMouthForm -1..1)
    "FaceAngleX": (-90.0, 90.0, 0.0),
    "FaceAngleY": (-90.0, 90.0, 0.0),
    "FaceAngleZ": (-90.0, 90.0, 0.0),
    "EyeOpenLeft": (0.0, 1.0, 1.0),
    "EyeOpenRight": (0.0, 1.0, 1.0),
    "EyeLeftX": (-1.0, 1.0, 0.0),
    "EyeLeftY": (-1.0, 1.0, 0.0),
    "EyeRightX": (-1.0, 1.0, 0.0),
    "EyeRightY": (-1.0, 1.0, 0.0),
    "Brows": (0.0, 1.0, 0.5),  # 0 lowered, 0.5 neutral, 1 raised (-> ParamBrowLY/RY -1..1)
    "CheekPuff": (0.0, 1.0, 0.0),
    "TongueOut": (0.0, 1.0, 0.0),
}
REST_VALUES: dict[str, float] = {name: rest for name, (_, _, rest) in DEFAULT_PARAMETERS.items()}

# Custom parameters (``custom``): one per ARKit weight, 0..1. VTube Studio's names are 4-32 letters
# and digits, unique across plugins and not a default name (its own CheekPuff, TongueOut), hence the prefix.
CUSTOM_PREFIX = "KSDiff"
CUSTOM_PARAMETERS: tuple[str, ...] = tuple(CUSTOM_PREFIX + n[0].upper() + n[1:] for n in schema.BLENDSHAPES)
MAX_CUSTOM_PER_PLUGIN = 100  # VTube Studio's limit
assert len(CUSTOM_PARAMETERS) <= MAX_CUSTOM_PER_PLUGIN
assert all(n.isascii() and n.isalnum() and 4 <= len(n) <= 32 for n in CUSTOM_PARAMETERS)

# VTube Studio's error ids (its Files/ErrorID.cs) that this output acts on
ERR_API_ACCESS_DEACTIVATED = 1
ERR_REQUIRES_AUTHENTICATION = 8
ERR_TOKEN_REQUEST_DENIED = 50  # the user clicked "Deny", or revoked the plugin's access later
ERR_TOKEN_REQUEST_ONGOING = 51  # VTube Studio already shows a popup for this plugin
ERR_CUSTOM_PARAM_LIMIT = (355, 356)  # per plugin, in total
ERR_INJECT_PARAM_NOT_FOUND = 453
ERR_INJECT_CONTROLLED_BY_OTHER_PLUGIN = 454

_I = schema.BLENDSHAPE_INDEX


def _clip(name: str, value: float) -> float:
    low, high, rest = DEFAULT_PARAMETERS[name]
    if not math.isfinite(value):
        return rest
    return min(high, max(low, value))


def vts_parameters(frame: Frame) -> dict[str, float]:
    """VTube Studio's default input parameters for one frame (docs/OUTPUTS.md, "VTube Studio").

    Each is defined by the Live2D standard parameter that VTube Studio's default model setup drives
    with it (FaceAngleX -> ParamAngleX, EyeOpenLeft -> ParamEyeLOpen, ...), so the model moves as
    our frame says: + FaceAngleX turns toward the screen's right (the face's own left, our +yaw),
    + FaceAngleY looks up (our -pitch), + FaceAngleZ tilts the head's top toward the screen's right
    (our -roll), + EyeX looks toward the screen's right, + EyeY up; Left/Right are the face's own
    eyes, as in ARKit's names."""
    w = frame.blendshapes

    def bs(name: str) -> float:
        return float(w[_I[name]])

    pitch, yaw, roll = (float(v) for v in frame.head)
    left_yaw, left_pitch, right_yaw, right_pitch = (float(v) for v in frame.gaze)

    def eye_y(pitch: float) -> float:  # gaze pitch (+ down) back to ARKit's look up - look down (+ up)
        return -pitch / (EYE_PITCH_DOWN_RANGE if pitch > 0 else EYE_PITCH_UP_RANGE)

    smile = (bs("mouthSmileLeft") + bs("mouthSmileRight")) / 2
    frown = (bs("mouthFrownLeft") + bs("mouthFrownRight")) / 2
    brows_up = (bs("browInnerUp") + (bs("browOuterUpLeft") + bs("browOuterUpRight")) / 2) / 2
    brows_down = (bs("browDownLeft") + bs("browDownRight")) / 2
    values = {
        # the jaw alone: subtracting mouthClose (lips closed over an open jaw) would close the lips on m/b/p but
        # followed jawOpen with correlation 0.947 on the bundled sample; it is a custom parameter (KSDiffMouthClose)
        "MouthOpen": bs("jawOpen"),
        "MouthSmile": 0.5 + 0.5 * (smile - frown),
        "FaceAngleX": math.degrees(yaw),
        "FaceAngleY": -math.degrees(pitch),
        "FaceAngleZ": -math.degrees(roll),
        "EyeOpenLeft": 1.0 - bs("eyeBlinkLeft"),
        "EyeOpenRight": 1.0 - bs("eyeBlinkRight"),
        "EyeLeftX": left_yaw / EYE_YAW_RANGE,
        "EyeLeftY": eye_y(left_pitch),
        "EyeRightX": right_yaw / EYE_YAW_RANGE,
        "EyeRightY": eye_y(right_pitch),
        "Brows": 0.5 + 0.5 * (brows_up - brows_down),
        "CheekPuff": bs("cheekPuff"),
        "TongueOut": bs("tongueOut"),
    }
    return {name: _clip(name, float(value)) for name, value in values.items()}


def custom_parameters(frame: Frame) -> dict[str, float]:
    """The custom parameters (``KSDiffJawOpen`` ...): each ARKit weight as it is, 0..1."""
    return {name: min(1.0, max(0.0, float(v))) if math.isfinite(float(v)) else 0.0
            for name, v in zip(CUSTOM_PARAMETERS, frame.blendshapes, strict=True)}


def _answer(reply: dict[str, Any]) -> dict[str, Any]:
    """An answer's data, or the _ApiError it is."""
    body = reply.get("data") or {}
    if reply.get("messageType") == "APIError":
        raise _ApiError(_error_id(body), str(body.get("message", "")))
    return body


def _error_id(body: dict[str, Any]) -> int:
    """An APIError's errorID, -1 where it is not a whole number (an answer we cannot read is no known error; before,
    an errorID of 1e400 stopped the output for good)."""
    value = body.get("errorID")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        return -1
    return int(value)


def _decode(raw: str | bytes) -> dict[str, Any]:
    """A message from VTube Studio: a JSON object, else ValueError (an answer we cannot read; the session is
    reconnected). JSON nested deeper than Python's recursion limit (a few kilobytes of ``[``) is such an answer too,
    not a RecursionError that no handler here expects."""
    try:
        message = json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise ValueError(f"a JSON {type(message).__name__}, not an object")
    return message


def parse_url(text: str, flag: str) -> tuple[str, str, int]:
    """``ws://HOST:PORT`` -> (url, host, port). Syntax only: no name lookup."""
    hint = f"expected a WebSocket URL like {DEFAULT_URL} (VTube Studio's API)"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise OutputConfigError(f"{flag} {text!r}: the port must be a number from 1 to 65535") from None
    if parts.scheme != "ws" or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment \
            or parts.username or parts.password:
        raise OutputConfigError(f"{flag} {text!r}: {hint}")
    if port is None or port == 0:
        raise OutputConfigError(f"{flag} {text!r}: give the port, e.g. {DEFAULT_URL}")
    host = parts.hostname
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"ws://{netloc}", host, port


def default_token_path() -> Path | None:
    """Where the token is kept: $XDG_CONFIG_HOME/ksdiff-runtime/ (else ~/.config/ksdiff-runtime/); None without a
    home directory (HOME unset and no passwd entry, as in some containers and services), where Path.home() raises."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if base and os.path.isabs(base):
        return Path(base) / "ksdiff-runtime" / TOKEN_FILE
    try:
        home = Path.home()
    except RuntimeError:
        return None
    return home / ".config" / "ksdiff-runtime" / TOKEN_FILE


class _ApiError(Exception):
    def __init__(self, error_id: int, message: str) -> None:
        super().__init__(f"error {error_id}: {message}")
        self.error_id = error_id
        self.message = message


class _RetryError(Exception):
    """End this connection and reconnect (after ``delay``), logging ``message`` under ``kind``."""

    def __init__(self, kind: str, message: str, delay: float = RETRY_S, level: int = logging.WARNING) -> None:
        super().__init__(message)
        self.kind, self.message, self.delay, self.level = kind, message, delay, level


class _GiveUpError(Exception):
    """Stop for good (the user denied access): retrying would only show popups or fail the same way."""


class VtsOutput:
    """One stream's frames as VTube Studio parameters, injected over its WebSocket API at ``url``."""

    name = "vts"
    paced = True  # shows frames as they arrive (outputs/pacing.py)
    flag = "--vts"

    def __init__(self, url: str = DEFAULT_URL, stream: str | None = None, custom: bool = False,
                 token_path: Path | str | None = None) -> None:
        self.url, host, port = parse_url(url, self.flag)
        check_stream_id(stream, "--vts-stream")
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise OutputConfigError(f"{self.flag} {url}: cannot resolve {host!r} ({e})") from None
        self.port = port
        self.stream = stream or None
        self.custom = custom
        self.token_path = Path(token_path) if token_path is not None else default_token_path()
        if self.token_path is None:
            # not a traceback that stops serve: the output works, the user is asked to allow it at every start
            log.warning("vts: no home directory to keep VTube Studio's token in (HOME is not set and this user has "
                        "no passwd entry): VTube Studio will ask to allow the plugin at every start. Set "
                        "XDG_CONFIG_HOME or HOME to a folder of this user's to keep it")
        self._private_folder = token_path is None  # the token's folder is ours (the user's config directory's)
        self.sent = 0  # InjectParameterDataRequests sent
        self.errors = 0  # API errors VTube Studio answered them with
        self.attempts = 0  # connections tried so far
        self.sessions = 0  # authenticated connections so far
        self._session_began = 0.0  # time.monotonic() when the last session was authenticated
        self._choice = StreamChoice(self.stream, "--vts-stream")
        self._lock = threading.Lock()
        self._pending: Frame | None = None  # the newest accepted frame, not yet taken by the thread
        self._values: dict[str, float] | None = None  # the last values sent (re-sent as keep-alive)
        self._token: str | None = None
        self._closed = False
        self._stopping = False
        self._injecting = False  # the inject loop runs (on the output's thread): stopping ends it, not a cancel
        self._problem: str | None = None  # the kind of trouble logged last (logged again on change)
        self._problem_logged = 0.0
        self._logged_errors: set[int | tuple[int, str]] = set()
        self._left_out: dict[str, float] = {}  # parameter -> time.monotonic() until which it is not sent (refused)
        self._resend = False  # send the values at once (a parameter was left out of a refused injection)
        self._session_error: _RetryError | None = None
        self._custom: tuple[str, ...] = ()  # the custom parameters created in this session
        self._in_flight = 0
        self._waiting_since: float | None = None
        self._request_n = 0
        self._wake: asyncio.Event | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._thread_main, name="ksdiff-vts", daemon=True)
        self._thread.start()

    @property
    def destination(self) -> str:
        return self.url

    # --- the io thread ------------------------------------------------------------------------
    def send(self, event: Event) -> None:
        """Keep the newest frame of the chosen stream for the output's thread; never waits."""
        if not isinstance(event, Frame) or not self._choice.accepts(event):
            return
        with self._lock:
            self._pending = event
        with contextlib.suppress(RuntimeError):  # the loop is closed: the output has stopped
            self._loop.call_soon_threadsafe(self._notify)

    def close(self) -> None:
        """Stop the output's thread (at most about CLOSE_TIMEOUT_S)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._stop)
        self._thread.join(timeout=CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("vts: the output's thread did not stop within %.0f s", CLOSE_TIMEOUT_S)
        log.info("vts: %d parameter updates sent to %s, %d refused", self.sent, self.url, self.errors)

    # --- the output's thread --------------------------------------------------------------------
    def _thread_main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a bug: said once, the runtime goes on without this output
            log.error("vts: the output stopped: %s: %s", type(e).__name__, e)
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _stop(self) -> None:
        self._stopping = True
        if self._main_task is None:
            return
        if self._injecting:
            # the inject loop sees _stopping and returns: the session ends with a normal close (1000), which
            # cancelling it would make an abnormal one; cancelled all the same should that take too long
            self._notify()
            self._loop.call_later(CLOSE_WAIT_S + STOP_GRACE_S, self._main_task.cancel)
        else:  # connecting, authenticating, waiting to retry: nothing to close cleanly
            self._main_task.cancel()

    async def _main(self) -> None:
        if self._stopping:
            return
        self._main_task = asyncio.current_task()
        self._wake = asyncio.Event()
        short_sessions = 0  # sessions in a row that ended within STABLE_SESSION_S
        while not self._stopping:
            sessions = self.sessions
            delay = RETRY_S
            self.attempts += 1
            try:
                async with connect(self.url, open_timeout=OPEN_TIMEOUT_S, close_timeout=CLOSE_WAIT_S,
                                   ping_interval=None, compression=None, proxy=None) as ws:
                    await self._session(ws)
            except _GiveUpError as e:
                log.error("vts: %s", e)
                return
            except _RetryError as e:
                self._report(e.kind, e.message, e.level)
                delay = e.delay
            except TimeoutError:
                self._report("timeout", f"{self.url} does not answer (a firewall, or not VTube Studio's API?); "
                             f"retrying every {RETRY_S:g} s")
            except ConnectionClosed as e:
                self._report("closed", f"VTube Studio closed the connection ({e}); reconnecting")
            except (InvalidHandshake, InvalidURI) as e:
                self._report("handshake", f"{self.url} is not VTube Studio's API ({e}); is the port right? "
                             f"Retrying every {RETRY_S:g} s")
            except ConnectionRefusedError:
                self._report("refused", f"nothing listens at {self.url}: is VTube Studio running with 'Start API' "
                             f"enabled on port {self.port}? Retrying every {RETRY_S:g} s")
            except OSError as e:  # no route, a name that stopped resolving, refused on every address, ...
                self._report("unreachable", f"cannot connect to {self.url} ({e}): is VTube Studio running with "
                             f"'Start API' enabled on port {self.port}? Retrying every {RETRY_S:g} s")
            except (ValueError, KeyError, TypeError, AttributeError) as e:  # an answer we cannot read
                self._report("protocol", f"unexpected answer from VTube Studio ({type(e).__name__}: {e}); "
                             "reconnecting")
            if self.sessions > sessions and delay == RETRY_S:
                if time.monotonic() - self._session_began >= STABLE_SESSION_S:
                    short_sessions, delay = 0, 0.0  # a session that ran has ended (VTube Studio restarting?): again
                else:  # ended as soon as it started, as it will again: not in a loop that takes a core
                    short_sessions += 1
                    delay = min(MAX_RETRY_S, RETRY_S * 2 ** (short_sessions - 1))
            if self._stopping:
                return
            await asyncio.sleep(delay)

    def _report(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        """Log a problem when it starts and then every REMIND_S while it lasts, never per retry."""
        now = time.monotonic()
        if kind != self._problem or now - self._problem_logged >= REMIND_S:
            log.log(level, "vts: %s", message)
            self._problem, self._problem_logged = kind, now

    def _envelope(self, message_type: str, data: dict[str, Any] | None = None) -> tuple[str, str]:
        self._request_n += 1
        request_id = f"ksdiff-{self._request_n}"
        message = {"apiName": API_NAME, "apiVersion": API_VERSION, "requestID": request_id,
                   "messageType": message_type}
        if data is not None:
            message["data"] = data
        return request_id, json.dumps(message)

    async def _call(self, ws: ClientConnection, message_type: str, data: dict[str, Any] | None = None,
                    timeout: float | None = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """Send one request and wait for its answer (other messages, e.g. events, are skipped)."""
        request_id, text = self._envelope(message_type, data)
        await ws.send(text)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    reply = _decode(await ws.recv())
                    if reply.get("requestID") != request_id:
                        continue
                    return _answer(reply)
        except TimeoutError:
            raise _RetryError("no_reply", f"VTube Studio did not answer {message_type} within {timeout:g} s; "
                              "reconnecting") from None

    async def _call_awaiting_user(self, ws: ClientConnection, message_type: str,
                                  data: dict[str, Any]) -> dict[str, Any]:
        """``_call`` for a request the user answers (the token popup): no time limit, but the connection is checked
        every POPUP_PROBE_S with an APIStateRequest, which must be answered within REPLY_TIMEOUT_S."""
        request_id, text = self._envelope(message_type, data)
        await ws.send(text)
        loop = asyncio.get_running_loop()
        probe_id: str | None = None  # the APIStateRequest awaiting its answer
        deadline = loop.time() + POPUP_PROBE_S  # the next probe, or the probe's answer at the latest
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    reply = _decode(await ws.recv())
            except TimeoutError:
                if probe_id is not None:
                    raise _RetryError("no_reply", f"VTube Studio stopped answering while its access popup was open "
                                      f"(nothing for {REPLY_TIMEOUT_S:g} s); reconnecting") from None
                probe_id, probe = self._envelope("APIStateRequest")
                await ws.send(probe)
                deadline = loop.time() + REPLY_TIMEOUT_S
                continue
            if probe_id is not None and reply.get("requestID") == probe_id:
                probe_id, deadline = None, loop.time() + POPUP_PROBE_S  # alive: the popup waits on
                continue
            if reply.get("requestID") != request_id:
                continue
            return _answer(reply)

    async def _call_all(self, ws: ClientConnection, message_type: str,
                        items: list[dict[str, Any]]) -> list[dict[str, Any] | _ApiError]:
        """Send one request per item at once and wait for all the answers, matched by requestID (the API lets requests
        overlap: each answer carries its request's ID). Each item's answer, or the error it got, in the items' order.
        Unanswered for REPLY_TIMEOUT_S since the last answer: the connection is dead."""
        waiting: dict[str, int] = {}
        for index, data in enumerate(items):
            request_id, text = self._envelope(message_type, data)
            waiting[request_id] = index
            await ws.send(text)
        answers: list[dict[str, Any] | _ApiError] = [{} for _ in items]
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S) as deadline:
                while waiting:
                    reply = _decode(await ws.recv())
                    index = waiting.pop(str(reply.get("requestID")), -1)
                    if index < 0:
                        continue  # an event, or an answer to nothing we wait for
                    deadline.reschedule(asyncio.get_running_loop().time() + REPLY_TIMEOUT_S)
                    try:
                        answers[index] = _answer(reply)
                    except _ApiError as e:
                        answers[index] = e
        except TimeoutError:
            raise _RetryError("no_reply", f"VTube Studio did not answer {len(waiting)} of {len(items)} "
                              f"{message_type}s within {REPLY_TIMEOUT_S:g} s; reconnecting") from None
        return answers

    async def _session(self, ws: ClientConnection) -> None:
        try:
            state = await self._call(ws, "APIStateRequest")
            if state.get("active") is False:
                raise _ApiError(ERR_API_ACCESS_DEACTIVATED, "API access is off")
            await self._authenticate(ws)
            names = await self._create_custom_parameters(ws) if self.custom else ()
        except _ApiError as e:
            if e.error_id == ERR_API_ACCESS_DEACTIVATED:
                raise _RetryError("api_off", "VTube Studio's plugin API is off: in VTube Studio open Settings and "
                                  f"turn on 'Start API (allow plugins)' on port {self.port}; waiting for it") from None
            raise _RetryError(f"api_error_{e.error_id}", f"VTube Studio refused a request ({e}); "
                              "reconnecting") from None
        self.sessions += 1
        self._session_began = time.monotonic()  # authenticated (the popup answered): the session runs from here
        if self._problem is not None:
            log.info("vts: connected to VTube Studio %s at %s again", state.get("vTubeStudioVersion", "?"), self.url)
        else:
            log.info("vts: connected to VTube Studio %s at %s", state.get("vTubeStudioVersion", "?"), self.url)
        self._problem = None
        await self._inject(ws, names)

    # --- authentication ---------------------------------------------------------------------------
    async def _authenticate(self, ws: ClientConnection) -> None:
        """The stored token, else (none, or VTube Studio refuses it) a new one the user approves once."""
        token = self._token or self._load_token()
        if token is not None:
            if await self._authenticate_with(ws, token):
                self._token = token
                return
            log.warning("vts: VTube Studio refused the stored token (access revoked, or another VTube Studio "
                        "installation); asking for a new one")
            self._token = None
            self._forget_token()
        token = await self._request_token(ws)
        self._save_token(token)  # the user has allowed the plugin: never ask again
        if not await self._authenticate_with(ws, token):
            self._forget_token()
            raise _GiveUpError("VTube Studio refused the token it has just issued; not asking again. Restart "
                               "serve to try once more")
        self._token = token

    async def _authenticate_with(self, ws: ClientConnection, token: str) -> bool:
        try:
            reply = await self._call(ws, "AuthenticationRequest", {
                "pluginName": PLUGIN_NAME, "pluginDeveloper": PLUGIN_DEVELOPER, "authenticationToken": token})
        except _ApiError as e:
            if e.error_id == ERR_TOKEN_REQUEST_DENIED:  # access revoked: the token is no good
                return False
            raise
        return bool(reply.get("authenticated"))

    async def _request_token(self, ws: ClientConnection) -> str:
        kept = (f"asked once; the token is then kept in {self.token_path}" if self.token_path is not None
                else "no home directory: the token is kept until serve stops")
        log.warning("vts: asking VTube Studio for access: click 'Allow' in the popup VTube Studio shows for the "
                    "plugin '%s' (%s)", PLUGIN_NAME, kept)
        try:
            reply = await self._call_awaiting_user(ws, "AuthenticationTokenRequest",
                                                   {"pluginName": PLUGIN_NAME, "pluginDeveloper": PLUGIN_DEVELOPER})
        except _ApiError as e:
            if e.error_id == ERR_TOKEN_REQUEST_DENIED:
                raise _GiveUpError(f"access denied in VTube Studio ({e.message}); not asking again, so no more "
                                   f"popups. To allow the plugin: restart serve with {self.flag} and click 'Allow' in "
                                   "VTube Studio's popup") from None
            if e.error_id == ERR_TOKEN_REQUEST_ONGOING:
                raise _RetryError("popup_open", "VTube Studio already shows an access popup for this plugin: "
                                  "click 'Allow' there", delay=BUSY_POPUP_RETRY_S) from None
            raise
        token = reply.get("authenticationToken")
        if not isinstance(token, str) or not token:
            raise ValueError("AuthenticationTokenResponse without a token")
        return token

    def _load_token(self) -> str | None:
        if self.token_path is None:
            return None
        try:
            token = self.token_path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            log.warning("vts: cannot read the stored token %s (%s); asking VTube Studio for a new one",
                        self.token_path, e)
            return None
        return token or None

    def _save_token(self, token: str) -> None:
        """Written atomically (a new file in the same folder, flushed to disk, renamed over the old one: a crash leaves
        the old token or the new one, never half of one), readable by the user only (0600 from its creation) in a 0700
        folder. The temporary file gets a new name with O_EXCL (mkstemp): a stale one, or a link planted in a folder
        that others could write to, is never written through."""
        path = self.token_path
        if path is None:
            return
        tmp: str | None = None
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._private_folder:
                # our own folder made by an older version (or by hand) with the umask's 0755: private too. Only that
                # one: a token path given to the output may live in any folder, which is not ours to change.
                with contextlib.suppress(OSError):
                    os.chmod(path.parent, 0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(token + "\n")
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename: not an empty file after a power cut
            os.replace(tmp, path)
            tmp = None
        except (OSError, UnicodeError) as e:
            log.warning("vts: cannot store the token in %s (%s): VTube Studio will ask again next time", path, e)
        finally:
            if tmp is not None:  # the write failed: no litter beside the token
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _forget_token(self) -> None:
        if self.token_path is not None:
            with contextlib.suppress(OSError):
                self.token_path.unlink()

    # --- parameters ---------------------------------------------------------------------------------
    async def _create_custom_parameters(self, ws: ClientConnection) -> tuple[str, ...]:
        """One custom parameter per ARKit weight (creating one that this plugin made before succeeds). All 52 requests
        go at once: one after the other, startup took 52 answers' time (5.2 s from a VTube Studio 100 ms away)."""
        answers = await self._call_all(ws, "ParameterCreationRequest", [
            {"parameterName": name, "explanation": f"ARKit {arkit} weight from ksdiff-runtime (0..1)",
             "min": 0, "max": 1, "defaultValue": 0}
            for name, arkit in zip(CUSTOM_PARAMETERS, schema.BLENDSHAPES, strict=True)])
        created = tuple(name for name, answer in zip(CUSTOM_PARAMETERS, answers, strict=True)
                        if not isinstance(answer, _ApiError))
        for name, answer in zip(CUSTOM_PARAMETERS, answers, strict=True):
            if not isinstance(answer, _ApiError):
                continue
            if answer.error_id in ERR_CUSTOM_PARAM_LIMIT:
                self._log_error_once(answer.error_id, f"VTube Studio's custom parameter limit is reached "
                                     f"({answer.message}); {len(created)} of {len(CUSTOM_PARAMETERS)} created, only "
                                     "those are sent")
            else:
                self._log_error_once(answer.error_id, f"custom parameter {name} not created ({answer}); it is not sent")
        return created

    def _take_frame(self) -> Frame | None:
        with self._lock:
            frame, self._pending = self._pending, None
        return frame

    async def _inject(self, ws: ClientConnection, custom: tuple[str, ...]) -> None:
        """Send each new frame's values at once, the last values again every KEEPALIVE_S without frames."""
        assert self._wake is not None
        self._in_flight, self._waiting_since, self._session_error = 0, None, None
        self._custom = custom
        self._left_out = {}  # a new session: custom parameters re-created, another plugin perhaps gone
        reader = asyncio.create_task(self._read_replies(ws))
        if self._values is not None:  # back after a reconnect: the last pose at once (what this session knows)
            self._values = {k: v for k, v in self._values.items() if k in DEFAULT_PARAMETERS or k in custom}
        dirty = self._values is not None
        last_sent = -math.inf
        self._injecting = True
        try:
            while True:
                self._wake.clear()
                if self._session_error is not None:
                    raise self._session_error
                now = time.monotonic()
                frame = self._take_frame()
                if frame is not None:
                    values = vts_parameters(frame)
                    if self._custom:
                        values.update((k, v) for k, v in custom_parameters(frame).items() if k in self._custom)
                    if self._left_out:
                        self._left_out = {k: t for k, t in self._left_out.items() if t > now}  # expired: try again
                        values = {k: v for k, v in values.items() if k not in self._left_out}
                    self._values, dirty = values, True
                if self._resend:
                    self._resend, dirty = False, True
                due = self._values is not None and (dirty or now - last_sent >= KEEPALIVE_S)
                capped = self._in_flight >= MAX_IN_FLIGHT
                if due and not capped:
                    await self._send_values(ws)
                    last_sent, dirty = now, False
                if self._stopping and not (due and capped):
                    return  # what was handed over before close() went out (a stream's last, neutral frame)
                if self._waiting_since is not None and now - self._waiting_since > REPLY_TIMEOUT_S:
                    raise _RetryError("no_reply", f"VTube Studio has not answered for {REPLY_TIMEOUT_S:g} s; "
                                      "reconnecting")
                if due and capped:
                    timeout = 0.05  # a reply frees a slot (and wakes us); meanwhile check now and then
                elif self._values is None:
                    timeout = KEEPALIVE_S
                else:
                    timeout = max(0.0, last_sent + KEEPALIVE_S - time.monotonic())
                # not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as the event is set (close()
                # right after a frame), and the closed output went on injecting
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
        finally:
            self._injecting = False
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _send_values(self, ws: ClientConnection) -> None:
        assert self._values is not None
        if not self._values:  # every parameter refused (VTube Studio answers an empty list with error 450)
            return
        _, text = self._envelope("InjectParameterDataRequest", {
            "faceFound": True, "mode": "set",
            "parameterValues": [{"id": name, "value": round(value, 6)} for name, value in self._values.items()]})
        await ws.send(text)
        self.sent += 1
        self._in_flight += 1
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()

    async def _read_replies(self, ws: ClientConnection) -> None:
        """Count the injections' answers; act on errors. Ends when the connection does."""
        assert self._wake is not None
        try:
            async for raw in ws:
                reply = _decode(raw)
                kind = reply.get("messageType")
                if kind not in ("InjectParameterDataResponse", "APIError"):
                    continue  # an event or something newer than this output
                self._in_flight = max(0, self._in_flight - 1)
                self._waiting_since = time.monotonic() if self._in_flight else None
                if kind == "APIError":
                    self._on_inject_error(reply.get("data") or {})
                self._wake.set()
            self._fail(_RetryError("closed", "VTube Studio closed the connection; reconnecting"))
        except ConnectionClosed as e:
            self._fail(_RetryError("closed", f"VTube Studio closed the connection ({e}); reconnecting"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._fail(_RetryError("protocol", f"unexpected answer from VTube Studio ({type(e).__name__}: {e}); "
                                   "reconnecting"))
        finally:
            self._wake.set()

    def _fail(self, error: _RetryError) -> None:
        """End the session with this error (the first one counts)."""
        if self._session_error is None:
            self._session_error = error

    def _on_inject_error(self, body: dict[str, Any]) -> None:
        self.errors += 1
        error_id, message = _error_id(body), str(body.get("message", ""))
        if error_id in (ERR_REQUIRES_AUTHENTICATION, ERR_TOKEN_REQUEST_DENIED):
            self._fail(_RetryError("revoked", f"VTube Studio no longer accepts this plugin ({message}); "
                                   "authenticating again"))
        elif error_id == ERR_API_ACCESS_DEACTIVATED:
            self._fail(_RetryError("api_off", "VTube Studio's plugin API was turned off: turn on 'Start API "
                                   f"(allow plugins)' in its Settings (port {self.port}); waiting for it"))
        elif error_id == ERR_INJECT_PARAM_NOT_FOUND and any(n in self._custom for n in self._named_parameters(message)):
            # the user deleted a custom parameter of ours, likely all of them (VTube Studio deletes them together when
            # the plugin's access is revoked): left out one refused injection at a time, they froze the face for as
            # many answers, and again as they came back; a new connection re-creates them all in one round trip
            self._fail(_RetryError("custom_deleted", f"VTube Studio no longer knows our custom parameters ({message}: "
                                   "deleted in VTube Studio?); connecting again to re-create them"))
        elif error_id in (ERR_INJECT_PARAM_NOT_FOUND, ERR_INJECT_CONTROLLED_BY_OTHER_PLUGIN) \
                and (named := self._named_parameters(message)):
            # VTube Studio refuses the whole injection for one parameter in it, and its message names that one
            # ("Parameter ParamX not found. ..."): sent again, it freezes the whole face; left out, the rest moves
            until = time.monotonic() + LEFT_OUT_S
            self._left_out.update((name, until) for name in named)
            if self._values is not None and any(k in self._values for k in named):
                self._values = {k: v for k, v in self._values.items() if k not in named}
                self._resend = True  # without the refused one, at once (not when a parameter no longer sent is named)
            why = "another plugin controls it" if error_id == ERR_INJECT_CONTROLLED_BY_OTHER_PLUGIN else \
                "it does not know it (deleted in VTube Studio?)"
            for name in named:
                self._log_error_once((error_id, name), f"VTube Studio refuses {name}: {why} (error {error_id}: "
                                     f"{message}); the other parameters are sent, {name} is tried again every "
                                     f"{LEFT_OUT_S:g} s")
        elif error_id == ERR_INJECT_PARAM_NOT_FOUND and self._custom:
            # a custom parameter was deleted in VTube Studio: send the defaults; the next session re-creates them
            self._custom = ()
            if self._values is not None:
                self._values = {k: v for k, v in self._values.items() if k in DEFAULT_PARAMETERS}
            self._log_error_once(error_id, f"VTube Studio does not know a custom parameter ({message}); sending the "
                                 "default parameters only until the next connection re-creates them")
        elif error_id == ERR_INJECT_CONTROLLED_BY_OTHER_PLUGIN:
            self._log_error_once(error_id, f"another plugin controls a parameter we send ({message}); close that "
                                 "plugin or stop it from setting the same parameters")
        else:
            self._log_error_once(error_id, f"VTube Studio refused parameter values: error {error_id}: {message}")

    def _named_parameters(self, message: str) -> list[str]:
        """The parameters this output sends that an error message names as words."""
        sent = [*DEFAULT_PARAMETERS, *self._custom]
        return [name for name in sent if re.search(rf"\b{re.escape(name)}\b", message)]

    def _log_error_once(self, error_id: int | tuple[int, str], message: str) -> None:
        if error_id not in self._logged_errors:
            self._logged_errors.add(error_id)
            log.warning("vts: %s (logged once)", message)
