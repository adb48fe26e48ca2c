"""Active health checks: grpc.health.v1 Check (or RpcService/CheckHealth) plus GetWorkerStatus, per worker.

One probe in flight per worker, on an interval. A refused or NOT_SERVING probe takes the worker
out at once; a probe that times out does so on the second in a row (one slow answer is not a dead
worker). One good probe brings it back — and is also what re-admits a passively ejected worker.
GetWorkerStatus answers feed the balancer's load view (running tasks, KV available/total); an
answer whose status_version went backwards is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from flexlb import wire
from flexlb.balancer.health import OutlierDetector
from flexlb.balancer.workers import Cluster, WorkerState
from flexlb.pb import model_rpc_service_pb2 as pb
from flexlb.upstream.pollers import WorkerPollers

log = logging.getLogger("flexlb.health")

_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass(frozen=True)
class HealthCheckConfig:
    """Probe cadence and patience."""

    interval_s: float = 1.0
    timeout_s: float = 0.5
    soft_failures: int = 2  # time-outs in a row before a worker is taken out


# a dead worker should be noticed, and a restarted one found, within an interval: keep the
# channel's reconnect backoff shorter than that (gRPC's default grows to minutes)
def channel_options(interval_s: float) -> list[tuple[str, int]]:
    """Channel options for talking to workers that may restart."""
    backoff_ms = max(int(interval_s * 1000 / 2), 50)
    return [
        ("grpc.initial_reconnect_backoff_ms", min(100, backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ("grpc.enable_retries", 0),
    ]


class HealthChecker:
    """Probes every worker of the cluster and keeps WorkerState.healthy and its load view current."""

    def __init__(self, cluster: Cluster, outliers: OutlierDetector, config: HealthCheckConfig) -> None:
        self.cluster = cluster
        self.outliers = outliers
        self.config = config
        self._pollers = WorkerPollers("health")
        self.probes = 0

    def start(self) -> None:
        """One named probing task per worker."""
        by_key = {w.key: w for w in self.cluster.all()}
        self._pollers.start(list(by_key), lambda key, ch: self._run(by_key[key], ch),
                            channel_options(self.config.interval_s))

    async def stop(self) -> None:
        """Cancel the probes and close their channels."""
        await self._pollers.stop()

    async def _run(self, w: WorkerState, ch: grpc.aio.Channel) -> None:
        check = ch.unary_unary(_HEALTH_CHECK, request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                               response_deserializer=health_pb2.HealthCheckResponse.FromString)
        legacy = ch.unary_unary(wire.CHECK_HEALTH, request_serializer=pb.EmptyPB.SerializeToString,
                                response_deserializer=pb.CheckHealthResponsePB.FromString)
        status = ch.unary_unary(wire.GET_WORKER_STATUS, request_serializer=pb.StatusVersionPB.SerializeToString,
                                response_deserializer=pb.WorkerStatusPB.FromString)
        use_legacy = False
        timeouts = 0
        while True:
            started = time.monotonic()
            self.probes += 1
            answered = False
            try:
                if use_legacy:
                    answered = (await legacy(pb.EmptyPB(), timeout=self.config.timeout_s)).health == "OK"
                else:
                    reply = await check(health_pb2.HealthCheckRequest(service=""), timeout=self.config.timeout_s)
                    answered = reply.status == health_pb2.HealthCheckResponse.SERVING
                if answered:
                    self._update_status(w, await status(
                        pb.StatusVersionPB(latest_finished_version=w.finished_version), timeout=self.config.timeout_s))
                timeouts = 0
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED and not use_legacy:
                    use_legacy = True  # the worker has no grpc.health.v1: RTP-LLM's own CheckHealth
                    continue
                timed_out = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                timeouts = timeouts + 1 if timed_out else self.config.soft_failures
                if timeouts >= self.config.soft_failures and w.healthy:
                    log.warning("worker %s out of rotation: %s", w.key, exc.code().name)
            if answered:
                if not w.healthy:
                    log.info("worker %s back in rotation", w.key)
                w.healthy = True
                w.last_probe_ok_s = time.monotonic()
                self.outliers.probe_ok(w, w.last_probe_ok_s)
            elif timeouts >= self.config.soft_failures or timeouts == 0:
                # refused, NOT_SERVING, or too many time-outs in a row
                w.healthy = False
            await asyncio.sleep(max(0.0, self.config.interval_s - (time.monotonic() - started)))

    @staticmethod
    def _update_status(w: WorkerState, reply: pb.WorkerStatusPB) -> None:
        if reply.status_version and reply.status_version < w.status_version:
            return  # an answer older than the one we have
        w.status_version = reply.status_version
        w.finished_version = max(w.finished_version, reply.latest_finished_version)
        w.reported_running = len(reply.running_task_info)
        w.kv_available_tokens = reply.available_kv_cache
        w.kv_total_tokens = reply.total_kv_cache
        w.max_batch_tokens = max(0, reply.max_batch_tokens_size)
