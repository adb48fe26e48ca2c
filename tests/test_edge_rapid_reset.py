"""Rapid Reset (CVE-2023-44487): streams opened and reset at once cost the client nothing and the server a
routed call each. The connection goes once enough of its streams are reset early; a stream reset in the
same read as its request is never routed; resets after the response started are not premature."""

from __future__ import annotations

import asyncio

from bench.attacks import CANCEL, ENHANCE_YOUR_CALM, generate_message, rapid_reset, rst_frame
from flexlb.config import EdgeLimits
from flexlb.sim.engine import EngineParams
from tests.conftest import worker_addr
from tests.edge_support import assert_same_pool, released, routing_decisions, served, unhandled, upstream_pool

WAIT_S = 5.0


async def test_rapid_reset_ends_the_connection(mock_workers, gateways, channels, raw, loop_errors, caplog) -> None:
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(premature_reset_min_streams=50))
    await served(channels(gw.grpc_port))
    pool = upstream_pool(gw)
    attack = rapid_reset("127.0.0.1", gw.grpc_port, streams=3000, batch=100, timeout_s=WAIT_S)
    outcome, _ = await asyncio.gather(attack, served(channels(gw.grpc_port), 901))
    if gw.edge is not None:
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
        assert outcome.figures["streams"] < 3000, f"the attacker got all its streams in: {outcome}"
        # two well-behaved calls, and the few reset calls that straddle a read
        assert routing_decisions(gw) <= 2 + 3000 // 20, f"{routing_decisions(gw)} calls routed"
        assert_same_pool(gw, pool)
    await released(gw)
    await served(channels(gw.grpc_port), 902)
    assert not unhandled(loop_errors, caplog)


async def test_resets_after_the_response_started_are_not_premature(mock_workers, gateways, channels, raw,
                                                                   loop_errors, caplog) -> None:
    # paced decode: each call is still streaming when it is reset
    paced = EngineParams(prefill_base_ms=1.0, prefill_ms_per_uncached_token=0.0, decode_step_base_ms=1.0,
                         decode_step_ms_per_running=0.0)
    worker = await mock_workers(time_scale=1.0, params=paced)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(premature_reset_min_streams=50))
    c = await raw(gw.grpc_port)
    sids = [c.send_call(generate_message(i, max_new_tokens=100_000)) for i in range(60)]
    ok = await c.wait_until(lambda: all(c.record(s).data_bytes > 0 for s in sids) or c.ended(), WAIT_S)
    assert ok and not c.ended(), c.describe()
    c.send(*(rst_frame(s, CANCEL) for s in sids))
    assert await c.ping(WAIT_S), f"late resets were counted as premature: {c.describe()}"
    await released(gw)
    assert await c.status(c.send_call(), WAIT_S) == (0, "")
    await served(channels(gw.grpc_port))
    assert not unhandled(loop_errors, caplog)


async def test_reset_in_the_same_read_is_never_routed(mock_workers, gateways, channels, loop_errors,
                                                      caplog) -> None:
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)])  # default premature_reset_min_streams (500): no GOAWAY here
    outcome = await rapid_reset("127.0.0.1", gw.grpc_port, streams=400, batch=100, timeout_s=WAIT_S)
    if gw.edge is not None:
        assert outcome.ended_by == "open", outcome
        # a few triples straddle a read (or a slice of a read); the rest must never cost a routing decision
        assert routing_decisions(gw) <= 400 // 20, f"{routing_decisions(gw)} of 400 reset calls were routed"
        assert worker.calls_received <= 400 // 20
    await released(gw)
    await served(channels(gw.grpc_port))
    assert not unhandled(loop_errors, caplog)
