"""Frames that are cheap to send and cost the gateway per frame or per stream: control-frame floods (read or
never read), PRIORITY / empty DATA / WINDOW_UPDATE floods, SETTINGS that stall the event loop. Each is
stopped by its limit (h2 engine) and never keeps a concurrent well-behaved client from being answered."""

from __future__ import annotations

import asyncio

import pytest

from bench.attacks import (
    ENHANCE_YOUR_CALM,
    PROTOCOL_ERROR,
    AttackOutcome,
    RawClient,
    empty_data_flood,
    ping_flood,
    priority_flood,
    priority_frame,
    settings_flood,
    settings_initial_window_toggle,
    settings_max_frame_size_zero,
    window_update_flood,
)
from flexlb.config import EdgeLimits
from flexlb.sim.engine import EngineParams
from tests.conftest import worker_addr
from tests.edge_support import H2_ONLY, released, served, unhandled

WAIT_S = 5.0
# decode paced at 1 ms a token: a long response is still flowing when the attack lands
PACED = EngineParams(prefill_base_ms=1.0, prefill_ms_per_uncached_token=0.0, decode_step_base_ms=1.0,
                     decode_step_ms_per_running=0.0)


async def _setup(mock_workers, gateways, time_scale: float = 0.0, **server):  # type: ignore[no-untyped-def]
    worker = await mock_workers(time_scale=time_scale, params=PACED)
    gw = await gateways([worker_addr(worker)], **server)
    return gw, worker


async def _during(attack, channel) -> AttackOutcome:  # type: ignore[no-untyped-def]
    """Run `attack` while a well-behaved client keeps calling; the attack's outcome."""
    outcome, _ = await asyncio.gather(attack, served(channel, timeout_s=WAIT_S))
    return outcome


@pytest.mark.parametrize("after_response", [False, True], ids=["first_settings", "after_response_started"])
async def test_settings_max_frame_size_zero(after_response: bool, mock_workers, gateways, channels, loop_errors,
                                            caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways, time_scale=1.0)
    outcome = await settings_max_frame_size_zero("127.0.0.1", gw.grpc_port, after_response=after_response,
                                                 max_new_tokens=2000, timeout_s=WAIT_S)
    if gw.edge is not None:
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", PROTOCOL_ERROR), outcome
    await served(channels(gw.grpc_port))
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def test_ping_flood_read_is_answered_and_others_served(mock_workers, gateways, channels, loop_errors,
                                                            caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways)
    outcome = await _during(ping_flood("127.0.0.1", gw.grpc_port, count=20_000, timeout_s=WAIT_S),
                            channels(gw.grpc_port))
    if gw.edge is not None:
        # a client that reads its ACKs is not limited (Envoy and nginx do not count PINGs)
        assert outcome.ended_by == "open" and outcome.figures["acks"] == 20_000, outcome
    await released(gw)
    assert not unhandled(loop_errors, caplog)


@H2_ONLY
@pytest.mark.parametrize("attack", [ping_flood, settings_flood], ids=["ping", "settings"])
async def test_control_flood_never_read_is_cut_off(attack, mock_workers, gateways, channels,
                                                   loop_errors, caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways)
    # sent until the gateway cuts the connection: the ACKs first fill the kernel's buffers (MBs on loopback),
    # then max_outbound_control_frames more are queued; the count is only a cap
    outcome = await _during(attack("127.0.0.1", gw.grpc_port, count=2_000_000, read=False, timeout_s=WAIT_S),
                            channels(gw.grpc_port))
    assert outcome.ended_by in ("goaway", "closed"), outcome
    if outcome.ended_by == "goaway":
        assert outcome.goaway_code == ENHANCE_YOUR_CALM, outcome
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def test_priority_flood(mock_workers, gateways, channels, raw, loop_errors, caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways)
    # within the allowance (max_inbound_priority_frames_per_stream x (1 + streams opened)): nothing happens
    c: RawClient = await raw(gw.grpc_port)
    c.send(*(priority_frame(1 + 2 * i, 0) for i in range(50)))
    assert await c.ping(WAIT_S), c.describe()
    outcome = await _during(priority_flood("127.0.0.1", gw.grpc_port, count=5000, timeout_s=WAIT_S),
                            channels(gw.grpc_port))
    if gw.edge is not None:
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def test_empty_data_flood(mock_workers, gateways, channels, loop_errors, caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways)
    outcome = await _during(empty_data_flood("127.0.0.1", gw.grpc_port, frames=1000, timeout_s=WAIT_S),
                            channels(gw.grpc_port))
    if gw.edge is not None:
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def test_window_update_flood(mock_workers, gateways, channels, loop_errors, caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways)
    outcome = await _during(window_update_flood("127.0.0.1", gw.grpc_port, frames=5000, timeout_s=WAIT_S),
                            channels(gw.grpc_port))
    if gw.edge is not None:
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def test_initial_window_toggle_costs_no_more_with_many_streams(mock_workers, gateways, channels,
                                                                     loop_errors, caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways, limits=EdgeLimits(max_concurrent_streams=1024))
    outcome = await _during(settings_initial_window_toggle("127.0.0.1", gw.grpc_port, streams=1000,
                                                           toggles=40_000, timeout_s=10.0),
                            channels(gw.grpc_port))
    if gw.edge is not None:
        assert outcome.ended_by == "open" and outcome.figures["refused"] == 0, outcome
        # O(1) per change: 40k SETTINGS take tens of ms; O(streams) per change (40M stream updates) takes seconds
        assert outcome.figures["barrier_s"] < 1.0, outcome
    await released(gw)
    assert not unhandled(loop_errors, caplog)
