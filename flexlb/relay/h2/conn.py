"""One HTTP/2 connection (either side): framing, the RFC 9113 rules, HPACK, flow control, limits, batched writes.

Subclasses decide what streams mean (flexlb/h2/edge.py). Every rule a peer can break ends only the
stream (RST_STREAM) or the connection (GOAWAY) with the RFC's error code; nothing a peer sends
raises out of `data_received`. Writes produced during one event-loop turn are joined into one
transport write; that batching is most of why this engine is cheap.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from flexlb.relay.h2 import frames as f
from flexlb.relay.h2.header_codec import CompressionError, Decoder, Encoder, FieldLimitExceeded, Headers

_FRAME_HEADER = struct.Struct(">BHBBI")
_MAX_FRAME_LIMIT = 2**24 - 1
_REMEMBERED_CLOSED = 4096  # closed stream ids remembered to tell "closed" from "never opened"
# request headers that make a request malformed (RFC 9113 §8.2.2)
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
_REQUEST_PSEUDO = frozenset({":method", ":scheme", ":path", ":authority"})
_BAD_VALUE_CHARS = ("\x00", "\r", "\n")
_BAD_NAME_CHARS = (*_BAD_VALUE_CHARS, " ")
# closed stream ids: how they closed (frames on a stream we reset may still be in flight and are ignored)
_OPEN, _IDLE, _RESET_HERE, _CLOSED_THERE = 0, 1, 2, 3


@dataclass(frozen=True)
class ConnLimits:
    """What the peer may do on one connection (see flexlb.config.EdgeLimits for the anchors)."""

    stream_window: int = 1024 * 1024  # SETTINGS_INITIAL_WINDOW_SIZE we grant
    conn_window: int = 16 * 1024 * 1024  # connection window we grant
    max_concurrent_streams: int = 2**31 - 1
    max_header_list_bytes: int = 64 * 1024
    max_header_fields: int = 100
    max_outbound_control_frames: int = 1000
    guard_floods: bool = False  # the client side: count floods (workers are trusted not to flood)
    max_inbound_priority_frames_per_stream: int = 100
    max_consecutive_empty_frames: int = 1
    max_inbound_window_updates_per_data_frame: int = 10
    premature_reset_min_streams: int = 500
    premature_reset_ratio: float = 0.5
    frames_per_turn: int = 0  # > 0: process at most this many frames per event-loop turn (fairness)


class ConnError(Exception):
    """The peer broke a connection-level rule: GOAWAY with `code`."""

    def __init__(self, code: int, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.code = code
        self.reason = reason  # a short fixed key (metric label)
        self.detail = detail or reason


class Stream:
    """State of one stream: send window and waiting data, receive window, half-closed flags."""

    __slots__ = ("closed_local", "closed_remote", "content_length", "id", "last_active_s", "on_sent", "owner",
                 "pending", "pending_end", "pending_trailers", "received", "recv_owed", "recv_window",
                 "response_started", "send_credit")

    def __init__(self, stream_id: int, recv_window: int, owner: object, now_s: float) -> None:
        self.id = stream_id
        self.send_credit = 0  # window updates received minus bytes sent; the window is this + the peer's initial
        self.recv_window = recv_window  # bytes the peer may still send before we credit more
        self.recv_owed = 0  # credit earned but not yet sent in a WINDOW_UPDATE
        self.pending: deque[bytes | memoryview] = deque()
        self.pending_end = False
        self.pending_trailers: Headers | None = None
        self.closed_local = False
        self.closed_remote = False
        self.response_started = False  # we sent HEADERS on it (a client reset after that is not premature)
        self.content_length: int | None = None
        self.received = 0  # DATA payload bytes received (checked against content-length)
        self.last_active_s = now_s
        self.owner = owner  # the relay object that listens to this stream
        # called with the number of DATA payload bytes once they are handed to the transport
        self.on_sent: Callable[[int], None] | None = None


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


def request_header_problem(headers: Headers, trailers: bool) -> str | None:
    """Why a request's header block is malformed (RFC 9113 §8.2, §8.3), or None."""
    seen_regular = False
    pseudo: set[str] = set()
    for name, value in headers:
        if not name:
            return "empty header name"
        if name[0] == ":":
            if trailers:
                return f"pseudo-header {name} in trailers"
            if seen_regular:
                return f"pseudo-header {name} after a regular header"
            if name not in _REQUEST_PSEUDO:
                return f"pseudo-header {name} is not a request pseudo-header"
            if name in pseudo:
                return f"duplicated {name}"
            if name == ":path" and not value:
                return "empty :path"
            pseudo.add(name)
        else:
            seen_regular = True
            if name != name.lower():
                return f"header name {name!r} is not lowercase"
            if name in _CONNECTION_SPECIFIC:
                return f"connection-specific header {name}"
            if name == "te" and value != "trailers":
                return "te other than trailers"
        if any(c in value for c in _BAD_VALUE_CHARS) or any(c in name for c in _BAD_NAME_CHARS):
            return f"forbidden character in header {name!r}"
    if not trailers:
        for required in (":method", ":scheme", ":path"):
            if required not in pseudo:
                return f"missing {required}"
    return None


class H2Connection(asyncio.Protocol):
    """HTTP/2 framing shared by the server side (clients) and the client side (workers)."""

    is_client = False

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: ConnLimits, batch: WriteBatch | None = None) -> None:
        self.loop = loop
        self.limits = limits
        self._batch = batch or WriteBatch(loop)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self._in = bytearray()
        self._preface_pending = not self.is_client
        self._settings_pending = True  # the peer's first frame must be SETTINGS
        self._out: list[bytes] = []
        self._encoder = Encoder()
        self._decoder = Decoder()
        self._header_block: bytearray | None = None
        self._header_stream = 0
        self._header_end_stream = False
        self._header_error: tuple[int, str] | None = None  # a stream error found in HEADERS, sent after decoding
        self._local_settings = {
            f.SETTINGS_ENABLE_PUSH: 0,
            f.SETTINGS_INITIAL_WINDOW_SIZE: limits.stream_window,
            f.SETTINGS_MAX_FRAME_SIZE: f.DEFAULT_MAX_FRAME,
            f.SETTINGS_MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
        }
        if limits.max_concurrent_streams < 2**31 - 1:
            self._local_settings[f.SETTINGS_MAX_CONCURRENT_STREAMS] = limits.max_concurrent_streams
        # receive side: what the peer may still send on the connection, and credit not yet returned
        self.conn_recv_window = f.DEFAULT_WINDOW
        self.conn_recv_target = max(limits.conn_window, f.DEFAULT_WINDOW)
        self._conn_recv_owed = 0
        # send side: what the peer grants us
        self.peer_initial_window = f.DEFAULT_WINDOW
        self._max_send_credit = 0  # an upper bound of every stream's send_credit (overflow check in O(1))
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self.peer_max_streams = 2**31 - 1
        self.conn_send_window = f.DEFAULT_WINDOW
        self._blocked: dict[int, Stream] = {}  # streams with data waiting for window or for the transport
        self._write_paused = False
        self._control_queued = 0  # control frames written while the transport is paused
        self.closed = False
        self.goaway_sent = False
        # stream-id bookkeeping (server side: ids the client opened; client side: ids we opened)
        self.last_peer_stream_id = 0
        self._closed_ids: OrderedDict[int, int] = OrderedDict()
        # flood accounting (RFC 9113 §10.5; Envoy's counters)
        self.streams_opened = 0
        self._premature_resets = 0
        self._priority_frames = 0
        self._refused_streams = 0  # streams opened beyond SETTINGS_MAX_CONCURRENT_STREAMS
        self._window_updates = 0
        self._data_frames_sent = 0
        self._empty_frames = 0
        self._resume_scheduled = False
        self.now_s = loop.time()
        self.opened_s = self.now_s
        self.idle_since_s: float | None = self.now_s  # no open stream since then (None: streams are open)
        self.handshake_done = False

    # ------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.is_client:
            self._send(f.PREFACE)
        self._send(f.settings_frame(self._local_settings))
        self.grow_conn_window(self.conn_recv_target - f.DEFAULT_WINDOW)

    def grow_conn_window(self, n: int) -> None:
        """Let the peer send `n` more bytes on the connection than it may now."""
        if n > 0:
            self.conn_recv_window += n
            self._send(f.window_update(0, n))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_connection_lost(exc)

    def pause_writing(self) -> None:
        # the peer does not read: DATA waits in its streams (and their upstream is pushed back)
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._control_queued = 0
        if self._blocked and not self.closed:
            for s in list(self._blocked.values()):
                self._drain(s)

    def _send(self, data: bytes) -> None:
        if not self._out:
            self._batch.mark(self)
        self._out.append(data)

    def _send_control(self, data: bytes) -> None:
        """A frame the peer's behaviour made us send (ACKs, resets): bounded while the peer does not read."""
        if self._write_paused:
            self._control_queued += 1
            if self._control_queued > self.limits.max_outbound_control_frames:
                self.protocol_error(ConnError(f.ENHANCE_YOUR_CALM, "outbound_control_flood",
                                              "too many control frames queued for a peer that does not read"))
                return
        self._send(data)

    def _write_out(self) -> None:
        if self._out and self.transport is not None and not self.closed:
            out = self._out
            self._out = []
            self.transport.write(b"".join(out))
        else:
            self._out.clear()

    def close(self, error_code: int = f.NO_ERROR, debug: str = "", linger_s: float = 1.0) -> None:
        """Send GOAWAY and close once written (aborted when the peer does not read).

        The connection lingers up to `linger_s` after a FIN, discarding what the peer still sends: closing
        with unread input makes the kernel answer with a TCP reset, and the peer may never see the GOAWAY.
        """
        if self.closed:
            return
        self._send(f.goaway(self.last_peer_stream_id, error_code, debug.encode()[:256]))
        self.goaway_sent = True
        self._write_out()
        self.closed = True
        t = self.transport
        if t is None:
            return
        if self._write_paused:
            t.abort()
            return
        if linger_s <= 0 or not t.can_write_eof():
            t.close()
            return
        try:
            t.write_eof()
        except OSError:  # the peer is already gone
            t.close()
            return
        self.loop.call_later(linger_s, t.close)

    def protocol_error(self, err: ConnError) -> None:
        """A connection error: report it, then GOAWAY with its code and close."""
        if self.closed:
            return
        self.on_protocol_error("connection", err.code, err.reason, err.detail)
        self.close(err.code, err.detail)

    def stream_error(self, stream_id: int, code: int, reason: str, detail: str = "") -> None:
        """A stream error: report it, RST_STREAM, forget the stream (its owner is told through on_reset)."""
        self.on_protocol_error("stream", code, reason, detail or reason)
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._blocked.pop(stream_id, None)
            self.streams.pop(stream_id, None)
            self._stream_gone()
            self.on_reset(stream, code, local=True)
        self._send_control(f.rst_stream(stream_id, code))
        self._remember_closed(stream_id, _RESET_HERE)

    # ------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # bytes after our GOAWAY are not read
        batch = self._batch
        batch.reading += 1
        try:
            self._in += data
            self._process()
        finally:
            batch.reading -= 1
            if not batch.reading:
                batch.flush()

    def _resume(self) -> None:
        self._resume_scheduled = False
        if self.closed:
            return
        if self.transport is not None:
            self.transport.resume_reading()
        self.data_received(b"")

    def _process(self) -> None:
        if self.closed:
            return
        self.now_s = self.loop.time()
        try:
            self._frames()
        except ConnError as err:
            self.protocol_error(err)
        except Exception as exc:  # a bug must cost this connection only, never the process or another peer
            self.on_internal_error(exc)
            self.protocol_error(ConnError(f.INTERNAL_ERROR, "internal_error", f"internal error: {type(exc).__name__}"))
        if not self.closed:
            self.after_frames()

    def _frames(self) -> None:
        buf = self._in
        pos = 0
        if self._preface_pending:
            if len(buf) < len(f.PREFACE):
                if bytes(buf) != f.PREFACE[: len(buf)]:
                    raise ConnError(f.PROTOCOL_ERROR, "bad_preface", "bad connection preface")
                return
            if bytes(buf[: len(f.PREFACE)]) != f.PREFACE:
                raise ConnError(f.PROTOCOL_ERROR, "bad_preface", "bad connection preface")
            pos = len(f.PREFACE)
            self._preface_pending = False
        n = len(buf)
        budget = self.limits.frames_per_turn or -1
        our_max = self._local_settings[f.SETTINGS_MAX_FRAME_SIZE]
        try:
            while n - pos >= 9:
                hi, lo, ftype, flags, sid = _FRAME_HEADER.unpack_from(buf, pos)
                length = hi << 16 | lo
                if length > our_max:
                    # decided on the header: an oversized frame is never buffered
                    raise ConnError(f.FRAME_SIZE_ERROR, "frame_too_large", f"frame of {length} bytes")
                end = pos + 9 + length
                if end > n:
                    break
                if budget == 0:
                    # this peer's burst is sliced: other connections are served between the slices
                    if self.transport is not None and not self._resume_scheduled:
                        self.transport.pause_reading()
                        self._resume_scheduled = True
                        self.loop.call_soon(self._resume)
                    break
                budget -= 1
                payload = bytes(buf[pos + 9 : end])
                pos = end
                self._frame(ftype, flags, sid & 0x7FFFFFFF, payload)
                if self.closed:
                    return
        finally:
            if not self.closed:
                del buf[:pos]

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self._settings_pending:
            if ftype != f.SETTINGS or flags & f.FLAG_ACK:
                raise ConnError(f.PROTOCOL_ERROR, "no_settings_first", "the first frame must be SETTINGS")
            self._settings_pending = False
            self.handshake_done = True
        if self._header_block is not None and (ftype != f.CONTINUATION or sid != self._header_stream):
            raise ConnError(f.PROTOCOL_ERROR, "expected_continuation", "a header block was not finished")
        if ftype == f.DATA:
            self._on_data_frame(flags, sid, payload)
        elif ftype == f.HEADERS:
            self._on_headers_frame(flags, sid, payload)
        elif ftype == f.CONTINUATION:
            self._on_continuation(flags, sid, payload)
        elif ftype == f.WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif ftype == f.RST_STREAM:
            self._on_rst_stream(sid, payload)
        elif ftype == f.SETTINGS:
            self._on_settings(flags, sid, payload)
        elif ftype == f.PING:
            if sid != 0:
                raise ConnError(f.PROTOCOL_ERROR, "ping_on_stream", "PING on a stream")
            if len(payload) != 8:
                raise ConnError(f.FRAME_SIZE_ERROR, "bad_ping_length", f"PING of {len(payload)} bytes")
            if not flags & f.FLAG_ACK:
                self._send_control(f.frame(f.PING, f.FLAG_ACK, 0, payload))
        elif ftype == f.PRIORITY:
            self._on_priority(sid, payload)
        elif ftype == f.GOAWAY:
            if sid != 0:
                raise ConnError(f.PROTOCOL_ERROR, "goaway_on_stream", "GOAWAY on a stream")
            if len(payload) < 8:
                raise ConnError(f.FRAME_SIZE_ERROR, "bad_goaway_length", "GOAWAY shorter than 8 bytes")
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            self.on_goaway(last, int.from_bytes(payload[4:8], "big"))
        elif ftype == f.PUSH_PROMISE:
            raise ConnError(f.PROTOCOL_ERROR, "push_promise", "push is disabled")
        # unknown frame types are ignored, as RFC 9113 §4.1 requires

    # ------------------------------------------------------------ frame rules

    def _count_empty(self, payload: bytes, ends: bool) -> None:
        if payload or ends:
            self._empty_frames = 0
            return
        self._empty_frames += 1
        if self.limits.guard_floods and self._empty_frames > self.limits.max_consecutive_empty_frames:
            raise ConnError(f.ENHANCE_YOUR_CALM, "empty_frame_flood", "too many consecutive empty frames")

    def _stream_state(self, sid: int) -> int:
        """_OPEN (in self.streams), _IDLE (never opened), or how it closed (_RESET_HERE / _CLOSED_THERE)."""
        if sid in self.streams:
            return _OPEN
        if self.is_client:
            # workers never open streams; late frames on any stream we closed may be in flight: ignored
            return _RESET_HERE if sid < self.next_local_stream_id() else _IDLE
        if sid > self.last_peer_stream_id:
            return _IDLE
        return self._closed_ids.get(sid, _RESET_HERE)

    def next_local_stream_id(self) -> int:
        """The next stream id this (client) side will open."""
        return 1

    def _remember_closed(self, sid: int, how: int) -> None:
        ids = self._closed_ids
        if sid in ids and how == _CLOSED_THERE:
            return  # a stream we reset stays "reset here" (late frames on it are ignored)
        ids[sid] = how
        ids.move_to_end(sid)
        if len(ids) > _REMEMBERED_CLOSED:
            ids.popitem(last=False)

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if not flags & f.FLAG_PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ConnError(f.PROTOCOL_ERROR, "bad_padding", "pad length not smaller than the frame")
        return payload[1 : len(payload) - payload[0]]

    def _on_data_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnError(f.PROTOCOL_ERROR, "data_on_stream_0", "DATA on stream 0")
        flow = len(payload)
        if flow > self.conn_recv_window:
            raise ConnError(f.FLOW_CONTROL_ERROR, "conn_window_exceeded", "DATA beyond the connection window")
        self.conn_recv_window -= flow
        data = self._unpad(flags, payload)
        end = bool(flags & f.FLAG_END_STREAM)
        self._count_empty(data, end)
        state = self._stream_state(sid)
        stream = self.streams.get(sid)
        if stream is None or stream.closed_remote:
            self.release_conn(flow)  # discarded: only the connection window counts
            if state == _IDLE:
                raise ConnError(f.PROTOCOL_ERROR, "data_on_idle_stream", "DATA on an idle stream")
            if state != _RESET_HERE:
                self.stream_error(sid, f.STREAM_CLOSED, "data_on_closed_stream", "DATA on a closed stream")
            return
        if flow > stream.recv_window:
            self.release_conn(flow)
            self.stream_error(sid, f.FLOW_CONTROL_ERROR, "stream_window_exceeded", "DATA beyond the stream window")
            return
        stream.recv_window -= flow
        stream.last_active_s = self.now_s
        stream.received += len(data)
        if flow > len(data):
            self.credit(stream, flow - len(data))  # padding is consumed at once
        if stream.content_length is not None and (stream.received > stream.content_length
                                                  or (end and stream.received != stream.content_length)):
            self.release_conn(len(data))
            self.stream_error(sid, f.PROTOCOL_ERROR, "content_length_mismatch", "DATA differs from content-length")
            return
        self.on_data(stream, data, end)

    def _on_headers_frame(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnError(f.PROTOCOL_ERROR, "headers_on_stream_0", "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        self._header_error = None
        if flags & f.FLAG_PRIORITY:
            if len(block) < 5:
                raise ConnError(f.FRAME_SIZE_ERROR, "bad_headers_priority", "HEADERS priority field truncated")
            if int.from_bytes(block[:4], "big") & 0x7FFFFFFF == sid:
                self._header_error = (f.PROTOCOL_ERROR, "self_dependency")
            block = block[5:]
        self._header_stream = sid
        self._header_end_stream = bool(flags & f.FLAG_END_STREAM)
        if flags & f.FLAG_END_HEADERS:
            self._count_empty(b"x", True)
            self._check_block_size(len(block))
            self._header_block_done(block)
        else:
            self._check_block_size(len(block))
            self._header_block = bytearray(block)

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnError(f.PROTOCOL_ERROR, "continuation_on_stream_0", "CONTINUATION on stream 0")
        if self._header_block is None:
            raise ConnError(f.PROTOCOL_ERROR, "unexpected_continuation", "CONTINUATION without HEADERS")
        self._count_empty(payload, bool(flags & f.FLAG_END_HEADERS))
        self._check_block_size(len(self._header_block) + len(payload))
        self._header_block += payload
        if flags & f.FLAG_END_HEADERS:
            block = bytes(self._header_block)
            self._header_block = None
            self._header_block_done(block)

    def _check_block_size(self, size: int) -> None:
        if size > self.limits.max_header_list_bytes:
            # never buffered or decoded: HPACK state would be lost anyway, so the connection goes
            raise ConnError(f.ENHANCE_YOUR_CALM, "header_block_too_large",
                            f"header block over {self.limits.max_header_list_bytes} bytes")

    def _header_block_done(self, block: bytes) -> None:
        try:
            headers, over = self._decoder.decode(block, self.limits.max_header_list_bytes,
                                                 self.limits.max_header_fields)
        except CompressionError as exc:
            raise ConnError(f.COMPRESSION_ERROR, "hpack", f"HPACK: {exc}") from None
        except FieldLimitExceeded as exc:
            raise ConnError(f.ENHANCE_YOUR_CALM, "too_many_header_fields", str(exc)) from None
        sid, end = self._header_stream, self._header_end_stream
        if self.is_client:
            self._response_headers(sid, headers, end)
        else:
            self._request_headers(sid, headers, end, over)

    def _request_headers(self, sid: int, headers: Headers, end: bool, over: str | None) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            # trailers (or a broken second HEADERS) on an open stream
            if stream.closed_remote:
                self.stream_error(sid, f.STREAM_CLOSED, "headers_on_half_closed", "HEADERS after END_STREAM")
            elif not end:
                self.stream_error(sid, f.PROTOCOL_ERROR, "second_headers", "second HEADERS without END_STREAM")
            elif over is not None or (problem := request_header_problem(headers, True)) is not None:
                self.stream_error(sid, f.PROTOCOL_ERROR, "bad_trailers", over or problem or "")
            else:
                stream.last_active_s = self.now_s
                if stream.content_length is not None and stream.received != stream.content_length:
                    self.stream_error(sid, f.PROTOCOL_ERROR, "content_length_mismatch", "DATA differs from length")
                    return
                self.on_data(stream, b"", True)
            return
        state = self._stream_state(sid)
        if state != _IDLE:
            if sid in self._closed_ids:
                raise ConnError(f.STREAM_CLOSED, "headers_on_closed_stream", f"HEADERS on closed stream {sid}")
            raise ConnError(f.PROTOCOL_ERROR, "stream_id_not_increasing", f"HEADERS on stream {sid}, lower than "
                            f"stream {self.last_peer_stream_id} opened before")
        if sid % 2 == 0:
            raise ConnError(f.PROTOCOL_ERROR, "even_stream_id", "client-initiated stream ids are odd")
        self.last_peer_stream_id = sid
        if self.goaway_sent:
            self._remember_closed(sid, _RESET_HERE)
            self._send_control(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        if self._header_error is not None:
            code, reason = self._header_error
            self.stream_error(sid, code, reason)
            return
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self._refused_streams += 1
            if self.limits.guard_floods and self._refused_streams > self.limits.max_concurrent_streams:
                # a client that keeps ignoring the advertised limit is not racing a SETTINGS change
                raise ConnError(f.ENHANCE_YOUR_CALM, "concurrent_stream_limit_ignored",
                                f"more than {self.limits.max_concurrent_streams} streams refused for the limit")
            self.stream_error(sid, f.REFUSED_STREAM, "too_many_streams",
                              f"more than {self.limits.max_concurrent_streams} concurrent streams")
            return
        problem = request_header_problem(headers, False) if over is None else None
        if problem is not None:
            self.stream_error(sid, f.PROTOCOL_ERROR, "malformed_request", problem)
            return
        stream = self.open_stream(sid, None)
        self.streams_opened += 1
        if over is None:
            for k, v in headers:
                if k == "content-length":
                    if not v.isascii() or not v.isdigit():
                        self.stream_error(sid, f.PROTOCOL_ERROR, "bad_content_length", "content-length not a number")
                        return
                    stream.content_length = int(v)
                    if end and stream.content_length:
                        self.stream_error(sid, f.PROTOCOL_ERROR, "content_length_mismatch", "no DATA")
                        return
        if end:
            stream.closed_remote = True
        self.on_request(stream, headers, end, over)

    def _response_headers(self, sid: int, headers: Headers, end: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.closed_remote:
            if self._stream_state(sid) == _IDLE:
                raise ConnError(f.PROTOCOL_ERROR, "headers_on_idle_stream",
                               f"HEADERS on stream {sid}, never opened (next {self.next_local_stream_id()})")
            return  # late headers of a stream we reset
        if self._header_error is not None:
            self.stream_error(sid, self._header_error[0], self._header_error[1])
            return
        stream.last_active_s = self.now_s
        self.on_headers(stream, headers, end)

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnError(f.FRAME_SIZE_ERROR, "bad_window_update_length", "WINDOW_UPDATE not 4 bytes")
        if self.limits.guard_floods:
            self._window_updates += 1
            allowed = 5 + 2 * (self.streams_opened + self.limits.max_inbound_window_updates_per_data_frame
                               * self._data_frames_sent)
            if self._window_updates > allowed:
                raise ConnError(f.ENHANCE_YOUR_CALM, "window_update_flood", "too many WINDOW_UPDATE frames")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise ConnError(f.PROTOCOL_ERROR, "window_update_zero", "WINDOW_UPDATE of 0")
            self.conn_send_window += increment
            if self.conn_send_window > f.MAX_WINDOW:
                raise ConnError(f.FLOW_CONTROL_ERROR, "conn_window_overflow", "connection window above 2^31-1")
            if self._blocked and not self._write_paused:
                for s in list(self._blocked.values()):
                    self._drain(s)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._stream_state(sid) == _IDLE:
                raise ConnError(f.PROTOCOL_ERROR, "window_update_on_idle_stream", "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self.stream_error(sid, f.PROTOCOL_ERROR, "window_update_zero", "WINDOW_UPDATE of 0")
            return
        stream.send_credit += increment
        if self.peer_initial_window + stream.send_credit > f.MAX_WINDOW:
            self.stream_error(sid, f.FLOW_CONTROL_ERROR, "stream_window_overflow", "stream window above 2^31-1")
            return
        if stream.send_credit > self._max_send_credit:
            self._max_send_credit = stream.send_credit
        stream.last_active_s = self.now_s
        if stream.pending or stream.pending_end:
            self._drain(stream)

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnError(f.FRAME_SIZE_ERROR, "bad_rst_length", "RST_STREAM not 4 bytes")
        if sid == 0:
            raise ConnError(f.PROTOCOL_ERROR, "rst_on_stream_0", "RST_STREAM on stream 0")
        stream = self.streams.pop(sid, None)
        if stream is None:
            if self._stream_state(sid) == _IDLE:
                raise ConnError(f.PROTOCOL_ERROR, "rst_on_idle_stream", "RST_STREAM on an idle stream")
            return
        self._blocked.pop(sid, None)
        self._remember_closed(sid, _CLOSED_THERE)
        self._stream_gone()
        if self.limits.guard_floods and not stream.response_started:
            self._premature_resets += 1
            opened = self.streams_opened
            if (opened >= self.limits.premature_reset_min_streams
                    and self._premature_resets > self.limits.premature_reset_ratio * opened):
                self.on_reset(stream, int.from_bytes(payload, "big"), local=False)
                raise ConnError(f.ENHANCE_YOUR_CALM, "premature_resets", "too many streams reset before a response")
        self.on_reset(stream, int.from_bytes(payload, "big"), local=False)

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ConnError(f.PROTOCOL_ERROR, "settings_on_stream", "SETTINGS on a stream")
        if flags & f.FLAG_ACK:
            if payload:
                raise ConnError(f.FRAME_SIZE_ERROR, "settings_ack_payload", "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnError(f.FRAME_SIZE_ERROR, "bad_settings_length", "SETTINGS length not a multiple of 6")
        for key, value in struct.iter_unpack(">HI", payload):
            self._apply_setting(key, value)
        self._send_control(f.frame(f.SETTINGS, f.FLAG_ACK, 0))

    def _apply_setting(self, key: int, value: int) -> None:
        if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
            if value > f.MAX_WINDOW:
                raise ConnError(f.FLOW_CONTROL_ERROR, "bad_initial_window", "SETTINGS_INITIAL_WINDOW_SIZE > 2^31-1")
            if value + self._max_send_credit > f.MAX_WINDOW and self.streams:
                # the bound says maybe: find the real largest credit (rare, O(streams))
                self._max_send_credit = max((s.send_credit for s in self.streams.values()), default=0)
                if value + self._max_send_credit > f.MAX_WINDOW:
                    raise ConnError(f.FLOW_CONTROL_ERROR, "initial_window_overflow", "a stream window above 2^31-1")
            grew = value > self.peer_initial_window
            self.peer_initial_window = value  # every stream's window moves with it: O(1)
            if grew and self._blocked and not self._write_paused:
                for s in list(self._blocked.values()):
                    self._drain(s)
        elif key == f.SETTINGS_MAX_FRAME_SIZE:
            if not f.DEFAULT_MAX_FRAME <= value <= _MAX_FRAME_LIMIT:
                raise ConnError(f.PROTOCOL_ERROR, "bad_max_frame_size", f"SETTINGS_MAX_FRAME_SIZE {value}")
            self.peer_max_frame = value
        elif key == f.SETTINGS_ENABLE_PUSH:
            if value > 1:
                raise ConnError(f.PROTOCOL_ERROR, "bad_enable_push", f"SETTINGS_ENABLE_PUSH {value}")
        elif key == f.SETTINGS_HEADER_TABLE_SIZE:
            self._encoder.set_table_size(value)
        elif key == f.SETTINGS_MAX_CONCURRENT_STREAMS:
            self.peer_max_streams = value

    def _on_priority(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise ConnError(f.PROTOCOL_ERROR, "priority_on_stream_0", "PRIORITY on stream 0")
        if self.limits.guard_floods:
            self._priority_frames += 1
            if self._priority_frames > self.limits.max_inbound_priority_frames_per_stream * (1 + self.streams_opened):
                raise ConnError(f.ENHANCE_YOUR_CALM, "priority_flood", "too many PRIORITY frames")
        if len(payload) != 5:
            self.stream_error(sid, f.FRAME_SIZE_ERROR, "bad_priority_length", "PRIORITY not 5 bytes")
            return
        if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
            self.stream_error(sid, f.PROTOCOL_ERROR, "self_dependency", "stream depends on itself")
        # priorities are advisory (RFC 9113 §5.3.2) and ignored

    # ------------------------------------------------------------ flow control, receive side

    def credit(self, stream: Stream, n: int) -> None:
        """`n` bytes of `stream` moved on: give the peer that much stream and connection window back."""
        self.release_conn(n)
        self.credit_stream(stream, n)

    def credit_stream(self, stream: Stream, n: int) -> None:
        """Give the peer `n` bytes of stream window back (batched into WINDOW_UPDATEs)."""
        if stream.closed_remote or stream.id not in self.streams or n <= 0:
            return
        stream.recv_owed += n
        if stream.recv_owed >= self.limits.stream_window // 4:
            self._send(f.window_update(stream.id, stream.recv_owed))
            stream.recv_window += stream.recv_owed
            stream.recv_owed = 0

    def release_conn(self, n: int) -> None:
        """`n` received bytes are no longer held: the peer may send them again (batched)."""
        if n <= 0 or self.closed:
            return
        self._conn_recv_owed += n
        if self._conn_recv_owed >= self.conn_recv_target // 4:
            credit = min(self._conn_recv_owed, self.conn_recv_target - self.conn_recv_window)
            self._conn_recv_owed = 0
            if credit > 0:
                self.conn_recv_window += credit
                self._send(f.window_update(0, credit))

    # ------------------------------------------------------------ writing

    def open_stream(self, stream_id: int, owner: object) -> Stream:
        """Register a stream (its send window starts at the peer's initial window)."""
        s = Stream(stream_id, self.limits.stream_window, owner, self.now_s)
        self.streams[stream_id] = s
        self.idle_since_s = None
        return s

    def send_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        """HEADERS (+CONTINUATION); trailers wait behind DATA that is still waiting for window."""
        if stream.closed_local:
            return
        if end_stream and (stream.pending or stream.id in self._blocked):
            stream.pending_trailers = headers
            return
        stream.response_started = True
        stream.last_active_s = self.loop.time()
        block = self._encoder.encode(headers)
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
        """DATA within the flow-control windows; the rest waits for WINDOW_UPDATE (or for the peer to read)."""
        if stream.closed_local:
            return
        if data:
            stream.pending.append(data)
        if end_stream:
            stream.pending_end = True
        self._drain(stream)

    def _drain(self, stream: Stream) -> None:
        if self._write_paused:
            self._blocked[stream.id] = stream
            return
        sent = 0
        pending = stream.pending
        frames = 0
        while pending:
            window = min(self.conn_send_window, self.peer_initial_window + stream.send_credit)
            if window <= 0:
                self._blocked[stream.id] = stream
                break
            chunk = pending[0]
            n = min(len(chunk), window, self.peer_max_frame)
            if n < len(chunk):
                # views, not copies: slicing bytes would copy the rest of a large message for every frame
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                pending[0] = view[n:]
                chunk = view[:n]
            else:
                pending.popleft()
            last = not pending and stream.pending_end and stream.pending_trailers is None
            self._send(f.frame(f.DATA, f.FLAG_END_STREAM if last else 0, stream.id, chunk))
            frames += 1
            self.conn_send_window -= n
            stream.send_credit -= n
            sent += n
            if last:
                self._local_end(stream)
        self._data_frames_sent += frames
        if not pending:
            self._blocked.pop(stream.id, None)
            if stream.pending_trailers is not None:
                trailers, stream.pending_trailers = stream.pending_trailers, None
                self.send_headers(stream, trailers, True)
            elif stream.pending_end and not stream.closed_local:
                self._send(f.frame(f.DATA, f.FLAG_END_STREAM, stream.id))
                self._local_end(stream)
        if sent:
            # activity is bytes the peer actually takes, not bytes queued for it
            stream.last_active_s = self.loop.time()
            if stream.on_sent is not None:
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
        if self.streams.pop(stream.id, None) is not None:
            self._remember_closed(stream.id, _CLOSED_THERE)
            self._stream_gone()
        self._blocked.pop(stream.id, None)

    def blocked_streams(self) -> dict[int, Stream]:
        """Streams with data waiting for flow-control window or for the peer to read."""
        return self._blocked

    def _stream_gone(self) -> None:
        if not self.streams:
            self.idle_since_s = self.now_s

    def reset(self, stream: Stream, error_code: int) -> None:
        """RST_STREAM and forget the stream."""
        if stream.id in self.streams and not (stream.closed_local and stream.closed_remote):
            self._send_control(f.rst_stream(stream.id, error_code))
            self._remember_closed(stream.id, _RESET_HERE)
        stream.closed_local = stream.closed_remote = True
        stream.pending.clear()
        if self.streams.pop(stream.id, None) is not None:
            self._stream_gone()
        self._blocked.pop(stream.id, None)

    # ------------------------------------------------------------ events for subclasses

    def on_request(self, stream: Stream, headers: Headers, end_stream: bool, over_limit: str | None) -> None:
        """Server side: a client opened `stream` with valid request headers (`over_limit`: why they are too big)."""

    def on_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        """Client side: response headers or trailers arrived."""

    def on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        """DATA arrived on an open stream (padding removed; the owner credits the bytes as they move on)."""

    def on_reset(self, stream: Stream, error_code: int, local: bool) -> None:
        """The stream is gone: reset by the peer, or (`local`) by us for breaking a stream rule."""

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The peer will not accept streams above `last_stream_id`."""

    def on_connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection is gone."""

    def on_protocol_error(self, scope: str, code: int, reason: str, detail: str) -> None:
        """The peer broke a rule (counted and logged by the owner)."""

    def on_internal_error(self, exc: Exception) -> None:
        """Handling the peer's frames raised: a bug (logged by the owner); the connection is closed."""

    def after_frames(self) -> None:
        """A slice of received frames was handled (work deferred to the end of a read runs here)."""
