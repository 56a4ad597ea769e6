"""A second stop signal while `serve` stops (a second Ctrl-C; systemd's SIGTERM beside a supervisor's under
`serve --restart`) must not cut its shutdown short: every stream still gets its closing frame, and it exits 0."""

from __future__ import annotations

import signal

import pytest
from peers import Peer, frames_of
from serve_process import Serve

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_while_serve_stops_does_not_cut_its_shutdown_short(speech_wav, signum: signal.Signals) -> None:
    serve = Serve("--file", str(speech_wav), "--fast", "--loop")
    try:
        rt = type("Endpoints", (), {"pub_endpoint": serve.pub, "router_endpoint": serve.router})()
        peer = Peer(rt, wait_hello=False)
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
        assert code == 0, serve.output()
        end = next(m for m in peer.seen if m["type"] == "stream_end" and m["stream"] == "speech")
        assert end["reason"] == "shutdown"
        assert frames_of(peer.seen, "speech")[-1]["last"]
        assert any("server: stopped" in line for line in serve.log), serve.output()
    finally:
        serve.stop()
