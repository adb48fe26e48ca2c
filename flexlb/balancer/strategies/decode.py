"""Decode choice by KV footprint: weighted random, exp(-k * (used - least used))."""

from __future__ import annotations

import math
from collections.abc import Sequence

from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext
from flexlb.balancer.workers import WorkerState


class WeightedCache:
    """Weighted random over decode workers; the least used KV weighs 1, each token more weighs less.

    Random rather than argmin so that several gateway replicas seeing the same state do not
    all send the next request to the same decode worker.
    """

    name = "WEIGHTED_CACHE"

    def __init__(self, decay_per_token: float = 0.001) -> None:
        self.decay_per_token = decay_per_token

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """Sample a worker with weight exp(-k * (active tokens - minimum))."""
        least = min(w.active_tokens for w in candidates)
        weights = [math.exp(-self.decay_per_token * (w.active_tokens - least)) for w in candidates]
        return Pick(ctx.rng.choices(candidates, weights=weights)[0], "kv_weighted")
