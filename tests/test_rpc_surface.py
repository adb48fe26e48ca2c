"""The gateway's RpcService surface: reflection lists exactly what is served, every advertised method answers
(both engines), Cancel reaches the holder of a request, GetWorkerStatus / GetCacheStatus aggregate the workers."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from flexlb import wire
from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.call.surface import SERVED_METHODS
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.engine import EngineParams
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr

# prefill 1 ms + 0.5 ms a token (a 200-token prompt: ~100 ms before its first message), decode 20 ms a token
SLOW = EngineParams(prefill_base_ms=1.0, prefill_ms_per_uncached_token=0.5, decode_step_base_ms=20.0,
                    decode_step_ms_per_running=0.0)
SERVICES = {"RpcService", "FlexlbService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def reflect(port: int) -> dict[str, list[Any]]:
    """What a reflection client sees (blocking: run it off the event loop the gateway serves on)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        pool = descriptor_pool.DescriptorPool(db)
        return {name: list(pool.FindServiceByName(name).methods) for name in db.get_services()}


def unary(ch: grpc.aio.Channel, method: str, req_cls: Any, resp_cls: Any) -> grpc.aio.UnaryUnaryMultiCallable:
    return ch.unary_unary(f"/RpcService/{method}", request_serializer=req_cls.SerializeToString,
                          response_deserializer=resp_cls.FromString)


def cancel_stub(ch: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return unary(ch, "Cancel", pb.CancelRequestPB, pb.CancelResponsePB)


async def drain(stream: grpc.aio.UnaryStreamCall) -> None:
    """Read a stream to its end (raises its status unless OK)."""
    while await stream.read() is not grpc.aio.EOF:
        pass


def engine_code(exc: grpc.aio.AioRpcError) -> int | None:
    raw = dict(exc.trailing_metadata() or ()).get(wire.ERROR_DETAILS_TRAILER)
    return None if raw is None else pb.ErrorDetailsPB.FromString(raw).error_code


async def test_reflection_lists_exactly_what_is_served_and_every_method_answers(mock_workers, gateways,
                                                                               channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    seen = await asyncio.to_thread(reflect, gw.grpc_port)
    assert set(seen) == SERVICES
    assert {m.name for m in seen["RpcService"]} == set(SERVED_METHODS)
    assert {"GenerateStreamCall", "Cancel", "GetWorkerStatus", "GetCacheStatus"} <= set(SERVED_METHODS)
    ch = channels(gw.grpc_port)
    for service, methods in seen.items():
        for m in methods:
            path = f"/{service}/{m.name}"
            if m.client_streaming:  # reflection itself: one list request
                from grpc_reflection.v1alpha import reflection_pb2 as rpb
                call = ch.stream_stream(path, request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                                        response_deserializer=rpb.ServerReflectionResponse.FromString)(timeout=5)
                await call.write(rpb.ServerReflectionRequest(list_services=""))
                assert (await call.read()).list_services_response.service
                await call.done_writing()
                continue
            try:
                if m.server_streaming:
                    stream = ch.unary_stream(path)(b"", timeout=5)
                    await stream.read()  # Watch streams on: its first message is enough
                    stream.cancel()
                else:
                    await ch.unary_unary(path)(b"", timeout=5)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() != grpc.StatusCode.UNIMPLEMENTED, path
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, exc.code(), exc.details())
    # what is not advertised is not served
    for path in ("/RpcService/FetchResponse", "/RpcService/EnqueueBatch", "/MultimodalRpcService/GetWorkerStatus"):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ch.unary_unary(path)(b"", timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED, path


async def test_cancel_of_an_unknown_request_is_not_found(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    reply = await cancel_stub(channels(gw.grpc_port))(pb.CancelRequestPB(request_id=404), timeout=5)
    assert reply.status == pb.CANCEL_STATUS_NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await channels(gw.grpc_port).unary_unary("/RpcService/Cancel")(b"\xff\xff", timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and engine_code(ei.value) == wire.INVALID_PARAMS


async def test_cancel_is_relayed_to_the_prefill_and_its_preemption_is_final(mock_workers, gateways,
                                                                            channels) -> None:
    # two prefills: without the Cancel marking the call final, the preemption (busy, 8429) before the first
    # message would fail over to the other prefill
    p1, p2 = await mock_workers("PREFILL", params=SLOW), await mock_workers("PREFILL", params=SLOW)
    d = await mock_workers("DECODE", params=SLOW)
    gw = await gateways([worker_addr(p1), worker_addr(p2), worker_addr(d)])
    ch = channels(gw.grpc_port)
    stream = stream_stub(ch)(generate_input(71, n_tokens=400, max_new_tokens=50), timeout=10)
    await wait_for(lambda: p1.calls_received + p2.calls_received == 1, what="the call reached a prefill")
    holder, other = (p1, p2) if p1.calls_received else (p2, p1)
    reply = await cancel_stub(ch)(pb.CancelRequestPB(request_id=71), timeout=5)
    assert reply.status == pb.CANCEL_STATUS_ACCEPTED
    assert holder.cancel_requests == [71] and other.cancel_requests == []
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await drain(stream)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert engine_code(ei.value) == wire.PRIORITY_PREEMPTED
    assert other.calls_received == 0, "the preempted call was failed over"
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="the call's load released")
    # mid-stream too: the prefill preempts it and the client gets the end after its messages
    stream = stream_stub(ch)(generate_input(72, n_tokens=10, max_new_tokens=50), timeout=10)
    assert (await stream.read()).request_id == 72
    assert (await cancel_stub(ch)(pb.CancelRequestPB(request_id=72), timeout=5)).status == pb.CANCEL_STATUS_ACCEPTED
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await drain(stream)
    assert engine_code(ei.value) == wire.PRIORITY_PREEMPTED
    # over: nobody holds it any more
    reply = await cancel_stub(ch)(pb.CancelRequestPB(request_id=72), timeout=5)
    assert reply.status == pb.CANCEL_STATUS_NOT_FOUND


class EngineWithoutCancel:
    """A real gRPC engine that serves GenerateStreamCall and not Cancel, as RTP-LLM's DECODE and PDFUSION roles:
    one message every 20 ms; it records the request ids whose stream was cancelled."""

    def __init__(self) -> None:
        self.cancelled: list[int] = []
        self.server = grpc.aio.server()
        self.port = 0

    async def start(self) -> None:
        handler = grpc.unary_stream_rpc_method_handler(
            self.generate, request_deserializer=pb.GenerateInputPB.FromString,
            response_serializer=pb.GenerateOutputsPB.SerializeToString)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("RpcService", {"GenerateStreamCall": handler}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def generate(self, req: pb.GenerateInputPB, context: grpc.aio.ServicerContext) -> Any:
        try:
            for _ in range(500):
                yield pb.GenerateOutputsPB(request_id=req.request_id,
                                           flatten_output=pb.FlattenOutputPB(finished=[False]))
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            self.cancelled.append(req.request_id)
            raise


async def test_cancel_on_a_worker_without_cancel_is_done_by_the_gateway(gateways, channels) -> None:
    # DECODE and PDFUSION engines answer Cancel UNIMPLEMENTED: the gateway carries the stream and cancels it
    engine = EngineWithoutCancel()
    await engine.start()
    try:
        addr = WorkerAddr("127.0.0.1", engine.port, engine.port - 1, Role.PDFUSION)
        gw = await gateways([addr], master={"health_check_interval_ms": 0})
        ch = channels(gw.grpc_port)
        stream = stream_stub(ch)(generate_input(81, n_tokens=10, max_new_tokens=100), timeout=10)
        await stream.read()
        reply = await cancel_stub(ch)(pb.CancelRequestPB(request_id=81), timeout=5)
        assert reply.status == pb.CANCEL_STATUS_ACCEPTED
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await drain(stream)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert engine_code(ei.value) == wire.PRIORITY_PREEMPTED
        await wait_for(lambda: engine.cancelled == [81], what="the worker's stream cancelled")
        await wait_for(lambda: gw.cluster.ledger.calls == 0, what="the call's load released")
    finally:
        await engine.server.stop(0)


async def test_cancel_of_a_call_waiting_at_the_gateway(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    # a batching window far longer than the test: the call waits at the gateway
    gw = await gateways([worker_addr(w)], master={"prefill_batch_wait_time_ms": 60_000, "batch_size": 64,
                                                  "prefill_lb_timeout_ms": 60_000})
    ch = channels(gw.grpc_port)
    stream = stream_stub(ch)(generate_input(91), timeout=10)
    await wait_for(lambda: len(gw.dispatcher.requests) == 1, what="the call parsed and waiting")
    assert (await cancel_stub(ch)(pb.CancelRequestPB(request_id=91), timeout=5)).status == pb.CANCEL_STATUS_ACCEPTED
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await drain(stream)
    assert engine_code(ei.value) == wire.PRIORITY_PREEMPTED
    assert w.calls_received == 0 and gw.cluster.ledger.calls == 0


async def test_cancel_of_a_request_the_gateway_did_not_relay_asks_the_locators(mock_workers, gateways,
                                                                               channels) -> None:
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    gw = await gateways([worker_addr(p), worker_addr(d)])
    enqueued: dict[int, WorkerAddr] = {55: worker_addr(p)}  # as a BATCH scheduler would know them
    gw.dispatcher.requests.add_locator(enqueued.get)
    reply = await cancel_stub(channels(gw.grpc_port))(pb.CancelRequestPB(request_id=55), timeout=5)
    assert reply.status == pb.CANCEL_STATUS_TOMBSTONED  # the prefill's own answer: nothing live there
    assert p.cancel_requests == [55]
    reply = await cancel_stub(channels(gw.grpc_port))(pb.CancelRequestPB(request_id=56), timeout=5)
    assert reply.status == pb.CANCEL_STATUS_NOT_FOUND and p.cancel_requests == [55]


async def test_worker_status_aggregates_the_workers(mock_workers, gateways, channels) -> None:
    ws = [await mock_workers(params=SLOW), await mock_workers(params=SLOW)]
    gw = await gateways([worker_addr(w) for w in ws])
    ch = channels(gw.grpc_port)
    status = unary(ch, "GetWorkerStatus", pb.StatusVersionPB, pb.WorkerStatusPB)
    streams = [stream_stub(ch)(generate_input(100 + i, n_tokens=10, max_new_tokens=200), timeout=10)
               for i in range(3)]
    for s in streams:
        await s.read()
    direct = [await unary(channels(w.port), "GetWorkerStatus", pb.StatusVersionPB, pb.WorkerStatusPB)(
        pb.StatusVersionPB(), timeout=5) for w in ws]
    first = await status(pb.StatusVersionPB(), timeout=5)
    assert first.alive and first.role_type == pb.ROLE_TYPE_PDFUSION and first.role == "RoleType.PDFUSION"
    assert first.running_query_len == 3 and len(first.running_task_info) == 3
    assert first.total_kv_cache == sum(r.total_kv_cache for r in direct) > 0
    assert first.max_seq_len == min(r.max_seq_len for r in direct)
    assert first.max_batch_tokens_size == sum(r.max_batch_tokens_size for r in direct)
    assert (first.dp_size, first.tp_size) == (1, 1) and not first.finished_task_list
    for s in streams:
        s.cancel()
    second = await status(pb.StatusVersionPB(), timeout=5)
    assert second.status_version > first.status_version
    # no worker in rotation: not alive, nothing to add up
    for state in gw.cluster.all():
        state.operator_out = True
    third = await status(pb.StatusVersionPB(), timeout=5)
    assert not third.alive and third.total_kv_cache == 0


async def test_cache_status_is_the_union_of_the_workers(mock_workers, gateways, channels) -> None:
    ws = [await mock_workers(), await mock_workers()]
    gw = await gateways([worker_addr(w) for w in ws], strategy="ROUND_ROBIN")
    ch = channels(gw.grpc_port)
    for i in range(2):
        async for _ in stream_stub(ch)(generate_input(200 + i, n_tokens=256, first_token=1 + 7 * i), timeout=10):
            pass
    assert all(w.calls_received == 1 for w in ws)
    cache = unary(ch, "GetCacheStatus", pb.CacheVersionPB, pb.CacheStatusPB)
    direct = [await unary(channels(w.port), "GetCacheStatus", pb.CacheVersionPB, pb.CacheStatusPB)(
        pb.CacheVersionPB(need_cache_keys=True), timeout=5) for w in ws]
    union = set(direct[0].cache_keys) | set(direct[1].cache_keys)
    assert union and not set(direct[0].cache_keys) <= set(direct[1].cache_keys)
    got = await cache(pb.CacheVersionPB(need_cache_keys=True), timeout=5)
    assert set(got.cache_keys) == union
    assert got.block_size == direct[0].block_size
    assert got.total_kv_cache == sum(r.total_kv_cache for r in direct)
    # an engine sends no keys to a caller that has its version
    same = await cache(pb.CacheVersionPB(need_cache_keys=True, latest_cache_version=got.version), timeout=5)
    assert same.version == got.version and not same.cache_keys
    async for _ in stream_stub(ch)(generate_input(202, n_tokens=256, first_token=99), timeout=10):
        pass
    moved = await cache(pb.CacheVersionPB(need_cache_keys=True, latest_cache_version=got.version), timeout=5)
    assert moved.version > got.version and set(moved.cache_keys) > union
