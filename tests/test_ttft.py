"""TtftModel: prefill estimate from priors, queue wait from the backlog, online learning, error tracking."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexlb.balancer.ttft import TtftModel, TtftPriors

PRIORS = TtftPriors(base_ms=20.0, ms_per_uncached_token=0.1, ms_per_cached_token=0.002)


# --- estimate without backlog ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("uncached", "cached"), [(0, 0), (1000, 0), (1000, 5000), (40_000, 20_000)])
def test_estimate_without_backlog_is_the_linear_prefill(uncached: int, cached: int) -> None:
    m = TtftModel(PRIORS)
    ttft, wait, prefill = m.estimate_ms("w", uncached, cached, now_s=100.0)
    expected = 20.0 + 0.1 * uncached + 0.002 * cached
    assert wait == 0.0
    assert prefill == pytest.approx(expected)
    assert ttft == pytest.approx(expected)


def test_estimate_adds_kv_transfer_per_prompt_token() -> None:
    m = TtftModel(TtftPriors(base_ms=20.0, ms_per_uncached_token=0.1, ms_per_cached_token=0.0,
                             kv_transfer_ms_per_token=0.005))
    ttft, wait, prefill = m.estimate_ms("w", 1000, 3000, now_s=0.0, prompt_tokens=4000)
    assert wait == 0.0
    assert prefill == pytest.approx(20.0 + 100.0 + 0.005 * 4000)
    assert ttft == pytest.approx(prefill)
    # no prompt_tokens: no transfer
    assert m.estimate_ms("w", 1000, 3000, now_s=0.0)[2] == pytest.approx(120.0)


def test_workers_are_independent_and_created_from_priors() -> None:
    m = TtftModel(PRIORS)
    m.dispatched("a", 1, 500.0, now_s=0.0)
    assert m.estimate_ms("b", 100, 0, now_s=0.0)[1] == 0.0
    assert m.worker("b").theta == [20.0, 0.1, 0.002]
    assert set(m.workers()) == {"a", "b"}


# --- backlog ------------------------------------------------------------------------------------------------------


def test_two_dispatched_requests_make_the_next_wait() -> None:
    m = TtftModel(PRIORS)
    m.dispatched("w", 1, 300.0, now_s=10.0)  # worker becomes busy at t=10
    m.dispatched("w", 2, 200.0, now_s=10.1)
    assert len(m.worker("w").pending) == 2
    _, wait, prefill = m.estimate_ms("w", 1000, 0, now_s=10.0)
    assert wait == pytest.approx(500.0)
    ttft, wait, prefill = m.estimate_ms("w", 1000, 0, now_s=10.15)
    assert wait == pytest.approx(500.0 - 150.0)
    assert ttft == pytest.approx(wait + prefill)
    assert prefill == pytest.approx(120.0)
    # past the whole backlog: never negative
    assert m.estimate_ms("w", 1000, 0, now_s=11.0)[1] == 0.0
    assert m.estimate_ms("w", 1000, 0, now_s=1000.0)[1] == 0.0


def test_started_or_gone_removes_one_and_restarts_the_busy_clock() -> None:
    m = TtftModel(PRIORS)
    m.dispatched("w", 1, 300.0, now_s=10.0)
    m.dispatched("w", 2, 200.0, now_s=10.1)
    m.started_or_gone("w", 1, now_s=10.4)  # first token of request 1 at t=10.4
    w = m.worker("w")
    assert list(w.pending) == [2]
    assert w.backlog_ms == pytest.approx(200.0)
    assert w.busy_since_s == pytest.approx(10.4)
    assert m.estimate_ms("w", 0, 0, now_s=10.4)[1] == pytest.approx(200.0)
    assert m.estimate_ms("w", 0, 0, now_s=10.45)[1] == pytest.approx(150.0)
    # unknown / repeated ids are ignored
    m.started_or_gone("w", 1, now_s=10.45)
    m.started_or_gone("w", 99, now_s=10.45)
    assert w.backlog_ms == pytest.approx(200.0)
    m.started_or_gone("w", 2, now_s=10.5)
    assert not w.pending
    assert w.backlog_ms == 0.0
    assert m.estimate_ms("w", 0, 0, now_s=10.5)[1] == 0.0


def test_a_later_request_leaving_first_removes_its_own_prefill() -> None:
    m = TtftModel(PRIORS)
    m.dispatched("w", 1, 100.0, now_s=0.0)
    m.dispatched("w", 2, 400.0, now_s=0.01)
    m.started_or_gone("w", 2, now_s=0.05)  # request 2 is cancelled before request 1 started
    w = m.worker("w")
    assert list(w.pending) == [1]
    assert w.backlog_ms == pytest.approx(100.0)
    assert w.busy_since_s == pytest.approx(0.05)
    assert m.estimate_ms("w", 0, 0, now_s=0.08)[1] == pytest.approx(70.0)


def test_dispatch_on_an_idle_worker_resets_the_busy_clock() -> None:
    m = TtftModel(PRIORS)
    m.dispatched("w", 1, 100.0, now_s=0.0)
    m.started_or_gone("w", 1, now_s=0.1)
    m.dispatched("w", 2, 100.0, now_s=50.0)  # idle for a long time: the old elapsed time must not count
    assert m.estimate_ms("w", 0, 0, now_s=50.0)[1] == pytest.approx(100.0)
    assert m.estimate_ms("w", 0, 0, now_s=50.06)[1] == pytest.approx(40.0)


# --- learning ----------------------------------------------------------------------------------------------------

WRONG = TtftPriors(base_ms=5.0, ms_per_uncached_token=0.3, ms_per_cached_token=0.01)


def _feed(m: TtftModel, seed: int, n: int = 400, outlier_every: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(n):
        u = rng.randint(100, 40_000)
        x = rng.randint(0, 20_000)
        prefill = (20.0 + 0.1 * u + 0.002 * x) * (1.0 + rng.gauss(0.0, 0.05))
        if outlier_every and i % outlier_every == outlier_every // 2:
            prefill *= 10.0
        m.observe("w", u, x, prefill, None, prefill)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learns_the_per_token_cost_from_wrong_priors(seed: int) -> None:
    m = TtftModel(WRONG)
    _feed(m, seed)
    w = m.worker("w")
    assert w.observations == 400
    assert w.theta[1] == pytest.approx(0.1, rel=0.10)
    # the fitted model predicts a typical request well (prediction, not just one coefficient)
    assert w.prefill_ms(20_000, 10_000) == pytest.approx(20.0 + 2000.0 + 20.0, rel=0.05)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outliers_do_not_wreck_the_fit(seed: int) -> None:
    m = TtftModel(WRONG)
    _feed(m, seed, outlier_every=50)  # 8 observations out of 400 are 10x
    assert m.worker("w").theta[1] == pytest.approx(0.1, rel=0.15)


def test_single_huge_outlier_after_convergence_moves_b_little() -> None:
    m = TtftModel(WRONG)
    _feed(m, 3)
    b_before = m.worker("w").theta[1]
    m.observe("w", 20_000, 0, 100 * (20.0 + 0.1 * 20_000), None, 0.0)  # a stalled request, 100x
    assert m.worker("w").theta[1] == pytest.approx(b_before, rel=0.05)


def test_abs_error_tracks_estimate_vs_observed() -> None:
    m = TtftModel(PRIORS)
    m.observe("w", 1000, 0, 120.0, estimated_ttft_ms=100.0, observed_ttft_ms=130.0)
    w = m.worker("w")
    assert w.abs_error_ms == pytest.approx(30.0)
    assert w.observed_ttft_ms == pytest.approx(130.0)
    m.observe("w", 1000, 0, 120.0, estimated_ttft_ms=100.0, observed_ttft_ms=90.0)  # |err| 10, running mean
    assert w.abs_error_ms == pytest.approx(20.0)
    assert w.observed_ttft_ms == pytest.approx(110.0)
    for _ in range(200):
        m.observe("w", 1000, 0, 120.0, estimated_ttft_ms=200.0, observed_ttft_ms=150.0)
    assert w.abs_error_ms == pytest.approx(50.0, abs=0.01)
    assert w.observed_ttft_ms == pytest.approx(150.0, abs=0.01)
    # without an estimate the error is untouched
    m.observe("w", 1000, 0, 120.0, estimated_ttft_ms=None, observed_ttft_ms=10_000.0)
    assert w.abs_error_ms == pytest.approx(50.0, abs=0.01)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_observe_without_a_usable_prefill_only_updates_the_error(bad: float) -> None:
    m = TtftModel(PRIORS)
    w = m.worker("w")
    theta = list(w.theta)
    sxx, sxy = [row[:] for row in w.sxx], list(w.sxy)
    m.observe("w", 5000, 100, bad, estimated_ttft_ms=500.0, observed_ttft_ms=800.0)
    assert w.theta == theta
    assert (w.sxx, w.sxy) == (sxx, sxy)
    assert w.abs_error_ms == pytest.approx(300.0)
    assert w.observations == 1


def test_observation_moves_theta_toward_the_data() -> None:
    m = TtftModel(PRIORS)
    before = m.worker("w").prefill_ms(10_000, 0)  # 1020
    m.observe("w", 10_000, 0, 2000.0, None, 2000.0)
    after = m.worker("w").prefill_ms(10_000, 0)
    assert before < after <= 2000.0


def test_coefficients_stay_non_negative_when_data_pulls_them_below_zero() -> None:
    m = TtftModel(PRIORS)
    rng = random.Random(5)
    for _ in range(300):
        u = rng.randint(0, 10_000)
        x = rng.randint(0, 20_000)
        # cached tokens "speed up" the prefill: an unconstrained fit would make c negative
        prefill = max(0.0, 500.0 + 0.05 * u - 0.02 * x)
        m.observe("w", u, x, prefill, None, prefill)
        assert all(v >= 0.0 for v in m.worker("w").theta)
    assert m.worker("w").theta[2] == 0.0


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 50_000), st.integers(0, 50_000),
                          st.floats(min_value=0.0, max_value=1e6, allow_nan=False)), min_size=1, max_size=40))
def test_coefficients_never_negative_and_finite(obs: list[tuple[int, int, float]]) -> None:
    m = TtftModel(PRIORS)
    for u, x, prefill in obs:
        m.observe("w", u, x, prefill, 10.0, prefill)
        theta = m.worker("w").theta
        assert all(v >= 0.0 and math.isfinite(v) for v in theta)
        assert m.worker("w").prefill_ms(u, x) >= 0.0


def test_learns_a_much_faster_worker_after_only_tiny_prompts_first() -> None:
    # priors 10x too slow (a worker 10x faster than assumed); the first calls carry tiny prompts
    model = TtftModel(TtftPriors(base_ms=20.0, ms_per_uncached_token=0.1))
    truth = (2.0, 0.01)
    for u in (5, 8, 3, 10, 6):
        model.observe("w", u, 0, truth[0] + truth[1] * u, None, 0.0)
    rng = random.Random(9)
    for _ in range(60):
        u = rng.randint(2_000, 40_000)
        model.observe("w", u, 0, truth[0] + truth[1] * u, None, 0.0)
    b = model.worker("w").theta[1]
    assert b == pytest.approx(truth[1], rel=0.2), b


def test_the_fit_stays_bounded_on_inputs_that_hardly_vary() -> None:
    """Regression: mostly full cache hits (1 uncached token) of a few prompt sizes, with jitter and
    rare stalls, once drove the plain RLS covariance indefinite and the coefficients to 1e20."""
    import random

    model = TtftModel(TtftPriors())
    rng = random.Random(1)
    sizes = [rng.choice((200, 800, 2000)) for _ in range(20)]
    seen: set[int] = set()
    for _ in range(20_000):
        j = rng.randrange(20)
        if j in seen and rng.random() < 0.97:
            uncached, cached = 1, sizes[j] - 1
        else:
            uncached, cached = sizes[j], 0
            seen.add(j)
        true_ms = (20 + 0.1 * uncached) * 0.5
        seen_ms = true_ms + abs(rng.gauss(0, 2)) + (rng.random() < 0.01) * rng.uniform(0, 200)
        model.observe("w", uncached, cached, seen_ms, None, seen_ms)
        w = model.worker("w")
        assert all(0.0 <= v < 1e3 for v in w.theta), w.theta
    # and it still predicts: a cold 2,000-token prompt within 25% of its true 110 ms
    assert abs(model.worker("w").prefill_ms(2000, 0) - 110.0) < 27.5


def test_clean_small_prompt_observations_fit_the_truth() -> None:
    """Regression: PD traffic of a demo (prefills of 4-20 ms: 4 ms + 0.02 ms per uncached token, cached
    prefixes free) drove the old RLS fit to 0.31 ms per uncached and 0.20 ms per cached token in 60
    observations, so that worker looked ten times slower than its twin and drew no traffic."""
    model = TtftModel(TtftPriors())
    rng = random.Random(4)
    for _ in range(60):
        cached = rng.choice((0, 256, 512, 1024))
        uncached = rng.randrange(16, 256) + (0 if cached else rng.choice((256, 512, 1024)))
        model.observe("w", uncached, cached, (4.0 + 0.02 * uncached) * rng.uniform(0.9, 1.2), None, 0.0)
    a, b, c = model.worker("w").theta
    assert b == pytest.approx(0.02, rel=0.3) and c <= 0.005 and a == pytest.approx(4.0, rel=0.5)


def test_a_cached_token_never_costs_more_than_an_uncached_one() -> None:
    model = TtftModel(TtftPriors())
    rng = random.Random(2)
    for _ in range(200):
        u, x = rng.randint(0, 2000), rng.randint(0, 8000)
        model.observe("w", u, x, 10.0 + 0.001 * u + 0.05 * x, None, 0.0)  # data that says otherwise
        _, b, c = model.worker("w").theta
        assert c <= b


def test_calls_one_batching_iteration_takes_together_share_its_base_cost() -> None:
    m = TtftModel(TtftPriors(base_ms=20.0, ms_per_uncached_token=0.1))
    for rid in (1, 2, 3):
        m.dispatched("w", rid, 20.0 + 0.1 * 500, now_s=0.0, tokens=500)  # 70 ms each, served one by one
    assert m.worker("w").queue_wait_ms(0.0) == pytest.approx(210.0)
    m.worker("w").batch_tokens = 1000  # a batching engine: two iterations of up to 1,000 tokens
    assert m.worker("w").queue_wait_ms(0.0) == pytest.approx(210.0 - 20.0)  # two bases, not three
