"""`ksdiff-runtime keys`: CurveZMQ key pairs for a runtime that listens beyond this machine.

The server's pair (its secret stays with `serve`, its public key goes to every client) and one
pair per client (the client keeps its secret; its public key goes into the server's folder of
authorised clients). Files are ZeroMQ certificates (``NAME.key`` public, ``NAME.key_secret``
secret), as pyzmq's ``zmq.auth`` and czmq write and read them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import os
import sys
from pathlib import Path

import zmq


def configure_keys(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("names", nargs="+", metavar="NAME",
                   help="one key pair per name, e.g. `server` and a name per client (`obs-pc`, `game`)")
    p.add_argument("-o", "--out", type=Path, default=Path("keys"), help="folder to write them to (default keys/)")
    p.set_defaults(func=run_keys)


NAME_MAX = 255  # the longest file name, in bytes, that Linux and macOS file systems take (ext4, APFS, tmpfs)
SECRET_SUFFIX = ".key_secret"  # the longer of a pair's two file names ends with this


def name_problem(name: str) -> str | None:
    """Why <name> cannot name a key pair, or None when it can."""
    if not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        return "is not a plain file name"
    length = len(os.fsencode(name + SECRET_SUFFIX))
    if length > NAME_MAX:
        return f"is too long: its {SECRET_SUFFIX} file name would be {length} bytes, file names take at most {NAME_MAX}"
    return None


# the text pyzmq's zmq.auth.create_certificates writes (zmq.auth.load_certificate, czmq and the C# and C++ cores
# read it): written here so that a file is created only where none is, never through a symbolic link
_BANNER = """#   ****  Generated on {now} by ksdiff-runtime keys (pyzmq's format)  ****
#   ZeroMQ CURVE {what} Certificate
{advice}
"""
_PUBLIC_ADVICE = """#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange.
"""
_SECRET_ADVICE = """#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.
"""


def certificate(public: bytes, secret: bytes | None = None) -> str:
    """A ZeroMQ certificate: the public key, and the secret one in a .key_secret file."""
    what, advice = ("**Secret**", _SECRET_ADVICE) if secret else ("Public", _PUBLIC_ADVICE)
    text = _BANNER.format(now=datetime.datetime.now(), what=what, advice=advice)
    text += f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    if secret:
        text += f'    secret-key = "{secret.decode()}"\n'
    return text


def create_new(path: Path, text: str, mode: int, created: list[Path]) -> None:
    """Write ``text`` to a file made now with ``mode`` (then added to ``created``): FileExistsError when anything,
    a symbolic link too, is there already."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode)  # the mode, less the umask, from the start: a secret is never readable by others
    created.append(path)
    with open(fd, "w", encoding="utf-8", newline="\n") as f:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # the mode whatever the umask (a public key readable by anyone)
        f.write(text)


def run_keys(args: argparse.Namespace) -> int:
    if not zmq.has("curve"):
        print("error: this libzmq was built without CURVE support", file=sys.stderr)
        return 1
    # everything is checked before anything is written: a failed run leaves no folder or file behind
    for i, name in enumerate(args.names):
        problem = name_problem(name)
        if problem is None and name in args.names[:i]:
            problem = "is given twice"
        if problem is not None:
            shown = name if len(name) <= 40 else f"{name[:40]}... ({len(name)} characters)"
            print(f"error: key name {shown!r} {problem}", file=sys.stderr)
            return 2
    out: Path = args.out
    pairs = [(name, out / f"{name}.key", out / f"{name}{SECRET_SUFFIX}") for name in args.names]
    exists = "error: {} or {} exists already; remove it first (keys are never overwritten)"
    made_folder = False
    try:
        if out.exists() and not out.is_dir():
            print(f"error: {out} exists and is not a folder; -o takes the folder to write the keys to",
                  file=sys.stderr)
            return 1
        try:
            out.mkdir(parents=True)
            made_folder = True
        except FileExistsError:
            if not out.is_dir():
                raise
        for _, public, secret in pairs:
            if os.path.lexists(public) or os.path.lexists(secret):  # a link counts, even one to nothing
                print(exists.format(public, secret), file=sys.stderr)
                _remove_folder(out, made_folder)
                return 1
    except OSError as exc:
        _remove_folder(out, made_folder)
        print(f"error: cannot use {out} as the keys' folder: {exc.strerror or exc}", file=sys.stderr)
        return 1
    # Each file is created here or not at all (O_EXCL): another run writing the same names at the same moment
    # makes this one fail, never overwrites a file of its or leaves a pair of two different runs' halves.
    written: list[Path] = []
    path = out
    try:
        for _, public, secret in pairs:
            public_key, secret_key = zmq.curve_keypair()
            for path, text, mode in ((public, certificate(public_key), 0o644),
                                     (secret, certificate(public_key, secret_key), 0o600)):
                create_new(path, text, mode, written)  # a file made by this run, removed if a later one fails
    except OSError as exc:
        for done in written:  # only what this run made, a file half written included
            with contextlib.suppress(OSError):
                done.unlink()
        if exc.errno == errno.EEXIST and path not in written:  # a run beside this one made it since the check above
            print(exists.format(*next((p, s) for _, p, s in pairs if path in (p, s))), file=sys.stderr)
        else:
            print(f"error: cannot write {path}: {exc.strerror or exc}; no key was written", file=sys.stderr)
        _remove_folder(out, made_folder)
        return 1
    for name, public, secret in pairs:
        print(f"{name}: public {public}, secret {secret}")
    print("serve: --curve-secret-key <server>.key_secret --curve-clients <folder of the clients' .key files>; "
          "each client: the server's .key and its own .key_secret (see docs/SERVE.md, 'Serving beyond this machine')")
    return 0


def _remove_folder(out: Path, made: bool) -> None:
    """Remove the keys' folder if this run made it and it is empty (another run may have written to it)."""
    if made:
        with contextlib.suppress(OSError):
            out.rmdir()
