"""What the Python SDK sends again after a client-level ``busy``, and in what order (protocol/SPEC.md 4.6, "A client
past its share"), against the real runtime on loopback (ephemeral ports, real ZeroMQ sockets).

The runtime drops a client's requests unread from the one that took it past its share of the io thread until its
window of a second ends. A line's audio the runtime dropped goes again once that is over; the runtime takes only what
it lacks of a copy, and a copy fills its gap only if no later audio of the line reached the runtime first. A relay
in front of the runtime's ROUTER makes messages wait on the way, as ZeroMQ's and TCP's queues do under a burst.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from peers import TcpRelay, sample_speech, spend_share

from ksdiff_runtime.engine.controls import stream_frames
from ksdiff_runtime.server.floods import WINDOW_S
from ksdiff_runtime.server.runtime import Runtime
from ksdiff_sdk import Client

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 30.0


def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT_S} s"
        time.sleep(0.01)


def wait_past(t: float) -> None:
    """Until the clock (time.monotonic()) passes ``t``: what is tested here depends on the time itself (a window of
    drops that ends, a message older than one)."""
    wait_for(lambda: time.monotonic() > t, "time passing")


def busy(client: Client) -> int:
    return sum(1 for e in client.errors if e.code == "busy")


def test_audio_sent_long_before_a_busy_and_read_in_its_window_is_sent_again(runtime: Runtime) -> None:
    """A line's audio waited on the way (a runtime that read nothing for a while) for longer than a busy window and
    was read, and dropped, in one: it went again only if it had left the client less than BUSY_WINDOW_S before the
    busy, so it was lost, and the line ended on nothing. What may have been dropped is everything sent after the last
    request the runtime answered before the busy (it reads a connection's messages in order)."""
    with TcpRelay(runtime.router_endpoint) as relay, \
            Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        line = client.open_stream("late", mode="line")
        line.set_controls({})  # answered: the connection through the relay is up, and everything before was read
        session = runtime.sessions.get("late")
        relay.hold_requests()
        line.push(sample_speech(0.5))
        wait_past(time.monotonic() + 1.5 * WINDOW_S)  # on its way for longer than a window
        spend_share(runtime, "late")
        relay.release_requests()  # read now: dropped unread, busy
        wait_for(lambda: busy(client) == 1, "busy")
        assert line.end() == stream_frames(8_000, 30)
        assert session.input.received == 8_000 and line.errors == []
        assert client.resent >= 1


def test_a_lines_audio_pushed_while_the_drops_last_goes_after_the_copies_of_what_was_dropped(
        runtime: Runtime) -> None:
    """The runtime's drops ended before the client's resend (which waits BUSY_WINDOW_S from the busy: the most they
    last); audio the line pushed meanwhile went at once, reached the runtime before the copy of what it had dropped,
    and the runtime filled the gap with silence (a copy then fills nothing). It waits now, and goes after the copies."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        line = client.open_stream("queued", mode="line")
        line.set_controls({})
        session = runtime.sessions.get("queued")
        drops_end = spend_share(runtime, "queued", ends_in=0.5)
        line.push(sample_speech(0.5))  # dropped unread: busy
        wait_for(lambda: busy(client) == 1, "busy")
        wait_past(drops_end)  # the runtime reads this client's requests again; the client's resend is still to come
        line.push(sample_speech(0.5), at_sample=8_000)
        assert line.end() == stream_frames(16_000, 30)
        assert session.input.gap_samples == 0  # the first half is the speech sent again, not silence
        assert line.errors == []


def test_a_lines_audio_and_end_stream_wait_until_the_runtime_has_read_its_audio_before(runtime: Runtime) -> None:
    """A line's audio was dropped unread, and the busy saying so was still on its way when the line pushed more and
    ended: both left at once, were read once the drops had ended, and the stream ended on a gap of silence before
    the copy came. A line's next message now leaves only once the runtime has answered a request sent after the one
    before (a hello follows a line's messages for that), so the copy goes first."""
    with TcpRelay(runtime.router_endpoint) as relay, \
            Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        line = client.open_stream("inflight", mode="line")
        line.set_controls({})
        session = runtime.sessions.get("inflight")
        drops_end = spend_share(runtime, "inflight", ends_in=0.5)
        relay.hold_replies()  # the client does not know of the drops yet
        line.push(sample_speech(0.5))  # dropped unread
        wait_for(lambda: runtime.floods._clients[session.owner].dropped >= 1, "drop")
        wait_past(drops_end)
        line.push(sample_speech(0.5), at_sample=8_000)
        assert line.end(wait=False) is None
        relay.release_replies()
        assert line.end() == stream_frames(16_000, 30)
        assert session.input.gap_samples == 0
        assert busy(client) == 1 and line.errors == []


def test_a_request_made_while_the_drops_last_waits_for_their_end_instead_of_being_dropped(runtime: Runtime) -> None:
    """Once told of the drops, the client holds what it would send (but a live stream's audio) until they are over:
    an open_stream sent in the window was dropped unread and its call timed out."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        line = client.open_stream("first", mode="line")
        line.set_controls({})
        spend_share(runtime, "first")
        line.push(sample_speech(0.1))  # dropped unread: busy
        wait_for(lambda: busy(client) == 1, "busy")
        second = client.open_stream("second", mode="line", timeout=4 * WINDOW_S)
        second.push(sample_speech(0.2))
        assert second.end() == stream_frames(3_200, 30)
        assert line.end() == stream_frames(1_600, 30)
        assert client.withdrawn == 0 and busy(client) == 1


def test_lines_pushed_whole_at_once_keep_all_their_audio_while_it_waits_its_turn(runtime: Runtime) -> None:
    """Eight NPC lines of 10 s at 48 kHz stereo pushed whole at once: 4 messages of up to 1 MiB each, those after a
    line's first waiting in the client until the runtime has answered a request sent after the one before (here the
    answers are held on the way: 21 MiB wait). The client took that wait for a runtime that takes nothing and
    dropped the oldest audio past 16 MiB (client.unsent); only a DEALER that takes nothing counts as that."""
    with TcpRelay(runtime.router_endpoint) as relay, \
            Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        lines = [client.open_stream(f"npc{i}", sample_rate=48_000, channels=2, mode="line") for i in range(8)]
        sessions = [runtime.sessions.get(line.stream) for line in lines]
        x = np.resize(sample_speech(1.0, 48_000), 480_000)
        relay.hold_replies()
        for line in lines:
            line.push(np.stack([x, x], axis=1))
        # each line's first message read: the client has taken every push (its I/O thread takes all queued at once)
        wait_for(lambda: all(s.input.received > 0 for s in sessions), "first message of each line")
        relay.release_replies()
        wait_for(lambda: all(s.input.received == 480_000 for s in sessions), "whole audio of each line")
        assert client.unsent == 0 and [line.errors for line in lines] == [[]] * 8


def test_a_lines_dropped_audio_goes_again_when_the_window_ends_during_a_pass_of_the_io_thread(
        runtime: Runtime) -> None:
    """The client's I/O thread looked for audio to send again at the start of a pass, and for end_streams at its
    end: a window of drops that ended in between had its end_streams sent again and was forgotten, its audio never
    (the line ended without it). A live stream pushing without pause keeps the thread in passes over that moment;
    it does not always fall inside one (a third of the rounds, here), so three rounds."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        mic = client.open_stream("mic")
        silence = np.zeros(160, np.float32)
        for n in range(1, 4):
            line = client.open_stream(f"line{n}", mode="line")
            line.set_controls({})
            session = runtime.sessions.get(line.stream)
            spend_share(runtime, line.stream)
            line.push(sample_speech(0.5))  # dropped unread: busy
            wait_for(lambda n=n: busy(client) == n, "busy")
            until = time.monotonic() + 1.5 * WINDOW_S
            while time.monotonic() < until:  # the same 10 ms again and again: a pass of the I/O thread each
                mic.push(silence, at_sample=0)
            assert line.end() == stream_frames(8_000, 30), f"round {n}"
            assert session.input.received == 8_000 and line.errors == []

