"""The continuous-batching engine model (flexlb/sim/batching.py): pure, on a clock the test drives."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from flexlb.sim.batching import (
    BatchingEngine,
    BatchingParams,
    Event,
    Finished,
    FirstToken,
    Iteration,
    Kind,
    Preempted,
    Sequence,
    Token,
)
from flexlb.sim.engine import EngineParams, PrefixCache
from flexlb.sim.simulator import TRACE_BLOCK_TOKENS, SimConfig, TokenSource, TraceRequest, simulate

# round figures so durations are easy to check: 1 ms a step, 0.01 ms a prompt token, 0.1 ms a decode row
P = BatchingParams(base_ms=1.0, ms_per_prefill_token=0.01, ms_per_cached_token=0.001, ms_per_decode_sequence=0.1,
                   max_batch_tokens=1000, max_batch_size=8, block_size_tokens=16, kv_blocks=1000, kv_watermark=0.0)


def engine(params: BatchingParams = P, cache_blocks: int = 100) -> BatchingEngine:
    return BatchingEngine(params, PrefixCache(cache_blocks))


def seq(sid: int, tokens: int, new: int = 1, kind: Kind = Kind.FUSED, arrival: float = 0.0,
        keys: tuple[int, ...] | None = None, rows: int = 1) -> Sequence:
    """A sequence whose block keys are unique to it unless given."""
    if keys is None:
        keys = tuple(sid * 1000 + i for i in range(tokens // 16))
    return Sequence(sid, tokens, keys, new, kind, arrival, rows)


def step(e: BatchingEngine, now: float) -> tuple[Iteration, list[Event], float]:
    """Plan and complete one iteration starting at `now`; (iteration, events, end time)."""
    it = e.plan(now)
    assert it is not None
    end = now + it.duration_ms
    return it, e.complete(it, end), end


def drain(e: BatchingEngine, now: float = 0.0, limit: int = 10_000) -> tuple[list[Iteration], list[Event], float]:
    """Run iterations until the engine is idle."""
    its: list[Iteration] = []
    events: list[Event] = []
    for _ in range(limit):
        it = e.plan(now)
        if it is None:
            return its, events, now
        now += it.duration_ms
        its.append(it)
        events += e.complete(it, now)
    raise AssertionError("the engine never went idle")


def tokens_of(events: list[Event], sid: int) -> list[int]:
    return [ev.index for ev in events if isinstance(ev, Token) and ev.seq_id == sid]


# --- admission -------------------------------------------------------------------------------------------------------


def test_admits_prefills_in_order_up_to_the_token_budget() -> None:
    e = engine()
    for i in range(1, 5):
        e.add(seq(i, 300, arrival=float(i)))
    it = e.plan(0.0)
    assert it is not None
    assert it.admitted == (1, 2, 3) and it.prefill_tokens == 900  # the 4th would pass 1000
    assert it.duration_ms == pytest.approx(1.0 + 0.01 * 900)
    assert e.waiting_count == 1 and e.running_count == 3


def test_admits_up_to_the_batch_size_in_rows() -> None:
    e = engine(replace(P, max_batch_size=3))
    e.add(seq(1, 10, new=5))
    e.add(seq(2, 10, new=5, rows=2))  # two return sequences: two rows
    e.add(seq(3, 10, new=5))
    it = e.plan(0.0)
    assert it is not None and it.admitted == (1, 2)
    assert e.waiting_count == 1


def test_without_chunking_a_prompt_over_the_budget_goes_alone() -> None:
    e = engine()
    e.add(seq(1, 100, arrival=1.0))
    e.add(seq(2, 2500, arrival=2.0))
    e.add(seq(3, 100, arrival=3.0))
    first = e.plan(0.0)
    assert first is not None and first.admitted == (1,)  # 2 waits to be the only prefill; 3 waits behind it
    e.complete(first, first.duration_ms)
    second = e.plan(10.0)
    assert second is not None and second.admitted == (2,) and second.prefill_tokens == 2500
    assert e.waiting_ids() == [3]  # head-of-line: nothing passes a prompt that is being computed


def test_chunked_prefill_splits_a_long_prompt_and_decodes_alongside() -> None:
    e = engine(replace(P, chunked_prefill=True))
    e.add(seq(1, 10, new=4, arrival=0.0))
    e.add(seq(2, 2500, new=2, arrival=1.0))
    its, events, _ = drain(e)
    chunks = [dict(it.chunks).get(2, 0) for it in its]
    assert chunks[:3] == [990, 999, 511]  # the budget less seq 1's prompt, then less its decode row
    first = next(ev for ev in events if isinstance(ev, FirstToken) and ev.seq_id == 2)
    assert first.prefill_ms == pytest.approx(sum(it.duration_ms for it in its[:3])) and first.iterations == 3
    assert tokens_of(events, 1) == [1, 2, 3] and tokens_of(events, 2) == [1]
    assert its[1].decode_rows == 1  # seq 1 decodes while seq 2's prompt is still being computed


# --- iteration time and decode -------------------------------------------------------------------------------------


def test_decodes_share_the_prefill_iterations() -> None:
    e = engine()
    e.add(seq(1, 100, new=3))
    _, ev1, now = step(e, 0.0)
    assert [type(x) for x in ev1] == [FirstToken]
    e.add(seq(2, 200, new=2, arrival=now))
    it, ev2, now = step(e, now)
    assert it.decode_rows == 1 and it.prefill_tokens == 200
    assert it.duration_ms == pytest.approx(1.0 + 0.01 * 200 + 0.1 * 1)
    assert ev2 == [Token(1, 1), FirstToken(2, 0, 200, 0.0, pytest.approx(it.duration_ms))]
    it, ev3, _ = step(e, now)
    assert it.decode_rows == 2 and it.prefill_tokens == 0
    assert ev3 == [Token(1, 2), Token(2, 1), Finished(1), Finished(2)]
    assert e.idle and e.plan(100.0) is None


def test_first_token_reports_wait_and_prefill() -> None:
    e = engine(replace(P, max_batch_tokens=100))
    e.add(seq(1, 100, arrival=0.0))
    e.add(seq(2, 100, arrival=0.0))
    _, events, _ = drain(e)
    firsts = {ev.seq_id: ev for ev in events if isinstance(ev, FirstToken)}
    assert firsts[1].waited_ms == 0.0 and firsts[1].prefill_ms == pytest.approx(2.0)
    assert firsts[2].waited_ms == pytest.approx(2.0)  # admitted when 1's iteration ended


def test_from_engine_prices_a_lone_prompt_and_a_decode_step_like_fifo() -> None:
    fifo = EngineParams(prefill_base_ms=20.0, prefill_ms_per_uncached_token=0.1, decode_step_base_ms=10.0,
                        decode_step_ms_per_running=0.2, block_size_tokens=64)
    bp = BatchingParams.from_engine(fifo)
    assert bp.iteration_ms(900, 0, 0) == pytest.approx(fifo.prefill_ms(900, 0))
    assert bp.iteration_ms(0, 0, 1) == pytest.approx(fifo.decode_step_ms(1))
    assert bp.iteration_ms(0, 0, 5) == pytest.approx(fifo.decode_step_ms(5))
    assert bp.kv_blocks * bp.block_size_tokens == BatchingParams().kv_blocks * BatchingParams().block_size_tokens


# --- prefix cache --------------------------------------------------------------------------------------------------


def test_prefix_hits_are_matched_at_admission_and_inserted_when_the_prefill_completes() -> None:
    e = engine()
    keys = tuple(range(10))  # 160 tokens in 10 blocks
    e.add(seq(1, 160, keys=keys))
    e.add(seq(2, 160, keys=keys))  # admitted with 1: the blocks are not cached yet
    _, events, now = step(e, 0.0)
    assert [ev.cached_tokens for ev in events if isinstance(ev, FirstToken)] == [0, 0]
    e.add(seq(3, 200, keys=(*keys, 99), arrival=now))
    it, events, _ = step(e, now)
    first = next(ev for ev in events if isinstance(ev, FirstToken))
    assert (first.cached_tokens, first.uncached_tokens) == (160, 40)
    assert it.cached_tokens == 160 and it.prefill_tokens == 40
    assert it.duration_ms == pytest.approx(1.0 + 0.01 * 40 + 0.001 * 160)
    e.add(seq(4, 160, keys=keys, arrival=100.0))
    _, events, _ = step(e, 100.0)
    assert next(ev for ev in events if isinstance(ev, FirstToken)).uncached_tokens == 1  # the last token is computed


# --- KV ------------------------------------------------------------------------------------------------------------


def test_head_of_line_waits_for_kv() -> None:
    e = engine(replace(P, kv_blocks=10))  # 160 tokens
    e.add(seq(1, 100, new=3, arrival=0.0))  # 7 blocks
    e.add(seq(2, 100, new=3, arrival=1.0))  # 7 more do not fit
    e.add(seq(3, 10, new=3, arrival=2.0))  # would fit, but waits behind 2
    it = e.plan(0.0)
    assert it is not None and it.admitted == (1,)
    assert e.kv_available_tokens == 3 * 16 and e.kv_total_tokens == 160
    its, events, _ = drain_after(e, it)
    admitted = [a for i in its for a in i.admitted]
    assert admitted == [2, 3]
    assert [ev.seq_id for ev in events if isinstance(ev, Finished)] == [1, 2, 3]
    assert not any(isinstance(ev, Preempted) for ev in events)


def drain_after(e: BatchingEngine, it: Iteration) -> tuple[list[Iteration], list[Event], float]:
    """Complete `it`, then drain."""
    now = it.start_ms + it.duration_ms
    first = e.complete(it, now)
    its, events, end = drain(e, now)
    return its, first + events, end


def test_a_decode_that_finds_no_free_block_preempts_the_newest_which_recomputes() -> None:
    e = engine(replace(P, kv_blocks=10))
    e.add(seq(1, 64, new=20, arrival=0.0))  # 4 blocks; its 1st decode step needs a 5th
    e.add(seq(2, 80, new=20, arrival=1.0))  # 5 blocks; its 1st decode step needs a 6th: none left
    its, events, _ = drain(e)
    assert Preempted(2) in events
    assert tokens_of(events, 1) == list(range(1, 20))
    assert tokens_of(events, 2) == list(range(1, 20))  # no token lost or repeated across the recompute
    assert sum(isinstance(ev, FirstToken) and ev.seq_id == 2 for ev in events) == 1
    recompute = next(it for it in its if 2 in it.admitted and it is not its[0])
    assert recompute.prefill_tokens + recompute.cached_tokens > 80  # prompt and the generated token again
    assert e.kv_available_tokens == 160


def test_preempt_option_makes_room_for_an_earlier_arrival() -> None:
    for preempt in (False, True):
        e = engine(replace(P, kv_blocks=10, preempt=preempt))
        e.add(seq(1, 120, new=50, arrival=5.0))
        _, _, now = step(e, 0.0)
        e.add(seq(2, 120, new=2, arrival=1.0))  # arrived before 1 (e.g. held by a fault delay)
        it = e.plan(now)
        assert it is not None
        if preempt:
            assert it.preempted == (1,) and it.admitted == (2,)
        else:
            assert it.preempted == () and it.admitted == () and e.waiting_ids() == [2]


def test_a_prompt_larger_than_the_kv_runs_alone_rather_than_never() -> None:
    e = engine(replace(P, kv_blocks=4, max_batch_tokens=10_000))
    e.add(seq(1, 500, new=3))
    _, events, _ = drain(e)
    assert Finished(1) in events


# --- PD kinds ------------------------------------------------------------------------------------------------------


def test_prefill_only_leaves_after_its_first_token() -> None:
    e = engine()
    e.add(seq(1, 100, new=50, kind=Kind.PREFILL_ONLY))
    _, events, _ = step(e, 0.0)
    assert [type(ev) for ev in events] == [FirstToken, Finished]
    assert e.idle and e.kv_available_tokens == e.kv_total_tokens
    assert e.finished_ids() == [1]


def test_decode_only_arrives_prefilled_with_kv_reserved_for_its_output() -> None:
    e = engine()
    e.add(seq(1, 100, new=5, kind=Kind.DECODE_ONLY))
    it = e.plan(0.0)
    assert it is not None and it.prefill_tokens == 0 and it.decode_rows == 1
    assert e.kv_total_tokens - e.kv_available_tokens == 7 * 16  # blocks for 100 + 5 tokens
    events = e.complete(it, it.duration_ms)
    _, more, _ = drain(e, it.duration_ms)
    events += more
    assert not any(isinstance(ev, FirstToken) for ev in events)
    assert tokens_of(events, 1) == [1, 2, 3, 4] and events[-1] == Finished(1)


# --- cancel, rows, events, status ----------------------------------------------------------------------------------


def test_cancel_waiting_and_running_frees_kv_and_skips_events() -> None:
    e = engine(replace(P, max_batch_tokens=100))
    e.add(seq(1, 100, new=5))
    e.add(seq(2, 100, new=5))
    it = e.plan(0.0)
    assert it is not None and it.admitted == (1,)
    assert e.cancel(2) and e.waiting_count == 0
    assert e.cancel(1)  # while its iteration runs
    assert e.complete(it, it.duration_ms) == []
    assert e.idle and e.kv_available_tokens == e.kv_total_tokens
    assert not e.cancel(1) and e.plan(10.0) is None


def test_return_sequences_decode_as_rows() -> None:
    e = engine()
    e.add(seq(1, 100, new=3, rows=4))
    step(e, 0.0)
    it = e.plan(10.0)
    assert it is not None and it.decode_rows == 4
    assert it.duration_ms == pytest.approx(1.0 + 0.1 * 4)


def test_without_token_events_only_first_tokens_and_ends() -> None:
    e = BatchingEngine(P, PrefixCache(10), token_events=False)
    e.add(seq(1, 100, new=6))
    its, events, _ = drain(e)
    assert [type(ev) for ev in events] == [FirstToken, Finished] and len(its) == 6


def test_status_figures() -> None:
    e = engine(replace(P, max_batch_tokens=100, max_seq_len=4096))
    e.add(seq(1, 100, new=3))
    e.add(seq(2, 100, new=3))
    assert (e.waiting_count, e.running_count) == (2, 0)
    it, _, now = step(e, 0.0)
    assert (e.waiting_count, e.running_count) == (1, 1)
    assert e.is_waiting(2) and not e.is_waiting(1)
    assert e.running_ids() == [1] and e.waiting_ids() == [2]
    assert e.iterations == 1 and e.last_step_ms == it.duration_ms and e.iterations_of(1) == 1
    assert e.max_batch_tokens == 100 and e.max_seq_len == 4096
    assert e.kv_available_tokens == (1000 - 7) * 16
    drain(e, now)
    assert e.finished_ids() == [1, 2] and e.iterations_of(1) == 0


def test_one_iteration_at_a_time() -> None:
    e = engine()
    e.add(seq(1, 10))
    it = e.plan(0.0)
    assert it is not None
    with pytest.raises(RuntimeError):
        e.plan(0.0)
    e.complete(it, 1.0)
    with pytest.raises(RuntimeError):
        e.complete(it, 2.0)
    with pytest.raises(ValueError):
        e.add(seq(2, 0))


# --- the simulator on the batching engine ----------------------------------------------------------------------------


def _trace(n: int = 200) -> list[TraceRequest]:
    """Groups sharing 3 leading hash ids, each request with one block of its own; ~20 requests/s."""
    rng = random.Random(3)
    rows = []
    for i in range(n):
        group = rng.randrange(6)
        ids = (*(group * 100 + j for j in range(3)), 10_000 + i)
        rows.append(TraceRequest(50.0 * i, len(ids) * TRACE_BLOCK_TOKENS - rng.randint(1, 300), rng.randint(2, 30),
                                 ids))
    return rows


@pytest.mark.parametrize("pd", [False, True])
def test_simulator_runs_on_the_batching_engine(pd: bool) -> None:
    trace = _trace()
    cfg = SimConfig(strategy="COST_BASED_PREFILL", workers=4, seed=1, engine_model="batching",
                    prefill=2 if pd else 0, decode=2 if pd else 0)
    r = simulate(trace, cfg, TokenSource(1))
    assert r["engine"] == "batching" and r["requests"] == len(trace)
    assert 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"] and r["e2e_mean_ms"] > r["ttft_mean_ms"]
    assert 0 < r["cache_hit_ratio"] < 1 and 0 < r["utilization"] < 1
    again = simulate(trace, cfg, TokenSource(1))
    assert again["ttft_ms"] == r["ttft_ms"] and again["per_request"] == r["per_request"]


def test_simulator_engines_differ_only_when_asked() -> None:
    trace = _trace()
    fifo = simulate(trace, SimConfig(strategy="ROUND_ROBIN", workers=2, seed=1), TokenSource(1))
    assert fifo["engine"] == "fifo"  # SimConfig's default is the FIFO engine (`flexlb sim` defaults to batching)
    batching = simulate(trace, SimConfig(strategy="ROUND_ROBIN", workers=2, seed=1, engine_model="batching"),
                        TokenSource(1))
    # round-robin places every request on the same worker either way; the prefix cache hits the same prompts
    assert batching["worker_share"] == fifo["worker_share"]
    assert batching["cache_hit_ratio"] == pytest.approx(fifo["cache_hit_ratio"], abs=0.05)
    # decode steps stretched by the prefills of the same iterations: longer calls end to end
    assert batching["e2e_mean_ms"] > fifo["e2e_mean_ms"]
    with pytest.raises(ValueError):
        simulate(trace, SimConfig(engine_model="vllm"))
