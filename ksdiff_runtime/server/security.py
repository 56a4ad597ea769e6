"""Who may talk to the runtime: loopback by default, CurveZMQ beyond it.

On loopback (127.0.0.0/8, ::1, localhost) and local transports (ipc://, inproc://) only programs on
this machine reach the sockets. Anything else (0.0.0.0, a LAN address, an interface name) is
reachable from the network, so the runtime requires CurveZMQ there: the server's key pair encrypts
both sockets, and a ZAP handler (pyzmq's ``ThreadAuthenticator``) lets in only clients whose public
keys are in the authorised folder. A client with another key, or that expects another server key,
fails the handshake and never gets a message, so nothing leaks. ``--insecure-lan`` allows a
plain-text bind beyond loopback on purpose, with a warning.

Keys are ZeroMQ certificate files (``ksdiff-runtime keys``): ``NAME.key`` (public) and
``NAME.key_secret`` (both keys).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("ksdiff_runtime.server")

ZAP_DOMAIN = "ksdiff"


class SecurityError(ValueError):
    """Keys or endpoints the runtime cannot serve safely with; the message says what to do."""


def is_local(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: tcp on a loopback address, ipc, inproc."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name: reachable from elsewhere
        return False


@dataclass(frozen=True)
class CurveKeys:
    """The server's key pair and the folder of authorised client public keys."""

    public: bytes
    secret: bytes
    clients: Path

    @classmethod
    def load(cls, secret_key_file: str | Path, clients_dir: str | Path) -> CurveKeys:
        if not zmq.has("curve"):
            raise SecurityError("this libzmq was built without CURVE support; cannot serve with keys")
        path, clients = Path(secret_key_file), Path(clients_dir)
        if not path.is_file():
            raise SecurityError(f"server key file not found: {path} (make one with `ksdiff-runtime keys server`)")
        try:
            public, secret = zmq.auth.load_certificate(str(path))
        except (ValueError, OSError) as e:
            raise SecurityError(f"{path} is not a ZeroMQ certificate: {e}") from None
        if secret is None:
            raise SecurityError(f"{path} holds no secret key: give the server's .key_secret file, not its .key")
        if not clients.is_dir():
            raise SecurityError(f"authorised client keys folder not found: {clients}")
        keys = sorted(clients.glob("*.key"))
        if not keys:
            raise SecurityError(f"{clients} holds no client public keys (*.key): no client could connect")
        for key in keys:
            try:
                zmq.auth.load_certificate(str(key))
            except (ValueError, OSError) as e:
                raise SecurityError(f"{key} is not a ZeroMQ certificate: {e}") from None
        return cls(public, secret, clients)

    def serve_on(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server with this key pair (before it binds)."""
        socket.zap_domain = ZAP_DOMAIN.encode()
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True


def check_endpoints(endpoints: list[str], keys: CurveKeys | None, insecure_lan: bool) -> None:
    """Refuse a bind beyond this machine without keys, unless ``insecure_lan`` says it is meant."""
    exposed = [e for e in endpoints if not is_local(e)]
    if not exposed or keys is not None:
        return
    if not insecure_lan:
        raise SecurityError(
            f"{', '.join(exposed)} can be reached from the network, and the runtime does not serve in plain text "
            "there: anyone could read the frames and push audio. Give keys (--curve-secret-key and --curve-clients; "
            "make them with `ksdiff-runtime keys server CLIENT`), listen on 127.0.0.1, or pass --insecure-lan if this "
            "network is yours alone.")
    log.warning("serving WITHOUT authentication or encryption on %s (--insecure-lan): anyone on the network can "
                "read the frames and push audio", ", ".join(exposed))


class Authenticator:
    """The ZAP handler that admits clients with an authorised public key (a thread of pyzmq's)."""

    def __init__(self, ctx: zmq.Context, keys: CurveKeys) -> None:
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("ksdiff_runtime.server.zap"))
        self._auth.start()
        self._auth.configure_curve(domain=ZAP_DOMAIN, location=str(keys.clients))

    def stop(self) -> None:
        self._auth.stop()
