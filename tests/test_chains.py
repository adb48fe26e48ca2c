"""The parts strategies are made of, one by one: filters, scorers, pickers, the registry, the cached-token rule."""

from __future__ import annotations

import math
import random

import pytest

from flexlb.balancer.prefill_queue import PrefillQueue, PrefillQueueConfig
from flexlb.balancer.request import RouteRequest, cached_tokens
from flexlb.balancer.strategies import STRATEGIES, make_strategy
from flexlb.balancer.strategies.base import Chain, Estimate, PickContext, Scored, apply_filters
from flexlb.balancer.strategies.baselines import DynamoKvScorer, SGLangPicker, SGLangTreeScorer
from flexlb.balancer.strategies.cost import (
    CacheAffinityPicker,
    EstimateScorer,
    LoadWeightedCostScorer,
    TtftScorer,
    estimates,
)
from flexlb.balancer.strategies.decode import KvUsedScorer
from flexlb.balancer.strategies.filters import (
    STANDARD_FILTERS,
    ExcludeFilter,
    GroupFilter,
    InFlightCapFilter,
    PinnedGroupFilter,
    SeqLenFilter,
    UsableFilter,
)
from flexlb.balancer.strategies.pickers import (
    LowestConcurrencyPicker,
    MinCostPicker,
    RandomPicker,
    RoundRobinPicker,
    WeightedRandomPicker,
)
from flexlb.balancer.ttft import TtftModel, TtftPriors
from flexlb.balancer.workers import Cluster, Role, WorkerState
from tests.balancer_support import addrs

NOW = 1000.0


def workers(n: int, group: str = "") -> list[WorkerState]:
    return Cluster(addrs(Role.PDFUSION, n, group)).all()


def ctx(seed: int = 1, cap: int = 0, matched: dict[str, int] | None = None, queue: PrefillQueue | None = None,
        ttft: TtftModel | None = None) -> PickContext:
    return PickContext(random.Random(seed), NOW, ttft or TtftModel(TtftPriors()), matched or {}, queue, cap)


def req(tokens: int = 1000, exclude: frozenset[str] = frozenset(), keys: tuple[int, ...] = (),
        block: int = 0) -> RouteRequest:
    return RouteRequest(1, tokens, 8, exclude=exclude, block_keys=keys, block_size_tokens=block)


# ---------------------------------------------------------------------------------------------- cached tokens


@pytest.mark.parametrize(("matched", "prompt", "block", "expect"), [
    (0, 1000, 64, 0),
    (3, 1000, 64, 192),
    (16, 1024, 64, 1023),  # a full hit still computes the last token
    (20, 1024, 64, 1023),  # more blocks than the prompt: clamped the same way
    (1, 1, 64, 0),
    (1, 0, 64, 0),  # an empty prompt reuses nothing (never negative)
    (5, 1000, 0, 0),  # no block size: no keys, nothing reused
])
def test_the_one_cached_token_rule(matched: int, prompt: int, block: int, expect: int) -> None:
    r = RouteRequest(1, prompt, block_size_tokens=block)
    assert cached_tokens(r, matched) == expect
    w = workers(1)[0]
    assert ctx(matched={w.key: matched}).cached_tokens(r, w) == expect


# ---------------------------------------------------------------------------------------------- filters


def test_exclude_filter() -> None:
    ws = workers(3)
    assert ExcludeFilter().apply(ws, req(), ctx()) is ws  # nothing excluded: the same list back
    assert ExcludeFilter().apply(ws, req(exclude=frozenset({ws[1].key})), ctx()) == [ws[0], ws[2]]


def test_usable_filter_fails_open() -> None:
    ws = workers(3)
    assert UsableFilter().apply(ws, req(), ctx()) is ws
    ws[0].healthy = False
    ws[1].operator_out = True
    assert UsableFilter().apply(ws, req(), ctx()) == [ws[2]]
    ws[2].ejected_until_s = NOW + 1.0
    assert UsableFilter().apply(ws, req(), ctx()) == ws  # none usable: all of them rather than none


def test_in_flight_cap_filter_never_fails_open() -> None:
    ws = workers(3)
    ws[0].in_flight, ws[1].in_flight, ws[2].in_flight = 2, 1, 2
    assert InFlightCapFilter().apply(ws, req(), ctx(cap=0)) is ws
    assert InFlightCapFilter().apply(ws, req(), ctx(cap=2)) == [ws[1]]
    assert InFlightCapFilter().apply(ws, req(), ctx(cap=1)) == []


def test_group_filter() -> None:
    ws = workers(2, "a") + workers(2, "b")
    assert GroupFilter(frozenset({"b"})).apply(ws, req(), ctx()) == ws[2:]
    assert GroupFilter(frozenset({"c"})).apply(ws, req(), ctx()) == []


def test_standard_filters_in_order() -> None:
    ws = workers(4)
    ws[1].healthy = False
    ws[2].in_flight = 5
    assert [type(f) for f in STANDARD_FILTERS] == [ExcludeFilter, PinnedGroupFilter, SeqLenFilter, UsableFilter,
                                                   InFlightCapFilter]
    r = req(exclude=frozenset({ws[0].key}))
    assert apply_filters(STANDARD_FILTERS, ws, r, ctx(cap=5)) == [ws[3]]
    # the usable filter fails open over what the exclude set leaves, not over everyone
    r = req(exclude=frozenset({ws[0].key, ws[3].key}))
    assert apply_filters(STANDARD_FILTERS, ws, r, ctx()) == [ws[2]]


# ---------------------------------------------------------------------------------------------- scorers


def test_ttft_and_cost_scorers_read_the_same_estimates() -> None:
    model = TtftModel(TtftPriors(base_ms=20.0, ms_per_uncached_token=0.1))
    ws = workers(2)
    model.dispatched(ws[0].key, 1, 300.0, NOW)  # 300 ms of work sent to ws[0]
    c = ctx(ttft=model, matched={ws[0].key: 10})
    r = req(1000, keys=tuple(range(10)), block=64)  # ws[0] reuses 640 tokens
    est = estimates(ws, r, c)
    assert [(e.cached_tokens, e.wait_ms) for e in est] == [(640, 300.0), (0, 0.0)]
    assert [e.prefill_ms for e in est] == pytest.approx([20.0 + 36.0, 120.0])
    ttft = TtftScorer().score(ws, r, c)
    assert ttft.cost == pytest.approx([356.0, 120.0]) and ttft.estimates == est
    # k = 0.5 x 1 call waiting / 2 workers = 0.25: cost = wait + prefill x 1.25
    cost = LoadWeightedCostScorer().score(ws, r, c)
    assert cost.cost == pytest.approx([300.0 + 56.0 * 1.25, 120.0 * 1.25])
    assert EstimateScorer().score(ws, r, c).cost is None


def test_estimates_count_the_held_work_ahead_with_the_queue_on() -> None:
    model = TtftModel(TtftPriors(base_ms=20.0, ms_per_uncached_token=0.1))
    ws = workers(1)
    queue = PrefillQueue(PrefillQueueConfig(depth=1))
    model.dispatched(ws[0].key, 1, 100.0, NOW)  # the slot is taken
    queue.push(ws[0].key, 2, 50.0, NOW)
    queue.push(ws[0].key, 3, 500.0, NOW)
    (e,) = estimates(ws, req(1000), ctx(ttft=model, queue=queue))
    assert (e.wait_ms, e.prefill_ms, e.overtakes) == (pytest.approx(150.0), pytest.approx(120.0), 1)


def test_kv_used_scorer_takes_the_larger_of_report_and_sent() -> None:
    ws = workers(2)
    ws[0].active_tokens = 500
    ws[1].kv_total_tokens, ws[1].kv_available_tokens, ws[1].active_tokens = 10_000, 9_000, 200
    assert KvUsedScorer().score(ws, req(), ctx()).cost == [500.0, 1000.0]


def test_dynamo_scorer_keeps_its_own_record_of_choices() -> None:
    ws = workers(2)
    s = DynamoKvScorer()
    r = req(4 * 64, keys=(1, 2, 3, 4), block=64)
    assert s.score(ws, r, ctx()).cost == [4.0, 4.0]
    s.chosen(ws[1], r, ctx())
    ws[1].active_tokens = 64 * 2
    assert s.score(ws, r, ctx()).cost == [4.0, 0.0 + 2.0]


def test_sglang_scorer_features() -> None:
    ws = workers(2)
    s = SGLangTreeScorer()
    r = req(4 * 64, keys=(1, 2, 3, 4), block=64)
    s.chosen(ws[0], req(2 * 64, keys=(1, 2), block=64), ctx())
    scored = s.score(ws, r, ctx())
    assert scored.features == {"matched_blocks": [2, 0], "tree_blocks": [2, 0]}


# ---------------------------------------------------------------------------------------------- pickers


def _est(ws: list[WorkerState], waits: list[float], cached: list[int]) -> Scored:
    est = [Estimate(w, c, wait, 10.0) for w, wait, c in zip(ws, waits, cached, strict=True)]
    return Scored(ws, [e.ttft_ms for e in est], est)


def test_min_cost_picker_tie_band_and_least_recent() -> None:
    ws = workers(3)
    ws[0].last_chosen_seq, ws[1].last_chosen_seq, ws[2].last_chosen_seq = 5, 3, 1
    picker = MinCostPicker("cost", band_ms=5.0)
    pick = picker.pick(_est(ws, [0.0, 3.0, 50.0], [0, 0, 0]), req(), ctx())
    assert (pick.worker, pick.reason, pick.estimate_ms) == (ws[1], "cost_tie", 13.0)  # ws[2] is not near
    pick = MinCostPicker("cost", band_ms=1.0).pick(_est(ws, [0.0, 3.0, 50.0], [0, 0, 0]), req(), ctx())
    assert (pick.worker, pick.reason) == (ws[0], "cost")


def test_min_cost_picker_random_ties() -> None:
    ws = workers(3)
    scored = Scored(ws, [2.0, 1.0, 1.0])
    picks = {MinCostPicker("kv_cost", tie="random").pick(scored, req(), ctx(seed)).worker.key for seed in range(40)}
    assert picks == {ws[1].key, ws[2].key}
    with pytest.raises(ValueError):
        MinCostPicker("x", tie="first")


def test_weighted_random_picker_weighs_exp_of_minus_extra_cost() -> None:
    ws = workers(2)
    scored = Scored(ws, [0.0, 1000.0])
    picker = WeightedRandomPicker("kv_weighted", 0.001)
    c = ctx(3)
    counts = [0, 0]
    for _ in range(4000):
        counts[ws.index(picker.pick(scored, req(), c).worker)] += 1
    assert counts[1] / counts[0] == pytest.approx(math.exp(-1.0), rel=0.15)


def test_random_round_robin_and_lowest_concurrency_pickers() -> None:
    ws = workers(3)
    assert {RandomPicker().pick(Scored(ws), req(), ctx(s)).worker.key for s in range(30)} == {w.key for w in ws}
    ws[0].last_chosen_seq, ws[1].last_chosen_seq, ws[2].last_chosen_seq = 4, 2, 9
    assert RoundRobinPicker().pick(Scored(ws), req(), ctx()).worker is ws[1]
    ws[0].in_flight, ws[1].in_flight, ws[2].in_flight = 1, 2, 1
    rr = LowestConcurrencyPicker("rr_lc", tie="round_robin")
    assert rr.pick(Scored(ws), req(), ctx()).worker is ws[0]  # tied at 1 with ws[2], chosen longer ago
    low = LowestConcurrencyPicker("lc")
    assert {low.pick(Scored(ws), req(), ctx(s)).worker.key for s in range(30)} == {ws[0].key, ws[2].key}


def test_cache_affinity_picker_keeps_the_longest_prefix_within_the_guard() -> None:
    ws = workers(3)
    picker = CacheAffinityPicker(guard_ms=100.0)
    assert picker.pick(_est(ws, [0.0, 90.0, 500.0], [0, 64, 128]), req(), ctx()).worker is ws[1]
    pick = picker.pick(_est(ws, [0.0, 90.0, 500.0], [0, 64, 128]), req(), ctx())
    assert pick.reason == "cache_hit_load_guarded"
    pick = picker.pick(_est(ws, [20.0, 0.5, 0.0], [0, 0, 0]), req(), ctx())
    assert pick.reason == "cache_miss_least_loaded" and pick.worker in (ws[1], ws[2])


def test_sglang_picker_regimes() -> None:
    ws = workers(2)
    r = req(10 * 64, block=64)
    features = {"matched_blocks": [4.0, 0.0], "tree_blocks": [10.0, 3.0]}
    assert SGLangPicker().pick(Scored(ws, features=features), r, ctx()).reason == "prefix_match"  # 40% > 30%
    few = {"matched_blocks": [2.0, 0.0], "tree_blocks": [10.0, 3.0]}
    pick = SGLangPicker().pick(Scored(ws, features=few), r, ctx())
    assert (pick.worker, pick.reason) == (ws[1], "smallest_tree")
    ws[0].in_flight, ws[1].in_flight = 200, 100
    pick = SGLangPicker().pick(Scored(ws, features=features), r, ctx())
    assert (pick.worker, pick.reason) == (ws[1], "imbalanced_least_loaded")


# ---------------------------------------------------------------------------------------------- chains


def test_every_strategy_is_a_chain_of_the_standard_filters() -> None:
    for name in STRATEGIES:
        chain = make_strategy(name)
        assert isinstance(chain, Chain) and chain.filters == STANDARD_FILTERS
        assert make_strategy(name) is not chain  # fresh per router: scorers may keep records
    assert make_strategy("SGLANG_CACHE_AWARE").scorer is not make_strategy("SGLANG_CACHE_AWARE").scorer


def test_a_chain_tells_its_scorer_what_it_chose() -> None:
    ws = workers(3)
    seen = []

    class Spy(KvUsedScorer):
        def chosen(self, worker: WorkerState, req: RouteRequest, ctx: PickContext) -> None:
            seen.append(worker)

    chain = Chain("SPY", STANDARD_FILTERS, Spy(), MinCostPicker("spy"))
    ws[0].active_tokens, ws[1].active_tokens, ws[2].active_tokens = 5, 1, 3
    r = req(exclude=frozenset({ws[1].key}))
    pool = chain.candidates(ws, r, ctx())
    assert pool == [ws[0], ws[2]]
    assert chain.pick(pool, r, ctx()).worker is ws[2] and seen == [ws[2]]
    assert chain.candidates(ws, r, ctx(), extra=(GroupFilter(frozenset({"x"})),)) == []
