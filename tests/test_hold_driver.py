"""HoldDriver: events go to the owner through `defer`, the upkeep runs only while calls are held."""

from __future__ import annotations

from collections.abc import Callable

from flexlb.balancer.events import Evicted, HoldEvent, Released
from flexlb.balancer.hold_driver import HoldDriver
from flexlb.balancer.prefill_queue import UPKEEP_INTERVAL_S, PrefillQueueConfig
from flexlb.balancer.request import RouteRequest
from flexlb.balancer.router import Router
from flexlb.balancer.workers import Role
from tests.balancer_support import FakeClock, FakeTimers, addrs, make_router

T0 = 1000.0


class Owner:
    """A driver's owner: deferred work waits in `later` (the loop's call_soon), deliveries land in `got`."""

    def __init__(self, router: Router, sweep: Callable[[], None] | None = None) -> None:
        self.timers = FakeTimers()
        self.later: list[Callable[[], None]] = []
        self.got: list[HoldEvent] = []
        self.driver = HoldDriver(router, self.timers.call_later, self.later.append, self.got.append, sweep)

    def run_deferred(self) -> None:
        while self.later:
            self.later.pop(0)()


_ids = iter(range(1, 1 << 30))


def rreq(tokens: int) -> RouteRequest:
    return RouteRequest(next(_ids), tokens, 8)


def queued(n: int = 1, **queue: float) -> tuple[Router, FakeClock]:
    clock = FakeClock(T0)
    return make_router(addrs(Role.PDFUSION, n), "COST_BASED_PREFILL", seed=1, clock=clock,
                       queue=PrefillQueueConfig(**queue)), clock  # type: ignore[arg-type]


def test_events_are_deferred_in_order() -> None:
    router, _ = queued(depth=1)
    owner = Owner(router)
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(100), hold=True, payload="b")
    c = router.route(rreq(3000), hold=True, payload="c")
    events = [Released(b, "b"), Evicted(c, "c")]
    owner.driver.after(events)
    assert owner.got == [] and len(owner.later) == 2  # nothing delivered inside after()
    owner.run_deferred()
    assert owner.got == events
    for x in (a, b, c):
        router.release(x)


def test_the_timer_runs_while_calls_are_held_and_stops_after() -> None:
    router, clock = queued(depth=1, max_hold_ms=1000)
    owner = Owner(router)
    owner.driver.arm()
    assert not owner.driver.running and owner.timers.pending == []  # nothing held: no timer
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True, payload="b")
    owner.driver.arm()
    owner.driver.arm()  # once is enough
    assert owner.driver.running and len(owner.timers.pending) == 1
    assert owner.timers.pending[0][0] == UPKEEP_INTERVAL_S
    owner.timers.fire()  # nothing due yet: the upkeep runs and sets the next one
    assert owner.got == [] and owner.driver.running and len(owner.timers.pending) == 1
    clock.now = T0 + 1.0
    owner.timers.fire()  # b is overdue: released by the upkeep, then nothing is held
    owner.run_deferred()
    assert owner.got == [Released(b, "b")]
    assert not owner.driver.running and owner.timers.pending == []
    for x in (a, b):
        router.release(x)


def test_the_sweep_runs_before_the_upkeep_on_every_tick() -> None:
    router, _ = queued(depth=1)
    order: list[str] = []
    dropped = []

    def sweep() -> None:
        order.append("sweep")
        dropped.extend(router.drop_held(lambda payload: payload == "gone"))

    owner = Owner(router, sweep)
    maintain = router.maintain

    def maintain_logged() -> list[HoldEvent]:
        order.append("maintain")
        return maintain()

    router.maintain = maintain_logged  # type: ignore[method-assign]
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True, payload="gone")
    c = router.route(rreq(1000), hold=True, payload="here")
    owner.driver.arm()
    owner.timers.fire()
    assert order == ["sweep", "maintain"]
    assert dropped == [(b, "gone")] and b.released and c.held and router.held_calls() == 1
    assert owner.driver.running  # c is still held
    for x in (a, c):
        router.release(x)


def test_close_cancels_the_timer_and_stops_rearming() -> None:
    router, _ = queued(depth=1)
    owner = Owner(router)
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True)
    owner.driver.arm()
    assert owner.timers.live() == 1
    owner.driver.close()
    assert owner.timers.live() == 0 and not owner.driver.running
    owner.driver.arm()
    owner.driver.after([])
    assert owner.timers.live() == 0
    for x in (a, b):
        router.release(x)


def test_events_from_a_first_token_reach_the_owner_through_the_driver() -> None:
    router, _ = queued(depth=1)
    owner = Owner(router)
    a = router.route(rreq(1000), hold=True)
    b = router.route(rreq(1000), hold=True, payload="b")
    owner.driver.arm()
    owner.driver.after(router.first_token(a, 1.0))
    assert owner.got == []
    owner.run_deferred()
    assert owner.got == [Released(b, "b")] and not b.held
    for x in (a, b):
        router.release(x)
