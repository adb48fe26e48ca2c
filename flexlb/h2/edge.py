"""The HTTP/2 frame relay engine: the gateway's gRPC port without terminating gRPC in Python.

Routed methods (GenerateStreamCall, BatchGenerateCall) are read up to their single request
message, routed by the shared Dispatcher, and forwarded to a pooled HTTP/2 connection of the
chosen worker; response HEADERS, DATA and trailers are passed through as they come (DATA bytes
untouched, header blocks re-encoded for the other connection's HPACK state). Every other
method — health, reflection, CheckHealth, FlexlbService — is passed through the same way to the
gateway's own grpc.aio server on a loopback port, so one port serves everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from flexlb.balancer.workers import WorkerAddr
from flexlb.h2 import frames as f
from flexlb.h2.conn import H2Connection, Headers, Stream, WriteBatch
from flexlb.servicer.dispatch import BATCH_GENERATE, FAILOVER_CODES, GENERATE_STREAM, Dispatcher, Planned, Rejection

log = logging.getLogger("flexlb.h2")

ROUTED_PATHS = {f"/RpcService/{GENERATE_STREAM}": GENERATE_STREAM, f"/RpcService/{BATCH_GENERATE}": BATCH_GENERATE}
_UPSTREAM_STREAM_WINDOW = 256 * 1024  # bounds what one slow client can make us hold per stream
_CONN_WINDOW = 16 * 1024 * 1024
_CLIENT_STREAM_WINDOW = 1024 * 1024
_FIRST_MESSAGE_CAP = 1024 * 1024  # larger first messages are relayed but not parsed for feedback


@dataclass(frozen=True)
class EdgeLimits:
    """Limits of the frame relay."""

    max_message_bytes: int


def _status_headers(code: grpc.StatusCode, message: str, extra: tuple[tuple[str, bytes], ...] = ()) -> Headers:
    """A trailers-only response carrying a gRPC status."""
    headers = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", str(code.value[0]))]
    if message:
        headers.append(("grpc-message", f.encode_grpc_message(message)))
    for k, v in extra:
        headers.append((k, f.binary_header_value(v)))
    return headers


class Call:
    """One client stream relayed to one upstream stream."""

    __slots__ = ("body", "body_end", "deadline_at", "deadline_timer", "down", "down_conn", "ended", "first",
                 "first_timer", "messages", "method", "msg_left", "path", "pending_initial", "planned",
                 "prefix", "request_headers", "response_started", "up", "up_conn")

    def __init__(self, down_conn: DownstreamConnection, down: Stream, path: str, method: str | None,
                 request_headers: Headers) -> None:
        self.down_conn = down_conn
        self.down = down
        self.path = path
        self.method = method  # None: passed through to the gateway's own grpc server
        self.request_headers = request_headers
        self.body = bytearray()  # request bytes not yet sent upstream
        self.body_end = False  # the client half-closed before the upstream stream existed
        self.up: Stream | None = None
        self.up_conn: UpstreamConnection | None = None
        self.planned: Planned | None = None
        self.response_started = False
        self.messages = 0
        self.msg_left = 0  # bytes left of the response message being relayed
        self.prefix = b""  # a gRPC message prefix split across DATA frames
        self.first: bytearray | None = None  # the first response message while it arrives
        self.deadline_at: float | None = None
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.ended = False
        self.pending_initial: Headers | None = None  # worker headers held until its first message
        self.first_timer: asyncio.TimerHandle | None = None  # prefillGenerateTimeoutMs of this attempt

    def start_response(self) -> None:
        """Something goes to the client now: release held headers first; no failover after this."""
        if self.first_timer is not None:
            self.first_timer.cancel()
            self.first_timer = None
        if self.pending_initial is not None:
            headers, self.pending_initial = self.pending_initial, None
            self.down_conn.send_headers(self.down, headers, False)
        self.response_started = True

    def reset_attempt(self) -> None:
        """Forget the failed attempt's upstream state before the next one."""
        if self.first_timer is not None:
            self.first_timer.cancel()
            self.first_timer = None
        self.up = None
        self.up_conn = None
        self.planned = None
        self.pending_initial = None
        self.messages = 0
        self.msg_left = 0
        self.prefix = b""
        self.first = None

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
        if self.planned is not None:
            self.down_conn.edge.dispatcher.first_message(self.planned, message)

    def finish(self, code_name: str) -> None:
        """Release the load and count the ending, once."""
        if self.ended:
            return
        self.ended = True
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
        if self.first_timer is not None:
            self.first_timer.cancel()
        if self.planned is not None:
            self.down_conn.edge.dispatcher.finish(self.planned, code_name, self.messages)
        self.down_conn.edge.calls.discard(self)


class DownstreamConnection(H2Connection):
    """A client's connection to the gateway's gRPC port."""

    def __init__(self, edge: Edge) -> None:
        super().__init__(edge.loop, _CLIENT_STREAM_WINDOW, _CONN_WINDOW, batch=edge.writes)
        self.edge = edge
        self._last_stream_id = 0

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            # trailers from a client (unusual for gRPC): the end of its request
            self.on_data(stream, b"", 0, True)
            return
        if stream_id <= self._last_stream_id:
            return  # a stream we already closed; nothing to do
        if stream_id % 2 == 0:
            self.close(f.PROTOCOL_ERROR, "client-initiated stream ids are odd")
            return
        self._last_stream_id = stream_id
        path = ""
        method_ok = False
        for k, v in headers:
            if k == ":path":
                path = v
            elif k == ":method":
                method_ok = v == "POST"
        stream = self.new_stream(stream_id, None)
        if not path or not method_ok:
            self.reset(stream, f.PROTOCOL_ERROR)
            return
        call = Call(self, stream, path, ROUTED_PATHS.get(path), headers)
        stream.owner = call
        self.edge.calls.add(call)
        for k, v in headers:
            if k == "grpc-timeout":
                timeout_s = f.parse_grpc_timeout(v)
                if timeout_s is not None:
                    call.deadline_at = self.loop.time() + timeout_s
                    call.deadline_timer = self.loop.call_at(call.deadline_at, self.edge.on_deadline, call)
                break
        if call.method is None:
            self.edge.open_passthrough(call, end_stream)
        elif end_stream:
            self.remote_end(stream)
            self.edge.dispatch(call)
        elif self.edge.is_draining():
            rejection = Rejection(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down; retry elsewhere", "draining")
            self.edge.reject(call, rejection)

    def on_data(self, stream: Stream, data: bytes, flow_len: int, end_stream: bool) -> None:
        call = stream.owner
        assert isinstance(call, Call)
        if call.method is None:
            # passthrough (small control-plane calls): forward as it comes
            if call.up is not None and call.up_conn is not None:
                call.up_conn.send_data(call.up, data, end_stream)
            else:
                call.body += data
                call.body_end = end_stream
            self.credit(stream, flow_len)
            if end_stream:
                self.remote_end(stream)
            return
        if call.ended or call.planned is not None:
            self.credit(stream, flow_len)
            return
        call.body += data
        self.credit(stream, flow_len)
        if len(call.body) > self.edge.limits.max_message_bytes + 5:
            self.edge.reject(call, Rejection(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message larger than max ({len(call.body) - 5} vs. {self.edge.limits.max_message_bytes})",
                "too_large",
            ))
            self.reset(stream, f.NO_ERROR)
            return
        if end_stream:
            self.remote_end(stream)
            self.edge.dispatch(call)

    def on_reset(self, stream: Stream, error_code: int) -> None:
        call = stream.owner
        if isinstance(call, Call):
            if call.up is not None and call.up_conn is not None:
                call.up_conn.reset(call.up, f.CANCEL)
            call.finish("CANCELLED")

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        pass  # the client stops opening streams; the ones we have finish normally

    def on_connection_lost(self, exc: Exception | None) -> None:
        self.edge.downstream.discard(self)
        for stream in list(self.streams.values()):
            self.on_reset(stream, f.CANCEL)
        self.streams.clear()


class UpstreamConnection(H2Connection):
    """The gateway's connection to one worker (or to its own grpc.aio server)."""

    is_client = True

    def __init__(self, edge: Edge, key: str) -> None:
        super().__init__(edge.loop, _UPSTREAM_STREAM_WINDOW, _CONN_WINDOW, batch=edge.writes)
        self.edge = edge
        self.key = key
        self._next_stream_id = 1
        self.accepting = True

    def open_stream(self, call: Call, headers: Headers, body: bytes, end_stream: bool) -> None:
        """Start the upstream half of a call: HEADERS, then whatever request bytes are already in."""
        sid = self._next_stream_id
        self._next_stream_id += 2
        if self._next_stream_id > 2**30:
            self.accepting = False  # stream ids run out: new calls go to a fresh connection
        up = self.new_stream(sid, call)
        call.up, call.up_conn = up, self
        self.send_headers(up, headers, end_stream and not body)
        if body:
            self.send_data(up, body, end_stream)

    def on_headers(self, stream_id: int, headers: Headers, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        call = stream.owner
        assert isinstance(call, Call)
        down_conn, down = call.down_conn, call.down
        if not end_stream:
            if call.method is None or call.messages:
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
        if (call.method is not None and not call.response_started and call.messages == 0
                and code in _FAILOVER_NAMES and self.edge.failover(call, grpc.StatusCode[code])):
            return
        call.start_response()
        down_conn.send_headers(down, headers, True)
        if not down.closed_remote:
            down_conn.reset(down, f.NO_ERROR)  # the response is complete; the client may stop sending
        call.finish(code)

    def on_data(self, stream: Stream, data: bytes, flow_len: int, end_stream: bool) -> None:
        call = stream.owner
        assert isinstance(call, Call)
        call.start_response()
        call.count_messages(data)
        down = call.down
        if down.on_sent is None:
            up_conn = self

            def give_back(n: int, stream: Stream = stream) -> None:
                up_conn.credit(stream, n)

            down.on_sent = give_back
        padding = flow_len - len(data)
        if padding:
            self.credit(stream, padding)
        call.down_conn.send_data(down, data, False)
        if end_stream:
            # a gRPC response ends with trailers; a worker that ends without them failed the call
            self.remote_end(stream)
            status = _status_headers(grpc.StatusCode.INTERNAL, "worker ended the stream without trailers")
            call.down_conn.send_headers(down, status[2:], True)
            call.finish("INTERNAL")

    def on_reset(self, stream: Stream, error_code: int) -> None:
        call = stream.owner
        if not isinstance(call, Call) or call.ended:
            return
        if call.response_started:
            call.down_conn.reset(call.down, error_code)
            call.finish("CANCELLED" if error_code == f.CANCEL else "INTERNAL")
            return
        # nothing reached the client yet: the worker refused or dropped the stream
        if call.method is not None and self.edge.failover(call, grpc.StatusCode.UNAVAILABLE):
            return
        call.down_conn.send_headers(call.down, _status_headers(
            grpc.StatusCode.UNAVAILABLE, f"worker {self.key} reset the stream (HTTP/2 error {error_code})"), True)
        call.finish("UNAVAILABLE")

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.accepting = False
        for sid, stream in list(self.streams.items()):
            if sid > last_stream_id:
                self.streams.pop(sid, None)
                self.on_reset(stream, f.REFUSED_STREAM)

    def on_connection_lost(self, exc: Exception | None) -> None:
        self.accepting = False
        self.edge.forget_upstream(self)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            call = stream.owner
            if not isinstance(call, Call) or call.ended:
                continue
            message = f"connection to worker {self.key} lost"
            if call.response_started:
                # keep the status where clients look for it: trailers after what was relayed
                call.down_conn.send_headers(call.down, [("grpc-status", str(grpc.StatusCode.UNAVAILABLE.value[0])),
                                                        ("grpc-message", f.encode_grpc_message(message))], True)
            else:
                if call.method is not None and self.edge.failover(call, grpc.StatusCode.UNAVAILABLE):
                    continue
                call.down_conn.send_headers(call.down, _status_headers(grpc.StatusCode.UNAVAILABLE, message), True)
            call.finish("UNAVAILABLE")


_CODE_NAMES = {str(c.value[0]): c.name for c in grpc.StatusCode}
_FAILOVER_NAMES = frozenset(c.name for c in FAILOVER_CODES)


class Edge:
    """Listens on the gateway's gRPC port and relays at the HTTP/2 frame level."""

    def __init__(self, dispatcher: Dispatcher, limits: EdgeLimits, control_port: Callable[[], int]) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self._control_port = control_port
        self.loop: asyncio.AbstractEventLoop  # set by start(), on the serving loop
        self.writes: WriteBatch  # one batch for all connections: output of one read goes out together
        self.server: asyncio.AbstractServer | None = None
        self.downstream: set[DownstreamConnection] = set()
        self.calls: set[Call] = set()
        self._upstreams: dict[str, list[UpstreamConnection]] = {}
        self._connecting: dict[str, asyncio.Task[UpstreamConnection]] = {}
        self.port = 0

    def is_draining(self) -> bool:
        """Whether new calls are refused."""
        return self.dispatcher.is_draining()

    async def start(self, host: str, port: int, warm: list[WorkerAddr]) -> int:
        """Bind and serve; returns the bound port. Connections to `warm` workers are opened at once."""
        self.loop = asyncio.get_running_loop()
        self.writes = WriteBatch(self.loop)
        for addr in warm:
            self._with_upstream(addr.key, addr.ip, addr.grpc_port, lambda conn: None, lambda reason: None)
        self._with_upstream("control", "127.0.0.1", self._control_port(), lambda conn: None, lambda reason: None)

        def factory() -> DownstreamConnection:
            conn = DownstreamConnection(self)
            self.downstream.add(conn)
            return conn

        self.server = await self.loop.create_server(factory, host, port, reuse_port=False)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for conn in list(self.downstream):
            conn.close()
        for conns in list(self._upstreams.values()):
            for c in conns:
                c.close()
        for task in self._connecting.values():
            task.cancel()

    # ---------------------------------------------------------------- upstream pool

    def forget_upstream(self, conn: UpstreamConnection) -> None:
        """Drop a dead or retiring connection from the pool."""
        conns = self._upstreams.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)

    def _ready_upstream(self, key: str) -> UpstreamConnection | None:
        for c in self._upstreams.get(key, ()):
            if c.accepting and not c.closed and len(c.streams) < c.peer_max_streams:
                return c
        return None

    async def _connect(self, key: str, host: str, port: int) -> UpstreamConnection:
        try:
            _, conn = await self.loop.create_connection(lambda: UpstreamConnection(self, key), host, port)
            self._upstreams.setdefault(key, []).append(conn)
            return conn
        finally:
            self._connecting.pop(key, None)

    def _with_upstream(self, key: str, host: str, port: int, start: Callable[[UpstreamConnection], None],
                       fail: Callable[[str], None]) -> None:
        conn = self._ready_upstream(key)
        if conn is not None:
            start(conn)
            return
        task = self._connecting.get(key)
        if task is None:
            task = self.loop.create_task(self._connect(key, host, port))
            self._connecting[key] = task

        def done(t: asyncio.Task[UpstreamConnection]) -> None:
            if t.cancelled():
                fail(f"connecting to {key} was cancelled")
            elif t.exception() is not None:
                fail(f"cannot connect to worker {key}: {t.exception()}")
            else:
                start(t.result())

        task.add_done_callback(done)

    # ---------------------------------------------------------------- calls

    def reject(self, call: Call, rejection: Rejection) -> None:
        """Answer a call with a gateway-made status."""
        self.dispatcher.reject(call.method or call.path, rejection)
        call.down_conn.send_headers(call.down, _status_headers(rejection.code, rejection.message,
                                                               rejection.trailer()), True)
        call.finish(rejection.code.name)

    def dispatch(self, call: Call) -> None:
        """The whole request is in: route it (possibly after the batching window) and open the upstream stream."""
        body = bytes(call.body)
        call.body = bytearray()
        try:
            message = self._unframe(call, body)
            if self.is_draining():
                raise Rejection(grpc.StatusCode.UNAVAILABLE, "gateway is shutting down; retry elsewhere", "draining")
            if call.method == GENERATE_STREAM:
                self.dispatcher.submit_generate(message, lambda outcome: self._routed(call, outcome),
                                                alive=lambda: not call.ended)
                return
            planned = self.dispatcher.plan_batch(message)
        except Rejection as rejection:
            self.reject(call, rejection)
            return
        self._routed(call, planned)

    def _routed(self, call: Call, outcome: Planned | Rejection) -> None:
        if isinstance(outcome, Rejection):
            self.reject(call, outcome)
            return
        planned = outcome
        call.planned = planned
        addr: WorkerAddr = planned.lease.decision.target.addr
        timeout_s = self.dispatcher.first_message_timeout_s
        if timeout_s is not None and call.method == GENERATE_STREAM:
            call.first_timer = self.loop.call_later(timeout_s, self.on_first_message_timeout, call, planned)
        headers: Headers = [
            (":method", "POST"), (":scheme", "http"), (":path", call.path), (":authority", addr.key),
            ("te", "trailers"), ("content-type", "application/grpc"),
        ]
        for k, v in call.request_headers:
            if k[0] != ":" and not k.startswith("grpc-") and k not in ("te", "content-type"):
                headers.append((k, v))
        if call.deadline_at is not None:
            headers.append(("grpc-timeout", f.format_grpc_timeout(max(call.deadline_at - self.loop.time(), 1e-6))))
        framed = f.grpc_message_frame(planned.body)

        def start(conn: UpstreamConnection) -> None:
            if not call.ended:
                conn.open_stream(call, headers, framed, True)

        def fail(reason: str) -> None:
            if call.ended or call.planned is not planned:
                return
            if self.failover(call, grpc.StatusCode.UNAVAILABLE):
                return
            call.down_conn.send_headers(call.down, _status_headers(grpc.StatusCode.UNAVAILABLE, reason), True)
            call.finish("UNAVAILABLE")

        self._with_upstream(addr.key, addr.ip, addr.grpc_port, start, fail)

    def failover(self, call: Call, code: grpc.StatusCode) -> bool:
        """The attempt failed before its first message: route again elsewhere. False: give up (caller answers)."""
        planned = call.planned
        if planned is None or call.ended:
            return False
        if call.up is not None and call.up_conn is not None:
            call.up_conn.reset(call.up, f.CANCEL)
        call.reset_attempt()
        deadline_s = None
        if call.deadline_at is not None:
            deadline_s = time.monotonic() + (call.deadline_at - self.loop.time())
        nxt = self.dispatcher.retry(planned, code, deadline_s)
        if nxt is None:
            return False
        self._routed(call, nxt)
        return True

    def on_first_message_timeout(self, call: Call, planned: Planned) -> None:
        """prefillGenerateTimeoutMs passed without a first message: cancel this attempt, fail over or give up."""
        if call.ended or call.planned is not planned or call.messages:
            return
        call.first_timer = None
        if self.failover(call, grpc.StatusCode.DEADLINE_EXCEEDED):
            return
        call.down_conn.send_headers(call.down, _status_headers(
            grpc.StatusCode.DEADLINE_EXCEEDED, "no first token within prefillGenerateTimeoutMs"), True)
        call.finish("DEADLINE_EXCEEDED")

    def _unframe(self, call: Call, body: bytes) -> bytes:
        if len(body) < 5:
            raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "expected one request message, got none", "bad_request")
        length = int.from_bytes(body[1:5], "big")
        if len(body) != 5 + length:
            raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "expected exactly one request message", "bad_request")
        message = body[5:]
        if body[0] == 1:
            encoding = next((v for k, v in call.request_headers if k == "grpc-encoding"), "identity")
            if encoding not in ("gzip", "deflate"):
                raise Rejection(grpc.StatusCode.UNIMPLEMENTED, f"compression {encoding!r} is not supported",
                                "bad_request")
            try:
                message = zlib.decompress(message, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
            except zlib.error as exc:
                raise Rejection(grpc.StatusCode.INTERNAL, f"cannot decompress request: {exc}", "bad_request") from None
        return message

    def open_passthrough(self, call: Call, end_stream: bool) -> None:
        """Relay a call we do not route to the gateway's own grpc.aio server."""
        if end_stream:
            call.down_conn.remote_end(call.down)
            call.body_end = True

        def start(conn: UpstreamConnection) -> None:
            if not call.ended:
                body, call.body = bytes(call.body), bytearray()
                conn.open_stream(call, call.request_headers, body, call.body_end)

        def fail(reason: str) -> None:
            if not call.ended:
                call.down_conn.send_headers(call.down, _status_headers(grpc.StatusCode.UNAVAILABLE, reason), True)
                call.finish("UNAVAILABLE")

        self._with_upstream("control", "127.0.0.1", self._control_port(), start, fail)

    def on_deadline(self, call: Call) -> None:
        """The client's deadline passed: cancel upstream, tell the client."""
        if call.ended:
            return
        if call.up is not None and call.up_conn is not None:
            call.up_conn.reset(call.up, f.CANCEL)
        status = [("grpc-status", str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])),
                  ("grpc-message", "Deadline Exceeded")]
        with contextlib.suppress(Exception):
            if call.response_started:
                call.down_conn.send_headers(call.down, status, True)
            else:
                call.down_conn.send_headers(call.down, [(":status", "200"), ("content-type", "application/grpc"),
                                                        *status], True)
        call.finish("DEADLINE_EXCEEDED")

    def in_flight_streams(self) -> int:
        """Calls currently relayed (routed or passed through)."""
        return len(self.calls)

