"""The gateway's prefill queue, pure: the queue itself, the router holding and releasing calls on an
injected clock, queue-aware cost strategies, and the simulator driving it."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexlb.balancer.events import HoldEvent, Released
from flexlb.balancer.hold_driver import HoldDriver
from flexlb.balancer.prefill_queue import PrefillQueue, PrefillQueueConfig
from flexlb.balancer.prefix_index import PrefixIndexConfig
from flexlb.balancer.request import RouteRequest
from flexlb.balancer.router import Router
from flexlb.balancer.strategies import strategy_names
from flexlb.balancer.workers import Lease, Role, WorkerState
from flexlb.sim.engine import EngineParams
from flexlb.sim.simulator import TRACE_BLOCK_TOKENS, SimConfig, TraceRequest, simulate
from tests.balancer_support import FakeClock, Recorder, addrs, make_router

W = "w"
T0 = 1000.0  # a clock that does not start at 0, like time.monotonic()

# the router's default TTFT priors: prefill = 20 ms + 0.1 ms per uncached prompt token
P100, P1000, P2000, P3000, P5000 = 30.0, 120.0, 220.0, 320.0, 520.0


# ---------------------------------------------------------------------------------------------- PrefillQueue


def test_config_enabled_only_with_depth() -> None:
    assert PrefillQueueConfig() == PrefillQueueConfig(depth=2, aging=1.0, max_hold_ms=30_000, hold_after_ms=100.0)
    assert PrefillQueueConfig().enabled
    assert not PrefillQueueConfig(depth=0).enabled
    assert PrefillQueueConfig(depth=3).enabled


def test_one_client_with_a_backlog_cannot_hold_back_another() -> None:
    q = PrefillQueue(PrefillQueueConfig())
    for seq in range(100):  # a burst of a hundred 10 ms prefills from one connection at T0
        q.push(W, seq, 10.0, T0, client="flood")
    q.push(W, 1000, 10.0, T0 + 0.001, client="other")  # another client, one ms later
    order = [q.pop(W).seq for _ in range(5)]  # type: ignore[union-attr]
    assert order.index(1000) <= 1, order  # about one of the flood's prefills ahead of it, not a hundred
    # without client identities (the simulator's calls) the plain order holds: the late call is last
    plain = PrefillQueue(PrefillQueueConfig())
    for seq in range(100):
        plain.push(W, seq, 10.0, T0)
    plain.push(W, 1000, 10.0, T0 + 0.001)
    assert [plain.pop(W).seq for _ in range(101)][-1] == 1000  # type: ignore[union-attr]


def test_a_client_without_backlog_starts_fresh() -> None:
    q = PrefillQueue(PrefillQueueConfig())
    q.push(W, 1, 50.0, T0, client="a")
    assert q.pop(W).seq == 1  # type: ignore[union-attr]
    # nothing of "a" is held any more: its next call is ordered by its own arrival and prefill
    q.push(W, 2, 30.0, T0 + 0.01, client="b")
    q.push(W, 3, 10.0, T0 + 0.01, client="a")
    assert [q.pop(W).seq, q.pop(W).seq] == [3, 2]  # type: ignore[union-attr]
    assert not q._client_keys[W] and not q._served_ms[W]  # nothing is remembered for clients with nothing held


def test_shortest_estimated_prefill_leaves_first() -> None:
    q = PrefillQueue(PrefillQueueConfig())
    for seq, ms in ((1, 300.0), (2, 100.0), (3, 200.0), (4, 50.0)):
        q.push(W, seq, ms, T0)
    assert len(q) == 4 and q.held(W) == 4
    assert [q.pop(W).seq for _ in range(4)] == [4, 2, 3, 1]  # type: ignore[union-attr]
    assert q.pop(W) is None
    assert len(q) == 0 and q.held(W) == 0


def test_order_key_is_prefill_plus_aging_times_arrival() -> None:
    q = PrefillQueue(PrefillQueueConfig(aging=2.0))
    call = q.push(W, 1, 150.0, T0)
    assert call.key == q.order_key(150.0, T0) == 150.0 + 2.0 * T0 * 1000.0
    assert (call.seq, call.worker, call.prefill_ms, call.held_s) == (1, W, 150.0, T0)


@pytest.mark.parametrize(
    ("short_after_s", "first"),
    [
        (0.0, "short"),
        (0.249, "short"),  # 250 + 249 < 500 + 0: the short one overtakes
        (0.25, "long"),  # 250 + 250 == 500 + 0: equal keys keep arrival order
        (0.251, "long"),
        (10.0, "long"),
    ],
)
def test_aging_bounds_how_late_a_short_call_may_overtake(short_after_s: float, first: str) -> None:
    # key = prefill_ms + aging * held_at_ms; a 500 ms prefill held at T0 against a 250 ms one held
    # `short_after_s` later: the short one leaves first exactly while 250 + 1000 * dt < 500
    q = PrefillQueue(PrefillQueueConfig(aging=1.0))
    q.push(W, 1, 500.0, T0)
    q.push(W, 2, 250.0, T0 + short_after_s)
    got = q.pop(W)
    assert got is not None
    assert got.seq == (2 if first == "short" else 1)


def test_without_aging_short_calls_always_overtake() -> None:
    q = PrefillQueue(PrefillQueueConfig(aging=0.0))
    q.push(W, 1, 500.0, T0)
    q.push(W, 2, 250.0, T0 + 3600.0)
    assert [q.pop(W).seq, q.pop(W).seq] == [2, 1]  # type: ignore[union-attr]


def test_stronger_aging_moves_the_crossover_earlier() -> None:
    # aging 4: 250 + 4 * 1000 * dt < 500 only while dt < 62.5 ms
    q = PrefillQueue(PrefillQueueConfig(aging=4.0))
    q.push(W, 1, 500.0, T0)
    q.push(W, 2, 250.0, T0 + 0.0625)
    q.push(W, 3, 250.0, T0 + 0.0620)
    assert [c.seq for c in q.take_all(W)] == [3, 1, 2]


def test_equal_keys_leave_in_arrival_order() -> None:
    q = PrefillQueue(PrefillQueueConfig())
    for seq in (1, 2, 3, 4):
        q.push(W, seq, 100.0, T0)
    # same aged key reached from a different prefill and hold time: still behind the earlier calls
    q.push(W, 5, 99.0, T0 + 0.001)
    q.push(W, 6, 100.0, T0)
    assert [c.seq for c in q.take_all(W)] == [1, 2, 3, 4, 5, 6]


def test_remove_takes_one_call_out() -> None:
    q = PrefillQueue(PrefillQueueConfig())
    for seq, ms in ((1, 300.0), (2, 100.0), (3, 200.0)):
        q.push(W, seq, ms, T0)
    q.push("other", 4, 10.0, T0)
    removed = q.remove(3)
    assert removed is not None and (removed.seq, removed.prefill_ms) == (3, 200.0)
    assert q.remove(3) is None
    assert q.remove(99) is None
    assert (len(q), q.held(W), q.held_ms(W)) == (3, 2, 400.0)
    assert [c.seq for c in q.take_all(W)] == [2, 1]
    assert q.workers() == ["other"]
    assert q.remove(4) is not None
    assert len(q) == 0 and q.workers() == []


def test_pop_and_take_all_are_per_worker() -> None:
    q = PrefillQueue(PrefillQueueConfig())
    q.push("a", 1, 300.0, T0)
    q.push("b", 2, 50.0, T0)
    q.push("a", 3, 100.0, T0)
    assert q.pop("nobody") is None
    assert q.take_all("nobody") == []
    assert sorted(q.workers()) == ["a", "b"]
    taken = q.take_all("a")
    assert [c.seq for c in taken] == [3, 1]
    assert all(c.worker == "a" for c in taken)
    assert (q.held("a"), q.held("b"), len(q)) == (0, 1, 1)
    got = q.pop("b")
    assert got is not None and got.seq == 2


def test_overdue_after_max_hold() -> None:
    q = PrefillQueue(PrefillQueueConfig(max_hold_ms=1000))
    q.push(W, 1, 100.0, T0)
    q.push("other", 2, 100.0, T0 + 0.5)
    assert q.overdue(T0 + 0.999) == []
    assert [c.seq for c in q.overdue(T0 + 1.0)] == [1]
    assert sorted(c.seq for c in q.overdue(T0 + 1.5)) == [1, 2]
    assert len(q) == 2  # overdue() only reports; the router takes them out


def test_no_max_hold_never_overdue() -> None:
    q = PrefillQueue(PrefillQueueConfig(max_hold_ms=0))
    q.push(W, 1, 100.0, T0)
    assert q.overdue(T0 + 1e6) == []


def test_ahead_counts_the_work_that_leaves_first_and_the_calls_overtaken() -> None:
    q = PrefillQueue(PrefillQueueConfig())
    assert q.ahead(W, 100.0, T0) == (0.0, 0)
    for seq, ms in ((1, 100.0), (2, 300.0), (3, 500.0)):
        q.push(W, seq, ms, T0)
    assert q.ahead(W, 50.0, T0) == (0.0, 3)
    assert q.ahead(W, 200.0, T0) == (100.0, 2)
    assert q.ahead(W, 1000.0, T0) == (900.0, 0)
    # equal key: the newcomer goes behind (arrival order), so that call is ahead of it
    assert q.ahead(W, 300.0, T0) == (400.0, 1)
    # held later, the same prefill sorts later: 200 ms held 300 ms after the others ties with the 500
    assert q.ahead(W, 200.0, T0 + 0.3) == (900.0, 0)
    assert q.ahead(W, 200.0, T0 + 0.05) == (100.0, 2)  # 250: still before the 300
    assert q.ahead(W, 200.0, T0 + 0.15) == (400.0, 1)  # 350: after it
    assert q.ahead("other", 200.0, T0) == (0.0, 0)
    assert (q.held_ms(W), q.held_ms("other")) == (900.0, 0.0)


def test_ahead_matches_where_push_puts_the_call() -> None:
    rng = random.Random(5)
    q = PrefillQueue(PrefillQueueConfig(aging=0.5))
    for seq in range(1, 40):
        now = T0 + rng.uniform(0, 2)
        ms = rng.choice([50.0, 100.0, 150.0, 400.0])
        before_ms, overtaken = q.ahead(W, ms, now)
        q.push(W, seq, ms, now)
        order = sorted(q._calls.values(), key=lambda c: (c.key, c.seq))
        i = [c.seq for c in order].index(seq)
        assert before_ms == pytest.approx(sum(c.prefill_ms for c in order[:i]))
        assert overtaken == len(order) - i - 1


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "push", "push", "pop", "remove"]),
                          st.sampled_from(["a", "b"]),
                          st.sampled_from([10.0, 50.0, 120.0, 500.0]),
                          st.integers(0, 400)), max_size=60))
def test_queue_matches_a_sorted_reference(ops: list[tuple[str, str, float, int]]) -> None:
    q = PrefillQueue(PrefillQueueConfig(aging=1.0))
    ref: dict[int, tuple[str, float, float]] = {}  # seq -> (worker, prefill, held_s)
    seq = 0
    now = T0
    for op, worker, ms, dt_ms in ops:
        now += dt_ms / 1000.0
        if op == "push":
            seq += 1
            q.push(worker, seq, ms, now)
            ref[seq] = (worker, ms, now)
        elif op == "pop":
            mine = [(p + 1000.0 * t, s) for s, (w, p, t) in ref.items() if w == worker]
            got = q.pop(worker)
            if not mine:
                assert got is None
            else:
                assert got is not None and got.seq == min(mine)[1]
                del ref[got.seq]
        elif ref:
            victim = sorted(ref)[dt_ms % len(ref)]
            assert q.remove(victim) is not None
            del ref[victim]
        assert len(q) == len(ref)
        for w in ("a", "b"):
            assert q.held(w) == sum(1 for x in ref.values() if x[0] == w)
            assert q.held_ms(w) == pytest.approx(sum(x[1] for x in ref.values() if x[0] == w))


# ---------------------------------------------------------------------------------------------- Router


_ids = iter(range(1, 1 << 30))


def rreq(tokens: int, exclude: frozenset[str] = frozenset()) -> RouteRequest:
    return RouteRequest(request_id=next(_ids), prompt_tokens=tokens, max_new_tokens=8, exclude=exclude)


def queued_router(n: int = 1, strategy: str = "COST_BASED_PREFILL", **queue: Any) -> tuple[Router, FakeClock, Recorder]:
    queue.setdefault("hold_after_ms", 0.0)  # the depth rule alone, unless a test is about the backlog rule
    clock = FakeClock(T0)
    router = make_router(addrs(Role.PDFUSION, n), strategy, seed=1, clock=clock, queue=PrefillQueueConfig(**queue))
    return router, clock, Recorder(router)


def pending(router: Router, worker: WorkerState) -> list[int]:
    """Seqs of the calls released to the worker and not yet past their first token."""
    return list(router.ttft.worker(worker.key).pending)


def test_router_holds_beyond_depth_and_releases_the_shortest_on_first_token() -> None:
    router, _, rec = queued_router(depth=1)
    w = router.cluster.all()[0]
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(3000), hold=True)
    c = router.route(rreq(100), hold=True)
    assert (a.held, b.held, c.held) == (False, True, True)
    assert pending(router, w) == [a.seq]
    assert router.held_calls() == 2 and router.queue.held(w.key) == 2
    assert w.in_flight == 3  # a held call keeps its reservation
    assert rec.released == [] and rec.evicted == []

    rec.first_token(a, 5.0)
    assert rec.released == [c]  # the shorter held call overtakes the one held before it
    assert not c.held and b.held
    assert pending(router, w) == [c.seq]
    assert router.held_calls() == 1

    rec.first_token(a, 5.0)  # feedback is taken once: no second slot
    assert rec.released == [c]
    rec.first_token(c, 5.0)
    assert rec.released == [c, b]
    assert pending(router, w) == [b.seq] and router.held_calls() == 0
    rec.first_token(b, 5.0)
    assert rec.released == [c, b] and pending(router, w) == []
    for lease in (a, b, c):
        assert rec.release(lease)
    assert w.in_flight == 0 and w.active_tokens == 0
    assert router.ttft.total_pending == 0 and router.held_calls() == 0
    assert rec.evicted == []


def test_a_call_ending_before_its_first_token_frees_its_slot() -> None:
    router, _, rec = queued_router(depth=1)
    w = router.cluster.all()[0]
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True)
    assert b.held
    assert rec.release(a)  # failed or cancelled after it was sent, before any token
    assert rec.released == [b]
    assert pending(router, w) == [b.seq]
    rec.first_token(b, 1.0)
    rec.release(b)
    assert w.in_flight == 0 and router.ttft.total_pending == 0


def test_cancelled_held_call_leaves_the_queue_without_freeing_a_slot() -> None:
    router, _, rec = queued_router(depth=1)
    w = router.cluster.all()[0]
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(100), hold=True)
    c = router.route(rreq(3000), hold=True)
    assert rec.release(b)  # the client went away while it was held
    assert not b.held and b.released
    assert rec.released == []  # a still has the slot: c stays held
    assert c.held and router.held_calls() == 1 and router.queue.held(w.key) == 1
    assert pending(router, w) == [a.seq]
    assert w.in_flight == 2
    rec.first_token(a, 1.0)
    assert rec.released == [c]  # b never comes back
    rec.first_token(c, 1.0)
    rec.release(a)
    rec.release(c)
    assert not rec.release(b)
    assert w.in_flight == 0 and router.ttft.total_pending == 0 and router.held_calls() == 0


def test_depth_zero_never_holds() -> None:
    router, _, rec = queued_router(depth=0)
    w = router.cluster.all()[0]
    leases = [router.route(rreq(1000), hold=True) for _ in range(10)]
    assert not any(lease.held for lease in leases)
    assert len(pending(router, w)) == 10 and router.held_calls() == 0
    for lease in leases:
        rec.release(lease)
    assert rec.released == [] and w.in_flight == 0


@pytest.mark.parametrize("strategy", strategy_names())
def test_only_the_ttft_aware_strategies_hold(strategy: str) -> None:
    # their estimates order the queue; round robin and the peer baselines route straight through
    router, _, rec = queued_router(strategy=strategy, depth=1)
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True)
    assert not a.held
    assert b.held is (strategy in {"SHORTEST_TTFT", "COST_BASED_PREFILL", "CACHE_AWARE"})
    rec.release(a)
    rec.release(b)
    assert router.cluster.ledger.calls == 0 and router.held_calls() == 0


def test_without_hold_a_call_is_never_held_but_takes_a_slot() -> None:
    router, _, rec = queued_router(depth=1)
    w = router.cluster.all()[0]
    direct = [router.route(rreq(1000)) for _ in range(3)]  # e.g. BatchGenerateCall, failover retries
    assert not any(lease.held for lease in direct)
    assert len(pending(router, w)) == 3
    queued = router.route(rreq(10), hold=True)
    assert queued.held  # the worker's slot is taken by calls the queue did not hold
    rec.first_token(direct[0], 1.0)
    rec.first_token(direct[1], 1.0)
    assert rec.released == []  # one is still prefilling
    rec.release(direct[2])
    assert rec.released == [queued]
    for lease in [*direct, queued]:
        rec.release(lease)
    assert w.in_flight == 0 and router.ttft.total_pending == 0


def test_depth_two_releases_two_at_a_time() -> None:
    router, _, rec = queued_router(depth=2)
    w = router.cluster.all()[0]
    a, b, c, d = (router.route(rreq(n), hold=True) for n in (1000, 1000, 3000, 100))
    assert [x.held for x in (a, b, c, d)] == [False, False, True, True]
    rec.first_token(a, 1.0)
    assert rec.released == [d]
    assert sorted(pending(router, w)) == sorted([b.seq, d.seq])
    rec.first_token(d, 1.0)
    assert rec.released == [d, c]
    for x in (a, b, c, d):
        rec.release(x)
    assert w.in_flight == 0 and router.ttft.total_pending == 0 and router.held_calls() == 0


def test_queues_are_per_worker() -> None:
    router, _, rec = queued_router(n=2, depth=1)
    w0, w1 = router.cluster.all()
    on0, on1 = frozenset({w1.key}), frozenset({w0.key})
    a0 = router.route(rreq(1000, on0), hold=True)
    a1 = router.route(rreq(1000, on1), hold=True)
    b0 = router.route(rreq(1000, on0), hold=True)
    b1 = router.route(rreq(1000, on1), hold=True)
    assert [x.decision.target for x in (a0, a1, b0, b1)] == [w0, w1, w0, w1]
    assert [x.held for x in (a0, a1, b0, b1)] == [False, False, True, True]
    assert (router.queue.held(w0.key), router.queue.held(w1.key)) == (1, 1)
    rec.first_token(a1, 1.0)
    assert rec.released == [b1]  # w1's slot frees w1's call only
    rec.first_token(a0, 1.0)
    assert rec.released == [b1, b0]
    for x in (a0, a1, b0, b1):
        rec.release(x)
    assert router.cluster.ledger.calls == 0


def test_pd_calls_are_held_for_their_prefill_worker() -> None:
    clock = FakeClock(T0)
    router = make_router(addrs(Role.PREFILL, 1) + addrs(Role.DECODE, 1, base=9000), "COST_BASED_PREFILL",
                         "WEIGHTED_CACHE", seed=1, clock=clock, queue=PrefillQueueConfig(depth=1, hold_after_ms=0))
    rec = Recorder(router)
    (p,), (d,) = router.cluster.of_role(Role.PREFILL), router.cluster.of_role(Role.DECODE)
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True)
    assert (a.held, b.held) == (False, True)
    assert a.decision.decode is d and b.decision.decode is d
    assert router.queue.held(p.key) == 1 and router.queue.held(d.key) == 0
    assert (p.in_flight, d.in_flight) == (2, 2)  # the held call keeps its decode reservation too
    lone = router.route(rreq(1000), pair=False, hold=False)  # e.g. a BatchGenerateCall on the prefill worker
    assert not lone.held and lone.decision.decode is None
    rec.first_token(a, 1.0)
    assert rec.released == []  # the lone call still prefills there
    rec.release(lone)
    assert rec.released == [b]
    for x in (a, b):
        rec.first_token(x, 1.0)
        rec.release(x)
    assert (p.in_flight, d.in_flight) == (0, 0) and router.ttft.total_pending == 0


def test_events_are_delivered_after_the_router_call_never_nested() -> None:
    router, _, _ = queued_router(depth=1)
    log: list[str] = []
    later: list[Callable[[], None]] = []  # the event loop's call_soon queue

    def deliver(event: HoldEvent) -> None:
        lease = event.lease
        log.append(f"enter {lease.seq}")
        # the caller is gone: it ends before its first token, which frees the slot again
        driver.after(router.release(lease))
        log.append(f"exit {lease.seq}")

    driver = HoldDriver(router, lambda delay, fn: _NoTimer(), later.append, deliver)
    a = router.route(rreq(100), hold=True)
    held = [router.route(rreq(100 * (i + 2)), hold=True) for i in range(3)]
    assert all(x.held for x in held)
    events = router.first_token(a, 1.0)
    assert [e.lease for e in events] == [held[0]] and log == []  # nothing is delivered inside the call
    driver.after(events)
    assert log == [] and len(later) == 1  # nor inside after(): it is deferred
    while later:
        later.pop(0)()
    s = [x.seq for x in held]
    assert log == [f"enter {s[0]}", f"exit {s[0]}", f"enter {s[1]}", f"exit {s[1]}", f"enter {s[2]}",
                   f"exit {s[2]}"]
    router.release(a)
    assert router.cluster.ledger.calls == 0 and router.ttft.total_pending == 0 and router.held_calls() == 0


class _NoTimer:
    def cancel(self) -> None:
        pass


def test_release_returns_the_events_it_causes_exactly_once() -> None:
    router, _, _ = queued_router(depth=1)
    a = router.route(rreq(1000), hold=True, payload="a")
    b = router.route(rreq(1000), hold=True, payload="b")
    assert b.held and router.queue.get(b.seq) is not None
    record = router.queue.get(b.seq)
    assert record is not None and (record.lease, record.payload, record.request.prompt_tokens) == (b, "b", 1000)
    events = router.release(a)  # ends before its first token: its slot goes to b
    assert events == [Released(b, "b")] and not b.held
    assert router.release(a) == [] and router.first_token(a, 1.0) == []
    assert router.first_token(b, 1.0) == [] and router.first_token(b, 1.0) == []
    assert router.release(b) == [] and router.release(b) == []
    assert router.cluster.ledger.calls == 0 and router.ttft.total_pending == 0


def test_drop_held_releases_the_held_calls_whose_caller_left() -> None:
    router, _, _ = queued_router(depth=1)
    w = router.cluster.all()[0]
    gone = {"b", "d"}
    a = router.route(rreq(1000), hold=True, payload="a")
    b, c, d = (router.route(rreq(1000), hold=True, payload=p) for p in "bcd")
    assert (b.held, c.held, d.held) == (True, True, True)
    dropped = router.drop_held(lambda payload: payload in gone)
    assert dropped == [(b, "b"), (d, "d")] and all(x.released and not x.held for x, _ in dropped)
    assert router.held_calls() == 1 and c.held and w.in_flight == 2
    assert router.drop_held(lambda payload: payload in gone) == []
    assert router.first_token(a, 1.0) == [Released(c, "c")]  # the one left gets the slot
    for x in (a, c):
        router.release(x)
    assert router.cluster.ledger.calls == 0 and router.ttft.total_pending == 0


def test_only_the_strategies_the_queue_config_names_hold() -> None:
    router, _, _ = queued_router(strategy="ROUND_ROBIN", depth=1, strategies=frozenset({"ROUND_ROBIN"}))
    router.route(rreq(1000), hold=True)
    assert router.route(rreq(1000), hold=True).held
    cost, _, _ = queued_router(strategy="COST_BASED_PREFILL", depth=1, strategies=frozenset())
    cost.route(rreq(1000), hold=True)
    assert not cost.route(rreq(1000), hold=True).held
    assert PrefillQueueConfig().applies_to("CACHE_AWARE") and not PrefillQueueConfig(depth=0).applies_to("CACHE_AWARE")


# ---------------------------------------------------------------------------------------------- maintain / evict


def test_maintain_releases_calls_held_past_max_hold() -> None:
    router, clock, rec = queued_router(depth=1, max_hold_ms=1000)
    w = router.cluster.all()[0]
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True)
    clock.now = T0 + 0.5
    c = router.route(rreq(1000), hold=True)
    clock.now = T0 + 0.999
    rec.maintain()
    assert rec.released == []
    clock.now = T0 + 1.0
    rec.maintain()
    assert rec.released == [b] and not b.held  # sent although a still holds the slot
    assert pending(router, w) == [a.seq, b.seq]
    assert c.held
    clock.now = T0 + 1.5
    rec.maintain()
    assert rec.released == [b, c]
    assert router.held_calls() == 0 and rec.evicted == []
    for x in (a, b, c):
        rec.release(x)
    assert w.in_flight == 0 and router.ttft.total_pending == 0


def test_maintain_with_no_max_hold_keeps_calls_held() -> None:
    router, clock, rec = queued_router(depth=1, max_hold_ms=0)
    router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True)
    clock.now = T0 + 86_400
    rec.maintain()
    assert b.held and rec.released == []


def _out_of_rotation(w: WorkerState, how: str, now_s: float) -> None:
    if how == "operator":
        w.operator_out = True
    elif how == "unhealthy":
        w.healthy = False
    else:  # passively ejected, and still waiting for its re-admission probe
        w.ejected_until_s = now_s + 5.0
        w.probing = True


@pytest.mark.parametrize("how", ["operator", "unhealthy", "ejected"])
def test_maintain_hands_back_calls_held_for_an_unusable_worker(how: str) -> None:
    router, _, rec = queued_router(n=2, depth=1)
    w0, w1 = router.cluster.all()
    only_w0 = frozenset({w1.key})
    a = router.route(rreq(1000, only_w0), hold=True)
    b = router.route(rreq(3000, only_w0), hold=True)
    c = router.route(rreq(100, only_w0), hold=True)
    other = router.route(rreq(1000, frozenset({w0.key})), hold=True)
    other_held = router.route(rreq(1000, frozenset({w0.key})), hold=True)
    assert (b.held, c.held, other_held.held) == (True, True, True)
    rec.maintain()
    assert rec.evicted == [] and rec.released == []
    _out_of_rotation(w0, how, T0)
    rec.maintain()
    assert rec.evicted == [c, b]  # in release order
    assert all(x.evicted and not x.held and not x.released for x in (b, c))
    assert other_held.held and not other_held.evicted  # w1's queue is untouched
    assert rec.released == []
    assert router.queue.held(w0.key) == 0 and router.held_calls() == 1
    # the owner gives the evicted reservations back (and routes the calls again elsewhere)
    assert rec.release(b) and rec.release(c)
    assert rec.released == [] and pending(router, w0) == [a.seq]
    for x in (a, other, other_held):
        rec.release(x)
    assert router.cluster.ledger.calls == 0


def test_calls_held_for_a_fail_open_worker_stay_held() -> None:
    router, _, rec = queued_router(depth=1)
    w = router.cluster.all()[0]
    w.healthy = False  # the only worker: routing fails open and still sends calls to it
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True)
    assert a.decision.target is w and b.decision.target is w and b.held
    rec.maintain()
    assert rec.evicted == []  # evicted, it could only be routed again to this same worker
    rec.first_token(a, 1.0)
    assert rec.released == [b]


def test_first_token_of_an_unusable_worker_evicts_instead_of_releasing() -> None:
    router, _, rec = queued_router(n=2, depth=1)
    w, other = router.cluster.all()
    a = router.route(rreq(1000, frozenset({other.key})), hold=True)
    b = router.route(rreq(1000, frozenset({other.key})), hold=True)
    assert a.decision.target is w and b.decision.target is w and b.held
    w.operator_out = True  # another worker can take b: it goes back for re-routing
    rec.first_token(a, 1.0)
    assert rec.released == [] and rec.evicted == [b]
    rec.release(b)
    rec.release(a)
    assert w.in_flight == 0 and router.ttft.total_pending == 0


def test_evict_held_hands_back_every_call_of_one_worker() -> None:
    router, _, rec = queued_router(n=2, depth=1)
    w0, w1 = router.cluster.all()
    only = [frozenset({w1.key}), frozenset({w0.key})]  # w0, then w1
    leases = [router.route(rreq(100 * (i + 1), only[i % 2]), hold=True) for i in range(6)]
    held0 = [x for x in leases if x.held and x.decision.target is w0]
    held1 = [x for x in leases if x.held and x.decision.target is w1]
    assert len(held0) == 2 and len(held1) == 2
    rec.evict_held(w0.key)
    assert rec.evicted == held0 and all(x.evicted and not x.held for x in held0)
    assert all(x.held and not x.evicted for x in held1)
    assert router.queue.held(w0.key) == 0 and router.held_calls() == 2
    rec.evict_held(w0.key)  # nothing left: nothing more
    assert rec.evicted == held0
    for x in leases:
        rec.release(x)
    assert router.cluster.ledger.calls == 0 and router.held_calls() == 0


def test_ejected_worker_back_in_rotation_keeps_its_queue() -> None:
    router, clock, rec = queued_router(depth=1)
    w = router.cluster.all()[0]
    router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True)
    w.ejected_until_s = T0 + 1.0  # ejected for a second, no probe pending
    clock.now = T0 + 1.0
    rec.maintain()
    assert b.held and rec.evicted == []


# ---------------------------------------------------------------------------------------------- estimates


def test_estimate_of_a_held_call_includes_the_held_work_ahead_of_it() -> None:
    router, _, _ = queued_router(depth=1)
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(3000), hold=True)
    c = router.route(rreq(100), hold=True)
    d = router.route(rreq(2000), hold=True)
    e = router.route(rreq(5000), hold=True)
    assert a.decision.estimate_ms == pytest.approx(P1000)  # nothing ahead
    assert a.decision.prefill_ms == pytest.approx(P1000)
    assert b.decision.estimate_ms == pytest.approx(P1000 + P3000)  # a's backlog, nothing held before it
    assert c.decision.estimate_ms == pytest.approx(P1000 + P100)  # overtakes b
    assert d.decision.estimate_ms == pytest.approx(P1000 + P100 + P2000)  # behind c, ahead of b
    assert e.decision.estimate_ms == pytest.approx(P1000 + P100 + P2000 + P3000 + P5000)
    assert [x.decision.prefill_ms for x in (b, c, d, e)] == pytest.approx([P3000, P100, P2000, P5000])


def test_estimate_without_the_queue_is_backlog_plus_prefill() -> None:
    router, _, _ = queued_router(depth=0)
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(3000), hold=True)
    c = router.route(rreq(100), hold=True)
    assert a.decision.estimate_ms == pytest.approx(P1000)
    assert b.decision.estimate_ms == pytest.approx(P1000 + P3000)
    assert c.decision.estimate_ms == pytest.approx(P1000 + P3000 + P100)  # FIFO in the engine


# ---------------------------------------------------------------------------------------------- cost strategies


def _loaded_pair(strategy: str, held_on_a: int) -> tuple[Router, WorkerState, WorkerState, list[Lease]]:
    """A: a 1000-token prefill running (120 ms) and `held_on_a` 3000-token calls (320 ms each) held;
    B: a 2000-token prefill running (220 ms), nothing held."""
    router, _, _ = queued_router(n=2, strategy=strategy, depth=1)
    a, b = router.cluster.all()
    only_a, only_b = frozenset({b.key}), frozenset({a.key})
    leases = [router.route(rreq(1000, only_a), hold=True)]
    leases += [router.route(rreq(3000, only_a), hold=True) for _ in range(held_on_a)]
    leases.append(router.route(rreq(2000, only_b), hold=True))
    assert router.queue.held(a.key) == held_on_a and router.queue.held(b.key) == 0
    return router, a, b, leases


@pytest.mark.parametrize("strategy", ["SHORTEST_TTFT", "COST_BASED_PREFILL"])
def test_a_short_call_goes_where_it_overtakes_the_held_work(strategy: str) -> None:
    # A's wait for a 100-token call is 120 ms (it leaves before the held 320 ms call), B's is 220 ms;
    # counting A's held work in full (440 ms) would send it to B
    router, a, _, _ = _loaded_pair(strategy, held_on_a=1)
    short = router.route(rreq(100), hold=True)
    assert short.decision.target is a
    assert short.held
    assert short.decision.estimate_ms == pytest.approx(P1000 + P100)


@pytest.mark.parametrize("strategy", ["SHORTEST_TTFT", "COST_BASED_PREFILL"])
def test_a_long_call_waits_for_the_held_work_it_cannot_overtake(strategy: str) -> None:
    # 5000 tokens (520 ms) leaves after A's held 320 ms call: wait 440 ms on A against 220 ms on B
    router, _, b, _ = _loaded_pair(strategy, held_on_a=1)
    long = router.route(rreq(5000), hold=True)
    assert long.decision.target is b
    assert long.decision.estimate_ms == pytest.approx(P2000 + P5000)


def test_cost_based_prefill_charges_the_calls_overtaken() -> None:
    # A short call on A waits 120 ms against 220 ms on B, but it would overtake 5 held calls there,
    # each then waiting its 30 ms longer: 120 + 30*(1+k+5) > 220 + 30*(1+k); the TTFT-only rule still picks A
    router, _, b, _ = _loaded_pair("COST_BASED_PREFILL", held_on_a=5)
    assert router.route(rreq(100), hold=True).decision.target is b
    router2, a2, _, _ = _loaded_pair("SHORTEST_TTFT", held_on_a=5)
    assert router2.route(rreq(100), hold=True).decision.target is a2


def test_cost_based_prefill_without_overtaking_keeps_the_shorter_wait() -> None:
    # nothing held on A: the overtake charge is 0 and A's shorter wait wins
    router, a, _, _ = _loaded_pair("COST_BASED_PREFILL", held_on_a=0)
    assert router.route(rreq(100), hold=True).decision.target is a


# ---------------------------------------------------------------------------------------------- simulator


SIM_ENGINE = EngineParams(prefill_base_ms=20.0, prefill_ms_per_uncached_token=0.1, block_size_tokens=512,
                          cache_capacity_blocks=4000, decode_step_base_ms=10.0, decode_step_ms_per_running=0.2)
_hash_ids = iter(range(1_000_000, 1 << 40, 100))


def row(arrival_ms: float, blocks: int, output: int = 4) -> TraceRequest:
    """A row whose prompt shares no block with any other row."""
    base = next(_hash_ids)
    return TraceRequest(arrival_ms, blocks * TRACE_BLOCK_TOKENS, output, tuple(base + i for i in range(blocks)))


def _bursty_trace(seed: int = 3, n: int = 80) -> list[TraceRequest]:
    rng = random.Random(seed)
    rows = []
    t = 0.0
    for _ in range(n):
        rows.append(row(round(t, 3), rng.choice([1, 1, 2, 6]), rng.randint(2, 12)))
        t += rng.choice([0.5, 1.0, 2.0, 150.0])  # bursts of near-simultaneous arrivals, then gaps
    return rows


def _deterministic(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("decision_us_")}


def test_simulator_with_the_queue_is_deterministic_and_completes_everything() -> None:
    trace = _bursty_trace()
    cfg = SimConfig(workers=2, seed=1, queue=PrefillQueueConfig(1))
    first = simulate(trace, cfg)
    again = simulate(trace, cfg)
    assert _deterministic(first) == _deterministic(again)
    assert first["requests"] == len(trace)
    assert sorted(first["per_request"]) == list(range(len(trace)))
    # the queue changed something: the same run without it differs
    off = simulate(trace, SimConfig(workers=2, seed=1, queue=PrefillQueueConfig(0)))
    assert off["requests"] == len(trace)
    assert off["per_request"] != first["per_request"]


def test_simulator_pd_mode_with_the_queue_completes_everything() -> None:
    trace = _bursty_trace(seed=4, n=50)
    r = simulate(trace, SimConfig(prefill=2, decode=1, seed=1, queue=PrefillQueueConfig(1)))
    assert r["requests"] == len(trace) and sorted(r["per_request"]) == list(range(len(trace)))


def _first_token_order(trace: list[TraceRequest], result: dict[str, Any]) -> list[int]:
    done = {i: trace[i].arrival_ms + ttft for i, (ttft, _, _) in result["per_request"].items()}
    return sorted(done, key=lambda i: done[i])


def test_simulator_queue_lets_short_prompts_overtake_a_held_long_one() -> None:
    # one worker: a long prompt starts prefilling, a second long one and four short ones arrive behind it
    trace = [row(0.0, 8), row(1.0, 8), row(2.0, 1), row(3.0, 1), row(4.0, 1), row(5.0, 1)]
    long_ms = SIM_ENGINE.prefill_ms(8 * TRACE_BLOCK_TOKENS, 0)  # 429.6 ms
    short_ms = SIM_ENGINE.prefill_ms(TRACE_BLOCK_TOKENS, 0)  # 71.2 ms
    runs = {depth: simulate(trace, SimConfig(workers=1, seed=1, engine=SIM_ENGINE, queue=PrefillQueueConfig(depth)))
            for depth in (0, 1)}
    assert all(r["requests"] == len(trace) for r in runs.values())
    assert _first_token_order(trace, runs[0]) == [0, 1, 2, 3, 4, 5]  # the engine's FIFO
    assert _first_token_order(trace, runs[1]) == [0, 2, 3, 4, 5, 1]  # shortest held prefill first
    ttft = {d: {i: v[0] for i, v in r["per_request"].items()} for d, r in runs.items()}
    for i in (2, 3, 4, 5):
        assert ttft[1][i] < ttft[0][i]
        # exact: the running long prefill, then the short ones ahead of it and its own
        assert ttft[1][i] == pytest.approx(long_ms + (i - 1) * short_ms - trace[i].arrival_ms)
    assert ttft[1][1] > ttft[0][1]  # the price: the held long prompt goes last
    assert ttft[1][1] == pytest.approx(2 * long_ms + 4 * short_ms - 1.0)
    assert ttft[1][0] == ttft[0][0] == pytest.approx(long_ms)
    assert runs[1]["ttft_mean_ms"] < runs[0]["ttft_mean_ms"]


def test_simulator_aging_stops_a_late_short_prompt_from_overtaking() -> None:
    # one worker; the second long prompt (429.6 ms) is held from 1 ms: key 430.6. A short one (71.2 ms)
    # held at t ms has key 71.2 + t, so it overtakes only if it arrives before t = 359.4 ms
    trace = [row(0.0, 8), row(1.0, 8), row(2.0, 1), row(250.0, 1)]
    r = simulate(trace, SimConfig(workers=1, seed=1, engine=SIM_ENGINE, queue=PrefillQueueConfig(1, aging=1.0)))
    # 3 is held at 250 ms: 321.2 < 430.6, it overtakes too
    assert _first_token_order(trace, r) == [0, 2, 3, 1]
    late = [row(0.0, 8), row(1.0, 8), row(2.0, 1), row(400.0, 1)]
    r = simulate(late, SimConfig(workers=1, seed=1, engine=SIM_ENGINE, queue=PrefillQueueConfig(1, aging=1.0)))
    # 3 is held at 400 ms: 471.2 > 430.6, so the long one, held longer, leaves first
    assert _first_token_order(late, r) == [0, 2, 1, 3]
    r = simulate(late, SimConfig(workers=1, seed=1, engine=SIM_ENGINE, queue=PrefillQueueConfig(1, aging=0.0)))
    assert _first_token_order(late, r) == [0, 2, 3, 1]  # without aging it would overtake anyway


# ---------------------------------------------------------------------------------------------- take-over


def test_an_idle_worker_takes_over_the_call_held_for_a_busy_one() -> None:
    router, _, rec = queued_router(n=2, depth=1)
    busy, idle = router.cluster.all()
    idle.operator_out = True  # everything goes to `busy` for now
    first = router.route(rreq(1000), hold=True)
    second = router.route(rreq(3000), hold=True)
    assert first.decision.target is busy and second.held and second.decision.target is busy
    assert (busy.in_flight, idle.in_flight) == (2, 0)
    idle.operator_out = False
    rec.maintain()  # the idle worker hears of no first token: the upkeep lets it look
    assert rec.released == [second] and second.moved and not second.held
    assert second.decision.target is idle and second.decision.reason.endswith("+moved")
    assert (busy.in_flight, idle.in_flight) == (1, 1)
    assert pending(router, idle) == [second.seq] and router.held_calls() == 0
    rec.first_token(second, 10.0)
    rec.first_token(first, 10.0)
    rec.release(first)
    rec.release(second)
    assert (busy.in_flight, idle.in_flight) == (0, 0) and router.ttft.total_pending == 0


def test_no_take_over_when_the_call_would_lose_its_cached_prefix() -> None:
    clock = FakeClock(T0)
    router = make_router(addrs(Role.PDFUSION, 2), "COST_BASED_PREFILL", seed=1, clock=clock,
                         index=PrefixIndexConfig(1000, 600.0), queue=PrefillQueueConfig(depth=1, hold_after_ms=0))
    rec = Recorder(router)
    busy, idle = router.cluster.all()
    idle.operator_out = True
    keys = tuple(range(1, 101))  # 100 blocks of 64 tokens: a 6,400-token prompt

    def call(n_keys: int) -> Lease:
        req = RouteRequest(next(_ids), n_keys * 64, 8, block_keys=keys[:n_keys], block_size_tokens=64)
        return router.route(req, hold=True)

    short = call(1)  # running on `busy`
    long_hit = call(100)  # held on `busy`, where the index holds its first block (recorded for `short`)
    follow = call(100)  # held: `busy` now holds all 100 blocks (recorded for long_hit)
    assert follow.held and follow.decision.cached_tokens == 100 * 64 - 1
    assert long_hit.held and long_hit.decision.cached_tokens == 64
    idle.operator_out = False
    rec.maintain()
    # both would recompute on `idle` what `busy` holds for them (1 block, 100 blocks): neither moves
    assert rec.released == []
    assert long_hit.held and follow.held and follow.decision.target is busy
    for x in (short, long_hit, follow):
        rec.release(x)
    assert busy.in_flight == idle.in_flight == 0


def test_a_pd_call_taken_over_keeps_its_decode_peer() -> None:
    clock = FakeClock(T0)
    router = make_router(addrs(Role.PREFILL, 2) + addrs(Role.DECODE, 1, base=9000), "COST_BASED_PREFILL", seed=1,
                         clock=clock, queue=PrefillQueueConfig(depth=1, hold_after_ms=0))
    rec = Recorder(router)
    busy, idle = router.cluster.of_role(Role.PREFILL)
    (decode,) = router.cluster.of_role(Role.DECODE)
    idle.operator_out = True
    first = router.route(rreq(1000), hold=True)
    second = router.route(rreq(2000), hold=True)
    assert second.held
    idle.operator_out = False
    rec.maintain()
    assert rec.released == [second] and second.decision.target is idle and second.decision.decode is decode
    assert decode.in_flight == 2
    rec.release(first)
    rec.release(second)
    assert busy.in_flight == idle.in_flight == decode.in_flight == 0


def test_transit_is_learned_from_the_engine_time_and_counted_in_estimates() -> None:
    router, clock, rec = queued_router(n=1, depth=1)
    (w,) = router.cluster.all()
    a = router.route(rreq(1000), hold=True)
    clock.now += 0.150  # the first message arrives 150 ms after the call was sent
    rec.first_token(a, 150.0, 120.0, 1000, 0, engine_ms=140.0)  # of which the engine spent 140 ms
    assert router.ttft.worker(w.key).transit_ms == pytest.approx(10.0)
    rec.release(a)
    b = router.route(rreq(1000), hold=True)
    # its estimate: its own prefill plus the hops; its slot is taken for both
    assert b.decision.estimate_ms == pytest.approx(b.decision.prefill_ms + 10.0)
    assert router.ttft.worker(w.key).backlog_ms == pytest.approx(b.decision.prefill_ms + 10.0)
    rec.release(b)


def test_a_call_taken_over_moves_its_blocks_in_the_index() -> None:
    router = make_router(addrs(Role.PDFUSION, 2), "COST_BASED_PREFILL", seed=1, clock=FakeClock(T0),
                         index=PrefixIndexConfig(1000, 600.0), queue=PrefillQueueConfig(depth=1, hold_after_ms=0))
    rec = Recorder(router)
    busy, idle = router.cluster.all()
    idle.operator_out = True
    assert router.index is not None
    first = router.route(RouteRequest(next(_ids), 640, 8, block_keys=tuple(range(1, 11)), block_size_tokens=64),
                         hold=True)
    cold = router.route(RouteRequest(next(_ids), 640, 8, block_keys=tuple(range(50, 60)), block_size_tokens=64),
                        hold=True)
    assert cold.held and router.index.match(tuple(range(50, 60))) == {busy.key: 10}
    idle.operator_out = False
    rec.maintain()
    assert rec.released == [cold] and cold.decision.target is idle
    assert router.index.match(tuple(range(50, 60))) == {idle.key: 10}  # no longer expected on `busy`
    assert router.index.match(tuple(range(1, 11))) == {busy.key: 10}
    rec.release(first)
    rec.release(cold)


async def test_the_dispatcher_readdresses_a_pd_call_taken_over_by_another_prefill() -> None:
    from flexlb.call.dispatch import Dispatcher, Planned, Rejection
    from flexlb.metrics import Metrics
    from flexlb.pb import model_rpc_service_pb2 as pb

    router = make_router(addrs(Role.PREFILL, 2) + addrs(Role.DECODE, 1, base=9000), "COST_BASED_PREFILL", seed=1,
                         clock=FakeClock(T0), queue=PrefillQueueConfig(depth=1, hold_after_ms=0))
    metrics = Metrics()
    later: list[Callable[[], None]] = []  # the event loop's call_soon: deliveries wait for the loop
    dispatcher = Dispatcher(router, metrics, lambda: False, 64, call_later=lambda delay, fn: _NoTimer(),
                            defer=later.append)
    _, idle = router.cluster.of_role(Role.PREFILL)
    (decode,) = router.cluster.of_role(Role.DECODE)
    idle.operator_out = True
    sent: list[Planned | Rejection] = []

    def body(rid: int) -> bytes:
        return pb.GenerateInputPB(request_id=rid, token_ids=[7] * 500,
                                  generate_config=pb.GenerateConfigPB(max_new_tokens=8)).SerializeToString()

    dispatcher.submit_generate(body(1), sent.append, lambda: True)
    dispatcher.submit_generate(body(2), sent.append, lambda: True)
    assert len(sent) == 1 and dispatcher.held_calls() == 1
    idle.operator_out = False
    dispatcher.holds.after(router.maintain())  # the idle prefill takes the held call over
    assert len(sent) == 1 and dispatcher.held_calls() == 0  # released, and delivered only from the loop
    later.pop()()
    assert len(sent) == 2 and not later
    second = sent[1]
    assert isinstance(second, Planned) and second.lease.decision.target is idle
    # the prefill finds its peers in role_addrs: [PREFILL, DECODE] must name the worker it goes to now
    addrs_sent = pb.GenerateInputPB.FromString(second.body).generate_config.role_addrs
    assert [(a.role, a.grpc_port) for a in addrs_sent] == [(pb.RoleAddrPB.PREFILL, idle.addr.grpc_port),
                                                           (pb.RoleAddrPB.DECODE, decode.addr.grpc_port)]
    assert metrics.registry.get_sample_value("flexlb_prefill_queue_moved_total") == 1
    for planned in sent:
        assert isinstance(planned, Planned)
        dispatcher.finish(planned, "OK", 1)
    dispatcher.close()
    assert router.cluster.ledger.calls == 0


# ---------------------------------------------------------------------------------------------- batching engines


def test_a_batching_engine_gets_a_batch_at_once() -> None:
    # an engine reporting a 4,096-token prefill budget per iteration: 8 prompts of 500 tokens all go now
    # (held at depth 2 they would reach it in waves of two and wait a whole iteration each)
    router, _, _ = queued_router(depth=2)
    w = router.cluster.all()[0]
    w.max_batch_tokens = 4096
    leases = [router.route(rreq(500), hold=True) for _ in range(8)]
    assert not any(lease.held for lease in leases)
    assert router.ttft.worker(w.key).pending_tokens == 4000
    # past a batch's worth outstanding, a call waits here (and the ones after it keep their order)
    more = [router.route(rreq(2000), hold=True) for _ in range(2)]
    assert [lease.held for lease in more] == [True, True]
    router.first_token(leases[0], 10.0)
    assert more[0].held  # 3,500 + 2,000 is still past 4,096
    for lease in leases[1:4]:
        router.first_token(lease, 10.0)
    assert not more[0].held and more[1].held  # 2,000 + 2,000 fits; 4,000 + 2,000 does not


def test_an_engine_that_reports_no_budget_gets_depth_calls() -> None:
    router, _, _ = queued_router(depth=2)
    leases = [router.route(rreq(500), hold=True) for _ in range(8)]
    assert [lease.held for lease in leases] == [False, False] + [True] * 6


def test_below_the_backlog_bound_calls_go_to_the_engine_beyond_the_depth() -> None:
    # an engine that reports no batch budget; estimates of 20 ms + 0.1 ms per token: 30 ms for 100 tokens
    router, _, _ = queued_router(depth=1, hold_after_ms=100.0)
    leases = [router.route(rreq(100), hold=True) for _ in range(6)]
    # 30, 60, 90 ms outstanding: the next still goes (below 100 ms); from 120 ms on calls are held
    assert [lease.held for lease in leases] == [False, False, False, False, True, True]
    router.first_token(leases[0], 30.0)
    assert not leases[4].held and leases[5].held  # back to 90 ms outstanding: one more goes


def _prefix_router(n: int = 1) -> tuple[Router, FakeClock, Recorder]:
    clock = FakeClock(T0)
    router = make_router(addrs(Role.PDFUSION, n), "COST_BASED_PREFILL", seed=1, clock=clock,
                         index=PrefixIndexConfig(1000, 600.0), queue=PrefillQueueConfig(depth=2, hold_after_ms=0))
    for w in router.cluster.all():
        w.max_batch_tokens = 8192  # a batching engine: a batch's worth may be outstanding
    return router, clock, Recorder(router)


def _shared(tail: int, exclude: frozenset[str] = frozenset()) -> RouteRequest:
    """A 10-block shared prefix (keys 1..10) and two blocks of its own."""
    return RouteRequest(next(_ids), 12 * 64, 8, block_keys=(*range(1, 11), 1000 + 2 * tail, 1001 + 2 * tail),
                        block_size_tokens=64, exclude=exclude)


def _cold(tokens: int = 900) -> RouteRequest:
    return RouteRequest(next(_ids), tokens, 8)


def test_a_call_whose_prefix_is_still_being_computed_waits_until_its_leader_runs() -> None:
    # on a batching engine, prompts prefilled in the same iteration each compute their shared prefix; a call that
    # expects the prefix an earlier call will compute there, while the engine has not taken that call into an
    # iteration yet, waits until it has (the next iteration: the call then joins a later one and finds it cached)
    router, clock, rec = _prefix_router()
    first = router.route(_cold(), hold=True)
    leader = router.route(_shared(0), hold=True)  # sent behind `first`: it waits for first's iteration to end
    assert not leader.held
    follower = router.route(_shared(1), hold=True)
    assert follower.decision.cached_tokens == 10 * 64
    assert follower.held and router.queue.parked(follower.seq)
    other = router.route(RouteRequest(next(_ids), 640, 8, block_keys=tuple(range(50, 60)), block_size_tokens=64),
                         hold=True)
    assert not other.held  # parked calls keep nobody waiting: a prompt of its own goes while there is room
    clock.now += 0.05
    rec(router.first_token(first, 50.0))  # an iteration ended: the leader runs in the next one
    assert rec.released == [follower] and not follower.held and not router.queue.parked(follower.seq)
    # while the leader runs, a call with its prefix goes at once (a later iteration than the leader's)
    later = router.route(_shared(2), hold=True)
    assert not later.held


def test_a_leader_sent_to_an_idle_engine_runs_at_once_and_parks_nobody() -> None:
    router, _, _ = _prefix_router()
    router.route(_shared(0), hold=True)
    follower = router.route(_shared(1), hold=True)
    assert follower.decision.cached_tokens == 10 * 64 and not follower.held


def test_an_idle_worker_computes_the_prefix_itself_rather_than_wait() -> None:
    router, _, _ = _prefix_router(n=2)
    first = router.route(_cold(), hold=True)
    leader = router.route(_shared(0, frozenset({router.cluster.all()[1].key})), hold=True)
    assert leader.decision.target is first.decision.target
    follower = router.route(_shared(1), hold=True)
    assert follower.decision.target is not leader.decision.target and not follower.held


def test_a_leader_that_fails_before_its_first_token_lets_its_followers_go() -> None:
    router, _, rec = _prefix_router()
    router.route(_cold(), hold=True)
    leader = router.route(_shared(0), hold=True)
    follower = router.route(_shared(1), hold=True)
    assert router.queue.parked(follower.seq)
    rec(router.release(leader))  # ended before its first token: the follower computes the prefix itself
    assert rec.released == [follower]


def test_followers_of_a_held_leader_leave_after_it() -> None:
    router, _, rec = _prefix_router()
    router.cluster.all()[0].max_batch_tokens = 1600  # one large prompt's worth outstanding, or both shared ones
    first = router.route(RouteRequest(next(_ids), 1500, 8), hold=True)
    leader = router.route(_shared(0), hold=True)  # held: no room
    follower = router.route(_shared(1), hold=True)
    assert leader.held and not router.queue.parked(leader.seq) and router.queue.parked(follower.seq)
    rec(router.first_token(first, 10.0))
    assert rec.released == [leader]  # the parked follower is skipped, not released with its leader
    rec(router.first_token(leader, 10.0))
    assert rec.released == [leader, follower]


def test_a_follower_too_large_for_its_held_leaders_iteration_is_not_parked() -> None:
    # the engine cannot prefill the two together: whichever it takes second finds the shared blocks cached
    router, _, _ = _prefix_router()
    router.cluster.all()[0].max_batch_tokens = 1000  # less than the two shared prompts together (2 x 768)
    router.route(RouteRequest(next(_ids), 900, 8), hold=True)
    leader = router.route(_shared(0), hold=True)  # held: no room
    follower = router.route(_shared(1), hold=True)
    assert leader.held and follower.held and not router.queue.parked(follower.seq)


def test_a_worker_going_away_hands_back_its_parked_calls_too() -> None:
    router, _, rec = _prefix_router(n=2)
    busy, idle = router.cluster.all()
    not_idle = frozenset({idle.key})
    router.route(RouteRequest(next(_ids), 900, 8, exclude=not_idle), hold=True)
    leader = router.route(_shared(0, not_idle), hold=True)
    follower = router.route(_shared(1, not_idle), hold=True)
    assert leader.decision.target is busy and router.queue.parked(follower.seq)
    rec(router.evict_held(busy.key))
    assert rec.evicted == [follower] and router.held_calls() == 0 and not router.queue.parked(follower.seq)


def test_a_worker_without_a_batch_budget_parks_nothing() -> None:
    # a one-at-a-time engine admits the follower after the leader's prefill: it hits the cache anyway
    router, _, _ = _prefix_router()
    router.cluster.all()[0].max_batch_tokens = 0
    router.route(_cold(), hold=True)
    router.route(_shared(0), hold=True)
    follower = router.route(_shared(1), hold=True)
    assert not router.queue.parked(follower.seq)


def test_a_follower_that_could_not_share_its_leaders_iteration_goes_at_once() -> None:
    # with 868 uncached tokens outstanding and a 1,000-token budget the follower (768 of its own, beside its
    # leader) cannot be prefilled in the leader's iteration: the engine takes it after, with the prefix cached
    router, _, _ = _prefix_router()
    router.cluster.all()[0].max_batch_tokens = 1000
    router.route(_cold(100), hold=True)
    leader = router.route(_shared(0), hold=True)
    assert not leader.held
    follower = router.route(_shared(1), hold=True)
    assert not router.queue.parked(follower.seq)
