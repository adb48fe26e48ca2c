"""The original FlexLB's HTTP API (its `server.port`): what RTP-LLM frontends and operators call there.

Served on the HTTP API port and, for existing tooling, on the management port too. Every route is
open and read-only; the mutating consistency endpoints (notify/snapshot) are ConsistencyRoutes'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from flexlb.admin_http.body import read_json_object

MASTER_INFO_PATH = "/rtp_llm/master/info"


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"success": False, "code": status, "error_message": reason}, status=status)


class ApiRoutes:
    """master/info (always, HA or not), HEAD's `/health`, and the in-flight view."""

    def __init__(self, master_info: Callable[[], dict[str, Any]], draining: Callable[[], bool],
                 inflight: Callable[[], dict[str, Any]]) -> None:
        self._master_info = master_info
        self._draining = draining
        self._inflight = inflight

    def register(self, app: web.Application) -> None:
        """Add the routes of the HTTP API port."""
        self.register_shared(app)
        app.router.add_get("/health", self.health)

    def register_shared(self, app: web.Application) -> None:
        """The routes the management port serves too (its `/health` is actuator's, as Spring's)."""
        app.router.add_post(MASTER_INFO_PATH, self.master_info)
        app.router.add_get("/rtp_llm/inflight_status", self.inflight_status)

    async def master_info(self, request: web.Request) -> web.Response:
        """Frontends' heartbeat and master discovery: POSTed every second with a JSON body we do not need."""
        if request.can_read_body:
            body = await read_json_object(request, _error)
            if isinstance(body, web.Response):
                return body
        return web.json_response(self._master_info())

    async def health(self, request: web.Request) -> web.Response:
        """FlexLB HEAD's `/health`: 200 "success", 404 "shutdown received" once draining."""
        if self._draining():
            return web.Response(status=404, text="shutdown received")
        return web.Response(text="success")

    async def inflight_status(self, request: web.Request) -> web.Response:
        """Calls and reservations held per worker, in FlexLB's `/rtp_llm/inflight_status` shape."""
        return web.json_response(self._inflight())
