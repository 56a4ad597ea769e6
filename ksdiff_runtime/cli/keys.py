"""`ksdiff-runtime keys`: CurveZMQ key pairs for a runtime that listens beyond this machine.

The server's pair (its secret stays with `serve`, its public key goes to every client) and one
pair per client (the client keeps its secret; its public key goes into the server's folder of
authorised clients). Files are ZeroMQ certificates (``NAME.key`` public, ``NAME.key_secret``
secret), as pyzmq's ``zmq.auth`` and czmq write and read them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import zmq.auth


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
    try:
        if out.exists() and not out.is_dir():
            print(f"error: {out} exists and is not a folder; -o takes the folder to write the keys to",
                  file=sys.stderr)
            return 1
        made_folder = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        for _, public, secret in pairs:
            if public.exists() or secret.exists():
                print(f"error: {public} or {secret} exists already; remove it first (keys are never overwritten)",
                      file=sys.stderr)
                return 1
    except OSError as exc:
        print(f"error: cannot use {out} as the keys' folder: {exc.strerror or exc}", file=sys.stderr)
        return 1
    written: list[Path] = []
    # pyzmq creates the files with the process's umask (0644 with the usual 022), so the secret key was readable by
    # others from its creation until the chmod below; under this umask it is the owner's alone from the start
    umask = os.umask(0o077)
    try:
        for name, public, secret in pairs:
            written += [public, secret]  # before the write: a pair half written is removed too
            zmq.auth.create_certificates(str(out), name)
            os.chmod(secret, 0o600)  # the secret key is for its owner only (on Windows, where umask does little)
            os.chmod(public, 0o644)  # the public one is for anyone to read
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if made_folder:
            out.rmdir()
        where = exc.filename if exc.filename is not None else out
        print(f"error: cannot write {where}: {exc.strerror or exc}; no key was written", file=sys.stderr)
        return 1
    finally:
        os.umask(umask)
    for name, public, secret in pairs:
        print(f"{name}: public {public}, secret {secret}")
    print("serve: --curve-secret-key <server>.key_secret --curve-clients <folder of the clients' .key files>; "
          "each client: the server's .key and its own .key_secret (see docs/SERVE.md, 'Serving beyond this machine')")
    return 0
