"""What the balancer tests share: the one fake clock, worker addresses, routers built by build_router, and a
recorder of the hold events router calls return."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from flexlb.balancer.events import Evicted, HoldEvent, Released
from flexlb.balancer.factory import build_router
from flexlb.balancer.request import Deploy
from flexlb.balancer.router import Router
from flexlb.balancer.workers import Cluster, Lease, Role, WorkerAddr


class FakeClock:
    """A clock that only moves when the test says so (and counts how often it is read)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


def addrs(role: Role, n: int, group: str = "", base: int = 8000) -> list[WorkerAddr]:
    """`n` workers of one role on 127.0.0.x, gRPC ports from `base`."""
    return [WorkerAddr(f"127.0.0.{i + 1}", base + i, base + i - 1, role, group) for i in range(n)]


def make_router(workers: list[WorkerAddr], strategy: str = "ROUND_ROBIN", decode_strategy: str = "ROUND_ROBIN",
                deploy: Deploy | None = None, seed: int = 7, clock: Callable[[], float] | None = None,
                **kw: Any) -> Router:
    """A router over fresh workers; PD when any is a PREFILL worker. `kw` goes to build_router."""
    if deploy is None:
        deploy = Deploy.DISAGGREGATED if any(w.role is Role.PREFILL for w in workers) else Deploy.PD_FUSION
    return build_router(Cluster(workers), deploy, strategy, decode_strategy, rng=random.Random(seed),
                        clock=clock or FakeClock(), **kw)


class Recorder:
    """Collects what router calls hand back: the leases released from the queue and those evicted (with the
    router given, its methods that return events are wrapped)."""

    def __init__(self, router: Router | None = None) -> None:
        self.router = router
        self.released: list[Lease] = []
        self.evicted: list[Lease] = []
        self.payloads: list[object] = []

    def __call__(self, events: list[HoldEvent]) -> list[HoldEvent]:
        for e in events:
            if isinstance(e, Released):
                self.released.append(e.lease)
            else:
                assert isinstance(e, Evicted)
                self.evicted.append(e.lease)
            self.payloads.append(e.payload)
        return events

    def _router(self) -> Router:
        assert self.router is not None
        return self.router

    def first_token(self, lease: Lease, observed_ttft_ms: float, prefill_ms: float | None = None,
                    uncached_tokens: int | None = None, cached_tokens: int | None = None,
                    engine_ms: float | None = None) -> list[HoldEvent]:
        """Router.first_token, recorded."""
        return self(self._router().first_token(lease, observed_ttft_ms, prefill_ms, uncached_tokens, cached_tokens,
                                               engine_ms))

    def release(self, lease: Lease) -> bool:
        """Router.release, recorded; True if this released the lease."""
        was = lease.released
        self(self._router().release(lease))
        return lease.released and not was

    def maintain(self) -> list[HoldEvent]:
        """Router.maintain, recorded."""
        return self(self._router().maintain())

    def evict_held(self, worker_key: str) -> list[HoldEvent]:
        """Router.evict_held, recorded."""
        return self(self._router().evict_held(worker_key))


def end(router: Router, lease: Lease) -> bool:
    """Release the lease as its call ending would; True if this released it (events are dropped)."""
    was = lease.released
    router.release(lease)
    return lease.released and not was


class FakeTimers:
    """The one fake call_later of the tests: timers fire when the test says."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None], FakeTimers.Handle]] = []

    class Handle:
        def __init__(self) -> None:
            self.cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> FakeTimers.Handle:
        handle = FakeTimers.Handle()
        self.pending.append((delay_s, fn, handle))
        return handle

    def fire(self) -> None:
        """Run the timers due now (each once)."""
        due, self.pending = self.pending, []
        for _, fn, handle in due:
            if not handle.cancelled:
                fn()

    def live(self) -> int:
        return sum(not h.cancelled for _, _, h in self.pending)
