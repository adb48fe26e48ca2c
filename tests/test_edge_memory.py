"""What a client can make the gateway hold: oversized frames, endless header blocks, request bodies that never
end, compression bombs, responses nobody reads. Bounded by behaviour — the frame is refused on its header,
the client's send window stops being replenished, the gateway's buffered byte count stays under its limit,
the call is ended — not by measuring RSS."""

from __future__ import annotations

import pytest

from bench.attacks import (
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    MIB,
    RawClient,
    big_ping,
    continuation_flood,
    encode_headers,
    grpc_frame,
    gzip_bomb,
    gzip_bomb_message,
    request_body_flood,
    request_headers,
    slow_reader,
)
from flexlb.config import EdgeLimits
from flexlb.pb import model_rpc_service_pb2 as pb
from tests.conftest import generate_input, wait_for, worker_addr
from tests.edge_support import H2_ONLY, released, served, unhandled

KIB = 1024
WAIT_S = 5.0
RESOURCE_EXHAUSTED, UNAVAILABLE = 8, 14


async def _setup(mock_workers, gateways, **server):  # type: ignore[no-untyped-def]
    # the FIFO engine at time scale 0 streams as fast as flow control lets it, so a reader that stops fills
    # its window at once; the batching engine paces every token by a loop iteration, and on a loaded machine
    # a slow reader's stream could still be trickling (not idle) when the test looks
    worker = await mock_workers(time_scale=0.0, engine="fifo")
    gw = await gateways([worker_addr(worker)], **server)
    return gw, worker


async def test_big_ping_is_refused_on_its_header(mock_workers, gateways, channels, loop_errors, caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways)
    # only the 9-byte header of a 16 MiB PING: waiting for (and buffering) the payload would hang here
    outcome = await big_ping("127.0.0.1", gw.grpc_port, send_payload=False, timeout_s=WAIT_S)
    if gw.edge is not None:
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", FRAME_SIZE_ERROR), outcome
    await served(channels(gw.grpc_port))
    assert not unhandled(loop_errors, caplog)


@pytest.mark.parametrize("payload_bytes", [1024, 0], ids=["fields", "empty"])
async def test_continuation_flood_ends_the_connection(payload_bytes: int, mock_workers, gateways, channels,
                                                      loop_errors, caplog) -> None:
    gw, worker = await _setup(mock_workers, gateways)
    outcome = await continuation_flood("127.0.0.1", gw.grpc_port, frames=2000, payload_bytes=payload_bytes,
                                       timeout_s=WAIT_S)
    if gw.edge is not None:
        # a growing block passes max_header_list_bytes; empty frames are an empty-frame flood
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
        assert worker.calls_received == 0
    await served(channels(gw.grpc_port))
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def test_request_body_flood_is_bounded_per_connection(mock_workers, gateways, channels, raw, loop_errors,
                                                            caplog) -> None:
    limit = 1 * MIB
    gw, worker = await _setup(mock_workers, gateways, max_receive_message_bytes=8 * MIB,
                              limits=EdgeLimits(request_buffer_bytes_per_connection=limit))
    seen: dict[str, float] = {}

    async def probe(clients: list[RawClient]) -> None:
        # the attacker is still connected, every credit it was given has arrived (barrier)
        if gw.edge is not None:
            seen["buffered"] = gw.edge.buffered
            seen["window"] = clients[0].conn_window
        await served(channels(gw.grpc_port))

    # 16 bodies of 512 KiB that never end: 8 MiB offered to a connection allowed 1 MiB
    outcome = await request_body_flood("127.0.0.1", gw.grpc_port, streams=16, message_bytes=512 * KIB,
                                       stall_s=0.3, timeout_s=WAIT_S, probe=probe)
    if gw.edge is not None:
        assert outcome.figures["accepted_bytes"] <= limit, outcome
        assert outcome.figures["stalled"] == 1, f"the client was never stalled: {outcome}"
        assert seen["buffered"] <= limit, seen
        assert seen["window"] <= 0, f"connection credit came back for bytes that never moved on: {seen}"
        await wait_for(lambda: gw.edge is not None and gw.edge.buffered == 0, WAIT_S, "buffer released on close")
        # a single message larger than the connection's window still completes when it is alone
        c = await raw(gw.grpc_port)
        sid = c.new_stream_id()
        c.send(c.headers_frames(sid, encode_headers(request_headers(c.authority))))
        big = pb.GenerateInputPB(request_id=5, token_ids=[1, 2, 3], client_id="x" * (3 * MIB),
                                 generate_config=generate_input(5).generate_config).SerializeToString()
        assert await c.send_body(sid, grpc_frame(big), timeout_s=WAIT_S) == len(big) + 5, c.describe(sid)
        assert await c.status(sid, WAIT_S) == (0, ""), c.describe(sid)
    assert worker.calls_received == (2 if gw.edge is not None else 1), "a flood body reached the worker"
    await released(gw)
    assert not unhandled(loop_errors, caplog)


@H2_ONLY
async def test_request_body_flood_is_bounded_gateway_wide(mock_workers, gateways, channels, loop_errors,
                                                          caplog) -> None:
    limit, per_conn, connections = 512 * KIB, 256 * KIB, 6
    gw, _ = await _setup(mock_workers, gateways, limits=EdgeLimits(
        request_buffer_bytes=limit, request_buffer_bytes_per_connection=per_conn))
    seen: dict[str, float] = {}

    async def probe(clients: list[RawClient]) -> None:
        assert gw.edge is not None
        seen["buffered"] = gw.edge.buffered
        await served(channels(gw.grpc_port))

    outcome = await request_body_flood("127.0.0.1", gw.grpc_port, connections=connections, streams=2,
                                       message_bytes=200 * KIB, stall_s=0.3, timeout_s=WAIT_S, probe=probe)
    # RFC 9113's initial 65,535-byte connection window cannot be withheld; nothing beyond it past the limit
    bound = limit + connections * 65_535
    assert outcome.figures["accepted_bytes"] <= bound, (outcome, f"offered {connections * per_conn}, bound {bound}")
    assert seen["buffered"] <= bound, seen
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def test_gzip_bomb_costs_no_more_than_the_cap(mock_workers, gateways, channels, loop_errors, caplog) -> None:
    # a 64 MiB cap (grpc C-core inflates up to --max-message-bytes; the frame relay never past 64 MiB)
    gw, worker = await _setup(mock_workers, gateways, max_receive_message_bytes=64 * MIB)
    outcome = await gzip_bomb("127.0.0.1", gw.grpc_port, inflated_bytes=256 * MIB, timeout_s=10.0)
    assert outcome.grpc_statuses == {RESOURCE_EXHAUSTED: 1}, outcome
    assert worker.calls_received == 0
    await served(channels(gw.grpc_port))
    await released(gw)
    assert not unhandled(loop_errors, caplog)


@H2_ONLY
async def test_gzip_bomb_message_names_the_cap(mock_workers, gateways, raw) -> None:
    gw, _ = await _setup(mock_workers, gateways, max_receive_message_bytes=1 * MIB)
    c = await raw(gw.grpc_port)
    sid = c.new_stream_id()
    body = gzip_bomb_message(8 * MIB)
    c.send(c.headers_frames(sid, encode_headers(request_headers(c.authority, extra=[("grpc-encoding", "gzip")]))),
           c.data_frames(sid, body, end_stream=True))
    code, message = await c.status(sid, WAIT_S)
    assert code == RESOURCE_EXHAUSTED and "larger than max" in message and str(MIB) in message, (code, message)


@H2_ONLY
@pytest.mark.parametrize("never_read", [False, True], ids=["no_window_update", "never_read"])
async def test_slow_reader_is_ended_by_the_stream_idle_timeout(never_read: bool, mock_workers, gateways, channels,
                                                               loop_errors, caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways, limits=EdgeLimits(stream_idle_timeout_s=0.4))

    async def probe(clients: list[RawClient]) -> None:
        # still connected, still not reading or crediting: its calls are cancelled anyway
        await wait_for(lambda: gw.cluster.ledger.calls == 0, WAIT_S,
                       "the slow reader's calls cancelled by the stream idle timeout")
        await served(channels(gw.grpc_port))

    outcome = await slow_reader("127.0.0.1", gw.grpc_port, streams=10, max_new_tokens=1_000_000,
                                never_read=never_read, hold_s=2.0, probe=probe, end_wait_s=WAIT_S)
    assert outcome.figures["streams_ended"] == 10, outcome
    assert sum(outcome.rst_codes.values()) == 10, f"each stream ends with RST_STREAM: {outcome}"
    for status in outcome.grpc_statuses:
        assert status == UNAVAILABLE, outcome
    await released(gw)
    assert not unhandled(loop_errors, caplog)
