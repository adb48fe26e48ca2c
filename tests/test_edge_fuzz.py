"""Property test of the h2 edge: after any sequence of valid-ish and broken HTTP/2 frames, the attacking
connection either ended with a GOAWAY (never INTERNAL_ERROR) or still carries a good call; a concurrent
well-behaved client is answered; nothing raised inside the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.attacks import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    INTERNAL_ERROR,
    MAX_FRAME_SIZE,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    RawClient,
    encode_headers,
    error_name,
    frame,
    frame_header,
    generate_message,
    grpc_frame,
    grpc_prefix,
    hpack_indexed,
    hpack_literal,
    hpack_table_size_update,
    literal_block,
    request_headers,
    request_pairs,
    settings_frame,
)
from tests.conftest import worker_addr
from tests.edge_support import H2_ONLY, released, served, unhandled

AUTHORITY = "127.0.0.1:1"
WAIT_S = 3.0
SETTINGS_FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

u32 = st.sampled_from([0, 1, 5, 16_383, 16_384, 65_535, 65_536, 2**24 - 1, 2**24, 2**31 - 1, 2**31, 2**32 - 1]) \
    | st.integers(0, 2**32 - 1)
stream_ids = st.sampled_from([0, 1, 1, 3, 3, 5, 7, 2, 4, 2**31 - 1]) | st.integers(0, 2**31 - 1)
flags = st.sampled_from([0, END_STREAM, END_HEADERS, END_STREAM | END_HEADERS, PADDED, PRIORITY_FLAG,
                         PRIORITY_FLAG | END_HEADERS, 0xFF]) | st.integers(0, 255)
good_pairs = request_pairs(AUTHORITY)
bad_fields = st.sampled_from([(b"X-Up", b"1"), (b"", b"x"), (b":foo", b"1"), (b"connection", b"close"),
                              (b"te", b"gzip"), (b"x-a", b"a\nb"), (b"grpc-timeout", "²S".encode()),
                              (b"grpc-timeout", b"1m"), (b"content-length", b"3"), (b":path", b"")])
good_block = encode_headers(request_headers(AUTHORITY))
header_blocks = st.one_of(
    *[st.just(good_block)] * 6,
    *[st.builds(lambda extra: literal_block([*good_pairs, extra]), bad_fields)] * 3,
    st.builds(lambda n: literal_block(good_pairs[:n]), st.integers(0, len(good_pairs))),
    st.builds(lambda i: good_block + hpack_indexed(i), st.integers(0, 200)),
    st.builds(lambda n: hpack_table_size_update(n) + good_block, st.sampled_from([0, 100, 4096, 4097, 1 << 20])),
    st.builds(lambda v: literal_block(good_pairs) + hpack_literal(b"x-i", v, indexing=True) + hpack_indexed(62),
              st.binary(max_size=40)),
    st.binary(max_size=48),
)
data_payloads = st.one_of(
    st.just(grpc_frame(generate_message(1))), st.just(b""), st.binary(max_size=64),
    st.builds(grpc_prefix, u32), st.builds(lambda n: bytes(n), st.integers(0, 16_384)),
)
settings_payloads = st.one_of(
    *[st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 5, 6, 0, 7, 0xFF, 0xFFFF]), u32),
               max_size=4).map(lambda kv: b"".join(struct.pack(">HI", k, v) for k, v in kv))] * 5,
    st.binary(max_size=14))


def _payload_for(ftype: int) -> st.SearchStrategy[bytes]:
    if ftype == WINDOW_UPDATE:
        right = st.builds(lambda v: struct.pack(">I", v), u32)
    elif ftype == PRIORITY:
        right = st.builds(lambda dep, w: struct.pack(">IB", dep, w), st.sampled_from([0, 1, 3, 5]) | u32,
                          st.integers(0, 255))
    elif ftype == RST_STREAM:
        right = st.builds(lambda v: struct.pack(">I", v), st.sampled_from([0, 1, 2, 5, 7, 8, 0xB, 0xFF]) | u32)
    elif ftype == PING:
        right = st.binary(min_size=8, max_size=8)
    elif ftype == GOAWAY:
        right = st.builds(lambda last, code, debug: struct.pack(">II", last, code) + debug, u32, u32,
                          st.binary(max_size=8))
    elif ftype in (HEADERS, CONTINUATION):
        right = header_blocks
    elif ftype == PUSH_PROMISE:
        right = st.builds(lambda b: struct.pack(">I", 2) + b, header_blocks)
    elif ftype == DATA:
        right = data_payloads
    elif ftype == SETTINGS:
        right = settings_payloads
    else:
        right = st.binary(max_size=24)
    # mostly well-formed payloads, some random (wrong lengths included)
    return st.one_of(*([right] * 8), st.binary(max_size=24))


TYPE_FLAGS = {
    DATA: [0, END_STREAM, PADDED, PADDED | END_STREAM],
    HEADERS: [END_HEADERS, END_HEADERS | END_STREAM, END_HEADERS | PRIORITY_FLAG, 0, PADDED | END_HEADERS],
    CONTINUATION: [END_HEADERS, 0],
    SETTINGS: [0, 0, 0, 1],
    PING: [0, 0, 1],
}
frame_types = st.sampled_from([DATA] * 3 + [HEADERS] * 4 + [WINDOW_UPDATE] * 2 + [SETTINGS] * 2 + [RST_STREAM] * 2
                              + [PRIORITY, PING, CONTINUATION, GOAWAY, PUSH_PROMISE, 0x0A, 0x20, 0xFF])


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    ftype = draw(frame_types)
    on_connection = ftype in (SETTINGS, PING, GOAWAY) or (ftype == WINDOW_UPDATE and draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        sid = draw(stream_ids)  # the wrong stream, now and then
    else:
        sid = 0 if on_connection else draw(st.sampled_from([1, 1, 3, 3, 5, 7]))
    fl = draw(st.sampled_from(TYPE_FLAGS.get(ftype, [0]))) if draw(st.integers(0, 6)) else draw(flags)
    payload = draw(_payload_for(ftype))
    if fl & PADDED and ftype in (DATA, HEADERS) and draw(st.booleans()):
        pad = draw(st.integers(0, 10))
        payload = bytes((pad,)) + payload + bytes(pad)  # well-formed padding (the flag alone often is not)
    if fl & PRIORITY_FLAG and ftype == HEADERS and draw(st.booleans()):
        payload = struct.pack(">IB", draw(st.sampled_from([0, 1, 3])), 15) + payload
    return ftype, fl, sid, payload


KINDS = st.sampled_from(["open"] * 3 + ["split_open", "data", "data", "data", "end", "rst", "wu_stream",
                          "wu_conn", "settings", "ping", "priority", "unknown", "trailers", "broken", "broken"])


@st.composite
def frame_sequences(draw: st.DrawFn, first_sid: int) -> list[tuple[int, int, int, bytes]]:
    """Mostly what a client may send at that point (streams it opened, in order), with broken frames mixed in."""
    opened: list[int] = []
    next_sid = first_sid
    out: list[tuple[int, int, int, bytes]] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(KINDS)
        if kind in ("open", "split_open") or (not opened and kind != "broken"):
            sid, next_sid = next_sid, next_sid + 2
            opened.append(sid)
            block = draw(header_blocks)
            end = END_STREAM if draw(st.booleans()) else 0
            if kind == "split_open" and len(block) > 1:
                cut = draw(st.integers(1, len(block) - 1))
                out += [(HEADERS, end, sid, block[:cut]), (CONTINUATION, END_HEADERS, sid, block[cut:])]
            else:
                out.append((HEADERS, END_HEADERS | end, sid, block))
            continue
        sid = draw(st.sampled_from(opened)) if opened else 1
        if kind == "data":
            out.append((DATA, END_STREAM if draw(st.integers(0, 3)) == 0 else 0, sid, draw(data_payloads)))
        elif kind == "end":
            out.append((DATA, END_STREAM, sid, b""))
        elif kind == "trailers":
            out.append((HEADERS, END_HEADERS | END_STREAM, sid, draw(header_blocks)))
        elif kind == "rst":
            out.append((RST_STREAM, 0, sid, draw(_payload_for(RST_STREAM))))
        elif kind in ("wu_stream", "wu_conn"):
            out.append((WINDOW_UPDATE, 0, sid if kind == "wu_stream" else 0, draw(_payload_for(WINDOW_UPDATE))))
        elif kind == "settings":
            out.append((SETTINGS, 0, 0, draw(settings_payloads)))
        elif kind == "ping":
            out.append((PING, draw(st.sampled_from([0, 1])), 0, draw(st.binary(min_size=8, max_size=8))))
        elif kind == "priority":
            out.append((PRIORITY, 0, draw(st.sampled_from([*opened, next_sid + 2])), draw(_payload_for(PRIORITY))))
        elif kind == "unknown":
            out.append((draw(st.sampled_from([0x0A, 0x0C, 0x20, 0xFF])), draw(flags), draw(stream_ids),
                        draw(st.binary(max_size=16))))
        else:
            out.append(draw(frames()))
    return out


@st.composite
def examples(draw: st.DrawFn) -> tuple[list[tuple[int, int, int, bytes]], bool, list[tuple[int, int]] | None, bool]:
    call_first = draw(st.booleans())  # a good call on stream 1 first: its response is under way meanwhile
    seq = draw(frame_sequences(3 if call_first else 1))
    first_settings = draw(st.sampled_from([None, None, None, [(INITIAL_WINDOW_SIZE, 0)], [(MAX_FRAME_SIZE, 1 << 20)]]))
    oversized = draw(st.integers(0, 7)) == 0  # end with an oversized frame header: refused on the header
    return seq, call_first, first_settings, oversized


@pytest.fixture
async def fuzz_edge(mock_workers, gateways, channels):  # type: ignore[no-untyped-def]
    worker = await mock_workers(time_scale=0.0)
    gw = await gateways([worker_addr(worker)], max_receive_message_bytes=1 << 20)
    return gw, channels(gw.grpc_port)


@H2_ONLY
@SETTINGS_FUZZ
@given(example=examples())
async def test_frame_sequences(example, fuzz_edge, loop_errors, caplog) -> None:  # type: ignore[no-untyped-def]
    seq, call_first, first_settings, oversized = example
    gw, channel = fuzz_edge
    c = await RawClient.connect("127.0.0.1", gw.grpc_port, settings=first_settings or ())
    try:
        await c.wait_until(lambda: c.settings_frames > 0 or c.ended(), WAIT_S)
        attack = b"".join(frame(t, fl, sid, payload) for t, fl, sid, payload in seq)
        if call_first:
            attack = c.call_frames(1, block=encode_headers(request_headers(c.authority))) + attack
        if oversized:
            attack += frame_header(DATA, 0, 1, 16_385)
        c.send_raw(attack, len(seq))
        await asyncio.gather(_judge(c, seq, oversized), served(channel, timeout_s=WAIT_S))
    finally:
        await c.close()
    await released(gw)
    assert not unhandled(loop_errors, caplog)


async def _judge(c: RawClient, seq: list[tuple[int, int, int, bytes]], oversized: bool) -> None:
    if oversized:
        # whatever came before, the connection ends now (the frame's payload is never waited for)
        await c.expect_goaway(WAIT_S)
    else:
        with contextlib.suppress(TimeoutError):
            await c.ping(WAIT_S)
        if not c.ended():
            # still open: it must carry a good call on a new stream
            used = max((sid for _, _, sid, _ in seq), default=0)
            if used < 2**31 - 3:
                c.next_sid = max(c.next_sid, used + 1 + used % 2)
                c.send(settings_frame([(INITIAL_WINDOW_SIZE, 65_535)]))
                sid = c.new_stream_id()
                c.send_raw(c.call_frames(sid))
                with contextlib.suppress(TimeoutError):
                    await c.wait_until(lambda: c.record(sid).ended or c.record(sid).rst is not None or c.ended(),
                                       WAIT_S)
                if not c.ended():
                    status = await c.status(sid, WAIT_S)
                    assert status == (0, ""), f"a good call on a surviving connection failed: {c.describe(sid)}"
                    return
            else:
                assert await c.ping(WAIT_S), c.describe()
                return
    # ended: with a GOAWAY that says why, never a bare close or an internal error
    assert await c.wait_until(lambda: c.goaway is not None, WAIT_S), f"closed without GOAWAY: {c.describe()}"
    assert c.goaway is not None and c.goaway.code != INTERNAL_ERROR, \
        f"GOAWAY {error_name(c.goaway.code if c.goaway else None)}: {c.describe()}"
    await c.expect_closed(WAIT_S)
