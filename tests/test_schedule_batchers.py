"""The BATCH mode batchers, the priority/SLO rules, the lifecycle records and the inflight tracker: pure, on a
fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.schedule_modes import BatchAlgorithm, BatchSettings, PrioritySettings
from flexlb.scheduler import states as st
from flexlb.scheduler.batchers import BatchItem, Capacity, Dispatch, Reject, Wait, WorkerBatcher
from flexlb.scheduler.inflight import Ended, Expired, InflightTracker, Placed, Started
from flexlb.scheduler.priority import header_priority, request_slo_ms, resolve_priority, slo_multiplier
from flexlb.scheduler.replies import reject_reason
from tests.balancer_support import FakeClock

CAP = Capacity(compute_tokens=8192)


def cost(items: Sequence[BatchItem]) -> float:
    """10 ms per iteration plus each request's own 1 ms per 100 tokens."""
    return 10.0 + sum(i.seq_len / 100.0 for i in items)


def item(rid: int, clock: FakeClock, seq_len: int = 100, **kw: object) -> BatchItem:
    return BatchItem(rid, seq_len, clock.now * 1000.0, prefill_ms=10.0 + seq_len / 100.0, **kw)  # type: ignore[arg-type]


def ms(clock: FakeClock) -> float:
    return clock.now * 1000.0


# ------------------------------------------------------------------ fixed_window


def test_fixed_window_waits_for_the_window_then_sends_what_came() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=8, fixed_wait_ms=300))
    assert b.offer(item(1, clock), ms(clock))
    clock.now += 0.1
    assert b.offer(item(2, clock), ms(clock))
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx((clock.now - 0.1) * 1000 + 300)
    clock.now += 0.2  # the head has waited 300 ms
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and step.reason == "fixed_window_timeout"
    assert [i.request_id for i in step.items] == [1, 2] and len(b) == 0
    assert b.poll(ms(clock), CAP, cost) == Wait(None)


def test_fixed_window_closes_early_by_the_dispatch_lead_so_the_window_bounds_the_wait() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=8, fixed_wait_ms=10))
    b.offer(item(1, clock), ms(clock))
    start = ms(clock)
    led = Capacity(8192, lead_ms=1.5)  # delivering a batch takes 1.5 ms: it leaves 1.5 ms before the window ends
    step = b.poll(ms(clock), led, cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(start + 8.5)
    clock.now += 0.0085
    step = b.poll(ms(clock), led, cost)
    assert isinstance(step, Dispatch) and step.reason == "fixed_window_timeout"
    b.offer(item(2, clock), ms(clock))  # a lead of more than half the window counts as half
    step = b.poll(ms(clock), Capacity(8192, lead_ms=40.0), cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 5.0)


def test_fixed_window_sends_a_full_batch_at_once_and_keeps_the_rest() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=3, fixed_wait_ms=300))
    for rid in range(1, 5):
        b.offer(item(rid, clock), ms(clock))
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and step.reason == "batch_full"
    assert [i.request_id for i in step.items] == [1, 2, 3]
    assert isinstance(b.poll(ms(clock), CAP, cost), Wait) and [i.request_id for i in b.items()] == [4]


def test_capacity_bounds_the_padded_batch_and_rejects_a_head_that_cannot_fit() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=8, fixed_wait_ms=0))
    for rid in range(1, 4):
        b.offer(item(rid, clock, seq_len=3000), ms(clock))
    step = b.poll(ms(clock), CAP, cost)  # 3 x 3000 padded > 8192: two go
    assert isinstance(step, Dispatch) and [i.request_id for i in step.items] == [1, 2]
    # the KV the worker has left bounds the batch after its first member
    step = b.poll(ms(clock), Capacity(8192, kv_tokens=2000), cost)
    assert isinstance(step, Dispatch) and [i.request_id for i in step.items] == [3]
    b.offer(item(9, clock, seq_len=9000), ms(clock))
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Reject) and step.code == 8514 and "8192" in step.message and len(b) == 0


def test_a_head_past_the_enqueue_deadline_is_dropped_and_backpressure_waits() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=8, fixed_wait_ms=300, enqueue_deadline_ms=1000,
                                    fixed_max_inflight_batches=1))
    b.offer(item(1, clock), ms(clock))
    clock.now += 0.5
    step = b.poll(ms(clock), replace(CAP, inflight_batches=1), cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 500)
    clock.now += 0.6
    step = b.poll(ms(clock), replace(CAP, inflight_batches=1), cost)
    assert isinstance(step, Reject) and step.code == 8511


def test_predict_threshold_sends_an_expensive_batch_early() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=8, fixed_wait_ms=300, predict_threshold_ms=50))
    b.offer(item(1, clock, seq_len=2000), ms(clock))
    assert isinstance(b.poll(ms(clock), CAP, cost), Wait)  # 30 ms predicted
    b.offer(item(2, clock, seq_len=2000), ms(clock))
    step = b.poll(ms(clock), CAP, cost)  # 50 ms predicted
    assert isinstance(step, Dispatch) and step.reason == "predict_threshold"


def test_queue_bound_and_removal() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(queue_max_size=2))
    assert b.offer(item(1, clock), ms(clock)) and b.offer(item(2, clock), ms(clock))
    assert not b.offer(item(3, clock), ms(clock))
    assert b.remove(1) is not None and b.remove(1) is None
    assert [i.request_id for i in b.items()] == [2]
    # window estimate: a batch of 2 is not full, so an arrival waits out what is left of the window
    clock.now += 0.1
    assert b.window_wait_ms(ms(clock)) == pytest.approx(200.0)


def test_priority_orders_the_fixed_window_queue_when_enabled() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=2, fixed_wait_ms=0), by_priority=True)
    b.offer(item(1, clock, priority=10), ms(clock))
    b.offer(item(2, clock, priority=90), ms(clock))
    b.offer(item(3, clock, priority=50), ms(clock))
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and [i.request_id for i in step.items] == [2, 3]


# ------------------------------------------------------------------ slo_budget

SLO = BatchSettings(algorithm=BatchAlgorithm.SLO_BUDGET, size_max=8, window_ms=300, min_size=3,
                    emergency_budget_ms=150, dispatch_guard_ms=40, arrival_wait_guard_ms=20,
                    slo_max_inflight_batches=2)


def test_slo_budget_waits_while_the_budget_is_large_then_sends_at_the_guard() -> None:
    clock = FakeClock()
    b = WorkerBatcher(SLO)
    b.offer(item(1, clock, slo_ms=1000.0), ms(clock))  # sort = now + 1000 - 11
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 989 - 300)  # until in the window
    clock.now += 0.95  # 39 ms of budget left: under the 40 ms guard
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and step.reason == "deadline_guard"


def test_slo_budget_orders_by_deadline_and_fills_the_batch_within_the_budget() -> None:
    clock = FakeClock()
    b = WorkerBatcher(SLO)
    b.offer(item(1, clock, slo_ms=2000.0), ms(clock))
    b.offer(item(2, clock, slo_ms=100.0), ms(clock))  # the tighter SLO goes first
    b.offer(item(3, clock, seq_len=20_000, slo_ms=2000.0), ms(clock))  # its extra 200 ms would break 2's budget
    clock.now += 0.06  # request 2: 100 - 11 - 60 = 29 ms left, under the guard
    step = b.poll(ms(clock), Capacity(1 << 20), cost)
    assert isinstance(step, Dispatch) and step.reason == "deadline_guard"
    assert [i.request_id for i in step.items] == [2]  # 1 would add 1 ms, more than 29 - 40 allows


def test_slo_budget_target_size_and_arrival_guard() -> None:
    clock = FakeClock()
    b = WorkerBatcher(replace(SLO, min_size=2))
    b.offer(item(1, clock, slo_ms=200.0), ms(clock))  # inside the window at once, no arrival rate known yet
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and step.reason == "arrival_guard"
    # arrivals 10 ms apart: with ~150 ms of slack the batcher expects more and waits for the next one
    for rid in range(2, 5):
        clock.now += 0.01
        b.offer(item(rid, clock, slo_ms=250.0), ms(clock))
    assert b.arrival_interval_ms == pytest.approx(10.0)
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 10.0)
    # a burst (no gap between arrivals): no arrival is expected in the slack, the target is min_size, which
    # the three waiting requests reach
    b2 = WorkerBatcher(replace(SLO, min_size=2))
    for rid in range(1, 4):
        b2.offer(item(rid, clock, slo_ms=100.0), ms(clock))
    step = b2.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and step.reason == "target_batch_size" and len(step.items) == 3


def test_slo_budget_backpressure_and_expiry() -> None:
    clock = FakeClock()
    b = WorkerBatcher(SLO)
    b.offer(item(1, clock, slo_ms=100.0), ms(clock))
    step = b.poll(ms(clock), replace(CAP, inflight_batches=2), cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 100)
    clock.now += 0.1
    step = b.poll(ms(clock), replace(CAP, inflight_batches=2), cost)
    assert isinstance(step, Reject) and step.code == 8511


# ------------------------------------------------------------------ dispatch_when_idle


def test_fixed_window_keeps_heads_rule_without_dispatch_when_idle() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=8, fixed_wait_ms=10))
    b.offer(item(1, clock), ms(clock))
    step = b.poll(ms(clock), CAP, cost)  # an idle worker, yet the head waits out the window
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 10)


def test_dispatch_when_idle_sends_at_once_to_an_idle_worker_and_batches_behind_a_busy_one() -> None:
    clock = FakeClock()
    b = WorkerBatcher(BatchSettings(size_max=8, fixed_wait_ms=20, dispatch_when_idle=True))
    b.offer(item(1, clock), ms(clock))
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and step.reason == "worker_idle" and [i.request_id for i in step.items] == [1]
    sent_ms = ms(clock)
    assert b.busy_until_ms == pytest.approx(sent_ms + 11.0)  # its predicted prefill: 10 + 100 tokens / 100
    # its EnqueueBatch is not answered yet: the next arrival waits for the window (the answer wakes the driver)
    clock.now += 0.001
    b.offer(item(2, clock), ms(clock))
    step = b.poll(ms(clock), replace(CAP, inflight_batches=1), cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 20)
    # answered, but its prefill is predicted to run until sent + 11 ms: wait for that or the window, the sooner
    b.offer(item(3, clock), ms(clock))
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(sent_ms + 11.0)
    clock.now += 0.0105  # the prefill's predicted end: what came meanwhile goes together
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and step.reason == "worker_idle" and [i.request_id for i in step.items] == [2, 3]
    # two at once now predicted 10 + 2 x 1 ms; a batch sent while busy queues behind it
    assert b.busy_until_ms == pytest.approx(ms(clock) + 12.0)
    for rid in range(4, 12):
        b.offer(item(rid, clock), ms(clock))
    step = b.poll(ms(clock), CAP, cost)
    assert isinstance(step, Dispatch) and step.reason == "batch_full" and len(step.items) == 8
    assert b.busy_until_ms == pytest.approx(ms(clock) + 12.0 + 18.0)


def test_dispatch_when_idle_with_slo_budget_skips_the_budget_wait_on_an_idle_worker() -> None:
    clock = FakeClock()
    b = WorkerBatcher(replace(SLO, dispatch_when_idle=True))
    b.offer(item(1, clock, slo_ms=1000.0), ms(clock))
    step = b.poll(ms(clock), CAP, cost)  # without the option: Wait until the head's budget is in the window
    assert isinstance(step, Dispatch) and step.reason == "worker_idle"
    b.offer(item(2, clock, slo_ms=1000.0), ms(clock))
    step = b.poll(ms(clock), CAP, cost)  # busy now: the budget rule again, woken at the predicted end if sooner
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 11.0)
    step = b.poll(ms(clock), replace(CAP, inflight_batches=1), cost)
    assert isinstance(step, Wait) and step.until_ms == pytest.approx(ms(clock) + 989 - 300)


def test_dispatch_when_idle_from_the_configuration() -> None:
    from flexlb.config import CliOverrides, ConfigError, load_settings

    env = {"MODEL_SERVICE_CONFIG": '{"pd_fusion_endpoint": {"type": "SpecifiedIpPortList", '
                                   '"address": "[\\"127.0.0.1:8000\\"]"}}'}
    assert not load_settings(env, CliOverrides()).master.schedule.batch.dispatch_when_idle  # HEAD's rule
    on = load_settings({**env, "FLEXLB_CONFIG": '{"flexlbBatchDispatchWhenIdle": true}'}, CliOverrides())
    assert on.master.schedule.batch.dispatch_when_idle
    with pytest.raises(ConfigError, match="flexlbBatchDispatchWhenIdle"):
        load_settings({**env, "FLEXLB_CONFIG": '{"flexlbBatchDispatchWhenIdle": "sometimes"}'}, CliOverrides())


# ------------------------------------------------------------------ priority and SLO


def test_priority_field_then_header_then_default() -> None:
    assert resolve_priority(70, 20, 50) == 70
    assert resolve_priority(0, 20, 50) == 20
    assert resolve_priority(101, None, 50) == 50
    assert header_priority([("x-dashscope-inner-qos-level", "80")]) == 80
    assert header_priority([("X-Dashscope-Inner-Qos-Level", b"7")]) == 7
    assert header_priority([("x-dashscope-inner-qos-level", "high")]) is None
    assert header_priority([("x-dashscope-inner-qos-level", "0")]) is None


def test_slo_is_the_length_bucket_times_the_priority_multiplier() -> None:
    p = PrioritySettings()
    assert request_slo_ms(256, 50, p) == 150.0  # upper bound inclusive
    assert request_slo_ms(257, 50, p) == 300.0
    assert request_slo_ms(100_000, 70, p) == 1200.0  # "*" bucket x 0.5
    assert slo_multiplier(10, p.priority_slo_multipliers) == 2.0  # clamped
    assert slo_multiplier(45, p.priority_slo_multipliers) == pytest.approx(1.25)  # linear between 40 and 50
    assert slo_multiplier(95, p.priority_slo_multipliers) == 0.5


def test_reject_reason_names_who_is_ahead() -> None:
    assert reject_reason(50, [10, 90]) == fpb.HIGHER_PRIORITY_AHEAD
    assert reject_reason(50, [10, 50]) == fpb.SAME_PRIORITY_AHEAD
    assert reject_reason(50, [10]) == fpb.RESOURCE_EXHAUSTED


# ------------------------------------------------------------------ lifecycle records and placed requests


def test_lifecycle_moves_and_terminal_records_are_kept_for_the_ttl() -> None:
    clock = FakeClock()
    states = st.RequestStates(terminal_ttl_s=60.0)
    rec = states.open(7, st.QUEUED, clock.now)
    assert states.live(7)
    with pytest.raises(ValueError):
        states.open(7, st.QUEUED, clock.now)
    assert states.move(rec, st.DISPATCHING, clock.now, batch_id=3)
    assert not states.move(rec, st.QUEUED, clock.now)  # no way back
    assert states.move(rec, st.ACKNOWLEDGED, clock.now) and states.move(rec, st.COMPLETED, clock.now)
    assert not states.live(7) and not states.move(rec, st.FAILED, clock.now)
    clock.now += 59
    got = states.get(7, clock.now)
    assert got is not None and got.state == st.COMPLETED and got.batch_id == 3
    clock.now += 2
    assert states.get(7, clock.now) is None
    states.open(0, st.QUEUED, clock.now)  # id 0 names no request: not recorded
    assert states.live_count() == 0


def test_tracker_reports_started_finished_and_ttls() -> None:
    clock = FakeClock()
    t = InflightTracker(ttl_s=300.0, start_ttl_s=10.0)
    a = Placed(1, "w", object(), clock.now, "BATCH")  # type: ignore[arg-type]
    b = Placed(2, "w", object(), clock.now, "QUEUE")  # type: ignore[arg-type]
    assert t.add(a) == [] and t.add(b) == []
    evs = t.report("w", [(1, True), (2, False)], [])
    assert evs == [Started(b)] and t.report("w", [(2, False)], []) == []
    assert t.report("w", [], [(2, 0), (99, 0)]) == [Ended(b, 0)] and len(t) == 1
    # a request the worker reported finished before its placement was recorded ends at once
    assert t.add(Placed(99, "w", object(), clock.now, "BATCH")) != []  # type: ignore[arg-type]
    clock.now += 10
    assert t.expire(clock.now) == [Started(a)]
    clock.now += 290
    assert t.expire(clock.now) == [Expired(a)] and len(t) == 0
