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


def run_keys(args: argparse.Namespace) -> int:
    if not zmq.has("curve"):
        print("error: this libzmq was built without CURVE support", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        if not name or "/" in name or name.startswith("."):
            print(f"error: {name!r} is not a plain file name", file=sys.stderr)
            return 2
        public, secret = args.out / f"{name}.key", args.out / f"{name}.key_secret"
        if public.exists() or secret.exists():
            print(f"error: {public} or {secret} exists already; remove it first (keys are never overwritten)",
                  file=sys.stderr)
            return 1
        zmq.auth.create_certificates(str(args.out), name)
        os.chmod(secret, 0o600)  # the secret key is for its owner only
        print(f"{name}: public {public}, secret {secret}")
    print("serve: --curve-secret-key <server>.key_secret --curve-clients <folder of the clients' .key files>; "
          "each client: the server's .key and its own .key_secret (see docs/SERVE.md, 'Serving beyond this machine')")
    return 0
