"""The one way to build a Router from plain parameters: the gateway, the simulator and the tests use it."""

from __future__ import annotations

import random
from collections.abc import Callable

from flexlb.balancer.health import OutlierConfig, OutlierDetector
from flexlb.balancer.prefill_queue import PrefillQueueConfig
from flexlb.balancer.prefix_index import PrefixIndex, PrefixIndexConfig
from flexlb.balancer.request import Deploy
from flexlb.balancer.router import Router
from flexlb.balancer.strategies import make_strategy, make_vit_strategy
from flexlb.balancer.ttft import TtftModel, TtftPriors
from flexlb.balancer.workers import Cluster


def build_router(
    cluster: Cluster,
    deploy: Deploy,
    strategy: str,
    decode_strategy: str = "WEIGHTED_CACHE",
    *,
    rng: random.Random,
    clock: Callable[[], float],
    queue: PrefillQueueConfig | None = None,
    ttft: TtftPriors | None = None,
    index: PrefixIndexConfig | None = None,
    outliers: OutlierConfig | None = None,
    max_in_flight_per_worker: int = 0,
    vit_strategy: str = "RANDOM",
) -> Router:
    """A router over `cluster`: strategies by config name (KeyError lists the accepted ones), the prefill
    queue off without `queue`, no prefix index without `index` (kvCache NONE), default TTFT priors and
    outlier policy unless given; `vit_strategy` picks the VIT worker when the cluster has VIT workers."""
    router = Router(
        cluster,
        deploy,
        make_strategy(strategy),
        make_strategy(decode_strategy),
        rng=rng,
        clock=clock,
        ttft=TtftModel(ttft or TtftPriors()),
        index=PrefixIndex(index) if index is not None else None,
        outliers=OutlierDetector(outliers or OutlierConfig()),
        queue=queue,
        vit_strategy=make_vit_strategy(vit_strategy),
    )
    router.max_in_flight_per_worker = max_in_flight_per_worker
    return router
