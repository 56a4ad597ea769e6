"""A fake VTube Studio for the tests: the server side of its public WebSocket API, written from the API's
published requests and responses (DenchiSoft/VTubeStudio README.md) and error ids (Files/ErrorID.cs),
not from the output's code. It runs on 127.0.0.1 (an ephemeral port unless given) on a thread of its own.

What it does, as VTube Studio documents it:

- every request needs ``apiName`` "VTubeStudioPublicAPI" and ``apiVersion`` "1.0" (errors 3, 4), a
  ``messageType`` (6, 7 unknown) and, if given, a ``requestID`` of 1-64 ASCII characters (5); every
  reply carries ``timestamp`` and the request's ``requestID``; errors are ``APIError`` with ``errorID``;
- ``APIStateRequest`` -> ``active``, ``vTubeStudioVersion``, ``currentSessionAuthenticated``;
- ``AuthenticationTokenRequest``: plugin and developer names of 3-32 characters (52, 53); the user's
  popup approves (a token) or denies (50); while a popup is open, another request gets 51;
- ``AuthenticationRequest``: token and names required (100-102); ``authenticated`` true only for a
  token issued to the same plugin and developer names;
- any other request before authentication: 8; with the API switched off (``api_active``): 1;
- ``ParameterCreationRequest``: names of 4-32 letters and digits (350), not a default parameter's
  name (354), min/max/default within +-1e6 (351), explanation under 256 characters (353), not
  another plugin's parameter (352), at most 100 per plugin (355) and 300 in all (356);
- ``InjectParameterDataRequest``: mode "set" or "add" (455), a non-empty ``parameterValues`` (450),
  known ids (453), finite values within +-1e6 (451), weights 0..1 (452).

Stricter than VTube Studio, to catch a bad mapping: a value for a default parameter outside the range
its tracking produces (``DEFAULT_PARAMETERS``) is refused with 451 too, and recorded in ``violations``.

The test controls: ``approve`` (True: allow; False: deny; None: the popup stays open), ``api_active``,
``start``/``stop`` (VTube Studio started and quit: tokens and custom parameters survive, as in its
config), ``drop_connections`` (sockets cut without a closing handshake), ``revoke`` (the user revokes
a plugin's access: its tokens and custom parameters go, and its sessions' requests get error 50),
``mute_injections`` (a VTube Studio that stops answering), ``replace_once`` (the next request of a type is
answered with this text instead: a broken VTube Studio, or another program on its port), and ``wait_for``.
Added for tests/test_vts_leftovers.py: ``busy_s`` (a slow VTube Studio: each request of a type holds the
connection this long before it is handled, one at a time), ``latency_s`` (a far VTube Studio: each answer of a
type comes this long after its request, requests overlapping), ``refuse_ids`` (injections that carry one of these
ids are answered with that errorID), ``next_token`` (the tokens' text), ``answer_popup`` (the user clicks in
an open popup, however late) and ``vanish`` (the peer goes silent without closing: reads nothing, answers
nothing, not even pings).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

API_NAME = "VTubeStudioPublicAPI"
VERSION = "1.28.0"

# VTube Studio's default input parameters (its wiki, "VTS Model Settings") with the range its own
# tracking gives them; angles in degrees.
DEFAULT_PARAMETERS: dict[str, tuple[float, float]] = {
    "FacePositionX": (-15, 15), "FacePositionY": (-15, 15), "FacePositionZ": (-15, 15),
    "FaceAngleX": (-90, 90), "FaceAngleY": (-90, 90), "FaceAngleZ": (-90, 90),
    "MouthSmile": (0, 1), "MouthOpen": (0, 1), "Brows": (0, 1),
    "MousePositionX": (-1, 1), "MousePositionY": (-1, 1), "TongueOut": (0, 1),
    "EyeOpenLeft": (0, 1), "EyeOpenRight": (0, 1),
    "EyeLeftX": (-1, 1), "EyeLeftY": (-1, 1), "EyeRightX": (-1, 1), "EyeRightY": (-1, 1),
    "CheekPuff": (0, 1), "BrowLeftY": (0, 1), "BrowRightY": (0, 1),
    "VoiceFrequency": (0, 1), "VoiceVolume": (0, 1), "VoiceVolumePlusMouthOpen": (0, 1),
    "VoiceFrequencyPlusMouthSmile": (0, 1), "MouthX": (-1, 1), "FaceAngry": (0, 1),
}
MAX_CUSTOM_PER_PLUGIN = 100
MAX_CUSTOM_TOTAL = 300


@dataclass
class Injection:
    t: float  # time.monotonic() when it arrived
    connection: int  # which connection sent it (1, 2, ...)
    values: dict[str, float]
    face_found: bool
    mode: str


@dataclass
class _Session:
    connection: int
    plugin: tuple[str, str] | None = None  # (pluginName, pluginDeveloper) once authenticated
    revoked: bool = False


@dataclass
class _State:
    requests: list[tuple[float, int, str, dict[str, Any]]] = field(default_factory=list)  # (t, connection, type, data)
    injections: list[Injection] = field(default_factory=list)
    created: list[str] = field(default_factory=list)  # every successful ParameterCreationRequest, in order
    errors: list[tuple[str, int]] = field(default_factory=list)  # (request type, errorID) answered
    violations: list[tuple[str, float]] = field(default_factory=list)
    authentications: list[tuple[int, bool]] = field(default_factory=list)  # (connection, authenticated)
    close_codes: list[int | None] = field(default_factory=list)  # each ended connection's close code (None: none)
    connections: int = 0


class _Error(Exception):
    def __init__(self, error_id: int, message: str) -> None:
        super().__init__(message)
        self.error_id, self.message = error_id, message


class FakeVTubeStudio:
    def __init__(self, port: int = 0, approve: bool | None = True, api_active: bool = True) -> None:
        self.port = port
        self.approve = approve
        self.api_active = api_active
        self.mute_injections = False
        self.refuse_injections = False  # answer every parameter injection with an error (the session ends there)
        self.error_id: Any = None  # when set, every APIError carries this errorID (a broken VTube Studio)
        self.replace_once: dict[str, str] = {}  # request type -> the text sent instead of its next answer
        self.busy_s: dict[str, float] = {}  # request type -> how long handling one takes (serially, per connection)
        self.latency_s: dict[str, float] = {}  # request type -> how long after the request its answer goes out
        self.refuse_ids: dict[str, int] = {}  # parameter id -> the errorID an injection carrying it gets
        self.popup_requests = 0  # AuthenticationTokenRequests that opened a popup
        self.next_token: str | None = None  # the text of the tokens issued (else a new hex UUID each)
        self.tokens: dict[str, tuple[str, str]] = {}  # token -> (plugin, developer), kept across restarts
        self.custom: dict[str, tuple[str, str]] = {}  # custom parameter -> the plugin that made it
        self.state = _State()
        self._changed = threading.Condition()
        self._popup_open = False
        self._popup: tuple[ServerConnection, str, tuple[str, str]] | None = None  # (connection, requestID, plugin)
        self._later: set[asyncio.Future[None]] = set()  # answers on their way (latency_s)
        self._current: ServerConnection | None = None  # the connection whose request is being handled
        self._request_id = ""  # that request's requestID
        self._server: Server | None = None
        self._connections: set[ServerConnection] = set()
        self._sessions: list[_Session] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-vts", daemon=True)
        self._thread.start()
        self.start()

    # --- test controls ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Listen (again, on the same port after a stop); returns the time.monotonic() it listens from."""
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return time.monotonic()

    def stop(self) -> float:
        """VTube Studio quits: the port closes, every connection is cut. Returns when it happened."""
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        return time.monotonic()

    def drop_connections(self) -> float:
        """Cut every connection without a closing handshake (the server keeps listening)."""
        asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(10)
        return time.monotonic()

    def answer_popup(self, allow: bool) -> None:
        """The user clicks 'Allow' (or 'Deny') in the open popup; the answer goes to the connection that asked."""

        async def answer() -> None:
            popup, self._popup, self._popup_open = self._popup, None, False
            assert popup is not None, "no popup is open"
            ws, request_id, plugin = popup
            if allow:
                token = self.next_token or uuid.uuid4().hex
                self.tokens[token] = plugin
                reply = self._response(request_id, "AuthenticationTokenResponse", {"authenticationToken": token})
            else:
                reply = self._response(request_id, "APIError", {"errorID": 50, "message": "User has denied API access"})
            await ws.send(json.dumps(reply))

        asyncio.run_coroutine_threadsafe(answer(), self._loop).result(10)

    def vanish(self) -> float:
        """Every connection goes silent without closing (VTube Studio's PC sleeps, a network cable is pulled): nothing
        is read or answered any more, pings included. The popup goes with it; the server keeps listening."""

        def vanish() -> None:
            for ws in self._connections:
                ws.transport.pause_reading()
            self._popup, self._popup_open = None, False

        self._loop.call_soon_threadsafe(vanish)
        return time.monotonic()

    def revoke(self, plugin: tuple[str, str]) -> None:
        """The user revokes the plugin's access in VTube Studio."""

        def revoke() -> None:
            self.tokens = {t: p for t, p in self.tokens.items() if p != plugin}
            self.custom = {n: p for n, p in self.custom.items() if p != plugin}
            for session in self._sessions:
                if session.plugin == plugin:
                    session.revoked = True

        self._loop.call_soon_threadsafe(revoke)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def wait_for(self, predicate: Callable[[_State], bool], timeout: float) -> bool:
        """Wait until predicate(state) holds (checked whenever the state changes), at most timeout seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.state), timeout)

    def count(self, message_type: str) -> int:
        with self._changed:
            return sum(1 for _, _, kind, _ in self.state.requests if kind == message_type)

    def injections(self) -> list[Injection]:
        with self._changed:
            return list(self.state.injections)

    # --- the server -------------------------------------------------------------------------------
    async def _start(self) -> None:
        if self._server is None:
            self._server = await serve(self._handle, "127.0.0.1", self.port, compression=None)
            self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=False)
            await self._drop()
            await self._server.wait_closed()
            self._server = None

    async def _drop(self) -> None:
        for ws in list(self._connections):
            ws.transport.abort()
        self._popup_open = False

    async def _handle(self, ws: ServerConnection) -> None:
        with self._changed:
            self.state.connections += 1
            session = _Session(self.state.connections)
            self._changed.notify_all()
        self._sessions.append(session)
        self._connections.add(ws)
        try:
            async for raw in ws:
                kind = self._peek_type(raw)
                busy = self.busy_s.get(kind, 0.0)
                if busy > 0:  # a slow VTube Studio: this request holds up the ones behind it
                    await asyncio.sleep(busy)
                self._current = ws
                reply = self._reply(session, raw)
                if reply is None:
                    continue
                text = reply if isinstance(reply, str) else json.dumps(reply)
                latency = self.latency_s.get(kind, 0.0)
                if latency > 0:  # a far VTube Studio: the answer is on its way while the next request is handled
                    asyncio.get_running_loop().call_later(latency, self._send_later, ws, text)
                else:
                    await ws.send(text)
        except ConnectionClosed:
            pass
        finally:
            self._connections.discard(ws)
            with self._changed:
                self.state.close_codes.append(ws.close_code)
                self._changed.notify_all()

    @staticmethod
    def _peek_type(raw: str | bytes) -> str:
        try:
            request = json.loads(raw)
        except (ValueError, RecursionError):
            return "?"
        return str(request.get("messageType")) if isinstance(request, dict) else "?"

    def _send_later(self, ws: ServerConnection, text: str) -> None:
        async def send() -> None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(text)

        task = asyncio.ensure_future(send())
        self._later.add(task)  # kept until done: the loop holds only a weak reference
        task.add_done_callback(self._later.discard)

    def _reply(self, session: _Session, raw: str | bytes) -> dict[str, Any] | str | None:
        request_id = str(uuid.uuid4())
        kind = "?"
        try:
            try:
                request = json.loads(raw)
                assert isinstance(request, dict)
            except (ValueError, AssertionError):
                raise _Error(2, "JSON invalid") from None
            if "requestID" in request:
                rid = request["requestID"]
                if not (isinstance(rid, str) and 1 <= len(rid) <= 64 and rid.isascii()):
                    raise _Error(5, "requestID invalid")
                request_id = rid
            self._request_id = request_id
            if request.get("apiName") != API_NAME:
                raise _Error(3, "apiName invalid")
            if request.get("apiVersion") != "1.0":
                raise _Error(4, "apiVersion invalid")
            kind = request.get("messageType") or ""
            if not kind:
                raise _Error(6, "messageType missing or empty")
            data = request.get("data") or {}
            with self._changed:
                self.state.requests.append((time.monotonic(), session.connection, kind, data))
                self._changed.notify_all()
            replaced = self.replace_once.pop(kind, None)
            if replaced is not None:
                return replaced
            handler = getattr(self, f"_on_{kind}", None)
            if handler is None:
                raise _Error(7, f"unknown request type {kind}")
            if kind == "APIStateRequest":
                return self._response(request_id, "APIStateResponse", handler(session, data))
            if not self.api_active:
                raise _Error(1, "API access deactivated")
            if kind not in ("AuthenticationTokenRequest", "AuthenticationRequest"):
                if session.revoked:
                    raise _Error(50, "User has denied API access for your plugin.")
                if session.plugin is None:
                    raise _Error(8, "request requires authentication")
            body = handler(session, data)
            if body is None or (kind == "InjectParameterDataRequest" and self.mute_injections):
                return None  # the popup stays open, or VTube Studio hangs: no answer
            return self._response(request_id, kind.replace("Request", "Response"), body)
        except _Error as e:
            with self._changed:
                self.state.errors.append((kind, e.error_id))
                self._changed.notify_all()
            error_id = e.error_id if self.error_id is None else self.error_id
            return self._response(request_id, "APIError", {"errorID": error_id, "message": e.message})

    @staticmethod
    def _response(request_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"apiName": API_NAME, "apiVersion": "1.0", "timestamp": int(time.time() * 1000),
                "requestID": request_id, "messageType": kind, "data": data}

    def _on_APIStateRequest(self, session: _Session, data: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {"active": self.api_active, "vTubeStudioVersion": VERSION,
                "currentSessionAuthenticated": session.plugin is not None}

    def _on_AuthenticationTokenRequest(self, session: _Session, data: dict[str, Any]) -> dict[str, Any] | None:  # noqa: N802
        name, developer = data.get("pluginName"), data.get("pluginDeveloper")
        if not (isinstance(name, str) and 3 <= len(name) <= 32):
            raise _Error(52, "plugin name invalid")
        if not (isinstance(developer, str) and 3 <= len(developer) <= 32):
            raise _Error(53, "developer name invalid")
        if self._popup_open:
            raise _Error(51, "a token request is currently ongoing")
        if self.approve is None:
            self._popup_open = True
            assert self._current is not None
            self._popup = (self._current, self._request_id, (name, developer))
            self.popup_requests += 1
            return None
        if not self.approve:
            raise _Error(50, "User has denied API access for your plugin.")
        token = self.next_token or uuid.uuid4().hex
        self.tokens[token] = (name, developer)
        return {"authenticationToken": token}

    def _on_AuthenticationRequest(self, session: _Session, data: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        token = data.get("authenticationToken")
        if not token:
            raise _Error(100, "authenticationToken missing")
        if not data.get("pluginName"):
            raise _Error(101, "pluginName missing")
        if not data.get("pluginDeveloper"):
            raise _Error(102, "pluginDeveloper missing")
        plugin = (data["pluginName"], data["pluginDeveloper"])
        ok = self.tokens.get(token) == plugin
        session.plugin = plugin if ok else None
        with self._changed:
            self.state.authentications.append((session.connection, ok))
            self._changed.notify_all()
        return {"authenticated": ok, "reason": "Token valid." if ok else "Token invalid."}

    def _on_ParameterCreationRequest(self, session: _Session, data: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        name = data.get("parameterName")
        if not (isinstance(name, str) and name.isascii() and name.isalnum() and 4 <= len(name) <= 32):
            raise _Error(350, f"parameter name invalid: {name!r}")
        if name.lower() in {n.lower() for n in DEFAULT_PARAMETERS}:
            raise _Error(354, f"{name} is a default parameter's name")
        for key in ("min", "max", "defaultValue"):
            value = data.get(key)
            if not (isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= 1e6):
                raise _Error(351, f"{key} invalid")
        if len(data.get("explanation") or "") >= 256:
            raise _Error(353, "explanation too long")
        owner = self.custom.get(name)
        if owner is not None and owner != session.plugin:
            raise _Error(352, f"{name} was created by another plugin")
        if owner is None:
            if sum(1 for p in self.custom.values() if p == session.plugin) >= MAX_CUSTOM_PER_PLUGIN:
                raise _Error(355, "custom parameter limit per plugin exceeded")
            if len(self.custom) >= MAX_CUSTOM_TOTAL:
                raise _Error(356, "custom parameter limit exceeded")
        assert session.plugin is not None
        self.custom[name] = session.plugin
        with self._changed:
            self.state.created.append(name)
            self._changed.notify_all()
        return {"parameterName": name}

    def _on_InjectParameterDataRequest(self, session: _Session, data: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        if self.refuse_injections:
            raise _Error(8, "request requires authentication")
        mode = data.get("mode") or "set"
        if mode not in ("set", "add"):
            raise _Error(455, f"mode {mode!r} unknown")
        items = data.get("parameterValues")
        if not items:
            raise _Error(450, "no data provided")
        for item in items:  # a parameter VTube Studio refuses refuses the whole request (its README)
            if isinstance(item, dict) and item.get("id") in self.refuse_ids:
                error_id, pid = self.refuse_ids[item["id"]], item["id"]
                raise _Error(error_id, f"Parameter {pid} is currently controlled by another plugin." if error_id == 454
                             else f"Parameter {pid} not found. Did you create it yet?" if error_id == 453
                             else f"parameter {pid} refused (the test's refuse_ids)")
        values: dict[str, float] = {}
        for item in items:
            pid, value = item.get("id"), item.get("value")
            if pid not in DEFAULT_PARAMETERS and pid not in self.custom:
                raise _Error(453, f"parameter {pid!r} not found")
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                    and abs(value) <= 1e6):
                raise _Error(451, f"value for {pid} invalid")
            if "weight" in item and not (isinstance(item["weight"], int | float) and 0 <= item["weight"] <= 1):
                raise _Error(452, f"weight for {pid} invalid")
            if pid in DEFAULT_PARAMETERS:
                low, high = DEFAULT_PARAMETERS[pid]
                if not low <= value <= high:
                    with self._changed:
                        self.state.violations.append((pid, value))
                    raise _Error(451, f"value {value} for {pid} outside {low}..{high} (the fake's stricter check)")
            values[pid] = float(value)
        with self._changed:
            self.state.injections.append(Injection(time.monotonic(), session.connection, values,
                                                   data.get("faceFound") is True, mode))
            self._changed.notify_all()
        return {}


# --- what the tests of the VTube Studio output share (tests/test_vts.py, tests/test_vts_leftovers.py) ----------
WAIT_S = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    """For state the tests cannot be notified of (an output's counters, a file): checked every 10 ms."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def authenticated(n: int = 1) -> Callable[[_State], bool]:
    """For ``FakeVTubeStudio.wait_for``: ``n`` sessions authenticated."""
    return lambda s: sum(ok for _, ok in s.authentications) >= n
