"""RFC 9113 conformance of the client-facing HTTP/2 edge (the cases h2spec checks), one frame sequence each.

h2 engine: the exact outcome — connection error (GOAWAY code, then closed), stream error (RST_STREAM code,
the connection goes on) or tolerated — and the protocol-error counter. grpcio engine (grpc C-core has its
own answers): it survives. Both: a well-behaved gRPC client is served afterwards and nothing raised.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.attacks import (
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ERROR_NAMES,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_FRAME_SIZE,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    RawClient,
    encode_headers,
    frame,
    frame_header,
    generate_message,
    goaway_frame,
    grpc_prefix,
    hpack_indexed,
    hpack_string,
    hpack_table_size_update,
    literal_block,
    ping_frame,
    priority_frame,
    request_headers,
    request_pairs,
    rst_frame,
    settings_frame,
    window_update_frame,
)
from flexlb.config import EdgeLimits
from tests.conftest import worker_addr
from tests.edge_support import protocol_errors, released, served, unhandled

KIB = 1024
WAIT_S = 3.0


@dataclass(frozen=True)
class Expect:
    """What the h2 edge must answer."""

    kind: str  # "conn": GOAWAY code then closed; "stream": RST_STREAM code on sid; "closed"; "ok": tolerated
    code: int = NO_ERROR
    sid: int = 0
    check: Callable[[RawClient], Awaitable[None]] | None = None  # more checks for "ok"
    graceful_close_ok: bool = False  # "ok" also when the gateway closes with GOAWAY NO_ERROR


def conn(code: int) -> Expect:
    return Expect("conn", code)


def stream(sid: int, code: int) -> Expect:
    return Expect("stream", code, sid)


OK = Expect("ok")


@dataclass(frozen=True)
class Case:
    run: Callable[[RawClient], Awaitable[Expect]]
    limits: dict[str, Any] = field(default_factory=dict)
    connect: dict[str, Any] = field(default_factory=dict)
    unframed: bool = False  # the bytes sent end inside a frame: a PING after them would be its payload


CASES: dict[str, Case] = {}


def case(name: str, limits: dict[str, Any] | None = None, unframed: bool = False,
         **connect: Any) -> Callable[[Callable[[RawClient], Awaitable[Expect]]], Any]:
    def register(fn: Callable[[RawClient], Awaitable[Expect]]) -> Any:
        CASES[name] = Case(fn, limits or {}, connect, unframed)
        return fn
    return register


def block(c: RawClient) -> bytes:
    return encode_headers(request_headers(c.authority))


def open_frames(c: RawClient, sid: int) -> bytes:
    """HEADERS of a routed call whose body has not come yet: an open stream."""
    return frame(HEADERS, END_HEADERS, sid, block(c))


def call_frames(c: RawClient, sid: int) -> bytes:
    return c.call_frames(sid, generate_message(sid))


def huffman_field(value: bytes) -> bytes:
    return b"\x00" + hpack_string(b"x-h") + hpack_string(value, huffman=True)


# ---------------------------------------------------------------- connection start


@case("bad_preface", preface=b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n", settings=None)
async def _(c: RawClient) -> Expect:
    return Expect("closed")


@case("first_frame_not_settings", settings=None)
async def _(c: RawClient) -> Expect:
    c.send(ping_frame())
    return conn(PROTOCOL_ERROR)


@case("frame_longer_than_max_frame_size", unframed=True)
async def _(c: RawClient) -> Expect:
    c.send_raw(frame_header(HEADERS, END_HEADERS, 1, 16_385))  # decided on the header: no payload follows
    return conn(FRAME_SIZE_ERROR)


# ---------------------------------------------------------------- frames on the wrong stream


@case("data_on_stream_0")
async def _(c: RawClient) -> Expect:
    c.send(frame(DATA, 0, 0, b"x"))
    return conn(PROTOCOL_ERROR)


@case("headers_on_stream_0")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS, 0, block(c)))
    return conn(PROTOCOL_ERROR)


@case("priority_on_stream_0")
async def _(c: RawClient) -> Expect:
    c.send(priority_frame(0, 1))
    return conn(PROTOCOL_ERROR)


@case("rst_stream_on_stream_0")
async def _(c: RawClient) -> Expect:
    c.send(rst_frame(0, CANCEL))
    return conn(PROTOCOL_ERROR)


@case("continuation_on_stream_0")
async def _(c: RawClient) -> Expect:
    c.send(frame(CONTINUATION, END_HEADERS, 0, b""))
    return conn(PROTOCOL_ERROR)


@case("settings_on_a_stream")
async def _(c: RawClient) -> Expect:
    c.send(frame(SETTINGS, 0, 1))
    return conn(PROTOCOL_ERROR)


@case("ping_on_a_stream")
async def _(c: RawClient) -> Expect:
    c.send(frame(PING, 0, 1, b"\0" * 8))
    return conn(PROTOCOL_ERROR)


@case("goaway_on_a_stream")
async def _(c: RawClient) -> Expect:
    c.send(frame(GOAWAY, 0, 1, b"\0" * 8))
    return conn(PROTOCOL_ERROR)


# ---------------------------------------------------------------- padding


@case("data_pad_length_not_below_payload")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), frame(DATA, PADDED, 1, bytes([5]) + b"abcd"))
    return conn(PROTOCOL_ERROR)


@case("headers_pad_length_not_below_payload")
async def _(c: RawClient) -> Expect:
    b = block(c)
    c.send(frame(HEADERS, PADDED | END_HEADERS, 1, bytes([len(b) + 1]) + b))
    return conn(PROTOCOL_ERROR)


# ---------------------------------------------------------------- stream states


@case("data_on_idle_stream")
async def _(c: RawClient) -> Expect:
    c.send(frame(DATA, 0, 1, b"x"))
    return conn(PROTOCOL_ERROR)


@case("rst_stream_on_idle_stream")
async def _(c: RawClient) -> Expect:
    c.send(rst_frame(1, CANCEL))
    return conn(PROTOCOL_ERROR)


@case("window_update_on_idle_stream")
async def _(c: RawClient) -> Expect:
    c.send(window_update_frame(1, 100))
    return conn(PROTOCOL_ERROR)


@case("continuation_on_idle_stream")
async def _(c: RawClient) -> Expect:
    c.send(frame(CONTINUATION, END_HEADERS, 1, block(c)))
    return conn(PROTOCOL_ERROR)


@case("priority_on_idle_stream_allowed")
async def _(c: RawClient) -> Expect:
    c.send(priority_frame(7, 0))

    async def usable(c: RawClient) -> None:
        assert await c.status(c.send_call()) == (0, ""), "a call after PRIORITY on an idle stream failed"
    return Expect("ok", check=usable)


@case("even_stream_id")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 2))
    return conn(PROTOCOL_ERROR)


@case("headers_below_highest_opened_stream")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 5), open_frames(c, 3))
    return conn(PROTOCOL_ERROR)


# our window of 0 keeps the call's response from finishing: the stream stays half-closed (remote)
@case("data_on_half_closed_stream", settings=[(INITIAL_WINDOW_SIZE, 0)])
async def _(c: RawClient) -> Expect:
    c.send(call_frames(c, 1), frame(DATA, 0, 1, b"x"))
    return stream(1, STREAM_CLOSED)


@case("headers_on_half_closed_stream", settings=[(INITIAL_WINDOW_SIZE, 0)])
async def _(c: RawClient) -> Expect:
    c.send(call_frames(c, 1), frame(HEADERS, END_HEADERS | END_STREAM, 1, literal_block([(b"x-a", b"1")])))
    return stream(1, STREAM_CLOSED)


@case("data_on_closed_stream")
async def _(c: RawClient) -> Expect:
    c.send(call_frames(c, 1))
    await c.response(1, WAIT_S)
    c.send(frame(DATA, 0, 1, b"x"))
    return stream(1, STREAM_CLOSED)


@case("headers_on_closed_stream")
async def _(c: RawClient) -> Expect:
    c.send(call_frames(c, 1))
    await c.response(1, WAIT_S)
    c.send(open_frames(c, 1))
    return conn(STREAM_CLOSED)


@case("data_after_client_reset")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), rst_frame(1, CANCEL), frame(DATA, 0, 1, b"x"))
    return stream(1, STREAM_CLOSED)


@case("headers_after_client_reset")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), rst_frame(1, CANCEL), open_frames(c, 1))
    return conn(STREAM_CLOSED)


@case("frames_on_a_stream_the_gateway_reset_are_ignored")
async def _(c: RawClient) -> Expect:
    bad = literal_block([*request_pairs(c.authority), (b"X-Upper", b"1")])
    # in one write: they were in flight when the gateway reset the stream
    c.send(frame(HEADERS, END_HEADERS, 1, bad), frame(DATA, 0, 1, b"x"), window_update_frame(1, 10),
           frame(DATA, END_STREAM, 1, b"y"))

    async def one_reset(c: RawClient) -> None:
        assert c.record(1).rst == PROTOCOL_ERROR, f"stream 1: {c.describe(1)}"
    return Expect("ok", check=one_reset)


# ---------------------------------------------------------------- header blocks


@case("continuation_after_complete_headers")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), frame(CONTINUATION, END_HEADERS, 1, literal_block([(b"x-a", b"1")])))
    return conn(PROTOCOL_ERROR)


@case("continuation_on_another_stream")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, 0, 1, block(c)), frame(CONTINUATION, END_HEADERS, 3, literal_block([(b"x-a", b"1")])))
    return conn(PROTOCOL_ERROR)


@case("other_frame_inside_header_block")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, 0, 1, block(c)), ping_frame())
    return conn(PROTOCOL_ERROR)


@case("unknown_frame_inside_header_block")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, 0, 1, block(c)), frame(0x20, 0, 1, b"xyz"))
    return conn(PROTOCOL_ERROR)


# ---------------------------------------------------------------- priority


@case("headers_depending_on_itself")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, struct.pack(">IB", 1, 15) + block(c)))
    return stream(1, PROTOCOL_ERROR)


@case("priority_depending_on_itself")
async def _(c: RawClient) -> Expect:
    c.send(priority_frame(1, 1))
    return stream(1, PROTOCOL_ERROR)


@case("priority_not_5_bytes")
async def _(c: RawClient) -> Expect:
    c.send(frame(PRIORITY, 0, 1, b"\0\0\0\0"))
    return stream(1, FRAME_SIZE_ERROR)


# ---------------------------------------------------------------- frame sizes


@case("rst_stream_not_4_bytes")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), frame(RST_STREAM, 0, 1, b"\0\0\0"))
    return conn(FRAME_SIZE_ERROR)


@case("ping_not_8_bytes")
async def _(c: RawClient) -> Expect:
    c.send(frame(PING, 0, 0, b"\0" * 7))
    return conn(FRAME_SIZE_ERROR)


@case("window_update_not_4_bytes")
async def _(c: RawClient) -> Expect:
    c.send(frame(WINDOW_UPDATE, 0, 0, b"\0\0\1"))
    return conn(FRAME_SIZE_ERROR)


@case("settings_not_multiple_of_6")
async def _(c: RawClient) -> Expect:
    c.send(frame(SETTINGS, 0, 0, b"\0\4\0\0\0"))
    return conn(FRAME_SIZE_ERROR)


@case("settings_ack_with_payload")
async def _(c: RawClient) -> Expect:
    c.send(frame(SETTINGS, 1, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 100)))
    return conn(FRAME_SIZE_ERROR)


@case("goaway_shorter_than_8")
async def _(c: RawClient) -> Expect:
    c.send(frame(GOAWAY, 0, 0, b"\0" * 7))
    return conn(FRAME_SIZE_ERROR)


# ---------------------------------------------------------------- settings


@case("settings_enable_push_2")
async def _(c: RawClient) -> Expect:
    c.send(settings_frame([(2, 2)]))
    return conn(PROTOCOL_ERROR)


@case("settings_initial_window_above_max")
async def _(c: RawClient) -> Expect:
    c.send(settings_frame([(INITIAL_WINDOW_SIZE, MAX_WINDOW + 1)]))
    return conn(FLOW_CONTROL_ERROR)


@case("settings_max_frame_size_below_16384")
async def _(c: RawClient) -> Expect:
    c.send(settings_frame([(MAX_FRAME_SIZE, 16_383)]))
    return conn(PROTOCOL_ERROR)


@case("settings_max_frame_size_above_16777215")
async def _(c: RawClient) -> Expect:
    c.send(settings_frame([(MAX_FRAME_SIZE, 1 << 24)]))
    return conn(PROTOCOL_ERROR)


@case("settings_unknown_ignored_and_acked")
async def _(c: RawClient) -> Expect:
    await c.wait_until(lambda: c.settings_acks >= 1, WAIT_S)  # the handshake's
    before = c.settings_acks
    c.send(settings_frame([(0xFF, 7), (0x4242, 1)]))

    async def acked(c: RawClient) -> None:
        assert c.settings_acks == before + 1, f"{c.settings_acks - before} ACKs for 1 SETTINGS"
    return Expect("ok", check=acked)


@case("settings_last_value_wins", settings=[(INITIAL_WINDOW_SIZE, 0), (INITIAL_WINDOW_SIZE, 65_535)])
async def _(c: RawClient) -> Expect:
    async def flows(c: RawClient) -> None:
        # with the first value (0) the response could never be sent
        assert await c.status(c.send_call(), WAIT_S) == (0, "")
    return Expect("ok", check=flows)


@case("every_settings_acked")
async def _(c: RawClient) -> Expect:
    await c.wait_until(lambda: c.settings_acks >= 1, WAIT_S)  # the handshake's
    before = c.settings_acks
    c.send(*(settings_frame([(INITIAL_WINDOW_SIZE, 65_535 + i)]) for i in range(5)))

    async def acked(c: RawClient) -> None:
        assert c.settings_acks == before + 5, f"{c.settings_acks - before} ACKs for 5 SETTINGS"
    return Expect("ok", check=acked)


@case("settings_initial_window_change_overflows_a_stream", settings=[(INITIAL_WINDOW_SIZE, 0)])
async def _(c: RawClient) -> Expect:
    # stream window 0 + (2^31-1) is the maximum; raising the initial window by 1 pushes it over
    c.send(call_frames(c, 1), window_update_frame(1, MAX_WINDOW), settings_frame([(INITIAL_WINDOW_SIZE, 1)]))
    return conn(FLOW_CONTROL_ERROR)


# ---------------------------------------------------------------- flow control


@case("window_update_0_on_connection")
async def _(c: RawClient) -> Expect:
    c.send(window_update_frame(0, 0))
    return conn(PROTOCOL_ERROR)


@case("window_update_0_on_stream")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), window_update_frame(1, 0))
    return stream(1, PROTOCOL_ERROR)


@case("window_update_overflows_connection")
async def _(c: RawClient) -> Expect:
    c.send(window_update_frame(0, MAX_WINDOW))
    return conn(FLOW_CONTROL_ERROR)


@case("window_update_overflows_stream")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), window_update_frame(1, MAX_WINDOW))
    return stream(1, FLOW_CONTROL_ERROR)


# nothing is forwarded (no request completes), so no connection credit may come back
@case("data_beyond_connection_window", limits={"request_buffer_bytes_per_connection": 256 * KIB})
async def _(c: RawClient) -> Expect:
    sids = (1, 3, 5)
    out = [open_frames(c, sid) + frame(DATA, 0, sid, grpc_prefix(128 * KIB)) for sid in sids]
    for i in range((256 * KIB - 5 * len(sids)) // (16 * KIB) + 1):  # one frame past the 256 KiB window
        out.append(frame(DATA, 0, sids[i % 3], bytes(16 * KIB)))
    c.send(*out)
    return conn(FLOW_CONTROL_ERROR)


# "DATA beyond the stream window": not reachable from outside against a gateway that credits a routed
# stream as its bytes arrive (the connection window is what binds); tests/test_h2_conn.py covers it per connection


# ---------------------------------------------------------------- other frames


@case("push_promise_from_client")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), frame(PUSH_PROMISE, END_HEADERS, 1, struct.pack(">I", 2) + block(c)))
    return conn(PROTOCOL_ERROR)


@case("unknown_frame_type_ignored")
async def _(c: RawClient) -> Expect:
    c.send(frame(0x20, 0xFF, 0, b"xyz"), frame(0xFA, 0, 1, b""))
    return OK


@case("unknown_flags_ignored")
async def _(c: RawClient) -> Expect:
    c.send(frame(PING, 0xFE, 0, b"12345678"), frame(SETTINGS, 0xFE, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 65_535)))

    async def flows(c: RawClient) -> None:
        assert await c.status(c.send_call(), WAIT_S) == (0, "")
    return Expect("ok", check=flows)


@case("unknown_error_code_in_rst_stream")
async def _(c: RawClient) -> Expect:
    c.send(open_frames(c, 1), rst_frame(1, 0xFF))
    return OK


@case("unknown_error_code_in_goaway")
async def _(c: RawClient) -> Expect:
    c.send(goaway_frame(0, 0xFF))
    return Expect("ok", graceful_close_ok=True)


# ---------------------------------------------------------------- HPACK


@case("hpack_index_past_the_table")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS, 1, block(c) + hpack_indexed(70)))
    return conn(COMPRESSION_ERROR)


@case("hpack_index_0")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS, 1, hpack_indexed(0) + block(c)))
    return conn(COMPRESSION_ERROR)


@case("hpack_table_size_update_after_a_field")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS, 1, block(c) + hpack_table_size_update(0)))
    return conn(COMPRESSION_ERROR)


@case("hpack_table_size_update_above_setting")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS, 1, hpack_table_size_update(4097) + block(c)))
    return conn(COMPRESSION_ERROR)


@case("hpack_huffman_eos")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS, 1, block(c) + huffman_field(b"\xff\xff\xff\xff")))
    return conn(COMPRESSION_ERROR)


@case("hpack_huffman_padding_longer_than_7_bits")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS, 1, block(c) + huffman_field(b"\x1f\xff")))  # 'a' then 11 bits of 1s
    return conn(COMPRESSION_ERROR)


@case("hpack_huffman_padding_not_ones")
async def _(c: RawClient) -> Expect:
    c.send(frame(HEADERS, END_HEADERS, 1, block(c) + huffman_field(b"\x18")))  # 'a' then padding 000
    return conn(COMPRESSION_ERROR)


# ---------------------------------------------------------------- the test


@pytest.mark.parametrize("name", list(CASES))
async def test_rfc9113(name: str, mock_workers, gateways, channels, raw, loop_errors, caplog) -> None:
    spec = CASES[name]
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], limits=EdgeLimits(**spec.limits))
    c = await raw(gw.grpc_port, **spec.connect)
    before = {scope: dict.fromkeys(ERROR_NAMES.values(), 0.0) for scope in ("connection", "stream")}
    for scope, codes in before.items():
        for code in codes:
            codes[code] = protocol_errors(gw, scope, code)
    expect = await spec.run(c)
    if gw.edge is not None:
        await _check(c, expect)
        if expect.kind != "ok":
            scope = "stream" if expect.kind == "stream" else "connection"
            code = ERROR_NAMES[PROTOCOL_ERROR if expect.kind == "closed" else expect.code]
            assert protocol_errors(gw, scope, code) > before[scope][code], \
                f"flexlb_client_protocol_errors_total{{scope={scope},code={code}}} did not grow"
    elif not spec.unframed:
        with contextlib.suppress(TimeoutError):
            await c.ping(WAIT_S)  # C-core handled the frames (its answer is its own)
    await c.close()
    await served(channels(gw.grpc_port))
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def _check(c: RawClient, expect: Expect) -> None:
    if expect.kind == "conn":
        code = await c.expect_goaway(WAIT_S)
        assert code == expect.code, f"GOAWAY {ERROR_NAMES.get(code or 0)} (want {ERROR_NAMES[expect.code]}): " \
            f"{c.describe()}"
        await c.expect_closed(WAIT_S)
    elif expect.kind == "closed":
        await c.expect_closed(WAIT_S)
        assert c.goaway is None or c.goaway.code == PROTOCOL_ERROR, c.describe()
    elif expect.kind == "stream":
        code = await c.expect_rst(expect.sid, WAIT_S)
        assert code == expect.code, f"RST_STREAM {ERROR_NAMES.get(code)} (want {ERROR_NAMES[expect.code]})"
        assert await c.ping(WAIT_S), f"the connection did not go on after a stream error: {c.describe()}"
    else:
        usable = await c.ping(WAIT_S)
        if not (expect.graceful_close_ok and c.goaway is not None and c.goaway.code == NO_ERROR):
            assert usable, f"a tolerated frame ended the connection: {c.describe()}"
            if expect.check is not None:
                await expect.check(c)
            assert c.goaway is None, c.describe()

