"""Who may talk to the runtime: loopback by default, CurveZMQ beyond it.

On loopback (127.0.0.0/8, ::1, localhost) and local transports (ipc://, inproc://) only programs on
this machine reach the sockets. Anything else (0.0.0.0, a LAN address, an interface name) is
reachable from the network, so the runtime requires CurveZMQ there: the server's key pair encrypts
both sockets, and a ZAP handler (pyzmq's ``ThreadAuthenticator``) lets in only clients whose public
keys are in the authorised folder. A client with another key, or that expects another server key,
fails the handshake and never gets a message, so nothing leaks. ``--insecure-lan`` allows a
plain-text bind beyond loopback on purpose, with a warning.

The folder is looked at on every handshake (``AuthorisedKeys``): a key file removed refuses that
client's next connection, one added admits it, without a restart. ZeroMQ authenticates a connection
once, at its handshake, so a client connected when its key is removed stays connected until that
connection closes (its next one is refused); restart ``serve`` to cut it off at once.

Keys are ZeroMQ certificate files (``ksdiff-runtime keys``): ``NAME.key`` (public) and
``NAME.key_secret`` (both keys).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("ksdiff_runtime.server")

ZAP_DOMAIN = "ksdiff"


class SecurityError(ValueError):
    """Keys or endpoints the runtime cannot serve safely with; the message says what to do."""


def _tcp_host(rest: str) -> str | None:
    """The host of a tcp endpoint's ``HOST:PORT`` (an IPv6 address without its brackets), None when malformed."""
    host, sep, _ = rest.rpartition(":")
    if not sep:
        return None
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            return None
        host = host[1:-1]
    return host


def is_local(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: tcp on a loopback address, ipc, inproc."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    # ZeroMQ reads "SOURCE;ADDRESS" (tcp://[::1%1]:0;0.0.0.0:5555 binds every interface) and "%" starts a scope
    # id that Python's ipaddress takes whatever follows it: neither is a plain loopback address
    if ";" in rest or "%" in rest:
        return False
    host = _tcp_host(rest)
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name, a host name: reachable from elsewhere
        return False


def is_ipv6(endpoint: str) -> bool:
    """True for a tcp endpoint on an IPv6 address (``tcp://[::1]:5555``): its socket needs ``ZMQ_IPV6``."""
    scheme, _, rest = endpoint.partition("://")
    host = _tcp_host(rest) if scheme == "tcp" else None
    return host is not None and ":" in host


Z85_ALPHABET = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


def curve_key(text: bytes | str | None) -> bytes | None:
    """The 32 bytes a CURVE key's Z85 text (40 characters) stands for; None when it is not one."""
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    if text is None or len(text) != 40 or not Z85_ALPHABET.issuperset(text):
        return None
    try:
        raw = zmq.utils.z85.decode(text)
    except (ValueError, KeyError, struct.error):  # a group of 5 characters worth more than 2**32
        return None
    return raw if len(raw) == 32 and zmq.utils.z85.encode(raw) == text else None


def _shown(key: bytes | None) -> str:
    if key is None:
        return "none"
    text = key.decode("utf-8", "replace")
    return f"{len(text)} characters" if text else "empty"


class AuthorisedKeys:
    """The client public keys in a folder of ``*.key`` certificates, as the folder is now.

    ``current()`` lists the folder's ``*.key`` files (name, inode, size, modification time) on every
    call and reads them again only when that listing changed, so a flood of handshakes costs one
    directory listing each, and a file removed, added or replaced counts from the next handshake."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._listing: tuple | None = None
        self._keys: frozenset[bytes] = frozenset()

    def _list(self) -> tuple:
        entries = []
        with os.scandir(self.folder) as it:
            for entry in it:
                if not entry.name.endswith(".key") or entry.name.startswith("."):
                    continue  # like the shell's and pyzmq's *.key: hidden files (an editor's backup) are not keys
                try:
                    st = entry.stat()  # through a symbolic link: the file it names
                except OSError:  # gone since the listing, or a link to nothing: no key
                    continue
                if stat.S_ISREG(st.st_mode):
                    entries.append((entry.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(sorted(entries))

    def read(self) -> tuple[dict[Path, bytes], dict[Path, str]]:
        """Every ``*.key`` file's key, and what is wrong with each file that holds none."""
        keys: dict[Path, bytes] = {}
        problems: dict[Path, str] = {}
        for name, *_ in self._list():
            path = self.folder / name
            try:
                public, secret = zmq.auth.load_certificate(str(path))
            except (ValueError, OSError) as e:
                problems[path] = f"is not a ZeroMQ certificate: {e}"
                continue
            raw = curve_key(public)
            if raw is None:
                problems[path] = f"holds no CURVE public key: need 40 characters of Z85, got {_shown(public)}"
            elif secret is not None:
                # a client's .key_secret copied in under a .key name: whoever reads this folder can be that client
                problems[path] = ("holds a secret key: copy only the client's NAME.key here, and make that client a "
                                  "new pair (`ksdiff-runtime keys`), as its secret has left it")
            else:
                keys[path] = raw
        return keys, problems

    def current(self) -> frozenset[bytes]:
        """The authorised keys now (raw 32 bytes); raises OSError when the folder cannot be read."""
        with self._lock:
            listing = self._list()
            if listing != self._listing:
                keys, problems = self.read()
                for path, problem in problems.items():
                    log.warning("authorised client keys: %s %s; it admits nobody", path, problem)
                self._listing, self._keys = listing, frozenset(keys.values())
                log.info("authorised client keys: %d in %s", len(self._keys), self.folder)
            return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's CURVE credentials callback: is the client's key (Z85) in the folder now?"""
        try:
            raw = curve_key(key)
            return raw is not None and raw in self.current()
        except Exception as e:  # the ZAP thread must go on (it would refuse everyone once dead): refuse this one
            with self._lock:
                failed = self._listing != ("failed",)
                self._listing, self._keys = ("failed",), frozenset()  # said once, until the folder reads again
            if failed:
                log.warning("authorised client keys: cannot read %s (%s); refusing every client until it can be read",
                            self.folder, e)
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
        if curve_key(secret) is None:
            raise SecurityError(f"{path}: its secret-key is not a CURVE key (40 characters of Z85), got "
                                f"{_shown(secret)}; make a new pair with `ksdiff-runtime keys`")
        if curve_key(public) is None or zmq.curve_public(secret) != public:
            raise SecurityError(f"{path}: its public-key is not the one of its secret-key; make a new pair with "
                                "`ksdiff-runtime keys`")
        mode = stat.S_IMODE(path.stat().st_mode)
        if os.name == "posix" and mode & 0o077:
            log.warning("%s can be read or written by other users (mode %04o): whoever reads it can pose as this "
                        "server; `chmod 600` it", path, mode)
        if not clients.is_dir():
            raise SecurityError(f"authorised client keys folder not found: {clients}")
        try:
            keys, problems = AuthorisedKeys(clients).read()
        except OSError as e:
            raise SecurityError(f"cannot read the authorised client keys folder {clients}: {e.strerror or e}") from None
        for key, problem in problems.items():
            raise SecurityError(f"{key} {problem}")
        if not keys:
            raise SecurityError(f"{clients} holds no client public keys (*.key): no client could connect")
        return cls(public, secret, clients)

    def serve_on(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE server with this key pair (before it binds)."""
        socket.zap_domain = ZAP_DOMAIN.encode()
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True


def check_endpoints(endpoints: list[str], keys: CurveKeys | None, insecure_lan: bool, warn: bool = True) -> None:
    """Refuse a bind beyond this machine without keys, unless ``insecure_lan`` says it is meant (then ``warn``: log
    that it serves in plain text; a config's check leaves that to the runtime that binds)."""
    exposed = [e for e in endpoints if not is_local(e)]
    if not exposed or keys is not None:
        return
    if not insecure_lan:
        raise SecurityError(
            f"{', '.join(exposed)} can be reached from the network, and the runtime does not serve in plain text "
            "there: anyone could read the frames and push audio. Give keys (--curve-secret-key and --curve-clients; "
            "make them with `ksdiff-runtime keys server CLIENT`), listen on 127.0.0.1, or pass --insecure-lan if this "
            "network is yours alone.")
    if warn:
        log.warning("serving WITHOUT authentication or encryption on %s (--insecure-lan): anyone on the network can "
                    "read the frames and push audio", ", ".join(exposed))


class Authenticator:
    """The ZAP handler that admits clients with an authorised public key (a thread of pyzmq's)."""

    def __init__(self, ctx: zmq.Context, keys: CurveKeys) -> None:
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("ksdiff_runtime.server.zap"))
        self._auth.start()
        # a callback that looks at the folder on each handshake, not configure_curve(location=...): that reads the
        # folder once (a removed key would be admitted until a restart) and takes the location "*" as "admit anyone"
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=AuthorisedKeys(keys.clients))

    def stop(self) -> None:
        self._auth.stop()
