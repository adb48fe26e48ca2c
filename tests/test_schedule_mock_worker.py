"""The mock worker's master-enqueued path: EnqueueBatch, FetchResponse and Cancel, as the RTP-LLM prefill serves
them (rtp-llm-wire.md §4.4)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from flexlb import wire
from flexlb.call.failures_wire import engine_code_from_trailers
from flexlb.pb import model_rpc_service_pb2 as pb
from tests.conftest import generate_input, stream_stub, wait_for


def rpc(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    enqueue = channel.unary_unary("/RpcService/EnqueueBatch",
                                  request_serializer=pb.EnqueueBatchRequestPB.SerializeToString,
                                  response_deserializer=pb.EnqueueBatchResponsePB.FromString)
    fetch = channel.unary_stream("/RpcService/FetchResponse", request_serializer=pb.FetchRequestPB.SerializeToString,
                                 response_deserializer=pb.GenerateOutputsPB.FromString)
    cancel = channel.unary_unary(wire.CANCEL, request_serializer=pb.CancelRequestPB.SerializeToString,
                                 response_deserializer=pb.CancelResponsePB.FromString)
    return enqueue, fetch, cancel


def batch(*inputs: pb.GenerateInputPB, batch_id: int = 5, attach_ms: int = 0,
          dp_rank: int = 0) -> pb.EnqueueBatchRequestPB:
    return pb.EnqueueBatchRequestPB(batch_id=batch_id, fetch_attach_timeout_ms=attach_ms, dp_slots=[
        pb.EnqueueBatchDpSlotPB(dp_rank=dp_rank, requests=[pb.EnqueueBatchExternalInputPB(input=i) for i in inputs])])


async def test_enqueued_requests_enter_the_engine_together_and_fetch_streams_them(mock_workers, channels) -> None:
    w = await mock_workers("PDFUSION")
    enqueue, fetch, _ = rpc(channels(w.port))
    assert w.engine is not None
    a, b = generate_input(1, n_tokens=300), generate_input(2, n_tokens=200, first_token=7)
    async with w._prefill_lock:  # the engine is paused: what EnqueueBatch did is visible before it runs
        reply = await enqueue(batch(a, b), timeout=5)
        assert reply.batch_id == 5 and [s.request_id for s in reply.successes] == [1, 2] and not reply.errors
        assert w.engine.waiting_count == 2  # both waiting at once: the next iteration prefills them together
    got = [m async for m in fetch(pb.FetchRequestPB(request_id=2), timeout=5)]
    ref = [m async for m in stream_stub(channels(w.port))(generate_input(3, n_tokens=200, first_token=7),
                                                          timeout=5)]
    assert [m.flatten_output.output_ids.int32_data for m in got] == [
        m.flatten_output.output_ids.int32_data for m in ref]
    assert wire.is_final(got[-1]) and got[0].request_id == 2
    # attached once: a second fetch, or an unknown id, is NOT_FOUND
    for rid in (2, 99):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in fetch(pb.FetchRequestPB(request_id=rid), timeout=5):
                pass
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    assert len([m async for m in fetch(pb.FetchRequestPB(request_id=1), timeout=5)]) == 8


async def test_enqueue_refuses_duplicates_bad_slots_and_tombstoned_ids(mock_workers, channels) -> None:
    w = await mock_workers("PDFUSION")
    enqueue, fetch, cancel = rpc(channels(w.port))
    # Cancel of an id never seen: TOMBSTONED, and a later enqueue of it is refused with 8429
    assert (await cancel(pb.CancelRequestPB(request_id=4), timeout=5)).status == pb.CANCEL_STATUS_TOMBSTONED
    reply = await enqueue(batch(generate_input(3), generate_input(3), generate_input(4)), timeout=5)
    assert [s.request_id for s in reply.successes] == [3]
    assert [(e.request_id, e.error_info.error_code) for e in reply.errors] == [
        (3, grpc.StatusCode.ALREADY_EXISTS.value[0]), (4, wire.PRIORITY_PREEMPTED)]
    wrong = await enqueue(batch(generate_input(6), dp_rank=1), timeout=5)
    assert not wrong.successes and wrong.errors[0].error_info.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len([m async for m in fetch(pb.FetchRequestPB(request_id=3), timeout=5)]) == 8
    # it ended: Cancel now finds nothing live, and nothing to fence either
    assert (await cancel(pb.CancelRequestPB(request_id=3), timeout=5)).status == pb.CANCEL_STATUS_NOT_FOUND


async def test_cancel_preempts_an_enqueued_request(mock_workers, channels) -> None:
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    enqueue, fetch, cancel = rpc(channels(p.port))
    inp = generate_input(8, max_new_tokens=2000)
    inp.generate_config.role_addrs.extend([wire.role_addr(pb.RoleAddrPB.PREFILL, "127.0.0.1", p.port, 0),
                                           wire.role_addr(pb.RoleAddrPB.DECODE, "127.0.0.1", d.port, 0)])
    assert (await enqueue(batch(inp), timeout=5)).successes
    stream = fetch(pb.FetchRequestPB(request_id=8), timeout=10)
    first = await stream.read()
    assert isinstance(first, pb.GenerateOutputsPB)  # the prefill's first token; the decode streams the rest
    assert (await cancel(pb.CancelRequestPB(request_id=8), timeout=5)).status == pb.CANCEL_STATUS_ACCEPTED
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        while await stream.read() is not grpc.aio.EOF:
            pass
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert engine_code_from_trailers(ei.value.trailing_metadata()) == wire.PRIORITY_PREEMPTED
    await wait_for(lambda: any(i.request_id == 8 and i.priority_preemption_progress == pb.PRIORITY_PREEMPTION_CANCELED
                               for _, i in p._finished), what="the preempted task in the finished list")


async def test_an_unattached_request_expires(mock_workers, channels) -> None:
    w = await mock_workers("PDFUSION")
    enqueue, fetch, _ = rpc(channels(w.port))
    assert (await enqueue(batch(generate_input(9, max_new_tokens=500), attach_ms=50), timeout=5)).successes
    await wait_for(lambda: 9 not in w._parked, what="the attach window to close")
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in fetch(pb.FetchRequestPB(request_id=9), timeout=5):
            pass
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    await wait_for(lambda: any(i.request_id == 9 and i.error_info.error_code == wire.GENERATE_TIMEOUT
                               for _, i in w._finished), what="the expired request in the finished list")


async def test_decode_workers_do_not_take_batches(mock_workers, channels) -> None:
    d = await mock_workers("DECODE")
    enqueue, _, _ = rpc(channels(d.port))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await enqueue(batch(generate_input(1)), timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
    await asyncio.sleep(0)
