"""Connections that cost a descriptor and nothing else: no handshake, no streams, a stream nobody moves, more
connections than the gateway may hold. Each is closed by its timeout or evicted, and clients that
behave still get in."""

from __future__ import annotations

import pytest

from bench.attacks import END_HEADERS as END_HEADERS_FLAG
from bench.attacks import (
    ENHANCE_YOUR_CALM,
    NO_ERROR,
    PREFACE,
    RawClient,
    encode_headers,
    frame,
    idle_connections,
    request_headers,
)
from bench.attacks import HEADERS as HEADERS_FRAME
from flexlb.config import EdgeLimits
from flexlb.sim.engine import EngineParams
from flexlb.sim.mock_worker import Faults
from tests.conftest import generate_input, wait_for, worker_addr
from tests.edge_support import H2_ONLY, released, served, unhandled

WAIT_S = 5.0
UNAVAILABLE = 14


def _open_stream(c: RawClient) -> int:
    """A stream whose request body never comes: the connection is busy (not idle), no worker involved."""
    sid = c.new_stream_id()
    c.send(frame(HEADERS_FRAME, END_HEADERS_FLAG, sid, encode_headers(request_headers(c.authority))))
    return sid


@H2_ONLY
@pytest.mark.parametrize("mode", ["silent", "half_preface", "preface_only"])
async def test_handshake_timeout(mode: str, mock_workers, gateways, channels, loop_errors, caplog) -> None:
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(handshake_timeout_s=0.3))

    async def probe(clients: list[RawClient]) -> None:
        await served(channels(gw.grpc_port))  # a real client's handshake is not held up meanwhile

    outcome = await idle_connections("127.0.0.1", gw.grpc_port, connections=5, mode=mode, hold_s=3.0, probe=probe)
    assert outcome.figures["closed"] == 5, outcome
    assert outcome.figures["close_s_max"] < 2.0, outcome
    assert not unhandled(loop_errors, caplog)


async def test_idle_timeout(mock_workers, gateways, channels, raw, loop_errors, caplog) -> None:
    paced = EngineParams(prefill_base_ms=1.0, prefill_ms_per_uncached_token=0.0, decode_step_base_ms=1.0,
                         decode_step_ms_per_running=0.0)
    worker = await mock_workers(time_scale=1.0, params=paced)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(idle_timeout_s=0.2))
    # an open stream keeps its connection: this call takes ~0.4 s, twice the idle timeout
    busy = await raw(gw.grpc_port)
    sid = busy.send_call(generate_input(1, max_new_tokens=400).SerializeToString())
    outcome = await idle_connections("127.0.0.1", gw.grpc_port, connections=3, mode="handshaken", hold_s=3.0)
    assert outcome.figures["closed"] == 3, outcome
    if gw.edge is not None:
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", NO_ERROR), outcome
    code, _ = await busy.status(sid, WAIT_S)
    assert code == 0, f"a connection with an open stream was closed as idle: {busy.describe(sid)}"
    # and once its stream is done, it is idle too
    await busy.expect_closed(3.0)
    if gw.edge is not None:
        assert busy.goaway is not None and busy.goaway.code == NO_ERROR, busy.describe()
    await served(channels(gw.grpc_port))
    assert not unhandled(loop_errors, caplog)


@H2_ONLY
async def test_stream_idle_timeout(mock_workers, gateways, raw, loop_errors, caplog) -> None:
    worker = await mock_workers(time_scale=0.0, faults=Faults(hang=True))
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(stream_idle_timeout_s=0.3))
    c = await raw(gw.grpc_port)
    sid = c.send_call()
    await wait_for(lambda: worker.calls_received == 1, WAIT_S, "the call at the worker")
    assert await c.status(sid, 3.0) == (UNAVAILABLE, "stream idle timeout"), c.describe(sid)
    await released(gw, "the idle call's upstream cancelled")
    assert await c.ping(WAIT_S), "only the stream ends, not the connection"
    assert not unhandled(loop_errors, caplog)


@H2_ONLY
async def test_max_connections_evicts_the_oldest_idle_then_refuses(mock_workers, gateways, raw, loop_errors,
                                                                   caplog) -> None:
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(max_connections=3))
    port = gw.grpc_port
    in_handshake = await raw(port, preface=PREFACE[:10], settings=None)
    idle = await raw(port)
    busy = await raw(port)
    _open_stream(busy)
    assert await busy.ping(WAIT_S)
    # at the cap: the oldest connection without streams goes first, even one still in its handshake
    newer = await raw(port)
    await in_handshake.expect_closed(WAIT_S)
    assert in_handshake.goaway is None or in_handshake.goaway.code == NO_ERROR, in_handshake.describe()
    newest = await raw(port)
    assert await idle.expect_goaway(WAIT_S) == NO_ERROR, idle.describe()
    await idle.expect_closed(WAIT_S)
    # three busy connections: the next one is told why and closed; the busy ones go on
    _open_stream(newer)
    _open_stream(newest)
    assert await newer.ping(WAIT_S) and await newest.ping(WAIT_S)
    # a client that writes nothing yet: the gateway's close cannot turn into a reset that eats the GOAWAY
    refused = await raw(port, preface=None, settings=None)
    assert await refused.expect_goaway(WAIT_S) == ENHANCE_YOUR_CALM, refused.describe()
    assert "too many connections" in (refused.goaway.debug if refused.goaway else ""), refused.describe()
    assert refused.settings_frames == 1, "SETTINGS first, then the GOAWAY"
    await refused.expect_closed(WAIT_S)
    for c in (busy, newer, newest):
        assert await c.ping(WAIT_S), c.describe()
    assert not unhandled(loop_errors, caplog)


async def test_idle_connection_flood_does_not_lock_out_clients(mock_workers, gateways, channels, loop_errors,
                                                              caplog) -> None:
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(max_connections=20, handshake_timeout_s=1.0))
    seen: dict[str, int] = {}

    async def probe(clients: list[RawClient]) -> None:
        if gw.edge is not None:
            seen["open"] = len(gw.edge.downstream)
        await served(channels(gw.grpc_port))  # evicts an idle attacker to get in

    # C-core has no short handshake timeout: nothing to wait for with the grpcio engine
    outcome = await idle_connections("127.0.0.1", gw.grpc_port, connections=60, mode="silent",
                                     hold_s=4.0 if gw.edge is not None else 0.1, probe=probe)
    if gw.edge is not None:
        assert seen["open"] <= 20, seen
        assert outcome.figures["closed"] == 60, outcome
    await released(gw)
    assert not unhandled(loop_errors, caplog)


@H2_ONLY
async def test_stream_limit_is_advertised_refused_past_and_ignoring_it_ends_the_connection(
        mock_workers, gateways, channels, raw, loop_errors, caplog) -> None:
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(max_concurrent_streams=8))
    c = await raw(gw.grpc_port)
    assert c.server_settings.get(0x3) == 8  # SETTINGS_MAX_CONCURRENT_STREAMS
    held = [_open_stream(c) for _ in range(8)]
    extra = _open_stream(c)
    assert await c.expect_rst(extra, WAIT_S) == 7  # REFUSED_STREAM; the eight go on
    assert await c.ping(WAIT_S) and all(c.record(sid).rst is None for sid in held)
    # refusals within the limit's size are a race with SETTINGS; more is a client that ignores them
    for _ in range(8):
        _open_stream(c)
    assert await c.expect_goaway(WAIT_S) == ENHANCE_YOUR_CALM, c.describe()
    await served(channels(gw.grpc_port))
    await released(gw)
    assert not unhandled(loop_errors, caplog)
