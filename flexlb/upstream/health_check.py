"""Active health checks: grpc.health.v1 Check (or RpcService/CheckHealth) plus GetWorkerStatus, per worker.

One probe in flight per worker, on an interval. A refused or NOT_SERVING probe takes the worker
out at once; a probe that times out does so on the second in a row (one slow answer is not a dead
worker). One good probe brings it back — and is also what re-admits a passively ejected worker.
GetWorkerStatus answers feed the balancer's load view and limits (upstream/worker_status.py); one that
says `alive: false` or another role than the configured one fails the probe. VIT workers serve
MultimodalRpcService only: their GetWorkerStatus answer is the probe.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from flexlb import wire
from flexlb.balancer.health import OutlierDetector
from flexlb.balancer.workers import MEMBERSHIP_NOTE, Cluster, MembershipChange, Role, WorkerState
from flexlb.metrics import Metrics
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.tls import PLAINTEXT, Dialer
from flexlb.upstream.pollers import WorkerPollers
from flexlb.upstream.worker_status import NOTE as STATUS_NOTE
from flexlb.upstream.worker_status import apply_status

log = logging.getLogger("flexlb.health")

_SPREAD_ABOVE = 64  # workers probed at once without spreading (their burst is cleared within milliseconds)

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True)
class HealthCheckConfig:
    """Probe cadence and patience."""

    interval_s: float = 1.0
    timeout_s: float = 0.5
    soft_failures: int = 2  # time-outs in a row before a worker is taken out
    # all workers together: a probe costs ~0.7 ms of CPU (grpc.aio), so 1,250 workers every second took most of a
    # core; a larger pool is probed less often (each worker every N / this seconds at least)
    max_probes_per_s: float = 500.0


# a dead worker should be noticed, and a restarted one found, within an interval: keep the
# channel's reconnect backoff shorter than that (gRPC's default grows to minutes)
def channel_options(interval_s: float) -> list[tuple[str, int]]:
    """Channel options for talking to workers that may restart."""
    backoff_ms = max(int(interval_s * 1000 / 2), 50)
    return [
        ("grpc.initial_reconnect_backoff_ms", min(100, backoff_ms)),
        # also C-core's connect timeout: at 100 ms the handshakes of a 1,250-worker pool timed out at startup
        # (UNAVAILABLE: out at once); a refused connection still fails at once and a probe keeps its own timeout
        ("grpc.min_reconnect_backoff_ms", 1000),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ("grpc.enable_retries", 0),
    ]


class HealthChecker:
    """Probes every worker of the cluster and keeps WorkerState.healthy and its load view current."""

    def __init__(self, cluster: Cluster, outliers: OutlierDetector, config: HealthCheckConfig,
                 metrics: Metrics | None = None, changed: asyncio.Event | None = None,
                 dialer: Dialer = PLAINTEXT) -> None:
        self.cluster = cluster
        self.outliers = outliers
        self.config = config
        self.metrics = metrics
        self.changed = changed  # set whenever a worker leaves or rejoins rotation (readiness follows it)
        self._pollers = WorkerPollers("health", dialer)
        self.interval_s = config.interval_s  # between two probes of a worker (longer for large pools)
        self.probes = 0
        self._started = False

    def start(self) -> None:
        """One named probing task per worker; the first probes of a large pool are spread over one interval."""
        by_key = {w.key: w for w in self.cluster.all()}
        self._started = True
        # a thousand workers probed in the same instant every interval are a burst the event loop clears more
        # slowly than a probe times out (every worker of a 1,250-worker pool flapped out): spread them
        self._pace(len(by_key))
        spread_s = self.interval_s / len(by_key) if len(by_key) > _SPREAD_ABOVE else 0.0
        order = {key: i for i, key in enumerate(by_key)}
        self._pollers.start(list(by_key), lambda key, ch: self._run(by_key[key], ch, order[key] * spread_s),
                            channel_options(self.config.interval_s))

    def _pace(self, workers: int) -> None:
        self.interval_s = max(self.config.interval_s, workers / self.config.max_probes_per_s)

    def follow(self, change: MembershipChange) -> None:
        """Probe the workers added (at once: a new worker waits for its first good probe), stop probing the
        removed ones; a worker whose role changed is probed again from scratch."""
        if not self._started:
            return  # start() takes the whole set
        for w in (*change.removed, *change.changed):
            self._pollers.remove(w.key)
        for w in (*change.changed, *change.added):
            self._pollers.add(w.key, functools.partial(self._probe_new, w), channel_options(self.config.interval_s))
        self._pace(len(self._pollers.targets()))

    def probed(self) -> list[str]:
        """The workers probed now."""
        return self._pollers.targets()

    async def _probe_new(self, w: WorkerState, _target: str, ch: grpc.aio.Channel) -> None:
        await self._run(w, ch)

    async def stop(self) -> None:
        """Cancel the probes and close their channels."""
        await self._pollers.stop()

    async def _run(self, w: WorkerState, ch: grpc.aio.Channel, first_delay_s: float = 0.0) -> None:
        if first_delay_s > 0:
            await asyncio.sleep(first_delay_s)
        check = ch.unary_unary(_HEALTH_CHECK, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                               response_deserializer=health_pb2.HealthCheckResponse.FromString)
        legacy = ch.unary_unary(wire.CHECK_HEALTH, request_serializer=pb.EmptyPB.SerializeToString,
                                response_deserializer=pb.CheckHealthResponsePB.FromString)
        vit = w.role is Role.VIT
        status = ch.unary_unary(wire.VIT_GET_WORKER_STATUS if vit else wire.GET_WORKER_STATUS,
                                request_serializer=pb.StatusVersionPB.SerializeToString,
                                response_deserializer=pb.WorkerStatusPB.FromString)
        use_legacy = False
        status_only = vit  # the GetWorkerStatus answer is the whole probe
        timeouts = 0
        while True:
            started = time.monotonic()
            self.probes += 1
            answered = False
            failure = ""  # why this probe failed: NOT_SERVING, NOT_OK, the gRPC code or what the worker reported
            try:
                if status_only:
                    failure = apply_status(w, await status(
                        pb.StatusVersionPB(latest_finished_version=w.finished_version), timeout=self.config.timeout_s))
                    answered = not failure
                elif use_legacy:
                    answered = (await legacy(pb.EmptyPB(), timeout=self.config.timeout_s)).health == "OK"
                    failure = "" if answered else "NOT_OK"
                else:
                    reply = await check(health_pb2.HealthCheckRequest(service=""), timeout=self.config.timeout_s)
                    answered = reply.status == health_pb2.HealthCheckResponse.SERVING
                    failure = "" if answered else health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                if answered and not status_only:
                    # alive: false or the wrong role: out, like a failed probe
                    failure = apply_status(w, await status(
                        pb.StatusVersionPB(latest_finished_version=w.finished_version), timeout=self.config.timeout_s))
                    answered = not failure
                timeouts = 0
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and not use_legacy and not vit:
                    # no grpc.health.v1 (RTP-LLM serves none): its CheckHealth says OK whenever the server is up,
                    # which a GetWorkerStatus answer shows too, so that answer alone is the probe (one RPC, not two)
                    use_legacy = status_only = True
                    continue
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and status_only and not vit:
                    status_only = False  # no GetWorkerStatus either: CheckHealth alone
                    continue
                timed_out = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                timeouts = timeouts + 1 if timed_out else self.config.soft_failures
                if not answered:  # (a failed GetWorkerStatus after a good health answer is no failed probe)
                    failure = exc.code().name
            if failure and self.metrics is not None:
                self.metrics.probe_failed(w.key, w.role.name, failure)
            if answered:
                self._set_healthy(w, True, "")
                w.last_probe_ok_s = time.monotonic()
                was_ejected = w.probing
                self.outliers.probe_ok(w, w.last_probe_ok_s)
                if was_ejected and not w.probing:
                    log.info("worker %s (%s) re-admitted after its ejection: a good probe", w.key, w.role.name)
                    self._changed()
            elif timeouts >= self.config.soft_failures or timeouts == 0:
                # refused, NOT_SERVING, or too many time-outs in a row
                self._set_healthy(w, False, failure)
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _set_healthy(self, w: WorkerState, healthy: bool, failure: str) -> None:
        """Active checks' verdict; a change is logged once, counted (an active ejection) and signalled."""
        if w.healthy == healthy:
            return
        w.healthy = healthy
        if healthy and w.notes.pop(MEMBERSHIP_NOTE, None) is not None:
            log.info("worker %s (%s) in rotation: its first good probe since it was added", w.key, w.role.name)
        elif healthy:
            log.info("worker %s (%s) healthy again: a good probe", w.key, w.role.name)
        else:
            detail = w.notes.get(STATUS_NOTE)  # the worker's own report (alive: false, another role) says more
            log.warning("worker %s (%s) unhealthy, out of rotation (active health check): %s", w.key, w.role.name,
                        f"{failure}: {detail}" if detail else failure)
            if self.metrics is not None:
                self.metrics.worker_unhealthy(w.key, w.role.name)
        self._changed()

    def _changed(self) -> None:
        if self.changed is not None:
            self.changed.set()
