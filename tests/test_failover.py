"""Failover before the first byte, passive ejection and the time-to-first-token bound, on both engines."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr


async def _dead_worker_addr(mock_workers):  # type: ignore[no-untyped-def]
    """The address of a worker that was started and stopped: connections to it are refused."""
    w = await mock_workers()
    addr = worker_addr(w)
    await w.stop(grace_s=0)
    return addr


async def test_calls_fail_over_from_a_dead_worker_which_gets_ejected(mock_workers, gateways, channels) -> None:
    dead = await _dead_worker_addr(mock_workers)
    live = await mock_workers()
    # active checks off: this is about what real traffic alone teaches the gateway
    gw = await gateways([dead, worker_addr(live)], strategy="ROUND_ROBIN", master={"health_check_interval_ms": 0})
    stub = stream_stub(channels(gw.grpc_port))
    for i in range(12):
        assert len([m async for m in stub(generate_input(800 + i), timeout=10)]) == 8
    assert live.calls_received == 12
    state = gw.cluster.get(dead.key)
    assert state is not None
    # three consecutive failures eject it; until a probe succeeds it stays out (not flooded back)
    assert state.probing and state.ejections == 1
    failovers = {s.labels["code"]: s.value for s in gw.metrics.failovers.collect()[0].samples
                 if s.name.endswith("_total")}
    assert failovers.get("UNAVAILABLE", 0) == 3
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_every_worker_dead_ends_with_unavailable_promptly(mock_workers, gateways, channels) -> None:
    dead = [await _dead_worker_addr(mock_workers) for _ in range(2)]
    gw = await gateways(dead)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stream_stub(channels(gw.grpc_port))(generate_input(820), timeout=10):
            pass
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert loop.time() - t0 < 5
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_hanging_worker_fails_over_after_the_first_token_bound(mock_workers, gateways, channels) -> None:
    hung = await mock_workers(faults=Faults(hang=True))
    live = await mock_workers()
    gw = await gateways([worker_addr(hung), worker_addr(live)], strategy="ROUND_ROBIN",
                        master={"prefill_generate_timeout_ms": 300, "health_check_interval_ms": 0})
    stub = stream_stub(channels(gw.grpc_port))
    loop = asyncio.get_running_loop()
    for i in range(6):
        t0 = loop.time()
        assert len([m async for m in stub(generate_input(830 + i), timeout=10)]) == 8
        assert loop.time() - t0 < 3
    state = gw.cluster.get(worker_addr(hung).key)
    assert state is not None and state.probing  # ejected after consecutive time-outs
    # the hung worker saw its calls cancelled (nothing leaks there either)
    await wait_for(lambda: len(hung.cancelled_ids) == hung.calls_received, what="hung calls cancelled")
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_first_token_bound_without_another_worker_is_deadline_exceeded(mock_workers, gateways,
                                                                             channels) -> None:
    hung = await mock_workers(faults=Faults(hang=True))
    gw = await gateways([worker_addr(hung)], master={"prefill_generate_timeout_ms": 200})
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in stream_stub(channels(gw.grpc_port))(generate_input(840), timeout=10):
            pass
    assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for(lambda: 840 in hung.cancelled_ids, what="the upstream call cancelled")
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_admission_rejection_fails_over_without_ejecting(mock_workers, gateways, channels) -> None:
    flaky = await mock_workers(faults=Faults(error_rate=1.0, error_code=8429))
    other = await mock_workers()
    gw = await gateways([worker_addr(flaky), worker_addr(other)], strategy="ROUND_ROBIN",
                        master={"health_check_interval_ms": 0})
    # RESOURCE_EXHAUSTED before any message is admission: it fails over to the other worker
    assert len([m async for m in stream_stub(channels(gw.grpc_port))(generate_input(850), timeout=10)]) == 8
    assert flaky.calls_received == 1 and other.calls_received == 1
    state = gw.cluster.get(worker_addr(flaky).key)
    assert state is not None and state.consecutive_failures == 0  # busy is not sick: no ejection streak


async def test_active_checks_take_a_dead_worker_out_and_a_restarted_one_back(mock_workers, gateways) -> None:
    w = await mock_workers()
    addr = worker_addr(w)
    gw = await gateways([addr, worker_addr(await mock_workers())],
                        master={"health_check_interval_ms": 200, "health_check_timeout_ms": 100})
    state = gw.cluster.get(addr.key)
    assert state is not None
    await wait_for(lambda: state.last_probe_ok_s > 0, what="a first good probe")
    assert state.kv_total_tokens > 0  # GetWorkerStatus fed the load view
    await w.stop(grace_s=0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await wait_for(lambda: not state.healthy, timeout_s=2, what="the dead worker out of rotation")
    assert loop.time() - t0 <= 2 * 0.2 + 0.15  # within two intervals (plus a probe timeout)
    # the same port comes back: one good probe returns it
    restarted = await mock_workers(port=addr.grpc_port)
    assert restarted.port == addr.grpc_port
    t0 = loop.time()
    await wait_for(lambda: state.healthy, timeout_s=2, what="the restarted worker back in rotation")
    assert loop.time() - t0 <= 2 * 0.2 + 0.15


async def test_probe_readmits_an_ejected_worker_only_after_its_ejection(mock_workers, gateways, channels) -> None:
    dead = await _dead_worker_addr(mock_workers)
    live = await mock_workers()
    gw = await gateways([dead, worker_addr(live)], strategy="ROUND_ROBIN",
                        master={"health_check_interval_ms": 0, "outlier_base_ejection_ms": 100})
    stub = stream_stub(channels(gw.grpc_port))
    for i in range(6):
        assert len([m async for m in stub(generate_input(860 + i), timeout=10)]) == 8
    state = gw.cluster.get(dead.key)
    assert state is not None and state.probing
    gw.router.outliers.probe_ok(state, state.ejected_until_s - 0.05)  # a probe during the ejection: stays out
    assert state.probing
    gw.router.outliers.probe_ok(state, state.ejected_until_s)
    assert not state.probing


async def test_pd_decode_dying_mid_stream_surfaces_promptly(mock_workers, gateways, channels) -> None:
    prefill, decode = await mock_workers("PREFILL", time_scale=5.0), await mock_workers("DECODE", time_scale=5.0)
    gw = await gateways([worker_addr(prefill), worker_addr(decode)], master={"health_check_interval_ms": 0})
    call = stream_stub(channels(gw.grpc_port))(generate_input(870, max_new_tokens=10_000), timeout=30)
    assert (await call.read()).flatten_output.aux_info[0].pd_sep  # the prefill's first token
    await call.read()  # and a decode token: the decode leg is streaming
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await decode.stop(grace_s=0)
    code = None
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
        code = await call.code()
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    assert code is not None and code != grpc.StatusCode.OK
    assert loop.time() - t0 < 3  # no call waits for a peer that is gone
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_batch_generate_call_fails_over_too(mock_workers, gateways, channels) -> None:
    dead = await _dead_worker_addr(mock_workers)
    live = await mock_workers()
    gw = await gateways([dead, worker_addr(live)], strategy="ROUND_ROBIN", master={"health_check_interval_ms": 0})
    stub = channels(gw.grpc_port).unary_unary(
        "/RpcService/BatchGenerateCall", request_serializer=pb.BatchGenerateInputPB.SerializeToString,
        response_deserializer=pb.BatchGenerateOutputsPB.FromString,
    )
    for i in range(3):
        reply = await stub(pb.BatchGenerateInputPB(inputs=[generate_input(880 + i, max_new_tokens=3)]), timeout=10)
        assert len(reply.results) == 1
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")
