"""Admin HTTP endpoints on their own port: /actuator/health, /actuator/prometheus, /actuator/info."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flexlb.metrics import Metrics


class AdminServer:
    """Serves the admin endpoints from callables the composition root provides."""

    def __init__(
        self,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        info: Callable[[], dict[str, Any]],
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._info = info
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        """The aiohttp application (also used directly by tests)."""
        app = web.Application()
        app.router.add_get("/actuator/health", self._get_health)
        app.router.add_get("/actuator/prometheus", self._get_prometheus)
        app.router.add_get("/actuator/info", self._get_info)
        return app

    async def start(self, host: str, port: int) -> int:
        """Bind and serve; returns the bound port (useful with port 0)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get_health(self, request: web.Request) -> web.Response:
        up, detail = self._health()
        body = {"status": "UP" if up else "DOWN", **detail}
        return web.json_response(body, status=200 if up else 503)

    async def _get_prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _get_info(self, request: web.Request) -> web.Response:
        return web.json_response(self._info())
