"""QUEUE mode on loopback: priority order, the queue bound (8502), the wait bound (8503), retries, and dispatch
only when a worker has room by the load the router tracks (placed requests settle from GetWorkerStatus)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from flexlb.app import Gateway
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.schedule_modes import QueueSettings, ScheduleMode, ScheduleSettings
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr
from tests.schedule_support import Frontend, schedule_request, started_gateways

QUEUE = ScheduleSettings(mode=ScheduleMode.QUEUE, queue=QueueSettings(max_queue_size=3), status_poll_interval_ms=20)
BIG = 9000  # uncached prompt tokens over the mock's 8192-token batch budget: its worker has no room left


@pytest.fixture
async def schedule_gateways() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    async with started_gateways() as start:
        yield start


async def _blocked(mock_workers, schedule_gateways, channels, schedule: ScheduleSettings = QUEUE):  # type: ignore[no-untyped-def]
    """A fused worker whose batch budget is taken by one decided request nobody has dialed yet."""
    w = await mock_workers("PDFUSION")
    gw = await schedule_gateways([worker_addr(w)], schedule, health_check_interval_ms=50)
    state = gw.cluster.get(worker_addr(w).key)
    assert state is not None
    await wait_for(lambda: state.max_batch_tokens > 0, what="the worker's batch budget learned")
    fe = Frontend(channels(gw.grpc_port), channels)
    first = await fe.schedule(schedule_request(generate_input(1, n_tokens=BIG)))
    assert first.success and first.lifecycle.state == fpb.REQUEST_STATE_COMPLETED and first.queue_length == 1
    return w, gw, fe


async def test_priority_order_queue_bound_and_room(mock_workers, schedule_gateways, channels) -> None:
    w, gw, fe = await _blocked(mock_workers, schedule_gateways, channels)
    qos = "x-dashscope-inner-qos-level"
    # request 2: the header's 10; request 3: field 14's 90 (it beats its header's 20); request 4: the default 50
    waiting = {rid: asyncio.create_task(fe.schedule(schedule_request(generate_input(rid), priority=prio),
                                                    metadata=md))
               for rid, prio, md in ((2, 0, ((qos, "10"),)), (3, 90, ((qos, "20"),)), (4, 0, ()))}
    await wait_for(lambda: gw.scheduler.queue.held() == 3, what="three requests queued")
    assert (await fe.state(2)).lifecycle.state == fpb.REQUEST_STATE_QUEUED
    full = await fe.schedule(schedule_request(generate_input(5), priority=60))
    assert not full.success and full.code == 8502 and full.admission_reject_reason == fpb.HIGHER_PRIORITY_AHEAD
    assert json.loads(full.error_message)["status_name"] == "TooManyRequests"
    assert not waiting[2].done()
    # the caller dials the worker for the first request: once the worker reports it past its prefill, the
    # budget is free and the queue goes, highest priority first
    msgs = [m async for m in stream_stub(channels(w.port))(generate_input(1, n_tokens=BIG), timeout=10)]
    assert len(msgs) == 8
    replies = {rid: await t for rid, t in waiting.items()}
    assert all(r.success and r.lifecycle.state == fpb.REQUEST_STATE_COMPLETED for r in replies.values())
    order = sorted(replies, key=lambda rid: replies[rid].lifecycle.batch_id)  # decision sequence numbers
    assert order == [3, 4, 2]
    assert (await fe.state(2)).lifecycle.state == fpb.REQUEST_STATE_COMPLETED
    assert gw.scheduler.queue.dispatched == 4


async def test_waiting_past_generate_timeout_is_8503_and_retries_end(mock_workers, schedule_gateways,
                                                                     channels) -> None:
    _, gw, fe = await _blocked(mock_workers, schedule_gateways, channels)
    reply = await fe.schedule(schedule_request(generate_input(6), generate_timeout=200))
    assert not reply.success and reply.code == 8503
    assert json.loads(reply.error_message)["status_name"] == "GatewayTimeout"
    assert reply.lifecycle.state == fpb.REQUEST_STATE_TIMED_OUT and gw.scheduler.queue.held() == 0
    assert (await fe.state(6)).lifecycle.state == fpb.REQUEST_STATE_TIMED_OUT
    # no worker in rotation: retryable (8404), tried maxRetryCount times, then answered
    dead = await mock_workers("PDFUSION")
    addr = worker_addr(dead)
    await dead.stop(grace_s=0)
    gw2 = await schedule_gateways([addr], ScheduleSettings(mode=ScheduleMode.QUEUE,
                                                           queue=QueueSettings(max_retry_count=2)),
                                  health_check_interval_ms=50)
    st = gw2.cluster.get(addr.key)
    assert st is not None
    await wait_for(lambda: not st.healthy, what="the dead worker out of rotation")
    fe2 = Frontend(channels(gw2.grpc_port), channels)
    failed = await fe2.schedule(schedule_request(generate_input(7)))
    assert not failed.success and failed.code == 8404 and failed.lifecycle.state == fpb.REQUEST_STATE_FAILED
    assert gw2.scheduler.queue.retries == 3 and gw2.cluster.ledger.reservations == 0
