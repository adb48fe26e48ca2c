"""A worker that fails every call fast with an engine error draws no traffic, under every strategy.

It answers each call at once, so to a load-aware strategy it looks like the idlest, quickest worker.
The gateway must eject it (and say so in metrics and the log), fail its calls over before their first
message so clients hardly notice, and take it back through a probe once it recovers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
import pytest

from flexlb import wire
from flexlb.balancer.strategies import strategy_names
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr

CALLS = 600
CONCURRENCY = 16
# fast probes; an ejection (2 s, then 4 s, ...) spans most of a run even on a slow machine: each return
# costs a few calls (those routed to it before the next three failures in a row eject it again)
MASTER = {"health_check_interval_ms": 50, "outlier_base_ejection_ms": 2000}


async def _load(stub, first_id: int, calls: int) -> int:  # type: ignore[no-untyped-def]
    """Send `calls` calls, CONCURRENCY at a time; the number that failed."""
    failed = 0
    ids = iter(range(first_id, first_id + calls))

    async def client() -> None:
        nonlocal failed
        for rid in ids:
            try:
                # a prompt of its own: cache-aware strategies spread such traffic instead of keeping it together
                got = [m async for m in stub(generate_input(rid, first_token=rid), timeout=10)]
                failed += len(got) != 8
            except grpc.aio.AioRpcError:
                failed += 1

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return failed


@pytest.mark.parametrize("strategy", strategy_names())
async def test_a_worker_failing_every_call_fast_draws_no_traffic(strategy, mock_workers, gateways, channels,
                                                                caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="flexlb.call")
    good = [await mock_workers() for _ in range(2)]
    # GET_HOST_FAILED (INTERNAL with ErrorDetailsPB 8200): the worker failed, not the request
    bad = await mock_workers(faults=Faults(error_rate=1.0, error_code=wire.GET_HOST_FAILED))
    gw = await gateways([worker_addr(w) for w in (*good, bad)], strategy=strategy, master=MASTER)
    stub = stream_stub(channels(gw.grpc_port))
    failed = await _load(stub, 10_000, CALLS)
    bad_key = worker_addr(bad).key
    assert bad.calls_received < 0.05 * CALLS, (bad.calls_received, [w.calls_received for w in good])
    assert failed < 0.02 * CALLS
    ejections = sum(s.value for s in gw.metrics.worker_ejections.collect()[0].samples
                    if s.name.endswith("_total") and s.labels["worker"] == bad_key)
    assert ejections >= 1
    assert any("ejected" in r.getMessage() and bad_key in r.getMessage() for r in caplog.records)
    assert any("failover" in r.getMessage() and bad_key in r.getMessage() for r in caplog.records)
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


@pytest.mark.parametrize("strategy", ["COST_BASED_PREFILL", "ROUND_ROBIN"])
async def test_the_failing_worker_comes_back_through_a_probe_once_it_recovers(strategy, mock_workers, gateways,
                                                                             channels) -> None:
    good = await mock_workers()
    bad = await mock_workers(faults=Faults(error_rate=1.0, error_code=wire.GET_HOST_FAILED))
    gw = await gateways([worker_addr(good), worker_addr(bad)], strategy=strategy,
                        master={"health_check_interval_ms": 50, "outlier_base_ejection_ms": 200})
    stub = stream_stub(channels(gw.grpc_port))
    assert await _load(stub, 40_000, 4 * CONCURRENCY) == 0
    state = gw.cluster.get(worker_addr(bad).key)
    assert state is not None and state.ejections >= 1
    bad.config = dataclasses.replace(bad.config, faults=Faults())
    before = bad.calls_received
    for round_ in range(100):  # bounded: the ejection is 200 ms x its count, probes every 50 ms
        if bad.calls_received > before and not state.probing:
            break
        assert await _load(stub, 41_000 + 100 * round_, 2 * CONCURRENCY) == 0
    assert bad.calls_received > before and not state.probing
    await wait_for(lambda: gw.cluster.ledger.calls == 0, what="in-flight back to 0")


async def test_the_failing_worker_shows_as_ejected_in_the_metrics(mock_workers, gateways, channels) -> None:
    good = await mock_workers()
    bad = await mock_workers(faults=Faults(error_rate=1.0, error_code=wire.GET_HOST_FAILED))
    # a long ejection, so the state is still there to read
    gw = await gateways([worker_addr(good), worker_addr(bad)], strategy="COST_BASED_PREFILL",
                        master={"health_check_interval_ms": 50, "outlier_base_ejection_ms": 60_000})
    stub = stream_stub(channels(gw.grpc_port))
    assert await _load(stub, 30_000, 40) == 0
    key = worker_addr(bad).key
    sample = gw.metrics.registry.get_sample_value
    assert sample("flexlb_worker_state", {"worker": key, "role": "PDFUSION", "state": "ejected"}) == 1
    assert sample("flexlb_worker_healthy", {"worker": key, "role": "PDFUSION"}) == 0
    assert sample("flexlb_worker_ejections_total", {"worker": key, "role": "PDFUSION",
                                                    "reason": "consecutive_5xx"}) == 1
    # the calls routed to it before the third failure in a row ejected it, each failed over
    assert 3 <= bad.calls_received <= CONCURRENCY
    assert sample("flexlb_failovers_total", {"method": "GenerateStreamCall", "code": "INTERNAL"}) == bad.calls_received
