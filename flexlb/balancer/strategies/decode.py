"""Decode choice by KV footprint: the scorer behind WEIGHTED_CACHE (weighted random, exp(-k x extra KV))."""

from __future__ import annotations

from collections.abc import Sequence

from flexlb.balancer.request import RouteRequest
from flexlb.balancer.strategies.base import PickContext, Scored, Scorer
from flexlb.balancer.workers import WorkerState


def kv_used_tokens(w: WorkerState) -> int:
    """KV in use: what the worker last reported (GetWorkerStatus), or what the gateway has sent there
    since, whichever is larger (a report lags the calls dispatched after it)."""
    reported = w.kv_total_tokens - w.kv_available_tokens if w.kv_total_tokens else 0
    return max(reported, w.active_tokens)


class KvUsedScorer(Scorer):
    """Cost: KV tokens in use on the worker."""

    name = "kv_used"

    def score(self, candidates: Sequence[WorkerState], req: RouteRequest, ctx: PickContext) -> Scored:
        """KV tokens in use per candidate."""
        # kv_used_tokens inlined: this runs over every decode worker on every PD decision
        return Scored(candidates, [max(w.kv_total_tokens - w.kv_available_tokens if w.kv_total_tokens else 0,
                                       w.active_tokens) for w in candidates])
