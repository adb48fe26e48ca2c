"""The pure balancer core: strategies, leases, PD pairing with group affinity, exclusion, health."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from flexlb.balancer.request import Decision, Deploy, NoWorkerAvailable, RouteRequest
from flexlb.balancer.router import Router
from flexlb.balancer.strategies import make_strategy, strategy_names
from flexlb.balancer.workers import Cluster, Lease, Role, WorkerAddr, WorkerState
from tests.balancer_support import FakeClock, addrs, end, make_router

_ids = iter(range(1, 1 << 30))


def req(exclude: frozenset[str] = frozenset()) -> RouteRequest:
    return RouteRequest(request_id=next(_ids), prompt_tokens=100, max_new_tokens=10, exclude=exclude)


def hold(router: Router, worker: WorkerState) -> Lease:
    """Reserve load on one worker, as a call in progress would (routed with every other worker excluded)."""
    others = frozenset(w.key for w in router.cluster.all() if w.key != worker.key)
    lease = router.route(req(exclude=others))
    assert lease.decision.target is worker
    return lease


def route_released(router: Router, n: int, pair: bool = True) -> list[Decision]:
    out = []
    for _ in range(n):
        lease = router.route(req(), pair=pair)
        out.append(lease.decision)
        assert end(router, lease)
    return out


# ---------------------------------------------------------------------------------------------- strategies


def test_round_robin_cycles_in_order() -> None:
    workers = addrs(Role.PDFUSION, 4)
    router = make_router(workers, "ROUND_ROBIN")
    picks = [d.target.key for d in route_released(router, 12)]
    assert picks == [w.key for w in workers] * 3


def test_round_robin_ignores_load() -> None:
    workers = addrs(Role.PDFUSION, 3)
    router = make_router(workers, "ROUND_ROBIN")
    held = [router.route(req()) for _ in range(6)]  # never released: load keeps growing
    assert [lease.decision.target.key for lease in held] == [w.key for w in workers] * 2
    assert [w.in_flight for w in router.cluster.all()] == [2, 2, 2]


def test_lowest_concurrency_picks_a_minimum() -> None:
    router = make_router(addrs(Role.PDFUSION, 3), "LOWEST_CONCURRENCY")
    states = router.cluster.all()
    extra = [hold(router, states[0]) for _ in range(3)] + [hold(router, states[1])]
    leases = []
    for _ in range(30):
        before = {w.key: w.in_flight for w in states}
        lease = router.route(req())
        assert before[lease.decision.target.key] == min(before.values())
        leases.append(lease)
        # randomly give some load back so minima move around
        if len(leases) > 3 and router._rng.random() < 0.5:
            router.release(leases.pop(0))
    for lease in leases + extra:
        router.release(lease)
    assert router.cluster.ledger.calls == 0


def test_lowest_concurrency_spreads_ties() -> None:
    router = make_router(addrs(Role.PDFUSION, 4), "LOWEST_CONCURRENCY", seed=3)
    counts = Counter(d.target.key for d in route_released(router, 400))
    assert len(counts) == 4
    assert min(counts.values()) > 60, counts  # 100 expected each


def test_lowest_concurrency_never_picks_busier_worker() -> None:
    router = make_router(addrs(Role.PDFUSION, 3), "LOWEST_CONCURRENCY")
    busy = router.cluster.all()[1]
    held = hold(router, busy)
    picks = {d.target.key for d in route_released(router, 50)}
    assert busy.key not in picks
    assert len(picks) == 2
    router.release(held)


def test_round_robin_lowest_concurrency_rotates_among_ties_only() -> None:
    workers = addrs(Role.PDFUSION, 4)
    router = make_router(workers, "ROUND_ROBIN_LOWEST_CONCURRENCY")
    w0, w1, w2, w3 = router.cluster.all()
    held = [hold(router, w0), hold(router, w1), hold(router, w1)]
    picks = [d.target.key for d in route_released(router, 6)]
    assert picks == [w2.key, w3.key] * 3
    router.release(held[0])  # w0 joins the minimum; it was chosen longest ago, so it goes first
    picks = [d.target.key for d in route_released(router, 6)]
    assert picks == [w0.key, w2.key, w3.key] * 2
    # holding the picks makes the rotation follow the load: each pick raises that worker above the min
    leases = [router.route(req()) for _ in range(3)]
    assert {lease.decision.target.key for lease in leases} == {w0.key, w2.key, w3.key}
    nxt = router.route(req())  # w0, w2, w3 at 1 and w1 at 2: w0 is next in the rotation
    assert nxt.decision.target is w0
    assert [w.in_flight for w in (w0, w1, w2, w3)] == [2, 2, 1, 1]
    for lease in [*leases, nxt, *held[1:]]:
        router.release(lease)
    assert router.cluster.ledger.calls == 0


def test_random_covers_all_workers_and_is_seeded() -> None:
    workers = addrs(Role.PDFUSION, 5)
    a = [d.target.key for d in route_released(make_router(workers, "RANDOM", seed=11), 200)]
    b = [d.target.key for d in route_released(make_router(workers, "RANDOM", seed=11), 200)]
    c = [d.target.key for d in route_released(make_router(workers, "RANDOM", seed=12), 200)]
    assert set(a) == {w.key for w in workers}
    assert a == b  # the injected RNG is the only source of randomness
    assert a != c


def test_make_strategy_names() -> None:
    assert strategy_names() == sorted(
        ["RANDOM", "ROUND_ROBIN", "LOWEST_CONCURRENCY", "ROUND_ROBIN_LOWEST_CONCURRENCY", "SHORTEST_TTFT",
         "COST_BASED_PREFILL", "CACHE_AWARE", "WEIGHTED_CACHE", "COST_BASED_DECODE", "SGLANG_CACHE_AWARE",
         "DYNAMO_KV"]
    )
    aliases = {"COST_BASED_DECODE": "WEIGHTED_CACHE"}  # the original FlexLB's name for the same rule
    for name in strategy_names():
        assert make_strategy(name).name == aliases.get(name, name)
    assert make_strategy(" round_robin ").name == "ROUND_ROBIN"
    with pytest.raises(KeyError) as info:
        make_strategy("FASTEST")
    text = str(info.value)
    assert "FASTEST" in text
    for name in strategy_names():
        assert name in text


def test_router_reads_the_injected_clock() -> None:
    clock = FakeClock()
    router = make_router(addrs(Role.PDFUSION, 2), clock=clock)
    route_released(router, 3)
    assert clock.calls >= 3  # every decision reads the injected clock (releases may too)


# ---------------------------------------------------------------------------------------------- leases


def test_lease_release_is_idempotent() -> None:
    router = make_router(addrs(Role.PDFUSION, 2))
    lease = router.route(req())
    target = lease.decision.target
    assert target.in_flight == 1
    assert target.dispatched_total == 1
    assert not lease.released
    assert router.release(lease) == []
    assert lease.released
    assert target.in_flight == 0
    assert router.release(lease) == []
    assert target.in_flight == 0
    assert target.dispatched_total == 1


def test_in_flight_returns_to_zero_after_many_cycles() -> None:
    rng = random.Random(5)
    for strategy in strategy_names():
        router = make_router(addrs(Role.PDFUSION, 3), strategy)
        open_leases: list[Lease] = []
        for _ in range(500):
            if open_leases and rng.random() < 0.5:
                lease = open_leases.pop(rng.randrange(len(open_leases)))
                assert end(router, lease)
                assert not end(router, lease)
            else:
                open_leases.append(router.route(req()))
            assert router.cluster.ledger.calls == len(open_leases)
        for lease in open_leases:
            router.release(lease)
        assert router.cluster.ledger.calls == 0, strategy
        assert sum(w.dispatched_total for w in router.cluster.all()) > 0


# ---------------------------------------------------------------------------------------------- PD


def pd_workers() -> list[WorkerAddr]:
    return addrs(Role.PREFILL, 2, base=8000) + addrs(Role.DECODE, 2, base=9000)


def test_pd_route_reserves_prefill_and_decode() -> None:
    router = make_router(pd_workers())
    lease = router.route(req())
    d = lease.decision
    assert d.target.role is Role.PREFILL
    assert d.decode is not None and d.decode.role is Role.DECODE
    assert d.target.in_flight == 1
    assert d.decode.in_flight == 1
    assert router.cluster.ledger.calls == 1  # one call, one leg on each of its workers
    assert "+" in d.strategy
    router.release(lease)
    assert d.target.in_flight == 0 and d.decode.in_flight == 0
    assert not end(router, lease)
    assert router.cluster.ledger.calls == 0


def test_pd_round_robin_on_both_sides() -> None:
    router = make_router(pd_workers(), "ROUND_ROBIN", "ROUND_ROBIN")
    decisions = route_released(router, 4)
    assert [d.target.addr.grpc_port for d in decisions] == [8000, 8001, 8000, 8001]
    assert [d.decode.addr.grpc_port for d in decisions if d.decode] == [9000, 9001, 9000, 9001]


def test_group_affinity() -> None:
    workers = (
        addrs(Role.PREFILL, 2, group="a", base=8000)
        + addrs(Role.PREFILL, 2, group="b", base=8100)
        + addrs(Role.PREFILL, 2, group="c", base=8200)  # no decode in group c
        + addrs(Role.DECODE, 1, group="a", base=9000)
        + addrs(Role.DECODE, 2, group="b", base=9100)
    )
    for strategy in strategy_names():
        router = make_router(workers, strategy, strategy)
        decisions = route_released(router, 120)
        for d in decisions:
            assert d.decode is not None
            assert d.target.addr.group == d.decode.addr.group, (d.target.key, d.decode.key)
            assert d.target.addr.group != "c"
        assert {d.target.addr.group for d in decisions} == {"a", "b"}
        assert len({d.target.key for d in decisions}) == 4


def test_group_affinity_follows_decode_exclusion() -> None:
    workers = addrs(Role.PREFILL, 2, group="a", base=8000) + addrs(Role.PREFILL, 2, group="b", base=8100)
    workers += addrs(Role.DECODE, 1, group="a", base=9000) + addrs(Role.DECODE, 1, group="b", base=9100)
    router = make_router(workers)
    decode_a = next(w for w in router.cluster.of_role(Role.DECODE) if w.addr.group == "a")
    for _ in range(20):
        lease = router.route(req(frozenset({decode_a.key})))
        assert lease.decision.target.addr.group == "b"
        router.release(lease)


def test_pd_lone_prefill_when_not_paired() -> None:
    router = make_router(pd_workers())
    lease = router.route(req(), pair=False)
    assert lease.decision.target.role is Role.PREFILL
    assert lease.decision.decode is None
    assert all(w.in_flight == 0 for w in router.cluster.of_role(Role.DECODE))
    assert lease.decision.target.in_flight == 1
    router.release(lease)
    assert router.cluster.ledger.calls == 0


# ------------------------------------------------------------------------------------- exclusion / health


def test_exclude_is_honoured() -> None:
    router = make_router(addrs(Role.PDFUSION, 3), "LOWEST_CONCURRENCY")
    states = router.cluster.all()
    excluded = frozenset({states[0].key, states[2].key})
    for _ in range(20):
        lease = router.route(req(excluded))
        assert lease.decision.target.key == states[1].key
        router.release(lease)


def test_all_excluded_raises_with_role() -> None:
    router = make_router(addrs(Role.PDFUSION, 2))
    everyone = frozenset(w.key for w in router.cluster.all())
    with pytest.raises(NoWorkerAvailable) as info:
        router.route(req(everyone))
    assert info.value.role == "PDFUSION"
    assert "PDFUSION" in str(info.value)
    assert "excluded" in str(info.value)
    assert router.cluster.ledger.calls == 0


@pytest.mark.parametrize("role", [Role.PREFILL, Role.DECODE])
def test_pd_all_of_one_role_excluded(role: Role) -> None:
    router = make_router(pd_workers())
    excluded = frozenset(w.key for w in router.cluster.of_role(role))
    with pytest.raises(NoWorkerAvailable) as info:
        router.route(req(excluded))
    assert info.value.role == role.name
    assert router.cluster.ledger.calls == 0


def test_no_worker_configured() -> None:
    router = make_router(addrs(Role.PREFILL, 1), deploy=Deploy.DISAGGREGATED)
    with pytest.raises(NoWorkerAvailable) as info:
        router.route(req())
    assert info.value.role == "DECODE"
    assert "none configured" in str(info.value)


def test_unhealthy_skipped_but_fail_open() -> None:
    router = make_router(addrs(Role.PDFUSION, 3), "ROUND_ROBIN")
    w0, w1, w2 = router.cluster.all()
    w1.healthy = False
    picks = {d.target.key for d in route_released(router, 10)}
    assert picks == {w0.key, w2.key}
    assert router.can_route()
    w0.healthy = w2.healthy = False
    assert not router.can_route()
    picks = {d.target.key for d in route_released(router, 9)}
    assert picks == {w0.key, w1.key, w2.key}  # all unhealthy: route anyway rather than refuse


def test_unhealthy_then_excluded_healthy_falls_back_to_unhealthy() -> None:
    router = make_router(addrs(Role.PDFUSION, 2))
    w0, w1 = router.cluster.all()
    w0.healthy = False
    lease = router.route(req(frozenset({w1.key})))
    assert lease.decision.target is w0
    router.release(lease)


def test_can_route() -> None:
    fused = make_router(addrs(Role.PDFUSION, 1))
    assert fused.can_route()
    fused.cluster.all()[0].healthy = False
    assert not fused.can_route()

    pd = make_router(pd_workers())
    assert pd.can_route()
    for w in pd.cluster.of_role(Role.DECODE):
        w.healthy = False
    assert not pd.can_route()
    pd.cluster.of_role(Role.DECODE)[1].healthy = True
    assert pd.can_route()

    prefill_only = make_router(addrs(Role.PREFILL, 2), deploy=Deploy.DISAGGREGATED)
    assert not prefill_only.can_route()
    wrong_role = make_router(addrs(Role.PREFILL, 2), deploy=Deploy.PD_FUSION)
    assert not wrong_role.can_route()


def test_duplicate_worker_is_one_worker() -> None:
    w = addrs(Role.PDFUSION, 1)
    cluster = Cluster(w + w)
    assert len(cluster.all()) == 1
    assert cluster.get(w[0].key) is cluster.all()[0]


# ---------------------------------------------------------------------------------------------- ledger


def test_a_pd_call_counts_once_and_one_leg_on_each_worker() -> None:
    router = make_router(pd_workers())
    ledger = router.cluster.ledger
    lease = router.route(req())
    d = lease.decision
    assert d.decode is not None
    assert (ledger.calls, ledger.reservations) == (1, 0)
    assert lease.workers == (d.target, d.decode) and lease.kind == "call"
    assert [w.in_flight for w in router.cluster.all()] == [int(w is d.target or w is d.decode)
                                                            for w in router.cluster.all()]
    assert d.target.active_tokens == d.decode.active_tokens == 100
    lone = router.route(req(), pair=False)  # a lone prefill call: one call, one leg
    assert ledger.calls == 2 and lone.workers == (lone.decision.target,)
    for x in (lease, lone):
        router.release(x)
    assert ledger.calls == 0 and all(w.in_flight == 0 and w.active_tokens == 0 for w in router.cluster.all())


def test_a_reservation_is_load_but_not_a_call() -> None:
    router = make_router(pd_workers())
    ledger = router.cluster.ledger
    reservation = router.route(req(), kind="reservation")
    assert (ledger.calls, ledger.reservations) == (0, 1)
    assert reservation.decision.target.in_flight == 1  # the workers still carry its load
    call = router.route_to(req(), reservation.decision.target.key, reservation.decision.decode.key)  # type: ignore[union-attr]
    assert (ledger.calls, ledger.reservations) == (1, 1)
    assert call.decision.target is reservation.decision.target and call.decision.reason == "master+master"
    router.release(reservation)
    assert (ledger.calls, ledger.reservations) == (1, 0)
    router.release(call)
    assert (ledger.calls, ledger.reservations) == (0, 0)
    with pytest.raises(ValueError, match="only relayed calls"):
        router.route(req(), hold=True, kind="reservation")
    with pytest.raises(ValueError, match="lease kind"):
        router.route(req(), kind="schedule")
    assert (ledger.calls, ledger.reservations) == (0, 0)
    assert all(w.in_flight == 0 for w in router.cluster.all())


def test_ledger_releases_once_and_moves_the_target_leg_only() -> None:
    router = make_router(pd_workers())
    p0, p1 = router.cluster.of_role(Role.PREFILL)
    lease = router.route(req(frozenset({p1.key})))
    d = lease.decision
    assert d.target is p0 and d.decode is not None
    ledger = router.cluster.ledger
    ledger.move(lease, p1)
    assert lease.moved and lease.decision.target is p1 and lease.decision.decode is d.decode
    assert lease.workers == (p1, d.decode)
    assert (p0.in_flight, p1.in_flight, d.decode.in_flight) == (0, 1, 1)
    assert (p0.active_tokens, p1.active_tokens) == (0, 100)
    assert p1.dispatched_total == 1 and p1.last_chosen_seq == lease.seq
    assert ledger.release(lease) is True
    assert ledger.release(lease) is False
    assert (p1.in_flight, d.decode.in_flight, ledger.calls) == (0, 0, 0)
    with pytest.raises(ValueError, match="released"):
        ledger.move(lease, p0)


def test_route_to_refuses_unknown_or_unusable_workers() -> None:
    router = make_router(pd_workers())
    p0 = router.cluster.of_role(Role.PREFILL)[0]
    d0 = router.cluster.of_role(Role.DECODE)[0]
    with pytest.raises(NoWorkerAvailable):
        router.route_to(req(), "10.9.9.9:1", None)
    with pytest.raises(NoWorkerAvailable):
        router.route_to(req(), p0.key, "10.9.9.9:1")
    d0.operator_out = True
    with pytest.raises(NoWorkerAvailable):
        router.route_to(req(), p0.key, d0.key)
    assert router.cluster.ledger.calls == 0
