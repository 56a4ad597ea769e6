"""A second stop signal while `serve` stops (a second Ctrl-C; systemd's SIGTERM beside a supervisor's under
`serve --restart`) must not cut its shutdown short: every stream still gets its closing frame, and it exits 0."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
from peers import Peer, frames_of
from serve_process import Serve

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_while_serve_stops_does_not_cut_its_shutdown_short(speech_wav, signum: signal.Signals) -> None:
    serve = Serve("--file", str(speech_wav), "--fast", "--loop")
    try:
        peer = Peer(SimpleNamespace(pub_endpoint=serve.pub, router_endpoint=serve.router), wait_hello=False)
        try:
            peer.wait_pub(lambda m: m["type"] == "frame" and m["stream"] == "speech")
            serve.proc.send_signal(signum)
            serve.wait_for(r"stream speech ended \(shutdown\)")  # the stop is under way
            serve.proc.send_signal(signum)
            code = serve.proc.wait(timeout=30)
            peer.wait_pub(lambda m: m["type"] == "stream_end" and m["stream"] == "speech")
        finally:
            peer.close()
        serve.read_to_end()
        # What the second signal must not cut short: serve's whole shutdown, and every stream's closing frame.
        assert any("server: stopped" in line for line in serve.log), serve.output()
        end = next(m for m in peer.seen if m["type"] == "stream_end" and m["stream"] == "speech")
        assert end["reason"] == "shutdown"
        assert frames_of(peer.seen, "speech")[-1]["last"]
        # On a loaded machine the second signal can come only after serve's shutdown ended and its handlers went
        # back, as it exits: the signal's default action then ends it (SIGINT's: KeyboardInterrupt, exit 130), with
        # nothing left to cut (the checks above).
        assert code in (0, -signum, 128 + signum), serve.output()
    finally:
        serve.stop()
