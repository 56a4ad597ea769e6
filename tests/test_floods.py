"""The flood guard (ksdiff_runtime/server/floods.py): each client's share of the io thread, on a clock the
test drives; over real ZeroMQ, the runtime's io thread: tests/test_serve.py."""

from __future__ import annotations

from ksdiff_runtime.server.floods import CLIENT_SHARE, MAX_CLIENTS, WINDOW_S, FloodGuard


def test_a_client_past_its_share_is_told_once_then_dropped_until_its_window_ends() -> None:
    guard = FloodGuard()
    assert guard.client_budget_s == CLIENT_SHARE * WINDOW_S
    t = 100.0
    spent = 0.0
    while spent < guard.client_budget_s:  # requests of 10 ms each, all handled while under the share
        assert guard.admit(b"flood", t) is True
        guard.charge(b"flood", 0.010)
        spent += 0.010
        t += 0.001
    assert guard.admit(b"flood", t) is False  # over: told once (busy) ...
    assert [guard.admit(b"flood", t + 0.1 * k) for k in range(5)] == [None] * 5  # ... then dropped unread
    assert guard.dropped == 6
    assert guard.admit(b"good", t) is True  # another client has its own share
    assert guard.admit(b"flood", 100.0 + WINDOW_S) is True  # a new second: handled again


def test_cheap_requests_from_many_clients_are_all_handled() -> None:
    guard = FloodGuard()
    for k in range(1000):
        client = b"c%d" % (k % 50)
        assert guard.admit(client, k * 0.001) is True
        guard.charge(client, 0.0001)  # 0.1 ms each: 2 ms a second per client
    assert guard.dropped == 0


def test_memory_is_bounded_and_the_newest_clients_are_kept() -> None:
    """A flood of new identities (a client reconnecting in a loop) forgets the least recently seen."""
    guard = FloodGuard()
    for k in range(3 * MAX_CLIENTS):
        assert guard.admit(b"x%d" % k, 1e-6 * k) is True
    assert len(guard._clients) <= MAX_CLIENTS
    newest = b"x%d" % (3 * MAX_CLIENTS - 1)
    guard.charge(newest, 1.0)
    assert guard.admit(newest, 0.02) is False  # still remembered, with what it spent
