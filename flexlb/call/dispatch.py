"""What both relay engines do around the bytes: parse once, route, write role_addrs, account, reject.

The grpcio engine (servicer/relay.py) and the HTTP/2 frame engine (flexlb/h2/) share this, so a
call is routed, rejected and counted the same way whichever engine carries it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from flexlb import wire
from flexlb.balancer.batcher import BatchConfig, Batcher, dispatch_order
from flexlb.balancer.prefill_queue import UPKEEP_INTERVAL_S
from flexlb.balancer.prefix import prompt_block_keys
from flexlb.balancer.request import NoWorkerAvailable, RouteRequest
from flexlb.balancer.router import Lease, Router
from flexlb.balancer.workers import Role, WorkerState
from flexlb.metrics import Metrics
from flexlb.pb import model_rpc_service_pb2 as pb

if TYPE_CHECKING:  # the forwarder is plugged in by the composition root
    from flexlb.consistency.forwarding import MasterChoice, MasterForwarder

GENERATE_STREAM = "GenerateStreamCall"
BATCH_GENERATE = "BatchGenerateCall"
# request headers that belong to this hop, not to the call (PITFALLS: grpc.aio metadata)
HOP_HEADERS = frozenset({"user-agent", "te", "content-type"})
# failures before the first response message that another worker may not have: fail over
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.DEADLINE_EXCEEDED})
# of those, the ones that say the worker itself is sick (RESOURCE_EXHAUSTED is admission: busy, not sick)
WORKER_FAULTS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# FlexLB's per-role "no available worker" codes (flexlb-original.md §1.2)
NO_WORKER_CODE = {"PREFILL": 8402, "DECODE": 8403, "PDFUSION": 8404}
_ROLE_ENUM = {Role.PREFILL: pb.RoleAddrPB.PREFILL, Role.DECODE: pb.RoleAddrPB.DECODE}


class Rejection(Exception):
    """The gateway answers the call itself with this status (nothing reached a worker)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str, error_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.error_code = error_code

    def trailer(self) -> tuple[tuple[str, bytes], ...]:
        """The ErrorDetailsPB trailer RTP-LLM clients read, when the rejection has an engine code."""
        return wire.error_trailer(self.error_code, self.message) if self.error_code is not None else ()


@dataclass(frozen=True)
class _Held:
    """A call waiting in the prefill queue: its plan, how to hand it on, whether its caller is still there."""

    planned: Planned
    done: Callable[[Planned | Rejection], None]
    alive: Callable[[], bool]
    since_s: float


@dataclass
class _Prepared:
    """A parsed, keyed GenerateStreamCall waiting to be routed."""

    inp: pb.GenerateInputPB
    body: bytes
    req: RouteRequest
    started_s: float


_Waiting = tuple[_Prepared, Callable[["Planned | Rejection"], None], Callable[[], bool]]


@dataclass
class Planned:
    """A routed call: the load it holds and the request bytes to send to `lease.decision.target`."""

    lease: Lease
    body: bytes
    method: str
    started_s: float
    # what a failover needs: the routing request (its exclude set grows) and the attempt number
    req: RouteRequest | None = None
    prepared: _Prepared | None = None
    attempt: int = 1
    master_choice: MasterChoice | None = None  # the decision came from the master: release it there too


def _role_addr(w: WorkerState) -> pb.RoleAddrPB:
    a = w.addr
    return wire.role_addr(_ROLE_ENUM[a.role], a.ip, a.grpc_port, a.http_port)


def _addressed(prepared: _Prepared, lease: Lease) -> bytes:
    """The request bytes for the lease's workers: in PD mode role_addrs = [PREFILL, DECODE]
    (rtp-llm-wire.md §5.5), so the prefill finds its decode peer; fused calls go unchanged."""
    d = lease.decision
    if d.decode is None:
        return prepared.body
    inp = prepared.inp
    del inp.generate_config.role_addrs[:]
    inp.generate_config.role_addrs.extend([_role_addr(d.target), _role_addr(d.decode)])
    return inp.SerializeToString()


class Dispatcher:
    """Parses, routes and accounts calls; raises Rejection for anything the gateway answers itself."""

    def __init__(self, router: Router, metrics: Metrics, is_draining: Callable[[], bool],
                 block_size_tokens: int = 64, batch: BatchConfig | None = None) -> None:
        self.router = router
        self.metrics = metrics
        self._is_draining = is_draining
        # tokens per KV block for the prefix index (staticCacheBlockSize)
        self.block_size_tokens = block_size_tokens
        self._batcher: Batcher[_Waiting] | None = Batcher(batch) if batch is not None and batch.enabled else None
        self.max_attempts = 3  # first try + failovers
        self.max_in_flight = 0  # admission cap for the whole gateway (0: none)
        self.max_new_tokens = 0  # generate_config.max_new_tokens cap (0: none)
        self.forwarder: MasterForwarder | None = None  # enableGrpcPrefillMaster on a replica
        self._tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        # prefillGenerateTimeoutMs: a first response message later than this fails over (None: no bound)
        self.first_message_timeout_s: float | None = None
        self.min_retry_budget_s = 0.05  # a failover needs at least this much of the client's deadline left
        self._window_timer: asyncio.TimerHandle | None = None
        # calls routed into the prefill queue, waiting for their worker's free slot
        self._held: dict[int, _Held] = {}
        self._upkeep: asyncio.TimerHandle | None = None
        # sweep of the prefill queue: dead callers, overdue calls, lost workers
        self.upkeep_interval_s = UPKEEP_INTERVAL_S
        router.on_release = self._released
        router.on_evict = self._evicted

    def is_draining(self) -> bool:
        """True once the gateway stopped taking new calls."""
        return self._is_draining()

    def reject(self, method: str, rejection: Rejection) -> None:
        """Count a rejection (the engine sends it)."""
        self.metrics.rejected.labels(method, rejection.code.name, rejection.reason).inc()

    def _route(self, method: str, req: RouteRequest, pair: bool, master_choice: MasterChoice | None = None,
               hold: bool = False) -> Lease:
        """Admission checks, then the router's choice (or the master's, reserved here too)."""
        if self._is_draining():
            raise Rejection(
                grpc.StatusCode.UNAVAILABLE, "gateway is shutting down; retry on another replica", "draining"
            )
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            raise Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"gateway at its in-flight cap ({self.max_in_flight} calls); retry later", "overloaded")
        try:
            if master_choice is not None:
                lease = self.router.route_to(req, master_choice.target, master_choice.decode)
            else:
                lease = self.router.route(req, pair=pair, hold=hold)
        except NoWorkerAvailable as exc:
            if exc.saturated:
                raise Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "worker_cap",
                                NO_WORKER_CODE.get(exc.role, 8402)) from None
            raise Rejection(
                grpc.StatusCode.UNAVAILABLE, str(exc), "no_worker", NO_WORKER_CODE.get(exc.role, 8402)
            ) from None
        self.in_flight += 1
        d = lease.decision
        self.metrics.decisions.labels(d.strategy, d.reason).inc()
        return lease

    def _prepare_generate(self, body: bytes, client: str = "") -> _Prepared:
        """Parse and key a GenerateStreamCall (rejections happen here, before any batching wait)."""
        started_s = time.monotonic()
        try:
            inp = pb.GenerateInputPB.FromString(body)
        except DecodeError as exc:
            raise Rejection(
                grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid GenerateInputPB: {exc}", "bad_request"
            ) from None
        if not inp.token_ids:
            raise Rejection(
                grpc.StatusCode.INVALID_ARGUMENT,
                "GenerateInputPB.token_ids is empty; nothing to generate from",
                "no_tokens",
            )
        self._check_max_new_tokens(inp.generate_config.max_new_tokens)
        keys: tuple[int, ...] = ()
        if self.router.index is not None:
            # from the wire bytes: reading inp.token_ids would make a Python int per token (~1 ms at 32k)
            try:
                keys = tuple(prompt_block_keys(body, self.block_size_tokens)[1])
            except ValueError:
                keys = ()  # wire forms protobuf tolerates but the fast reader does not: route without affinity
        req = RouteRequest(inp.request_id, len(inp.token_ids), inp.generate_config.max_new_tokens,
                           block_keys=keys, block_size_tokens=self.block_size_tokens, client=client)
        return _Prepared(inp, body, req, started_s)

    def _check_max_new_tokens(self, max_new_tokens: int) -> None:
        if self.max_new_tokens and max_new_tokens > self.max_new_tokens:
            raise Rejection(grpc.StatusCode.INVALID_ARGUMENT,
                            f"generate_config.max_new_tokens {max_new_tokens} is above this gateway's cap "
                            f"({self.max_new_tokens})", "max_new_tokens")

    def _route_prepared(self, prepared: _Prepared, attempt: int = 1,
                        master_choice: MasterChoice | None = None, hold: bool = False) -> Planned:
        lease = self._route(GENERATE_STREAM, prepared.req, pair=True, master_choice=master_choice, hold=hold)
        return Planned(lease, _addressed(prepared, lease), GENERATE_STREAM, prepared.started_s, prepared.req,
                       prepared, attempt, master_choice)

    def plan_generate(self, body: bytes) -> Planned:
        """Route a GenerateStreamCall now; in PD mode the request gets role_addrs = [PREFILL, DECODE]."""
        return self._route_prepared(self._prepare_generate(body))

    def submit_generate(self, body: bytes, done: Callable[[Planned | Rejection], None],
                        alive: Callable[[], bool], client: str = "") -> None:
        """Route a GenerateStreamCall, through the batching window when one is configured.

        `done` gets the plan (or the rejection) exactly once, unless the call died while it waited
        in the window (`alive()` false): then nothing is routed and nothing is reserved.
        """
        try:
            prepared = self._prepare_generate(body, client)
        except Rejection as rejection:
            done(rejection)
            return
        if self.forwarder is not None and self.forwarder.should_forward():
            task = asyncio.get_running_loop().create_task(self._forwarded(prepared, done, alive))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self._batcher is None:
            self._deliver(prepared, done, alive)
            return
        opening = len(self._batcher) == 0
        full = self._batcher.add(prepared.req, (prepared, done, alive), time.monotonic())
        if full is not None:
            self._flush(full)
        elif opening:
            loop = asyncio.get_running_loop()
            self._window_timer = loop.call_later(self._batcher.config.wait_ms / 1000.0, self._flush_window)

    async def _forwarded(self, prepared: _Prepared, done: Callable[[Planned | Rejection], None],
                         alive: Callable[[], bool]) -> None:
        """Ask the master; on its answer reserve the same workers here, otherwise decide locally."""
        assert self.forwarder is not None
        choice = await self.forwarder.schedule(prepared.req.request_id, prepared.body)
        if not alive():
            if choice is not None:
                self.forwarder.release(choice)
            return
        if choice is not None:
            try:
                planned = self._route_prepared(prepared, master_choice=choice)
            except Rejection:
                self.forwarder.release(choice)
            else:
                done(planned)
                return
        self._deliver(prepared, done, alive)

    def _flush_window(self) -> None:
        self._window_timer = None
        if self._batcher is not None and len(self._batcher):
            self._flush(self._batcher.take())

    def _flush(self, batch: list[tuple[RouteRequest, _Waiting]]) -> None:
        if self._window_timer is not None:
            self._window_timer.cancel()
            self._window_timer = None
        self.metrics.batch_size.observe(len(batch))
        for _, (prepared, done, alive) in dispatch_order(batch, self.router.expected_uncached_tokens):
            if alive():
                self._deliver(prepared, done, alive)

    # ------------------------------------------------------------ prefill queue

    def _deliver(self, prepared: _Prepared, done: Callable[[Planned | Rejection], None],
                 alive: Callable[[], bool]) -> None:
        """Route a call; hand it to `done` now, or once the prefill queue releases it."""
        try:
            planned = self._route_prepared(prepared, hold=True)
        except Rejection as rejection:
            done(rejection)
            return
        if not planned.lease.held:
            done(planned)
            return
        seq = planned.lease.seq
        self._held[seq] = _Held(planned, done, alive, time.monotonic())
        self.metrics.prefill_queue_held.inc()
        self._arm()

    def _arm(self) -> None:
        """Run the sweep one upkeep interval from now, unless it is already due."""
        if self._upkeep is None:
            self._upkeep = asyncio.get_running_loop().call_later(self.upkeep_interval_s, self._sweep)

    def _unhold(self, lease: Lease) -> _Held | None:
        entry = self._held.pop(lease.seq, None)
        if entry is not None:
            self.metrics.prefill_queue_held.dec()
            if lease.held is False and not lease.evicted and entry.alive():
                # counted only for calls that go to their worker now
                self.metrics.prefill_queue_wait.observe(time.monotonic() - entry.since_s)
        return entry

    def _released(self, lease: Lease) -> None:
        """The router gave a held call its worker's free slot: send it (or free the slot if the caller left)."""
        entry = self._unhold(lease)
        if entry is None:
            return
        planned, done, alive = entry.planned, entry.done, entry.alive
        if not alive():
            self.finish(planned, "CANCELLED", 0)
            return
        if lease.moved and planned.prepared is not None:
            # an idle worker took it over from a busier one's queue: address the request to it
            self.metrics.prefill_queue_moved.inc()
            planned = dataclasses.replace(planned, body=_addressed(planned.prepared, lease))
        done(planned)

    def _evicted(self, lease: Lease) -> None:
        """The held call's worker went away: give its reservation back and route it again elsewhere."""
        entry = self._unhold(lease)
        if entry is None:
            return
        planned, done, alive = entry.planned, entry.done, entry.alive
        if lease.release():
            self.in_flight -= 1
        prepared = planned.prepared
        if not alive() or prepared is None:
            return
        req = dataclasses.replace(prepared.req, exclude=prepared.req.exclude | {lease.decision.target.key})
        self._deliver(dataclasses.replace(prepared, req=req), done, alive)

    def _sweep(self) -> None:
        """Periodic upkeep while calls are held: drop callers that left, let the router release what is due."""
        self._upkeep = None
        for entry in list(self._held.values()):
            if not entry.alive() and self._unhold(entry.planned.lease) is not None:
                self.finish(entry.planned, "CANCELLED", 0)
        self.router.maintain()
        if self._held:
            self._arm()

    def close(self) -> None:
        """Stop the timers (the gateway is stopping)."""
        for timer in (self._upkeep, self._window_timer):
            if timer is not None:
                timer.cancel()
        self._upkeep = self._window_timer = None

    def held_calls(self) -> int:
        """Calls waiting in the prefill queue."""
        return len(self._held)

    def plan_batch(self, body: bytes) -> Planned:
        """Route a BatchGenerateCall to one worker (the engine generates each input locally)."""
        started_s = time.monotonic()
        try:
            batch = pb.BatchGenerateInputPB.FromString(body)
        except DecodeError as exc:
            raise Rejection(
                grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid BatchGenerateInputPB: {exc}", "bad_request"
            ) from None
        if not batch.inputs or any(not i.token_ids for i in batch.inputs):
            raise Rejection(
                grpc.StatusCode.INVALID_ARGUMENT,
                "BatchGenerateInputPB needs at least one input, each with token_ids",
                "no_tokens",
            )
        for i in batch.inputs:
            self._check_max_new_tokens(i.generate_config.max_new_tokens)
        req = RouteRequest(
            batch.inputs[0].request_id,
            sum(len(i.token_ids) for i in batch.inputs),
            max(i.generate_config.max_new_tokens for i in batch.inputs),
        )
        lease = self._route(BATCH_GENERATE, req, pair=False)
        return Planned(lease, body, BATCH_GENERATE, started_s, req)

    def retry(self, planned: Planned, code: grpc.StatusCode, deadline_s: float | None) -> Planned | None:
        """The attempt failed before any response message: end it, blame the worker, route again elsewhere.

        Returns the next attempt, or None when attempts, time or workers are used up (the caller
        then gives the client the last failure). `deadline_s` is the call's monotonic deadline.
        """
        target = planned.lease.decision.target
        # blame first: if that ejects the worker, the slot this attempt frees is not refilled there
        ejected = code in WORKER_FAULTS and self.router.worker_failed(target)
        self.finish(planned, code.name, 0)
        if ejected:
            self.router.evict_held(target.key)
        if planned.req is None or planned.attempt >= self.max_attempts:
            return None
        if deadline_s is not None and deadline_s - time.monotonic() < self.min_retry_budget_s:
            return None
        req = dataclasses.replace(planned.req, exclude=planned.req.exclude | {target.key})
        self.metrics.failovers.labels(planned.method, code.name).inc()
        try:
            if planned.prepared is not None:
                prepared = dataclasses.replace(planned.prepared, req=req)
                return self._route_prepared(prepared, planned.attempt + 1)
            lease = self._route(planned.method, req, pair=False)
        except Rejection:
            return None
        return Planned(lease, planned.body, planned.method, planned.started_s, req, None, planned.attempt + 1)

    def first_message(self, planned: Planned, message: bytes | None) -> None:
        """The first response message arrived: record TTFT and feed the balancer what the worker said."""
        ttft_s = time.monotonic() - planned.started_s
        decision = planned.lease.decision
        self.router.worker_succeeded(decision.target)
        self.metrics.ttft.labels(decision.target.key).observe(ttft_s)
        if decision.estimate_ms is not None:
            self.metrics.ttft_estimate_error.observe(abs(decision.estimate_ms / 1000.0 - ttft_s))
        prefill_ms = uncached = cached = engine_ms = None
        if message is not None and planned.method == GENERATE_STREAM:
            try:
                aux_list = pb.GenerateOutputsPB.FromString(message).flatten_output.aux_info
            except DecodeError:
                aux_list = []
            if aux_list:
                aux = aux_list[0]
                # engine-side prefill: receipt to first token, minus the time it waited to be scheduled
                prefill_ms = max(0.0, (aux.first_token_cost_time_us - aux.wait_time_us) / 1000.0)
                engine_ms = aux.first_token_cost_time_us / 1000.0
                cached = aux.total_reuse_len
                uncached = max(aux.input_len - cached, 0)
        planned.lease.first_token(ttft_s * 1000.0, prefill_ms, uncached, cached, engine_ms)

    def finish(self, planned: Planned, code_name: str, messages: int) -> None:
        """Release the call's load exactly once and count how it ended."""
        lease = planned.lease
        if not lease.release():
            return
        self.in_flight -= 1
        if planned.master_choice is not None and self.forwarder is not None:
            self.forwarder.release(planned.master_choice)
        t = lease.decision.target
        self.metrics.requests.labels(planned.method, t.key, t.role.name, lease.decision.strategy, code_name).inc()
        self.metrics.latency.labels(planned.method).observe(time.monotonic() - planned.started_s)
        if messages:
            self.metrics.relayed_messages.labels(planned.method).inc(messages)
