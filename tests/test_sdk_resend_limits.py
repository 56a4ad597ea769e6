"""What the Python SDK sends again after a client-level ``busy``, and in what order (protocol/SPEC.md 4.6, "A client
past its share"), against the real runtime on loopback (ephemeral ports, real ZeroMQ sockets).

The runtime drops a client's requests unread from the one that took it past its share of the io thread until its
window of a second ends. A line's audio the runtime dropped goes again once that is over; the runtime takes only what
it lacks of a copy, and a copy fills its gap only if no later audio of the line reached the runtime first. A relay
in front of the runtime's ROUTER makes messages wait on the way, as ZeroMQ's and TCP's queues do under a burst.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from peers import TcpRelay, sample_speech, spend_share

from ksdiff_runtime.engine.controls import stream_frames
from ksdiff_runtime.server.floods import WINDOW_S
from ksdiff_runtime.server.runtime import Runtime
from ksdiff_sdk import Client, StreamLost

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


def test_an_open_stream_dropped_unread_goes_again_once_a_later_request_is_answered(runtime: Runtime) -> None:
    """An open_stream that left before the client was told of the drops, and was dropped unread, waited for its
    timeout (60 s by default: an NPC's line that never starts). Once the drops are over a hello follows; its answer
    says the runtime read (here: dropped) every message before it, so an open_stream still unanswered goes again."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        line = client.open_stream("first", mode="line")
        line.set_controls({})
        spend_share(runtime, "first")
        second = client.open_stream("second", mode="line", timeout=4 * WINDOW_S)  # dropped unread: busy
        assert busy(client) == 1 and client.withdrawn == 0
        assert client.resent == 2  # the open_stream and the hello before it (its answer names the runtime's instance)
        second.push(sample_speech(0.2))
        assert second.end() == stream_frames(3_200, 30)


def test_a_set_controls_dropped_unread_goes_again_once_a_later_request_is_answered(runtime: Runtime) -> None:
    """The same for a live stream's set_controls (a mood change a game asked for must not be lost, nor its call stall
    for 60 s)."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        mic = client.open_stream("mic")
        spend_share(runtime, "mic")
        done = mic.set_controls({"mood": "happy"}, timeout=4 * WINDOW_S)  # dropped unread: busy
        assert done["mood"] == "happy"
        assert runtime.sessions.get("mic").controls.mood == "happy"
        assert busy(client) == 1 and client.resent == 1


def test_an_open_stream_still_on_its_way_when_the_drops_end_is_not_sent_twice(runtime: Runtime) -> None:
    """An open_stream that left before the busy came, and that the runtime reads only after its drops ended (it
    waited in the queues on the way), is carried out once: unanswered when the window ends is no proof that it was
    dropped (a second copy would open a second stream). Only the answer to a request sent after it is."""
    with TcpRelay(runtime.router_endpoint) as relay, \
            Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        mic = client.open_stream("mic")
        mic.set_controls({})
        drops_end = spend_share(runtime, "mic", ends_in=0.5)
        relay.hold_replies()
        mic.push(np.zeros(1_600, np.float32))  # dropped unread; its busy held on the way
        wait_for(lambda: runtime.floods._clients[runtime.sessions.get("mic").owner].dropped >= 1, "drop")
        relay.hold_requests()
        opened: list[object] = []
        opener = threading.Thread(target=lambda: opened.append(client.open_stream(mode="line")))
        opener.start()  # an id of the runtime's choice: a second copy would open a second stream
        relay.release_replies()
        wait_for(lambda: busy(client) == 1, "busy")
        wait_past(max(drops_end, time.monotonic() + 1.5 * WINDOW_S))  # the client's window is over
        relay.release_requests()
        opener.join(TIMEOUT_S)
        assert len(opened) == 1
        mic.set_controls({})  # answered: everything sent before it was read
        assert sorted(s.id for s in runtime.sessions) == sorted(["mic", opened[0].stream])
        assert client.resent == 0


@pytest.mark.parametrize("read", [False, True], ids=["lost-on-the-way", "read-answer-lost"])
@pytest.mark.parametrize("stream", ["npc", None], ids=["own-id", "runtime-id"])
def test_an_open_stream_on_a_connection_that_dropped_fails_at_once_and_is_never_sent_twice(
        runtime: Runtime, read: bool, stream: str | None) -> None:
    """The network dropped the connection while an open_stream was on its way: lost before the runtime read it, or
    read (the stream opened, for the old connection) with its answer lost. The client cannot tell which: sent again on
    the new connection it opened a second stream, or was refused "already open" for an open that had worked; left
    alone it waited for its timeout. It fails at once, as the streams of that connection do (StreamLost "reconnect")."""
    with TcpRelay(runtime.router_endpoint) as relay, \
            Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        client.open_stream("mic").set_controls({})
        if read:
            relay.hold_replies()
        else:
            relay.hold_requests()
        failed: list[BaseException] = []

        def opener() -> None:
            try:
                client.open_stream(stream, mode="line")
            except BaseException as e:
                failed.append(e)

        thread = threading.Thread(target=opener)
        thread.start()
        if read:  # the runtime opened it
            wait_for(lambda: len(runtime.stream_ids) == 2, "the stream opened")
        else:
            def left() -> bool:
                with client._cv:
                    return any(r.mtype == "open_stream" and r.sent_no is not None for r in client._pending.values())
            wait_for(left, "open_stream sent")
        relay.cut()
        relay.release_requests()
        relay.release_replies()
        thread.join(TIMEOUT_S)
        assert not thread.is_alive() and len(failed) == 1, failed
        assert isinstance(failed[0], StreamLost) and failed[0].reason == "reconnect", failed[0]
        client.open_stream("after").set_controls({})  # the new connection serves: and nothing else was sent
        assert len(runtime.stream_ids) == (3 if read else 2), runtime.stream_ids  # mic (lost), [the open], after
        assert client.resent <= 1  # the hello before the open_stream, at most (it goes again safely)


def test_a_set_controls_on_a_connection_that_dropped_fails_at_once(runtime: Runtime) -> None:
    """The same for a set_controls whose answer was lost with the connection (the runtime had set it)."""
    with TcpRelay(runtime.router_endpoint) as relay, \
            Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        mic = client.open_stream("mic")
        mic.set_controls({})
        relay.hold_replies()
        failed: list[BaseException] = []

        def setter() -> None:
            try:
                client.set_controls("mic", {"mood": "happy"})
            except BaseException as e:
                failed.append(e)

        thread = threading.Thread(target=setter)
        thread.start()
        wait_for(lambda: runtime.sessions.get("mic").controls.mood == "happy", "the controls set")
        relay.cut()
        relay.release_replies()
        thread.join(TIMEOUT_S)
        assert not thread.is_alive() and len(failed) == 1, failed
        assert isinstance(failed[0], StreamLost) and failed[0].reason == "reconnect", failed[0]
        assert client.resent == 0


class QuietMic:
    """A source the runtime plays itself (its ``mic``), which sends nothing: a stream no client owns."""

    kind, mode, stream_id, sample_rate, channels = "mic", "live", "mic", 48000, 1

    def start(self, on_audio: object, on_end: object) -> None:
        pass

    def stop(self) -> None:
        pass


def test_a_set_controls_of_the_runtimes_own_stream_on_a_connection_that_dropped_goes_again(runtime: Runtime) -> None:
    """A control panel's set_controls of the runtime's mic, on its way when the connection dropped, raised StreamLost
    ("open a new stream") with the first version of the rule: the mic lost nothing with the connection, and a
    second copy sets the same controls. It goes again on the next connection."""
    runtime.add_source(QuietMic())
    with TcpRelay(runtime.router_endpoint) as relay, \
            Client(runtime.pub_endpoint, relay.endpoint, timeout=TIMEOUT_S) as client:
        client.set_controls("mic", {"timing_offset_ms": 0})  # the connection through the relay is up
        relay.hold_requests()
        got: list[object] = []

        def setter() -> None:
            try:
                got.append(client.set_controls("mic", {"timing_offset_ms": 10}))
            except BaseException as e:
                got.append(e)

        thread = threading.Thread(target=setter)
        thread.start()

        def left() -> bool:
            with client._cv:
                return any(r.mtype == "set_controls" and r.sent_no is not None for r in client._pending.values())

        wait_for(left, "set_controls sent")
        relay.cut()
        relay.release_requests()
        thread.join(TIMEOUT_S)
        assert len(got) == 1 and isinstance(got[0], dict), got
        assert got[0]["timing_offset_ms"] == 10 and runtime.sessions.get("mic").controls.timing_offset_ms == 10


def test_a_request_the_runtime_could_not_read_is_refused_before_it_is_sent(runtime: Runtime) -> None:
    """A set_controls past the runtime's request limits (more than 64 entries in a map) is refused by the runtime
    without its req: the call waited for its timeout, and the request, unanswered behind an answered hello, went
    again every second. It is a ValueError now, before anything is sent."""
    with Client(runtime.pub_endpoint, runtime.router_endpoint, timeout=TIMEOUT_S) as client:
        mic = client.open_stream("mic")
        with pytest.raises(ValueError, match="would refuse this set_controls"):
            mic.set_controls({"shapes": {f"jaw{i}": {"gain": 1.0} for i in range(70)}})
        mic.set_controls({})  # answered: the runtime read all that was sent
        assert client.resent == 0 and list(client.errors) == []
        assert runtime.refusals.counts.get("malformed", 0) == 0
