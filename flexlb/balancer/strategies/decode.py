"""Decode choice by KV footprint: weighted random, exp(-k * (used - least used))."""

from __future__ import annotations

import math
from collections.abc import Sequence

from flexlb.balancer.request import Pick, RouteRequest
from flexlb.balancer.strategies.base import PickContext
from flexlb.balancer.workers import WorkerState


def kv_used_tokens(w: WorkerState) -> int:
    """KV in use: what the worker last reported (GetWorkerStatus), or what the gateway has sent there
    since, whichever is larger (a report lags the calls dispatched after it)."""
    reported = w.kv_total_tokens - w.kv_available_tokens if w.kv_total_tokens else 0
    return max(reported, w.active_tokens)


class WeightedCache:
    """Weighted random over decode workers; the least used KV weighs 1, each token more weighs less.

    Random rather than argmin so that several gateway replicas seeing the same state do not
    all send the next request to the same decode worker.
    """

    name = "WEIGHTED_CACHE"
    holds = False

    def __init__(self, decay_per_token: float = 0.001) -> None:
        self.decay_per_token = decay_per_token

    def pick(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Pick:
        """Sample a worker with weight exp(-k * (KV tokens in use - minimum))."""
        used = [kv_used_tokens(w) for w in candidates]
        least = min(used)
        weights = [math.exp(-self.decay_per_token * (u - least)) for u in used]
        return Pick(ctx.rng.choices(candidates, weights=weights)[0], "kv_weighted")
