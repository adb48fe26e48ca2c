"""The frame relay's HTTP/2 connection driven frame by frame (no sockets): rules that a live client cannot
reach through the gateway's own crediting, and the bookkeeping behind the limits."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import pytest

from flexlb.relay.h2 import frames as f
from flexlb.relay.h2.conn import ConnLimits, H2Connection, Stream
from flexlb.relay.h2.header_codec import Encoder

REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")]


class FakeTransport:
    """Collects what the connection writes; pause/resume/close are recorded."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name: str) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def frames(self) -> list[tuple[int, int, int, bytes]]:
        """(type, flags, stream, payload) of everything written."""
        out, buf = [], bytes(self.written)
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big"), buf[9 : 9 + n]))
            buf = buf[9 + n :]
        return out


class Server(H2Connection):
    """A server side that never gives request bytes back (so windows can be exceeded)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: ConnLimits) -> None:
        super().__init__(loop, limits)
        self.data: list[bytes] = []
        self.resets: list[tuple[int, int, bool]] = []

    def on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        self.data.append(data)

    def on_reset(self, stream: Stream, error_code: int, local: bool) -> None:
        self.resets.append((stream.id, error_code, local))


@pytest.fixture
def server() -> Iterator[tuple[Server, FakeTransport]]:
    loop = asyncio.new_event_loop()
    conn = Server(loop, ConnLimits(stream_window=65_535, conn_window=1 << 20, guard_floods=True))
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(f.PREFACE + f.settings_frame({}))
    conn._batch.flush()
    t.written.clear()
    yield conn, t
    loop.close()


def _open(conn: Server, sid: int = 1) -> None:
    conn.data_received(f.frame(f.HEADERS, f.FLAG_END_HEADERS, sid, Encoder().encode(REQUEST)))


def _rst(t: FakeTransport) -> list[tuple[int, int]]:
    return [(sid, struct.unpack(">I", p)[0]) for ty, _, sid, p in t.frames() if ty == f.RST_STREAM]


def _goaway(t: FakeTransport) -> int | None:
    codes = [struct.unpack(">II", p[:8])[1] for ty, _, _, p in t.frames() if ty == f.GOAWAY]
    return codes[0] if codes else None


def test_data_beyond_the_stream_window_resets_only_that_stream(server: tuple[Server, FakeTransport]) -> None:
    conn, t = server
    _open(conn, 1)
    _open(conn, 3)
    for _ in range(4):
        conn.data_received(f.frame(f.DATA, 0, 1, bytes(16_384)))  # 65,536 bytes: one past the window
    assert _rst(t) == [(1, f.FLOW_CONTROL_ERROR)]
    assert conn.resets == [(1, f.FLOW_CONTROL_ERROR, True)]
    assert not conn.closed and 3 in conn.streams
    conn.data_received(f.frame(f.DATA, 0, 3, b"ok"))
    assert conn.data[-1] == b"ok"


def test_data_beyond_the_connection_window_ends_the_connection() -> None:
    loop = asyncio.new_event_loop()
    conn = Server(loop, ConnLimits(stream_window=1 << 20, conn_window=65_535))
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(f.PREFACE + f.settings_frame({}))
    _open(conn, 1)
    _open(conn, 3)
    for sid in (1, 3, 1, 3, 1):
        conn.data_received(f.frame(f.DATA, 0, sid, bytes(16_384)))
    assert conn.closed and _goaway(t) == f.FLOW_CONTROL_ERROR
    loop.close()


def test_initial_window_change_is_o1_and_still_catches_overflow(server: tuple[Server, FakeTransport]) -> None:
    conn, t = server
    for sid in range(1, 2001, 2):
        _open(conn, sid)
    conn.data_received(f.settings_frame({f.SETTINGS_INITIAL_WINDOW_SIZE: 1}))
    assert conn.peer_initial_window == 1
    assert all(s.send_credit == 0 for s in conn.streams.values())  # no per-stream walk
    conn.data_received(f.window_update(1, f.MAX_WINDOW - 1))  # stream 1 at exactly 2^31-1
    assert not conn.closed
    conn.data_received(f.settings_frame({f.SETTINGS_INITIAL_WINDOW_SIZE: 2}))  # would make it 2^31
    assert conn.closed and _goaway(t) == f.FLOW_CONTROL_ERROR


def test_control_frames_for_a_peer_that_does_not_read_are_bounded() -> None:
    loop = asyncio.new_event_loop()
    conn = Server(loop, ConnLimits(max_outbound_control_frames=50))
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(f.PREFACE + f.settings_frame({}))
    conn.pause_writing()  # the transport's buffer is full: the peer does not read
    conn.data_received(b"".join(f.frame(f.PING, 0, 0, bytes(8)) for _ in range(50)))
    assert not conn.closed
    conn.data_received(f.frame(f.PING, 0, 0, bytes(8)))
    assert conn.closed and t.aborted and _goaway(t) == f.ENHANCE_YOUR_CALM
    loop.close()


def test_a_burst_is_handled_in_slices() -> None:
    loop = asyncio.new_event_loop()
    conn = Server(loop, ConnLimits(frames_per_turn=100))
    t = FakeTransport()
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(f.PREFACE + f.settings_frame({}) + b"".join(f.frame(f.PING, 0, 0, bytes(8)) for _ in range(350)))
    acks = sum(1 for ty, fl, _, _ in t.frames() if ty == f.PING and fl & f.FLAG_ACK)
    assert acks == 99  # the SETTINGS counted in the first slice; the rest wait for the next turns
    turns = 0
    while sum(1 for ty, fl, _, _ in t.frames() if ty == f.PING and fl & f.FLAG_ACK) < 350 and turns < 20:
        loop.run_until_complete(asyncio.sleep(0))  # one event-loop turn: the next slice runs
        turns += 1
    assert sum(1 for ty, fl, _, _ in t.frames() if ty == f.PING and fl & f.FLAG_ACK) == 350
    loop.close()
