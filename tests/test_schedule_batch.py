"""BATCH mode end to end on loopback: the frontend's pattern (Schedule with generate_input, then FetchResponse on
the PREFILL it names), batching, lifecycle states, rejections, cancellation and uncertain EnqueueBatch outcomes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from flexlb import wire
from flexlb.app import Gateway
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.schedule_modes import BatchSettings, ScheduleMode, ScheduleSettings
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr
from tests.schedule_support import Frontend, entry_port, schedule_request, started_gateways

BATCH = ScheduleSettings(mode=ScheduleMode.BATCH, batch=BatchSettings(size_max=4, fixed_wait_ms=2000),
                         status_poll_interval_ms=20)


@pytest.fixture
async def schedule_gateways() -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    async with started_gateways() as start:
        yield start


def tokens(messages: list[pb.GenerateOutputsPB]) -> list[bytes]:
    return [m.flatten_output.output_ids.int32_data for m in messages]


async def test_pd_batch_schedule_then_fetch_streams_the_tokens(mock_workers, schedule_gateways, channels) -> None:
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    gw = await schedule_gateways([worker_addr(p), worker_addr(d)], BATCH)
    fe = Frontend(channels(gw.grpc_port), channels)
    inputs = [generate_input(100 + i, n_tokens=64 + i) for i in range(4)]
    # the client's own VIT entry survives; its PREFILL/DECODE entries are the master's to write
    for inp in inputs:
        inp.generate_config.role_addrs.extend([wire.role_addr(pb.RoleAddrPB.VIT, "10.9.9.9", 9001, 9000),
                                               wire.role_addr(pb.RoleAddrPB.DECODE, "10.9.9.8", 1, 0)])
    replies = await asyncio.gather(*(fe.schedule(schedule_request(i, priority=70)) for i in inputs))
    for reply in replies:
        assert reply.success and reply.code == 200 and reply.enqueued_by_master
        assert [(s.role, s.server_ip, s.grpc_port, s.http_port) for s in reply.server_status] == [
            ("DECODE", "127.0.0.1", d.port, d.port - 1), ("PREFILL", "127.0.0.1", p.port, p.port - 1)]
        assert reply.lifecycle.state == fpb.REQUEST_STATE_ACKNOWLEDGED and reply.lifecycle.batch_id
        assert reply.queue_length >= 1
    assert p.enqueue_batches == 1  # four requests, size_max 4: one EnqueueBatch, no window wait
    assert sorted(p.enqueued_ids) == [i.request_id for i in inputs]
    assert len({r.lifecycle.batch_id for r in replies}) == 1
    sent = pb.GenerateInputPB.FromString(p.last_request_bytes)
    assert sent.priority == 70
    roles = [(a.role_str, a.grpc_port) for a in sent.generate_config.role_addrs]
    assert roles == [("PREFILL", p.port), ("DECODE", d.port), ("VIT", 9001)]
    # FetchResponse on the PREFILL streams what GenerateStreamCall would: the same tokens, decode driven over PD
    fetched = await asyncio.gather(*(fe.fetch(entry_port(r), i.request_id) for r, i in zip(replies, inputs,
                                                                                           strict=True)))
    direct_p = await mock_workers("PREFILL")
    for msgs, inp in zip(fetched, inputs, strict=True):
        assert len(msgs) == 8 and wire.is_final(msgs[-1])
        ref = pb.GenerateInputPB()
        ref.CopyFrom(inp)
        del ref.generate_config.role_addrs[:]
        ref.generate_config.role_addrs.extend([wire.role_addr(pb.RoleAddrPB.PREFILL, "127.0.0.1", direct_p.port, 0),
                                               wire.role_addr(pb.RoleAddrPB.DECODE, "127.0.0.1", d.port, 0)])
        direct = [m async for m in stream_stub(channels(direct_p.port))(ref, timeout=10)]
        assert tokens(msgs) == tokens(direct)
    # the prefill reports them finished: their load is given back, their records say COMPLETED
    await wait_for(lambda: gw.cluster.ledger.reservations == 0 and gw.scheduler.queue_length() == 0,
                   what="placed requests settled from finished_task_list")
    state = await fe.state(inputs[0].request_id)
    assert state.found and state.lifecycle.state == fpb.REQUEST_STATE_COMPLETED
    assert state.lifecycle.batch_id == replies[0].lifecycle.batch_id
    # a second fetch of the same request: nothing parked any more
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await fe.fetch(p.port, inputs[0].request_id)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


async def test_fused_batch_and_the_direct_fallbacks(mock_workers, schedule_gateways, channels) -> None:
    w = await mock_workers("PDFUSION")
    gw = await schedule_gateways([worker_addr(w)], ScheduleSettings(
        mode=ScheduleMode.BATCH, batch=BatchSettings(fixed_wait_ms=10), batch_fused_workers=True))
    fe = Frontend(channels(gw.grpc_port), channels)
    inp = generate_input(7, max_new_tokens=5)
    reply = await fe.schedule(schedule_request(inp))
    assert reply.enqueued_by_master and [s.role for s in reply.server_status] == ["PDFUSION"]
    msgs = await fe.fetch(entry_port(reply), 7)
    assert len(msgs) == 5 and wire.is_final(msgs[-1])
    # the EnqueueBatch round trip was measured: the next window closes that much early (the window bounds the wait)
    [(key, rtt_ms)] = gw.scheduler.batch.enqueue_rtt_ms.items()
    assert rtt_ms > 0 and gw.scheduler.batch.capacity(key).lead_ms >= rtt_ms
    # without generate_input there is nothing to enqueue: decided as in DIRECT
    plain = await fe.schedule(fpb.FlexlbScheduleRequestPB(request_id=8, seq_len=100))
    assert plain.success and not plain.enqueued_by_master and plain.lifecycle.state == fpb.REQUEST_STATE_COMPLETED
    # a fused deployment without batchFusedWorkers answers DIRECT (RTP-LLM's fused workers take no EnqueueBatch)
    gw2 = await schedule_gateways([worker_addr(w)], ScheduleSettings(mode=ScheduleMode.BATCH))
    fe2 = Frontend(channels(gw2.grpc_port), channels)
    direct = await fe2.schedule(schedule_request(generate_input(9)))
    assert direct.success and not direct.enqueued_by_master and w.enqueue_batches == 1


async def test_duplicate_queue_full_capacity_and_cancel_while_batching(mock_workers, schedule_gateways,
                                                                        channels) -> None:
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    gw = await schedule_gateways([worker_addr(p), worker_addr(d)], ScheduleSettings(
        mode=ScheduleMode.BATCH, batch=BatchSettings(size_max=8, fixed_wait_ms=60_000, queue_max_size=1,
                                                     max_capacity_tokens=1000)))
    fe = Frontend(channels(gw.grpc_port), channels)
    first = asyncio.create_task(fe.schedule(schedule_request(generate_input(1)), timeout=30))
    await wait_for(lambda: gw.scheduler.batch.held() == 1, what="the first request batching")
    assert (await fe.state(1)).lifecycle.state == fpb.REQUEST_STATE_QUEUED
    dup = await fe.schedule(schedule_request(generate_input(1)))
    assert not dup.success and dup.code == 8406 and "in flight" in dup.error_message
    full = await fe.schedule(schedule_request(generate_input(2)))
    assert not full.success and full.code == 8502 and full.admission_reject_reason == fpb.SAME_PRIORITY_AHEAD
    assert json.loads(full.error_message)["status_name"] == "TooManyRequests"
    too_long = await fe.schedule(schedule_request(generate_input(3, n_tokens=1500)))
    assert not too_long.success and too_long.code == 8502  # the queue bound comes first
    # FlexlbService/Cancel takes it out of the batcher: the caller is answered, the load given back
    cancelled = await fe.cancel(1)
    assert cancelled.found and cancelled.lifecycle.state == fpb.REQUEST_STATE_CANCELLED
    answer = await first
    assert not answer.success and answer.lifecycle.state == fpb.REQUEST_STATE_CANCELLED
    assert gw.cluster.ledger.reservations == 0 and p.enqueue_batches == 0
    # the head alone over the batch capacity: 8514
    too_long = await fe.schedule(schedule_request(generate_input(3, n_tokens=1500)))
    assert not too_long.success and too_long.code == 8514
    assert (await fe.state(3)).lifecycle.state == fpb.REQUEST_STATE_FAILED


async def test_a_caller_leaving_mid_batch_leaves_nothing_behind(mock_workers, schedule_gateways, channels) -> None:
    w = await mock_workers("PDFUSION")
    gw = await schedule_gateways([worker_addr(w)], ScheduleSettings(
        mode=ScheduleMode.BATCH, batch=BatchSettings(fixed_wait_ms=60_000), batch_fused_workers=True))
    fe = Frontend(channels(gw.grpc_port), channels)
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await fe.schedule(schedule_request(generate_input(5)), timeout=0.3)
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for(lambda: gw.scheduler.batch.held() == 0, what="the abandoned request out of the batcher")
    assert gw.cluster.ledger.reservations == 0
    assert (await fe.state(5)).lifecycle.state == fpb.REQUEST_STATE_CANCELLED


async def test_enqueue_errors_are_8510_and_uncertain_outcomes_are_cancelled_on_the_worker(
        mock_workers, schedule_gateways, channels) -> None:
    w = await mock_workers("PDFUSION")
    gw = await schedule_gateways([worker_addr(w)], ScheduleSettings(
        mode=ScheduleMode.BATCH, batch=BatchSettings(fixed_wait_ms=1, enqueue_deadline_ms=300),
        batch_fused_workers=True))
    fe = Frontend(channels(gw.grpc_port), channels)
    # the worker refuses the item (a Cancel tombstoned its id): a definite failure, 8510, nothing held
    cancel = channels(w.port).unary_unary(wire.CANCEL, request_serializer=pb.CancelRequestPB.SerializeToString,
                                          response_deserializer=pb.CancelResponsePB.FromString)
    assert (await cancel(pb.CancelRequestPB(request_id=11), timeout=5)).status == pb.CANCEL_STATUS_TOMBSTONED
    refused = await fe.schedule(schedule_request(generate_input(11)))
    assert not refused.success and refused.code == 8510 and "8429" in refused.error_message
    assert gw.cluster.ledger.reservations == 0
    # a worker that takes the call and never answers: uncertain, 8510, Cancel sent until it answers
    hung = await mock_workers("PDFUSION", faults=Faults(hang=True))
    gw2 = await schedule_gateways([worker_addr(hung)], ScheduleSettings(
        mode=ScheduleMode.BATCH, batch=BatchSettings(fixed_wait_ms=1, enqueue_deadline_ms=300),
        batch_fused_workers=True))
    fe2 = Frontend(channels(gw2.grpc_port), channels)
    reply = await fe2.schedule(schedule_request(generate_input(12)))
    assert not reply.success and reply.code == 8510 and "uncertain" in reply.error_message
    await wait_for(lambda: 12 in hung.cancel_requests, what="the uncertain request cancelled on the worker")
    await wait_for(lambda: gw2.cluster.ledger.reservations == 0, what="its load given back once the worker answered")
    state = await fe2.state(12)
    assert state.lifecycle.state == fpb.REQUEST_STATE_TIMED_OUT  # TOMBSTONED: it never reached the engine
    # and the id stays fenced on the worker
    assert hung._tombstones.get(12, 0) > 0


async def test_batch_mode_from_plain_settings_defaults(mock_workers, schedule_gateways, channels) -> None:
    """`defaultScheduleMode` BATCH with every other knob at its default (300 ms window) works as the Java master."""
    p, d = await mock_workers("PREFILL", time_scale=0.0), await mock_workers("DECODE", time_scale=0.0)
    gw = await schedule_gateways([worker_addr(p), worker_addr(d)], ScheduleSettings())
    fe = Frontend(channels(gw.grpc_port), channels)
    reply = await fe.schedule(schedule_request(generate_input(21)))
    assert reply.enqueued_by_master
    assert len(await fe.fetch(entry_port(reply), 21)) == 8
    text = gw.metrics.registry.get_sample_value("flexlb_schedule_batch_size_count")
    assert text == 1.0
    assert gw.metrics.registry.get_sample_value("flexlb_schedule_dispatch_reasons_total",
                                                {"reason": "fixed_window_timeout"}) == 1.0


async def test_rpc_cancel_at_the_gateway_reaches_the_prefill_a_batch_request_was_enqueued_to(
        mock_workers, schedule_gateways, channels) -> None:
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    gw = await schedule_gateways([worker_addr(p), worker_addr(d)],
                                 ScheduleSettings(mode=ScheduleMode.BATCH, batch=BatchSettings(size_max=1)))
    fe = Frontend(channels(gw.grpc_port), channels)
    inp = generate_input(4242, max_new_tokens=2000)  # still generating on the prefill when the Cancel comes
    reply = await fe.schedule(schedule_request(inp))
    assert reply.enqueued_by_master
    cancel = channels(gw.grpc_port).unary_unary(
        "/RpcService/Cancel", request_serializer=pb.CancelRequestPB.SerializeToString,
        response_deserializer=pb.CancelResponsePB.FromString)
    answer = await cancel(pb.CancelRequestPB(request_id=4242), timeout=5)
    # the gateway never relayed this request: the scheduler's locator names the prefill, which answers
    assert p.cancel_requests == [4242]
    assert answer.status == pb.CANCEL_STATUS_ACCEPTED
