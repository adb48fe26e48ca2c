"""Pickers: lowest cost within a tie band, weighted random, uniform random, round-robin, lowest concurrency."""

from __future__ import annotations

import math

from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext, Picker, Scored, least_recently_chosen


class MinCostPicker(Picker):
    """Lowest cost. With `tie="least_recent"`, every worker within `band_ms` of the best counts as tied and
    the least recently chosen of them wins (reason gets "_tie"); with `tie="random"`, exact ties are broken
    at random (one draw per worker, in order)."""

    name = "min_cost"

    def __init__(self, reason: str, band_ms: float = 0.0, tie: str = "least_recent") -> None:
        if tie not in ("least_recent", "random"):
            raise ValueError(f"tie {tie!r}; expected least_recent or random")
        self.reason = reason
        self.band_ms = band_ms
        self.tie = tie

    def pick(self, scored: Scored, req: RouteRequest, ctx: PickContext) -> Pick:
        """The cheapest worker."""
        cost = scored.cost
        assert cost is not None, "MinCostPicker needs a scorer that gives a cost"
        workers = scored.workers
        if self.tie == "random":
            i = min(range(len(workers)), key=lambda j: (cost[j], ctx.rng.random()))
            reason = self.reason
        else:
            best = min(cost)
            near = [j for j, c in enumerate(cost) if c <= best + self.band_ms]
            if len(near) == 1:
                i, reason = near[0], self.reason
            else:
                w = least_recently_chosen([workers[j] for j in near])
                i, reason = next(j for j in near if workers[j] is w), f"{self.reason}_tie"
        estimate = scored.estimates[i].ttft_ms if scored.estimates is not None else None
        return Pick(workers[i], reason, estimate)


class WeightedRandomPicker(Picker):
    """Random, weighted exp(-decay x (cost - least cost)): the cheapest weighs 1, each unit more weighs less.

    Random rather than argmin so that several gateway replicas seeing the same state do not all send the
    next request to the same worker.
    """

    name = "weighted_random"

    def __init__(self, reason: str, decay_per_unit: float) -> None:
        self.reason = reason
        self.decay_per_unit = decay_per_unit

    def pick(self, scored: Scored, req: RouteRequest, ctx: PickContext) -> Pick:
        """A worker sampled by weight."""
        cost = scored.cost
        assert cost is not None, "WeightedRandomPicker needs a scorer that gives a cost"
        least = min(cost)
        exp, k = math.exp, -self.decay_per_unit  # (bound once: this runs over every decode worker per PD decision)
        weights = [exp(k * (c - least)) for c in cost]
        return Pick(ctx.rng.choices(scored.workers, weights=weights)[0], self.reason)


class RandomPicker(Picker):
    """Uniformly random."""

    name = "random"

    def __init__(self, reason: str = "random") -> None:
        self.reason = reason

    def pick(self, scored: Scored, req: RouteRequest, ctx: PickContext) -> Pick:
        """Any worker, uniformly."""
        return Pick(ctx.rng.choice(scored.workers), self.reason)


class RoundRobinPicker(Picker):
    """Each worker in turn: the one chosen longest ago."""

    name = "round_robin"

    def __init__(self, reason: str = "round_robin") -> None:
        self.reason = reason

    def pick(self, scored: Scored, req: RouteRequest, ctx: PickContext) -> Pick:
        """The least recently chosen worker."""
        return Pick(least_recently_chosen(scored.workers), self.reason)


class LowestConcurrencyPicker(Picker):
    """Fewest in-flight calls; ties at random (`tie="random"`, so that replicas do not herd) or in turn
    (`tie="round_robin"`)."""

    name = "lowest_concurrency"

    def __init__(self, reason: str, tie: str = "random") -> None:
        if tie not in ("random", "round_robin"):
            raise ValueError(f"tie {tie!r}; expected random or round_robin")
        self.reason = reason
        self.tie = tie

    def pick(self, scored: Scored, req: RouteRequest, ctx: PickContext) -> Pick:
        """One of the workers tied at the lowest in-flight count."""
        low = min(w.in_flight for w in scored.workers)
        tied = [w for w in scored.workers if w.in_flight == low]
        chosen = ctx.rng.choice(tied) if self.tie == "random" else least_recently_chosen(tied)
        return Pick(chosen, self.reason)
