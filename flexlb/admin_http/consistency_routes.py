"""Consistency endpoints of the admin sidecar (Bearer token), plus the original FlexLB aliases."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from flexlb.admin_http.auth import guard
from flexlb.admin_http.body import read_json_object
from flexlb.consistency.service import NOTIFY_MASTER_PATH, SYNC_STATUS_PATH, Consistency

FORWARDED_HEADER = "x-flexlb-forwarded"


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"success": False, "error": reason}, status=status)


class ConsistencyRoutes:
    """syncStatus / notifyMaster (and aliases) guarded by a Bearer token (master/info is ApiRoutes', served always)."""

    def __init__(self, consistency: Consistency) -> None:
        self.consistency = consistency

    def register(self, app: web.Application) -> None:
        """Add the routes."""
        for path in (SYNC_STATUS_PATH, "/rtp_llm/schedule_snapshot"):
            app.router.add_post(path, guard(self.sync_status, self._token, {"success": False}))
        for path in (NOTIFY_MASTER_PATH, "/rtp_llm/notify_master"):
            app.router.add_post(path, guard(self.notify_master, self._token, {"success": False}))

    def _token(self) -> str | None:
        return self.consistency.token

    async def _json_object(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await read_json_object(request, _error)
        if isinstance(body, web.Response):
            return body
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
