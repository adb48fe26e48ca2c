"""Drives the prefill queue for its owner: delivers the router's hold events and runs the upkeep timer.

Pure: the owner injects the timer (`call_later`) and how a delivery is scheduled (`defer`). The live
gateway defers with loop.call_soon, so a released call is started from the event loop, never inside
another call's I/O callback; the simulator delivers at once on its virtual clock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol

from flexlb.balancer.events import HoldEvent
from flexlb.balancer.prefill_queue import UPKEEP_INTERVAL_S
from flexlb.balancer.router import Router


class Cancellable(Protocol):
    """A pending timer (asyncio.TimerHandle, or the simulator's event)."""

    def cancel(self) -> None:
        """Do not run it."""
        ...


class HoldDriver:
    """Hands hold events to `deliver` through `defer`; while calls are held, runs `sweep` (if any) and
    Router.maintain() every `interval_s`, and stops once nothing is held."""

    def __init__(
        self,
        router: Router,
        call_later: Callable[[float, Callable[[], None]], Cancellable],
        defer: Callable[[Callable[[], None]], object],
        deliver: Callable[[HoldEvent], None],
        sweep: Callable[[], None] | None = None,
        interval_s: float = UPKEEP_INTERVAL_S,
    ) -> None:
        self.router = router
        self.interval_s = interval_s
        self._call_later = call_later
        self._defer = defer
        self._deliver = deliver
        self._sweep = sweep
        self._timer: Cancellable | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the upkeep timer is set."""
        return self._timer is not None

    def after(self, events: Sequence[HoldEvent]) -> None:
        """Hand over what a router call returned (each event through `defer`), then keep the upkeep going."""
        for event in events:
            self._defer(functools.partial(self._deliver, event))
        self.arm()

    def arm(self) -> None:
        """Set the upkeep timer if calls are held and it is not set (call it after routing a held call)."""
        if self._timer is None and not self._closed and self.router.held_calls():
            self._timer = self._call_later(self.interval_s, self._tick)

    def close(self) -> None:
        """Cancel the timer; nothing is scheduled any more."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._sweep is not None:
            self._sweep()
        self.after(self.router.maintain())
