"""Filters every chain starts with: the call's exclude set, rotation (failing open), the per-worker cap;
and PD group affinity, which the router adds for the pairing."""

from __future__ import annotations

from collections.abc import Sequence

from flexlb.balancer.health import usable
from flexlb.balancer.request import RouteRequest
from flexlb.balancer.strategies.base import Filter, PickContext
from flexlb.balancer.workers import WorkerState


class ExcludeFilter(Filter):
    """Drops the workers the call must not go to (e.g. the one that just failed it)."""

    name = "exclude"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """Workers not in `req.exclude`."""
        return [w for w in workers if w.key not in req.exclude] if req.exclude else workers


class UsableFilter(Filter):
    """Drops workers out of rotation, unless that would drop all of them (fail open: better a doubtful
    worker than refusing the call)."""

    name = "usable"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """The usable workers, or all of them when none is."""
        healthy = [w for w in workers if usable(w, ctx.now_s)]
        return workers if len(healthy) == len(workers) else (healthy or workers)


class InFlightCapFilter(Filter):
    """Drops workers at the per-worker in-flight cap; never fails open (that is admission control)."""

    name = "in_flight_cap"

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """Workers below the cap (all of them without one)."""
        cap = ctx.max_in_flight_per_worker
        return [w for w in workers if w.in_flight < cap] if cap > 0 else workers


class GroupFilter(Filter):
    """Keeps the workers of some groups: a prefill can hand its KV cache only to a decode of its own group."""

    name = "group"

    def __init__(self, groups: frozenset[str]) -> None:
        self.groups = groups

    def apply(self, workers: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Sequence[WorkerState]:
        """Workers whose group is one of `groups`."""
        return [w for w in workers if w.addr.group in self.groups]


STANDARD_FILTERS: tuple[Filter, ...] = (ExcludeFilter(), UsableFilter(), InFlightCapFilter())
