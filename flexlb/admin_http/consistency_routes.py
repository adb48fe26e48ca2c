"""Consistency endpoints of the admin sidecar (Bearer token), plus the original FlexLB aliases."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from flexlb.consistency.service import NOTIFY_MASTER_PATH, SYNC_STATUS_PATH, Consistency

FORWARDED_HEADER = "x-flexlb-forwarded"

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"success": False, "error": reason}, status=status)


class ConsistencyRoutes:
    """syncStatus / notifyMaster (and aliases) guarded by a Bearer token; master/info open and read-only."""

    def __init__(self, consistency: Consistency, master_info: Callable[[], dict[str, Any]]) -> None:
        self.consistency = consistency
        self._master_info = master_info

    def register(self, app: web.Application) -> None:
        """Add the routes."""
        for path in (SYNC_STATUS_PATH, "/rtp_llm/schedule_snapshot"):
            app.router.add_post(path, self._guarded(self.sync_status))
        for path in (NOTIFY_MASTER_PATH, "/rtp_llm/notify_master"):
            app.router.add_post(path, self._guarded(self.notify_master))
        app.router.add_post("/rtp_llm/master/info", self.master_info)

    def _authorized(self, request: web.Request) -> str | None:
        """None when the caller may proceed, else why not."""
        token = self.consistency.token
        if token:
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer "):
                return "missing bearer token (Authorization: Bearer <token>)"
            if not hmac.compare_digest(given[len("Bearer "):].encode(), token.encode()):
                return "wrong bearer token"
            return None
        try:
            if request.remote and ipaddress.ip_address(request.remote).is_loopback:
                return None
        except ValueError:
            pass
        return "no admin token is configured: only loopback callers are accepted"

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.Response:
            why = self._authorized(request)
            if why is not None:
                return _error(401, why)
            return await handler(request)

        return guarded

    async def _json_object(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError as exc:
            return _error(400, f"body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        role = body.get("roleId")
        if not isinstance(role, str) or not role:
            return _error(400, "field 'roleId' is required: a string")
        if role != self.consistency.role_id:
            return _error(400, f"roleId not match this:{self.consistency.role_id}")
        return body

    async def sync_status(self, request: web.Request) -> web.Response:
        """The master's balancer snapshot (fetched from the master when this replica is not it)."""
        body = await self._json_object(request)
        if isinstance(body, web.Response):
            return body
        c = self.consistency
        if request.headers.get(FORWARDED_HEADER) and not c.is_master:
            # never forward a forwarded request: views may disagree for a moment
            return web.json_response({"success": False, "master": c.master_http(), "msg": "not the master"})
        return web.json_response(await c.master_snapshot())

    async def notify_master(self, request: web.Request) -> web.Response:
        """Another replica took over: refresh the view of the master now."""
        body = await self._json_object(request)
        if isinstance(body, web.Response):
            return body
        req_ip = body.get("reqIp", "")
        if not isinstance(req_ip, str):
            return _error(400, "field 'reqIp' must be a string 'ip:port'")
        await self.consistency.notified()
        return web.json_response({"success": True, "msg": None, "master": self.consistency.master_http()})

    async def master_info(self, request: web.Request) -> web.Response:
        """Frontends' heartbeat and master discovery (open, read-only; any JSON body is ignored)."""
        return web.json_response(self._master_info())
