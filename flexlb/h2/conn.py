"""One HTTP/2 connection (either side): framing, HPACK, SETTINGS, PING, flow control, batched writes.

Subclasses decide what streams mean (flexlb/h2/edge.py). Writes produced during one event-loop
turn are joined into one transport write; that batching is most of why this engine is cheap.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable

import hpack

from flexlb.h2 import frames as f

_FRAME_HEADER = struct.Struct(">BHBBI")

Headers = list[tuple[str, str]]


class Stream:
    """Send-side state of one stream: window, data waiting for window, trailers waiting for data."""

    __slots__ = ("closed_local", "closed_remote", "id", "on_sent", "owner", "pending", "pending_end",
                 "pending_trailers", "recv_owed", "send_window")

    def __init__(self, stream_id: int, send_window: int, owner: object) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.pending: deque[bytes] = deque()
        self.pending_end = False
        self.pending_trailers: Headers | None = None
        self.recv_owed = 0
        self.closed_local = False
        self.closed_remote = False
        self.owner = owner  # the relay object that listens to this stream
        # called with the number of DATA payload bytes once they are handed to the transport
        self.on_sent: Callable[[int], None] | None = None


class ProtocolError(Exception):
    """The peer broke HTTP/2; the connection is closed with GOAWAY."""


class WriteBatch:
    """Connections with output waiting, written together: at the end of the read that produced the
    output (no extra event-loop turn per relayed message), or once per turn for output made elsewhere."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._dirty: list[H2Connection] = []
        self._scheduled = False
        self.reading = 0  # > 0 while some connection's data_received runs

    def mark(self, conn: H2Connection) -> None:
        """`conn` has output; it goes out with the next flush."""
        self._dirty.append(conn)
        if not self.reading and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every waiting connection's output, one transport write each."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn._write_out()


class H2Connection(asyncio.Protocol):
    """HTTP/2 framing shared by the server side (clients) and the client side (workers)."""

    is_client = False

    def __init__(self, loop: asyncio.AbstractEventLoop, stream_window: int, conn_window: int,
                 max_concurrent_streams: int = 2**31 - 1, batch: WriteBatch | None = None) -> None:
        self.loop = loop
        self._batch = batch or WriteBatch(loop)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self._in = bytearray()
        self._preface_pending = not self.is_client
        self._out: list[bytes] = []
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_end_stream = False
        # what we grant the peer
        self.local_stream_window = stream_window
        self._local_conn_window = conn_window
        self._conn_recv_owed = 0
        self._local_settings = {
            f.SETTINGS_ENABLE_PUSH: 0,
            f.SETTINGS_INITIAL_WINDOW_SIZE: stream_window,
            f.SETTINGS_MAX_FRAME_SIZE: f.DEFAULT_MAX_FRAME,
            f.SETTINGS_MAX_CONCURRENT_STREAMS: max_concurrent_streams,
        }
        # what the peer grants us
        self.peer_stream_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.peer_max_streams = 2**31 - 1
        self.conn_send_window = f.DEFAULT_WINDOW
        self._blocked: dict[int, Stream] = {}
        self.closed = False

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.is_client:
            self._send(f.PREFACE)
        self._send(f.settings_frame(self._local_settings))
        if self._local_conn_window > f.DEFAULT_WINDOW:
            self._send(f.window_update(0, self._local_conn_window - f.DEFAULT_WINDOW))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_connection_lost(exc)

    def _send(self, data: bytes) -> None:
        if not self._out:
            self._batch.mark(self)
        self._out.append(data)

    def _write_out(self) -> None:
        if self._out and self.transport is not None and not self.closed:
            out = self._out
            self._out = []
            self.transport.write(b"".join(out))
        else:
            self._out.clear()

    def _flush(self) -> None:
        self._write_out()

    def close(self, error_code: int = f.NO_ERROR, debug: str = "") -> None:
        """Send GOAWAY and close once written."""
        if self.closed:
            return
        last = max(self.streams, default=0)
        self._send(f.goaway(last, error_code, debug.encode()))
        self._flush()
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    # ------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        batch = self._batch
        batch.reading += 1
        try:
            self._receive(data)
        finally:
            batch.reading -= 1
            if not batch.reading:
                batch.flush()

    def _receive(self, data: bytes) -> None:
        buf = self._in
        buf += data
        pos = 0
        if self._preface_pending:
            if len(buf) < len(f.PREFACE):
                return
            if bytes(buf[: len(f.PREFACE)]) != f.PREFACE:
                self.close(f.PROTOCOL_ERROR, "bad connection preface")
                return
            pos = len(f.PREFACE)
            self._preface_pending = False
        n = len(buf)
        try:
            while n - pos >= 9:
                hi, lo, ftype, flags, sid = _FRAME_HEADER.unpack_from(buf, pos)
                length = hi << 16 | lo
                end = pos + 9 + length
                if end > n:
                    break
                payload = bytes(buf[pos + 9 : end])
                pos = end
                self._frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                if self.closed:
                    return
        except ProtocolError as exc:
            self.close(f.PROTOCOL_ERROR, str(exc))
            return
        del buf[:pos]

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._header_block is not None and ftype != f.CONTINUATION:
            raise ProtocolError("expected CONTINUATION")
        if ftype == f.DATA:
            flow = len(payload)
            if flags & f.FLAG_PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            self._conn_recv_owed += flow
            if self._conn_recv_owed >= self._local_conn_window // 2:
                self._send(f.window_update(0, self._conn_recv_owed))
                self._conn_recv_owed = 0
            stream = self.streams.get(sid)
            if stream is None:
                return  # late data of a stream we already closed: only the connection window counts
            self.on_data(stream, payload, flow, bool(flags & f.FLAG_END_STREAM))
        elif ftype == f.HEADERS:
            if flags & f.FLAG_PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & f.FLAG_PRIORITY:
                payload = payload[5:]
            self._header_stream = sid
            self._header_end_stream = bool(flags & f.FLAG_END_STREAM)
            if flags & f.FLAG_END_HEADERS:
                self._headers_complete(payload)
            else:
                self._header_block = bytearray(payload)
        elif ftype == f.CONTINUATION:
            if self._header_block is None or sid != self._header_stream:
                raise ProtocolError("unexpected CONTINUATION")
            self._header_block += payload
            if flags & f.FLAG_END_HEADERS:
                block = bytes(self._header_block)
                self._header_block = None
                self._headers_complete(block)
        elif ftype == f.WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if sid == 0:
                self.conn_send_window += increment
                if self._blocked:
                    blocked = list(self._blocked.values())
                    self._blocked.clear()
                    for s in blocked:
                        self._drain(s)
            else:
                stream = self.streams.get(sid)
                if stream is not None:
                    stream.send_window += increment
                    self._drain(stream)
        elif ftype == f.RST_STREAM:
            stream = self.streams.pop(sid, None)
            if stream is not None:
                self._blocked.pop(sid, None)
                self.on_reset(stream, int.from_bytes(payload[:4], "big"))
        elif ftype == f.SETTINGS:
            if not flags & f.FLAG_ACK:
                self._apply_settings(f.parse_settings(payload))
                self._send(f.frame(f.SETTINGS, f.FLAG_ACK, 0))
        elif ftype == f.PING:
            if not flags & f.FLAG_ACK:
                self._send(f.frame(f.PING, f.FLAG_ACK, 0, payload))
        elif ftype == f.GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.on_goaway(last, int.from_bytes(payload[4:8], "big"))
        elif ftype == f.PUSH_PROMISE:
            raise ProtocolError("push is disabled")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 requires

    def _apply_settings(self, settings: dict[int, int]) -> None:
        if f.SETTINGS_INITIAL_WINDOW_SIZE in settings:
            new = settings[f.SETTINGS_INITIAL_WINDOW_SIZE]
            delta = new - self.peer_stream_window
            self.peer_stream_window = new
            for s in self.streams.values():
                s.send_window += delta
            if delta > 0:
                for s in list(self.streams.values()):
                    self._drain(s)
        if f.SETTINGS_MAX_FRAME_SIZE in settings:
            self.peer_max_frame = settings[f.SETTINGS_MAX_FRAME_SIZE]
        if f.SETTINGS_HEADER_TABLE_SIZE in settings:
            self._encoder.header_table_size = settings[f.SETTINGS_HEADER_TABLE_SIZE]
        if f.SETTINGS_MAX_CONCURRENT_STREAMS in settings:
            self.peer_max_streams = settings[f.SETTINGS_MAX_CONCURRENT_STREAMS]

    def _headers_complete(self, block: bytes) -> None:
        try:
            headers: Headers = [(str(k), str(v)) for k, v in self._decoder.decode(block)]
        except Exception as exc:  # hpack raises several error types; all are fatal for the connection
            raise ProtocolError(f"HPACK: {exc}") from None
        self.on_headers(self._header_stream, headers, self._header_end_stream)

    # ------------------------------------------------------------ writing

    def new_stream(self, stream_id: int, owner: object) -> Stream:
        """Register a stream (its send window starts at the peer's initial window)."""
        s = Stream(stream_id, self.peer_stream_window, owner)
        self.streams[stream_id] = s
        return s

    def send_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        """HEADERS (+CONTINUATION); trailers wait behind DATA that is still waiting for window."""
        if stream.closed_local:
            return
        if end_stream and stream.pending:
            stream.pending_trailers = headers
            return
        block = self._encoder.encode(headers, huffman=False)
        limit = self.peer_max_frame
        flags = f.FLAG_END_STREAM if end_stream else 0
        if len(block) <= limit:
            self._send(f.frame(f.HEADERS, flags | f.FLAG_END_HEADERS, stream.id, block))
        else:
            self._send(f.frame(f.HEADERS, flags, stream.id, block[:limit]))
            for i in range(limit, len(block), limit):
                last = i + limit >= len(block)
                self._send(f.frame(f.CONTINUATION, f.FLAG_END_HEADERS if last else 0, stream.id, block[i : i + limit]))
        if end_stream:
            self._local_end(stream)

    def send_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        """DATA within the flow-control windows; the rest waits for WINDOW_UPDATE."""
        if stream.closed_local:
            return
        if data:
            stream.pending.append(data)
        if end_stream:
            stream.pending_end = True
        self._drain(stream)

    def _drain(self, stream: Stream) -> None:
        sent = 0
        pending = stream.pending
        while pending:
            window = min(self.conn_send_window, stream.send_window)
            if window <= 0:
                if self.conn_send_window <= 0:
                    self._blocked[stream.id] = stream
                break
            chunk = pending[0]
            n = min(len(chunk), window, self.peer_max_frame)
            if n < len(chunk):
                pending[0] = chunk[n:]
                chunk = chunk[:n]
            else:
                pending.popleft()
            last = not pending and stream.pending_end and stream.pending_trailers is None
            self._send(f.frame(f.DATA, f.FLAG_END_STREAM if last else 0, stream.id, chunk))
            self.conn_send_window -= n
            stream.send_window -= n
            sent += n
            if last:
                self._local_end(stream)
        if not pending:
            if stream.pending_trailers is not None:
                trailers, stream.pending_trailers = stream.pending_trailers, None
                self.send_headers(stream, trailers, True)
            elif stream.pending_end and not stream.closed_local:
                self._send(f.frame(f.DATA, f.FLAG_END_STREAM, stream.id))
                self._local_end(stream)
        if sent and stream.on_sent is not None:
            stream.on_sent(sent)

    def _local_end(self, stream: Stream) -> None:
        stream.closed_local = True
        if stream.closed_remote:
            self.forget(stream)

    def remote_end(self, stream: Stream) -> None:
        """The peer half-closed the stream."""
        stream.closed_remote = True
        if stream.closed_local:
            self.forget(stream)

    def forget(self, stream: Stream) -> None:
        """Drop a finished stream's state."""
        self.streams.pop(stream.id, None)
        self._blocked.pop(stream.id, None)

    def reset(self, stream: Stream, error_code: int) -> None:
        """RST_STREAM and forget the stream."""
        if stream.id in self.streams and not (stream.closed_local and stream.closed_remote):
            self._send(f.rst_stream(stream.id, error_code))
        stream.closed_local = stream.closed_remote = True
        stream.pending.clear()
        self.forget(stream)

    def credit(self, stream: Stream, n: int) -> None:
        """Give the peer `n` bytes of stream window back (batched into WINDOW_UPDATEs)."""
        if stream.closed_remote or stream.id not in self.streams:
            return
        stream.recv_owed += n
        if stream.recv_owed >= self.local_stream_window // 4:
            self._send(f.window_update(stream.id, stream.recv_owed))
            stream.recv_owed = 0

    # ------------------------------------------------------------ events for subclasses

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        """A complete header block arrived."""

    def on_data(self, stream: Stream, data: bytes, flow_len: int, end_stream: bool) -> None:
        """DATA arrived on a known stream."""

    def on_reset(self, stream: Stream, error_code: int) -> None:
        """The peer reset a stream."""

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The peer will not accept streams above `last_stream_id`."""

    def on_connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection is gone."""
