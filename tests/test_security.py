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

from ksdiff_runtime.cli import main
from ksdiff_runtime.engine.controls import stream_frames
from ksdiff_runtime.server.config import ConfigError, load_config
from ksdiff_runtime.server.runtime import Runtime, RuntimeStartError
from ksdiff_runtime.server.security import CurveKeys, SecurityError, check_endpoints, is_local
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
    """pyzmq creates the files with the process's umask (0644 with 022): the secret key was readable by others
    until keys chmod-ed it. Seen the moment pyzmq has written it, it is the owner's alone."""
    modes = {}
    create = zmq.auth.create_certificates

    def seen(folder: str, name: str):
        made = create(folder, name)
        modes.update({Path(p).name: stat.S_IMODE(Path(p).stat().st_mode) for p in made})
        return made

    monkeypatch.setattr(zmq.auth, "create_certificates", seen)
    old = os.umask(0o022)
    try:
        assert main(["keys", "bob", "-o", str(tmp_path / "k")]) == 0
        assert os.umask(0o022) == 0o022  # the process's umask is given back
    finally:
        os.umask(old)
    assert modes["bob.key_secret"] == 0o600
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
    """The disk fills up while the second pair is written (its public file is there, its secret is not):
    the first pair, the half pair and the folder the command made are removed; one `error:` line."""
    real = zmq.auth.create_certificates

    def fills_up(key_dir: str, name: str) -> tuple[str, str]:
        if name == "alice":
            return real(key_dir, name)
        public = Path(key_dir) / f"{name}.key"
        public.write_text("half")
        raise OSError(28, "No space left on device", str(Path(key_dir) / f"{name}.key_secret"))

    monkeypatch.setattr(zmq.auth, "create_certificates", fills_up)
    out = tmp_path / "keys"
    assert main(["keys", "alice", "bob", "-o", str(out)]) == 1
    captured = capsys.readouterr()
    secret = out / "bob.key_secret"
    assert captured.err == f"error: cannot write {secret}: No space left on device; no key was written\n"
    assert "alice" not in captured.out  # no pair is announced before all are written
    assert not out.exists()


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
    assert load_config(None, {"pub": "tcp://0.0.0.0:5555", "insecure_lan": True}).insecure_lan
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
