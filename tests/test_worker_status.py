"""What the gateway reads from GetWorkerStatus and acts on: alive, role, the engine's queue, max_seq_len."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from flexlb import wire
from flexlb.admin_http.views import worker_view
from flexlb.balancer.factory import build_router
from flexlb.balancer.request import Deploy, PromptTooLong, RouteRequest
from flexlb.balancer.workers import Cluster, Role, WorkerAddr, WorkerState
from flexlb.pb import flexlb_schedule_service_pb2 as fpb
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import MockWorker
from flexlb.upstream.worker_status import NOT_ALIVE, WRONG_ROLE, apply_status
from tests.conftest import engine_error_code, generate_input, stream_stub, wait_for, worker_addr

FAST_CHECKS = {"health_check_interval_ms": 20, "health_check_timeout_ms": 500}


@pytest.fixture
def workers(mock_workers: Callable[..., Awaitable[MockWorker]]) -> Callable[..., Awaitable[MockWorker]]:
    """Mock workers with any MockWorkerConfig field (max_seq_len, role, ...), engine time 0."""

    def start(role: str = "PDFUSION", **config: Any) -> Awaitable[MockWorker]:
        return mock_workers(role, **{"time_scale": 0.0, **config})

    return start


def _state(role: Role = Role.PDFUSION) -> WorkerState:
    return WorkerState(WorkerAddr("10.0.0.1", 8089, 8088, role))


def _reply(**fields: Any) -> pb.WorkerStatusPB:
    base: dict[str, Any] = {"status_version": 10, "alive": True, "role": "RoleType.PDFUSION"}
    return pb.WorkerStatusPB(**{**base, **fields})


# ------------------------------------------------------------ the report, read


def test_status_fields_reach_the_load_view() -> None:
    w = _state()
    w.in_flight = 2  # this gateway's own calls there
    out = apply_status(w, _reply(waiting_query_len=5, running_query_len=3, step_latency_ms=7.5, max_seq_len=4096,
                                 max_batch_tokens_size=8192, available_kv_cache=100, total_kv_cache=400))
    assert out == ""
    assert (w.reported_waiting, w.reported_running_queries, w.step_latency_ms) == (5, 3, 7.5)
    assert (w.max_seq_len, w.max_batch_tokens, w.kv_available_tokens, w.kv_total_tokens) == (4096, 8192, 100, 400)
    assert w.reported_role is Role.PDFUSION and w.reported_alive
    assert w.untracked_waiting == 3  # 5 waiting there, at most 2 of them ours
    view = worker_view(w, 0.0, build_router(Cluster([w.addr]), Deploy.PD_FUSION, "RANDOM", rng=random.Random(0),
                                            clock=lambda: 0.0).ttft, None)
    assert view["waiting_query_len"] == 5 and view["running_query_len"] == 3 and view["untracked_waiting"] == 3
    assert view["step_latency_ms"] == 7.5 and view["max_seq_len"] == 4096 and view["reported_role"] == "PDFUSION"


def test_alive_false_and_wrong_role_keep_a_worker_out_until_a_good_report() -> None:
    w = _state(Role.PREFILL)
    assert apply_status(w, _reply(role="RoleType.PREFILL", alive=False)) == NOT_ALIVE
    assert "alive: false" in w.notes["status"]
    # an empty answer (status_version 0) and an older one change nothing: the verdict stands
    assert apply_status(w, pb.WorkerStatusPB()) == NOT_ALIVE
    assert apply_status(w, _reply(status_version=5, role="RoleType.PREFILL")) == NOT_ALIVE
    assert apply_status(w, _reply(status_version=11, role="RoleType.DECODE")) == WRONG_ROLE
    assert "reports role DECODE, configured as PREFILL" in w.notes["status"]
    # the enum is read when the string is not set
    assert apply_status(w, _reply(status_version=12, role="", role_type=pb.ROLE_TYPE_PREFILL)) == ""
    assert "status" not in w.notes
    # neither set: nothing said about the role (PDFUSION is the enum's default)
    assert apply_status(w, _reply(status_version=13, role="")) == "" and w.reported_role is None


def test_prompt_longer_than_every_max_seq_len_is_refused_and_shorter_workers_skipped() -> None:
    cluster = Cluster([WorkerAddr("10.0.0.1", 8089, 8088, Role.PDFUSION), WorkerAddr("10.0.0.2", 8089, 8088,
                                                                                       Role.PDFUSION)])
    small, big = cluster.of_role(Role.PDFUSION)
    small.max_seq_len, big.max_seq_len = 1000, 4000
    router = build_router(cluster, Deploy.PD_FUSION, "ROUND_ROBIN", rng=random.Random(0), clock=lambda: 0.0)
    for i in range(4):
        assert router.route(RouteRequest(i, 2000)).decision.target is big
    big.healthy = False  # out of rotation: the call still may not go to the worker that cannot take it
    assert router.route(RouteRequest(9, 2000)).decision.target is big
    with pytest.raises(PromptTooLong) as ei:
        router.route(RouteRequest(10, 4001))
    assert ei.value.max_seq_len == 4000 and "4001 tokens" in str(ei.value)
    # a batch of short sequences is judged by its longest one, not by its total
    lease = router.route(RouteRequest(11, 3000, seq_len_tokens=900), pair=False)
    assert lease.decision.target in (small, big)
    # a worker that has not reported one takes anything
    small.max_seq_len = 0
    assert router.route(RouteRequest(12, 10**6)).decision.target is small


def test_engine_queue_of_other_senders_counts_in_the_cost() -> None:
    cluster = Cluster([WorkerAddr("10.0.0.1", 8089, 8088, Role.PDFUSION), WorkerAddr("10.0.0.2", 8089, 8088,
                                                                                       Role.PDFUSION)])
    busy, idle = cluster.of_role(Role.PDFUSION)
    router = build_router(cluster, Deploy.PD_FUSION, "COST_BASED_PREFILL", rng=random.Random(0), clock=lambda: 0.0)
    busy.last_chosen_seq, idle.last_chosen_seq = 0, 1  # without the report, busy would win the tie
    apply_status(busy, _reply(waiting_query_len=4))
    for i in range(3):
        lease = router.route(RouteRequest(i, 500))
        assert lease.decision.target is idle
        router.release(lease)


# ------------------------------------------------------------ live: mock workers and the gateway


async def test_alive_false_takes_a_worker_out_and_back(workers, gateways, channels) -> None:
    a, b = await workers(), await workers()
    gw = await gateways([worker_addr(a), worker_addr(b)], master=FAST_CHECKS)
    sa = gw.cluster.get(worker_addr(a).key)
    assert sa is not None
    await wait_for(lambda: sa.status_version > 0, what="a's first status report")
    a.alive = False
    await wait_for(lambda: not sa.healthy, what="a out of rotation after reporting alive: false")
    assert "alive: false" in sa.notes["status"] and gw.info()["workers"][0]["state"] == "unhealthy"
    stub = stream_stub(channels(gw.grpc_port))
    before = a.calls_received
    for i in range(6):
        assert [m async for m in stub(generate_input(100 + i), timeout=10)]
    assert a.calls_received == before and b.calls_received >= 6
    a.alive = True
    await wait_for(lambda: sa.healthy, what="a back in rotation once it reports alive again")
    assert "status" not in sa.notes
    for i in range(6):
        assert [m async for m in stub(generate_input(200 + i), timeout=10)]
    assert a.calls_received > before


async def test_worker_of_another_role_is_taken_out(workers, gateways, channels) -> None:
    right = await workers(role="PDFUSION")
    wrong = await workers(role="PREFILL")
    addr = WorkerAddr("127.0.0.1", wrong.port, wrong.port - 1, Role.PDFUSION)  # configured as fused by mistake
    gw = await gateways([worker_addr(right), addr], master=FAST_CHECKS)
    state = gw.cluster.get(addr.key)
    assert state is not None
    await wait_for(lambda: not state.healthy, what="the PREFILL worker configured as PDFUSION out of rotation")
    assert "reports role PREFILL, configured as PDFUSION" in state.notes["status"]
    stub = stream_stub(channels(gw.grpc_port))
    for i in range(4):
        assert [m async for m in stub(generate_input(300 + i), timeout=10)]
    assert wrong.calls_received == 0


async def test_status_view_shows_the_engine_report(workers, gateways) -> None:
    w = await workers(max_seq_len=2048)
    gw = await gateways([worker_addr(w)], master=FAST_CHECKS)
    state = gw.cluster.all()[0]
    await wait_for(lambda: state.max_seq_len == 2048, what="max_seq_len from GetWorkerStatus")
    view = gw.info()["workers"][0]
    assert view["max_seq_len"] == 2048 and view["max_batch_tokens_size"] > 0
    assert view["reported_role"] == "PDFUSION" and view["reported_alive"] is True
    assert {"waiting_query_len", "running_query_len", "step_latency_ms", "untracked_waiting"} <= set(view)


async def test_too_long_prompt_is_refused_before_dispatch(workers, gateways, channels) -> None:
    short, longer = await workers(max_seq_len=100), await workers(max_seq_len=200)
    gw = await gateways([worker_addr(short), worker_addr(longer)], master=FAST_CHECKS)
    await wait_for(lambda: all(s.max_seq_len for s in gw.cluster.all()), what="both max_seq_len reports")
    stub = stream_stub(channels(gw.grpc_port))
    # 150 tokens: only the 200-token worker takes it, every time
    for i in range(4):
        assert [m async for m in stub(generate_input(400 + i, n_tokens=150), timeout=10)]
    assert short.calls_received == 0 and longer.calls_received == 4
    # 250 tokens: nobody does; the gateway answers as the engine would, and nothing reaches a worker
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stub(generate_input(500, n_tokens=250), timeout=10):
            pass
    assert ei.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert engine_error_code(ei.value) == wire.LONG_PROMPT_ERROR
    assert "250 tokens" in (ei.value.details() or "")
    assert short.calls_received == 0 and longer.calls_received == 4
    # what the gateway refuses, the mock engine refuses too (the same answer, straight from the worker)
    direct = stream_stub(channels(longer.port))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in direct(generate_input(501, n_tokens=250), timeout=10):
            pass
    assert ei.value.code() == grpc.StatusCode.OUT_OF_RANGE and engine_error_code(ei.value) == wire.LONG_PROMPT_ERROR


async def test_schedule_refuses_a_too_long_prompt_with_8406(workers, gateways, channels) -> None:
    w = await workers(max_seq_len=100)
    gw = await gateways([worker_addr(w)], master=FAST_CHECKS)
    await wait_for(lambda: gw.cluster.all()[0].max_seq_len == 100, what="max_seq_len report")
    schedule = channels(gw.grpc_port).unary_unary(
        "/FlexlbService/Schedule", request_serializer=fpb.FlexlbScheduleRequestPB.SerializeToString,
        response_deserializer=fpb.FlexlbScheduleResponsePB.FromString)
    ok = await schedule(fpb.FlexlbScheduleRequestPB(request_id=1, seq_len=100), timeout=5)
    assert ok.success and ok.code == 200
    reply = await schedule(fpb.FlexlbScheduleRequestPB(request_id=2, seq_len=101), timeout=5)
    assert not reply.success and reply.code == 8406 and "max_seq_len" in reply.error_message
    assert not reply.server_status and gw.cluster.ledger.reservations == 0
