"""The gateway in front of a batching engine: what it can prefill together reaches it together."""

from __future__ import annotations

import asyncio

import grpc

from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr


async def test_concurrent_calls_reach_a_batching_worker_together(mock_workers, gateways, channels) -> None:
    # each call spends 1 s before its first message; held at depth 2 they would arrive in waves of two
    w = await mock_workers(faults=Faults(delay_ms=1000))
    gw = await gateways([worker_addr(w)], strategy="COST_BASED_PREFILL", master={"health_check_interval_ms": 50})
    state = gw.cluster.get(worker_addr(w).key)
    assert state is not None
    await wait_for(lambda: state.max_batch_tokens > 0, what="the worker's batch budget from GetWorkerStatus")
    stub = stream_stub(channels(gw.grpc_port))
    first_messages = 0

    async def one(rid: int) -> None:
        nonlocal first_messages
        call = stub(generate_input(rid, n_tokens=500, first_token=rid), timeout=20)
        await call.read()
        first_messages += 1
        while await call.read() is not grpc.aio.EOF:
            pass

    calls = [asyncio.create_task(one(700 + i)) for i in range(8)]
    await wait_for(lambda: len(w.request_ids_seen) == 8, what="all eight calls at the worker")
    assert first_messages == 0  # they got there before any of them was answered: not in waves
    assert gw.dispatcher.held_calls() == 0
    await asyncio.gather(*calls)
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")
