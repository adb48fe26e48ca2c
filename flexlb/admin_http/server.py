"""Admin HTTP endpoints on their own port: /actuator/* (open, read-only) and /admin/* (Bearer token).

The actuator endpoints are also served at the root (`/health`, `/health/liveness`, `/health/readiness`,
`/prometheus`, `/info`), where FlexLB HEAD's management port (Spring actuator, base path "/") has them.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from flexlb.admin_http.auth import guard
from flexlb.admin_http.body import error_response, read_json_object
from flexlb.admin_http.limits import AdminLimits, GuardedSite, handler_args, head_limit
from flexlb.metrics import Metrics
from flexlb.readiness import DOWN, UP, Verdict, liveness

log = logging.getLogger("flexlb.admin")


class AdminServer:
    """Serves the admin endpoints from callables the composition root provides."""

    def __init__(
        self,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        info: Callable[[], dict[str, Any]],
        set_rotation: Callable[[str, bool, str], dict[str, Any] | None] | None = None,
        token: str | None = None,
        limits: AdminLimits | None = None,
        actuator: bool = True,
        readiness: Callable[[], Verdict] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`actuator=False`: only the routes added with add_routes (the HTTP API port of --server.port).
        `readiness`: the readiness probe's verdict (default: UP when `health` says so). `tls`: serve HTTPS."""
        self._actuator = actuator
        self._readiness = readiness
        self._tls = tls  # serve HTTPS
        self._metrics = metrics
        self._health = health
        self._info = info
        self._set_rotation = set_rotation
        self.token = token or None
        self.limits = limits or AdminLimits()
        self._runner: web.AppRunner | None = None
        self._site: GuardedSite | None = None
        self._sock: socket.socket | None = None
        self._route_hooks: list[Callable[[web.Application], None]] = []
        self.port = 0

    def add_routes(self, hook: Callable[[web.Application], None]) -> None:
        """More routes (e.g. the consistency endpoints), registered when the app is built."""
        self._route_hooks.append(hook)

    def app(self) -> web.Application:
        """The aiohttp application (also used directly by tests)."""
        app = web.Application(
            client_max_size=self.limits.max_body_bytes, middlewares=[head_limit(self.limits.max_head_bytes)]
        )
        actuator = {
            "/health": self._get_health,
            "/health/liveness": self._get_liveness,
            "/health/readiness": self._get_readiness,
            "/prometheus": self._get_prometheus,
            "/info": self._get_info,
        }
        if self._actuator:
            for path, handler in actuator.items():
                app.router.add_get("/actuator" + path, handler)
            app.router.add_post("/admin/workers/rotation", guard(self._post_rotation, lambda: self.token))
        for hook in self._route_hooks:
            hook(app)
        if self._actuator:
            # HEAD's root paths; a path another route set already serves keeps that route
            taken = {r.canonical for r in app.router.resources()}
            for path, handler in actuator.items():
                if path not in taken:
                    app.router.add_get(path, handler)
        return app

    @property
    def open_connections(self) -> int:
        """Connections the admin port holds now."""
        return self._site.gate.open if self._site is not None else 0

    def bind(self, host: str, port: int) -> int:
        """Take the port now (so replicas can advertise it before serving); returns it."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot bind the admin port {host}:{port}: {exc.strerror}") from exc
        sock.listen(128)
        self._sock = sock
        self.port = sock.getsockname()[1]
        return self.port

    async def start(self, host: str, port: int) -> int:
        """Serve (binding first unless bind() was called); returns the bound port (useful with port 0)."""
        if self._sock is None:
            self.bind(host, port)
        assert self._sock is not None
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        self._site = GuardedSite(self._runner, self._sock, self.limits, self._tls, **handler_args(self.limits))
        await self._site.start()
        if not self.token and self._actuator:
            log.warning("no admin token (FLEXLB_ADMIN_TOKEN / --admin-token): mutating admin endpoints accept "
                        "loopback callers only")
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def _get_health(self, request: web.Request) -> web.Response:
        up, detail = self._health()
        body = {"status": "UP" if up else "DOWN", **detail}
        return web.json_response(body, status=200 if up else 503)

    async def _get_liveness(self, request: web.Request) -> web.Response:
        """Spring Boot's liveness group: UP whenever the event loop answers (workers never matter)."""
        return _verdict_response(liveness())

    async def _get_readiness(self, request: web.Request) -> web.Response:
        """Spring Boot's readiness group: UP (200) when a call can be served; DOWN or OUT_OF_SERVICE (503)."""
        if self._readiness is not None:
            return _verdict_response(self._readiness())
        up, _ = self._health()
        return _verdict_response(Verdict(UP if up else DOWN))

    async def _get_prometheus(self, request: web.Request) -> web.Response:
        """Prometheus text format, or OpenMetrics when the scraper's Accept asks for it."""
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self._metrics.registry), headers={"Content-Type": content_type})

    async def _get_info(self, request: web.Request) -> web.Response:
        return web.json_response(self._info())

    async def _post_rotation(self, request: web.Request) -> web.Response:
        """Take a worker out of rotation (or put it back) by hand: {"worker": "ip:port", "in_rotation": bool}."""
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        worker, in_rotation, reason = body.get("worker"), body.get("in_rotation"), body.get("reason", "")
        if not isinstance(worker, str) or not worker:
            return _bad_request("field 'worker' is required: a string 'ip:grpc_port'")
        if not isinstance(in_rotation, bool):
            return _bad_request("field 'in_rotation' is required: true or false")
        if not isinstance(reason, str):
            return _bad_request("field 'reason' must be a string")
        result = self._set_rotation(worker, in_rotation, reason) if self._set_rotation else None
        if result is None:
            return web.json_response({"error": f"unknown worker {worker!r}"}, status=404)
        return web.json_response(result)


def _verdict_response(v: Verdict) -> web.Response:
    return web.json_response(v.body(), status=200 if v.ok else 503)


def _bad_request(reason: str) -> web.Response:
    return error_response(400, reason)
