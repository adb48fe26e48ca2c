"""Strategy registry: config names → factories. Unknown names are a startup error listing these."""

from __future__ import annotations

from collections.abc import Callable

from flexlb.balancer.strategies.base import Strategy
from flexlb.balancer.strategies.baselines import DynamoKv, SGLangCacheAware
from flexlb.balancer.strategies.cost import CacheAware, CostBasedPrefill, ShortestTtft
from flexlb.balancer.strategies.decode import WeightedCache
from flexlb.balancer.strategies.simple import (
    LowestConcurrency,
    RandomPick,
    RoundRobin,
    RoundRobinLowestConcurrency,
)

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "RANDOM": RandomPick,
    "ROUND_ROBIN": RoundRobin,
    "LOWEST_CONCURRENCY": LowestConcurrency,
    "ROUND_ROBIN_LOWEST_CONCURRENCY": RoundRobinLowestConcurrency,
    "SHORTEST_TTFT": ShortestTtft,
    "COST_BASED_PREFILL": CostBasedPrefill,
    "CACHE_AWARE": CacheAware,
    "WEIGHTED_CACHE": WeightedCache,
    # the original FlexLB's decode default: KV-weighted choice
    "COST_BASED_DECODE": WeightedCache,
    # reference baselines from their published rules
    "SGLANG_CACHE_AWARE": SGLangCacheAware,
    "DYNAMO_KV": DynamoKv,
}


def strategy_names() -> list[str]:
    """Every accepted strategy name, sorted."""
    return sorted(STRATEGIES)


def make_strategy(name: str) -> Strategy:
    """A fresh strategy instance for a config name; KeyError names the accepted ones."""
    try:
        factory = STRATEGIES[name.strip().upper()]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; accepted: {', '.join(strategy_names())}") from None
    return factory()
