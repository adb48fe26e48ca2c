"""The HTTP/2 frame relay engine: the gateway's gRPC port without terminating gRPC in Python.

Routed methods (GenerateStreamCall, BatchGenerateCall) are read up to their single request
message, routed by the shared Dispatcher, and forwarded to a pooled HTTP/2 connection of the
chosen worker; response HEADERS, DATA and trailers are passed through as they come (DATA bytes
untouched, header blocks re-encoded for the other connection's HPACK state). Every other
method — health, reflection, CheckHealth, FlexlbService — is passed through the same way to the
gateway's own grpc.aio server on a loopback port, so one port serves everything.

Clients are hostile territory: every limit of flexlb.config.EdgeLimits is enforced here or in
flexlb/h2/conn.py, a client's error ends only its stream or its connection, and nothing a client
sends can raise inside a worker connection's callbacks (a failure there ends that one call).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import resource
import ssl
import time
import zlib
from collections.abc import Callable

import grpc

from flexlb import wire
from flexlb.balancer.workers import WorkerAddr
from flexlb.call.dispatch import BATCH_GENERATE, GENERATE_STREAM, Dispatcher, Planned, Rejection, bad_request
from flexlb.call.failures_wire import engine_code_from_trailers
from flexlb.call.lifecycle import CallLife, CallPolicy, Metadata
from flexlb.call.metadata import forwarded_metadata
from flexlb.config import EdgeLimits
from flexlb.metrics import Metrics
from flexlb.ratelog import RateLimitedLog
from flexlb.relay.h2 import frames as f
from flexlb.relay.h2.conn import ConnLimits, H2Connection, Headers, Stream, WriteBatch
from flexlb.tls import PLAINTEXT, Dialer

log = logging.getLogger("flexlb.h2")

ROUTED_PATHS = {f"/RpcService/{GENERATE_STREAM}": GENERATE_STREAM, f"/RpcService/{BATCH_GENERATE}": BATCH_GENERATE}
_UPSTREAM_STREAM_WINDOW = 256 * 1024  # bounds what one slow client can make us hold per stream
_UPSTREAM_CONN_WINDOW = 16 * 1024 * 1024
_CLIENT_STREAM_WINDOW = 1024 * 1024
_FIRST_MESSAGE_CAP = 1024 * 1024  # larger first messages are relayed but not parsed for feedback
_INLINE_INFLATE_BYTES = 64 * 1024  # larger compressed requests are inflated off the event loop
# a compressed request inflates to at most this (or --max-message-bytes if lower): a few KiB of gzip must not
# make the gateway hold RTP-LLM's 1 GiB message limit
MAX_INFLATED_BYTES = 64 * 1024 * 1024
_FRAMES_PER_TURN = 1000  # a client's burst is handled in slices of this many frames
_MAX_LINGERING = 128  # closed connections kept reading for a moment so that their GOAWAY arrives
_UPSTREAM_LIMITS = ConnLimits(stream_window=_UPSTREAM_STREAM_WINDOW, conn_window=_UPSTREAM_CONN_WINDOW,
                              max_header_list_bytes=1024 * 1024, max_header_fields=10_000)


def _status_headers(code: grpc.StatusCode, message: str, extra: tuple[tuple[str, bytes], ...] = ()) -> Headers:
    """A trailers-only response carrying a gRPC status."""
    headers = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", str(code.value[0]))]
    if message:
        headers.append(("grpc-message", f.encode_grpc_message(message)))
    for k, v in extra:
        headers.append((k, f.binary_header_value(v)))
    return headers


_INFLATE_CHUNK = 1024 * 1024


def _inflate(message: bytes | memoryview, encoding: str, limit_bytes: int) -> bytes:
    """Decompress a request message, holding no more than `limit_bytes` (plus a chunk) at any time.

    Two passes: the first only counts (a bomb is refused having held one chunk at a time), the
    second fills a buffer of the exact size.
    """
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        size = 0
        inflater = zlib.decompressobj(wbits)
        data = message
        while data:
            size += len(inflater.decompress(data, _INFLATE_CHUNK))
            if size > limit_bytes:
                raise bad_request(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"decompressed request message larger than max ({limit_bytes} bytes)", "too_large")
            data = inflater.unconsumed_tail
        if not inflater.eof:
            raise zlib.error("incomplete stream")
        out = bytearray(size)
        inflater, data, pos = zlib.decompressobj(wbits), message, 0
        while data:
            chunk = inflater.decompress(data, _INFLATE_CHUNK)
            out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise bad_request(grpc.StatusCode.INTERNAL, f"cannot decompress request: {exc}") from None
    return bytes(out)  # the one copy an accepted message costs; a refused one never gets here


_NO_REQUEST = bad_request(grpc.StatusCode.INTERNAL, "Half-closed without a request")


class Call:
    """The HTTP/2 side of one client stream: its bytes and streams. A routed call's decisions are its `life`'s;
    this is the `CallPort` the lifecycle drives (start an attempt, stop it, answer the client)."""

    __slots__ = ("attempt", "body", "body_end", "buffered", "closed", "declared_bytes", "down", "down_conn", "first",
                 "life", "messages", "method", "msg_left", "path", "pending_initial", "prefix", "request_head",
                 "request_headers", "requested", "response_started", "up", "up_conn")

    def __init__(self, down_conn: DownstreamConnection, down: Stream, path: str, method: str | None,
                 request_headers: Headers) -> None:
        self.down_conn = down_conn
        self.down = down
        self.path = path
        self.method = method  # None: passed through to the gateway's own grpc server
        self.request_headers = request_headers
        self.life: CallLife | None = None  # routed calls only
        self.body = bytearray()  # request bytes not yet sent upstream
        self.body_end = False  # the client half-closed before the upstream stream existed
        self.buffered = 0  # received request bytes this call holds (counted against the buffer limits)
        self.declared_bytes: int | None = None  # framed size of the request message, from its prefix
        self.request_head = b""  # a passed-through request's first bytes, until its prefix is known
        self.requested = False  # the whole request went to the lifecycle
        self.up: Stream | None = None
        self.up_conn: UpstreamConnection | None = None
        self.attempt = 0  # numbers attempts, so that a late connect of an abandoned one is ignored
        self.response_started = False
        self.messages = 0
        self.msg_left = 0  # bytes left of the response message being relayed
        self.prefix = b""  # a gRPC message prefix split across DATA frames
        self.first: bytearray | None = None  # the first response message while it arrives
        self.closed = False
        self.pending_initial: Headers | None = None  # worker headers held until its first message

    @property
    def ended(self) -> bool:
        """Whether nothing more happens on this call."""
        return self.closed

    def start_response(self) -> None:
        """Something goes to the client now: release held headers first; no failover after this."""
        if self.pending_initial is not None:
            headers, self.pending_initial = self.pending_initial, None
            self.down_conn.send_headers(self.down, headers, False)
        self.response_started = True

    def _forget_attempt(self) -> None:
        self.up = None
        self.up_conn = None
        self.pending_initial = None
        self.messages = 0
        self.msg_left = 0
        self.prefix = b""
        self.first = None

    def last_active_s(self) -> float:
        """When a frame last moved on either of the call's streams; while the client is not taking what is
        queued for it, only the client side counts (a worker filling our buffer is no progress)."""
        down, up = self.down, self.up
        if down.pending or up is None:
            return down.last_active_s
        return max(down.last_active_s, up.last_active_s)

    # ---------------------------------------------------------------- the CallPort

    def start_attempt(self, planned: Planned, metadata: Metadata, timeout_s: float | None) -> None:
        """Open a stream to the planned worker with the request (role_addrs written for PD)."""
        if self.closed:
            return
        self._forget_attempt()
        self.attempt += 1
        attempt = self.attempt
        addr = planned.lease.decision.target.addr
        headers: Headers = [
            (":method", "POST"), (":scheme", "http"), (":path", self.path), (":authority", addr.key),
            ("te", "trailers"), ("content-type", "application/grpc"), *metadata,  # type: ignore[list-item]
        ]
        if timeout_s is not None:
            headers.append(("grpc-timeout", f.format_grpc_timeout(timeout_s)))
        body = planned.body
        edge = self.down_conn.edge

        def start(conn: UpstreamConnection) -> None:
            if not self.closed and self.attempt == attempt:
                try:
                    # prefix and message apart: a large message is sent from its one copy
                    conn.open_stream_for(self, headers, f.grpc_prefix(len(body)), False)
                    if self.up is not None:
                        conn.send_data(self.up, body, True)
                except Exception as exc:
                    edge.call_failed(self, exc)

        def fail(reason: str, detail: str) -> None:
            if self.closed or self.attempt != attempt or self.life is None:
                return
            try:
                if not self.life.attempt_failed(grpc.StatusCode.UNAVAILABLE.name, wire.CONNECT_FAILED):
                    self.life.give_up(grpc.StatusCode.UNAVAILABLE, reason, error_code=wire.CONNECT_FAILED,
                                      detail=detail)
            except Exception as exc:
                edge.call_failed(self, exc)

        edge.with_upstream(addr.key, addr.ip, addr.grpc_port, start, fail)

    def stop_attempt(self) -> None:
        """Cancel the worker stream of the attempt in progress."""
        self.attempt += 1  # a connect still in progress for it starts nothing
        if self.up is not None and self.up_conn is not None:
            self.up_conn.reset(self.up, f.CANCEL)
        self._forget_attempt()

    def answer(self, code: grpc.StatusCode, message: str, trailer: tuple[tuple[str, bytes], ...]) -> None:
        """End the client's stream with a gateway-made status, then let the call go."""
        status = _status_headers(code, message, trailer)
        down_conn, down = self.down_conn, self.down
        with contextlib.suppress(Exception):
            if down.pending or down.id in down_conn.blocked_streams():
                # trailers would wait behind data the client is not taking: drop both
                down_conn.reset(down, f.CANCEL)
            else:
                self.down_conn.edge.answer(down_conn, down, status[2:] if self.response_started else status)
        self.close()

    # ---------------------------------------------------------------- response side

    def count_messages(self, data: bytes) -> None:
        """Walk gRPC message boundaries in relayed bytes (counts messages, captures the first one)."""
        pos, n = 0, len(data)
        while pos < n:
            if self.msg_left:
                step = min(self.msg_left, n - pos)
                if self.first is not None:
                    self.first += data[pos : pos + step]
                self.msg_left -= step
                pos += step
                if not self.msg_left and self.first is not None:
                    self._first_complete()
                continue
            need = 5 - len(self.prefix)
            self.prefix += data[pos : pos + need]
            pos += min(need, n - pos)
            if len(self.prefix) == 5:
                self.msg_left = int.from_bytes(self.prefix[1:5], "big")
                compressed = self.prefix[0] == 1
                self.prefix = b""
                self.messages += 1
                if self.messages == 1:
                    # keep the first message (it is small: the first token) for the balancer's feedback
                    self.first = bytearray() if not compressed and self.msg_left <= _FIRST_MESSAGE_CAP else None
                    if self.first is None or not self.msg_left:
                        self._first_complete()

    def _first_complete(self) -> None:
        message = bytes(self.first) if self.first is not None else None
        self.first = None
        if self.life is not None:
            self.life.first_message(message)

    # ---------------------------------------------------------------- ends

    def reject(self, rejection: Rejection) -> None:
        """Answer the call with a gateway-made status (before anything reached a worker)."""
        if self.life is not None:
            self.life.reject(rejection)
            return
        self.down_conn.edge.dispatcher.reject(self.path, rejection)
        self.answer(rejection.code, rejection.message, rejection.trailer())

    def client_left(self) -> None:
        """The client reset the stream or its connection is gone."""
        if self.closed:
            return
        if self.life is not None:
            self.life.cancelled(self.messages)  # it stops the attempt
        elif self.up is not None and self.up_conn is not None:
            self.up_conn.reset(self.up, f.CANCEL)
        self.close()

    def worker_gone(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                    error_code: int = wire.CONNECTION_RESET_BY_PEER) -> None:
        """The worker's stream failed without a status: fail over if nothing was relayed, else end the call."""
        if self.closed:
            return
        life = self.life
        if life is None:
            self.answer(code, message, wire.error_trailer(error_code, message))
            return
        if not self.response_started and life.attempt_failed(code.name, error_code):
            return
        # answers (trailers after what was relayed) and closes
        life.give_up(code, message, self.messages, error_code=error_code)

    def close(self) -> None:
        """Let go of the call's engine state: held request bytes, the edge's record (once)."""
        if self.closed:
            return
        self.closed = True
        self.body = bytearray()
        edge = self.down_conn.edge
        edge.release_buffered(self, self.buffered)
        edge.calls.discard(self)
        edge.awaiting_extension.pop(self, None)


class DownstreamConnection(H2Connection):
    """A client's connection to the gateway's gRPC port."""

    def __init__(self, edge: Edge) -> None:
        super().__init__(edge.loop, edge.client_limits, batch=edge.writes)
        self.edge = edge
        self.client_id = f"c{next(edge.connection_ids)}"  # the prefill queue's fairness key
        self.buffered = 0  # request bytes received on this connection and not yet moved on
        self.extended: Call | None = None  # the call allowed a message larger than the connection window
        self.extension = 0  # bytes of window granted to that call beyond the connection's own
        self._ready: list[Call] = []  # requests completed in this read, routed once the read is handled
        self._lingering = False
        # the window beyond RFC 9113's initial 65,535 bytes is granted out of the gateway's request buffer
        self.full_window = self.conn_recv_target
        self.conn_recv_target = f.DEFAULT_WINDOW

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.edge.admit(self)

    def on_request(self, stream: Stream, headers: Headers, end_stream: bool, over_limit: str | None) -> None:
        edge = self.edge
        if over_limit is not None:
            edge.metrics.client_protocol_errors.labels("stream", "RESOURCE_EXHAUSTED", "header_limit").inc()
            message = f"request headers: {over_limit}"
            edge.answer(self, stream, _status_headers(grpc.StatusCode.RESOURCE_EXHAUSTED, message,
                                                      wire.error_trailer(wire.INVALID_PARAMS, message)))
            return
        path = ""
        method_ok = False
        timeout_header: str | None = None
        for k, v in headers:
            if k == ":path":
                path = v
            elif k == ":method":
                method_ok = v == "POST"
            elif k == "grpc-timeout":
                timeout_header = v
        call = Call(self, stream, path, ROUTED_PATHS.get(path) if method_ok else None, headers)
        stream.owner = call
        edge.calls.add(call)
        timeout_s = f.parse_grpc_timeout(timeout_header) if timeout_header is not None else None
        if call.method is not None:
            deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
            call.life = CallLife(edge.dispatcher, edge.policy, call, self.loop, call.method,
                                 forwarded_metadata(headers), deadline_s, self.client_id)
        if timeout_header is not None and timeout_s is None:
            # what grpc C-core answers (and a client sees the same from a worker behind the gateway)
            call.reject(bad_request(grpc.StatusCode.INTERNAL, "Error parsing 'grpc-timeout' metadata"))
            return
        if call.life is None:
            if end_stream and path in wire.ONE_REQUEST_PATHS:
                call.reject(_NO_REQUEST)
                return
            edge.open_passthrough(call, end_stream)
        elif end_stream:
            self._ready.append(call)
        else:
            call.life.admitted()  # answers at once while draining

    def on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        call = stream.owner
        if end_stream:
            self.remote_end(stream)
        if not isinstance(call, Call) or call.ended:
            self.credit(stream, len(data))
            return
        edge = self.edge
        if call.method is None:
            if call.path in wire.ONE_REQUEST_PATHS:
                problem = self._one_request_problem(call, data, end_stream)
                if problem is not None:
                    # grpc C-core would wait for the rest of the message for ever; answer as grpc-java does
                    if call.up is not None and call.up_conn is not None:
                        call.up_conn.reset(call.up, f.CANCEL)
                    self.credit(stream, len(data))
                    call.reject(problem)
                    return
            # passthrough: credit comes back as the control server takes the bytes (up.on_sent)
            if call.up is not None and call.up_conn is not None:
                edge.hold(call, len(data))
                call.up_conn.send_data(call.up, data, end_stream)
            else:
                edge.hold(call, len(data))
                call.body += data
                call.body_end = end_stream
            return
        if call.requested:
            self.credit(stream, len(data))  # a unary request has one message; anything after it is dropped
            return
        call.body += data
        edge.hold(call, len(data))
        if call.declared_bytes is None and len(call.body) >= 5:
            call.declared_bytes = 5 + int.from_bytes(call.body[1:5], "big")
            if call.declared_bytes - 5 > edge.max_message_bytes:
                call.reject(bad_request(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"request message larger than max ({call.declared_bytes - 5} vs. {edge.max_message_bytes})",
                    "too_large"))
                return
            if call.declared_bytes > edge.largest_request_bytes():
                call.reject(bad_request(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"request message larger than this gateway can buffer ({call.declared_bytes - 5} vs. "
                    f"{edge.largest_request_bytes() - 5} bytes, --request-buffer-bytes)", "too_large"))
                return
            edge.maybe_extend(call)
        if call.declared_bytes is not None and len(call.body) > call.declared_bytes:
            call.reject(bad_request(grpc.StatusCode.INVALID_ARGUMENT, "expected exactly one request message"))
            return
        # the stream window follows the message as it arrives; the connection window bounds what is held
        self.credit_stream(stream, len(data))
        if end_stream:
            self._ready.append(call)

    def _one_request_problem(self, call: Call, data: bytes, end_stream: bool) -> Rejection | None:
        """What is wrong with a passed-through one-message request so far (None: nothing yet)."""
        if call.declared_bytes is None:
            call.request_head += data[: 5 - len(call.request_head)]
            if len(call.request_head) == 5:
                call.declared_bytes = 5 + int.from_bytes(call.request_head[1:5], "big")
                if call.declared_bytes - 5 > self.edge.max_message_bytes:
                    return bad_request(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request message larger than max "
                                       f"({call.declared_bytes - 5} vs. {self.edge.max_message_bytes})", "too_large")
        if not end_stream:
            return None
        received = call.down.received
        if received == 0:
            return _NO_REQUEST
        if call.declared_bytes is None or received < call.declared_bytes:
            return bad_request(grpc.StatusCode.INTERNAL, "Encountered end-of-stream mid-frame")
        return None

    def after_frames(self) -> None:
        if not self._ready:
            return
        ready, self._ready = self._ready, []
        for call in ready:
            if not call.ended:  # a reset in the same read means the call is never routed (Rapid Reset)
                self.edge.request_complete(call)

    def on_reset(self, stream: Stream, error_code: int, local: bool) -> None:
        call = stream.owner
        if isinstance(call, Call):
            call.client_left()

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        pass  # the client stops opening streams; the ones we have finish normally

    def on_protocol_error(self, scope: str, code: int, reason: str, detail: str) -> None:
        self.edge.protocol_error(self, scope, code, reason, detail)

    def on_internal_error(self, exc: Exception) -> None:
        self.edge.internal_error("client connection", exc)

    def close(self, error_code: int = f.NO_ERROR, debug: str = "", linger_s: float = 1.0) -> None:
        if self.closed:
            return
        edge = self.edge
        # lingering holds a descriptor past the connection cap: only a bounded number at a time
        linger_s = linger_s if edge.lingering < _MAX_LINGERING else 0.0
        super().close(error_code, debug, linger_s)
        edge.discard(self)  # a closing connection no longer counts against the cap
        if linger_s > 0 and self.transport is not None:
            edge.lingering += 1  # until connection_lost, which comes once the transport is closed
            self._lingering = True

    def on_connection_lost(self, exc: Exception | None) -> None:
        if self._lingering:
            self.edge.lingering -= 1
            self._lingering = False
        self.edge.discard(self)
        for stream in list(self.streams.values()):
            self.on_reset(stream, f.CANCEL, local=True)
        self.streams.clear()
        for call in self._ready:
            call.client_left()
        self._ready.clear()


class UpstreamConnection(H2Connection):
    """The gateway's connection to one worker (or to its own grpc.aio server)."""

    is_client = True

    def __init__(self, edge: Edge, key: str) -> None:
        super().__init__(edge.loop, _UPSTREAM_LIMITS, batch=edge.writes)
        self.edge = edge
        self.key = key
        self._next_stream_id = 1
        self.accepting = True

    def next_local_stream_id(self) -> int:
        return self._next_stream_id

    def open_stream_for(self, call: Call, headers: Headers, body: bytes, end_stream: bool) -> None:
        """Start the upstream half of a call: HEADERS, then whatever request bytes are already in."""
        sid = self._next_stream_id
        self._next_stream_id += 2
        if self._next_stream_id > 2**30:
            self.accepting = False  # stream ids run out: new calls go to a fresh connection
        up = self.open_stream(sid, call)
        call.up, call.up_conn = up, self
        if call.method is None:
            # passthrough request bytes are credited to the client as the control server takes them
            def moved_on(n: int) -> None:
                call.down_conn.edge.release_buffered(call, n, credit_stream=True)

            up.on_sent = moved_on
        self.send_headers(up, headers, end_stream and not body)
        if body:
            self.send_data(up, body, end_stream)

    # a failure while relaying one call ends that call, never this shared connection
    def on_headers(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        call = stream.owner
        if not isinstance(call, Call):
            return
        try:
            self._relay_headers(stream, call, headers, end_stream)
        except Exception as exc:
            self.edge.call_failed(call, exc)

    def on_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        call = stream.owner
        if not isinstance(call, Call):
            return
        try:
            self._relay_data(stream, call, data, end_stream)
        except Exception as exc:
            self.edge.call_failed(call, exc)

    def on_reset(self, stream: Stream, error_code: int, local: bool) -> None:
        call = stream.owner
        if not isinstance(call, Call) or call.ended:
            return
        try:
            self._relay_reset(call, error_code)
        except Exception as exc:
            self.edge.call_failed(call, exc)

    def _relay_headers(self, stream: Stream, call: Call, headers: Headers, end_stream: bool) -> None:
        down_conn, down = call.down_conn, call.down
        if not end_stream:
            if call.life is None or call.messages:
                call.response_started = True
                down_conn.send_headers(down, headers, False)
            else:
                # held until the first message: a failover must not have shown the client this worker's headers
                call.pending_initial = headers
            return
        self.remote_end(stream)
        status = next((v for k, v in headers if k == "grpc-status"), None)
        code = _CODE_NAMES.get(status or "", "UNKNOWN")
        if not stream.closed_local:
            self.reset(stream, f.NO_ERROR)
        life = call.life
        engine_code = engine_code_from_trailers(headers) if life is not None and code != "OK" else None
        if life is not None and not call.response_started and call.messages == 0 \
                and life.attempt_failed(code, engine_code):
            return
        call.start_response()
        self.edge.answer(down_conn, down, headers)
        if life is not None:
            life.ended(code, call.messages, engine_code)
        call.close()

    def _relay_data(self, stream: Stream, call: Call, data: bytes, end_stream: bool) -> None:
        # the connection window comes back at once: only the stream window may wait for a slow client,
        # or a few slow clients would stall every call sharing this worker connection
        self.release_conn(len(data))
        if call.ended:
            self.credit_stream(stream, len(data))
            return
        call.start_response()
        call.count_messages(data)
        down = call.down
        if down.on_sent is None:
            up_conn = self

            def give_back(n: int, stream: Stream = stream) -> None:
                up_conn.credit_stream(stream, n)

            down.on_sent = give_back
        call.down_conn.send_data(down, data, False)
        if end_stream:
            # a gRPC response ends with trailers; a worker that ends without them failed the call
            self.remote_end(stream)
            call.worker_gone("worker ended the stream without trailers", grpc.StatusCode.INTERNAL, wire.UNKNOWN_ERROR)

    def _relay_reset(self, call: Call, error_code: int) -> None:
        if call.response_started:
            call.down_conn.reset(call.down, error_code)
            if call.life is not None:
                call.life.ended("CANCELLED" if error_code == f.CANCEL else "INTERNAL", call.messages)
            call.close()
            return
        # nothing reached the client yet: the worker refused or dropped the stream
        call.worker_gone(f"worker reset the stream (HTTP/2 error {error_code})")

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.accepting = False
        for sid, stream in list(self.streams.items()):
            if sid > last_stream_id:
                self.streams.pop(sid, None)
                self.on_reset(stream, f.REFUSED_STREAM, local=False)

    def on_protocol_error(self, scope: str, code: int, reason: str, detail: str) -> None:
        self.edge.worker_protocol_error(self, scope, code, reason, detail)

    def on_internal_error(self, exc: Exception) -> None:
        self.edge.internal_error("worker connection", exc)

    def on_connection_lost(self, exc: Exception | None) -> None:
        self.accepting = False
        self.edge.forget_upstream(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            call = stream.owner
            if not isinstance(call, Call) or call.ended:
                continue
            try:
                self._lost(call)
            except Exception as exc:
                self.edge.call_failed(call, exc)

    def _lost(self, call: Call) -> None:
        # after relayed messages the status still goes where clients look for it: trailers
        call.worker_gone("connection to the worker lost")


_CODE_NAMES = {str(c.value[0]): c.name for c in grpc.StatusCode}


def _open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class Edge:
    """Listens on the gateway's gRPC port and relays at the HTTP/2 frame level."""

    def __init__(self, dispatcher: Dispatcher, policy: CallPolicy, metrics: Metrics, limits: EdgeLimits,
                 max_message_bytes: int, control_port: Callable[[], int], tls: ssl.SSLContext | None = None,
                 dialer: Dialer = PLAINTEXT) -> None:
        """`tls`: the client-facing port speaks TLS (ALPN h2); `dialer`: how workers are reached (the loopback
        hop to the gateway's own grpc.aio server is always plaintext)."""
        self.dispatcher = dispatcher
        self.policy = policy
        self.metrics = metrics
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self.max_inflated_bytes = min(max_message_bytes, MAX_INFLATED_BYTES)
        self.client_limits = ConnLimits(
            stream_window=_CLIENT_STREAM_WINDOW,
            conn_window=limits.request_buffer_bytes_per_connection,
            max_concurrent_streams=limits.max_concurrent_streams,
            max_header_list_bytes=limits.max_header_list_bytes,
            max_header_fields=limits.max_header_fields,
            max_outbound_control_frames=limits.max_outbound_control_frames,
            guard_floods=True,
            max_inbound_priority_frames_per_stream=limits.max_inbound_priority_frames_per_stream,
            max_consecutive_empty_frames=limits.max_consecutive_empty_frames,
            max_inbound_window_updates_per_data_frame=limits.max_inbound_window_updates_per_data_frame,
            premature_reset_min_streams=limits.premature_reset_min_streams,
            premature_reset_ratio=limits.premature_reset_ratio,
            frames_per_turn=_FRAMES_PER_TURN,
        )
        self._control_port = control_port
        self.tls = tls
        self.dialer = dialer
        self.loop: asyncio.AbstractEventLoop  # set by start(), on the serving loop
        self.writes: WriteBatch  # one batch for all connections: output of one read goes out together
        self.server: asyncio.AbstractServer | None = None
        # insertion order is age order: the oldest idle connection is the first one found
        self.downstream: dict[DownstreamConnection, None] = {}
        self.calls: set[Call] = set()
        self.buffered = 0  # request bytes held for all clients
        # connection windows beyond the protocol's initial 65,535 bytes are reserved from the request buffer, so the
        # request bytes all clients may have in flight are bounded whatever the number of connections; windows get
        # half of it: the other half is the budget of messages larger than their connection's window (a window
        # granted cannot be taken back, so idle connections' windows would otherwise leave nothing for them)
        self.extension_pool = limits.request_buffer_bytes // 2
        self.window_pool = limits.request_buffer_bytes - self.extension_pool
        self.awaiting_extension: dict[Call, None] = {}  # large messages waiting for the budget, in arrival order
        self._short: dict[DownstreamConnection, None] = {}  # connections granted less than their full window
        self._upstreams: dict[str, list[UpstreamConnection]] = {}
        self._connecting: dict[str, asyncio.Task[UpstreamConnection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.max_connections = 0
        self.connection_ids = itertools.count(1)
        self.lingering = 0  # closed client connections still draining their input
        self.port = 0
        self._log = RateLimitedLog(log)

    def is_draining(self) -> bool:
        """Whether new calls are refused."""
        return self.dispatcher.is_draining()

    async def start(self, host: str, port: int, warm: list[WorkerAddr]) -> int:
        """Bind and serve; returns the bound port. Connections to `warm` workers are opened at once."""
        self.loop = asyncio.get_running_loop()
        self.writes = WriteBatch(self.loop)
        limits = self.limits
        self.max_connections = limits.max_connections or max(16, _open_file_limit() - limits.fd_headroom)
        for addr in warm:
            self.warm_upstream(addr)
        self.with_upstream("control", "127.0.0.1", self._control_port(), lambda conn: None,
                           lambda reason, detail: None)
        self.metrics.watch_edge(lambda: len(self.downstream), lambda: self.buffered)
        # TLS: the handshake is bounded by the handshake timeout too; the preface must then come within what is
        # left of it (a connection's clock starts at accept)
        tls_timeout_s = limits.handshake_timeout_s if self.tls is not None else None
        self.server = await self.loop.create_server(lambda: DownstreamConnection(self), host, port,
                                                    reuse_port=False, ssl=self.tls, ssl_handshake_timeout=tls_timeout_s,
                                                    ssl_shutdown_timeout=tls_timeout_s)
        self.port = self.server.sockets[0].getsockname()[1]
        self._arm_sweep()
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.downstream):
            conn.close()
        for conns in list(self._upstreams.values()):
            for c in conns:
                c.close(linger_s=0)
        for task in self._connecting.values():
            task.cancel()
        for t in list(self._tasks):
            t.cancel()

    # ---------------------------------------------------------------- client connections

    def admit(self, conn: DownstreamConnection) -> None:
        """A client connected: at the connection cap, the oldest connection without streams makes room."""
        if len(self.downstream) >= self.max_connections:
            victim = next((c for c in self.downstream if not c.streams and not c.closed), None)
            if victim is None:
                self.metrics.client_connection_closes.labels("too_many_connections").inc()
                self._log.log(logging.WARNING, "conn_cap", "client connection refused: %d connections open (cap)",
                              len(self.downstream))
                conn.close(f.ENHANCE_YOUR_CALM, "too many connections", linger_s=0.25)  # short: it holds an fd
                return
            self.metrics.client_connection_closes.labels("evicted").inc()
            victim.close(f.NO_ERROR, "connection cap reached: closing idle connections")
        self.downstream[conn] = None
        self._grant_window(conn)

    def _grant_window(self, conn: DownstreamConnection) -> None:
        grant = min(conn.full_window - conn.conn_recv_target, self.window_pool)
        if grant > 0:
            self.window_pool -= grant
            conn.conn_recv_target += grant
            conn.grow_conn_window(grant)
        if conn.conn_recv_target < conn.full_window:
            self._short[conn] = None
        else:
            self._short.pop(conn, None)
        if grant > 0 and self.awaiting_extension:
            self._serve_extensions()  # a larger window leaves less to extend

    def _return_window(self, n: int) -> None:
        self.window_pool += n
        for conn in list(self._short):
            if self.window_pool <= 0:
                break
            if not conn.closed:
                self._grant_window(conn)

    def discard(self, conn: DownstreamConnection) -> None:
        """A client connection is gone: its window goes back to the pool."""
        if self.downstream.pop(conn, None) is None:
            return
        self._short.pop(conn, None)
        conn.extended = None
        extension, conn.extension = conn.extension, 0
        self._return_window(conn.conn_recv_target - f.DEFAULT_WINDOW)
        self._return_extension(extension)

    def _arm_sweep(self) -> None:
        limits = self.limits
        tick_s = min(1.0, limits.handshake_timeout_s / 4, limits.idle_timeout_s / 4, limits.stream_idle_timeout_s / 4)
        self._sweep = self.loop.call_later(max(tick_s, 0.01), self._sweep_connections)

    def _sweep_connections(self) -> None:
        """Timeouts: handshake, idle connection, idle stream (one pass a tick, not a timer per stream)."""
        now = self.loop.time()
        limits = self.limits
        try:
            for conn in list(self.downstream):
                if conn.closed:
                    continue
                if not conn.handshake_done:
                    if now - conn.opened_s > limits.handshake_timeout_s:
                        self.metrics.client_connection_closes.labels("handshake_timeout").inc()
                        conn.close(f.PROTOCOL_ERROR, "no HTTP/2 preface and SETTINGS in time")
                    continue
                if conn.idle_since_s is not None:
                    if now - conn.idle_since_s > limits.idle_timeout_s:
                        self.metrics.client_connection_closes.labels("idle_timeout").inc()
                        conn.close(f.NO_ERROR, "idle")
                    continue
                for stream in list(conn.streams.values()):
                    call = stream.owner
                    if isinstance(call, Call) and not call.ended \
                            and now - call.last_active_s() > limits.stream_idle_timeout_s:
                        self.on_stream_idle(call)
        except Exception as exc:  # the sweep must keep running whatever one connection's state is
            self.internal_error("sweep", exc)
        self._arm_sweep()

    def protocol_error(self, conn: DownstreamConnection, scope: str, code: int, reason: str, detail: str) -> None:
        """A client broke a rule: count it, log it at a bounded rate."""
        name = f.ERROR_NAMES.get(code, str(code))
        self.metrics.client_protocol_errors.labels(scope, name, reason).inc()
        peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
        self._log.log(logging.INFO, reason, "client %s: %s error %s (%s): %s", peer, scope, name, reason, detail)

    def worker_protocol_error(self, conn: UpstreamConnection, scope: str, code: int, reason: str,
                              detail: str) -> None:
        """A worker broke a rule (its calls fail over or end with UNAVAILABLE)."""
        name = f.ERROR_NAMES.get(code, str(code))
        self.metrics.worker_protocol_errors.labels(scope, name, reason).inc()
        self._log.log(logging.WARNING, "worker:" + reason, "worker %s: %s error %s (%s): %s", conn.key, scope,
                      name, reason, detail)

    def internal_error(self, where: str, exc: Exception) -> None:
        """A bug surfaced while handling one peer; that peer's call or connection pays, nobody else."""
        self.metrics.edge_internal_errors.labels(where).inc()
        if self._log.log(logging.ERROR, "internal:" + where, "internal error in %s: %r", where, exc):
            log.debug("traceback", exc_info=exc)

    def call_failed(self, call: Call, exc: Exception) -> None:
        """Relaying `call` raised: end that call only (INTERNAL to its client)."""
        self.internal_error("call", exc)
        if call.ended:
            return
        with contextlib.suppress(Exception):
            if call.up is not None and call.up_conn is not None:
                call.up_conn.reset(call.up, f.CANCEL)
        with contextlib.suppress(Exception):
            call.down_conn.reset(call.down, f.INTERNAL_ERROR)
        with contextlib.suppress(Exception):
            if call.life is not None:
                call.life.ended("INTERNAL", call.messages)
        call.close()

    # ---------------------------------------------------------------- request buffering

    def hold(self, call: Call, n: int) -> None:
        """`call` now holds `n` more received request bytes."""
        call.buffered += n
        call.down_conn.buffered += n
        self.buffered += n

    def release_buffered(self, call: Call, n: int, credit_stream: bool = False) -> None:
        """`n` of the request bytes `call` held moved on (or were dropped): the client may send again."""
        n = min(n, call.buffered)
        if n <= 0:
            return
        call.buffered -= n
        conn = call.down_conn
        conn.buffered -= n
        self.buffered -= n
        if credit_stream:
            conn.credit(call.down, n)
        else:
            conn.release_conn(n)
        if conn.extended is call and (call.buffered == 0 or call.ended):
            conn.extended = None
            extension, conn.extension = conn.extension, 0
            self._return_extension(extension)

    def largest_request_bytes(self) -> int:
        """The largest framed request message sure to complete on any connection, even one holding no more than
        RFC 9113's initial window: that window plus the whole extension budget."""
        return f.DEFAULT_WINDOW + self.limits.request_buffer_bytes // 2

    def maybe_extend(self, call: Call) -> None:
        """A message larger than the connection window can complete when it is the connection's only large one:
        the excess comes from the extension budget, now or, when it is spent, once another large message
        completes (it waits in arrival order; bounded by the stream idle timeout)."""
        if not self._extend(call):
            self.awaiting_extension[call] = None

    def _extend(self, call: Call) -> bool:
        """Grant `call` its excess over the connection window; False when it must wait."""
        conn = call.down_conn
        assert call.declared_bytes is not None
        excess = call.declared_bytes - conn.conn_recv_target
        if excess <= 0:
            return True  # it fits the connection window: it waits for window like any other request
        if conn.extended is not None or excess > self.extension_pool:
            return False
        self.extension_pool -= excess
        conn.extended, conn.extension = call, excess
        conn.grow_conn_window(excess)
        return True

    def _return_extension(self, n: int) -> None:
        """A large message's extension is back: the next large messages waiting for one may go on."""
        self.extension_pool += n
        self._serve_extensions()

    def _serve_extensions(self) -> None:
        for call in list(self.awaiting_extension):
            if call.ended or call.requested or call.down_conn.closed or self._extend(call):
                del self.awaiting_extension[call]
            elif self.extension_pool <= 0:
                break

    # ---------------------------------------------------------------- upstream pool

    def forget_upstream(self, conn: UpstreamConnection) -> None:
        """Drop a dead or retiring connection from the pool."""
        conns = self._upstreams.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def warm_upstream(self, addr: WorkerAddr) -> None:
        """Open a connection to a worker now (one added to the cluster), not on its first call."""
        self.with_upstream(addr.key, addr.ip, addr.grpc_port, lambda conn: None, lambda reason, detail: None)

    def drop_upstream(self, key: str) -> None:
        """The worker left the cluster and its calls are done: close its connections (no call goes there now)."""
        task = self._connecting.pop(key, None)
        if task is not None:
            task.cancel()
        for c in self._upstreams.pop(key, []):
            c.close()

    def _ready_upstream(self, key: str) -> UpstreamConnection | None:
        for c in self._upstreams.get(key, ()):
            if c.accepting and not c.closed and len(c.streams) < c.peer_max_streams:
                return c
        return None

    async def _connect(self, key: str, host: str, port: int) -> UpstreamConnection:
        try:
            # workers over TLS when configured; the control hop stays plaintext on loopback
            tls = self.dialer.ssl if key != "control" else None
            _, conn = await self.loop.create_connection(
                lambda: UpstreamConnection(self, key), host, port, ssl=tls,
                server_hostname=self.dialer.server_hostname(host) if tls is not None else None,
                ssl_handshake_timeout=self.limits.handshake_timeout_s if tls is not None else None)
            self._upstreams.setdefault(key, []).append(conn)
            return conn
        finally:
            self._connecting.pop(key, None)

    def with_upstream(self, key: str, host: str, port: int, start: Callable[[UpstreamConnection], None],
                      fail: Callable[[str, str], None]) -> None:
        """Run `start` with a ready connection to `key`, connecting first if needed; `fail(message, detail)` when
        connecting fails (`message` for the client, without the address; `detail` for the log)."""
        conn = self._ready_upstream(key)
        if conn is not None:
            start(conn)
            return
        task = self._connecting.get(key)
        if task is None:
            task = self.loop.create_task(self._connect(key, host, port))
            self._connecting[key] = task

        def done(t: asyncio.Task[UpstreamConnection]) -> None:
            # addresses stay out of what clients see (RTP-LLM's frontend shows messages to end users)
            if t.cancelled():
                fail("connecting to the worker was cancelled", f"connecting to {host}:{port} was cancelled")
            elif (exc := t.exception()) is not None:
                fail(f"cannot connect to the worker: {type(exc).__name__}", f"{host}:{port}: {exc!r}")
            else:
                start(t.result())

        task.add_done_callback(done)

    # ---------------------------------------------------------------- calls

    def answer(self, conn: H2Connection, stream: Stream, headers: Headers) -> None:
        """End the client's stream with `headers`; a client still sending is told to stop (RST_STREAM NO_ERROR)."""
        conn.send_headers(stream, headers, True)
        if stream.closed_local and not stream.closed_remote and stream.id in conn.streams:
            conn.reset(stream, f.NO_ERROR)

    def request_complete(self, call: Call) -> None:
        """A routed call's whole request is in: hand its message to the call's lifecycle (inflated first)."""
        life = call.life
        assert life is not None
        body, call.body = call.body, bytearray()  # nothing writes to `body` any more
        call.requested = True
        # the request is the dispatcher's now (bounded by admission), no longer the connection's buffer
        self.release_buffered(call, call.buffered)
        try:
            message = self._unframe(call, body)
        except Rejection as rejection:
            life.reject(rejection)
            return
        if message is None:
            task = self.loop.create_task(self._inflate_then_request(call, bytes(memoryview(body)[5:])))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        del body  # a large request is held once: as the message
        life.request(message)

    async def _inflate_then_request(self, call: Call, compressed: bytes) -> None:
        encoding = next((v for k, v in call.request_headers if k == "grpc-encoding"), "identity")
        assert call.life is not None
        try:
            message = await self.loop.run_in_executor(None, _inflate, compressed, encoding, self.max_inflated_bytes)
        except Rejection as rejection:
            call.life.reject(rejection)
            return
        if not call.ended:
            call.life.request(message)

    def _unframe(self, call: Call, body: bytearray) -> bytes | None:
        """The request message (its one copy); None when it must be inflated off the event loop first."""
        if len(body) < 5:
            raise bad_request(grpc.StatusCode.INVALID_ARGUMENT, "expected one request message, got none")
        length = int.from_bytes(body[1:5], "big")
        if len(body) != 5 + length:
            raise bad_request(grpc.StatusCode.INVALID_ARGUMENT, "expected exactly one request message")
        if body[0] == 0:
            return bytes(memoryview(body)[5:])
        encoding = next((v for k, v in call.request_headers if k == "grpc-encoding"), "identity")
        if encoding not in ("gzip", "deflate"):
            raise bad_request(grpc.StatusCode.UNIMPLEMENTED, f"compression {encoding!r} is not supported")
        if length > _INLINE_INFLATE_BYTES:
            return None
        return _inflate(memoryview(body)[5:], encoding, self.max_inflated_bytes)

    def open_passthrough(self, call: Call, end_stream: bool) -> None:
        """Relay a call we do not route to the gateway's own grpc.aio server."""
        if end_stream:
            call.body_end = True

        def start(conn: UpstreamConnection) -> None:
            if call.ended:
                return
            body, call.body = bytes(call.body), bytearray()
            try:
                conn.open_stream_for(call, call.request_headers, body, call.body_end)
            except Exception as exc:
                self.call_failed(call, exc)

        def fail(reason: str, detail: str) -> None:
            if not call.ended:
                self._log.log(logging.ERROR, "control", "the gateway's own grpc server is unreachable: %s", detail)
                message = "gateway control server unavailable"
                call.answer(grpc.StatusCode.UNAVAILABLE, message, wire.error_trailer(wire.UNKNOWN_ERROR, message))

        self.with_upstream("control", "127.0.0.1", self._control_port(), start, fail)

    def on_stream_idle(self, call: Call) -> None:
        """Nothing moved on the call for the stream idle timeout: cancel upstream, tell the client."""
        self.metrics.client_connection_closes.labels("stream_idle_timeout").inc()
        message = "stream idle timeout"
        if call.life is not None:
            call.life.give_up(grpc.StatusCode.UNAVAILABLE, message, call.messages, error_code=wire.KEEP_ALIVE_TIMEOUT)
            return
        call.stop_attempt()
        call.answer(grpc.StatusCode.UNAVAILABLE, message, wire.error_trailer(wire.KEEP_ALIVE_TIMEOUT, message))

    def in_flight_streams(self) -> int:
        """Calls currently relayed (routed or passed through)."""
        return len(self.calls)
