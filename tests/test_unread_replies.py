"""A client that sends requests and never reads the answers costs the runtime nothing but those answers, and the
runtime says so (the ``unread_reply`` warning); answers to a client that has gone are dropped quietly. Real runtime,
real ZeroMQ sockets on loopback, ephemeral ports."""

from __future__ import annotations

import logging
import time

import pytest
import zmq
from peers import TIMEOUT_S, Peer

from ksdiff_sdk import protocol as P

pytestmark = pytest.mark.timeout(120)


def test_a_client_that_never_reads_its_answers_is_said_and_the_others_are_served(runtime) -> None:
    """The ROUTER dropped the answers it could not queue for a client that reads nothing without a word (the
    warning for it was never logged: ZeroMQ's ROUTER drops them silently unless told to refuse)."""
    ctx = zmq.Context.instance()
    deaf = ctx.socket(zmq.DEALER)
    deaf.setsockopt(zmq.LINGER, 0)
    deaf.setsockopt(zmq.RCVHWM, 1)
    deaf.setsockopt(zmq.RCVBUF, 4096)  # the kernel holds little of what it does not read, either
    deaf.connect(runtime.router_endpoint)
    other = Peer(runtime)
    try:
        request = P.encode_request("hello", req=1)
        deadline = time.monotonic() + TIMEOUT_S
        while runtime.warnings.counts.get("unread_reply", 0) == 0:
            assert time.monotonic() < deadline, "no unread_reply warning"
            for _ in range(200):  # within its share of the io thread: requests dropped unread say nothing
                deaf.send(request)
            other.request("hello")  # served all along (and paces the flood)
        assert other.request("hello")["type"] == "hello"
    finally:
        deaf.close()
        other.close()


def test_answers_to_a_client_that_has_gone_are_dropped_quietly(runtime, caplog: pytest.LogCaptureFixture) -> None:
    """A client that sent a request and closed before its answer: the answer has nowhere to go (ZeroMQ refuses it,
    EHOSTUNREACH, which stopped the io thread). It is dropped with no warning (a client that went is no fault) and
    the runtime goes on. Whether the runtime sees the client gone before it answers depends on timing: clients go
    until one answer met a client gone."""
    caplog.set_level(logging.DEBUG, logger="ksdiff_runtime.server")
    ctx = zmq.Context.instance()
    deadline = time.monotonic() + TIMEOUT_S
    while not any("a client that has gone" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "no answer met a client gone"
        assert runtime.failure is None, runtime.failure
        gone = ctx.socket(zmq.DEALER)
        gone.setsockopt(zmq.LINGER, 1000)  # the request leaves before the socket closes
        gone.connect(runtime.router_endpoint)
        gone.send(P.encode_request("open_stream", stream="x", sample_rate=16000, channels=1, format="f32le", req=1))
        gone.close()
    other = Peer(runtime)
    try:
        assert other.request("hello")["type"] == "hello"
    finally:
        other.close()
    assert runtime.warnings.counts.get("unread_reply", 0) == 0
