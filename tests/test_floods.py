"""The flood guard (ksdiff_runtime/server/floods.py): each client's share of the io thread, on a clock the
test drives; over real ZeroMQ, the runtime's io thread: tests/test_serve.py."""

from __future__ import annotations

from ksdiff_runtime.server.floods import (
    CLIENT_SHARE,
    MAX_CLIENT_SHARE,
    MAX_CLIENTS,
    STREAM_SHARE,
    WINDOW_S,
    FloodGuard,
)


def spend_the_share(guard: FloodGuard, client: bytes, t: float, spent: float = 0.0) -> float:
    """Requests of 10 ms each from ``t`` on, all handled, until the client's share is spent (``spent`` of it
    already in this window); returns the time."""
    while spent < guard.budget_s(client):
        assert guard.admit(client, t) is True
        guard.charge(client, 0.010)
        spent += 0.010
        t += 0.001
    return t


def test_a_client_past_its_share_is_told_once_a_second_and_otherwise_dropped() -> None:
    guard = FloodGuard()
    assert guard.client_budget_s == CLIENT_SHARE * WINDOW_S
    assert guard.admit(b"good", 100.0) is True  # another client, seen before the flood
    t = spend_the_share(guard, b"flood", 100.0)
    assert guard.admit(b"flood", t) is False  # over: told (busy) ...
    assert [guard.admit(b"flood", t + 0.1 * k) for k in range(5)] == [None] * 5  # ... then dropped unread
    assert guard.dropped == 6
    assert guard.admit(b"good", t) is True  # the flood's charges are its own
    t = spend_the_share(guard, b"flood", 100.0 + WINDOW_S)  # a new second: handled again ...
    assert guard.admit(b"flood", t) is False  # ... and told again when over
    assert guard.admit(b"flood", t) is None


def test_clients_within_their_share_are_all_handled() -> None:
    guard = FloodGuard()
    for k in range(2000):  # 20 clients, each just under its share every second
        client = b"c%d" % (k % 20)
        assert guard.admit(client, k * 0.01) is True
        guard.charge(client, 0.9 * guard.client_budget_s / 5)  # 5 requests a second each
    assert guard.dropped == 0


def test_memory_is_bounded_and_a_flood_of_new_identities_does_not_free_a_flooder() -> None:
    """Clients reconnecting in a loop (a new identity each time) make the guard forget the least recently
    seen; a flooder still sending is among the most recent, so it keeps what it spent."""
    guard = FloodGuard()
    assert guard.admit(b"flood", 0.0) is True
    guard.charge(b"flood", 1.0)
    assert guard.admit(b"flood", 0.001) is False
    for k in range(2 * MAX_CLIENTS):
        now = 0.002 + 1e-7 * k
        assert guard.admit(b"n%d" % k, now) is True
        if k % 100 == 0:
            assert guard.admit(b"flood", now) is None
        assert len(guard._clients) <= MAX_CLIENTS


def test_a_client_holding_many_streams_gets_a_share_for_each_up_to_the_io_threads() -> None:
    """A game server feeding 16 NPCs through one connection needs more of the io thread than one client's share:
    its budget is STREAM_SHARE for each stream it holds, at least CLIENT_SHARE, at most MAX_CLIENT_SHARE."""
    held = {b"game": 12, b"few": 2, b"crowd": 1000}
    guard = FloodGuard(streams_of=lambda identity: held.get(identity, 0))
    assert guard.budget_s(b"few") == guard.client_budget_s == CLIENT_SHARE * WINDOW_S
    assert guard.budget_s(b"game") == 12 * STREAM_SHARE * WINDOW_S > guard.client_budget_s
    assert guard.budget_s(b"crowd") == MAX_CLIENT_SHARE * WINDOW_S
    t = spend_the_share(guard, b"game", 100.0)
    assert guard.admit(b"game", t) is False and guard.share(b"game") == 12 * STREAM_SHARE


def test_streams_opened_during_the_window_raise_the_budget_before_the_client_is_told_busy() -> None:
    held = {b"game": 0}
    guard = FloodGuard(streams_of=lambda identity: held[identity])
    t = spend_the_share(guard, b"game", 100.0)  # the share of a client holding nothing
    held[b"game"] = 16  # it opened its NPCs' streams meanwhile
    t = spend_the_share(guard, b"game", t, spent=guard.client_budget_s)
    assert guard.admit(b"game", t) is False
