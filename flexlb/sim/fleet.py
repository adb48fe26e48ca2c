"""A fleet of schedule-only mock workers in one process: hundreds of worker gRPC ports on one event loop.

For the master benchmark (bench/schedule.py: 750 PREFILL + 500 DECODE, the Java FlexLB's published
bench), where one `flexlb mock-worker` process per worker would not fit on a few cores. A fleet
worker runs no engine: it answers what the gateway asks of workers (CheckHealth, GetWorkerStatus,
GetCacheStatus; grpc.health.v1 Check only with `grpc_health`, since the RTP-LLM engine serves no
grpc.health.v1) and ACKs every request of an EnqueueBatch, as the
Java bench's mock engines do with SCHEDULE_ONLY=1 (no FetchResponse). An enqueued request is
reported running for `task_ms`, then finished (in `finished_task_list`, with its batch_id), so a
master that settles its ledgers from worker status sees them end.

One grpc.aio server per port: a handler of a server bound to many ports cannot tell which port was
dialled (grpc.aio exposes neither `:authority` nor the local address), and in a trial one server on
1,250 ports cancelled calls once a few hundred were in flight. 1,250 servers cost ~0.6 s to start
and ~50 MB, and nothing while idle (the servers share grpc's one completion queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from flexlb import wire
from flexlb.pb import model_rpc_service_pb2 as pb

FLEET_ROLES = ("PREFILL", "DECODE", "PDFUSION")
_ROLE_VALUES = {"PREFILL": pb.RoleAddrPB.PREFILL, "DECODE": pb.RoleAddrPB.DECODE,
                "PDFUSION": pb.RoleAddrPB.PDFUSION}


@dataclass(frozen=True)
class FleetConfig:
    """How many workers of each role, where, and what they report."""

    prefill: int = 0
    decode: int = 0
    pdfusion: int = 0
    host: str = "127.0.0.1"
    # ports base_port, base_port + 1, ...: PREFILL workers first, then DECODE, then PDFUSION
    base_port: int = 61000
    kv_total_tokens: int = 400_000
    block_size_tokens: int = 64
    max_batch_tokens: int = 8192
    max_seq_len: int = 131072
    step_latency_ms: float = 10.0
    task_ms: float = 0.0  # an enqueued request is reported running this long, then finished
    finished_kept: int = 4096  # finished tasks a worker keeps for GetWorkerStatus (oldest dropped)
    grpc_health: bool = False  # also serve grpc.health.v1 Check (the mock worker does; RTP-LLM does not)

    def __post_init__(self) -> None:
        for name in ("prefill", "decode", "pdfusion"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.size == 0:
            raise ValueError("a fleet needs at least one worker (prefill, decode or pdfusion)")
        if not self.base_port > 0 or self.base_port + self.size - 1 > 65535:
            raise ValueError(f"ports {self.base_port}..{self.base_port + self.size - 1} are not all valid TCP ports")
        if self.task_ms < 0:
            raise ValueError(f"task_ms must be >= 0, got {self.task_ms}")

    @property
    def size(self) -> int:
        """Workers in the fleet."""
        return self.prefill + self.decode + self.pdfusion

    def layout(self) -> list[tuple[str, int]]:
        """(role, port) of every worker, in port order."""
        roles = ["PREFILL"] * self.prefill + ["DECODE"] * self.decode + ["PDFUSION"] * self.pdfusion
        return [(role, self.base_port + i) for i, role in enumerate(roles)]


@dataclass
class _Task:
    request_id: int
    batch_id: int
    input_length: int
    start_s: float


@dataclass
class FleetCounters:
    """RPCs answered, by method, and requests ACKed."""

    calls: dict[str, int] = field(default_factory=dict)
    enqueued_requests: int = 0
    enqueued_batches: int = 0

    def count(self, method: str) -> None:
        """One more `method` answered."""
        self.calls[method] = self.calls.get(method, 0) + 1


class FleetWorker:
    """One schedule-only worker: its role, its port, the requests enqueued on it."""

    def __init__(self, role: str, port: int, config: FleetConfig, counters: FleetCounters) -> None:
        self.role = role
        self.port = port
        self.config = config
        self.counters = counters
        self._role_value = _ROLE_VALUES[role]
        self._running: dict[int, _Task] = {}
        self._finished: deque[tuple[int, pb.TaskInfoPB]] = deque(maxlen=config.finished_kept)
        self._status_version = 0
        self._finished_version = 0
        self._server: grpc.aio.Server | None = None

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        """The worker protocol methods a master calls (and grpc.health.v1 Check with `grpc_health`)."""
        rpc = {
            "CheckHealth": grpc.unary_unary_rpc_method_handler(
                self.check_health, request_deserializer=pb.EmptyPB.FromString,
                response_serializer=pb.CheckHealthResponsePB.SerializeToString),
            "GetWorkerStatus": grpc.unary_unary_rpc_method_handler(
                self.get_worker_status, request_deserializer=pb.StatusVersionPB.FromString,
                response_serializer=pb.WorkerStatusPB.SerializeToString),
            "GetCacheStatus": grpc.unary_unary_rpc_method_handler(
                self.get_cache_status, request_deserializer=pb.CacheVersionPB.FromString,
                response_serializer=pb.CacheStatusPB.SerializeToString),
            "EnqueueBatch": grpc.unary_unary_rpc_method_handler(
                self.enqueue_batch, request_deserializer=pb.EnqueueBatchRequestPB.FromString,
                response_serializer=pb.EnqueueBatchResponsePB.SerializeToString),
        }
        out = [grpc.method_handlers_generic_handler(wire.RPC_SERVICE, rpc)]
        if self.config.grpc_health:
            health = {"Check": grpc.unary_unary_rpc_method_handler(
                self.health_check, request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString)}
            out.append(grpc.method_handlers_generic_handler("grpc.health.v1.Health", health))
        return tuple(out)

    async def start(self) -> None:
        """Bind this worker's port and serve; OSError naming the port if it is taken."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers(self.handlers())
        try:
            bound = server.add_insecure_port(f"{self.config.host}:{self.port}")
        except RuntimeError:
            bound = 0
        if bound != self.port:
            raise OSError(f"cannot bind {self.config.host}:{self.port}")
        await server.start()
        self._server = server

    async def stop(self, grace_s: float | None = 0) -> None:
        """Stop serving."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    # ------------------------------------------------------------ tasks

    def _settle(self, now_s: float) -> None:
        """Requests enqueued task_ms ago or more are finished now."""
        if not self._running:
            return
        horizon = now_s - self.config.task_ms / 1000.0
        done = [t for t in self._running.values() if t.start_s <= horizon]
        for t in done:
            del self._running[t.request_id]
            self._finished_version += 1
            self._finished.append((self._finished_version, pb.TaskInfoPB(
                request_id=t.request_id, batch_id=t.batch_id, input_length=t.input_length,
                end_time_ms=int(time.time() * 1000), execution_time_ms=int((now_s - t.start_s) * 1000))))

    def running(self) -> int:
        """Requests enqueued and not yet reported finished."""
        self._settle(time.monotonic())
        return len(self._running)

    # ------------------------------------------------------------ RPCs

    async def check_health(self, req: pb.EmptyPB, context: grpc.aio.ServicerContext) -> pb.CheckHealthResponsePB:
        """Always OK while serving, like the engine."""
        self.counters.count("CheckHealth")
        return pb.CheckHealthResponsePB(health="OK")

    async def health_check(self, req: health_pb2.HealthCheckRequest,
                           context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 Check: SERVING."""
        self.counters.count("Health.Check")
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def get_worker_status(self, req: pb.StatusVersionPB, context: grpc.aio.ServicerContext) -> pb.WorkerStatusPB:
        """Role, liveness, KV, running and finished tasks, budgets: what the engine reports."""
        self.counters.count("GetWorkerStatus")
        now_s = time.monotonic()
        self._settle(now_s)
        running = [pb.TaskInfoPB(request_id=t.request_id, batch_id=t.batch_id, input_length=t.input_length,
                                 iterate_count=1, phase=pb.TASK_PHASE_RUNNING)
                   for t in self._running.values()]
        finished = [info for v, info in self._finished if v > req.latest_finished_version]
        used = sum(t.input_length for t in self._running.values())
        # the worker's clock in microseconds, strictly increasing (pollers drop answers that go back)
        self._status_version = max(self._status_version + 1, int(time.time() * 1e6))
        return pb.WorkerStatusPB(
            role=f"RoleType.{self.role}",
            role_type=self._role_value,  # type: ignore[arg-type]  # same numbers as RoleTypePB
            running_task_info=running,
            finished_task_list=finished,
            waiting_query_len=0,
            running_query_len=len(running),
            step_latency_ms=self.config.step_latency_ms if running else 0.0,
            iterate_count=0,
            dp_size=1,
            tp_size=1,
            status_version=self._status_version,
            alive=True,
            latest_finished_version=self._finished_version,
            available_kv_cache=max(0, self.config.kv_total_tokens - used),
            total_kv_cache=self.config.kv_total_tokens,
            max_seq_len=self.config.max_seq_len,
            max_batch_tokens_size=self.config.max_batch_tokens if self.role != "DECODE" else 0,
        )

    async def get_cache_status(self, req: pb.CacheVersionPB, context: grpc.aio.ServicerContext) -> pb.CacheStatusPB:
        """KV figures, no cached blocks (a schedule-only worker computes nothing)."""
        self.counters.count("GetCacheStatus")
        used = sum(t.input_length for t in self._running.values())
        return pb.CacheStatusPB(available_kv_cache=max(0, self.config.kv_total_tokens - used),
                                total_kv_cache=self.config.kv_total_tokens,
                                block_size=self.config.block_size_tokens, version=1)

    async def enqueue_batch(self, req: pb.EnqueueBatchRequestPB,
                            context: grpc.aio.ServicerContext) -> pb.EnqueueBatchResponsePB:
        """ACK every request of the batch (SCHEDULE_ONLY: nothing is generated)."""
        self.counters.count("EnqueueBatch")
        now_s = time.monotonic()
        out = pb.EnqueueBatchResponsePB(batch_id=req.batch_id)
        for slot in req.dp_slots:
            for item in slot.requests:
                rid = item.input.request_id
                self._running[rid] = _Task(rid, req.batch_id, len(item.input.token_ids), now_s)
                out.successes.add(request_id=rid)
        self.counters.enqueued_batches += 1
        self.counters.enqueued_requests += len(out.successes)
        return out


class MockFleet:
    """Every worker of a FleetConfig, started and stopped together."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.counters = {role: FleetCounters() for role in FLEET_ROLES}
        self.workers = [FleetWorker(role, port, config, self.counters[role]) for role, port in config.layout()]

    async def start(self) -> None:
        """Bind every port (all or nothing: on a failure the ones started are stopped)."""
        try:
            for w in self.workers:
                await w.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop every worker's server."""
        await asyncio.gather(*(w.stop() for w in self.workers))

    def addresses(self, role: str) -> list[str]:
        """`host:port` of the workers of a role."""
        return [f"{self.config.host}:{w.port}" for w in self.workers if w.role == role]

    def stats(self) -> dict[str, Any]:
        """Per role: workers, RPCs answered by method, batches and requests ACKed, requests still running."""
        out: dict[str, Any] = {}
        for role, c in self.counters.items():
            ws = [w for w in self.workers if w.role == role]
            if ws:
                out[role] = {"workers": len(ws), "calls": dict(sorted(c.calls.items())),
                             "enqueued_batches": c.enqueued_batches, "enqueued_requests": c.enqueued_requests,
                             "running": sum(w.running() for w in ws)}
        return out


def ready_line(config: FleetConfig) -> str:
    """What `flexlb mock-fleet` prints once every port is bound (flexlb.launch reads the first port)."""
    last = config.base_port + config.size - 1
    return (f"mock-fleet prefill={config.prefill} decode={config.decode} pdfusion={config.pdfusion} "
            f"listening on {config.host}:{config.base_port}-{last}")


async def serve_fleet_forever(config: FleetConfig, ready: bool = True) -> int:
    """Run a fleet until SIGTERM/SIGINT (`flexlb mock-fleet`); prints its stats as one JSON line on the way out."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    fleet = MockFleet(config)
    try:
        await fleet.start()
    except OSError as exc:
        print(f"flexlb mock-fleet: {exc}", flush=True)
        return 1
    if ready:
        print(ready_line(config), flush=True)
    await stop.wait()
    await fleet.stop()
    print(json.dumps({"fleet_stats": fleet.stats()}), flush=True)
    return 0
