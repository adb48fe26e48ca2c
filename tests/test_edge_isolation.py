"""Whatever one client does, it pays alone: the pooled worker connection stays the same object, nothing is
left in flight once the attacker is gone, a concurrent well-behaved client keeps being answered, nothing
raises; the prefill queue's slots cannot be taken by requests that are never valid; max_new_tokens is capped."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

import bench.attacks as attacks
from bench.attacks import RawClient, generate_message, malformed_request
from flexlb.config import EdgeLimits
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, stream_stub, worker_addr
from tests.edge_support import assert_same_pool, released, served, unhandled, upstream_pool

WAIT_S = 5.0
# the stream idle timeout ends the slow reader's calls; at 1 s a well-behaved call stalled by a busy machine
# is not taken for idle (0.3 s was, on 2 loaded cores)
LIMITS = EdgeLimits(premature_reset_min_streams=50, max_concurrent_streams=100, stream_idle_timeout_s=1.0)

# attack name → small knobs (the benchmark runs the same coroutines at their default sizes)
ATTACKS: dict[str, dict[str, Any]] = {
    "uppercase_header": {"streams": 20},
    "empty_header_name": {"streams": 5},
    "malformed_header": {"case": "connection", "streams": 20},
    "continuation_flood": {"frames": 500},
    "big_ping": {"send_payload": False},
    "ping_flood": {"count": 5000},
    "settings_flood": {"count": 5000},
    "priority_flood": {"count": 2000},
    "settings_initial_window_toggle": {"streams": 50, "toggles": 1000},
    "request_body_flood": {"streams": 4, "message_bytes": 256 * 1024, "stall_s": 0.2},
    "header_block_of_empty_literals": {"block_bytes": 48 * 1024},
    "gzip_bomb": {"inflated_bytes": 16 << 20},
    "rapid_reset": {"streams": 1000},
    "too_many_streams": {"streams": 300, "max_new_tokens": 50},
    "slow_reader": {"streams": 5, "max_new_tokens": 100_000, "hold_s": 0.5},
    "empty_data_flood": {"frames": 200},
    "window_update_flood": {"frames": 2000},
    "grpc_timeout_malformed": {"streams": 3},
    "half_preface": {"connections": 5, "hold_s": 0.1},
}


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_attack_stays_with_the_attacker(name: str, mock_workers, gateways, channels, loop_errors,
                                              caplog) -> None:
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], limits=LIMITS, max_receive_message_bytes=1 << 20)
    channel = channels(gw.grpc_port)
    await served(channel, 800)
    pool = upstream_pool(gw)
    assert gw.edge is None or pool, "the worker connection was not pooled"

    async def keep_calling() -> int:
        done = 0
        while not attack_done.is_set() and done < 200:  # cap: the attack ends well before
            await served(channel, 801 + done)
            done += 1
        return done

    attack_done = asyncio.Event()

    async def attack() -> attacks.AttackOutcome:
        try:
            return await attacks.ATTACKS[name]("127.0.0.1", gw.grpc_port, **ATTACKS[name])
        finally:
            attack_done.set()

    outcome, calls = await asyncio.gather(attack(), keep_calling())
    assert calls >= 1
    assert_same_pool(gw, pool)
    await released(gw, f"calls of {outcome} released")
    assert_same_pool(gw, pool)
    await served(channel, 999)
    assert not unhandled(loop_errors, caplog)


async def test_max_new_tokens_cap(mock_workers, gateways, channels) -> None:
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(max_new_tokens=100))
    stub = stream_stub(channels(gw.grpc_port))
    assert len([m async for m in stub(generate_input(1, max_new_tokens=100), timeout=WAIT_S)]) == 100
    with pytest.raises(grpc.aio.AioRpcError) as err:
        [m async for m in stub(generate_input(2, max_new_tokens=101), timeout=WAIT_S)]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100" in (err.value.details() or ""), err.value.details()
    batch = channels(gw.grpc_port).unary_unary("/RpcService/BatchGenerateCall")
    request = pb.BatchGenerateInputPB(inputs=[generate_input(3, max_new_tokens=5),
                                              generate_input(4, max_new_tokens=500)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await batch(request.SerializeToString(), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert worker.calls_received == 1
    await released(gw)


# requests the original relay rewrote and routed; invalid per RFC 9113 and refused by grpc C-core too
PIN_CASES = ("te_not_trailers", "unknown_pseudo", "nul_in_value", "cr_in_value", "lf_in_value", "missing_scheme")


async def test_malformed_requests_cannot_pin_prefill_slots(mock_workers, gateways, channels, raw, loop_errors,
                                                           caplog) -> None:
    # every first token takes 300 ms: with 2 slots, 42 routed calls would hold the queue for 6 s
    worker = await mock_workers(time_scale=1.0, faults=Faults(delay_ms=300))
    gw = await gateways([worker_addr(worker)], strategy="COST_BASED_PREFILL")
    c: RawClient = await raw(gw.grpc_port)
    sids = []
    for i in range(42):
        sid = c.new_stream_id()
        sids.append(sid)
        c.send_raw(malformed_request(c, sid, PIN_CASES[i % len(PIN_CASES)], generate_message(sid)))
    answered = await c.wait_until(
        lambda: all(c.record(s).rst is not None or c.record(s).ended for s in sids) or c.ended(), 3.0)
    # the attacker is still connected: none of its requests holds a slot or waits for one
    assert answered, f"malformed requests were not refused at once: {c.describe()}"
    assert gw.cluster.ledger.calls == 0 and len(gw.router.queue) == 0, (gw.cluster.ledger.calls, len(gw.router.queue))
    assert worker.calls_received == 0
    await served(channels(gw.grpc_port), timeout_s=2.0)
    assert not unhandled(loop_errors, caplog)
