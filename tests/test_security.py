"""Who may talk to the runtime: loopback by default, CurveZMQ keys beyond it, nothing for a wrong key.

Every socket here is on 127.0.0.1: CurveZMQ works the same on loopback, and the checks that refuse
a bind beyond loopback run before anything binds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from peers import Peer, is_end

from ksdiff_runtime.cli import keys as keys_cli
from ksdiff_runtime.cli import main
from ksdiff_runtime.engine.controls import stream_frames
from ksdiff_runtime.server.config import ConfigError, load_config
from ksdiff_runtime.server.runtime import Runtime, RuntimeStartError
from ksdiff_runtime.server.security import (
    AuthorisedKeys,
    CurveKeys,
    SecurityError,
    check_endpoints,
    is_ipv6,
    is_local,
)
from ksdiff_sdk import Client
from ksdiff_sdk import protocol as P

NO_ANSWER_S = 2.0  # how long a refused client waits to see that nothing comes


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server + two authorised clients (alice, bob) + one stranger, made by the real command."""
    folder = tmp_path_factory.mktemp("keys")
    assert main(["keys", "server", "alice", "bob", "stranger", "-o", str(folder)]) == 0
    clients = folder / "clients"
    clients.mkdir()
    for name in ("alice", "bob"):
        (clients / f"{name}.key").write_bytes((folder / f"{name}.key").read_bytes())
    return folder


def curve(keys: Path, client: str, server: str = "server") -> tuple[bytes, bytes, bytes]:
    server_public, _ = zmq.auth.load_certificate(str(keys / f"{server}.key"))
    public, secret = zmq.auth.load_certificate(str(keys / f"{client}.key_secret"))
    return server_public, public, secret


@pytest.fixture
def secured(serve_engine, keys):
    loaded = CurveKeys.load(keys / "server.key_secret", keys / "clients")
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", curve=loaded,
                 admission=False) as rt:
        yield rt


def test_keys_command_writes_certificates_and_never_overwrites(keys, tmp_path):
    public, secret = zmq.auth.load_certificate(str(keys / "server.key_secret"))
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(str(keys / "server.key"))[1] is None  # the public file holds no secret
    assert stat.S_IMODE((keys / "alice.key_secret").stat().st_mode) == 0o600
    assert main(["keys", "server", "-o", str(keys)]) == 1  # exists already
    assert main(["keys", "../evil", "-o", str(tmp_path)]) == 2


def test_a_secret_key_is_never_readable_by_others(tmp_path, monkeypatch):
    """pyzmq created the files with the process's umask (0644 with 022): the secret key was readable by others
    until keys chmod-ed it. Seen the moment the file is made, before a byte is in it, it is the owner's alone."""
    modes = {}
    real_open = os.open

    def seen(path, flags, mode=0o777, *args, **kwargs):
        fd = real_open(path, flags, mode, *args, **kwargs)
        modes[Path(path).name] = stat.S_IMODE(os.fstat(fd).st_mode)
        return fd

    monkeypatch.setattr(os, "open", seen)
    old = os.umask(0o022)
    try:
        assert main(["keys", "bob", "-o", str(tmp_path / "k")]) == 0
        assert os.umask(0o022) == 0o022  # the process's umask is left as it was
    finally:
        os.umask(old)
    assert modes["bob.key_secret"] == 0o600
    assert stat.S_IMODE((tmp_path / "k" / "bob.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k" / "bob.key").stat().st_mode) == 0o644


@pytest.mark.parametrize(("case", "code", "says"), [
    ("-o is a file", 1, "exists and is not a folder"),
    ("-o under a file", 1, "as the keys' folder: Not a directory"),
    ("name of 300 characters", 2, "is too long: its .key_secret file name would be 311 bytes"),
    ("a name twice", 2, "'alice' is given twice"),
])
def test_keys_command_refuses_with_one_error_line_and_writes_nothing(tmp_path, capsys, case, code, says):
    """Each was a traceback before (FileExistsError, NotADirectoryError, OSError: File name too long);
    now one `error:` line naming the path or name, and no folder or key file is left behind."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    out = {"-o is a file": a_file, "-o under a file": a_file / "keys"}.get(case, tmp_path / "keys")
    names = {"name of 300 characters": ["alice", "a" * 300], "a name twice": ["alice", "bob", "alice"]}.get(
        case, ["alice"])
    assert main(["keys", *names, "-o", str(out)]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    if case.startswith("-o"):
        assert str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no keys folder, no key file
    assert a_file.read_text() == "not a folder"


def test_keys_command_that_fails_halfway_removes_what_it_wrote(tmp_path, capsys, monkeypatch):
    """The disk fills up while the second pair's secret is written (its public file is there, its secret half):
    the first pair, the half pair and the folder the command made are removed; one `error:` line."""
    real = keys_cli.create_new

    def fills_up(path: Path, text: str, mode: int, created: list[Path]) -> None:
        if path.name != "bob.key_secret":
            return real(path, text, mode, created)
        real(path, text[:20], mode, created)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keys_cli, "create_new", fills_up)
    out = tmp_path / "keys"
    assert main(["keys", "alice", "bob", "-o", str(out)]) == 1
    captured = capsys.readouterr()
    secret = out / "bob.key_secret"
    assert captured.err == f"error: cannot write {secret}: No space left on device; no key was written\n"
    assert "alice" not in captured.out  # no pair is announced before all are written
    assert not out.exists()


def test_keys_never_writes_over_a_file_made_after_its_check(tmp_path, monkeypatch, capsys):
    """Two `keys` runs at once, both finding no file and then both writing: one run's server.key ended beside
    the other's server.key_secret, a mismatched pair, and both said they had succeeded. Here the second run does
    all its work between the first one's check and its writing. A file is now only made where none is (O_EXCL):
    the first run fails and leaves the second one's pair as it was."""
    out = tmp_path / "k"
    real = zmq.curve_keypair
    other: list[int] = []

    def meanwhile() -> tuple[bytes, bytes]:
        if not other:  # once: the run beside this one, from start to end, after this one's check
            other.append(-1)
            other[0] = main(["keys", "server", "-o", str(out)])
        return real()

    monkeypatch.setattr(zmq, "curve_keypair", meanwhile)
    assert main(["keys", "server", "-o", str(out)]) == 1
    assert other == [0]
    assert "exists already; remove it first (keys are never overwritten)" in capsys.readouterr().err
    public, _ = zmq.auth.load_certificate(str(out / "server.key"))
    assert zmq.auth.load_certificate(str(out / "server.key_secret"))[0] == public
    assert sorted(p.name for p in out.iterdir()) == ["server.key", "server.key_secret"]


def test_keys_never_writes_through_a_symbolic_link(tmp_path, capsys):
    """A link to nothing where server.key_secret goes: exists() followed it and said no, and the secret key was
    written wherever the link pointed. Now the link counts as a file that is there."""
    out, elsewhere = tmp_path / "keys", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "server.key_secret").symlink_to(elsewhere / "stolen")
    assert main(["keys", "server", "-o", str(out)]) == 1
    assert "exists already" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["server.key_secret"]
    with pytest.raises(FileExistsError):  # also when the link appears after the check
        keys_cli.create_new(out / "server.key_secret", "secret", 0o600, [])
    assert list(elsewhere.iterdir()) == []


def test_key_files_are_read_by_pyzmq_and_the_client_cores(keys):
    """What `keys` writes is a ZeroMQ certificate as pyzmq writes it: the C# and C++ cores read a `curve`
    section whose keys are indented under it, each 40 characters of Z85."""
    for name in ("alice.key", "alice.key_secret"):
        lines = (keys / name).read_text().splitlines()
        body = [line for line in lines if line and not line.startswith("#")]
        public = zmq.auth.load_certificate(str(keys / name))[0].decode()
        assert body[:3] == ["metadata", "curve", f'    public-key = "{public}"']
    public, secret = zmq.auth.load_certificate(str(keys / "alice.key_secret"))
    assert zmq.curve_public(secret) == public and zmq.auth.load_certificate(str(keys / "alice.key"))[0] == public


def test_an_authorised_client_is_served_with_curve(secured, keys, speech_16k):
    with Client(secured.pub_endpoint, secured.router_endpoint, timeout=30, server_key=keys / "server.key",
                client_key=keys / "alice.key_secret") as client:
        hello = client.wait_for_runtime(timeout=30)
        assert hello["instance"] == secured.instance
        anim = client.animate(speech_16k[:16000], seed=1)
    assert len(anim) == stream_frames(16000, 30) and anim.missing == 0


@pytest.mark.parametrize("who", ["stranger", "no keys", "wrong server key"])
def test_a_client_without_an_authorised_key_gets_nothing_at_all(secured, keys, speech_16k, who):
    """A stranger's key, no keys, or the right client key against the wrong server key: the handshake
    fails, so the client sees no hello, no frame and no reply to any request, while an authorised
    client on the same runtime is served."""
    key = {"stranger": curve(keys, "stranger"), "no keys": None,
           "wrong server key": curve(keys, "alice", server="bob")}[who]
    outsider = Peer(secured, curve=key, wait_hello=False)
    insider = Peer(secured, curve=curve(keys, "bob"))
    try:
        for request in (P.encode_request("hello", req=1), P.encode_request("open_stream", stream="sneak",
                                                                          sample_rate=16000, channels=1,
                                                                          format="f32le")):
            # without a completed handshake there is no connection to queue on: the send may not even go
            with contextlib.suppress(zmq.Again):
                outsider.dealer.send(request, zmq.NOBLOCK)
        insider.request("open_stream", stream="bob", sample_rate=16000, channels=1, format="f32le", mode="line")
        insider.send(P.encode_request("audio", stream="bob", seq=0, pcm=speech_16k[:8000].astype("<f4").tobytes()))
        insider.send(P.encode_request("end_stream", stream="bob"))
        msgs = insider.wait_pub(is_end("bob"))
        assert sum(m["type"] == "frame" for m in msgs) == stream_frames(8000, 30)
        assert not outsider.dealer.poll(int(NO_ANSWER_S * 1000))
        assert not outsider.sub.poll(0)
        assert "sneak" not in secured.stream_ids
    finally:
        outsider.close()
        insider.close()


def test_binds_beyond_loopback_need_keys_or_an_explicit_insecure_lan(caplog, keys):
    assert all(is_local(e) for e in ("tcp://127.0.0.1:5555", "tcp://127.9.9.9:1", "tcp://localhost:5",
                                     "tcp://[::1]:5555", "ipc:///tmp/ksd", "inproc://x"))
    assert not any(is_local(e) for e in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.20:5555",
                                         "tcp://eth0:5555", "tcp://[::]:5555", "udp://127.0.0.1:5"))
    with pytest.raises(SecurityError, match=r"0\.0\.0\.0:5555 can be reached from the network.*--insecure-lan"):
        check_endpoints(["tcp://127.0.0.1:5556", "tcp://0.0.0.0:5555"], None, insecure_lan=False)
    with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.server"):
        check_endpoints(["tcp://0.0.0.0:5555"], None, insecure_lan=True)
    assert "WITHOUT authentication or encryption" in caplog.text
    check_endpoints(["tcp://0.0.0.0:5555"], CurveKeys.load(keys / "server.key_secret", keys / "clients"), False)
    with pytest.raises(ConfigError, match="reached from the network"):
        load_config(None, {"pub": "tcp://0.0.0.0:5555"})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.server"):
        config = load_config(None, {"pub": "tcp://0.0.0.0:5555", "insecure_lan": True})
        config.check()  # as serve() does again
    assert config.insecure_lan
    assert "WITHOUT" not in caplog.text  # said once, by the runtime that binds (it was said three times)
    with pytest.raises(ConfigError, match="go together"):
        load_config(None, {"curve_secret_key": str(keys / "server.key_secret")})


def test_the_runtime_refuses_to_start_exposed_without_keys(serve_engine):
    with pytest.raises(RuntimeStartError, match="reached from the network"):
        Runtime(serve_engine, pub="tcp://0.0.0.0:0", router="tcp://127.0.0.1:0").start()


def test_bad_key_files_are_clear_errors(keys, tmp_path):
    with pytest.raises(SecurityError, match="not found"):
        CurveKeys.load(tmp_path / "nope.key_secret", keys / "clients")
    with pytest.raises(SecurityError, match="no secret key"):
        CurveKeys.load(keys / "server.key", keys / "clients")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SecurityError, match="no client public keys"):
        CurveKeys.load(keys / "server.key_secret", empty)
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("not a certificate")
    with pytest.raises(SecurityError, match="not a ZeroMQ certificate"):
        CurveKeys.load(garbage, keys / "clients")
    with pytest.raises(ValueError, match="both"):
        Client(server_key=keys / "server.key")


def test_serve_exposed_without_keys_exits_before_loading_the_model():
    run = subprocess.run([sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--pub", "tcp://0.0.0.0:5555"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "can be reached from the network" in run.stderr
    assert "--insecure-lan" in run.stderr and "model on" not in run.stderr


def test_frames_are_encrypted_on_the_wire(secured, keys, speech_16k):
    """What a CURVE-less eavesdropper connecting to the PUB would read: nothing; and the authorised
    client decodes the very frames the runtime published (a sanity check that keys are used on both
    sockets, not only the ROUTER)."""
    eavesdropper = zmq.Context.instance().socket(zmq.SUB)
    eavesdropper.setsockopt(zmq.SUBSCRIBE, b"")
    eavesdropper.setsockopt(zmq.LINGER, 0)
    eavesdropper.connect(secured.pub_endpoint)
    try:
        with Client(secured.pub_endpoint, secured.router_endpoint, timeout=30, server_key=keys / "server.key",
                    client_key=keys / "bob.key_secret") as client:
            anim = client.animate(np.asarray(speech_16k[:8000]), seed=2)
        assert len(anim) == stream_frames(8000, 30)
        assert not eavesdropper.poll(0)
    finally:
        eavesdropper.close()


def _clients_folder(keys: Path, folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        (folder / f"{name}.key").write_bytes((keys / f"{name}.key").read_bytes())
    return folder


def _refused(peer: Peer) -> bool:
    """Nothing at all comes to ``peer``: no hello on its SUB, no reply to a hello request."""
    with contextlib.suppress(zmq.Again):  # without a completed handshake the send may not even go
        peer.dealer.send(P.encode_request("hello", req=1), zmq.NOBLOCK)
    return not peer.dealer.poll(int(NO_ANSWER_S * 1000)) and not peer.sub.poll(0)


def test_the_authorised_folder_counts_at_each_handshake(serve_engine, keys, tmp_path):
    """The folder was read once at start (pyzmq's configure_curve(location=...)): a key removed from it was
    admitted, and one added refused, until serve restarted. Now a removed key refuses the client's next
    connection and an added one admits it at once; a connection admitted before stays (ZeroMQ authenticates a
    connection at its handshake only) until it closes."""
    clients = _clients_folder(keys, tmp_path / "clients", "alice", "bob")
    loaded = CurveKeys.load(keys / "server.key_secret", clients)
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", curve=loaded,
                 admission=False) as rt:
        connected_bob = Peer(rt, curve=curve(keys, "bob"))
        try:
            (clients / "bob.key").unlink()
            (clients / "stranger.key").write_bytes((keys / "stranger.key").read_bytes())
            new_bob = Peer(rt, curve=curve(keys, "bob"), wait_hello=False)
            try:
                stranger = Peer(rt, curve=curve(keys, "stranger"))  # added: admitted, its hello comes
                assert stranger.request("hello", req=2)["type"] == "hello"
                stranger.close()
                assert _refused(new_bob)  # removed: its new connection gets nothing
            finally:
                new_bob.close()
            # the connection bob had before its key was removed is still served, on both sockets
            assert connected_bob.request("hello", req=3)["type"] == "hello"
            connected_bob.wait_pub(lambda m: m["type"] == "hello")
        finally:
            connected_bob.close()


def test_the_folder_is_read_again_only_when_its_files_change(keys, tmp_path, monkeypatch):
    """A flood of handshakes costs a listing of the folder each, not a read of every key file."""
    clients = _clients_folder(keys, tmp_path / "clients", "alice")
    reads = []
    real = zmq.auth.load_certificate
    monkeypatch.setattr(zmq.auth, "load_certificate", lambda f: reads.append(Path(f).name) or real(f))
    authorised = AuthorisedKeys(clients)
    alice, bob = (zmq.auth.load_certificate(str(keys / f"{n}.key"))[0] for n in ("alice", "bob"))
    reads.clear()
    assert [authorised.callback("ksdiff", k) for k in (alice, bob) * 50] == [True, False] * 50
    assert reads == ["alice.key"]
    (clients / "bob.key").write_bytes((keys / "bob.key").read_bytes())
    assert authorised.callback("ksdiff", bob) and authorised.callback("ksdiff", alice)
    (clients / "alice.key").unlink()
    assert not authorised.callback("ksdiff", alice)
    assert authorised.callback("ksdiff", bob)
    (clients / "bob.key").write_text('curve\n    public-key = "abc"\n')  # made unreadable in place
    assert not authorised.callback("ksdiff", bob)
    for gone in clients.iterdir():
        gone.unlink()
    clients.rmdir()
    assert not authorised.callback("ksdiff", bob)  # a folder gone admits nobody, and the ZAP thread goes on


def test_a_clients_folder_named_star_admits_only_its_keys(serve_engine, keys, tmp_path, monkeypatch):
    """`--curve-clients '*'`: pyzmq took the location "*" as "admit any client", so a stranger was served."""
    monkeypatch.chdir(tmp_path)
    _clients_folder(keys, Path("*"), "alice")
    loaded = CurveKeys.load(keys / "server.key_secret", "*")
    with Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", curve=loaded,
                 admission=False) as rt:
        stranger = Peer(rt, curve=curve(keys, "stranger"), wait_hello=False)
        alice = Peer(rt, curve=curve(keys, "alice"))
        try:
            assert alice.request("hello", req=1)["type"] == "hello"
            assert _refused(stranger)
        finally:
            stranger.close()
            alice.close()


def _edited(keys: Path, name: str, tmp_path: Path, field: str, value: str) -> Path:
    lines = [f'    {field} = "{value}"' if line.strip().startswith(field) else line
             for line in (keys / name).read_text().splitlines()]
    edited = tmp_path / name
    edited.write_text("\n".join(lines) + "\n")
    return edited


@pytest.mark.parametrize(("case", "says"), [
    ("server secret of 30 characters", "its secret-key is not a CURVE key (40 characters of Z85), got 30 characters"),
    ("server secret not Z85", "its secret-key is not a CURVE key"),
    ("server public of another pair", "its public-key is not the one of its secret-key"),
    ("client key abc", "holds no CURVE public key: need 40 characters of Z85, got 3 characters"),
    ("client key empty", "holds no CURVE public key: need 40 characters of Z85, got empty"),
])
def test_malformed_keys_are_refused_at_start(keys, tmp_path, case, says):
    """A truncated server secret passed the check and crashed serve with a traceback once the model had loaded;
    a client key "abc" or "" was taken, and with "" serve started with no authorised key at all."""
    secret, clients = keys / "server.key_secret", keys / "clients"
    secret_key = zmq.auth.load_certificate(str(secret))[1].decode()
    if case.startswith("server secret"):
        value = secret_key[10:] if "30" in case else "~" + secret_key[1:]
        secret = _edited(keys, "server.key_secret", tmp_path, "secret-key", value)
    elif case.startswith("server public"):
        secret = _edited(keys, "server.key_secret", tmp_path, "public-key",
                         zmq.auth.load_certificate(str(keys / "bob.key"))[0].decode())
    else:
        clients = tmp_path / "clients"
        clients.mkdir()
        (clients / "client.key").write_text(f'curve\n    public-key = "{"abc" if "abc" in case else ""}"\n')
    with pytest.raises(SecurityError) as refused:
        CurveKeys.load(secret, clients)
    named = secret if case.startswith("server") else clients / "client.key"
    assert str(refused.value).startswith(str(named)) and says in str(refused.value)


def test_serve_with_a_truncated_secret_exits_before_loading_the_model(keys, tmp_path):
    secret_key = zmq.auth.load_certificate(str(keys / "server.key_secret"))[1].decode()
    secret = _edited(keys, "server.key_secret", tmp_path, "secret-key", secret_key[10:])
    run = subprocess.run([sys.executable, "-m", "ksdiff_runtime.cli", "serve", "--pub", "tcp://0.0.0.0:0",
                          "--router", "tcp://0.0.0.0:0", "--curve-secret-key", str(secret),
                          "--curve-clients", str(keys / "clients")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"error: {secret}: its secret-key is not a CURVE key" in run.stderr
    assert "Traceback" not in run.stderr and "model on" not in run.stderr


def test_keys_the_runtime_cannot_use_are_a_start_error(serve_engine, keys):
    """Keys that did not come through CurveKeys.load: a RuntimeStartError, not a traceback from the socket."""
    loaded = CurveKeys.load(keys / "server.key_secret", keys / "clients")
    bad = CurveKeys(loaded.public, loaded.secret[:30], loaded.clients)
    with pytest.raises(RuntimeStartError, match="cannot serve with these CurveZMQ keys"):
        Runtime(serve_engine, pub="tcp://127.0.0.1:0", router="tcp://127.0.0.1:0", curve=bad).start()


def test_endpoints_that_only_look_local_are_not():
    """`tcp://[::1%1]:0;0.0.0.0:5597` counted as loopback (Python reads what follows % as a scope id) and ZeroMQ
    binds it to every interface (the part after ; is the address, before it the source)."""
    for endpoint in ("tcp://[::1%1]:0;0.0.0.0:5597", "tcp://::1%lo;0.0.0.0:5598", "tcp://[::1%lo]:0;0.0.0.0:5599",
                     "tcp://::1%1:0;0.0.0.0:5600", "tcp://127.0.0.1:1;0.0.0.0:5555", "tcp://[::1%lo]:5555",
                     "tcp://[127.0.0.1:5555", "tcp://127.0.0.1]:5555", "tcp://127.0.0.1"):
        assert not is_local(endpoint), endpoint
    assert is_ipv6("tcp://[::1]:5555") and is_ipv6("tcp://::1:5555") and is_ipv6("tcp://[::]:0")
    assert not any(is_ipv6(e) for e in ("tcp://127.0.0.1:5555", "tcp://*:5555", "tcp://localhost:0", "ipc:///x"))


def _has_ipv6_loopback() -> bool:
    import socket

    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_the_runtime_serves_on_ipv6_loopback(serve_engine):
    """`serve --pub tcp://[::1]:0` failed after the model had loaded with "No such device": ZMQ_IPV6 was off."""
    with Runtime(serve_engine, pub="tcp://[::1]:0", router="tcp://[::1]:0", admission=False) as rt:
        assert rt.pub_endpoint.startswith("tcp://[::1]:") and rt.router_endpoint.startswith("tcp://[::1]:")
        ctx = zmq.Context.instance()
        dealer = ctx.socket(zmq.DEALER)
        dealer.ipv6 = True
        dealer.linger = 0
        try:
            dealer.connect(rt.router_endpoint)
            dealer.send(P.encode_request("hello", req=1))
            assert dealer.poll(30_000), "no reply on ::1"
            assert P.decode(dealer.recv())["type"] == "hello"
        finally:
            dealer.close()
        # the Python SDK too (its sockets had no ZMQ_IPV6: it never connected, with no error)
        from ksdiff_sdk import Client

        with Client(rt.pub_endpoint, rt.router_endpoint) as client:
            client.wait_for_runtime(timeout=30.0)


def test_a_client_secret_copied_in_as_its_key_is_refused(keys, tmp_path):
    """A client's .key_secret copied into the folder under a .key name was admitted (its public key is valid):
    the client's secret then sat on the server for anyone reading that folder."""
    clients = tmp_path / "clients"
    clients.mkdir()
    (clients / "alice.key").write_bytes((keys / "alice.key_secret").read_bytes())
    with pytest.raises(SecurityError) as refused:
        CurveKeys.load(keys / "server.key_secret", clients)
    assert str(refused.value).startswith(f"{clients / 'alice.key'} holds a secret key")
    (clients / "bob.key").write_bytes((keys / "bob.key").read_bytes())
    admitted, problems = AuthorisedKeys(clients).read()  # as the folder is read at each handshake while serving
    assert list(admitted) == [clients / "bob.key"] and list(problems) == [clients / "alice.key"]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_server_secret_others_can_read_is_served_with_a_warning(keys, tmp_path, caplog):
    secret = tmp_path / "server.key_secret"
    secret.write_bytes((keys / "server.key_secret").read_bytes())
    secret.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.server"):
        CurveKeys.load(secret, keys / "clients")
    assert "chmod 600" not in caplog.text
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="ksdiff_runtime.server"):
        CurveKeys.load(secret, keys / "clients")
    assert f"{secret} can be read or written by other users (mode 0644)" in caplog.text and "chmod 600" in caplog.text
