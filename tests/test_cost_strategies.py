"""Cost strategies and baselines through the Router: TTFT model, prefix index, feedback from leases."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from flexlb.balancer.factory import build_router
from flexlb.balancer.prefix_index import PrefixIndexConfig
from flexlb.balancer.request import Deploy, RouteRequest
from flexlb.balancer.strategies import make_strategy
from flexlb.balancer.ttft import TtftPriors
from flexlb.balancer.workers import Cluster, Lease, Role, WorkerAddr, WorkerState
from tests.balancer_support import FakeClock

B = 512  # block size in tokens
PRIORS = TtftPriors(base_ms=20.0, ms_per_uncached_token=0.1, ms_per_cached_token=0.0)
KEYS = tuple(range(1000, 1020))  # a 20-block prompt: miss 20 + 0.1 * 10240 = 1044 ms, full hit 20.1 ms
MISS_MS = 20.0 + 0.1 * len(KEYS) * B
HIT_MS = 20.0 + 0.1 * 1  # the last token is always computed


def addrs(n: int, role: Role = Role.PDFUSION, base: int = 9000, group: str = "") -> list[WorkerAddr]:
    return [WorkerAddr(f"10.0.{role.value}.{i + 1}", base + i, base + i - 1, role, group) for i in range(n)]


class Setup:
    def __init__(self, strategy: str, n: int = 4, priors: TtftPriors = PRIORS, seed: int = 1,
                 deploy: Deploy = Deploy.PD_FUSION, workers: list[WorkerAddr] | None = None,
                 decode_strategy: str = "WEIGHTED_CACHE") -> None:
        self.clock = FakeClock()
        self.cluster = Cluster(workers if workers is not None else addrs(n))
        self.router = build_router(self.cluster, deploy, strategy, decode_strategy, rng=random.Random(seed),
                                   clock=self.clock, ttft=priors,
                                   index=PrefixIndexConfig(capacity_blocks=100_000, ttl_s=600.0))
        self.ttft = self.router.ttft
        assert self.router.index is not None
        self.index = self.router.index
        self.ws = self.cluster.all()
        self._rid = 0

    def req(self, keys: tuple[int, ...] = KEYS, prompt: int | None = None,
            exclude: frozenset[str] = frozenset()) -> RouteRequest:
        self._rid += 1
        return RouteRequest(self._rid, len(keys) * B if prompt is None else prompt, 16, exclude=exclude,
                            block_keys=keys, block_size_tokens=B)

    def route(self, keys: tuple[int, ...] = KEYS, prompt: int | None = None,
              exclude: frozenset[str] = frozenset()) -> Lease:
        return self.router.route(self.req(keys, prompt, exclude))

    def end(self, lease: Lease) -> None:
        """The call ended."""
        self.router.release(lease)

    def backlog(self, w: WorkerState, *prefill_ms: float) -> None:
        """Requests dispatched to `w` right now that have not produced their first token."""
        for ms in prefill_ms:
            self._rid += 1
            self.ttft.dispatched(w.key, 1_000_000 + self._rid, ms, self.clock.now)

    def only(self, w: WorkerState) -> frozenset[str]:
        return frozenset(x.key for x in self.ws if x is not w)


# --- SHORTEST_TTFT -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backlog_ms", "stays"), [(0.0, True), (MISS_MS - HIT_MS - 20.0, True),
                                                   (MISS_MS - HIT_MS + 20.0, False), (5000.0, False)])
def test_shortest_ttft_prefers_the_holder_until_its_backlog_exceeds_the_saving(backlog_ms: float, stays: bool) -> None:
    s = Setup("SHORTEST_TTFT")
    a = s.ws[0]
    s.index.record(a.key, KEYS, s.clock.now)
    if backlog_ms:
        s.backlog(a, backlog_ms)
    d = s.route().decision
    if stays:
        assert d.target is a
        assert d.reason == "shortest_ttft"
        assert d.cached_tokens == len(KEYS) * B - 1
        assert d.estimate_ms == pytest.approx(backlog_ms + HIT_MS)
    else:
        assert d.target is not a
        assert d.cached_tokens == 0
        assert d.estimate_ms == pytest.approx(MISS_MS)


def test_shortest_ttft_prefers_longer_match_when_idle() -> None:
    s = Setup("SHORTEST_TTFT")
    s.index.record(s.ws[1].key, KEYS[:5], s.clock.now)
    s.index.record(s.ws[2].key, KEYS[:12], s.clock.now)
    d = s.route().decision
    assert d.target is s.ws[2]
    assert d.cached_tokens == 12 * B


# --- COST_BASED_PREFILL ---------------------------------------------------------------------------------------------


def test_cost_based_equals_shortest_ttft_on_an_idle_cluster() -> None:
    a, b = Setup("SHORTEST_TTFT"), Setup("COST_BASED_PREFILL")
    rng = random.Random(42)
    prefixes = [tuple(range(p * 100, p * 100 + 16)) for p in range(6)]
    targets = []
    for _ in range(60):
        # the same random cache holdings in both
        for _ in range(2):
            w, prefix, n = rng.randrange(4), rng.choice(prefixes), rng.randint(1, 16)
            for s in (a, b):
                s.index.record(s.ws[w].key, prefix[:n], s.clock.now)
        keys = rng.choice(prefixes)[: rng.randint(1, 16)]
        prompt = len(keys) * B + rng.randint(0, B - 1)
        la, lb = a.route(keys, prompt), b.route(keys, prompt)
        assert la.decision.target.key == lb.decision.target.key
        assert la.decision.estimate_ms == pytest.approx(lb.decision.estimate_ms)
        assert la.decision.reason.replace("shortest_ttft", "cost") == lb.decision.reason
        targets.append(la.decision.target.key)
        for s, lease in ((a, la), (b, lb)):  # first token: the cluster is idle again
            s.router.first_token(lease, lease.decision.estimate_ms or 0.0)
            s.end(lease)
        for s in (a, b):
            s.clock.now += 0.5
    assert len(set(targets)) > 1


def test_cost_based_keeps_affinity_under_load_where_shortest_ttft_leaves() -> None:
    picks = {}
    for name in ("SHORTEST_TTFT", "COST_BASED_PREFILL"):
        s = Setup(name, n=2)
        a, b = s.ws
        s.index.record(a.key, KEYS, s.clock.now)
        s.backlog(a, 500.0, 500.0, 500.0)  # 1500 ms queued on the holder, 3 calls waiting
        s.backlog(b, 5.0)  # the other worker is nearly idle (1 call)
        picks[name] = s.route().decision
    # TTFT alone: holder 1500 + 20 = 1520 ms vs 5 + 1044 = 1049 ms
    assert picks["SHORTEST_TTFT"].target.key.startswith("10.0.0.2")
    # load-weighted (k = 2): holder 1500 + 20 * 3 = 1560 vs 5 + 1044 * 3 = 3137
    assert picks["COST_BASED_PREFILL"].target.key.startswith("10.0.0.1")
    assert picks["COST_BASED_PREFILL"].reason == "cost"
    assert picks["COST_BASED_PREFILL"].cached_tokens == len(KEYS) * B - 1


def test_cost_based_still_leaves_a_hopelessly_overloaded_holder() -> None:
    s = Setup("COST_BASED_PREFILL", n=2)
    a, b = s.ws
    s.index.record(a.key, KEYS, s.clock.now)
    s.backlog(a, 30_000.0)
    assert s.route().decision.target is b


# --- CACHE_AWARE ---------------------------------------------------------------------------------------------------


def test_cache_aware_longest_match_within_guard() -> None:
    s = Setup("CACHE_AWARE")
    a, b, _, _ = s.ws
    s.index.record(a.key, KEYS, s.clock.now)
    s.index.record(b.key, KEYS[:10], s.clock.now)
    s.backlog(a, 1900.0)  # busy but within the 2000 ms guard
    d = s.route().decision
    assert d.target is a
    assert d.reason == "cache_hit"
    assert d.estimate_ms == pytest.approx(1900.0 + HIT_MS)


def test_cache_aware_overloaded_holder_falls_back_to_the_next_longest_match() -> None:
    s = Setup("CACHE_AWARE")
    a, b, _, _ = s.ws
    s.index.record(a.key, KEYS, s.clock.now)
    s.index.record(b.key, KEYS[:10], s.clock.now)
    s.backlog(a, 2100.0)
    d = s.route().decision
    assert d.target is b
    assert d.reason == "cache_hit_load_guarded"
    assert d.cached_tokens == 10 * B


def test_cache_aware_miss_goes_to_the_least_loaded_non_overloaded_worker() -> None:
    s = Setup("CACHE_AWARE")
    a, b, c, d_ = s.ws
    s.index.record(a.key, KEYS, s.clock.now)
    s.backlog(a, 2100.0)
    s.backlog(b, 50.0)
    s.backlog(c, 100.0)
    d = s.route().decision
    assert d.target is d_
    assert d.reason == "cache_miss_least_loaded"
    assert d.cached_tokens == 0


def test_cache_aware_equal_holders_least_backlog_wins() -> None:
    s = Setup("CACHE_AWARE")
    a, b, _, _ = s.ws
    for w in (a, b):
        s.index.record(w.key, KEYS, s.clock.now)
    s.backlog(a, 300.0)
    s.backlog(b, 100.0)
    assert s.route().decision.target is b


# --- near-ties ------------------------------------------------------------------------------------------------------

TINY = TtftPriors(base_ms=1.0, ms_per_uncached_token=0.0001, ms_per_cached_token=0.0)


@pytest.mark.parametrize("name", ["SHORTEST_TTFT", "COST_BASED_PREFILL"])
def test_burst_of_identical_cold_requests_spreads_over_all_workers(name: str) -> None:
    s = Setup(name, priors=TINY)
    leases = [s.route(KEYS[:4]) for _ in range(40)]  # same instant, nothing released
    targets = [lease.decision.target.key for lease in leases]
    assert len(set(targets[:4])) == 4
    assert Counter(targets) == {w.key: 10 for w in s.ws}
    assert all(lease.decision.reason.endswith("_tie") for lease in leases)


def test_cache_aware_cold_burst_spreads_too() -> None:
    s = Setup("CACHE_AWARE", priors=TINY)
    keysets = [tuple(range(i * 10, i * 10 + 4)) for i in range(8)]  # different cold prompts
    targets = [s.route(k).decision.target.key for k in keysets]
    assert Counter(targets) == {w.key: 2 for w in s.ws}


# --- decision fields, speculative insert ------------------------------------------------------------------------------


def test_decision_carries_estimate_and_cached_tokens() -> None:
    s = Setup("SHORTEST_TTFT", n=1)
    (w,) = s.ws
    s.index.record(w.key, KEYS[:3], s.clock.now)
    s.backlog(w, 50.0)
    s.clock.now += 0.02  # 20 ms of it done
    prompt = 5 * B - 100
    d = s.route(KEYS[:5], prompt).decision
    assert d.cached_tokens == 3 * B
    assert d.prefill_ms == pytest.approx(20.0 + 0.1 * (prompt - 3 * B))
    assert d.estimate_ms == pytest.approx(30.0 + d.prefill_ms)
    assert d.strategy == "SHORTEST_TTFT"
    assert d.decode is None


def test_full_match_still_computes_the_last_token() -> None:
    s = Setup("CACHE_AWARE", n=1)
    (w,) = s.ws
    s.index.record(w.key, KEYS[:4], s.clock.now)
    d = s.route(KEYS[:4], 4 * B).decision
    assert d.cached_tokens == 4 * B - 1


@pytest.mark.parametrize("name", ["SHORTEST_TTFT", "COST_BASED_PREFILL", "CACHE_AWARE"])
def test_speculative_insert_sends_an_identical_request_to_the_same_worker(name: str) -> None:
    s = Setup(name)
    first = s.route()
    t = first.decision.target
    assert s.index.match(KEYS) == {t.key: len(KEYS)}
    assert first.decision.cached_tokens == 0
    s.router.first_token(first, MISS_MS)  # the prefill is done; the worker is free again
    second = s.route().decision
    assert second.target is t
    assert second.cached_tokens == len(KEYS) * B - 1


def test_cache_aware_identical_request_follows_the_prefix_even_while_it_is_prefilling() -> None:
    s = Setup("CACHE_AWARE")
    t = s.route().decision.target
    d = s.route().decision  # the first is still in its 1044 ms prefill, within the guard
    assert d.target is t
    assert d.reason == "cache_hit"


# --- feedback ---------------------------------------------------------------------------------------------------------


def test_first_token_feeds_the_model_and_clears_the_backlog() -> None:
    s = Setup("SHORTEST_TTFT", n=1)
    (w,) = s.ws
    lease = s.route()
    other = s.route()
    m = s.ttft.worker(w.key)
    assert len(m.pending) == 2
    assert s.ttft.estimate_ms(w.key, 0, 0, s.clock.now)[1] > 0.0
    theta = list(m.theta)
    s.clock.now += 1.5
    s.router.first_token(lease, 1600.0, prefill_ms=1500.0, uncached_tokens=len(KEYS) * B, cached_tokens=0)
    assert list(m.pending) == [other.seq]
    assert m.busy_since_s == s.clock.now
    assert m.observations == 1
    assert m.theta != theta
    assert m.prefill_ms(len(KEYS) * B, 0) > MISS_MS  # learned it is slower than the prior said
    assert m.abs_error_ms == pytest.approx(abs(lease.decision.estimate_ms - 1600.0))
    s.router.first_token(lease, 1.0, prefill_ms=1.0, uncached_tokens=1, cached_tokens=0)  # once only
    assert m.observations == 1
    assert s.router.release(lease) == [] and lease.released
    assert s.router.release(lease) == []
    assert list(m.pending) == [other.seq]
    assert w.in_flight == 1


def test_first_token_without_engine_timing_updates_only_the_error() -> None:
    s = Setup("SHORTEST_TTFT", n=1)
    (w,) = s.ws
    lease = s.route()
    theta = list(s.ttft.worker(w.key).theta)
    s.router.first_token(lease, 2000.0)
    m = s.ttft.worker(w.key)
    assert m.theta == theta
    assert not m.pending
    assert m.abs_error_ms == pytest.approx(2000.0 - MISS_MS)


def test_release_without_first_token_removes_the_backlog() -> None:
    s = Setup("SHORTEST_TTFT", n=1)
    (w,) = s.ws
    lease = s.route()
    assert s.ttft.worker(w.key).pending
    assert w.in_flight == 1
    assert w.active_tokens == len(KEYS) * B
    s.end(lease)
    m = s.ttft.worker(w.key)
    assert not m.pending
    assert m.backlog_ms == 0.0
    assert m.observations == 0
    assert s.ttft.estimate_ms(w.key, 0, 0, s.clock.now)[1] == 0.0
    assert (w.in_flight, w.active_tokens) == (0, 0)
    assert s.router.first_token(lease, 10.0, 5.0, 1, 0) == []  # after release: ignored
    assert m.observations == 0


# --- SGLANG_CACHE_AWARE --------------------------------------------------------------------------------------------


def _sglang(in_flight: tuple[int, int, int]) -> tuple[Setup, list[WorkerState]]:
    s = Setup("SGLANG_CACHE_AWARE", n=3, priors=TINY)
    a, b, c = s.ws
    s.end(s.route(KEYS[:10], exclude=s.only(a)))  # a's tree: the 10-block prefix
    s.end(s.route(tuple(range(50, 55)), exclude=s.only(b)))  # b's tree: 5 unrelated blocks
    for w, n in zip(s.ws, in_flight, strict=True):
        w.in_flight = n
    return s, [a, b, c]


@pytest.mark.parametrize(
    ("loads", "expect", "reason"),
    [
        ((0, 0, 0), 0, "prefix_match"),
        ((200, 100, 136), 1, "imbalanced_least_loaded"),  # diff 100 > 64 and 200 > 150
        ((130, 66, 100), 0, "prefix_match"),  # diff 64: not > 64 (though 130 > 1.5 x 66)
        ((195, 130, 150), 0, "prefix_match"),  # diff 65 but 195 is not > 1.5 x 130
        ((196, 150, 130), 2, "imbalanced_least_loaded"),  # diff 66 and 196 > 195
    ],
)
def test_sglang_imbalance_rule(loads: tuple[int, int, int], expect: int, reason: str) -> None:
    s, ws = _sglang(loads)
    d = s.route(KEYS[:10]).decision
    assert d.reason == reason
    assert d.target is ws[expect]


@pytest.mark.parametrize(("shared", "expect_holder"), [(4, True), (3, False), (0, False)])
def test_sglang_match_ratio_threshold(shared: int, expect_holder: bool) -> None:
    s, (a, _, c) = _sglang((0, 0, 0))
    keys = KEYS[:shared] + tuple(range(7000, 7000 + 10 - shared))
    d = s.route(keys).decision  # ratio shared / 10
    if expect_holder:
        assert (d.target, d.reason) == (a, "prefix_match")
    else:
        assert (d.target, d.reason) == (c, "smallest_tree")  # c's tree is empty, b holds 5, a 10


def test_sglang_smallest_tree_then_records_the_choice() -> None:
    s, (_, b, c) = _sglang((0, 0, 0))
    s.end(s.route(tuple(range(60, 67)), exclude=s.only(c)))  # c: 7 blocks
    d = s.route(tuple(range(8000, 8010))).decision  # no match anywhere
    assert (d.target, d.reason) == (b, "smallest_tree")
    d2 = s.route(tuple(range(8000, 8010))).decision  # now b holds it
    assert (d2.target, d2.reason) == (b, "prefix_match")


# --- DYNAMO_KV ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("holder_active_blocks", "holder_wins"), [(8, False), (2, True), (0, True)])
def test_dynamo_kv_cost_is_uncached_blocks_plus_active_blocks(holder_active_blocks: int, holder_wins: bool) -> None:
    s = Setup("DYNAMO_KV", n=2, priors=TINY)
    a, b = s.ws
    s.end(s.route(KEYS[:4], exclude=s.only(a)))  # a holds 4 of the 10 blocks
    a.active_tokens = holder_active_blocks * B
    # a: (10 - 4) + active; b: 10 + 0
    d = s.route(KEYS[:10]).decision
    assert d.reason == "kv_cost"
    assert d.target is (a if holder_wins else b)


def test_dynamo_kv_active_tokens_count_in_fractional_blocks() -> None:
    s = Setup("DYNAMO_KV", n=2, priors=TINY)
    a, b = s.ws
    s.end(s.route(KEYS[:4], exclude=s.only(a)))
    # a: (10 - 4) + 6.25 = 12.25 blocks; b: 10 + 2 = 12 -> b
    a.active_tokens = 6 * B + B // 4
    b.active_tokens = 2 * B
    assert s.route(KEYS[:10]).decision.target is b
    # a: 6 + 5.75 = 11.75 < 12 -> a
    a.active_tokens = 5 * B + 3 * B // 4
    assert s.route(KEYS[:10]).decision.target is a


# --- WEIGHTED_CACHE -------------------------------------------------------------------------------------------------


def test_weighted_cache_decode_frequency_ratio_is_exp_minus_one() -> None:
    workers = addrs(1, Role.PREFILL, base=7000) + addrs(2, Role.DECODE, base=7100)
    s = Setup("ROUND_ROBIN", deploy=Deploy.DISAGGREGATED, workers=workers, seed=3)
    d0, d1 = s.cluster.of_role(Role.DECODE)
    d1.active_tokens = 1000
    counts: Counter[str] = Counter()
    for _ in range(2000):
        lease = s.route(KEYS[:1], prompt=1)
        assert lease.decision.decode is not None
        assert lease.decision.reason == "round_robin+kv_weighted"
        counts[lease.decision.decode.key] += 1
        s.end(lease)
    assert (d0.active_tokens, d1.active_tokens) == (0, 1000)
    ratio = counts[d1.key] / counts[d0.key]
    assert ratio == pytest.approx(math.exp(-1.0), rel=0.15)


def test_cost_decode_is_an_alias_of_weighted_cache() -> None:
    assert make_strategy("COST_BASED_DECODE").name == "WEIGHTED_CACHE"
    assert make_strategy("weighted_cache").name == "WEIGHTED_CACHE"
    with pytest.raises(KeyError, match=r"accepted: .*SHORTEST_TTFT"):
        make_strategy("FASTEST")


def test_a_fused_batching_worker_busy_decoding_costs_more_for_a_prefill() -> None:
    """Its running sequences wait out a prefill sent there in the same iterations; an idle twin is cheaper
    even when the busy one holds the prompt's prefix (the prefix saves less than the decodes it stalls)."""
    from flexlb.balancer.request import RouteRequest
    from flexlb.balancer.strategies import make_strategy
    from flexlb.balancer.strategies.base import PickContext
    from flexlb.balancer.strategies.cost import decoding_sequences
    from flexlb.balancer.ttft import TtftModel, TtftPriors
    from flexlb.balancer.workers import Cluster, Role, WorkerAddr

    cluster = Cluster([WorkerAddr("127.0.0.1", 9000 + i, 8999 + i, Role.PDFUSION) for i in range(2)])
    busy, idle = cluster.all()
    ctx = PickContext(rng=random.Random(1), now_s=100.0, ttft=TtftModel(TtftPriors()), matched_blocks={busy.key: 2})
    req = RouteRequest(1, 2000, 8, block_keys=(1, 2, 3, 4), block_size_tokens=500)
    chain = make_strategy("COST_BASED_PREFILL")
    busy.in_flight = 60  # 60 sequences past their first token, decoding
    assert chain.pick(chain.candidates(cluster.all(), req, ctx), req, ctx).worker is busy  # one-at-a-time engines
    busy.max_batch_tokens = idle.max_batch_tokens = 8192  # batching engines: the decodes share the iterations
    assert decoding_sequences(busy, ctx) == 60 and decoding_sequences(idle, ctx) == 0
    assert chain.pick(chain.candidates(cluster.all(), req, ctx), req, ctx).worker is idle


@pytest.mark.parametrize("name", ["COST_BASED_PREFILL", "SHORTEST_TTFT"])
def test_a_large_pool_shortlist_sees_other_senders_waiting_requests(name: str) -> None:
    # 40 idle workers (above the shortlist bound); all but the last report other senders' requests waiting
    s = Setup(name, n=40)
    for w in s.ws[:-1]:
        w.untracked_waiting = 5
    lease = s.route(keys=(), prompt=1024)
    assert lease.decision.target.key == s.ws[-1].key
