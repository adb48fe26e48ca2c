"""Request messages up to RTP-LLM's 1 GiB limit: a 70 MiB request relays end to end with the default limits (both
engines); on the frame relay a message larger than its connection's window completes from the extension budget
(even when idle connections hold every window, and after waiting for another large message's budget), one that
could never fit is refused at once, and a compressed one inflates to 64 MiB at most."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from bench.attacks import MIB, gzip_bomb
from flexlb import wire
from flexlb.config import EdgeLimits, ServerConfig
from flexlb.pb import model_rpc_service_pb2 as pb
from tests.conftest import generate_input, stream_stub, wait_for, worker_addr
from tests.edge_support import H2_ONLY

RESOURCE_EXHAUSTED = 8


def big_request(request_id: int, payload_bytes: int) -> pb.GenerateInputPB:
    """A request whose bulk is an inlined image (a data URL), as multimodal requests carry them."""
    req = generate_input(request_id, max_new_tokens=4)
    req.multimodal_inputs.add(multimodal_url="data:image/png;base64," + "A" * payload_bytes, multimodal_type=1)
    return req


async def relayed(ch: grpc.aio.Channel, req: pb.GenerateInputPB, timeout_s: float = 30.0) -> int:
    return len([m async for m in stream_stub(ch)(req, timeout=timeout_s)])


def test_defaults_are_rtp_llm_s() -> None:
    s = ServerConfig()
    assert s.max_receive_message_bytes == s.max_send_message_bytes == wire.RTP_LLM_MAX_MESSAGE_BYTES == 1 << 30


async def test_a_70_mib_request_relays_end_to_end(mock_workers, gateways, channels) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)])  # the default limits
    req = big_request(1, 70 * MIB)
    assert await relayed(channels(gw.grpc_port), req) == 4
    assert len(w.last_request_bytes) == req.ByteSize() > 70 * MIB
    await wait_for(lambda: gw.cluster.ledger.calls == 0 and (gw.edge is None or gw.edge.buffered == 0),
                   what="nothing held after the call")


@H2_ONLY
async def test_a_large_message_completes_while_idle_connections_hold_every_window(mock_workers, gateways, channels,
                                                                                  raw) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], limits=EdgeLimits(request_buffer_bytes_per_connection=1 * MIB,
                                                            request_buffer_bytes=4 * MIB, stream_idle_timeout_s=5))
    for _ in range(3):
        await raw(gw.grpc_port)  # idle clients: their connection windows take the whole window pool
    assert gw.edge is not None and gw.edge.window_pool == 0
    assert await relayed(channels(gw.grpc_port), big_request(2, 1536 * 1024)) == 4
    assert gw.edge.extension_pool == 2 * MIB  # the budget (half the request buffer) is back


@H2_ONLY
async def test_large_messages_wait_for_the_extension_budget(mock_workers, gateways, channels) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], limits=EdgeLimits(request_buffer_bytes_per_connection=1 * MIB,
                                                            request_buffer_bytes=4 * MIB, stream_idle_timeout_s=5))
    # three connections (the third gets what is left of the 2 MiB window pool) each with a 1.8 MiB message: more
    # beyond their windows than the 2 MiB extension budget holds at once, so one waits for another to complete
    counts = await asyncio.gather(*(relayed(channels(gw.grpc_port, **{"grpc.channel_id": i}),
                                            big_request(3 + i, 1843 * 1024)) for i in range(3)))
    assert counts == [4, 4, 4] and w.calls_received == 3
    assert gw.edge is not None and gw.edge.extension_pool == 2 * MIB and not gw.edge.awaiting_extension


@H2_ONLY
async def test_a_message_no_buffer_could_hold_is_refused_at_once(mock_workers, gateways, channels) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)], limits=EdgeLimits(request_buffer_bytes_per_connection=1 * MIB,
                                                            request_buffer_bytes=4 * MIB))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await relayed(channels(gw.grpc_port), big_request(9, 4 * MIB), timeout_s=5)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--request-buffer-bytes" in (ei.value.details() or "")
    assert w.calls_received == 0


@H2_ONLY
async def test_compressed_requests_inflate_to_64_mib_at_most(mock_workers, gateways) -> None:
    w = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(w)])  # messages up to 1 GiB, but not from a few KiB of gzip
    outcome = await gzip_bomb("127.0.0.1", gw.grpc_port, inflated_bytes=80 * MIB, timeout_s=10.0)
    assert outcome.grpc_statuses == {RESOURCE_EXHAUSTED: 1}, outcome
    assert w.calls_received == 0
