"""Limits of the admin HTTP port, and the connection guard that enforces those aiohttp has no setting for.

aiohttp bounds each line, the header count and the body (client_max_size), not the whole head (a middleware
does), and has no timeout for reading a request head or body: a client sending half a request line would hold
its connection until the keep-alive timeout, and one dribbling a body would hold it for ever. The guard is a
RequestHandler that arms one timer per phase.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler, Middleware

from flexlb.admin_http.body import BodyTimeout


@dataclass(frozen=True)
class AdminLimits:
    """Defaults are tighter than nginx's / Envoy's (named beside each): admin requests are small and local."""

    # nginx client_max_body_size 1m; admin bodies are a few hundred bytes
    max_body_bytes: int = 64 * 1024
    # nginx large_client_header_buffers 4 8k: one request line <= 8k (aiohttp's own default, 8190)
    max_line_bytes: int = 8190
    # same directive: one header field <= 8k
    max_field_bytes: int = 8190
    # Envoy max_headers_count 100 (nginx has no count, only the total below)
    max_headers: int = 32
    # the whole head: nginx 4 x 8k = 32k (Envoy max_request_headers_kb 60)
    max_head_bytes: int = 32 * 1024
    # nginx client_header_timeout 60s (Envoy request_headers_timeout: none); from accept, then from a head's 1st byte
    header_timeout_s: float = 10.0
    # nginx client_body_timeout 60s between two reads; here the whole body, so dribbling a byte at a time fails too
    body_timeout_s: float = 10.0
    # nginx keepalive_timeout 75s (Envoy idle_timeout 1h): an idle connection between requests
    keepalive_timeout_s: float = 75.0
    # nginx worker_connections 512 per worker (Envoy: no per-listener default); scrapers and operators need few
    max_connections: int = 64


# after a late body is answered with 408, the connection is closed even if a handler ignored the error
_GRACE_S = 1.0

_PHRASES = {408: "Request Timeout", 503: "Service Unavailable"}


def _raw_response(status: int, reason: str) -> bytes:
    body = json.dumps({"error": reason}).encode()
    head = (
        f"HTTP/1.1 {status} {_PHRASES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Gate:
    """Open connections of one listening socket (shared by its handlers)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


class GuardedHandler(web.RequestHandler):
    """aiohttp's request handler plus head and body read deadlines and a connection cap.

    It reads aiohttp's `_messages` (heads parsed, not yet served) and `_request_in_progress` (as of 3.14);
    tests/test_admin_security.py fails should a new aiohttp change them.
    """

    def __init__(self, manager: web.Server, *, limits: AdminLimits, gate: _Gate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._gate = gate
        self._timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the request whose body is still arriving
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._gate.open += 1
        self._counted = True
        if self._gate.open > self._gate.limit:
            self._refuse(503, f"too many admin connections (limit {self._gate.limit})")
            return
        # like nginx, the first request's head is due within the header timeout of the accept
        self._arm(self._limits.header_timeout_s, self._head_late)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._body = None
        if self._counted:
            self._counted = False
            self._gate.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._body is None and data and self._timer is None:
            # bytes outside a body start a request head. A head begun in the same read that ended the previous
            # request is not seen here; aiohttp's keep-alive timeout still closes that connection
            self._arm(self._limits.header_timeout_s, self._head_late)
        queued = len(self._messages)
        super().data_received(data)
        parsed = list(itertools.islice(self._messages, queued, None))
        if parsed:
            self._disarm()
            payload = parsed[-1][1]
            if isinstance(payload, StreamReader) and not payload.is_eof():
                self._body = payload
                self._arm(self._limits.body_timeout_s, self._body_late)
                payload.on_eof(self._body_done)

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self._loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _body_done(self) -> None:
        self._disarm()
        self._body = None

    def _head_late(self) -> None:
        self._timer = None
        self._refuse(408, f"request head not received within {self._limits.header_timeout_s:g} s")

    def _body_late(self) -> None:
        self._timer = None
        payload, self._body = self._body, None
        if payload is not None and not payload.is_eof():
            # a handler waiting in read() gets this and answers 408; lingering reads stop on it too
            payload.set_exception(BodyTimeout(f"request body not received within {self._limits.body_timeout_s:g} s"))
        self.close()
        self._timer = self._loop.call_later(_GRACE_S, self.force_close)

    def _refuse(self, status: int, reason: str) -> None:
        """Answer and close now; while an earlier (pipelined) request is being served, close after its answer."""
        if self._request_in_progress or self._messages:
            self.close()
            return
        if self.transport is not None:
            self.transport.write(_raw_response(status, reason))
        self.force_close()


class GuardedSite(web.SockSite):
    """A SockSite whose connections are GuardedHandlers."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, limits: AdminLimits,
                 tls: ssl.SSLContext | None = None, **handler_args: Any) -> None:
        super().__init__(runner, sock)
        self._tls = tls  # HTTPS; the handshake is bounded by the head read time
        self._limits = limits
        self._handler_args = handler_args
        self.gate = _Gate(limits.max_connections)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner (SockSite.start would also serve)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def handler() -> GuardedHandler:
            return GuardedHandler(server, loop=loop, limits=self._limits, gate=self.gate, **self._handler_args)

        timeout_s = self._limits.header_timeout_s if self._tls is not None else None
        self._server = await loop.create_server(handler, sock=self._sock, ssl=self._tls,
                                                ssl_handshake_timeout=timeout_s)


def head_limit(max_head_bytes: int) -> Middleware:
    """431 for a head over `max_head_bytes` in total (aiohttp bounds each line and the count, not the sum)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        size = len(request.method) + len(request.raw_path) + len(" HTTP/1.1\r\n\r\n")
        size += sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if size > max_head_bytes:
            resp = web.json_response({"error": f"request head is {size} bytes; the limit is {max_head_bytes}"},
                                     status=431)
            resp.force_close()
            return resp
        return await handler(request)

    return check


def handler_args(limits: AdminLimits) -> dict[str, Any]:
    """aiohttp's own RequestHandler settings for these limits."""
    return {
        "access_log": None,
        "keepalive_timeout": limits.keepalive_timeout_s,
        "max_line_size": limits.max_line_bytes,
        "max_field_size": limits.max_field_bytes,
        "max_headers": limits.max_headers,
        # a gzip body is inflated before client_max_size sees it; admin clients never compress
        "auto_decompress": False,
    }
