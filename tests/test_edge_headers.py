"""Request header blocks a client should not send: malformed requests (RFC 9113 §8.2-8.3), header limits,
HPACK amplification, a malformed grpc-timeout. Each ends the stream (or, for an oversized encoded block, the
connection) and never reaches a worker; the gateway keeps serving everyone else."""

from __future__ import annotations

import pytest

from bench.attacks import (
    CONTINUATION,
    END_HEADERS,
    ENHANCE_YOUR_CALM,
    HEADERS,
    MALFORMED_CASES,
    PROTOCOL_ERROR,
    RawClient,
    frame,
    generate_message,
    header_block_of_empty_literals,
    hpack_indexed,
    hpack_literal,
    literal_block,
    malformed_request,
    request_pairs,
)
from flexlb.config import EdgeLimits
from tests.conftest import worker_addr
from tests.edge_support import H2_ONLY, protocol_errors, released, served, unhandled

WAIT_S = 3.0
RESOURCE_EXHAUSTED, INTERNAL = 8, 13
# grpc C-core (the grpcio engine) is laxer than the gRPC spec's "1-8 digits + unit" for these
C_CORE_ACCEPTS = frozenset({"123456789S", " 1S", "1 S"})


async def _setup(mock_workers, gateways, **server):  # type: ignore[no-untyped-def]
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], **server)
    return gw, worker


@pytest.mark.parametrize("case", MALFORMED_CASES)
async def test_malformed_request_is_a_stream_error(case: str, mock_workers, gateways, channels, raw, loop_errors,
                                                   caplog) -> None:
    gw, worker = await _setup(mock_workers, gateways)
    c = await raw(gw.grpc_port)
    sid = c.new_stream_id()
    c.send_raw(malformed_request(c, sid, case, generate_message(sid)))
    if gw.edge is not None:
        code = await c.expect_rst(sid, WAIT_S)
        assert code == PROTOCOL_ERROR, f"RST_STREAM {code}: {c.describe(sid)}"
        assert await c.ping(WAIT_S), f"the connection did not go on: {c.describe()}"
        assert worker.calls_received == 0, "a malformed request reached the worker"
        assert protocol_errors(gw, "stream", "PROTOCOL_ERROR") >= 1
        # the same connection still carries good calls
        assert await c.status(c.send_call(), WAIT_S) == (0, "")
    await c.close()
    await served(channels(gw.grpc_port))
    await released(gw)
    assert not unhandled(loop_errors, caplog)


@pytest.mark.parametrize("value", ["²S", "", "S", "123456789S", "1x", "-1S", "1.5S", " 1S", "1 S", "1s"])
async def test_malformed_grpc_timeout_is_internal(value: str, mock_workers, gateways, channels, raw, loop_errors,
                                                 caplog) -> None:
    gw, _ = await _setup(mock_workers, gateways)
    c = await raw(gw.grpc_port)
    pairs = [*request_pairs(c.authority), (b"grpc-timeout", value.encode())]
    sid = c.new_stream_id()
    c.send_raw(c.call_frames(sid, block=literal_block(pairs)))
    status = await c.status(sid, WAIT_S)
    if gw.edge is not None or value not in C_CORE_ACCEPTS:
        # grpc C-core's answer, so a client sees the same whichever engine (or worker) parses it
        assert status == (INTERNAL, "Error parsing 'grpc-timeout' metadata"), c.describe(sid)
    assert await c.ping(WAIT_S)
    await c.close()
    await served(channels(gw.grpc_port))
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def _expect_resource_exhausted(gw, worker, c: RawClient, sid: int, limit: int) -> None:  # type: ignore[no-untyped-def]
    code, message = await c.status(sid, WAIT_S)
    assert code == RESOURCE_EXHAUSTED, f"grpc-status {code} {message!r}: {c.describe(sid)}"
    assert str(limit) in message, f"the message does not name the limit {limit}: {message!r}"
    # the client had not finished its request: told to stop
    await c.wait_until(lambda: c.record(sid).rst is not None, WAIT_S)
    assert c.record(sid).rst is not None, c.describe(sid)
    assert await c.ping(WAIT_S), f"the connection did not go on: {c.describe()}"
    assert worker.calls_received == 0


@H2_ONLY
async def test_decoded_header_list_over_limit(mock_workers, gateways, channels, raw, loop_errors, caplog) -> None:
    gw, worker = await _setup(mock_workers, gateways)
    c = await raw(gw.grpc_port)
    # HPACK amplification: one 3 KB table entry referenced by 1-byte indices, ~80 KB decoded from ~3 KB
    block = (literal_block(request_pairs(c.authority)) + hpack_literal(b"x-big", b"v" * 3000, indexing=True)
             + hpack_indexed(62) * 25)
    sid = c.new_stream_id()
    c.send(frame(HEADERS, END_HEADERS, sid, block))
    await _expect_resource_exhausted(gw, worker, c, sid, 65536)
    assert await c.status(c.send_call(), WAIT_S) == (0, "")
    await c.close()
    await served(channels(gw.grpc_port))
    assert not unhandled(loop_errors, caplog)


@H2_ONLY
@pytest.mark.parametrize("fields", [150, 200])
async def test_too_many_header_fields(fields: int, mock_workers, gateways, channels, raw, loop_errors,
                                      caplog) -> None:
    gw, worker = await _setup(mock_workers, gateways)
    c = await raw(gw.grpc_port)
    pairs = [*request_pairs(c.authority), *((f"x-f{i}".encode(), b"v") for i in range(fields - 6))]
    block = literal_block(pairs)
    assert len(block) < 65536  # under the encoded-block limit: this is about the field count
    sid = c.new_stream_id()
    c.send_raw(c.headers_frames(sid, block))
    await _expect_resource_exhausted(gw, worker, c, sid, 100)
    await c.close()
    await served(channels(gw.grpc_port))
    assert not unhandled(loop_errors, caplog)


@H2_ONLY
async def test_far_too_many_header_fields_end_the_connection(mock_workers, gateways, raw) -> None:
    gw, worker = await _setup(mock_workers, gateways)
    c = await raw(gw.grpc_port)
    pairs = [*request_pairs(c.authority), *((f"x-f{i}".encode(), b"v") for i in range(2000))]
    sid = c.new_stream_id()
    c.send_raw(c.headers_frames(sid, literal_block(pairs)))
    # more than twice max_header_fields: decoding stops there, so HPACK state is lost with the connection
    assert await c.expect_goaway(WAIT_S) == ENHANCE_YOUR_CALM, c.describe()
    assert worker.calls_received == 0


@H2_ONLY
async def test_encoded_header_block_over_limit_ends_connection_as_it_arrives(mock_workers, gateways, channels, raw,
                                                                             loop_errors, caplog) -> None:
    gw, worker = await _setup(mock_workers, gateways, limits=EdgeLimits(max_header_list_bytes=16_384))
    c = await raw(gw.grpc_port)
    sid = c.new_stream_id()
    filler = hpack_literal(b"x-f", b"v" * 1000) * 5
    # 20 KB of block and no END_HEADERS: decided on the bytes, not after a complete (never coming) block
    c.send(frame(HEADERS, 0, sid, literal_block(request_pairs(c.authority))),
           *(frame(CONTINUATION, 0, sid, filler) for _ in range(4)))
    assert await c.expect_goaway(WAIT_S) == ENHANCE_YOUR_CALM, c.describe()
    await c.expect_closed(WAIT_S)
    assert protocol_errors(gw, "connection", "ENHANCE_YOUR_CALM") >= 1
    await served(channels(gw.grpc_port))
    assert worker.calls_received == 1
    assert not unhandled(loop_errors, caplog)


@pytest.mark.parametrize("block_kib", [48, 1024])
async def test_header_block_of_empty_literals(block_kib: int, mock_workers, gateways, channels, loop_errors,
                                              caplog) -> None:
    gw, worker = await _setup(mock_workers, gateways)
    outcome = await header_block_of_empty_literals("127.0.0.1", gw.grpc_port, block_bytes=block_kib * 1024,
                                                   timeout_s=WAIT_S)
    if gw.edge is not None:
        # over the encoded limit (1 MiB), or within it but far over max_header_fields (48 KiB: ~16k fields):
        # the block is not worth decoding to its end, and HPACK state cannot be kept without doing so
        assert (outcome.ended_by, outcome.goaway_code) == ("goaway", ENHANCE_YOUR_CALM), outcome
        if block_kib * 1024 <= 65536:
            assert "header fields" in outcome.goaway_debug, outcome
        assert worker.calls_received == 0
    await served(channels(gw.grpc_port))
    await released(gw)
    assert not unhandled(loop_errors, caplog)

