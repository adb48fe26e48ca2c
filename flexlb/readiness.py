"""Liveness and readiness: one verdict shared by /actuator/health*, grpc.health.v1 and CheckHealth's callers.

- liveness: the process and its event loop answer. It never depends on workers, so a liveness probe does
  not restart every gateway during a worker outage (that would only add a restart storm to the outage);
- readiness: the gateway can serve a call now: it is not draining and every role the deployment needs has a
  worker in rotation (in PD mode: at least one PREFILL with an in-rotation DECODE it may pair with).

Statuses are Spring Boot's: UP, DOWN (cannot route), OUT_OF_SERVICE (draining: refusing traffic on purpose).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from flexlb.balancer.health import usable
from flexlb.balancer.request import Deploy
from flexlb.balancer.workers import Cluster, Role

UP = "UP"
DOWN = "DOWN"
OUT_OF_SERVICE = "OUT_OF_SERVICE"

# grpc.health.v1 is re-evaluated on every state-change signal, and at least this often (catches what no
# signal covers, e.g. a passive ejection that leaves a role empty together with unhealthy workers)
RECHECK_S = 0.5

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Verdict:
    """A health verdict in Spring Boot's shape: {"status": ..., "components": {...}}."""

    status: str
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """UP: a probe on this verdict passes (HTTP 200)."""
        return self.status == UP

    def body(self) -> dict[str, Any]:
        """The JSON body of the endpoint."""
        return {"status": self.status, "components": self.components}


def liveness() -> Verdict:
    """The process answers: whoever runs this runs on the event loop, so reaching here is the check."""
    return Verdict(UP, {"livenessState": {"status": UP}})


def needed_roles(deploy: Deploy, cluster: Cluster | None = None) -> tuple[Role, ...]:
    """The roles a call needs in this deployment (VIT too once VIT workers are configured: calls need one)."""
    roles = (Role.PDFUSION,) if deploy is Deploy.PD_FUSION else (Role.PREFILL, Role.DECODE)
    if cluster is not None and cluster.of_role(Role.VIT):
        roles = (*roles, Role.VIT)
    return roles


def readiness(cluster: Cluster, deploy: Deploy, now_s: float, draining: bool) -> Verdict:
    """Can a call be served now? Not while draining; otherwise each needed role needs a worker in rotation
    (and in PD mode a prefill whose group has an in-rotation decode, as the router pairs them)."""
    roles: dict[str, Any] = {}
    routable = True
    for role in needed_roles(deploy, cluster):
        workers = cluster.of_role(role)
        live = sum(1 for w in workers if usable(w, now_s))
        roles[role.name] = {"in_rotation": live, "workers": len(workers)}
        routable = routable and live > 0
    if deploy is Deploy.DISAGGREGATED and routable:
        pairs = _has_pair(cluster, now_s)
        roles["pairable"] = pairs
        routable = pairs
    state = OUT_OF_SERVICE if draining else UP
    status = state if draining else (UP if routable else DOWN)
    return Verdict(status, {"readinessState": {"status": state},
                            "workers": {"status": UP if routable else DOWN, "details": roles}})


def _has_pair(cluster: Cluster, now_s: float) -> bool:
    """Some in-rotation PREFILL may pair with an in-rotation DECODE (the router's group rule)."""
    decode_groups = {w.addr.group for w in cluster.of_role(Role.DECODE) if usable(w, now_s)}
    if decode_groups == {""}:
        return True  # no groups: any prefill pairs with any decode
    return any(usable(w, now_s) and w.addr.group in decode_groups for w in cluster.of_role(Role.PREFILL))


class HealthService(health.aio.HealthServicer):
    """grpc.health.v1 where every served name follows readiness; Check and List re-evaluate first, Watch
    streams each change (pushed by `follow`), and List is answered (the stock servicer lacks it)."""

    def __init__(self, names: Iterable[str], ready: Callable[[], bool]) -> None:
        super().__init__()
        self._names = tuple(names)
        self._ready = ready
        self._status: dict[str, int] = {}

    async def refresh(self) -> bool:
        """Set every name to SERVING or NOT_SERVING from readiness; True if anything changed."""
        status = _SERVING if self._ready() else _NOT_SERVING
        changed = False
        for name in self._names:
            if self._status.get(name) != status:
                self._status[name] = status
                await self.set(name, status)
                changed = True
        return changed

    async def follow(self, changed: asyncio.Event, recheck_s: float = RECHECK_S) -> None:
        """Keep the statuses on readiness until cancelled: after each `changed` signal, and every `recheck_s`."""
        loop = asyncio.get_running_loop()
        while True:
            await self.refresh()
            # a timer rather than wait_for: on 3.11 wait_for swallows a cancel that meets a set event
            recheck = loop.call_later(recheck_s, changed.set)
            try:
                await changed.wait()
            finally:
                recheck.cancel()
            changed.clear()

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        await self.refresh()
        reply: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return reply

    async def List(self, request: health_pb2.HealthListRequest,
                   context: grpc.aio.ServicerContext) -> health_pb2.HealthListResponse:
        await self.refresh()
        # after enter_graceful_shutdown every name is NOT_SERVING, whatever readiness said last
        statuses = dict.fromkeys(self._status, _NOT_SERVING) if self._gracefully_shutting_down else self._status
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=s) for name, s in statuses.items()})
