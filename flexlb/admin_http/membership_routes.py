"""Membership endpoints of the management port (Bearer token): list, add and remove workers at run time.

- `GET /admin/workers`: the workers in routing (with their sources), the removed ones still finishing calls,
  and every source's last look;
- `POST /admin/workers` `{"worker": "ip:grpc_port", "role": "PREFILL", "group": "", "http_port": N}`: add one
  (201; 200 if it is there already); `http_port` defaults to the gRPC port - 1;
- `DELETE /admin/workers/{ip:grpc_port}`, or `POST /admin/workers/remove` `{"worker": "ip:grpc_port"}`: remove one
  of the configured or admin-added workers (its in-flight calls finish); 404 unknown, 409 when DNS or the
  workers file wants it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from flexlb.admin_http.auth import guard
from flexlb.admin_http.body import error_response, read_json_object
from flexlb.balancer.workers import Role, WorkerAddr
from flexlb.config_values import ConfigError, _host_port
from flexlb.membership import MembershipRefused

_GRPC_PORT_OFFSET = 1  # HTTP port = gRPC port - 1 unless given (RTP-LLM's layout)


def worker_key(text: str) -> str:
    """The cluster key of `ip:grpc_port` (`[v6]:port` too); raises ConfigError naming `worker`."""
    ip, port = _host_port("worker", text)
    return WorkerAddr(ip, port, 0, Role.PDFUSION).key


def parse_worker(body: dict[str, Any]) -> WorkerAddr:
    """The worker a POST /admin/workers body describes; raises ConfigError naming the field."""
    unknown = sorted(set(body) - {"worker", "role", "group", "http_port"})
    if unknown:
        raise ConfigError(unknown[0], "unknown field; accepted: worker, role, group, http_port")
    worker, role, group = body.get("worker"), body.get("role"), body.get("group", "")
    if not isinstance(worker, str) or not worker:
        raise ConfigError("worker", "required: a string 'ip:grpc_port'")
    ip, port = _host_port("worker", worker)
    if not isinstance(role, str):
        raise ConfigError("role", f"required: one of {', '.join(r.name for r in Role)}")
    try:
        parsed = Role.parse(role)
    except KeyError:
        raise ConfigError("role", f"unknown role {role!r}; accepted: {', '.join(r.name for r in Role)}") from None
    if not isinstance(group, str):
        raise ConfigError("group", "must be a string")
    http_port = body.get("http_port", port - _GRPC_PORT_OFFSET)
    if isinstance(http_port, bool) or not isinstance(http_port, int) or not 0 <= http_port < 65536:
        raise ConfigError("http_port", f"must be a port number 0-65535, got {http_port!r}")
    return WorkerAddr(ip, port, http_port, parsed, group)


class MembershipRoutes:
    """The handlers; what they do to the cluster is the composition root's (the callables it passes)."""

    def __init__(
        self,
        view: Callable[[], dict[str, Any]],
        add: Callable[[WorkerAddr], tuple[bool, dict[str, Any]]],
        remove: Callable[[str], dict[str, Any]],
        token: Callable[[], str | None],
    ) -> None:
        self._view = view
        self._add = add  # (added, what to answer); raises MembershipRefused
        self._remove = remove  # raises MembershipRefused
        self._token = token

    def register(self, app: web.Application) -> None:
        """Add the routes."""
        app.router.add_get("/admin/workers", guard(self.list_workers, self._token))
        app.router.add_post("/admin/workers", guard(self.add_worker, self._token))
        app.router.add_post("/admin/workers/remove", guard(self.post_remove, self._token))
        app.router.add_delete("/admin/workers/{worker}", guard(self.delete_worker, self._token))

    async def list_workers(self, request: web.Request) -> web.Response:
        """The membership now."""
        return web.json_response(self._view())

    async def add_worker(self, request: web.Request) -> web.Response:
        """Add one worker."""
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            addr = parse_worker(body)
            added, result = self._add(addr)
        except ConfigError as exc:
            return error_response(400, str(exc))
        except MembershipRefused as exc:
            return error_response(exc.status, str(exc))
        return web.json_response(result, status=201 if added else 200)

    async def delete_worker(self, request: web.Request) -> web.Response:
        """Remove one worker named in the path."""
        return self._removed(request.match_info["worker"])

    async def post_remove(self, request: web.Request) -> web.Response:
        """Remove one worker named in the body (for clients without DELETE)."""
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        worker = body.get("worker")
        if not isinstance(worker, str) or not worker:
            return error_response(400, "worker: required: a string 'ip:grpc_port'")
        return self._removed(worker)

    def _removed(self, worker: str) -> web.Response:
        try:
            result = self._remove(worker_key(worker))
        except ConfigError as exc:
            return error_response(400, str(exc))
        except MembershipRefused as exc:
            return error_response(exc.status, str(exc))
        return web.json_response(result)
