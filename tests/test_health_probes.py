"""Liveness, readiness and grpc.health.v1 tell one story: a worker outage fails readiness, never liveness."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flexlb.balancer.request import Deploy
from flexlb.balancer.workers import Cluster, Role, WorkerAddr
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.readiness import DOWN, OUT_OF_SERVICE, UP, readiness
from tests.conftest import wait_for, worker_addr

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NAMES = ("", "RpcService", "FlexlbService")
FAST_PROBES = {"health_check_interval_ms": 100, "health_check_timeout_ms": 100}


async def _get(port: int, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.json(content_type=None)


async def _checks(stub: health_pb2_grpc.HealthStub) -> dict[str, int]:
    return {n: (await stub.Check(health_pb2.HealthCheckRequest(service=n), timeout=5)).status for n in NAMES}


async def _listed(stub: health_pb2_grpc.HealthStub) -> dict[str, int]:
    reply = await stub.List(health_pb2.HealthListRequest(), timeout=5)
    return {n: s.status for n, s in reply.statuses.items()}


async def _next_status(watch: Any) -> int:
    """The next message of a Watch stream (bounded: the change must be pushed, not found by polling)."""
    reply = await asyncio.wait_for(watch.read(), 5)
    assert reply is not grpc.aio.EOF
    return int(reply.status)


async def test_full_worker_outage_fails_readiness_not_liveness_and_grpc_health_agrees(
        mock_workers, gateways, channels) -> None:
    p, d = await mock_workers("PREFILL"), await mock_workers("DECODE")
    pa, da = worker_addr(p), worker_addr(d)
    gw = await gateways([pa, da], master=FAST_PROBES)
    ch = channels(gw.grpc_port)
    stub = health_pb2_grpc.HealthStub(ch)
    check_health = ch.unary_unary("/RpcService/CheckHealth", request_serializer=pb.EmptyPB.SerializeToString,
                                  response_deserializer=pb.CheckHealthResponsePB.FromString)
    await wait_for(lambda: all(w.last_probe_ok_s > 0 for w in gw.cluster.all()), what="first good probes")

    assert await _get(gw.admin_port, "/actuator/health/liveness") == (200, {
        "status": "UP", "components": {"livenessState": {"status": "UP"}}})
    status, body = await _get(gw.admin_port, "/actuator/health/readiness")
    assert (status, body["status"]) == (200, "UP")
    assert body["components"]["workers"]["details"]["PREFILL"] == {"in_rotation": 1, "workers": 1}
    assert (await _get(gw.admin_port, "/actuator/health"))[0] == 200
    assert await _checks(stub) == dict.fromkeys(NAMES, SERVING)
    assert await _listed(stub) == dict.fromkeys(NAMES, SERVING)
    watches = {n: stub.Watch(health_pb2.HealthCheckRequest(service=n)) for n in ("", "RpcService")}
    for w in watches.values():
        assert await _next_status(w) == SERVING

    # every worker dies: the gateway cannot serve a call, but the process is fine
    await p.stop(grace_s=0)
    await d.stop(grace_s=0)
    for w in watches.values():
        assert await _next_status(w) == NOT_SERVING  # pushed on the health checker's change signal
    assert await _checks(stub) == dict.fromkeys(NAMES, NOT_SERVING)
    assert await _listed(stub) == dict.fromkeys(NAMES, NOT_SERVING)
    status, body = await _get(gw.admin_port, "/actuator/health/readiness")
    assert (status, body["status"]) == (503, DOWN)
    assert body["components"]["readinessState"] == {"status": UP}  # not draining: down because of workers
    assert body["components"]["workers"]["details"]["PREFILL"] == {"in_rotation": 0, "workers": 1}
    assert (await _get(gw.admin_port, "/actuator/health/liveness"))[0] == 200
    status, body = await _get(gw.admin_port, "/actuator/health")
    assert (status, body["status"], body["can_route"]) == (503, "DOWN", False)
    # FlexLB HEAD's management port serves actuator at the root too
    assert (await _get(gw.admin_port, "/health/readiness"))[0] == 503
    assert (await _get(gw.admin_port, "/health/liveness"))[0] == 200
    try:
        await check_health(pb.EmptyPB(), timeout=5)
        raise AssertionError("CheckHealth answered OK with no worker in rotation")
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE

    # the same workers come back on the same ports: one good probe each, and everything says so
    await mock_workers("PREFILL", port=pa.grpc_port)
    await mock_workers("DECODE", port=da.grpc_port)
    for w in watches.values():
        assert await _next_status(w) == SERVING
    assert await _checks(stub) == dict.fromkeys(NAMES, SERVING)
    assert (await _get(gw.admin_port, "/actuator/health/readiness"))[0] == 200
    assert (await check_health(pb.EmptyPB(), timeout=5)).health == "OK"
    for w in watches.values():
        w.cancel()


async def test_operator_rotation_and_drain_drive_grpc_health(mock_workers, gateways, channels) -> None:
    w = await mock_workers()
    gw = await gateways([worker_addr(w)], master={"health_check_interval_ms": 0})
    stub = health_pb2_grpc.HealthStub(channels(gw.grpc_port))
    watch = stub.Watch(health_pb2.HealthCheckRequest(service="RpcService"))
    assert await _next_status(watch) == SERVING
    key = worker_addr(w).key
    assert gw.set_rotation(key, False, "maintenance") is not None
    assert await _next_status(watch) == NOT_SERVING
    assert (await _get(gw.admin_port, "/actuator/health/readiness"))[0] == 503
    assert gw.set_rotation(key, True, "") is not None
    assert await _next_status(watch) == SERVING
    # draining: readiness is OUT_OF_SERVICE (refusing traffic on purpose), liveness stays UP
    gw.refuse_new_calls()
    assert await _next_status(watch) == NOT_SERVING
    status, body = await _get(gw.admin_port, "/actuator/health/readiness")
    assert (status, body["status"]) == (503, OUT_OF_SERVICE)
    assert body["components"]["workers"]["status"] == UP
    assert (await _get(gw.admin_port, "/actuator/health/liveness"))[0] == 200
    watch.cancel()


def _cluster(*specs: tuple[Role, str, bool]) -> Cluster:
    c = Cluster([WorkerAddr("10.0.0.1", 9000 + i, 8999 + i, role, group) for i, (role, group, _) in enumerate(specs)])
    for w, (_, _, healthy) in zip(c.all(), specs, strict=True):
        w.healthy = healthy
    return c


def test_readiness_needs_a_pair_the_router_could_make() -> None:
    pd = Deploy.DISAGGREGATED
    assert readiness(_cluster((Role.PREFILL, "", True), (Role.DECODE, "", True)), pd, 0.0, False).ok
    # a prefill of g1 can only hand its KV cache to a decode of g1
    split = _cluster((Role.PREFILL, "g1", True), (Role.DECODE, "g2", True), (Role.DECODE, "g1", False))
    v = readiness(split, pd, 0.0, False)
    assert v.status == DOWN and v.components["workers"]["details"]["pairable"] is False
    assert readiness(_cluster((Role.PREFILL, "", True), (Role.DECODE, "", False)), pd, 0.0, False).status == DOWN
    fused = _cluster((Role.PDFUSION, "", True))
    assert readiness(fused, Deploy.PD_FUSION, 0.0, False).ok
    assert readiness(fused, Deploy.PD_FUSION, 0.0, True).status == OUT_OF_SERVICE


def test_readiness_needs_a_vit_worker_once_vit_workers_are_configured() -> None:
    fused = Deploy.PD_FUSION
    # with every VIT out, calls get 8405: readiness must say so, as CheckHealth does
    assert readiness(_cluster((Role.PDFUSION, "", True), (Role.VIT, "", False)), fused, 0.0, False).status == DOWN
    assert readiness(_cluster((Role.PDFUSION, "", True), (Role.VIT, "", True)), fused, 0.0, False).ok
    assert readiness(_cluster((Role.PDFUSION, "", True)), fused, 0.0, False).ok
