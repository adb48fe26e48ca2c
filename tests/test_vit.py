"""VIT (multimodal) workers: configured, polled on MultimodalRpcService, chosen with every call, named in
role_addrs and in Schedule's answer; and the client's own role_addrs entries the gateway keeps."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from flexlb import wire
from flexlb.balancer.factory import build_router
from flexlb.balancer.request import Deploy, NoWorkerAvailable, RouteRequest
from flexlb.balancer.workers import Cluster, Role, WorkerAddr
from flexlb.config import load_settings
from flexlb.model_service import parse_model_service
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import MockWorker
from tests.conftest import engine_error_code, generate_input, stream_stub, wait_for, worker_addr

FAST_CHECKS = {"health_check_interval_ms": 20, "health_check_timeout_ms": 500}


@pytest.fixture
def workers(mock_workers: Callable[..., Awaitable[MockWorker]]) -> Callable[..., Awaitable[MockWorker]]:
    """Mock workers of any role (VIT included), engine time 0; stopped after the test."""

    def start(role: str = "PDFUSION", **config: Any) -> Awaitable[MockWorker]:
        return mock_workers(role, **{"time_scale": 0.0, **config})

    return start


def _role_addrs(w: MockWorker) -> list[tuple[str, str, int]]:
    """(role_str, ip, grpc_port) of the role_addrs of the last GenerateStreamCall the worker received."""
    inp = pb.GenerateInputPB.FromString(w.last_request_bytes)
    return [(a.role_str, a.ip, a.grpc_port) for a in inp.generate_config.role_addrs]


def _entry(role: str, port: int) -> tuple[str, str, int]:
    return (role, "127.0.0.1", port)


def _schedule(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary("/FlexlbService/Schedule",
                               request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
                               response_deserializer=fpb.FlexlbScheduleResponsePB.FromString)


# ------------------------------------------------------------ configuration and the pure core


def test_vit_endpoint_parsed_top_level_and_per_group() -> None:
    raw = {
        "service_id": "s",
        "vit_endpoint": {"type": "SpecifiedIpPortList", "address": "[\"10.0.0.9:8088\"]"},
        "role_endpoints": [{"group": "g1",
                            "prefill_endpoint": {"type": "SpecifiedIpPortList", "address": ["10.0.0.1:8088"]},
                            "decode_endpoint": {"type": "SpecifiedIpPortList", "address": ["10.0.0.2:8088"]},
                            "vit_endpoint": {"type": "SpecifiedIpPortList", "address": ["10.0.0.3:8089"],
                                             "protocol": "grpc"}}],
    }
    _, ws = parse_model_service(raw, {})
    vits = [w for w in ws if w.role is Role.VIT]
    assert [(w.ip, w.grpc_port, w.http_port, w.group) for w in vits] == [("10.0.0.9", 8089, 8088, ""),
                                                                          ("10.0.0.3", 8089, 8088, "g1")]
    env = {"MODEL_SERVICE_CONFIG": json.dumps(raw), "WHALE_MASTER_CONFIG": json.dumps({"vitLoadBalanceStrategy":
                                                                                     "ROUND_ROBIN"})}
    settings = load_settings(env)
    assert settings.deploy is Deploy.DISAGGREGATED  # VIT workers do not change the deployment
    assert settings.master.vit_load_balance_strategy == "ROUND_ROBIN"


def _pd_cluster() -> Cluster:
    return Cluster([WorkerAddr("10.0.0.1", 8089, 8088, Role.PREFILL, "g1"),
                    WorkerAddr("10.0.0.2", 8089, 8088, Role.DECODE, "g1"),
                    WorkerAddr("10.0.0.3", 8089, 8088, Role.VIT, "g1"),
                    WorkerAddr("10.0.0.4", 8089, 8088, Role.VIT, ""),
                    WorkerAddr("10.0.0.5", 8089, 8088, Role.VIT, "")])


def test_decisions_carry_a_vit_worker_of_the_targets_group_and_never_a_dead_one() -> None:
    cluster = _pd_cluster()
    g1_vit, vit_a, vit_b = cluster.of_role(Role.VIT)
    router = build_router(cluster, Deploy.DISAGGREGATED, "ROUND_ROBIN", "ROUND_ROBIN", rng=random.Random(0),
                          clock=lambda: 0.0, vit_strategy="ROUND_ROBIN")
    lease = router.route(RouteRequest(1, 100))
    assert lease.decision.vit is g1_vit  # the prefill's group has a VIT worker: that one
    assert lease.decision.workers == (lease.decision.target, lease.decision.decode, g1_vit)
    assert g1_vit.in_flight == 1  # the call is counted on its VIT worker too, and given back once
    router.release(lease)
    assert g1_vit.in_flight == 0
    g1_vit.healthy = False  # the group's only VIT is out: any other will do
    picks = {router.route(RouteRequest(i, 100)).decision.vit.key for i in range(4)}  # type: ignore[union-attr]
    assert picks == {vit_a.key, vit_b.key}
    vit_a.healthy = vit_b.healthy = False  # no failing open for VIT workers
    with pytest.raises(NoWorkerAvailable) as ei:
        router.route(RouteRequest(9, 100))
    assert ei.value.role == "VIT"
    assert not router.can_route()


def test_without_vit_workers_decisions_have_none() -> None:
    cluster = Cluster([WorkerAddr("10.0.0.1", 8089, 8088, Role.PDFUSION)])
    router = build_router(cluster, Deploy.PD_FUSION, "RANDOM", rng=random.Random(0), clock=lambda: 0.0)
    d = router.route(RouteRequest(1, 100)).decision
    assert d.vit is None and d.workers == (d.target,)


# ------------------------------------------------------------ live


async def test_vit_status_polled_on_multimodal_service(workers, gateways) -> None:
    p, d, v = await workers("PREFILL"), await workers("DECODE"), await workers("VIT")
    gw = await gateways([worker_addr(p), worker_addr(d), worker_addr(v)], master=FAST_CHECKS)
    state = gw.cluster.get(worker_addr(v).key)
    assert state is not None
    await wait_for(lambda: state.status_version > 0, what="the VIT worker's MultimodalRpcService status")
    assert state.reported_role is Role.VIT and state.healthy
    # the mock VIT serves no RpcService at all: the status came from MultimodalRpcService
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{v.port}")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await ch.unary_unary(wire.GET_WORKER_STATUS, request_serializer=pb.StatusVersionPB.SerializeToString,
                                 response_deserializer=pb.WorkerStatusPB.FromString)(pb.StatusVersionPB(), timeout=5)
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await ch.close()
    v.alive = False
    await wait_for(lambda: not state.healthy, what="the VIT worker out after alive: false")


async def test_pd_call_names_the_vit_in_role_addrs_and_schedule_lists_it(workers, gateways, channels) -> None:
    p, d, v = await workers("PREFILL"), await workers("DECODE"), await workers("VIT")
    gw = await gateways([worker_addr(p), worker_addr(d), worker_addr(v)], master=FAST_CHECKS)
    stub = stream_stub(channels(gw.grpc_port))
    assert [m async for m in stub(generate_input(1), timeout=10)]
    assert _role_addrs(p) == [_entry("PREFILL", p.port), _entry("DECODE", d.port), _entry("VIT", v.port)]
    vit_state = gw.cluster.get(worker_addr(v).key)
    assert vit_state is not None and vit_state.in_flight == 0 and vit_state.dispatched_total == 1
    reply = await _schedule(channels(gw.grpc_port))(
        fpb.FlexlbScheduleRequestPB(request_id=2, seq_len=64), timeout=5)  # DIRECT: the decision only
    assert reply.success, reply.error_message
    assert ("VIT", v.port) in [(s.role, s.grpc_port) for s in reply.server_status]
    assert {s.role for s in reply.server_status} == {"PREFILL", "DECODE", "VIT"}


async def test_fused_call_gets_the_vit_and_keeps_other_client_entries(workers, gateways, channels) -> None:
    f, v = await workers("PDFUSION"), await workers("VIT")
    gw = await gateways([worker_addr(f), worker_addr(v)], master=FAST_CHECKS)
    inp = generate_input(3)
    inp.generate_config.role_addrs.extend([wire.role_addr(pb.RoleAddrPB.VIT, "10.9.9.9", 1, 0),
                                           wire.role_addr(pb.RoleAddrPB.PDFUSION, "10.9.9.8", 2, 0)])
    assert [m async for m in stream_stub(channels(gw.grpc_port))(inp, timeout=10)]
    # the gateway's VIT replaces the client's; the client's PDFUSION entry stays
    assert _role_addrs(f) == [_entry("VIT", v.port), ("PDFUSION", "10.9.9.8", 2)]


async def test_no_vit_in_rotation_is_8405(workers, gateways, channels) -> None:
    p, d, v = await workers("PREFILL"), await workers("DECODE"), await workers("VIT")
    gw = await gateways([worker_addr(p), worker_addr(d), worker_addr(v)], master=FAST_CHECKS)
    state = gw.cluster.get(worker_addr(v).key)
    assert state is not None
    v.alive = False
    await wait_for(lambda: not state.healthy, what="the only VIT worker out")
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stream_stub(channels(gw.grpc_port))(generate_input(4), timeout=10):
            pass
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE and engine_error_code(ei.value) == wire.NO_VIT_WORKER
    assert p.calls_received == 0
    reply = await _schedule(channels(gw.grpc_port))(fpb.FlexlbScheduleRequestPB(request_id=5, seq_len=64), timeout=5)
    assert not reply.success and reply.code == 8405 and "VIT" in reply.error_message
    assert gw.cluster.ledger.reservations == 0 and gw.cluster.ledger.calls == 0


async def test_client_role_addrs_kept_unless_the_gateway_chooses_that_role(workers, gateways, channels) -> None:
    p, d = await workers("PREFILL"), await workers("DECODE")
    gw = await gateways([worker_addr(p), worker_addr(d)])
    inp = generate_input(6)
    inp.generate_config.role_addrs.extend([
        wire.role_addr(pb.RoleAddrPB.DECODE, "10.9.9.1", 11, 10),  # the decode strategy owns the pair: replaced
        wire.role_addr(pb.RoleAddrPB.VIT, "10.9.9.2", 21, 20),  # no VIT workers here: the client's is kept
        pb.RoleAddrPB(ip="10.9.9.3", grpc_port=31, role_str="RoleType.PREFILL"),  # string only: still PREFILL
    ])
    stub = stream_stub(channels(gw.grpc_port))
    assert [m async for m in stub(inp, timeout=10)]
    assert _role_addrs(p) == [_entry("PREFILL", p.port), _entry("DECODE", d.port), ("VIT", "10.9.9.2", 21)]
    # the call completed, so the prefill reached the gateway's decode (the client's address does not exist)
    decode_state = gw.cluster.get(worker_addr(d).key)
    assert decode_state is not None and decode_state.dispatched_total == 1
