"""The strategy registry: each config name is a chain of filters, a scorer and a picker, declared here.

Unknown names are a startup error listing these. Every chain is built fresh per router (scorers may
keep records of their own). Whether a strategy's calls may wait in the prefill queue is the queue's
configuration (PrefillQueueConfig.strategies), not the chain's.
"""

from __future__ import annotations

from collections.abc import Callable

from flexlb.balancer.strategies.base import Chain
from flexlb.balancer.strategies.baselines import DynamoKvScorer, SGLangPicker, SGLangTreeScorer
from flexlb.balancer.strategies.cost import (
    CacheAffinityPicker,
    EstimateScorer,
    LoadWeightedCostScorer,
    TtftScorer,
)
from flexlb.balancer.strategies.decode import KvUsedScorer
from flexlb.balancer.strategies.filters import STANDARD_FILTERS, VIT_FILTERS
from flexlb.balancer.strategies.pickers import (
    LowestConcurrencyPicker,
    MinCostPicker,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)

TIE_BAND_MS = 5.0  # near-ties of the TTFT costs, measured on absolute ms (a relative band worsens overload)


_F = STANDARD_FILTERS


def _weighted_cache() -> Chain:
    # the least used KV weighs 1, each token more weighs less
    return Chain("WEIGHTED_CACHE", _F, KvUsedScorer(), WeightedRandomPicker("kv_weighted", 0.001))


STRATEGIES: dict[str, Callable[[], Chain]] = {
    "RANDOM": lambda: Chain("RANDOM", _F, None, RandomPicker("random")),
    "ROUND_ROBIN": lambda: Chain("ROUND_ROBIN", _F, None, RoundRobinPicker("round_robin")),
    "LOWEST_CONCURRENCY": lambda: Chain("LOWEST_CONCURRENCY", _F, None,
                                        LowestConcurrencyPicker("lowest_concurrency", tie="random")),
    "ROUND_ROBIN_LOWEST_CONCURRENCY": lambda: Chain(
        "ROUND_ROBIN_LOWEST_CONCURRENCY", _F, None,
        LowestConcurrencyPicker("round_robin_lowest_concurrency", tie="round_robin")),
    "SHORTEST_TTFT": lambda: Chain("SHORTEST_TTFT", _F, TtftScorer(), MinCostPicker("shortest_ttft", TIE_BAND_MS)),
    "COST_BASED_PREFILL": lambda: Chain("COST_BASED_PREFILL", _F, LoadWeightedCostScorer(),
                                        MinCostPicker("cost", TIE_BAND_MS)),
    "CACHE_AWARE": lambda: Chain("CACHE_AWARE", _F, EstimateScorer(), CacheAffinityPicker(guard_ms=2_000.0)),
    "WEIGHTED_CACHE": _weighted_cache,
    # the original FlexLB's decode default: KV-weighted choice
    "COST_BASED_DECODE": _weighted_cache,
    # reference baselines from their published rules
    "SGLANG_CACHE_AWARE": lambda: Chain("SGLANG_CACHE_AWARE", _F, SGLangTreeScorer(), SGLangPicker()),
    "DYNAMO_KV": lambda: Chain("DYNAMO_KV", _F, DynamoKvScorer(), MinCostPicker("kv_cost", tie="random")),
}


def strategy_names() -> list[str]:
    """Every accepted strategy name, sorted."""
    return sorted(STRATEGIES)


def make_strategy(name: str) -> Chain:
    """A fresh chain for a config name; KeyError names the accepted ones."""
    try:
        factory = STRATEGIES[name.strip().upper()]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; accepted: {', '.join(strategy_names())}") from None
    return factory()


def make_vit_strategy(name: str) -> Chain:
    """The chain that picks the VIT worker (vitLoadBalanceStrategy): the named strategy over the VIT filters
    (no prompt-length rule, no failing open). The load-only ones (RANDOM, ROUND_ROBIN, LOWEST_CONCURRENCY,
    ROUND_ROBIN_LOWEST_CONCURRENCY) are the meaningful choices: the TTFT costs know nothing of VIT work."""
    chain = make_strategy(name)
    chain.filters = VIT_FILTERS
    return chain
