"""Load-only strategies: random, round-robin, lowest in-flight count, and their combination."""

from __future__ import annotations

from collections.abc import Sequence

from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext, least_recently_chosen
from flexlb.balancer.workers import WorkerState


class RandomPick:
    """Uniformly random among candidates."""

    name = "RANDOM"
    holds = False

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """Any candidate, uniformly."""
        return Pick(ctx.rng.choice(candidates), "random")


class RoundRobin:
    """Each candidate in turn (least recently chosen first)."""

    name = "ROUND_ROBIN"
    holds = False

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """The candidate chosen longest ago."""
        return Pick(least_recently_chosen(candidates), "round_robin")


def _lowest_in_flight(candidates: Sequence[WorkerState]) -> list[WorkerState]:
    low = min(w.in_flight for w in candidates)
    return [w for w in candidates if w.in_flight == low]


class LowestConcurrency:
    """Fewest in-flight calls; ties broken at random so that replicas do not herd."""

    name = "LOWEST_CONCURRENCY"
    holds = False

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """A random one of the workers tied at the lowest in-flight count."""
        tied = _lowest_in_flight(candidates)
        return Pick(ctx.rng.choice(tied), "lowest_concurrency")


class RoundRobinLowestConcurrency:
    """Round-robin among the workers tied at the lowest in-flight count."""

    name = "ROUND_ROBIN_LOWEST_CONCURRENCY"
    holds = False

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """The least recently chosen of the workers tied at the lowest in-flight count."""
        tied = _lowest_in_flight(candidates)
        return Pick(least_recently_chosen(tied), "round_robin_lowest_concurrency")
